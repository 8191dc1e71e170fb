/* oidc.c — OIDC login (see oidc.h).
 *
 * One op is one login redirect or one callback. An op that needs the
 * discovery document or the JWKS joins the cache's waiters; the first waiter
 * starts the fetch (single flight) and everyone resumes when it lands:
 *
 *   login:    DISCOVERY ─> 307
 *   callback: checks ─> DISCOVERY ─> TOKEN ─┬─ API mode ───> ACCESS (C3) ──────────┬─> 302
 *                                           └─ standalone ─> JWKS ─> SANDBOX (org) ─┘
 *
 * Every fetch has a timeout (PX_OIDC_TIMEOUT per attempt, one attempt); an
 * IdP that cannot be reached ends the op with 503, never a hang. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjose/cjose.h>
#include <event2/buffer.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "auth/cookie.h"
#include "auth/digest.h"
#include "auth/lookup.h"
#include "auth/oidc.h"
#include "auth/securecookie.h"
#include "proxy/api.h"
#include "proxy/browser.h"
#include "proxy/server.h"
#include "routing/host.h"
#include "routing/path.h"
#include "routing/store.h"

#define MAX_STATE 4096  /* the state query value we accept, bytes */
#define MAX_TOKEN 16384 /* an access or ID token we keep, bytes */
#define SET_COOKIE_MAX 2048

enum op_step { S_DISCOVERY = 0, S_TOKEN, S_JWKS, S_ACCESS, S_SANDBOX };
enum wait_for { W_NONE = 0, W_DISCOVERY, W_JWKS };

struct px_oidc_op {
    struct px_server *srv; /* borrowed */
    px_oidc_cb cb;
    void *arg;
    int callback; /* 0 login, 1 callback */
    enum op_step step;
    enum wait_for waiting;
    struct px_oidc_op *wnext, *wprev; /* the cache's waiters while waiting */
    struct px_api_call *call;         /* owned; the token exchange or C3 */
    struct px_lk *lk;                 /* owned by lookup.c; we only cancel it */
    unsigned in_start : 1, done : 1;
    unsigned in_lookup : 1;    /* px_lookup() is on the stack: it may answer at once */
    unsigned disc_waited : 1;  /* this op has waited for a discovery fetch */
    unsigned jwks_fetched : 1; /* this op has waited for a JWKS fetch */
    unsigned kid_refetch : 1;  /* ... and one more for an unknown kid */
    int api_mode, https;
    /* settings, copied: a SIGHUP may free the configuration meanwhile */
    char *issuer, *client_id, *client_secret, *audience, *public_issuer, *org_claim;
    char *cookie_secret, *cookie_domain;
    int cookie_format;
    char *host;      /* the Host as received */
    char *target;    /* login: path?query */
    char label[256]; /* login: the host label; callback: the state's sandboxId */
    char client[64];
    /* callback */
    char *code, *return_to, *verifier, *inner, *access_token, *id_token;
    char *org;                /* the ID token's org claim, once verified */
    char *message;            /* owned text for the answer */
    struct evbuffer *cookies; /* owned; Set-Cookie lines of the answer */
};

/* ---- the cache ---- */

static struct {
    char *disc_url; /* which discovery document the rest belongs to */
    char *issuer, *authz, *token, *jwks_uri;
    time_t disc_until;
    struct px_api_call *disc_call; /* owned */
    struct px_oidc_keyset ks;
    time_t jwks_until, jwks_fetched;
    struct px_api_call *jwks_call; /* owned */
    struct px_oidc_op *waiters;
} K;

static void resume(struct px_oidc_op *op);

static char *dup_or_null(const char *s)
{
    return s != NULL && s[0] != '\0' ? strdup(s) : NULL;
}

static int dup_checked(char **dst, const char *s)
{
    *dst = NULL;
    if (s == NULL || s[0] == '\0')
        return 0;
    return (*dst = strdup(s)) != NULL ? 0 : -1;
}

static void cache_forget_discovery(void)
{
    free(K.issuer);
    free(K.authz);
    free(K.token);
    free(K.jwks_uri);
    K.issuer = K.authz = K.token = K.jwks_uri = NULL;
    K.disc_until = 0;
    px_oidc_keyset_clear(&K.ks);
    K.jwks_until = K.jwks_fetched = 0;
}

void px_oidc_keyset_clear(struct px_oidc_keyset *ks)
{
    for (int i = 0; i < ks->n; i++) {
        cjose_jwk_release(ks->keys[i]);
        free(ks->kids[i]);
    }
    memset(ks, 0, sizeof(*ks));
}

/* ---- small helpers ---- */

int px_oidc_settings(const struct px_config *cfg, struct px_oidc_settings *s)
{
    const struct px_api_info *info = cfg->api_url != NULL ? px_api_info() : NULL;

    memset(s, 0, sizeof(*s));
    s->issuer = cfg->oidc_issuer;
    s->client_id = cfg->oidc_client_id;
    s->audience = cfg->oidc_audience;
    if (info != NULL && info->ready) {
        if (s->issuer == NULL || s->issuer[0] == '\0')
            s->issuer = info->oidc_issuer;
        if (s->client_id == NULL || s->client_id[0] == '\0')
            s->client_id = info->oidc_client_id;
        if (s->audience == NULL || s->audience[0] == '\0')
            s->audience = info->oidc_audience;
    }
    s->client_secret = cfg->oidc_client_secret;
    s->public_issuer = cfg->oidc_public_issuer;
    s->org_claim = cfg->oidc_org_claim != NULL ? cfg->oidc_org_claim : "org";
    return s->issuer != NULL && s->issuer[0] != '\0' && s->client_id != NULL &&
           s->client_id[0] != '\0' && cfg->cookie_secret != NULL;
}

int px_oidc_is_navigation(const struct px_head *req)
{
    const struct px_hdr *mode = px_head_get(req, PX_STR("sec-fetch-mode"));
    const struct px_hdr *accept = px_head_get(req, PX_STR("accept"));

    if ((req->m != HTTP_GET && req->m != HTTP_HEAD) || req->ws_upgrade ||
        px_head_get(req, PX_STR("upgrade")) != NULL)
        return 0;
    if (mode != NULL)
        return px_str_ieq(mode->value, PX_STR("navigate"));
    if (accept == NULL)
        return 0;
    for (size_t i = 0; i + 9 <= accept->value.len; i++)
        if (!strncasecmp(accept->value.p + i, "text/html", 9))
            return 1;
    return 0;
}

static void b64url_padded(const unsigned char *in, size_t n, char *out)
{
    size_t len = px_base64url(in, n, out);
    while (len % 4 != 0)
        out[len++] = '=';
    out[len] = '\0';
}

/* base64url, padded or not, strict alphabet. Returns a malloc'd buffer. */
static unsigned char *b64url_decode(const char *s, size_t n, size_t *outlen)
{
    unsigned char *tmp, *out;
    size_t pad = 0, m;
    int r;

    while (n > 0 && s[n - 1] == '=' && pad < 2)
        n--, pad++;
    if (n % 4 == 1 || (pad > 0 && (n + pad) % 4 != 0))
        return NULL;
    m = (n + 3) / 4 * 4;
    if ((tmp = malloc(m + 1)) == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '-')
            c = '+';
        else if (c == '_')
            c = '/';
        else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
            free(tmp);
            return NULL;
        }
        tmp[i] = (unsigned char)c;
    }
    for (size_t i = n; i < m; i++)
        tmp[i] = '=';
    tmp[m] = '\0';
    if ((out = malloc(m / 4 * 3 + 1)) == NULL) {
        free(tmp);
        return NULL;
    }
    r = m == 0 ? 0 : EVP_DecodeBlock(out, tmp, (int)m);
    free(tmp);
    if (r < 0) {
        free(out);
        return NULL;
    }
    *outlen = (size_t)r - (m - n); /* EVP_DecodeBlock counts the padding as zero bytes */
    out[*outlen] = '\0';
    return out;
}

/* Percent-decodes a query value into out (cap bytes, NUL-terminated); '+'
 * is a space when plus is set. Returns the length, or -1 when it does not fit. */
static long pct_decode(struct px_str in, int plus, char *out, size_t cap)
{
    size_t k = 0;

    for (size_t i = 0; i < in.len; i++) {
        char c = in.p[i];
        if (c == '%' && i + 2 < in.len && isxdigit((unsigned char)in.p[i + 1]) &&
            isxdigit((unsigned char)in.p[i + 2])) {
            char hex[3] = {in.p[i + 1], in.p[i + 2], '\0'};
            c = (char)strtoul(hex, NULL, 16);
            i += 2;
        } else if (c == '+' && plus) {
            c = ' ';
        }
        if (k + 1 >= cap)
            return -1;
        out[k++] = c;
    }
    out[k] = '\0';
    return (long)k;
}

static int random_b64(size_t nbytes, int padded, char *out)
{
    unsigned char raw[32];

    if (nbytes > sizeof(raw) || RAND_bytes(raw, (int)nbytes) != 1)
        return -1;
    if (padded)
        b64url_padded(raw, nbytes, out);
    else
        out[px_base64url(raw, nbytes, out)] = '\0';
    return 0;
}

int px_oidc_challenge(const char *verifier, char out[44])
{
    unsigned char d[32];

    if (px_sha256(verifier, strlen(verifier), d) != 0)
        return -1;
    out[px_base64url(d, sizeof(d), out)] = '\0';
    return 0;
}

int px_oidc_nonce(const char *inner, char out[44])
{
    unsigned char d[32];
    char buf[128];
    int n = snprintf(buf, sizeof(buf), "nonce:%s", inner);

    if (n < 0 || (size_t)n >= sizeof(buf) || px_sha256(buf, (size_t)n, d) != 0)
        return -1;
    out[px_base64url(d, sizeof(d), out)] = '\0';
    return 0;
}

char *px_oidc_state_encode(const char *return_to, const char *sandbox_id, const char *inner)
{
    json_t *j = json_pack("{s:s, s:s, s:s}", "returnTo", return_to, "sandboxId", sandbox_id,
                          "state", inner);
    char *js, *out = NULL;
    size_t n;

    if (j == NULL)
        return NULL;
    js = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    if (js == NULL)
        return NULL;
    n = strlen(js);
    if ((out = malloc((n + 2) / 3 * 4 + 4)) != NULL)
        b64url_padded((const unsigned char *)js, n, out);
    free(js);
    return out;
}

static int take(json_t *obj, const char *key, char **out)
{
    json_t *v = json_object_get(obj, key);

    *out = NULL;
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        strlen(json_string_value(v)) != json_string_length(v))
        return -1;
    return (*out = strdup(json_string_value(v))) != NULL ? 0 : -1;
}

int px_oidc_state_decode(struct px_str s, char **return_to, char **sandbox_id, char **inner)
{
    size_t n;
    unsigned char *raw;
    json_error_t je;
    json_t *j;
    int rc = -1;

    *return_to = *sandbox_id = *inner = NULL;
    if (s.len == 0 || s.len > MAX_STATE || (raw = b64url_decode(s.p, s.len, &n)) == NULL)
        return -1;
    j = json_loadb((const char *)raw, n, 0, &je);
    free(raw);
    if (json_is_object(j) && take(j, "returnTo", return_to) == 0 &&
        take(j, "sandboxId", sandbox_id) == 0 && take(j, "state", inner) == 0)
        rc = 0;
    json_decref(j);
    if (rc != 0) {
        free(*return_to);
        free(*sandbox_id);
        free(*inner);
        *return_to = *sandbox_id = *inner = NULL;
    }
    return rc;
}

/* The name part of a Host value: without :port, lowercased by the caller. */
static struct px_str host_name(const char *host)
{
    if (host[0] == '[')
        return px_str_make(host, strcspn(host, "]") + (strchr(host, ']') ? 1 : 0));
    return px_str_make(host, strcspn(host, ":"));
}

int px_oidc_return_safe(const struct px_config *cfg, const char *url, const char *callback_host)
{
    const char *h;
    char buf[300];
    size_t n;
    struct px_host ph;
    struct px_str cb = host_name(callback_host);

    if (url == NULL || strlen(url) > PX_OIDC_MAX_URL)
        return 0;
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '\\')
            return 0;
    if (!strncmp(url, "https://", 8))
        h = url + 8;
    else if (!strncmp(url, "http://", 7))
        h = url + 7;
    else
        return 0;
    n = strcspn(h, "/?#");
    if (n == 0 || n >= sizeof(buf) || memchr(h, '@', n) != NULL)
        return 0;
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)(h[i] >= 'A' && h[i] <= 'Z' ? h[i] + 32 : h[i]);
    buf[n] = '\0';
    for (const struct px_domain *d = cfg->custom_domains; d != NULL; d = d->next)
        if (px_str_eq(host_name(buf), px_str_make(d->host, strlen(d->host))))
            return 1;
    if (px_host_parse(buf, n, cfg->domains, cfg->ndomains, &ph) != PX_HOST_PREVIEW)
        return 0;
    /* the preview's base domain is the callback's own host */
    const char *dot = memchr(ph.name.p, '.', ph.name.len);
    if (dot == NULL)
        return 0;
    return px_str_eq(px_str_make(dot + 1, ph.name.len - (size_t)(dot + 1 - ph.name.p)), cb);
}

int px_oidc_check_claims(json_t *c, const char *issuer, const char *client_id, const char *nonce,
                         time_t now, const char **why)
{
    json_t *aud = json_object_get(c, "aud"), *v;

    *why = "the ID token's issuer is not the provider's";
    if (!json_is_string(json_object_get(c, "iss")) ||
        strcmp(json_string_value(json_object_get(c, "iss")), issuer) != 0)
        return -1;
    *why = "the ID token is not for this client (aud)";
    if (json_is_string(aud)) {
        if (strcmp(json_string_value(aud), client_id) != 0)
            return -1;
    } else if (json_is_array(aud) && json_array_size(aud) > 0) {
        size_t i, found = 0;
        json_array_foreach(aud, i, v) found |=
            json_is_string(v) && !strcmp(json_string_value(v), client_id);
        if (!found)
            return -1;
        v = json_object_get(c, "azp");
        *why = "the ID token was issued to another party (azp)";
        if (json_array_size(aud) > 1 &&
            (!json_is_string(v) || strcmp(json_string_value(v), client_id) != 0))
            return -1;
    } else {
        return -1;
    }
    *why = "the ID token has expired";
    v = json_object_get(c, "exp");
    if (!json_is_number(v) || json_number_value(v) + PX_OIDC_LEEWAY <= (double)now)
        return -1;
    *why = "the ID token is not valid yet";
    v = json_object_get(c, "nbf");
    if (v != NULL && (!json_is_number(v) || json_number_value(v) - PX_OIDC_LEEWAY > (double)now))
        return -1;
    *why = "the ID token does not belong to this login (nonce)";
    v = json_object_get(c, "nonce");
    if (nonce == NULL || !json_is_string(v) || strlen(json_string_value(v)) != strlen(nonce) ||
        CRYPTO_memcmp(json_string_value(v), nonce, strlen(nonce)) != 0)
        return -1;
    return 0;
}

int px_oidc_jwks_parse(const char *body, size_t len, struct px_oidc_keyset *ks)
{
    json_error_t je;
    json_t *j = json_loadb(body, len, 0, &je), *keys, *k;
    size_t i;

    memset(ks, 0, sizeof(*ks));
    keys = json_object_get(j, "keys");
    if (!json_is_array(keys)) {
        json_decref(j);
        return -1;
    }
    json_array_foreach(keys, i, k)
    {
        const char *kty = json_string_value(json_object_get(k, "kty"));
        const char *use = json_string_value(json_object_get(k, "use"));
        const char *kid = json_string_value(json_object_get(k, "kid"));
        cjose_err err;
        cjose_jwk_t *jwk;
        char *txt;

        if (ks->n == PX_OIDC_MAX_KEYS)
            break;
        if (!json_is_object(k) || kty == NULL || (strcmp(kty, "RSA") && strcmp(kty, "EC")) ||
            (use != NULL && strcmp(use, "sig")) ||
            json_object_get(k, "d") != NULL) /* a private key has no business here */
            continue;
        if ((txt = json_dumps(k, JSON_COMPACT)) == NULL)
            continue;
        jwk = cjose_jwk_import(txt, strlen(txt), &err);
        free(txt);
        if (jwk == NULL)
            continue;
        if ((ks->kids[ks->n] = strdup(kid != NULL ? kid : "")) == NULL) {
            cjose_jwk_release(jwk);
            continue;
        }
        ks->keys[ks->n++] = jwk;
    }
    json_decref(j);
    return 0;
}

json_t *px_oidc_verify_jwt(const char *jwt, size_t len, const struct px_oidc_keyset *ks,
                           const char **why, int *unknown_kid)
{
    cjose_err err;
    cjose_jws_t *jws;
    cjose_header_t *hdr;
    const char *alg, *kid;
    const cjose_jwk_t *key = NULL;
    uint8_t *plain = NULL;
    size_t plain_len = 0;
    json_t *claims = NULL;
    json_error_t je;

    *unknown_kid = 0;
    *why = "the ID token is malformed";
    if (len == 0 || len > MAX_TOKEN || (jws = cjose_jws_import(jwt, len, &err)) == NULL)
        return NULL;
    hdr = cjose_jws_get_protected(jws);
    alg = hdr != NULL ? cjose_header_get(hdr, CJOSE_HDR_ALG, &err) : NULL;
    kid = hdr != NULL ? cjose_header_get(hdr, CJOSE_HDR_KID, &err) : NULL;
    *why = "the ID token's algorithm is not RS256 or ES256";
    if (alg == NULL || (strcmp(alg, CJOSE_HDR_ALG_RS256) && strcmp(alg, CJOSE_HDR_ALG_ES256)))
        goto out;
    for (int i = 0; i < ks->n; i++) {
        if ((kid != NULL && !strcmp(ks->kids[i], kid)) || (kid == NULL && ks->n == 1)) {
            key = ks->keys[i];
            break;
        }
    }
    *why = "the ID token is signed with an unknown key";
    if (key == NULL) {
        *unknown_kid = 1;
        goto out;
    }
    *why = "the ID token's algorithm does not fit its key";
    if (!strcmp(alg, CJOSE_HDR_ALG_RS256)
            ? cjose_jwk_get_kty(key, &err) != CJOSE_JWK_KTY_RSA
            : (cjose_jwk_get_kty(key, &err) != CJOSE_JWK_KTY_EC ||
               cjose_jwk_EC_get_curve(key, &err) != CJOSE_JWK_EC_P_256))
        goto out;
    *why = "the ID token's signature is not valid";
    if (!cjose_jws_verify(jws, key, &err) ||
        !cjose_jws_get_plaintext(jws, &plain, &plain_len, &err))
        goto out;
    *why = "the ID token's claims are not a JSON object";
    claims = json_loadb((const char *)plain, plain_len, 0, &je);
    if (!json_is_object(claims)) {
        json_decref(claims);
        claims = NULL;
    }
out:
    cjose_jws_release(jws); /* owns plain and the header */
    return claims;
}

int px_oidc_ttl(const struct px_head *resp)
{
    const struct px_hdr *cc = resp != NULL ? px_head_get(resp, PX_STR("cache-control")) : NULL;
    long ttl = PX_OIDC_TTL_DEFAULT;

    if (cc != NULL) {
        for (size_t i = 0; i + 8 <= cc->value.len; i++) {
            if (strncasecmp(cc->value.p + i, "max-age=", 8) != 0)
                continue;
            long v = 0;
            size_t k = i + 8;
            if (k >= cc->value.len || cc->value.p[k] < '0' || cc->value.p[k] > '9')
                break;
            for (; k < cc->value.len && cc->value.p[k] >= '0' && cc->value.p[k] <= '9'; k++)
                v = v > 100000000 ? v : v * 10 + (cc->value.p[k] - '0');
            ttl = v;
            break;
        }
        for (size_t i = 0; i + 8 <= cc->value.len; i++)
            if (!strncasecmp(cc->value.p + i, "no-store", 8) ||
                !strncasecmp(cc->value.p + i, "no-cache", 8))
                ttl = PX_OIDC_TTL_MIN; /* never 0: the floor bounds the fetches */
    }
    return ttl < PX_OIDC_TTL_MIN   ? PX_OIDC_TTL_MIN
           : ttl > PX_OIDC_TTL_MAX ? PX_OIDC_TTL_MAX
                                   : (int)ttl;
}

/* ---- op lifetime ---- */

static void unwait(struct px_oidc_op *op)
{
    if (op->waiting == W_NONE)
        return;
    if (op->wprev != NULL)
        op->wprev->wnext = op->wnext;
    else
        K.waiters = op->wnext;
    if (op->wnext != NULL)
        op->wnext->wprev = op->wprev;
    op->wnext = op->wprev = NULL;
    op->waiting = W_NONE;
}

static void wait_on(struct px_oidc_op *op, enum wait_for w)
{
    op->waiting = w;
    op->wprev = NULL;
    op->wnext = K.waiters;
    if (K.waiters != NULL)
        K.waiters->wprev = op;
    K.waiters = op;
}

static void op_free(struct px_oidc_op *op)
{
    unwait(op);
    px_api_cancel(op->call);
    px_lookup_cancel(op->lk);
    free(op->issuer);
    free(op->client_id);
    free(op->client_secret);
    free(op->audience);
    free(op->public_issuer);
    free(op->org_claim);
    free(op->cookie_secret);
    free(op->cookie_domain);
    free(op->host);
    free(op->target);
    free(op->code);
    free(op->return_to);
    if (op->verifier != NULL)
        OPENSSL_cleanse(op->verifier, strlen(op->verifier));
    free(op->verifier);
    free(op->inner);
    if (op->access_token != NULL)
        OPENSSL_cleanse(op->access_token, strlen(op->access_token));
    free(op->access_token);
    free(op->id_token);
    free(op->org);
    free(op->message);
    if (op->cookies != NULL)
        evbuffer_free(op->cookies);
    free(op);
}

void px_oidc_cancel(struct px_oidc_op *op)
{
    if (op != NULL)
        op_free(op);
}

/* Answers; the op is freed here unless the start call is still on the stack. */
static void answer(struct px_oidc_op *op, int status, const char *code, const char *message,
                   const char *location)
{
    struct px_oidc_answer a = {
        .status = status, .code = code, .message = message, .location = location};

    if (op->cookies != NULL && evbuffer_get_length(op->cookies) > 0) {
        evbuffer_add(op->cookies, "", 1);
        a.set_cookie = (const char *)evbuffer_pullup(op->cookies, -1);
    }
    op->done = 1;
    op->cb(op->arg, &a);
    if (!op->in_start && !op->in_lookup)
        op_free(op);
}

static void fail_idp(struct px_oidc_op *op, const char *what)
{
    char msg[200];

    snprintf(msg, sizeof(msg), "the identity provider cannot be reached (%s); try again shortly",
             what);
    free(op->message);
    op->message = strdup(msg);
    answer(op, 503, "IDP_UNAVAILABLE", op->message ? op->message : "identity provider unavailable",
           NULL);
}

static void fail_op(struct px_oidc_op *op, int status, const char *code, const char *msg)
{
    answer(op, status, code, msg, NULL);
}

static struct px_oidc_op *op_new(struct px_server *srv, const struct px_oidc_req *in, px_oidc_cb cb,
                                 void *arg, int callback)
{
    struct px_oidc_settings s;
    struct px_oidc_op *op = calloc(1, sizeof(*op));

    if (op == NULL)
        return NULL;
    op->srv = srv;
    op->cb = cb;
    op->arg = arg;
    op->callback = callback;
    op->in_start = 1;
    op->api_mode = in->cfg->api_url != NULL;
    op->https = in->https;
    op->cookie_format = in->cfg->cookie_format;
    px_oidc_settings(in->cfg, &s);
    snprintf(op->client, sizeof(op->client), "%s", in->client ? in->client : "");
    if ((op->cookies = evbuffer_new()) == NULL || dup_checked(&op->issuer, s.issuer) ||
        dup_checked(&op->client_id, s.client_id) ||
        dup_checked(&op->client_secret, s.client_secret) ||
        dup_checked(&op->audience, s.audience) ||
        dup_checked(&op->public_issuer, s.public_issuer) ||
        dup_checked(&op->org_claim, s.org_claim) ||
        dup_checked(&op->cookie_secret, in->cfg->cookie_secret) ||
        dup_checked(&op->cookie_domain, in->cfg->cookie_domain) ||
        (op->host = strdup(in->host)) == NULL ||
        (op->target = strndup(in->target.p != NULL ? in->target.p : "", in->target.len)) == NULL) {
        op_free(op);
        return NULL;
    }
    return op;
}

/* The start call returns: NULL when the op already answered. */
static struct px_oidc_op *started(struct px_oidc_op *op)
{
    op->in_start = 0;
    if (op->done) {
        op_free(op);
        return NULL;
    }
    return op;
}

/* ---- discovery and JWKS ---- */

static void wake(enum wait_for w)
{
    struct px_oidc_op *list = NULL, *op, *next;

    /* Detach this kind's waiters first: a resumed op may wait again (for the
     * JWKS after discovery) or finish and free itself. */
    for (op = K.waiters; op != NULL; op = next) {
        next = op->wnext;
        if (op->waiting != w)
            continue;
        unwait(op);
        op->wnext = list;
        list = op;
    }
    for (op = list; op != NULL; op = next) {
        next = op->wnext;
        op->wnext = NULL;
        resume(op);
    }
}

/* A URL from a discovery document: http(s), bounded, no controls. */
static char *take_url(json_t *doc, const char *key)
{
    const char *v = json_string_value(json_object_get(doc, key));

    if (v == NULL || strlen(v) > PX_OIDC_MAX_URL ||
        (strncmp(v, "https://", 8) != 0 && strncmp(v, "http://", 7) != 0))
        return NULL;
    for (const char *p = v; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return NULL;
    return strdup(v);
}

/* OIDC_PUBLIC_DOMAIN (DAYTONA-API.md §6): endpoints the proxy itself calls are
 * rewritten from the public prefix to the issuer it can reach. */
static char *internal_url(const char *url, const char *public_issuer, const char *issuer)
{
    size_t pl;
    char *out;

    if (url == NULL || public_issuer == NULL)
        return url != NULL ? strdup(url) : NULL;
    pl = strlen(public_issuer);
    while (pl > 0 && public_issuer[pl - 1] == '/')
        pl--;
    if (strncmp(url, public_issuer, pl) != 0)
        return strdup(url);
    size_t il = strlen(issuer);
    while (il > 0 && issuer[il - 1] == '/')
        il--;
    if ((out = malloc(il + strlen(url + pl) + 1)) == NULL)
        return NULL;
    memcpy(out, issuer, il);
    strcpy(out + il, url + pl);
    return out;
}

static int same_issuer(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);

    while (la > 0 && a[la - 1] == '/')
        la--;
    while (lb > 0 && b[lb - 1] == '/')
        lb--;
    return la == lb && !memcmp(a, b, la);
}

static struct {
    char *issuer, *public_issuer; /* what the fetch in flight was for */
} F;

static void on_discovery(void *arg, const struct px_api_resp *r)
{
    json_error_t je;
    json_t *doc = NULL;
    const char *iss;
    (void)arg;

    K.disc_call = NULL;
    if (r->err == NULL && r->status == 200)
        doc = json_loadb(r->body, r->body_len, 0, &je);
    iss = json_string_value(json_object_get(doc, "issuer"));
    cache_forget_discovery();
    if (doc == NULL || iss == NULL) {
        px_log(PX_WARN, "oidc: discovery failed (%s)",
               r->err             ? r->err
               : r->status != 200 ? "bad status"
                                  : "not a discovery document");
    } else if (F.public_issuer == NULL && !same_issuer(iss, F.issuer)) {
        px_log(PX_WARN, "oidc: discovery names another issuer than the configured one");
    } else {
        char *authz = take_url(doc, "authorization_endpoint");
        char *tok = take_url(doc, "token_endpoint");
        char *jwks = take_url(doc, "jwks_uri");
        K.issuer = strdup(iss);
        K.authz = authz;
        K.token = internal_url(tok, F.public_issuer, F.issuer);
        K.jwks_uri = internal_url(jwks, F.public_issuer, F.issuer);
        free(tok);
        free(jwks);
        if (K.issuer == NULL || K.authz == NULL || K.token == NULL || K.jwks_uri == NULL) {
            px_log(PX_WARN, "oidc: discovery lacks an endpoint the login needs");
            cache_forget_discovery();
        } else {
            K.disc_until = time(NULL) + px_oidc_ttl(r->head);
        }
    }
    json_decref(doc);
    wake(W_DISCOVERY);
}

static void on_jwks(void *arg, const struct px_api_resp *r)
{
    struct px_oidc_keyset ks;
    (void)arg;

    K.jwks_call = NULL;
    K.jwks_fetched = time(NULL);
    if (r->err == NULL && r->status == 200 && px_oidc_jwks_parse(r->body, r->body_len, &ks) == 0) {
        px_oidc_keyset_clear(&K.ks);
        K.ks = ks;
        K.jwks_until = K.jwks_fetched + px_oidc_ttl(r->head);
    } else {
        px_log(PX_WARN, "oidc: JWKS fetch failed (%s)", r->err ? r->err : "bad answer");
    }
    wake(W_JWKS);
}

/* Discovery for op's issuer: 1 when it is cached (go on), 0 when op now
 * waits, 2 when the fetch op waited for failed, -1 when it cannot be asked. */
static int need_discovery(struct px_oidc_op *op)
{
    char url[PX_OIDC_MAX_URL + 64];
    size_t il = strlen(op->issuer);

    while (il > 0 && op->issuer[il - 1] == '/')
        il--;
    if (il > PX_OIDC_MAX_URL)
        return -1;
    snprintf(url, sizeof(url), "%.*s/.well-known/openid-configuration", (int)il, op->issuer);
    if (K.disc_url == NULL || strcmp(K.disc_url, url) != 0 ||
        (F.public_issuer == NULL) != (op->public_issuer == NULL)) {
        /* another issuer (reload, C1): start over */
        px_api_cancel(K.disc_call);
        px_api_cancel(K.jwks_call);
        K.disc_call = K.jwks_call = NULL;
        cache_forget_discovery();
        free(K.disc_url);
        free(F.issuer);
        free(F.public_issuer);
        K.disc_url = strdup(url);
        F.issuer = strdup(op->issuer);
        F.public_issuer = dup_or_null(op->public_issuer);
        if (K.disc_url == NULL || F.issuer == NULL)
            return -1;
        /* ops that waited for the old issuer's fetches start over */
        wake(W_DISCOVERY);
        wake(W_JWKS);
    }
    if (K.authz != NULL && K.disc_until > time(NULL))
        return 1;
    if (op->disc_waited)
        return 2; /* the fetch this op waited for failed: no second try */
    if (K.disc_call == NULL) {
        K.disc_call = px_http_request(op->srv, "GET", K.disc_url, NULL, NULL, 0, PX_API_ONCE,
                                      PX_OIDC_TIMEOUT, on_discovery, NULL);
        if (K.disc_call == NULL)
            return -1;
    }
    op->disc_waited = 1;
    wait_on(op, W_DISCOVERY);
    return 0;
}

static int start_jwks(struct px_oidc_op *op)
{
    if (K.jwks_call == NULL) {
        K.jwks_call = px_http_request(op->srv, "GET", K.jwks_uri, NULL, NULL, 0, PX_API_ONCE,
                                      PX_OIDC_TIMEOUT, on_jwks, NULL);
        if (K.jwks_call == NULL)
            return -1;
    }
    wait_on(op, W_JWKS);
    return 0;
}

/* ---- login ---- */

/* base: the base host's name, where /callback is served */
static void pkce_cookie(struct px_oidc_op *op, struct px_str base, const char *value, int max_age)
{
    struct px_str dom = op->cookie_domain != NULL
                            ? px_str_make(op->cookie_domain, strlen(op->cookie_domain))
                            : base;

    evbuffer_add_printf(op->cookies,
                        "Set-Cookie: " PX_OIDC_COOKIE "=%s; Max-Age=%d; Path=/; HttpOnly; "
                        "Domain=%.*s; %s\r\n",
                        value, max_age, (int)dom.len, dom.p,
                        op->https ? "Secure; SameSite=None" : "SameSite=Lax");
}

static void add_param(struct evbuffer *b, const char *key, const char *value, int *first)
{
    evbuffer_add_printf(b, "%s%s=", *first ? "" : "&", key);
    px_url_encode(b, px_str_make(value, strlen(value)));
    *first = 0;
}

static void login_redirect(struct px_oidc_op *op)
{
    char verifier[48], challenge[44], inner[48], nonce[44], sealed[PX_SECURECOOKIE_MAX + 1];
    char ret[PX_OIDC_MAX_URL + 1], redirect_uri[400], pair[128];
    const char *base;
    char *state = NULL;
    struct evbuffer *u = evbuffer_new();
    int first = 1, n;

    if (u == NULL)
        return fail_op(op, 500, NULL, "out of memory");
    /* redirect_uri: the Host minus its first label, :port kept (§6) */
    base = strchr(op->host, '.');
    n = snprintf(ret, sizeof(ret), "%s://%s%s", op->https ? "https" : "http", op->host, op->target);
    if (n < 0 || (size_t)n >= sizeof(ret)) /* a huge target: come back to the page's root */
        snprintf(ret, sizeof(ret), "%s://%s/", op->https ? "https" : "http", op->host);
    if (base == NULL ||
        snprintf(redirect_uri, sizeof(redirect_uri), "%s://%s/callback",
                 op->https ? "https" : "http", base + 1) >= (int)sizeof(redirect_uri) ||
        random_b64(32, 0, verifier) != 0 || random_b64(32, 1, inner) != 0 ||
        px_oidc_challenge(verifier, challenge) != 0 || px_oidc_nonce(inner, nonce) != 0 ||
        (state = px_oidc_state_encode(ret, op->label, inner)) == NULL) {
        evbuffer_free(u);
        free(state);
        return fail_op(op, 500, NULL, "cannot build the login redirect");
    }
    /* the cookie binds verifier and state: "{verifier} {inner state}" */
    snprintf(pair, sizeof(pair), "%s.%s", verifier, inner);
    if (px_securecookie_encode(op->cookie_secret, PX_STR(PX_OIDC_COOKIE),
                               px_str_make(pair, strlen(pair)), time(NULL), sealed,
                               sizeof(sealed)) < 0) {
        OPENSSL_cleanse(pair, sizeof(pair));
        evbuffer_free(u);
        free(state);
        return fail_op(op, 500, NULL, "cannot seal the login cookie");
    }
    OPENSSL_cleanse(pair, sizeof(pair));
    OPENSSL_cleanse(verifier, sizeof(verifier));
    pkce_cookie(op, host_name(base + 1), sealed, PX_OIDC_COOKIE_MAX_AGE);
    evbuffer_add(u, K.authz, strlen(K.authz));
    evbuffer_add(u, strchr(K.authz, '?') ? "&" : "?", 1);
    /* §6: the query keys sorted, as Daytona's url.Values.Encode() writes them */
    if (op->audience != NULL)
        add_param(u, "audience", op->audience, &first);
    add_param(u, "client_id", op->client_id, &first);
    add_param(u, "code_challenge", challenge, &first);
    add_param(u, "code_challenge_method", "S256", &first);
    add_param(u, "nonce", nonce, &first);
    add_param(u, "redirect_uri", redirect_uri, &first);
    add_param(u, "response_type", "code", &first);
    add_param(u, "scope", "openid profile", &first);
    add_param(u, "state", state, &first);
    free(state);
    evbuffer_add(u, "", 1);
    answer(op, 307, NULL, NULL, (const char *)evbuffer_pullup(u, -1));
    evbuffer_free(u);
}

struct px_oidc_op *px_oidc_login(struct px_server *srv, const struct px_oidc_req *in, px_oidc_cb cb,
                                 void *arg)
{
    struct px_oidc_op *op = op_new(srv, in, cb, arg, 0);

    if (op == NULL) {
        struct px_oidc_answer a = {.status = 500, .message = "out of memory"};
        cb(arg, &a);
        return NULL;
    }
    if (op->issuer == NULL || op->client_id == NULL || in->label.len >= sizeof(op->label)) {
        fail_op(op, 401, NULL, "login is not available for this host");
        return started(op);
    }
    memcpy(op->label, in->label.p, in->label.len);
    op->step = S_DISCOVERY;
    resume(op);
    return started(op);
}

/* ---- callback ---- */

static void decide(struct px_oidc_op *op);

static void grant(struct px_oidc_op *op)
{
    char v[700];
    struct px_str dom = op->cookie_domain != NULL
                            ? px_str_make(op->cookie_domain, strlen(op->cookie_domain))
                            : host_name(op->host);
    struct px_str id = px_str_make(op->label, strlen(op->label));

    if (px_cookie_issue(op->cookie_secret, op->cookie_format, id, 0, id, time(NULL), v,
                        sizeof(v)) <= 0)
        return fail_op(op, 500, NULL, "cannot issue the auth cookie");
    evbuffer_add_printf(op->cookies,
                        "Set-Cookie: " PX_COOKIE_PREFIX "%s=%s; Max-Age=%d; Path=/; HttpOnly; "
                        "Domain=%.*s; %s\r\n",
                        op->label, v, PX_COOKIE_MAX_AGE, (int)dom.len, dom.p,
                        op->https ? "Secure; SameSite=None" : "SameSite=Lax");
    OPENSSL_cleanse(v, sizeof(v));
    answer(op, 302, NULL, NULL, op->return_to); /* judged safe, or "/", at the start */
}

static void on_token(void *arg, const struct px_api_resp *r)
{
    struct px_oidc_op *op = arg;
    json_error_t je;
    json_t *j;

    op->call = NULL;
    if (r->err != NULL || r->status >= 500)
        return fail_idp(op, "token endpoint");
    if (r->status == 401) { /* invalid_client: our client ID or secret is wrong */
        px_log(PX_WARN, "oidc: the token endpoint refused the client credentials (401)");
        return fail_op(op, 502, "IDP_CLIENT_REFUSED",
                       "the identity provider refused this proxy's client credentials");
    }
    if (r->status != 200) /* invalid_grant: a used, expired or foreign code */
        return fail_op(op, 400, "LOGIN_FAILED",
                       "the identity provider did not accept the login code (used, expired or "
                       "issued for another login); open the preview again");
    j = json_loadb(r->body, r->body_len, 0, &je);
    if (take(j, "access_token", &op->access_token) != 0 ||
        (json_object_get(j, "id_token") != NULL && take(j, "id_token", &op->id_token) != 0) ||
        strlen(op->access_token) > MAX_TOKEN) {
        json_decref(j);
        return fail_op(op, 502, "BAD_IDP_ANSWER",
                       "the identity provider's token answer is unusable");
    }
    json_decref(j);
    decide(op);
}

static void token_exchange(struct px_oidc_op *op)
{
    struct evbuffer *b = evbuffer_new(), *h = evbuffer_new();
    char redirect_uri[400];
    int first = 1;

    op->step = S_TOKEN;
    if (b == NULL || h == NULL) {
        if (b)
            evbuffer_free(b);
        if (h)
            evbuffer_free(h);
        return fail_op(op, 500, NULL, "out of memory");
    }
    /* §6 step 5: redirect_uri is this callback's own URL */
    snprintf(redirect_uri, sizeof(redirect_uri), "%s://%s/callback", op->https ? "https" : "http",
             op->host);
    add_param(b, "grant_type", "authorization_code", &first);
    add_param(b, "code", op->code, &first);
    add_param(b, "redirect_uri", redirect_uri, &first);
    add_param(b, "code_verifier", op->verifier, &first);
    evbuffer_add(h, "Content-Type: application/x-www-form-urlencoded\r\n", 49);
    if (op->client_secret != NULL) {
        /* RFC 6749 2.3.1: HTTP Basic of the form-encoded ID and secret */
        struct evbuffer *cred = evbuffer_new();
        if (cred != NULL) {
            px_url_encode(cred, px_str_make(op->client_id, strlen(op->client_id)));
            evbuffer_add(cred, ":", 1);
            px_url_encode(cred, px_str_make(op->client_secret, strlen(op->client_secret)));
            size_t n = evbuffer_get_length(cred);
            const unsigned char *raw = evbuffer_pullup(cred, -1);
            char *enc = malloc((n + 2) / 3 * 4 + 1);
            if (enc != NULL && raw != NULL) {
                EVP_EncodeBlock((unsigned char *)enc, raw, (int)n);
                evbuffer_add_printf(h, "Authorization: Basic %s\r\n", enc);
                OPENSSL_cleanse(enc, strlen(enc));
            }
            free(enc);
            evbuffer_free(cred);
        }
    } else {
        add_param(b, "client_id", op->client_id, &first); /* a public client (PKCE only) */
    }
    evbuffer_add(b, "", 1);
    evbuffer_add(h, "", 1);
    size_t blen = evbuffer_get_length(b) - 1;
    op->call = px_http_request(op->srv, "POST", K.token, (const char *)evbuffer_pullup(h, -1),
                               (const char *)evbuffer_pullup(b, -1), blen, PX_API_ONCE,
                               PX_OIDC_TIMEOUT, on_token, op);
    evbuffer_free(b);
    evbuffer_free(h);
    if (op->call == NULL)
        fail_idp(op, "token endpoint unusable");
}

static void on_access(void *arg, const struct px_api_resp *r)
{
    struct px_oidc_op *op = arg;

    op->call = NULL;
    if (r->err == NULL && r->status == 200)
        return grant(op);
    if (r->err == NULL && r->status >= 400 && r->status <= 499 && r->status != 408 &&
        r->status != 429)
        return fail_op(op, 403, "ACCESS_DENIED",
                       "your account has no access to this sandbox (or it does not exist)");
    fail_op(op, 503, "AUTH_BACKEND_UNAVAILABLE",
            "the Daytona API cannot confirm your access right now; try again shortly");
}

static void on_sandbox(void *arg, const struct px_lk_value *v, const char *err)
{
    struct px_oidc_op *op = arg;

    op->lk = NULL;
    if (err != NULL)
        return fail_op(op, 503, "AUTH_BACKEND_UNAVAILABLE",
                       "the sandbox store cannot be reached; try again shortly");
    if (v->found && v->sb != NULL && v->sb->org != NULL && v->sb->org[0] != '\0' &&
        !strcmp(op->org, v->sb->org))
        return grant(op);
    fail_op(op, 403, "ACCESS_DENIED",
            "your account's organisation has no access to this sandbox (or it does not exist)");
}

/* After the token exchange: who decides access. */
static void decide(struct px_oidc_op *op)
{
    if (op->api_mode) {
        char path[400];
        op->step = S_ACCESS;
        snprintf(path, sizeof(path), "/preview/%s/access", op->label);
        op->call = px_api_request(op->srv, "GET", path, op->access_token, op->client,
                                  PX_API_USER | PX_API_ONCE, on_access, op);
        if (op->call == NULL)
            fail_op(op, 503, "AUTH_BACKEND_UNAVAILABLE", "cannot ask the Daytona API");
        return;
    }
    if (op->id_token == NULL)
        return fail_op(op, 502, "BAD_IDP_ANSWER", "the identity provider sent no ID token");
    op->step = S_JWKS;
    resume(op);
}

/* Standalone: the ID token against the JWKS (refetched once on an unknown kid). */
static void verify_id_token(struct px_oidc_op *op)
{
    const char *why;
    char nonce[44];
    int unknown;
    json_t *claims;

    claims = px_oidc_verify_jwt(op->id_token, strlen(op->id_token), &K.ks, &why, &unknown);
    if (claims == NULL && unknown && !op->kid_refetch &&
        time(NULL) - K.jwks_fetched >= PX_OIDC_JWKS_REFETCH) {
        /* The IdP may have rotated its keys: once per op, and at most every
         * PX_OIDC_JWKS_REFETCH seconds, so unknown kids cannot hammer it. */
        op->kid_refetch = 1;
        if (start_jwks(op) != 0)
            fail_idp(op, "JWKS URL unusable");
        return;
    }
    if (claims == NULL)
        return fail_op(op, 401, "BAD_ID_TOKEN", why);
    if (px_oidc_nonce(op->inner, nonce) != 0 ||
        px_oidc_check_claims(claims, K.issuer, op->client_id, nonce, time(NULL), &why) != 0) {
        json_decref(claims);
        return fail_op(op, 401, "BAD_ID_TOKEN", why);
    }
    if (!json_is_string(json_object_get(claims, op->org_claim)) ||
        (op->org = strdup(json_string_value(json_object_get(claims, op->org_claim)))) == NULL) {
        json_decref(claims);
        return fail_op(op, 403, "ACCESS_DENIED",
                       "the identity provider names no organisation for your account");
    }
    json_decref(claims);
    op->step = S_SANDBOX;
    op->in_lookup = 1; /* an answer from memory runs on_sandbox before px_lookup returns */
    struct px_lk *lk = px_lookup(PX_LK_SANDBOX, px_str_make(op->label, strlen(op->label)),
                                 op->client, on_sandbox, op);
    op->in_lookup = 0;
    if (op->done) {
        if (!op->in_start)
            op_free(op);
        return;
    }
    op->lk = lk;
}

/* Continues op at its step once what it waited for is there. */
static void resume(struct px_oidc_op *op)
{
    int r;

    switch (op->step) {
    case S_DISCOVERY:
        if ((r = need_discovery(op)) < 0)
            return fail_idp(op, "issuer URL unusable");
        if (r == 0)
            return; /* waiting; wake() calls us again */
        if (r == 2)
            return fail_idp(op, "discovery failed");
        if (!op->callback)
            return login_redirect(op);
        return token_exchange(op);
    case S_JWKS:
        if (K.jwks_uri == NULL)
            return fail_idp(op, "discovery failed");
        if (K.jwks_call != NULL)
            return wait_on(op, W_JWKS);
        if (!(K.ks.n > 0 && K.jwks_until > time(NULL)) && !op->jwks_fetched) {
            op->jwks_fetched = 1;
            if (start_jwks(op) != 0)
                fail_idp(op, "JWKS URL unusable");
            return;
        }
        if (K.ks.n == 0) /* fetched for us and still nothing */
            return fail_idp(op, "JWKS fetch failed");
        return verify_id_token(op); /* keys older than their TTL only when a refresh failed */
    case S_TOKEN:
    case S_ACCESS:
    case S_SANDBOX: return; /* their own callbacks continue */
    }
}

struct px_oidc_op *px_oidc_callback(struct px_server *srv, const struct px_oidc_req *in,
                                    px_oidc_cb cb, void *arg)
{
    struct px_oidc_op *op = op_new(srv, in, cb, arg, 1);
    struct px_str q = px_target_query(in->target), v, state, ck;
    char *sandbox_id = NULL;
    char pair[PX_SECURECOOKIE_MAX + 1];
    int n;

    if (op == NULL) {
        struct px_oidc_answer a = {.status = 500, .message = "out of memory"};
        cb(arg, &a);
        return NULL;
    }
    if (op->issuer == NULL || op->client_id == NULL) {
        fail_op(op, 404, NULL, "login is not configured on this proxy");
        return started(op);
    }
    /* §6 step 1: the IdP refused; its words are shown escaped, never logged */
    if (px_query_get(q, PX_STR("error"), &v)) {
        struct px_str d;
        char msg[400], text[201];
        if (!px_query_get(q, PX_STR("error_description"), &d))
            d = v;
        if (pct_decode(px_str_make(d.p, d.len > 600 ? 600 : d.len), 1, text, sizeof(text)) < 0)
            snprintf(text, sizeof(text), "(description too long)");
        for (char *p = text; *p; p++) /* one line; the page escapes the rest */
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = ' ';
        snprintf(msg, sizeof(msg), "the identity provider refused the login: %s", text);
        op->message = strdup(msg);
        fail_op(op, 401, "LOGIN_REFUSED", op->message ? op->message : "login refused");
        return started(op);
    }
    /* step 2: code and state */
    if (!px_query_get(q, PX_STR("code"), &v) || v.len == 0 || v.len > 4096 ||
        !px_query_get(q, PX_STR("state"), &state) || state.len == 0) {
        fail_op(op, 400, "BAD_CALLBACK", "the login answer lacks its code or state");
        return started(op);
    }
    {
        char st[MAX_STATE + 1];
        long sl = pct_decode(state, 0, st, sizeof(st)); /* '=' may come as %3D */
        if ((op->code = malloc(v.len + 1)) == NULL || pct_decode(v, 0, op->code, v.len + 1) < 0 ||
            sl < 0 ||
            px_oidc_state_decode(px_str_make(st, (size_t)sl), &op->return_to, &sandbox_id,
                                 &op->inner) != 0 ||
            !px_str_is_label(px_str_make(sandbox_id, strlen(sandbox_id)), sizeof(op->label) - 1)) {
            free(sandbox_id);
            fail_op(op, 400, "BAD_STATE", "the login state is malformed");
            return started(op);
        }
    }
    for (size_t i = 0; sandbox_id[i]; i++)
        op->label[i] = (char)(sandbox_id[i] >= 'A' && sandbox_id[i] <= 'Z' ? sandbox_id[i] + 32
                                                                           : sandbox_id[i]);
    free(sandbox_id);
    /* step 3: the verifier cookie, which must hold this very state */
    if (px_cookie_find(in->req, PX_STR(PX_OIDC_COOKIE), &ck) != 0 ||
        (n = px_securecookie_decode(op->cookie_secret, PX_STR(PX_OIDC_COOKIE), ck, time(NULL),
                                    PX_OIDC_COOKIE_MAX_AGE, pair, sizeof(pair))) < 0) {
        fail_op(op, 400, "BAD_LOGIN_COOKIE",
                "the login cookie is missing or expired (logins must finish within 5 minutes "
                "in the browser that started them); open the preview again");
        return started(op);
    }
    pkce_cookie(op, host_name(op->host), "", 0); /* used once: cleared whatever happens next */
    char *dot = strchr(pair, '.');
    if (dot == NULL || strlen(dot + 1) != strlen(op->inner) ||
        CRYPTO_memcmp(dot + 1, op->inner, strlen(op->inner)) != 0) {
        OPENSSL_cleanse(pair, sizeof(pair));
        fail_op(op, 400, "BAD_STATE", "the login state does not belong to this browser's login");
        return started(op);
    }
    *dot = '\0';
    op->verifier = strdup(pair);
    OPENSSL_cleanse(pair, sizeof(pair));
    /* where to go at the end, decided now while the configuration is at hand */
    if (!px_oidc_return_safe(in->cfg, op->return_to, in->host)) {
        free(op->return_to);
        op->return_to = strdup("/");
    }
    if (op->verifier == NULL || op->return_to == NULL) {
        fail_op(op, 500, NULL, "out of memory");
        return started(op);
    }
    op->step = S_DISCOVERY;
    resume(op);
    return started(op);
}

void px_oidc_shutdown(void)
{
    struct px_oidc_op *op;

    px_api_cancel(K.disc_call);
    px_api_cancel(K.jwks_call);
    K.disc_call = K.jwks_call = NULL;
    while ((op = K.waiters) != NULL)
        unwait(op); /* their owners cancel them */
    cache_forget_discovery();
    free(K.disc_url);
    K.disc_url = NULL;
    free(F.issuer);
    free(F.public_issuer);
    F.issuer = F.public_issuer = NULL;
}

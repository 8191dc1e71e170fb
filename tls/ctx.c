/* ctx.c — OpenSSL contexts: one per certificate, chosen by SNI (as h2o's
 * on_sni_callback does), ALPN h2/http/1.1, TLS 1.2 and 1.3 only, session
 * tickets whose keys rotate every hour (the previous key still decrypts). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>

#include "tls/tls.h"

#define MAX_NAMES 32
#define TICKET_ROTATE 3600

struct cert {
    SSL_CTX *ctx;           /* owned */
    char *names[MAX_NAMES]; /* owned, lowercased; "*.d" entries match one label */
    int nnames;
};

struct ticket_key {
    unsigned char name[16], aes[32], hmac[32];
    time_t created;
};

struct px_tls {
    struct cert *certs; /* owned array; [0] is the default */
    int ncerts;
    struct ticket_key keys[2]; /* [0] current, [1] previous */
};

static const char CIPHERS12[] = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

static int name_matches(const char *pattern, const char *host)
{
    if (pattern[0] == '*' && pattern[1] == '.') {
        const char *dot = strchr(host, '.');
        return dot != NULL && dot != host && !strcasecmp(dot + 1, pattern + 2);
    }
    return !strcasecmp(pattern, host);
}

static int on_sni(SSL *ssl, int *alert, void *arg)
{
    struct px_tls *t = arg;
    const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    (void)alert;

    if (host == NULL)
        return SSL_TLSEXT_ERR_OK; /* the default context stays */
    /* Exact names first, then wildcards: a custom domain's own certificate wins. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < t->ncerts; i++)
            for (int k = 0; k < t->certs[i].nnames; k++) {
                const char *n = t->certs[i].names[k];
                if ((n[0] == '*') != pass)
                    continue;
                if (name_matches(n, host)) {
                    if (t->certs[i].ctx != SSL_get_SSL_CTX(ssl))
                        SSL_set_SSL_CTX(ssl, t->certs[i].ctx);
                    return SSL_TLSEXT_ERR_OK;
                }
            }
    return SSL_TLSEXT_ERR_OK;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char prefs[] = "\x02h2\x08http/1.1";
    (void)ssl;
    (void)arg;
    if (SSL_select_next_proto((unsigned char **)out, outlen, prefs, sizeof(prefs) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no overlap: carry on without ALPN (HTTP/1.1) */
    return SSL_TLSEXT_ERR_OK;
}

static void new_ticket_key(struct ticket_key *k)
{
    RAND_bytes(k->name, sizeof(k->name));
    RAND_bytes(k->aes, sizeof(k->aes));
    RAND_bytes(k->hmac, sizeof(k->hmac));
    k->created = time(NULL);
}

static struct px_tls *ticket_owner(SSL *ssl)
{
    return SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
}

/* RFC 5077 ticket keys: encrypt with the current key, accept the previous one
 * and ask for a renewal. */
static int on_ticket(SSL *ssl, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    struct px_tls *t = ticket_owner(ssl);
    struct ticket_key *k = NULL;
    OSSL_PARAM params[3];
    int rc = 1;

    if (t == NULL)
        return -1;
    if (time(NULL) - t->keys[0].created > TICKET_ROTATE) {
        t->keys[1] = t->keys[0];
        new_ticket_key(&t->keys[0]);
    }
    if (enc) {
        k = &t->keys[0];
        memcpy(key_name, k->name, 16);
        if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1 ||
            EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1)
            return -1;
    } else {
        for (int i = 0; i < 2; i++)
            if (t->keys[i].created && !memcmp(key_name, t->keys[i].name, 16)) {
                k = &t->keys[i];
                rc = i == 0 ? 1 : 2;
            }
        if (k == NULL)
            return 0; /* unknown key: full handshake */
        if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1)
            return -1;
    }
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k->hmac, sizeof(k->hmac));
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    if (EVP_MAC_CTX_set_params(hctx, params) != 1)
        return -1;
    return rc;
}

static void add_cert_names(struct cert *c)
{
    X509 *x = SSL_CTX_get0_certificate(c->ctx);
    GENERAL_NAMES *sans;

    if (x == NULL)
        return;
    sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans) && c->nnames < MAX_NAMES; i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        if (g->type == GEN_DNS) {
            const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
            c->names[c->nnames++] =
                strndup((const char *)d, (size_t)ASN1_STRING_length(g->d.dNSName));
        }
    }
    GENERAL_NAMES_free(sans);
}

static SSL_CTX *server_ctx(struct px_tls *t, const char *certfile, const char *keyfile, char *err,
                           size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (ctx == NULL)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_set_cipher_list(ctx, CIPHERS12) != 1)
        goto fail;
    SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384");
    if (SSL_CTX_use_certificate_chain_file(ctx, certfile) != 1) {
        snprintf(err, errlen, "tls_cert %s: cannot load the certificate chain", certfile);
        goto fail_quiet;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, keyfile, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "tls_cert %s: cannot load the key %s or it does not match", certfile,
                 keyfile);
        goto fail_quiet;
    }
    SSL_CTX_set_tlsext_servername_callback(ctx, on_sni);
    SSL_CTX_set_tlsext_servername_arg(ctx, t);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    SSL_CTX_set_app_data(ctx, t);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"preview-proxy", 13);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* idle connections keep no buffers */
    return ctx;
fail:
    snprintf(err, errlen, "tls_cert %s: %s", certfile,
             ERR_reason_error_string(ERR_peek_last_error())
                 ? ERR_reason_error_string(ERR_peek_last_error())
                 : "OpenSSL error");
fail_quiet:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

struct px_tls *px_tls_load(const struct px_config *cfg, char *err, size_t errlen)
{
    struct px_tls *t = calloc(1, sizeof(*t));

    if (t == NULL || cfg->ntls == 0) {
        snprintf(err, errlen,
                 cfg->ntls == 0 ? "a TLS listener needs at least one tls_cert" : "out of memory");
        free(t);
        return NULL;
    }
    if ((t->certs = calloc((size_t)cfg->ntls, sizeof(*t->certs))) == NULL)
        goto fail;
    new_ticket_key(&t->keys[0]);
    for (int i = 0; i < cfg->ntls; i++) {
        const struct px_tls_cfg *tc = &cfg->tls[i];
        struct cert *c = &t->certs[t->ncerts];
        if ((c->ctx = server_ctx(t, tc->cert, tc->key, err, errlen)) == NULL)
            goto fail;
        t->ncerts++;
        for (int k = 0; k < tc->ndomains && c->nnames + 2 <= MAX_NAMES; k++) {
            c->names[c->nnames++] = strdup(tc->domains[k]);
            size_t n = strlen(tc->domains[k]) + 3;
            char *w = malloc(n);
            if (w != NULL)
                snprintf(w, n, "*.%s", tc->domains[k]);
            c->names[c->nnames++] = w;
        }
        if (tc->ndomains == 0)
            add_cert_names(c);
    }
    return t;
fail:
    px_tls_free(t);
    return NULL;
}

void px_tls_free(struct px_tls *t)
{
    if (t == NULL)
        return;
    for (int i = 0; i < t->ncerts; i++) {
        SSL_CTX_free(t->certs[i].ctx);
        for (int k = 0; k < t->certs[i].nnames; k++)
            free(t->certs[i].names[k]);
    }
    free(t->certs);
    free(t);
}

SSL *px_tls_new_ssl(struct px_tls *t)
{
    return SSL_new(t->certs[0].ctx);
}

int px_tls_is_h2(SSL *ssl)
{
    const unsigned char *p;
    unsigned int n;

    SSL_get0_alpn_selected(ssl, &p, &n);
    return n == 2 && p[0] == 'h' && p[1] == '2';
}

SSL_CTX *px_tls_client_ctx(const struct px_config *cfg, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if ((cfg->upstream_ca != NULL ? SSL_CTX_load_verify_locations(ctx, cfg->upstream_ca, NULL)
                                  : SSL_CTX_set_default_verify_paths(ctx)) != 1) {
        snprintf(err, errlen, "upstream_ca %s: cannot load",
                 cfg->upstream_ca ? cfg->upstream_ca : "(system)");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

void px_tls_close_notify(struct bufferevent *bev)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);

    /* Best effort on a non-blocking socket: one small alert. Without it clients
     * see an unexpected EOF, and OpenSSL 3 then refuses to resume the session. */
    if (ssl != NULL && SSL_is_init_finished(ssl))
        SSL_shutdown(ssl);
}

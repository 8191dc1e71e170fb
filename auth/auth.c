/* auth.c — the authentication chain of SPEC 4, as a small state machine.
 *
 * Each step may need a record (auth/lookup.c); a lookup answered from the
 * cache continues the loop at once, one that goes to Redis resumes it from the
 * lookup's callback. Steps, in SPEC order:
 *   SANDBOX  fetch the label's record (public sandboxes need nothing more)
 *   BEARER   Authorization: Bearer -> proxy:api-key:{sha256}, org must match
 *   TOKEN    X-Daytona-Preview-Token, then DAYTONA_SANDBOX_AUTH_KEY
 *   COOKIE   daytona-sandbox-auth-{label}, ours (v1) or Daytona's format; for
 *            a token label, refused when the token carries a revocation marker
 *   SIGNED   the label is a signed preview token for this port
 * A signed toolbox file URL (SPEC 4.7) replaces BEARER..SIGNED: its signature,
 * made with the sandbox's signing_key (API mode: C12), alone decides.
 * A failed lookup (Redis down, timeout) never counts as "invalid": when no step
 * succeeded and one could not be checked, the answer is 503, not 401. */
#include <stdio.h>
#include <stdlib.h>

#include <openssl/crypto.h>

#include "auth/auth.h"
#include "auth/cookie.h"
#include "auth/digest.h"
#include "auth/lookup.h"
#include "routing/host.h"
#include "routing/store.h"

enum step {
    ST_SANDBOX = 0,
    /* API mode (issue 10): the Daytona API decides, DAYTONA-API.md §5 steps 6-9 */
    ST_API_PUBLIC,  /* C2 on the label came back */
    ST_API_TOKEN,   /* C4 for the preview-token header came back */
    ST_API_QUERY,   /* C4 for DAYTONA_SANDBOX_AUTH_KEY came back */
    ST_API_SIGNED,  /* C5 came back */
    ST_API_LABEL,   /* C6 on the refused label came back: does it name a sandbox? */
    ST_API_ACCESS,  /* C3 for the Bearer token came back */
    ST_API_RUNNER,  /* C6 for the resolved sandbox came back */
    ST_API_SIGNING, /* C12 (the signing key of a file URL's sandbox) came back */
    /* C12, asked again past the caches after a mismatch, came back */
    ST_API_SIGNING_FRESH,
    ST_PUBLIC,
    ST_BEARER,
    ST_TOKEN,
    ST_COOKIE,
    ST_COOKIE_SANDBOX,
    ST_SIGNED,
    ST_SIGNED_SANDBOX,
    ST_FAIL,
};

struct px_auth {
    struct px_auth_in in; /* by value; slices borrowed from the request */
    px_auth_cb cb;
    void *arg;
    enum step step;
    struct px_lk *lk;         /* owned by lookup.c; we only cancel it */
    struct px_sandbox *sb;    /* owned; the label's record, if any */
    struct px_sandbox *other; /* owned; the record a cookie or signed token named */
    char id[256];             /* sandbox ID from a cookie or signed token */
    char org[256];            /* org of a Bearer API key */
    int key_found;
    int revoked;
    int api_yes;        /* the last API answer was yes (public, valid) */
    char resolved[256]; /* API mode: the sandbox access was granted to */
    char *skey;         /* owned; API mode: the file URL's signing key (secret) */
    unsigned waiting : 1, in_run : 1, done : 1;
    unsigned backend_err : 1, busy_err : 1, label_checked : 1;
    unsigned tried_bearer : 1, tried_token : 1, tried_cookie : 1, tried_signed : 1;
    struct px_auth_out out;
};

static void finish(struct px_auth *a)
{
    a->done = 1;
}

static void allow(struct px_auth *a, struct px_sandbox **owned)
{
    a->out.status = 0;
    a->out.sb = *owned;
    *owned = NULL;
    a->out.label_is_sandbox =
        px_str_eq(a->in.label, px_str_make(a->out.sb->id, strlen(a->out.sb->id)));
    finish(a);
}

static void set_cookie(struct px_auth *a, const char *sandbox_id)
{
    char v[700]; /* v1 of a 255-byte ID, or Daytona's (528 bytes at most for one) */
    const char *secret = a->in.cfg->cookie_secret;

    if (secret == NULL)
        return;
    if (px_cookie_issue(secret, a->in.cfg->cookie_format, a->in.label, a->in.port,
                        px_str_make(sandbox_id, strlen(sandbox_id)), a->in.now, v, sizeof(v)) > 0)
        a->out.cookie_value = strdup(v);
}

static void run(struct px_auth *a);

static void key_free(char **k)
{
    if (*k != NULL)
        OPENSSL_cleanse(*k, strlen(*k));
    free(*k);
    *k = NULL;
}

/* A signed file URL that does not pass (DAYTONA-API.md §7 outcomes). No
 * other credential is tried: the link was meant to be the whole proof. */
static void file_refuse(struct px_auth *a, int status, const char *message)
{
    a->out.status = status;
    a->out.code = status == 400 ? "BAD_REQUEST" : status == 401 ? "UNAUTHORIZED" : NULL;
    a->out.message = message;
    finish(a);
}

/* Refuses for verdict v (not OK); 1 when it did. */
static int file_verdict(struct px_auth *a, enum px_fileurl_verdict v)
{
    switch (v) {
    case PX_FILEURL_OK: return 0;
    case PX_FILEURL_NO_PATH: file_refuse(a, 400, "signed file URL without a path parameter"); break;
    case PX_FILEURL_BAD_EXPIRES:
        file_refuse(a, 401, "signed file URL: expires must be a unix time (0: never)");
        break;
    case PX_FILEURL_EXPIRED: file_refuse(a, 401, "signed file URL has expired"); break;
    case PX_FILEURL_SCHEME: file_refuse(a, 401, "unsupported signature scheme"); break;
    case PX_FILEURL_MISMATCH: file_refuse(a, 401, "invalid signature"); break;
    case PX_FILEURL_NOMEM: file_refuse(a, 503, "out of memory"); break;
    }
    return 1;
}

static void file_no_key(struct px_auth *a)
{
    if (a->backend_err || a->busy_err) /* could not tell: 503 or 429, never a guess */
        a->step = ST_FAIL;
    else
        file_refuse(a, 401, "no signing key is available for this sandbox");
}

/* Standalone: the record (fetched in SANDBOX) holds the key. Its changes are
 * published on proxy:invalidate, so a mismatch needs no second fetch. */
static void file_standalone(struct px_auth *a)
{
    const char *key = a->sb != NULL ? a->sb->signing_key : NULL;

    if (a->backend_err || a->busy_err) {
        a->step = ST_FAIL;
        return;
    }
    if (file_verdict(a, px_fileurl_check(&a->in.file, a->in.now)))
        return;
    if (key == NULL || key[0] == '\0')
        return file_no_key(a);
    if (file_verdict(a, px_fileurl_verify(&a->in.file, px_str_make(key, strlen(key)))))
        return;
    a->out.via = PX_AUTH_VIA_FILE_URL;
    allow(a, &a->sb);
}

static void note_error(struct px_auth *a, const char *err)
{
    if (err == px_err_busy)
        a->busy_err = 1;
    else
        a->backend_err = 1;
}

static void on_lookup(void *arg, const struct px_lk_value *v, const char *err)
{
    struct px_auth *a = arg;

    a->lk = NULL;
    a->waiting = 0;
    switch (a->step) {
    case ST_SANDBOX:
        if (err != NULL)
            note_error(a, err);
        else if (v->found && (a->sb = px_sandbox_dup(v->sb)) == NULL)
            note_error(a, px_err_nomem);
        a->step = ST_PUBLIC;
        break;
    case ST_BEARER:
        if (err != NULL)
            note_error(a, err);
        else if (v->found && v->num >= 0 && (v->num == 0 || v->num > a->in.now)) {
            a->key_found = 1;
            snprintf(a->org, sizeof(a->org), "%s", v->str);
        }
        break; /* run() decides with the result */
    case ST_COOKIE:
        if (err != NULL)
            note_error(a, err);
        else
            a->revoked = v->found;
        break;
    case ST_COOKIE_SANDBOX:
    case ST_SIGNED_SANDBOX:
        if (err != NULL)
            note_error(a, err);
        else if (v->found && (a->other = px_sandbox_dup(v->sb)) == NULL)
            note_error(a, px_err_nomem);
        break;
    case ST_SIGNED:
        if (err != NULL)
            note_error(a, err);
        else if (v->found)
            snprintf(a->id, sizeof(a->id), "%s", v->str);
        break;
    case ST_API_PUBLIC:
    case ST_API_TOKEN:
    case ST_API_QUERY:
    case ST_API_ACCESS:
        if (err != NULL)
            note_error(a, err);
        else
            a->api_yes = v->found;
        break;
    case ST_API_SIGNED:
        if (err != NULL)
            note_error(a, err);
        else if (v->found)
            snprintf(a->id, sizeof(a->id), "%s", v->str);
        break;
    case ST_API_RUNNER:
        if (err != NULL)
            note_error(a, err);
        else if (v->found && (a->other = px_sandbox_dup(v->sb)) == NULL)
            note_error(a, px_err_nomem);
        break;
    case ST_API_LABEL: /* an error leaves it unknown: a plain 401, the safe answer */
        a->out.label_known = err == NULL && v->found;
        a->step = ST_FAIL;
        break;
    case ST_API_SIGNING_FRESH:
        if (err != NULL) /* keep the key that did not match: a failed refetch is no 503 */
            break;
        __attribute__((fallthrough));
    case ST_API_SIGNING:
        key_free(&a->skey);
        if (err != NULL)
            note_error(a, err);
        else if (v->found && (a->skey = strdup(v->str)) == NULL)
            note_error(a, px_err_nomem);
        break;
    case ST_PUBLIC:
    case ST_TOKEN:
    case ST_FAIL: break;
    }
    if (!a->in_run)
        run(a);
}

/* Starts a lookup for the current step; the result lands in on_lookup(). */
static void lookup(struct px_auth *a, enum px_lk_kind kind, struct px_str key)
{
    a->waiting = 1;
    a->lk = px_lookup(kind, key, a->in.client, on_lookup, a);
}

static int token_matches(const struct px_sandbox *sb, struct px_str tok)
{
    size_t n;

    if (sb == NULL || sb->auth_token == NULL || tok.len == 0)
        return 0;
    n = strlen(sb->auth_token);
    return n == tok.len && CRYPTO_memcmp(sb->auth_token, tok.p, n) == 0;
}

static struct px_str bearer(const struct px_head *req)
{
    const struct px_hdr *h = px_head_get(req, PX_STR("authorization"));

    if (h == NULL || h->value.len <= 7 || strncasecmp(h->value.p, "bearer ", 7) != 0)
        return PX_STR_NULL;
    return px_str_make(h->value.p + 7, h->value.len - 7);
}

/* Whether a host label can be a signed preview token at all: tools/proxyctl.c
 * accepts 1-128 of [A-Za-z0-9_-] (Daytona mints 16 of [a-z0-9], DAYTONA-API.md
 * C5). Anything else would cost a Redis fetch that cannot find anything. */
static int can_be_token(struct px_str label)
{
    return px_str_is_label(label, 128);
}

/* "{a}:{b}" as a lookup key; 0 or -1 when it does not fit. */
static int pair_key(char *buf, size_t cap, struct px_str a, struct px_str b, size_t *len)
{
    int n = snprintf(buf, cap, "%.*s:%.*s", (int)a.len, a.p, (int)b.len, b.p);

    if (n < 0 || (size_t)n >= cap)
        return -1;
    *len = (size_t)n;
    return 0;
}

/* Access is decided for sandbox id: the runner comes next (C6). */
static void api_granted(struct px_auth *a, struct px_str id)
{
    if (id.len >= sizeof(a->resolved)) { /* never cut: a prefix is another sandbox */
        a->step = ST_FAIL;
        return;
    }
    memcpy(a->resolved, id.p, id.len);
    a->resolved[id.len] = '\0';
    a->step = ST_API_RUNNER;
    lookup(a, PX_LK_API_RUNNER, id);
}

static void api_granted_id(struct px_auth *a, const char *id)
{
    api_granted(a, px_str_make(id, strlen(id)));
}

/* After the token checks: the auth cookie (no API call), then a signed
 * preview host (C5), then failure. */
static void api_after_tokens(struct px_auth *a)
{
    const struct px_auth_in *in = &a->in;
    struct px_str value;
    char name[300];
    int n = snprintf(name, sizeof(name), PX_COOKIE_PREFIX "%.*s", (int)in->label.len, in->label.p);

    if (in->cfg->cookie_secret != NULL &&
        px_cookie_find(in->req, px_str_make(name, (size_t)n), &value) == 0) {
        a->tried_cookie = 1;
        /* Either format (auth/cookie.h): a Daytona-format cookie names no port */
        if (px_cookie_verify(in->cfg->cookie_secret, in->label, in->port, value, in->now, a->id,
                             sizeof(a->id)) == 0) {
            a->out.via = PX_AUTH_VIA_COOKIE;
            return api_granted_id(a, a->id);
        }
    }
    if (in->toolbox || !can_be_token(in->label)) { /* signed tokens name preview hosts only */
        a->step = ST_FAIL;
        return;
    }
    char key[400];
    size_t klen;
    char port[12];
    snprintf(port, sizeof(port), "%u", in->port);
    if (pair_key(key, sizeof(key), px_str_make(port, strlen(port)), in->label, &klen) != 0) {
        a->step = ST_FAIL;
        return;
    }
    a->tried_signed = 1;
    a->id[0] = '\0';
    a->step = ST_API_SIGNED;
    lookup(a, PX_LK_API_SIGNED, px_str_make(key, klen));
}

/* Asks C4 about one preview token; the answer lands in step next. */
static int api_token(struct px_auth *a, struct px_str tok, enum step next)
{
    char key[700];
    size_t klen;

    if (tok.len == 0 || pair_key(key, sizeof(key), a->in.label, tok, &klen) != 0)
        return 0;
    a->tried_token = 1;
    a->step = next;
    lookup(a, PX_LK_API_TOKEN, px_str_make(key, klen));
    return 1;
}

/* API mode, DAYTONA-API.md §5: C2 decides public; else a preview token (C4),
 * the auth cookie, a signed host (C5); then C6 for the runner of the sandbox
 * access was granted to. A Bearer token is the user's own: C3 asks the API
 * with it and the client's address. */
static void api_step(struct px_auth *a)
{
    const struct px_auth_in *in = &a->in;
    const struct px_hdr *h;

    switch (a->step) {
    case ST_SANDBOX: a->step = ST_API_PUBLIC; return lookup(a, PX_LK_API_PUBLIC, in->label);
    case ST_API_PUBLIC: {
        if (in->file_url) { /* §5 step 7: in place of step 8, after C2 */
            if (file_verdict(a, px_fileurl_check(&in->file, in->now)))
                return;
            a->step = ST_API_SIGNING;
            return lookup(a, PX_LK_API_SIGNING, in->label);
        }
        if (a->api_yes && !px_port_reserved(in->port) && !in->toolbox) {
            a->out.via = PX_AUTH_VIA_PUBLIC;
            return api_granted(a, in->label);
        }
        struct px_str t = bearer(in->req);
        char key[700];
        size_t klen;
        a->api_yes = 0;
        if (t.len > 0 && pair_key(key, sizeof(key), in->label, t, &klen) == 0) {
            /* §5 8.1: the user's own token, asked with their address (C3) */
            a->tried_bearer = 1;
            a->step = ST_API_ACCESS;
            return lookup(a, PX_LK_API_ACCESS, px_str_make(key, klen));
        }
        __attribute__((fallthrough)); /* no Bearer: the preview token */
    }
    case ST_API_ACCESS: {
        if (a->step == ST_API_ACCESS && a->api_yes) {
            a->out.used_authorization = 1; /* ours: not forwarded */
            a->out.via = PX_AUTH_VIA_API_KEY;
            return api_granted(a, in->label);
        }
        a->api_yes = 0;
        h = px_head_get(in->req, PX_STR("x-daytona-preview-token"));
        if (h != NULL && api_token(a, h->value, ST_API_TOKEN))
            return;
        __attribute__((fallthrough)); /* no header token: the query one */
    }
    case ST_API_TOKEN:
        if (a->step == ST_API_TOKEN && a->api_yes) {
            a->out.via = PX_AUTH_VIA_TOKEN_HEADER;
            return api_granted(a, in->label);
        }
        if (in->has_query_token && api_token(a, in->query_token, ST_API_QUERY))
            return;
        return api_after_tokens(a);
    case ST_API_QUERY:
        if (a->api_yes) {
            a->out.via = PX_AUTH_VIA_TOKEN_QUERY;
            api_granted(a, in->label);
            if (a->step == ST_API_RUNNER) /* the page's assets come without the parameter */
                set_cookie(a, a->resolved);
            return;
        }
        return api_after_tokens(a);
    case ST_API_SIGNED:
        if (a->id[0] != '\0') {
            set_cookie(a, a->id);
            a->out.via = PX_AUTH_VIA_SIGNED_URL;
            return api_granted_id(a, a->id);
        }
        a->step = ST_FAIL;
        return;
    case ST_API_SIGNING:
    case ST_API_SIGNING_FRESH: {
        if (a->skey == NULL)
            return file_no_key(a);
        enum px_fileurl_verdict v =
            px_fileurl_verify(&in->file, px_str_make(a->skey, strlen(a->skey)));
        if (v == PX_FILEURL_MISMATCH && a->step == ST_API_SIGNING) {
            /* §7: the key may have been rotated since we cached it: ask C12
             * once more past the caches; what it says replaces them. */
            a->step = ST_API_SIGNING_FRESH;
            a->waiting = 1;
            a->lk = px_lookup_refresh(PX_LK_API_SIGNING, in->label, in->client, on_lookup, a);
            return;
        }
        if (file_verdict(a, v))
            return;
        a->out.via = PX_AUTH_VIA_FILE_URL;
        return api_granted(a, in->label);
    }
    case ST_API_RUNNER:
        if (a->other != NULL)
            return allow(a, &a->other);
        if (!a->backend_err && !a->busy_err) {
            /* Access was granted, but the API knows no runner for the sandbox:
             * it is gone (issue 10: 404, where Daytona answers 400). */
            a->out.status = 404;
            a->out.code = "SANDBOX_NOT_FOUND";
            a->out.message = "the sandbox does not exist (any more)";
            free(a->out.cookie_value);
            a->out.cookie_value = NULL;
            finish(a);
            return;
        }
        a->step = ST_FAIL;
        return;
    default: a->step = ST_FAIL; return;
    }
}

/* One step of the chain. Sets a->waiting when it started a lookup. */
static void step(struct px_auth *a)
{
    const struct px_auth_in *in = &a->in;

    if (in->cfg->api_url != NULL && a->step != ST_FAIL)
        return api_step(a);
    switch (a->step) {
    case ST_SANDBOX: return lookup(a, PX_LK_SANDBOX, in->label);
    case ST_PUBLIC:
        if (in->file_url)
            return file_standalone(a);
        if (a->sb != NULL && a->sb->is_public && !px_port_reserved(in->port) && !in->toolbox) {
            a->out.via = PX_AUTH_VIA_PUBLIC;
            return allow(a, &a->sb);
        }
        a->step = ST_BEARER;
        if (bearer(in->req).len > 0) {
            char hex[65];
            struct px_str t = bearer(in->req);
            a->tried_bearer = 1;
            if (px_sha256_hex(t.p, t.len, hex) != 0) {
                note_error(a, px_err_nomem); /* ends as 503, never as a pass */
                return;
            }
            if (a->sb != NULL) /* without a sandbox there is no org to match */
                return lookup(a, PX_LK_APIKEY, px_str_make(hex, 64));
        }
        return;
    case ST_BEARER:
        if (a->key_found && a->sb != NULL && a->sb->org != NULL && a->sb->org[0] != '\0' &&
            !strcmp(a->org, a->sb->org)) {
            a->out.used_authorization = 1;
            a->out.via = PX_AUTH_VIA_API_KEY;
            return allow(a, &a->sb);
        }
        a->step = ST_TOKEN;
        return;
    case ST_TOKEN: {
        const struct px_hdr *h = px_head_get(in->req, PX_STR("x-daytona-preview-token"));
        if (h != NULL) {
            a->tried_token = 1;
            a->out.via = PX_AUTH_VIA_TOKEN_HEADER;
            if (token_matches(a->sb, h->value))
                return allow(a, &a->sb);
        }
        if (in->has_query_token) {
            a->tried_token = 1;
            if (token_matches(a->sb, in->query_token)) {
                /* A browser that opened ?DAYTONA_SANDBOX_AUTH_KEY=... loads its assets
                 * without it: the cookie carries the authentication on. */
                set_cookie(a, a->sb->id);
                a->out.via = PX_AUTH_VIA_TOKEN_QUERY;
                return allow(a, &a->sb);
            }
        }
        a->step = ST_COOKIE;
        struct px_str value;
        char name[300];
        int n =
            snprintf(name, sizeof(name), PX_COOKIE_PREFIX "%.*s", (int)in->label.len, in->label.p);
        if (in->cfg->cookie_secret == NULL ||
            px_cookie_find(in->req, px_str_make(name, (size_t)n), &value) != 0)
            goto no_cookie;
        a->tried_cookie = 1;
        /* Either format (auth/cookie.h): a Daytona-format cookie names no port */
        if (px_cookie_verify(in->cfg->cookie_secret, in->label, in->port, value, in->now, a->id,
                             sizeof(a->id)) != 0)
            goto no_cookie;
        a->out.via = PX_AUTH_VIA_COOKIE;
        if (px_str_eq(px_str_make(a->id, strlen(a->id)), in->label)) {
            if (a->sb != NULL)
                return allow(a, &a->sb);
            goto no_cookie; /* the sandbox is gone */
        }
        /* A cookie minted from a signed token dies with the token's revocation. */
        return lookup(a, PX_LK_REVOKED, in->label);
    no_cookie:
        a->id[0] = '\0';
        a->step = ST_SIGNED;
        return;
    }
    case ST_COOKIE:
        if (a->revoked || a->id[0] == '\0') {
            a->id[0] = '\0';
            a->step = ST_SIGNED;
            return;
        }
        a->step = ST_COOKIE_SANDBOX;
        return lookup(a, PX_LK_SANDBOX, px_str_make(a->id, strlen(a->id)));
    case ST_COOKIE_SANDBOX:
        if (a->other != NULL)
            return allow(a, &a->other);
        a->id[0] = '\0';
        a->step = ST_SIGNED;
        return;
    case ST_SIGNED: {
        char key[400];
        int n;
        if (in->toolbox) { /* signed tokens name preview hosts only */
            a->step = ST_FAIL;
            return;
        }
        if (a->id[0] != '\0') { /* the lookup came back */
            a->out.via = PX_AUTH_VIA_SIGNED_URL;
            a->step = ST_SIGNED_SANDBOX;
            return lookup(a, PX_LK_SANDBOX, px_str_make(a->id, strlen(a->id)));
        }
        if (a->tried_signed || !can_be_token(in->label)) {
            a->step = ST_FAIL;
            return;
        }
        a->tried_signed = 1;
        n = snprintf(key, sizeof(key), "%u:%.*s", in->port, (int)in->label.len, in->label.p);
        return lookup(a, PX_LK_SIGNED, px_str_make(key, (size_t)n));
    }
    case ST_SIGNED_SANDBOX:
        if (a->other != NULL) {
            set_cookie(a, a->other->id);
            return allow(a, &a->other);
        }
        a->step = ST_FAIL;
        return;
    case ST_API_PUBLIC:
    case ST_API_TOKEN:
    case ST_API_QUERY:
    case ST_API_SIGNED:
    case ST_API_ACCESS:
    case ST_API_RUNNER:
    case ST_API_SIGNING:
    case ST_API_SIGNING_FRESH:
    case ST_API_LABEL: a->step = ST_FAIL; return; /* API mode only (api_step) */
    case ST_FAIL:
        if (a->busy_err) {
            a->out.status = 429;
            a->out.code = "TOO_MANY_LOOKUPS";
            a->out.message = "too many requests with unknown credentials; try again shortly";
        } else if (a->backend_err) {
            a->out.status = 503;
            a->out.code = "AUTH_BACKEND_UNAVAILABLE";
            a->out.message = "the authentication backend is unavailable; try again shortly";
        } else if (in->check_label && in->cfg->api_url != NULL && !a->label_checked) {
            /* API mode cannot tell a private sandbox's ID from a dead token by
             * the answers so far (C2 and C5 refuse both): the runner lookup can. */
            a->label_checked = 1;
            a->step = ST_API_LABEL;
            return lookup(a, PX_LK_API_RUNNER, in->label);
        } else {
            a->out.label_known = in->cfg->api_url != NULL ? a->out.label_known : a->sb != NULL;
            a->out.status = 401;
            a->out.code = a->tried_bearer || a->tried_token || a->tried_cookie
                              ? "INVALID_CREDENTIALS"
                              : "UNAUTHORIZED";
            a->out.message =
                a->tried_bearer || a->tried_token || a->tried_cookie
                    ? "the credentials sent are not valid for this sandbox and port (checked: "
                      "Authorization bearer API key, X-Daytona-Preview-Token, "
                      "DAYTONA_SANDBOX_AUTH_KEY, auth cookie, signed preview URL)"
                    : "authentication required: send the sandbox's preview token in the "
                      "X-Daytona-Preview-Token header or the DAYTONA_SANDBOX_AUTH_KEY query "
                      "parameter, an API key as Authorization: Bearer, or open a signed "
                      "preview URL";
        }
        finish(a);
        return;
    }
}

static void auth_free(struct px_auth *a)
{
    px_sandbox_free(a->sb);
    px_sandbox_free(a->other);
    key_free(&a->skey);
    free(a);
}

static void run(struct px_auth *a)
{
    a->in_run = 1;
    while (!a->done && !a->waiting)
        step(a);
    a->in_run = 0;
    if (a->done) {
        a->cb(a->arg, &a->out);
        auth_free(a);
    }
}

struct px_auth *px_auth_start(const struct px_auth_in *in, px_auth_cb cb, void *arg)
{
    struct px_auth *a = calloc(1, sizeof(*a));

    if (a == NULL) {
        struct px_auth_out out = {.status = 503, .message = "out of memory"};
        cb(arg, &out);
        return NULL;
    }
    a->in = *in;
    a->cb = cb;
    a->arg = arg;
    a->in_run = 1;
    while (!a->done && !a->waiting)
        step(a);
    a->in_run = 0;
    if (a->done) {
        a->cb(a->arg, &a->out);
        auth_free(a);
        return NULL;
    }
    return a;
}

void px_auth_cancel(struct px_auth *a)
{
    if (a == NULL)
        return;
    px_lookup_cancel(a->lk);
    free(a->out.cookie_value);
    auth_free(a);
}

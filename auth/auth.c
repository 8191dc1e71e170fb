/* auth.c — the authentication chain over the in-memory store.
 *
 * Order (SPEC 4): public sandbox on a non-reserved port needs nothing; then
 * the X-Daytona-Preview-Token header, then the DAYTONA_SANDBOX_AUTH_KEY query
 * parameter. Refusals name what was tried. An unknown sandbox is a 401 like a
 * wrong token, so the proxy is no oracle for which sandbox IDs exist. */
#include <openssl/crypto.h>

#include "auth/auth.h"
#include "routing/route.h"
#include "routing/store.h"

static int token_matches(const struct px_sandbox *sb, struct px_str tok)
{
    size_t n;

    if (sb->auth_token == NULL || tok.len == 0)
        return 0;
    n = strlen(sb->auth_token);
    return n == tok.len && CRYPTO_memcmp(sb->auth_token, tok.p, n) == 0;
}

struct px_auth *px_auth_start(const struct px_auth_in *in, px_auth_cb cb, void *arg)
{
    struct px_auth_out out = {0};
    const struct px_sandbox *sb = px_store_find(in->cfg, in->label);
    const struct px_hdr *hdr = px_head_get(in->req, PX_STR("x-daytona-preview-token"));
    int tried = hdr != NULL || in->has_query_token;

    if (sb != NULL && sb->is_public && !px_port_reserved(in->port) && !in->toolbox)
        goto allow;
    if (sb != NULL && hdr != NULL && token_matches(sb, hdr->value))
        goto allow;
    if (sb != NULL && in->has_query_token && token_matches(sb, in->query_token))
        goto allow;
    out.status = 401;
    out.code = tried ? "INVALID_TOKEN" : "UNAUTHORIZED";
    out.message = tried ? "the preview token is not valid for this sandbox (tried: "
                          "X-Daytona-Preview-Token header, DAYTONA_SANDBOX_AUTH_KEY query)"
                        : "authentication required: send the sandbox's preview token in the "
                          "X-Daytona-Preview-Token header or the DAYTONA_SANDBOX_AUTH_KEY query "
                          "parameter, or use a signed preview URL";
    cb(arg, &out);
    return NULL;
allow:
    out.sb = px_sandbox_dup(sb);
    out.label_is_sandbox = 1;
    if (out.sb == NULL) {
        out.status = 503;
        out.message = "out of memory";
    }
    cb(arg, &out);
    return NULL;
}

void px_auth_cancel(struct px_auth *a)
{
    (void)a;
}

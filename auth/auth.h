/* auth.h — the authentication chain of SPEC 4.
 *
 * One call decides whether a request may reach a sandbox and which sandbox it
 * is. The decision may need lookups (Redis, later the API), so it completes
 * through a callback; backends that answer from memory call it before
 * px_auth_start() returns. */
#ifndef PX_AUTH_H
#define PX_AUTH_H

#include <time.h>

#include "auth/fileurl.h"
#include "proxy/h1.h"
#include "proxy/px.h"

struct px_sandbox;

struct px_auth_in {
    const struct px_config *cfg; /* borrowed */
    time_t now;
    const struct px_head *req; /* borrowed; lives until the callback */
    struct px_str label;       /* sandbox ID or signed token (lowercased) */
    unsigned port;             /* 2280 for toolbox requests */
    unsigned toolbox : 1;      /* /toolbox/{id}/... on a base host */
    struct px_str query_token; /* DAYTONA_SANDBOX_AUTH_KEY value, or empty */
    unsigned has_query_token : 1;
    unsigned file_url : 1;  /* a signed file URL (SPEC 4.7): its signature alone decides */
    struct px_fileurl file; /* when file_url; slices of the request target */
    const char *client;     /* borrowed; the client's address, for per-client lookup budgets */
    /* On a 401, find out whether the label names an existing sandbox
     * (out.label_known): set for a browser navigation that could go to the IdP.
     * API mode asks C6 on the label, which costs one cached lookup. */
    unsigned check_label : 1;
};

/* Which credential admitted a request (for metrics; never logged with its value). */
enum px_auth_via {
    PX_AUTH_VIA_NONE = 0,
    PX_AUTH_VIA_PUBLIC,       /* a public sandbox, no credential */
    PX_AUTH_VIA_API_KEY,      /* Authorization: Bearer (an API key or the user's token) */
    PX_AUTH_VIA_TOKEN_HEADER, /* X-Daytona-Preview-Token */
    PX_AUTH_VIA_TOKEN_QUERY,  /* DAYTONA_SANDBOX_AUTH_KEY */
    PX_AUTH_VIA_COOKIE,       /* daytona-sandbox-auth-{label} (also after an OIDC login) */
    PX_AUTH_VIA_SIGNED_URL,   /* the host label is a signed preview token */
    PX_AUTH_VIA_FILE_URL,     /* a signed toolbox file URL (SPEC 4.7) */
};

struct px_auth_out {
    int status;            /* 0 allowed, else 400 (file URL)/401/403/404/429/503 */
    enum px_auth_via via;  /* when allowed: which step admitted */
    const char *code;      /* static; for the error body */
    const char *message;   /* static; safe to show */
    struct px_sandbox *sb; /* owned by the receiver once the callback runs; NULL on refusal */
    unsigned used_authorization : 1; /* the Bearer header was ours: do not forward it */
    unsigned label_is_sandbox : 1;   /* the host label is a sandbox ID (safe to log) */
    /* Refused with 401, and the label names an existing sandbox (only looked
     * for with in.check_label). A label that names none is a signed token that
     * expired or was revoked, or nothing at all: logging in cannot help
     * (LESSONS A2), so no IdP redirect. */
    unsigned label_known : 1;
    char *cookie_value; /* owned by the receiver: set daytona-sandbox-auth-{label} to it */
};

typedef void (*px_auth_cb)(void *arg, struct px_auth_out *out);

struct px_auth;

/* Runs the chain. Returns NULL when cb already ran, else a handle the caller
 * may cancel (then cb never runs). */
struct px_auth *px_auth_start(const struct px_auth_in *in, px_auth_cb cb, void *arg);
void px_auth_cancel(struct px_auth *a);

#endif

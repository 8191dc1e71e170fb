/* api.h — a non-blocking client for the Daytona API (issue 10; DAYTONA-API.md
 * §2 calls, §3 retries).
 *
 * One call is one request with its retries: up to PX_API_ATTEMPTS attempts,
 * 150 ms then 300 ms apart, each bounded by api_timeout (API_CLIENT_TIMEOUT_SEC);
 * connections come from and go back to the runner pool (keep-alive), https://
 * is verified like https runners, names are resolved with evdns. Responses are
 * framed by the proxy's own HTTP/1.1 parser and capped at PX_API_MAX_BODY. */
#ifndef PX_API_H
#define PX_API_H

#include "proxy/px.h"
#include "proxy/server.h"

#define PX_API_ATTEMPTS 3
#define PX_API_MAX_BODY (1024 * 1024) /* a bigger answer is an error, never buffered */
#define PX_API_MAX_PATH 2048
#define PX_API_MAX_BEARER 8192 /* a longer bearer is refused, never cut */

/* The outcome, borrowed by the callback for its duration only. */
struct px_api_resp {
    int status;       /* HTTP status of the last attempt; 0 when no answer came */
    const char *err;  /* NULL when an answer came, else why not (px_err_*) */
    const char *body; /* NUL-terminated copy of the body ("" when none) */
    size_t body_len;
    int json_status; /* "statusCode" of a JSON error body (§3), 0 when absent */
    unsigned attempts;
    const struct px_head *head; /* the response head when an answer came, else NULL */
};

typedef void (*px_api_cb)(void *arg, const struct px_api_resp *r);

enum {
    PX_API_USER = 1u,      /* bearer is the user's token: send X-Forwarded-For */
    PX_API_FINAL_4XX = 2u, /* §3 rule 4: a 4xx other than 408/429 is final (C2-C4, C12, C13) */
    PX_API_ONCE = 4u,      /* one attempt only (C7, C11) */
};

struct px_api_call; /* in flight; cancellable */

/* Starts method {api_url}{path} (path already escaped, starting with '/').
 * bearer NULL means the proxy's api_key; xff is sent with PX_API_USER. cb runs
 * exactly once, from the event loop (never before this returns), unless the
 * call is cancelled. Returns NULL only when api_url is unusable or memory ran
 * out, and then cb never runs. */
struct px_api_call *px_api_request(struct px_server *srv, const char *method, const char *path,
                                   const char *bearer, const char *xff, unsigned flags,
                                   px_api_cb cb, void *arg);

/* The general form (OIDC discovery, JWKS, token endpoint): method on an
 * absolute http(s) URL (query allowed, no fragment). headers (may be NULL)
 * are extra "Name: value\r\n" lines; body (may be NULL) is sent with its
 * Content-Length. Same framing, cap, pool and §3 classification as API calls;
 * flags as above (PX_API_ONCE for one attempt); timeout is seconds per attempt.
 * Returns NULL (and cb never runs) when the URL or a header is unusable. */
struct px_api_call *px_http_request(struct px_server *srv, const char *method, const char *url,
                                    const char *headers, const char *body, size_t body_len,
                                    unsigned flags, int timeout, px_api_cb cb, void *arg);

/* cb never runs afterwards; everything the call holds is freed now. */
void px_api_cancel(struct px_api_call *call);

/* At exit, after the owners of calls cancelled theirs: ends the rest (fire
 * and forget ones such as C7), so nothing is left for the pool or the loop. */
void px_api_cancel_all(void);

/* §3 classification of a finished attempt: 1 when it is worth another try. */
int px_api_retryable(int status, const char *body, size_t len, unsigned flags, int *json_status);

/* Splits an api_url ("http://host:port/prefix"). Returns 0 or -1. host and
 * prefix are copied into the caller's buffers. */
int px_api_parse_url(const char *url, int *tls, char *host, size_t hostlen, int *port, char *prefix,
                     size_t prefixlen);

/* ---- C1: GET {api}/config ---- */

/* What the proxy uses of DaytonaConfiguration (§2 C1); strings owned by api.c. */
struct px_api_info {
    int ready; /* read at least once */
    char *version, *oidc_issuer, *oidc_client_id, *oidc_audience;
};

/* Starts reading {api}/config in the background: rounds of one call (with its
 * §3 retries) 1, 2, 4 ... 60 s apart until one succeeds. Unlike Daytona, the
 * listeners do not wait for it and the proxy never exits over it: nothing
 * before OIDC needs the answer. No-op without api_url. Returns 0 or -1. */
int px_api_start(struct px_server *srv);
void px_api_stop(void);
const struct px_api_info *px_api_info(void);

/* Reads a DaytonaConfiguration body into info (replacing its strings).
 * Returns 0, or -1 with *why when a key the proxy needs is missing or mistyped. */
int px_api_parse_config(const char *body, size_t len, struct px_api_info *info, const char **why);
void px_api_info_clear(struct px_api_info *info);

#endif

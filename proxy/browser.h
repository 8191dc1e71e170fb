/* browser.h — what a person with a browser sees: the preview warning page
 * (SPEC 6), its accept endpoint, and CORS (SPEC 7). */
#ifndef PX_BROWSER_H
#define PX_BROWSER_H

#include <event2/buffer.h>

#include "proxy/h1.h"
#include "proxy/px.h"

/* Is the User-Agent one of the browser families of SPEC 6 (and not a bot)? */
int px_ua_is_browser(struct px_str ua);

/* Does the request carry daytona-preview-page-accepted=true? */
int px_warning_accepted(const struct px_head *req);

/* Appends the warning page for target_url (not yet escaped) to out. */
void px_warning_page(struct evbuffer *out, struct px_str target_url);

/* Appends the accept endpoint's answer: a page that moves on to target (a safe
 * URL from px_safe_redirect, not yet escaped) by meta refresh, with a link. */
void px_accept_page(struct evbuffer *out, struct px_str target);

/* The headers the warning page and the accept answer carry. */
#define PX_WARNING_HEADERS                                                                         \
    "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; form-action "         \
    "'self'\r\n"                                                                                   \
    "X-Content-Type-Options: nosniff\r\n"

/* Decides where the accept endpoint may redirect: writes the target into out
 * (capacity outlen) and returns its length; anything unsafe becomes "/".
 * redirect is the raw (still percent-encoded) query value; host is the
 * request's Host. Same-host absolute http(s) URLs and paths starting with one
 * '/' are safe; backslashes count as slashes (LESSONS A9). */
size_t px_safe_redirect(struct px_str redirect, struct px_str host, char *out, size_t outlen);

/* Percent-encodes s for a query value. */
void px_url_encode(struct evbuffer *out, struct px_str s);

/* Is this a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method)? */
int px_cors_is_preflight(const struct px_head *req);

/* What the CORS decision of SPEC 7 knows about a request besides its head. */
struct px_cors_req {
    const struct px_config *cfg; /* borrowed; cors_credentials, cors_origins, domains */
    struct px_str label;         /* the request's host label (sandbox ID or signed token),
                                  * a custom domain's sandbox or a toolbox ID; empty if none */
    const char *sandbox;         /* borrowed; the resolved sandbox's ID, NULL before auth */
};

/* SPEC 7: may this request's Origin (o, the raw header value) have
 * Access-Control-Allow-Credentials? Under same-sandbox the Origin must be a preview
 * host (any port) whose label is r->label or r->sandbox, under same-domain any host
 * under the base domain req's Host is under; cors_origins entries always pass, and
 * any passes every value. Malformed values and "null" pass only under any. */
int px_cors_credentials_allowed(struct px_str o, const struct px_head *req,
                                const struct px_cors_req *r);

/* Appends the preflight answer's headers (r as for px_cors_headers). */
struct px_headw;
void px_cors_preflight_headers(struct px_headw *w, const struct px_head *req,
                               const struct px_cors_req *r);

/* Appends the CORS headers for a normal response when the request had an
 * Origin (and CORS is not disabled): the Origin reflected, Vary: Origin, and
 * Access-Control-Allow-Credentials: true when px_cors_credentials_allowed(). */
void px_cors_headers(struct px_headw *w, const struct px_head *req, const struct px_cors_req *r);

/* The call sites' shorthand: cfg, label slice and sandbox (a struct px_sandbox
 * pointer, may be NULL) of a connection. */
#define PX_CORS_REQ(cfg_, label_, sb_)                                                             \
    (&(struct px_cors_req){(cfg_), (label_), (sb_) != NULL ? (sb_)->id : NULL})

/* X-Daytona-Disable-CORS: true */
int px_cors_disabled(const struct px_head *req);

/* Response header names the proxy's CORS headers replace. */
int px_cors_owned_header(struct px_str name);

#endif

/* cookie.h — the signed auth cookie of SPEC 4.5 and cookie header helpers. */
#ifndef PX_COOKIE_H
#define PX_COOKIE_H

#include <time.h>

#include "proxy/h1.h"
#include "proxy/px.h"

#define PX_COOKIE_PREFIX "daytona-sandbox-auth-"
#define PX_COOKIE_MAX_AGE 3600

/* Writes "v1.{id}.{expires}.{mac}" for cookie `daytona-sandbox-auth-{label}`
 * into out (NUL-terminated). Returns its length, or -1 if out is too small.
 * A cookie whose label is not the sandbox ID is bound to port. */
int px_cookie_mint(const char *secret, struct px_str label, unsigned port, struct px_str sandbox_id,
                   time_t expires, char *out, size_t outlen);

/* Checks a cookie value for `daytona-sandbox-auth-{label}`: well formed, mac
 * right (constant-time), not expired. On success *sandbox_id points into value. */
int px_cookie_verify(const char *secret, struct px_str label, unsigned port, struct px_str value,
                     time_t now, struct px_str *sandbox_id);

/* Finds cookie `name` in the request's Cookie headers. */
int px_cookie_find(const struct px_head *req, struct px_str name, struct px_str *value);

/* base64url without padding. out needs 4*ceil(n/3)+1 bytes. Returns the length. */
size_t px_base64url(const unsigned char *in, size_t n, char *out);

#endif

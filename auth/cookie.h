/* cookie.h — the signed auth cookie of SPEC 4.5 and cookie header helpers.
 *
 * Two formats are read, always: ours ("v1.{id}.{expires}.{mac}", port-bound
 * for signed-token labels) and Daytona's (gorilla securecookie, see
 * auth/securecookie.h), so sessions survive a swap with the Go proxy in either
 * direction. Which one is written is the cookie_format directive. */
#ifndef PX_COOKIE_H
#define PX_COOKIE_H

#include <time.h>

#include "proxy/h1.h"
#include "proxy/px.h"

#define PX_COOKIE_PREFIX "daytona-sandbox-auth-"
#define PX_COOKIE_MAX_AGE 3600
#define PX_COOKIE_NAME_MAX 512 /* "daytona-sandbox-auth-{label}", NUL included */

/* The v1 format alone: writes "v1.{id}.{expires}.{mac}" for cookie `daytona-sandbox-auth-{label}`
 * into out (NUL-terminated). Returns its length, or -1 if out is too small.
 * A cookie whose label is not the sandbox ID is bound to port. */
int px_cookie_mint(const char *secret, struct px_str label, unsigned port, struct px_str sandbox_id,
                   time_t expires, char *out, size_t outlen);

/* Writes the value of cookie `daytona-sandbox-auth-{label}` granting
 * sandbox_id, issued now, in format (PX_COOKIE_FMT_DAYTONA or _V1), into out
 * (NUL-terminated). A Daytona-format cookie for a signed-token label on a
 * reserved port is written as v1 instead (see px_cookie_verify). Returns the
 * length, or -1 if out is too small. */
int px_cookie_issue(const char *secret, int format, struct px_str label, unsigned port,
                    struct px_str sandbox_id, time_t now, char *out, size_t outlen);

/* Checks a cookie value for `daytona-sandbox-auth-{label}` in either format:
 * well formed, mac right (constant time), not expired (v1: before its expiry;
 * Daytona: issued at most an hour ago). A Daytona-format value names no port:
 * it is accepted on every port, except that a signed-token label (label is not
 * the sandbox ID) is refused on the reserved ports 22222/2280/33333. On success
 * the sandbox ID is written NUL-terminated into id (idcap bytes). */
int px_cookie_verify(const char *secret, struct px_str label, unsigned port, struct px_str value,
                     time_t now, char *id, size_t idcap);

/* Finds cookie `name` in the request's Cookie headers. */
int px_cookie_find(const struct px_head *req, struct px_str name, struct px_str *value);

/* base64url without padding. out needs 4*ceil(n/3)+1 bytes. Returns the length. */
size_t px_base64url(const unsigned char *in, size_t n, char *out);

#endif

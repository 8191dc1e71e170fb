/* fileurl.h — signed toolbox file URLs (SPEC 4.7, DAYTONA-API.md §7).
 *
 * A link to one file of a sandbox that works without any other credential:
 *   GET|HEAD /toolbox/{id}/files/download?path=P&expires=E&signature=S
 *   POST     /toolbox/{id}/files/upload-v2?path=P&expires=E&signature=S
 * S = "v1_" + unpadded base64url(HMAC-SHA256(key, "v1:files:{M}:{P}:{E}")), M is
 * GET for a download (HEAD included) and POST for an upload, P the decoded path,
 * E a unix time (0: never expires), key the sandbox's signing key.
 *
 * No state and nothing but OpenSSL: proxyctl links this file to mint the links
 * the proxy checks. */
#ifndef PX_FILEURL_H
#define PX_FILEURL_H

#include <time.h>

#include "proxy/px.h"

/* "v1_" + 43 characters of base64url + NUL */
#define PX_FILEURL_SIG_MAX 48

/* The parameters of a request that is a signed file URL: slices of the request
 * target, still percent-encoded. */
struct px_fileurl {
    const char *method; /* static; "GET" or "POST": what the signature covers */
    struct px_str path, expires, signature;
    unsigned has_path : 1, has_expires : 1;
};

/* Is this base-host toolbox request a signed file URL? method is the request's
 * method, rest what follows /toolbox/{id} (path and query, as received). Only
 * GET/HEAD .../files/download and POST .../files/upload-v2, compared in their
 * escaped form without a trailing slash, with a non-empty `signature`
 * parameter qualify; any other request takes the normal authentication.
 * Returns 1 and fills f (slices of rest), else 0. */
int px_fileurl_match(struct px_str method, struct px_str rest, struct px_fileurl *f);

enum px_fileurl_verdict {
    PX_FILEURL_OK = 0,
    PX_FILEURL_NO_PATH,     /* 400: no (decodable) path parameter */
    PX_FILEURL_BAD_EXPIRES, /* 401: expires missing or not a non-negative integer */
    PX_FILEURL_EXPIRED,     /* 401: expires is in the past */
    PX_FILEURL_SCHEME,      /* 401: the signature does not start with v1_ */
    PX_FILEURL_MISMATCH,    /* 401: the signature is not the key's */
    PX_FILEURL_NOMEM,       /* 503 */
};

/* What can be decided without the key, in DAYTONA-API.md §7's order (a
 * signature with a malformed escape is a MISMATCH: no key makes it). */
enum px_fileurl_verdict px_fileurl_check(const struct px_fileurl *f, time_t now);

/* Compares f's signature with the one key makes (constant time). Call after
 * px_fileurl_check() said OK. Returns OK, MISMATCH or NOMEM. */
enum px_fileurl_verdict px_fileurl_verify(const struct px_fileurl *f, struct px_str key);

/* The signature for method M ("GET" or "POST"), the decoded path and expires
 * (decimal text) into out. Returns its length, or 0 on an OpenSSL failure. */
size_t px_fileurl_sign(struct px_str key, const char *method, struct px_str path,
                       struct px_str expires, char out[PX_FILEURL_SIG_MAX]);

/* Percent-decodes a query value ('+' is a space, as Go's url.ParseQuery reads
 * it) into out, which has room for in.len bytes. Returns the decoded length,
 * or -1 for a malformed escape. */
long px_fileurl_unescape(struct px_str in, char *out);

#endif

/* digest.h — SHA-256 and HMAC-SHA256 for the request path.
 *
 * OpenSSL 3's one-shot HMAC() and SHA256() look the algorithm up in the
 * provider tables on every call (about 2.3 µs of a 0.5 µs MAC); these keep the
 * fetched algorithm, and for HMAC the keyed context, for the process. */
#ifndef PX_DIGEST_H
#define PX_DIGEST_H

#include <stddef.h>

/* out = SHA-256(in). Returns 0, or -1 on an OpenSSL failure. */
int px_sha256(const void *in, size_t n, unsigned char out[32]);

/* out = lowercase hex of SHA-256(in), NUL-terminated: the form API keys are
 * stored under (`proxy:api-key:{hex}`), shared by the proxy and proxyctl so the
 * two cannot disagree. Returns 0 or -1. */
int px_sha256_hex(const void *in, size_t n, char out[65]);

/* out = HMAC-SHA256(key, msg). The context keyed with the last key used is
 * kept, so a stable secret costs one key setup per process. Returns 0 or -1. */
int px_hmac_sha256(const char *key, const void *msg, size_t n, unsigned char out[32]);

#endif

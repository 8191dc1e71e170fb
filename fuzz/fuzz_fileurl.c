/* fuzz_fileurl.c — the signed file-URL verifier (auth/fileurl.c, SPEC 4.7):
 * px_fileurl_match() on the request, then px_fileurl_check() and
 * px_fileurl_verify() with a fixed key.
 *
 * Input: byte 0 picks the method (GET, HEAD, POST, other), the rest is the
 * request target after /toolbox/{id} (path and query, as received). Oracles:
 *  - a URL the proxy signs itself for the matched method, path and expires
 *    verifies; the fuzzed signature verifies only if it is that one;
 *  - the verdict after a match is one of the documented ones. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/fileurl.h"
#include "fuzz/check.h"

#define KEY "testsigningkey1234567890abcdefgh"
#define NOW 1781234567L

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static const char *const methods[] = {"GET", "HEAD", "POST", "PUT"};
    struct px_fileurl f;

    if (size < 1 || size > 8192)
        return 0;
    const char *m = methods[data[0] & 3];
    /* A copy of exactly the input's length: reads past it are ASan's to see. */
    char *rest = malloc(size - 1 ? size - 1 : 1);
    if (rest == NULL)
        return 0;
    memcpy(rest, data + 1, size - 1);
    struct px_str key = px_str_make(KEY, strlen(KEY));

    if (px_fileurl_match(px_str_make(m, strlen(m)), px_str_make(rest, size - 1), &f)) {
        CHECK(f.signature.len > 0);
        enum px_fileurl_verdict v = px_fileurl_check(&f, NOW);
        CHECK(v <= PX_FILEURL_NOMEM);
        if (v == PX_FILEURL_OK) {
            enum px_fileurl_verdict w = px_fileurl_verify(&f, key);
            CHECK(w == PX_FILEURL_OK || w == PX_FILEURL_MISMATCH);
            /* The signature the proxy would mint for these parameters. */
            char *path = malloc(f.path.len ? f.path.len : 1), sig[PX_FILEURL_SIG_MAX];
            char *ex = malloc(f.expires.len ? f.expires.len : 1);
            long pl = path ? px_fileurl_unescape(f.path, path) : -1;
            /* expires is signed as decoded, like the path (a client may escape
             * its digits) */
            long el = ex ? px_fileurl_unescape(f.expires, ex) : -1;
            if (pl >= 0 && el >= 0) {
                size_t n = px_fileurl_sign(key, f.method, px_str_make(path, (size_t)pl),
                                           px_str_make(ex, (size_t)el), sig);
                CHECK(n > 3 && n < PX_FILEURL_SIG_MAX && !memcmp(sig, "v1_", 3));
                /* a fuzzed signature that verifies must be this one, byte for byte */
                if (w == PX_FILEURL_OK)
                    CHECK(f.signature.len == n && !memcmp(f.signature.p, sig, n));
                struct px_fileurl g = f;
                g.signature = px_str_make(sig, n);
                CHECK(px_fileurl_verify(&g, key) == PX_FILEURL_OK);
            }
            free(path);
            free(ex);
        }
    }
    free(rest);
    return 0;
}

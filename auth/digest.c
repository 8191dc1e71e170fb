/* digest.c — SHA-256 and HMAC-SHA256 with the algorithms fetched once. */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "auth/digest.h"

/* Per process (the loop is single-threaded; workers fork before first use or
 * inherit a copy, either is fine). Owned here for the process's life. */
static EVP_MD *sha256_md;
static EVP_MAC_CTX *hmac_ctx;
static char *hmac_key; /* the key hmac_ctx holds; compared before each use */

int px_sha256(const void *in, size_t n, unsigned char out[32])
{
    unsigned int len = 0;

    if (sha256_md == NULL && (sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL)
        return -1;
    if (EVP_Digest(in, n, out, &len, sha256_md, NULL) != 1 || len != 32)
        return -1;
    return 0;
}

int px_sha256_hex(const void *in, size_t n, char out[65])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[32];

    if (px_sha256(in, n, md) != 0)
        return -1;
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[md[i] >> 4];
        out[2 * i + 1] = digits[md[i] & 15];
    }
    out[64] = '\0';
    return 0;
}

/* Keys a fresh context with key and makes it the kept one. */
static int hmac_rekey(const char *key)
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;
    char *copy = strdup(key);
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                           OSSL_PARAM_construct_end()};

    EVP_MAC_free(mac); /* the context holds its own reference */
    if (ctx == NULL || copy == NULL ||
        EVP_MAC_init(ctx, (const unsigned char *)key, strlen(key), params) != 1) {
        EVP_MAC_CTX_free(ctx);
        free(copy);
        return -1;
    }
    EVP_MAC_CTX_free(hmac_ctx);
    if (hmac_key != NULL)
        OPENSSL_cleanse(hmac_key, strlen(hmac_key));
    free(hmac_key);
    hmac_ctx = ctx;
    hmac_key = copy;
    return 0;
}

int px_hmac_sha256(const char *key, const void *msg, size_t n, unsigned char out[32])
{
    size_t len = 0;

    if (hmac_key == NULL || strcmp(hmac_key, key) != 0) {
        if (hmac_rekey(key) != 0)
            return -1;
    } else if (EVP_MAC_init(hmac_ctx, NULL, 0, NULL) != 1) { /* NULL key: reuse the kept one */
        return -1;
    }
    if (EVP_MAC_update(hmac_ctx, msg, n) != 1 || EVP_MAC_final(hmac_ctx, out, &len, 32) != 1 ||
        len != 32)
        return -1;
    return 0;
}

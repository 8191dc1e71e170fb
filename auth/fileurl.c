/* fileurl.c — signed toolbox file URLs (SPEC 4.7, DAYTONA-API.md §7). */
#include <stdlib.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth/fileurl.h"

#define DOWNLOAD "/files/download"
#define UPLOAD "/files/upload-v2"

/* Finds parameter name in query (first occurrence, name compared as sent). */
static int param(struct px_str query, const char *name, struct px_str *value)
{
    size_t n = strlen(name);

    for (size_t i = 0; i < query.len;) {
        const char *st = query.p + i, *amp = memchr(st, '&', query.len - i);
        size_t len = amp != NULL ? (size_t)(amp - st) : query.len - i;
        if (len >= n && memcmp(st, name, n) == 0 && (len == n || st[n] == '=')) {
            *value = len > n ? px_str_make(st + n + 1, len - n - 1) : PX_STR("");
            return 1;
        }
        i += len + 1;
    }
    return 0;
}

int px_fileurl_match(struct px_str method, struct px_str rest, struct px_fileurl *f)
{
    const char *q = memchr(rest.p, '?', rest.len);
    struct px_str path = q != NULL ? px_str_make(rest.p, (size_t)(q - rest.p)) : rest;
    struct px_str query =
        q != NULL ? px_str_make(q + 1, rest.len - (size_t)(q + 1 - rest.p)) : PX_STR_NULL;

    memset(f, 0, sizeof(*f));
    if (px_str_eq(path, PX_STR(DOWNLOAD)) &&
        (px_str_eq(method, PX_STR("GET")) || px_str_eq(method, PX_STR("HEAD"))))
        f->method = "GET";
    else if (px_str_eq(path, PX_STR(UPLOAD)) && px_str_eq(method, PX_STR("POST")))
        f->method = "POST";
    else
        return 0;
    if (!param(query, "signature", &f->signature) || f->signature.len == 0)
        return 0;
    f->has_path = param(query, "path", &f->path) != 0;
    f->has_expires = param(query, "expires", &f->expires) != 0;
    return 1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

long px_fileurl_unescape(struct px_str in, char *out)
{
    size_t o = 0;

    for (size_t i = 0; i < in.len; i++) {
        char c = in.p[i];
        if (c == '%') {
            int hi = i + 2 < in.len ? hexval(in.p[i + 1]) : -1;
            int lo = i + 2 < in.len ? hexval(in.p[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return -1;
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = c == '+' ? ' ' : c;
        }
    }
    return (long)o;
}

/* Decimal digits only, at most 18 of them (a sign or a fraction is no unix
 * time). Returns 0 and the value, or -1. */
static int parse_expires(struct px_str s, long long *out)
{
    long long v = 0;

    if (s.len == 0 || s.len > 18)
        return -1;
    for (size_t i = 0; i < s.len; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return -1;
        v = v * 10 + (s.p[i] - '0');
    }
    *out = v;
    return 0;
}

enum px_fileurl_verdict px_fileurl_check(const struct px_fileurl *f, time_t now)
{
    char buf[32];
    long long expires;
    long n;

    if (!f->has_path || f->path.len == 0)
        return PX_FILEURL_NO_PATH;
    {
        char *tmp = malloc(f->path.len);
        if (tmp == NULL)
            return PX_FILEURL_NOMEM;
        n = px_fileurl_unescape(f->path, tmp);
        free(tmp);
        if (n <= 0)
            return PX_FILEURL_NO_PATH; /* Go's ParseQuery drops a malformed pair */
    }
    if (!f->has_expires || f->expires.len >= sizeof(buf) ||
        (n = px_fileurl_unescape(f->expires, buf)) < 0 ||
        parse_expires(px_str_make(buf, (size_t)n), &expires) != 0)
        return PX_FILEURL_BAD_EXPIRES;
    if (expires != 0 && expires < (long long)now)
        return PX_FILEURL_EXPIRED;
    {
        char *sig = malloc(f->signature.len);
        enum px_fileurl_verdict v = PX_FILEURL_OK;
        if (sig == NULL)
            return PX_FILEURL_NOMEM;
        n = px_fileurl_unescape(f->signature, sig);
        if (n < 0)
            v = PX_FILEURL_MISMATCH; /* no key makes a malformed escape */
        else if (n < 3 || memcmp(sig, "v1_", 3) != 0)
            v = PX_FILEURL_SCHEME;
        free(sig);
        return v;
    }
}

size_t px_fileurl_sign(struct px_str key, const char *method, struct px_str path,
                       struct px_str expires, char out[PX_FILEURL_SIG_MAX])
{
    unsigned char md[EVP_MAX_MD_SIZE], b64[48];
    unsigned int mdlen = 0;
    size_t mlen = strlen("v1:files:") + strlen(method) + 1 + path.len + 1 + expires.len, o = 0;
    char *msg = malloc(mlen);
    int n;

    if (msg == NULL)
        return 0;
    memcpy(msg, "v1:files:", 9);
    o = 9;
    memcpy(msg + o, method, strlen(method));
    o += strlen(method);
    msg[o++] = ':';
    memcpy(msg + o, path.p, path.len);
    o += path.len;
    msg[o++] = ':';
    memcpy(msg + o, expires.p, expires.len);
    if (HMAC(EVP_sha256(), key.p, (int)key.len, (const unsigned char *)msg, mlen, md, &mdlen) ==
            NULL ||
        mdlen != 32) {
        free(msg);
        return 0;
    }
    free(msg);
    /* Standard base64 from OpenSSL, then the URL alphabet without padding. */
    n = EVP_EncodeBlock(b64, md, 32);
    OPENSSL_cleanse(md, sizeof(md));
    memcpy(out, "v1_", 3);
    o = 3;
    for (int i = 0; i < n && b64[i] != '='; i++)
        out[o++] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : (char)b64[i];
    out[o] = '\0';
    return o;
}

enum px_fileurl_verdict px_fileurl_verify(const struct px_fileurl *f, struct px_str key)
{
    char want[PX_FILEURL_SIG_MAX], ex[32];
    char *path = malloc(f->path.len), *sig = malloc(f->signature.len + 1);
    long pn = -1, en = -1, sn = -1;
    size_t wn = 0;
    enum px_fileurl_verdict v = PX_FILEURL_NOMEM;

    if (path == NULL || sig == NULL)
        goto out;
    pn = px_fileurl_unescape(f->path, path);
    if (f->expires.len < sizeof(ex))
        en = px_fileurl_unescape(f->expires, ex);
    sn = px_fileurl_unescape(f->signature, sig);
    if (pn <= 0 || en < 0) { /* px_fileurl_check() refuses these before */
        v = PX_FILEURL_MISMATCH;
        goto out;
    }
    wn = px_fileurl_sign(key, f->method, px_str_make(path, (size_t)pn), px_str_make(ex, (size_t)en),
                         want);
    if (wn == 0)
        goto out;
    /* The length of a good signature is public; its bytes are compared in
     * constant time. */
    v = sn >= 0 && (size_t)sn == wn && CRYPTO_memcmp(sig, want, wn) == 0 ? PX_FILEURL_OK
                                                                         : PX_FILEURL_MISMATCH;
    OPENSSL_cleanse(want, sizeof(want));
out:
    free(path);
    free(sig);
    return v;
}

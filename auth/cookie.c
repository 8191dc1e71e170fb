/* cookie.c — HMAC-SHA256 auth cookies bound to the host label (LESSONS A1, A5):
 * the name carries the label, the MAC covers the name, the sandbox ID and the
 * expiry, so a cookie can be neither moved to another label nor extended. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "auth/cookie.h"
#include "auth/digest.h"

size_t px_base64url(const unsigned char *in, size_t n, char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;

    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
        out[o++] = tbl[v >> 6 & 63];
        out[o++] = tbl[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
        out[o++] = tbl[v >> 6 & 63];
    }
    out[o] = '\0';
    return o;
}

/* mac = base64url(HMAC-SHA256(secret, "v1|{cookieName}|{sandboxId}|{expires}")), SPEC 4.5.
 * When the label is not the sandbox ID (a signed preview token, which is valid
 * for one port only), "|port={port}" is appended: the cookie must not open the
 * sandbox's other ports, least of all the terminal, even when cookie_domain
 * makes the browser send it to every preview host of that label. */
static int compute_mac(const char *secret, struct px_str label, struct px_str id, long expires,
                       unsigned port, char out[48])
{
    char msg[1024];
    unsigned char md[32];
    int n = snprintf(msg, sizeof(msg), "v1|" PX_COOKIE_PREFIX "%.*s|%.*s|%ld", (int)label.len,
                     label.p, (int)id.len, id.p, expires);

    if (n > 0 && (size_t)n < sizeof(msg) && !px_str_eq(label, id))
        n += snprintf(msg + n, sizeof(msg) - (size_t)n, "|port=%u", port);

    if (n < 0 || (size_t)n >= sizeof(msg))
        return -1;
    if (px_hmac_sha256(secret, msg, (size_t)n, md) != 0)
        return -1;
    px_base64url(md, sizeof(md), out);
    return 0;
}

int px_cookie_mint(const char *secret, struct px_str label, unsigned port, struct px_str sandbox_id,
                   time_t expires, char *out, size_t outlen)
{
    char mac[48];
    int n;

    if (compute_mac(secret, label, sandbox_id, (long)expires, port, mac) != 0)
        return -1;
    n = snprintf(out, outlen, "v1.%.*s.%ld.%s", (int)sandbox_id.len, sandbox_id.p, (long)expires,
                 mac);
    return n < 0 || (size_t)n >= outlen ? -1 : n;
}

int px_cookie_verify(const char *secret, struct px_str label, unsigned port, struct px_str value,
                     time_t now, struct px_str *sandbox_id)
{
    const char *p = value.p, *end = value.p + value.len, *d1, *d2;
    char mac[48];
    long expires = 0;

    if (value.len < 8 || value.len > 512 || memcmp(p, "v1.", 3) != 0)
        return -1;
    p += 3;
    /* Parse from the right: the mac is base64url and the expiry digits, so
     * neither holds a dot, while a sandbox ID might. */
    if ((d2 = memrchr(p, '.', (size_t)(end - p))) == NULL || d2 == p)
        return -1;
    if ((d1 = memrchr(p, '.', (size_t)(d2 - p))) == NULL || d1 == p || d2 == d1 + 1 || d2 - d1 > 12)
        return -1;
    for (const char *q = d1 + 1; q < d2; q++) {
        if (*q < '0' || *q > '9')
            return -1;
        expires = expires * 10 + (*q - '0');
    }
    if (expires <= now)
        return -1;
    struct px_str id = px_str_make(p, (size_t)(d1 - p));
    if (compute_mac(secret, label, id, expires, port, mac) != 0)
        return -1;
    size_t maclen = (size_t)(end - d2 - 1);
    if (maclen != strlen(mac) || CRYPTO_memcmp(mac, d2 + 1, maclen) != 0)
        return -1;
    *sandbox_id = id;
    return 0;
}

int px_cookie_find(const struct px_head *req, struct px_str name, struct px_str *value)
{
    for (int i = 0; i < req->nhdrs; i++) {
        struct px_str v = req->hdrs[i].value;
        size_t k = 0;
        if (!px_str_ieq(req->hdrs[i].name, PX_STR("cookie")))
            continue;
        while (k < v.len) {
            size_t s = k;
            while (k < v.len && v.p[k] != ';')
                k++;
            struct px_str ck = px_str_make(v.p + s, k - s);
            k++;
            while (ck.len && (ck.p[0] == ' ' || ck.p[0] == '\t'))
                ck.p++, ck.len--;
            if (ck.len > name.len && ck.p[name.len] == '=' && !memcmp(ck.p, name.p, name.len)) {
                *value = px_str_make(ck.p + name.len + 1, ck.len - name.len - 1);
                if (value->len >= 2 && value->p[0] == '"' && value->p[value->len - 1] == '"')
                    *value = px_str_make(value->p + 1, value->len - 2);
                return 0;
            }
        }
    }
    return -1;
}

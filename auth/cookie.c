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
#include "auth/securecookie.h"

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

/* Our v1 format; on success *sandbox_id points into value. */
static int v1_verify(const char *secret, struct px_str label, unsigned port, struct px_str value,
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

/* A Daytona (gorilla securecookie) value carries a sandbox ID and nothing else,
 * so it cannot be bound to a port the way v1 is. We take it as Daytona does --
 * any port, for its hour -- with one exception: on the reserved ports (22222
 * terminal, 2280 toolbox, 33333) a cookie whose label is a signed preview token
 * is refused, so a link for port 3000 still cannot open the terminal when
 * cookie_domain sends its cookie to every host. The chain then falls through to
 * the signed token itself, which is port-bound. A sandbox-ID label is not
 * port-bound in either format (the grant was for the whole sandbox). */
static int daytona_verify(const char *secret, struct px_str label, unsigned port,
                          struct px_str value, time_t now, char *id, size_t idcap)
{
    char name[PX_COOKIE_NAME_MAX]; /* "daytona-sandbox-auth-{label}" */
    int n = snprintf(name, sizeof(name), PX_COOKIE_PREFIX "%.*s", (int)label.len, label.p);
    int idlen;

    if (n < 0 || (size_t)n >= sizeof(name))
        return -1;
    idlen = px_securecookie_decode(secret, px_str_make(name, (size_t)n), value, now,
                                   PX_COOKIE_MAX_AGE, id, idcap);
    if (idlen < 0)
        return -1;
    if (!px_str_eq(px_str_make(id, (size_t)idlen), label) && px_port_reserved(port)) {
        id[0] = '\0';
        return -1;
    }
    return 0;
}

int px_cookie_verify(const char *secret, struct px_str label, unsigned port, struct px_str value,
                     time_t now, char *id, size_t idcap)
{
    struct px_str got;

    if (idcap == 0)
        return -1;
    id[0] = '\0';
    if (value.len < 3 || memcmp(value.p, "v1.", 3) != 0) /* never base64: '.' is not in it */
        return daytona_verify(secret, label, port, value, now, id, idcap);
    if (v1_verify(secret, label, port, value, now, &got) != 0 || got.len >= idcap)
        return -1;
    memcpy(id, got.p, got.len);
    id[got.len] = '\0';
    return 0;
}

int px_cookie_issue(const char *secret, int format, struct px_str label, unsigned port,
                    struct px_str sandbox_id, time_t now, char *out, size_t outlen)
{
    char name[PX_COOKIE_NAME_MAX]; /* "daytona-sandbox-auth-{label}" */
    int n;

    /* A Daytona cookie for a token label would not be accepted on a reserved
     * port (above), so there the port-bound v1 is written whatever the format. */
    if (format == PX_COOKIE_FMT_DAYTONA &&
        (px_str_eq(label, sandbox_id) || !px_port_reserved(port))) {
        n = snprintf(name, sizeof(name), PX_COOKIE_PREFIX "%.*s", (int)label.len, label.p);
        if (n < 0 || (size_t)n >= sizeof(name))
            return -1;
        return px_securecookie_encode(secret, px_str_make(name, (size_t)n), sandbox_id, now, out,
                                      outlen);
    }
    return px_cookie_mint(secret, label, port, sandbox_id, now + PX_COOKIE_MAX_AGE, out, outlen);
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

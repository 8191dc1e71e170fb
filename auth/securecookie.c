/* securecookie.c — gorilla/securecookie v1.1.2 values holding one gob string,
 * written and read byte for byte as Daytona's Go proxy does (see the header).
 *
 * Stricter than Go where Go's laxness buys nothing: the base64 must be
 * canonical (padding present, unused bits zero, no CR/LF), the timestamp plain
 * digits, the gob exactly one string with lengths that add up. Every buffer
 * is bounded by PX_SECURECOOKIE_MAX, written next to it. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "auth/digest.h"
#include "auth/securecookie.h"

#define NAME_MAX_LEN 512                      /* cookie names we sign or check */
#define DEC_MAX (PX_SECURECOOKIE_MAX / 4 * 3) /* 3072: base64 of MAX decoded */
#define PAYLOAD_MAX (DEC_MAX / 4 * 3)         /* 2304: the inner v, decoded */
#define GOB_STRING_ID 0x0c                    /* gob type id 6 (string), as a signed int */

static const char b64tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Padded base64url of in into out (cap bytes, NUL included). Returns the
 * length, or -1 when out is too small. */
static long b64_encode(const unsigned char *in, size_t n, char *out, size_t cap)
{
    size_t need = (n + 2) / 3 * 4, o = 0;

    if (need + 1 > cap)
        return -1;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = b64tbl[v >> 18 & 63];
        out[o++] = b64tbl[v >> 12 & 63];
        out[o++] = i + 1 < n ? b64tbl[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? b64tbl[v & 63] : '=';
    }
    out[o] = '\0';
    return (long)o;
}

static int b64_val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '-')
        return 62;
    if (ch == '_')
        return 63;
    return -1;
}

/* Canonical padded base64url: length a multiple of 4, '=' only as the last one
 * or two characters, unused bits zero. Returns the decoded length or -1. */
static long b64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    size_t o = 0;

    if (n == 0 || n % 4 != 0 || n / 4 * 3 > cap)
        return -1;
    for (size_t i = 0; i < n; i += 4) {
        int last = i + 4 == n;
        int pad = last ? (in[i + 3] == '=') + (in[i + 2] == '=' && in[i + 3] == '=') : 0;
        int q[4];
        for (int k = 0; k < 4 - pad; k++)
            if ((q[k] = b64_val((unsigned char)in[i + (size_t)k])) < 0)
                return -1;
        for (int k = 4 - pad; k < 4; k++)
            q[k] = 0;
        uint32_t v =
            (uint32_t)q[0] << 18 | (uint32_t)q[1] << 12 | (uint32_t)q[2] << 6 | (uint32_t)q[3];
        if ((pad == 1 && (v & 0xff)) || (pad == 2 && (v & 0xffff)))
            return -1; /* bits that no encoder writes */
        out[o++] = (unsigned char)(v >> 16);
        if (pad < 2)
            out[o++] = (unsigned char)(v >> 8);
        if (pad < 1)
            out[o++] = (unsigned char)v;
    }
    return (long)o;
}

/* gob's unsigned integer: one byte below 128, else the negated byte count
 * (1-8) followed by that many big-endian bytes. out needs 9 bytes. */
static size_t gob_put_uint(unsigned char *out, uint64_t v)
{
    unsigned char be[8];
    size_t n = 0;

    if (v < 128) {
        out[0] = (unsigned char)v;
        return 1;
    }
    for (; v != 0; v >>= 8)
        be[n++] = (unsigned char)(v & 0xff);
    out[0] = (unsigned char)(256 - n);
    for (size_t i = 0; i < n; i++)
        out[1 + i] = be[n - 1 - i];
    return n + 1;
}

static int gob_get_uint(const unsigned char **p, const unsigned char *end, uint64_t *v)
{
    const unsigned char *q = *p;
    size_t n;

    if (q >= end)
        return -1;
    if (*q < 128) {
        *v = *q;
        *p = q + 1;
        return 0;
    }
    n = (size_t)(256 - *q++);
    if (n > 8 || (size_t)(end - q) < n)
        return -1;
    *v = 0;
    while (n-- > 0)
        *v = *v << 8 | *q++;
    *p = q;
    return 0;
}

/* mac = HMAC-SHA256(key, "{name}|{stamped}") where stamped is "{unix}|{v}". */
static int sign(const char *key, struct px_str name, const char *stamped, size_t n,
                unsigned char mac[32])
{
    char msg[NAME_MAX_LEN + 1 + DEC_MAX]; /* name, '|', at most DEC_MAX stamped bytes */

    if (name.len > NAME_MAX_LEN || n > DEC_MAX)
        return -1;
    memcpy(msg, name.p, name.len);
    msg[name.len] = '|';
    memcpy(msg + name.len + 1, stamped, n);
    return px_hmac_sha256(key, msg, name.len + 1 + n, mac);
}

int px_securecookie_encode(const char *key, struct px_str name, struct px_str value, time_t now,
                           char *out, size_t outcap)
{
    unsigned char payload[PAYLOAD_MAX]; /* gob: 9 + 2 + 9 + value */
    unsigned char hdr[20];
    char v[DEC_MAX + 1];               /* base64 of payload, NUL */
    unsigned char raw[DEC_MAX];        /* "{unix}|{v}|" + mac */
    char b64[PX_SECURECOOKIE_MAX + 1]; /* the cookie value before escaping, NUL */
    unsigned char mac[32];
    size_t h, plen, o = 0;
    long vlen, blen;
    int n;

    if (now < 0 || value.len > PAYLOAD_MAX - 20)
        return -1;
    /* the message after its length: type id, singleton delta, the string */
    hdr[0] = GOB_STRING_ID;
    hdr[1] = 0x00;
    h = 2 + gob_put_uint(hdr + 2, value.len);
    plen = gob_put_uint(payload, h + value.len);
    memcpy(payload + plen, hdr, h);
    memcpy(payload + plen + h, value.p, value.len);
    plen += h + value.len;
    if ((vlen = b64_encode(payload, plen, v, sizeof(v))) < 0)
        return -1;
    n = snprintf((char *)raw, sizeof(raw), "%lld|%s|", (long long)now, v);
    if (n < 0 || (size_t)n + 32 > sizeof(raw))
        return -1;
    if (sign(key, name, (const char *)raw, (size_t)n - 1, mac) != 0)
        return -1;
    memcpy(raw + n, mac, 32);
    if ((blen = b64_encode(raw, (size_t)n + 32, b64, sizeof(b64))) < 0 ||
        blen > PX_SECURECOOKIE_MAX)
        return -1;
    /* gin's url.QueryEscape: of the base64url alphabet only '=' changes */
    for (long i = 0; i < blen; i++) {
        if (o + 3 >= outcap)
            return -1;
        if (b64[i] == '=') {
            memcpy(out + o, "%3D", 3);
            o += 3;
        } else {
            out[o++] = b64[i];
        }
    }
    out[o] = '\0';
    return (int)o;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = (char)(ch | 0x20);
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

int px_securecookie_decode(const char *key, struct px_str name, struct px_str wire, time_t now,
                           long max_age, char *out, size_t outcap)
{
    char val[PX_SECURECOOKIE_MAX];      /* the value after gin's unescaping */
    unsigned char dec[DEC_MAX];         /* "{unix}|{v}|{mac}" */
    unsigned char payload[PAYLOAD_MAX]; /* the gob */
    unsigned char mac[32];
    const unsigned char *bar1, *bar2, *p, *end;
    size_t n = 0;
    long dlen, plen;
    long long unix_ts = 0;
    uint64_t u;

    /* 1. url.QueryUnescape, as gin's c.Cookie() does; gorilla's length cap is
     * on what comes out of it */
    for (size_t i = 0; i < wire.len; i++) {
        char ch = wire.p[i];
        if (n == sizeof(val))
            return -1;
        if (ch == '%') {
            int hi, lo;
            if (i + 2 >= wire.len || (hi = hexval(wire.p[i + 1])) < 0 ||
                (lo = hexval(wire.p[i + 2])) < 0)
                return -1;
            ch = (char)(hi << 4 | lo);
            i += 2;
        } else if (ch == '+') {
            ch = ' '; /* and then no valid base64 */
        }
        val[n++] = ch;
    }
    /* 2. base64, then "{unix}|{v}|{mac}" split at the first two bars (the mac is
     * raw bytes and may hold bars itself) */
    if ((dlen = b64_decode(val, n, dec, sizeof(dec))) < 0)
        return -1;
    end = dec + dlen;
    if ((bar1 = memchr(dec, '|', (size_t)dlen)) == NULL ||
        (bar2 = memchr(bar1 + 1, '|', (size_t)(end - bar1 - 1))) == NULL)
        return -1;
    /* 3. the mac, in constant time; its length first (Go's ConstantTimeCompare
     * answers 0 for unequal lengths too) */
    if (end - bar2 - 1 != 32 ||
        sign(key, name, (const char *)dec, (size_t)(bar2 - dec), mac) != 0 ||
        CRYPTO_memcmp(mac, bar2 + 1, 32) != 0)
        return -1;
    /* 4. the age */
    if (bar1 == dec || bar1 - dec > 18)
        return -1;
    for (p = dec; p < bar1; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        unix_ts = unix_ts * 10 + (*p - '0');
    }
    if (unix_ts < (long long)now - max_age || unix_ts > (long long)now + PX_SECURECOOKIE_SKEW)
        return -1;
    /* 5. v, then the gob: len(rest) 0x0c 0x00 len(s) s */
    if ((plen = b64_decode((const char *)bar1 + 1, (size_t)(bar2 - bar1 - 1), payload,
                           sizeof(payload))) < 0)
        return -1;
    p = payload;
    end = payload + plen;
    if (gob_get_uint(&p, end, &u) != 0 || u != (uint64_t)(end - p))
        return -1;
    if (gob_get_uint(&p, end, &u) != 0 || u != GOB_STRING_ID)
        return -1;
    if (gob_get_uint(&p, end, &u) != 0 || u != 0)
        return -1;
    if (gob_get_uint(&p, end, &u) != 0 || u != (uint64_t)(end - p) || u == 0 || u >= outcap)
        return -1;
    for (const unsigned char *q = p; q < end; q++)
        if (*q <= 0x20 || *q >= 0x7f)
            return -1; /* a sandbox ID: no controls, spaces or 8-bit bytes */
    memcpy(out, p, (size_t)u);
    out[u] = '\0';
    return (int)u;
}

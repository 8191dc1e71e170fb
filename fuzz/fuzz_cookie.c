/* fuzz_cookie.c — the auth cookie verifiers: px_cookie_verify() (auth/cookie.c,
 * both formats), px_securecookie_decode() (auth/securecookie.c, Daytona's
 * gorilla/gob value) and px_cookie_find() (the Cookie header scan).
 *
 * Input: byte 0 picks the mode and the port, byte 1 a time offset, then
 * "label\nvalue" (no newline: label "sb1"). Modes:
 *  0  verify the value as received (both formats, two id capacities);
 *  1  seal the value as a gob payload with the right key, so the decoder's
 *     checks after the MAC (age, base64, gob lengths, the ID's bytes) see
 *     arbitrary bytes, then decode it directly and through px_cookie_verify();
 *  2  issue a cookie for (label, port, id = value) in both formats and verify
 *     it back: it must open exactly what SPEC 4.5 says (same ID; a token label
 *     only its own port in v1 and never a reserved port in Daytona's format;
 *     a v1 cookie until its expiry, a Daytona one for an hour);
 *  3  find a cookie in a Cookie header. */
#include <stdio.h>
#include <stdlib.h>

#include "auth/cookie.h"
#include "auth/digest.h"
#include "auth/securecookie.h"
#include "routing/host.h"
#include "fuzz/check.h"

#define KEY "fuzz-cookie-secret"
#define NOW 1781234567L

static const unsigned ports[] = {3000, 22222, 2280, 33333, 8080, 1, 65535, 3001};

static int printable_id(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}

/* Padded base64url, written here independently of the code under test. */
static size_t b64url(const unsigned char *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;

    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        out[o++] = t[v >> 18 & 63];
        out[o++] = t[v >> 12 & 63];
        out[o++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

static void verify_any(struct px_str label, unsigned port, struct px_str value, long now)
{
    char id[256], small[4];

    if (px_cookie_verify(KEY, label, port, value, now, id, sizeof(id)) == 0)
        CHECK(strnlen(id, sizeof(id)) < sizeof(id));
    else
        CHECK(id[0] == '\0');
    if (px_cookie_verify(KEY, label, port, value, now, small, sizeof(small)) == 0)
        CHECK(strlen(small) < sizeof(small));
}

/* A gorilla value around payload, signed for cookie `daytona-sandbox-auth-{label}`. */
static void sealed(struct px_str label, const uint8_t *payload, size_t n, long ts, long now,
                   unsigned port)
{
    size_t cap = 4 * ((n + 2) / 3) + 1;
    char *v = malloc(cap), *raw = malloc(cap + 64), *wire = malloc(2 * (cap + 64));
    char name[PX_COOKIE_NAME_MAX], out[300];
    unsigned char mac[32];
    int k, nl;

    CHECK(v != NULL && raw != NULL && wire != NULL);
    b64url(payload, n, v);
    nl = snprintf(name, sizeof(name), PX_COOKIE_PREFIX "%.*s", (int)label.len, label.p);
    if (nl > 0 && (size_t)nl < sizeof(name)) {
        size_t ml = (size_t)nl + 32 + strlen(v);
        char *msg = malloc(ml);
        CHECK(msg != NULL);
        k = snprintf(msg, ml, "%s|%ld|%s", name, ts, v);
        CHECK(px_hmac_sha256(KEY, msg, (size_t)k, mac) == 0);
        free(msg);
        k = snprintf(raw, cap + 64, "%ld|%s|", ts, v);
        memcpy(raw + k, mac, 32);
        size_t wl = b64url((unsigned char *)raw, (size_t)k + 32, wire);
        int r = px_securecookie_decode(KEY, px_str_make(name, (size_t)nl), px_str_make(wire, wl),
                                       now, PX_COOKIE_MAX_AGE, out, sizeof(out));
        if (r >= 0) {
            CHECK((size_t)r == strlen(out) && printable_id(out, (size_t)r));
            CHECK(ts >= now - PX_COOKIE_MAX_AGE && ts <= now + PX_SECURECOOKIE_SKEW);
        }
        char id[256];
        int v2 = px_cookie_verify(KEY, label, port, px_str_make(wire, wl), now, id, sizeof(id));
        if (v2 == 0)
            CHECK(r >= 0 && strcmp(id, out) == 0);
    }
    free(v);
    free(raw);
    free(wire);
}

static void round_trip(struct px_str label, unsigned port, struct px_str id, int fmt)
{
    char out[PX_SECURECOOKIE_MAX * 3 + 1], got[256];
    int n = px_cookie_issue(KEY, fmt, label, port, id, NOW, out, sizeof(out));
    int token = !px_str_eq(label, id);

    if (n < 0)
        return;
    int v1 = memcmp(out, "v1.", 3) == 0;
    CHECK(v1 == (fmt == PX_COOKIE_FMT_V1 || (token && px_port_reserved(port))));
    struct px_str val = px_str_make(out, (size_t)n);
    for (size_t i = 0; i < sizeof(ports) / sizeof(ports[0]); i++) {
        unsigned p2 = ports[i];
        int want = v1 ? (!token || p2 == port) : (!token || !px_port_reserved(p2));
        int ok = px_cookie_verify(KEY, label, p2, val, NOW, got, sizeof(got)) == 0;
        CHECK(ok == want);
        if (ok)
            CHECK(px_str_eq(px_str_make(got, strlen(got)), id));
    }
    /* lifetimes: v1 until its expiry, Daytona's for max_age after issue */
    long last = v1 ? NOW + PX_COOKIE_MAX_AGE - 1 : NOW + PX_COOKIE_MAX_AGE;
    CHECK(px_cookie_verify(KEY, label, port, val, last, got, sizeof(got)) == 0);
    CHECK(px_cookie_verify(KEY, label, port, val, last + 1, got, sizeof(got)) == -1);
    /* another label never opens */
    char other[80];
    int ol =
        snprintf(other, sizeof(other), "%.*sx", (int)(label.len < 70 ? label.len : 70), label.p);
    if (!px_str_eq(px_str_make(other, (size_t)ol), label))
        CHECK(px_cookie_verify(KEY, px_str_make(other, (size_t)ol), port, val, NOW, got,
                               sizeof(got)) == -1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > 8192)
        return 0;
    int mode = data[0] & 3;
    unsigned port = ports[(data[0] >> 2) & 7];
    long dt = (long)data[1] * 40 - 5000; /* -5000 .. +5200 s around NOW */
    const uint8_t *rest = data + 2;
    size_t n = size - 2;
    const uint8_t *nl = memchr(rest, '\n', n);
    /* exact-size copies so that ASan sees every overread */
    size_t ll = nl ? (size_t)(nl - rest) : 3, vl = nl ? n - ll - 1 : n;
    char *lb = malloc(ll ? ll : 1), *vb = malloc(vl ? vl : 1);
    CHECK(lb != NULL && vb != NULL);
    memcpy(lb, nl ? rest : (const uint8_t *)"sb1", ll);
    memcpy(vb, nl ? nl + 1 : rest, vl);
    struct px_str label = px_str_make(lb, ll), value = px_str_make(vb, vl);

    switch (mode) {
    case 0: verify_any(label, port, value, NOW + dt); break;
    case 1: sealed(label, (const uint8_t *)vb, vl, NOW + dt, NOW, port); break;
    case 2:
        if (px_str_is_label(label, 63) && printable_id(vb, vl) && vl < 200) {
            round_trip(label, port, value, PX_COOKIE_FMT_V1);
            round_trip(label, port, value, PX_COOKIE_FMT_DAYTONA);
        }
        break;
    case 3: {
        struct px_head h;
        struct px_hdr hdr = {PX_STR("Cookie"), value};
        struct px_str got;
        char name[PX_COOKIE_NAME_MAX];
        memset(&h, 0, sizeof(h));
        h.hdrs = &hdr;
        h.nhdrs = 1;
        int k = snprintf(name, sizeof(name), PX_COOKIE_PREFIX "%.*s", (int)label.len, label.p);
        if (k > 0 && (size_t)k < sizeof(name) &&
            px_cookie_find(&h, px_str_make(name, (size_t)k), &got) == 0) {
            CHECK(got.len == 0 || (got.p >= vb && got.p + got.len <= vb + vl));
            verify_any(label, port, got, NOW + dt);
        }
        break;
    }
    }
    free(lb);
    free(vb);
    return 0;
}

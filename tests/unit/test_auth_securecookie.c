/* test_auth_securecookie.c — Daytona's auth cookie (gorilla securecookie v1.1.2,
 * DAYTONA-API.md §6): the document's test vector both ways, every single-byte
 * tamper, the age window, the length cap, gin's %3D escaping, the cookie name,
 * malformed gobs (signed correctly, so only the gob check can refuse them), and
 * how auth/cookie.c reads and writes both formats. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "auth/cookie.h"
#include "auth/digest.h"
#include "auth/securecookie.h"

#define KEY "super_secret_key"
#define NAME "daytona-sandbox-auth-sb1"
#define TS 1781234567L
#define VECTOR "MTc4MTIzNDU2N3xCZ3dBQTNOaU1RPT18KmcuNc_oDru7h-IETWpg0ZZxHp5qyX-yglbiAQbDFpI="
#define VECTOR_WIRE "MTc4MTIzNDU2N3xCZ3dBQTNOaU1RPT18KmcuNc_oDru7h-IETWpg0ZZxHp5qyX-yglbiAQbDFpI%3D"

static int dec(const char *wire, time_t now, char *out, size_t cap)
{
    return px_securecookie_decode(KEY, PX_STR(NAME), px_str_make(wire, strlen(wire)), now, 3600,
                                  out, cap);
}

/* Padded base64url through OpenSSL, independent of the code under test. */
static void b64url(const unsigned char *in, size_t n, char *out)
{
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    for (int i = 0; i < len; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
}

/* A correctly signed value around an arbitrary gob payload. */
static void seal(const unsigned char *payload, size_t n, long ts, char *out)
{
    char v[512], raw[1024];
    unsigned char msg[1024], mac[32];
    int k;

    b64url(payload, n, v);
    k = snprintf((char *)msg, sizeof(msg), NAME "|%ld|%s", ts, v);
    assert_int_equal(px_hmac_sha256(KEY, msg, (size_t)k, mac), 0);
    k = snprintf(raw, sizeof(raw), "%ld|%s|", ts, v);
    memcpy(raw + k, mac, 32);
    b64url((unsigned char *)raw, (size_t)k + 32, out);
}

static void test_vector_encode(void **state)
{
    (void)state;
    char out[PX_SECURECOOKIE_MAX * 3 + 1];
    int n = px_securecookie_encode(KEY, PX_STR(NAME), PX_STR("sb1"), TS, out, sizeof(out));

    assert_int_equal(n, (int)strlen(VECTOR_WIRE));
    assert_string_equal(out, VECTOR_WIRE); /* gin escapes '=' on the wire */
    /* too small an output buffer is an error, never a truncation */
    assert_int_equal(px_securecookie_encode(KEY, PX_STR(NAME), PX_STR("sb1"), TS, out, 20), -1);
}

static void test_vector_decode(void **state)
{
    (void)state;
    char id[256];

    assert_int_equal(dec(VECTOR, TS, id, sizeof(id)), 3);
    assert_string_equal(id, "sb1");
    assert_int_equal(dec(VECTOR_WIRE, TS, id, sizeof(id)), 3); /* as gin sent it */
    assert_string_equal(id, "sb1");
    const char *lower =
        "MTc4MTIzNDU2N3xCZ3dBQTNOaU1RPT18KmcuNc_oDru7h-IETWpg0ZZxHp5qyX-yglbiAQbDFpI%3d";
    assert_int_equal(dec(lower, TS, id, sizeof(id)), 3); /* QueryUnescape takes either case */
    /* a broken escape, a stripped pad, a doubled pad */
    assert_int_equal(
        dec("MTc4MTIzNDU2N3xCZ3dBQTNOaU1RPT18KmcuNc_oDru7h-IETWpg0ZZxHp5qyX-yglbiAQbDFpI%3", TS, id,
            sizeof(id)),
        -1);
    assert_int_equal(
        dec("MTc4MTIzNDU2N3xCZ3dBQTNOaU1RPT18KmcuNc_oDru7h-IETWpg0ZZxHp5qyX-yglbiAQbDFpI", TS, id,
            sizeof(id)),
        -1);
    assert_int_equal(dec(VECTOR "=", TS, id, sizeof(id)), -1);
    /* the output must fit: "sb1" needs 4 bytes */
    assert_int_equal(dec(VECTOR, TS, id, 3), -1);
    assert_int_equal(dec(VECTOR, TS, id, 4), 3);
    /* another key */
    assert_int_equal(
        px_securecookie_decode("other_key", PX_STR(NAME), PX_STR(VECTOR), TS, 3600, id, sizeof(id)),
        -1);
}

/* Every single-byte change of the value, to every other byte, is refused. */
static void test_every_tamper_refused(void **state)
{
    (void)state;
    char t[sizeof(VECTOR)], id[256];
    size_t n = strlen(VECTOR);
    int accepted = 0;

    for (size_t i = 0; i < n; i++)
        for (int b = 1; b < 256; b++) {
            if (b == (unsigned char)VECTOR[i])
                continue;
            memcpy(t, VECTOR, n + 1);
            t[i] = (char)b;
            if (px_securecookie_decode(KEY, PX_STR(NAME), px_str_make(t, n), TS, 3600, id,
                                       sizeof(id)) >= 0)
                accepted++;
        }
    assert_int_equal(accepted, 0);
    /* and so are a dropped byte and an added one */
    for (size_t i = 0; i < n; i++) {
        memcpy(t, VECTOR, i);
        memcpy(t + i, VECTOR + i + 1, n - i);
        assert_int_equal(dec(t, TS, id, sizeof(id)), -1);
    }
}

static void test_age_window(void **state)
{
    (void)state;
    char id[256];

    assert_int_equal(dec(VECTOR, TS + 3600, id, sizeof(id)), 3);  /* unix >= now - 3600 */
    assert_int_equal(dec(VECTOR, TS + 3601, id, sizeof(id)), -1); /* an hour and a second */
    assert_int_equal(dec(VECTOR, TS + 86400, id, sizeof(id)), -1);
    assert_int_equal(dec(VECTOR, TS - PX_SECURECOOKIE_SKEW, id, sizeof(id)), 3); /* skew */
    assert_int_equal(dec(VECTOR, TS - PX_SECURECOOKIE_SKEW - 1, id, sizeof(id)), -1);
    assert_int_equal(dec(VECTOR, 0, id, sizeof(id)), -1); /* absurdly in the future */
}

static void test_wrong_name_refused(void **state)
{
    (void)state;
    char id[256];

    /* the same value presented as another sandbox's cookie */
    assert_int_equal(px_securecookie_decode(KEY, PX_STR("daytona-sandbox-auth-sb2"), PX_STR(VECTOR),
                                            TS, 3600, id, sizeof(id)),
                     -1);
    assert_int_equal(px_securecookie_decode(KEY, PX_STR("daytona-sandbox-auth-sb"), PX_STR(VECTOR),
                                            TS, 3600, id, sizeof(id)),
                     -1);
    assert_int_equal(px_cookie_verify(KEY, PX_STR("sb2"), 3000, PX_STR(VECTOR), TS, id, sizeof(id)),
                     -1);
    assert_int_equal(px_cookie_verify(KEY, PX_STR("sb1"), 3000, PX_STR(VECTOR), TS, id, sizeof(id)),
                     0);
    assert_string_equal(id, "sb1");
}

static void test_length_cap(void **state)
{
    (void)state;
    static char big[PX_SECURECOOKIE_MAX * 3 + 1], id[4096], val[4096];
    int n;

    /* a long ID still round-trips (multi-byte gob lengths), up to the cap */
    memset(val, 'a', 2000);
    n = px_securecookie_encode(KEY, PX_STR(NAME), px_str_make(val, 2000), TS, big, sizeof(big));
    assert_true(n > 0 && n <= PX_SECURECOOKIE_MAX + 4);
    assert_int_equal(dec(big, TS, id, sizeof(id)), 2000);
    assert_memory_equal(id, val, 2000);
    /* one whose value would pass 4096 bytes is never written */
    memset(val, 'a', 2300);
    assert_int_equal(
        px_securecookie_encode(KEY, PX_STR(NAME), px_str_make(val, 2300), TS, big, sizeof(big)),
        -1);
    /* nor read: 4097 bytes, 4096 + one escaped byte, and far more */
    memset(big, 'A', 4097);
    big[4097] = '\0';
    assert_int_equal(dec(big, TS, id, sizeof(id)), -1);
    memcpy(big + 4096, "%3D", 4);
    assert_int_equal(dec(big, TS, id, sizeof(id)), -1);
    memset(big, 'A', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(dec(big, TS, id, sizeof(id)), -1);
}

/* Correctly signed, so only the gob decoder can refuse these. */
static void test_malformed_gob(void **state)
{
    (void)state;
    static const struct {
        const char *what;
        unsigned char b[16];
        size_t n;
        int ok;
    } cases[] = {
        {"the vector's gob", {6, 0x0c, 0, 3, 's', 'b', '1'}, 7, 1},
        {"outer length short", {5, 0x0c, 0, 3, 's', 'b', '1'}, 7, 0},
        {"outer length long", {7, 0x0c, 0, 3, 's', 'b', '1'}, 7, 0},
        {"trailing byte", {6, 0x0c, 0, 3, 's', 'b', '1', 'x'}, 8, 0},
        {"string length short", {6, 0x0c, 0, 2, 's', 'b', '1'}, 7, 0},
        {"string length long", {6, 0x0c, 0, 4, 's', 'b', '1'}, 7, 0},
        {"type int, not string", {6, 0x04, 0, 3, 's', 'b', '1'}, 7, 0},
        {"type id 7", {6, 0x0e, 0, 3, 's', 'b', '1'}, 7, 0},
        {"delta 1", {6, 0x0c, 1, 3, 's', 'b', '1'}, 7, 0},
        {"empty string", {3, 0x0c, 0, 0}, 4, 0},
        {"empty gob", {0}, 1, 0},
        {"multi-byte length, truncated", {3, 0x0c, 0, 0xfe, 0x01}, 5, 0},
        {"multi-byte length, 9 bytes", {4, 0x0c, 0, 0xf7, 0}, 5, 0},
        {"multi-byte length, non-minimal", {7, 0x0c, 0, 0xff, 3, 's', 'b', '1'}, 8, 1},
        {"multi-byte length, huge",
         {12, 0x0c, 0, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 's'},
         13,
         0},
        {"control byte", {6, 0x0c, 0, 3, 's', '\n', '1'}, 7, 0},
        {"NUL byte", {6, 0x0c, 0, 3, 's', 0, '1'}, 7, 0},
        {"space", {6, 0x0c, 0, 3, 's', ' ', '1'}, 7, 0},
        {"8-bit byte", {6, 0x0c, 0, 3, 's', 0xc3, '1'}, 7, 0},
    };
    char v[1024], id[256];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        seal(cases[i].b, cases[i].n, TS, v);
        int got = dec(v, TS, id, sizeof(id));
        if ((got >= 0) != cases[i].ok)
            fail_msg("%s: decode answered %d", cases[i].what, got);
    }
    /* the sealing helper itself reproduces the vector */
    seal(cases[0].b, cases[0].n, TS, v);
    assert_string_equal(v, VECTOR);
    /* a timestamp that is not plain digits */
    char raw[128];
    unsigned char msg[128], mac[32];
    for (int k = 0; k < 3; k++) {
        static const char *const stamps[] = {"+1781234567", "-1", "1781234567 "};
        int m = snprintf((char *)msg, sizeof(msg), NAME "|%s|BgwAA3NiMQ==", stamps[k]);
        assert_int_equal(px_hmac_sha256(KEY, msg, (size_t)m, mac), 0);
        m = snprintf(raw, sizeof(raw), "%s|BgwAA3NiMQ==|", stamps[k]);
        memcpy(raw + m, mac, 32);
        b64url((unsigned char *)raw, (size_t)m + 32, v);
        assert_int_equal(dec(v, TS, id, sizeof(id)), -1);
    }
}

/* auth/cookie.c: both formats read; the Daytona one names no port, so a
 * signed-token label's Daytona cookie is refused on the reserved ports. */
static void test_both_formats(void **state)
{
    (void)state;
    char v[700], id[256];
    struct px_str sb = PX_STR("sb-1"), tok = PX_STR("abcdefgh12345678");
    static const unsigned ports[] = {3000, 8080, 22222, 2280, 33333};
    int n;

    /* sandbox-ID label, Daytona format: every port */
    n = px_cookie_issue("s3cret", PX_COOKIE_FMT_DAYTONA, sb, 3000, sb, 5000, v, sizeof(v));
    assert_true(n > 0);
    assert_memory_not_equal(v, "v1.", 3);
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(px_cookie_verify("s3cret", sb, ports[i], px_str_make(v, (size_t)n), 5000,
                                          id, sizeof(id)),
                         0);
        assert_string_equal(id, "sb-1");
    }
    assert_int_equal(px_cookie_verify("s3cret", sb, 3000, px_str_make(v, (size_t)n), 5000 + 3601,
                                      id, sizeof(id)),
                     -1);
    /* the same decision under v1 */
    n = px_cookie_issue("s3cret", PX_COOKIE_FMT_V1, sb, 3000, sb, 5000, v, sizeof(v));
    assert_memory_equal(v, "v1.sb-1.8600.", 13); /* expires = now + 3600 */
    assert_int_equal(
        px_cookie_verify("s3cret", sb, 22222, px_str_make(v, (size_t)n), 5000, id, sizeof(id)), 0);

    /* token label, Daytona format: any port but the reserved ones */
    n = px_cookie_issue("s3cret", PX_COOKIE_FMT_DAYTONA, tok, 3000, sb, 5000, v, sizeof(v));
    assert_memory_not_equal(v, "v1.", 3);
    for (size_t i = 0; i < 5; i++) {
        int want = i < 2 ? 0 : -1;
        assert_int_equal(px_cookie_verify("s3cret", tok, ports[i], px_str_make(v, (size_t)n), 5000,
                                          id, sizeof(id)),
                         want);
    }
    /* ... so on a reserved port it is minted as the port-bound v1 */
    n = px_cookie_issue("s3cret", PX_COOKIE_FMT_DAYTONA, tok, 22222, sb, 5000, v, sizeof(v));
    assert_memory_equal(v, "v1.", 3);
    assert_int_equal(
        px_cookie_verify("s3cret", tok, 22222, px_str_make(v, (size_t)n), 5000, id, sizeof(id)), 0);
    assert_int_equal(
        px_cookie_verify("s3cret", tok, 33333, px_str_make(v, (size_t)n), 5000, id, sizeof(id)),
        -1);
    /* a v1 cookie stays port-bound */
    n = px_cookie_issue("s3cret", PX_COOKIE_FMT_V1, tok, 3000, sb, 5000, v, sizeof(v));
    assert_int_equal(
        px_cookie_verify("s3cret", tok, 8080, px_str_make(v, (size_t)n), 5000, id, sizeof(id)), -1);
    /* empty value, no room for the ID */
    assert_int_equal(px_cookie_verify("s3cret", sb, 3000, PX_STR(""), 5000, id, sizeof(id)), -1);
    assert_int_equal(px_cookie_verify("s3cret", sb, 3000, px_str_make(v, (size_t)n), 5000, id, 0),
                     -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vector_encode),        cmocka_unit_test(test_vector_decode),
        cmocka_unit_test(test_every_tamper_refused), cmocka_unit_test(test_age_window),
        cmocka_unit_test(test_wrong_name_refused),   cmocka_unit_test(test_length_cap),
        cmocka_unit_test(test_malformed_gob),        cmocka_unit_test(test_both_formats),
    };
    return cmocka_run_group_tests_name("auth/securecookie", tests, NULL, NULL);
}

/* test_proxyproto.c — the PROXY protocol header parser (proxy/proxyproto.h):
 * every accepted v1 and v2 form, each malformed one, and every valid header
 * fed one byte at a time (AGAIN on each strict prefix, OK on the whole). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "proxy/proxyproto.h"

/* Checks a parse of exactly the header, then the header followed by a request
 * (its length must not swallow the request), then every strict prefix. */
static void expect_ok(const uint8_t *h, size_t len, struct px_pp_result *r)
{
    uint8_t buf[PX_PP_MAX + 64];
    static const char tail[] = "GET / HTTP/1.1\r\n\r\n";

    assert_true(len + sizeof(tail) <= sizeof(buf));
    for (size_t i = 0; i < len; i++)
        assert_int_equal(px_pp_parse(h, i, r), PX_PARSE_AGAIN);
    memcpy(buf, h, len);
    memcpy(buf + len, tail, sizeof(tail) - 1);
    assert_int_equal(px_pp_parse(buf, len + sizeof(tail) - 1, r), PX_PARSE_OK);
    assert_int_equal(r->len, len);
    assert_int_equal(px_pp_parse(h, len, r), PX_PARSE_OK);
    assert_int_equal(r->len, len);
}

static void expect_ok_str(const char *h, struct px_pp_result *r)
{
    expect_ok((const uint8_t *)h, strlen(h), r);
}

/* BAD on the whole input, and never OK on a prefix of it. */
static void expect_bad(const uint8_t *h, size_t len)
{
    struct px_pp_result r;

    for (size_t i = 0; i < len; i++)
        assert_int_not_equal(px_pp_parse(h, i, &r), PX_PARSE_OK);
    if (px_pp_parse(h, len, &r) != PX_PARSE_BAD)
        fail_msg("accepted or wanted more: %.*s", (int)len, (const char *)h);
    assert_non_null(r.why);
}

static void expect_bad_str(const char *h)
{
    expect_bad((const uint8_t *)h, strlen(h));
}

static void check_v4(const struct px_pp_result *r, const char *ip, unsigned port)
{
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&r->src;
    char got[INET_ADDRSTRLEN];

    assert_int_equal(r->local, 0);
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(r->srclen, sizeof(*sin));
    inet_ntop(AF_INET, &sin->sin_addr, got, sizeof(got));
    assert_string_equal(got, ip);
    assert_int_equal(ntohs(sin->sin_port), port);
}

static void check_v6(const struct px_pp_result *r, const char *ip, unsigned port)
{
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&r->src;
    char got[INET6_ADDRSTRLEN];

    assert_int_equal(r->local, 0);
    assert_int_equal(sin6->sin6_family, AF_INET6);
    assert_int_equal(r->srclen, sizeof(*sin6));
    inet_ntop(AF_INET6, &sin6->sin6_addr, got, sizeof(got));
    assert_string_equal(got, ip);
    assert_int_equal(ntohs(sin6->sin6_port), port);
}

/* ---- v1 ---- */

static void test_v1_valid(void **state)
{
    struct px_pp_result r;
    (void)state;

    expect_ok_str("PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n", &r);
    assert_int_equal(r.version, 1);
    check_v4(&r, "192.0.2.7", 56324);
    expect_ok_str("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", &r);
    check_v4(&r, "0.0.0.0", 0);
    expect_ok_str("PROXY TCP6 2001:db8::1 ::1 65535 80\r\n", &r);
    check_v6(&r, "2001:db8::1", 65535);
    expect_ok_str("PROXY TCP6 ::ffff:192.0.2.9 ::1 1 2\r\n", &r);
    check_v6(&r, "::ffff:192.0.2.9", 1);
    expect_ok_str("PROXY UNKNOWN\r\n", &r);
    assert_int_equal(r.local, 1);
    /* 2.1: after UNKNOWN the rest of the line is ignored */
    expect_ok_str("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", &r);
    assert_int_equal(r.local, 1);
    /* the longest line the spec allows: 107 bytes */
    const char *longest = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                          "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_int_equal(strlen(longest), 104);
    expect_ok_str(longest, &r);
    char max[PX_PP_V1_MAX + 1];
    memset(max, 'x', sizeof(max));
    memcpy(max, "PROXY UNKNOWN ", 14);
    memcpy(max + PX_PP_V1_MAX - 2, "\r\n", 3);
    assert_int_equal(strlen(max), PX_PP_V1_MAX);
    expect_ok_str(max, &r);
}

static void test_v1_malformed(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "GET / HTTP/1.1\r\n\r\n",                  /* no header at all */
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",      /* case matters */
        "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",     /* double space */
        "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",     /* double space */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",     /* trailing space */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",        /* a port missing */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",    /* a field too many */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",        /* LF without CR */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",       /* CR without LF */
        "PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",     /* tab */
        "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",      /* no such protocol */
        "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",      /* no such protocol */
        "PROXY UNKNOWNX\r\n",                      /* not UNKNOWN */
        "PROXY \r\n",                              /* nothing */
        "PROXY\r\n",                               /* nothing */
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",     /* leading zero */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n",     /* leading zero */
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",  /* port too big */
        "PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n", /* port too long */
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",     /* sign */
        "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",     /* sign */
        "PROXY TCP4 1.2.3.4 5.6.7.8 0x1 2\r\n",    /* hex */
        "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",        /* short IPv4 */
        "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",    /* octet too big */
        "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",     /* octet leading zero */
        "PROXY TCP4 1.2.3.4 5.6.7.8.9 1 2\r\n",    /* bad destination */
        "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",          /* IPv6 under TCP4 */
        "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",          /* IPv4 under TCP6 */
        "PROXY TCP6 ::1 ::g 1 2\r\n",              /* bad IPv6 */
        "PROXY TCP6 [::1] ::1 1 2\r\n",            /* brackets */
        "PROXY TCP4 localhost 5.6.7.8 1 2\r\n",    /* a name */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x80\r\n",  /* non-ASCII */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_bad_str(cases[i]);
    /* An embedded NUL, length given explicitly. */
    static const char nul[] = "PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n";
    expect_bad((const uint8_t *)nul, sizeof(nul) - 1);

    /* No CRLF within 107 bytes: BAD at 107, even if a CRLF would follow. */
    char tl[PX_PP_V1_MAX + 2];
    memset(tl, 'x', sizeof(tl));
    memcpy(tl, "PROXY UNKNOWN ", 14);
    memcpy(tl + PX_PP_V1_MAX - 1, "\r\n", 3);
    expect_bad_str(tl);
    struct px_pp_result r;
    assert_int_equal(px_pp_parse((const uint8_t *)tl, PX_PP_V1_MAX - 1, &r), PX_PARSE_AGAIN);
    assert_int_equal(px_pp_parse((const uint8_t *)tl, PX_PP_V1_MAX, &r), PX_PARSE_BAD);
}

/* A wrong first byte is refused at once, not after 107 bytes. */
static void test_early_refusal(void **state)
{
    struct px_pp_result r;
    (void)state;

    assert_int_equal(px_pp_parse((const uint8_t *)"G", 1, &r), PX_PARSE_BAD);
    assert_int_equal(px_pp_parse((const uint8_t *)"\x16\x03\x01", 3, &r), PX_PARSE_BAD); /* TLS */
    assert_int_equal(px_pp_parse((const uint8_t *)"PRI", 3, &r), PX_PARSE_BAD); /* h2 preface */
    assert_int_equal(px_pp_parse((const uint8_t *)"PROX", 4, &r), PX_PARSE_AGAIN);
    assert_int_equal(px_pp_parse((const uint8_t *)"\r\n\r\n\0\r\nQUIX", 12, &r), PX_PARSE_BAD);
    assert_int_equal(px_pp_parse((const uint8_t *)"", 0, &r), PX_PARSE_AGAIN);
}

/* ---- v2 ---- */

static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* Builds a v2 header: signature, ver_cmd, fam, then body (whose length is written). */
static size_t v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const uint8_t *body, size_t blen)
{
    memcpy(out, sig, 12);
    out[12] = ver_cmd;
    out[13] = fam;
    out[14] = (uint8_t)(blen >> 8);
    out[15] = (uint8_t)blen;
    if (blen > 0)
        memcpy(out + 16, body, blen);
    return 16 + blen;
}

static const uint8_t inet_body[12] = {192, 0, 2, 7, 10, 0, 0, 1, 0xdc, 0x04, 0x01, 0xbb};

static void test_v2_valid(void **state)
{
    uint8_t h[PX_PP_MAX + 16], body[PX_PP_MAX];
    struct px_pp_result r;
    size_t n;
    (void)state;

    /* PROXY, TCP over IPv4 */
    n = v2(h, 0x21, 0x11, inet_body, sizeof(inet_body));
    expect_ok(h, n, &r);
    assert_int_equal(r.version, 2);
    check_v4(&r, "192.0.2.7", 0xdc04);

    /* PROXY, TCP over IPv6 */
    memset(body, 0, 36);
    body[0] = 0x20, body[1] = 0x01, body[2] = 0x0d, body[3] = 0xb8, body[15] = 9;
    body[31] = 1;
    body[32] = 0x30, body[33] = 0x39, body[34] = 0, body[35] = 80;
    n = v2(h, 0x21, 0x21, body, 36);
    expect_ok(h, n, &r);
    check_v6(&r, "2001:db8::9", 12345);

    /* TLVs after the addresses: skipped, the header ends after them */
    memcpy(body, inet_body, 12);
    static const uint8_t tlvs[] = {0x01, 0x00, 0x02, 'h', '2',       /* ALPN */
                                   0x04, 0x00, 0x00,                 /* NOOP, empty */
                                   0xEA, 0x00, 0x03, 'v', 'p', 'c'}; /* AWS */
    memcpy(body + 12, tlvs, sizeof(tlvs));
    n = v2(h, 0x21, 0x11, body, 12 + sizeof(tlvs));
    expect_ok(h, n, &r);
    check_v4(&r, "192.0.2.7", 0xdc04);

    /* the largest header accepted: a TLV budget of exactly PX_PP_MAX */
    memcpy(body, inet_body, 12);
    size_t tl = PX_PP_MAX - 16 - 12 - 3;
    body[12] = 0xE0;
    body[13] = (uint8_t)(tl >> 8);
    body[14] = (uint8_t)tl;
    memset(body + 15, 'z', tl);
    n = v2(h, 0x21, 0x11, body, PX_PP_MAX - 16);
    assert_int_equal(n, PX_PP_MAX);
    expect_ok(h, n, &r);

    /* LOCAL: no address, the socket's peer stands (health checks) */
    n = v2(h, 0x20, 0x00, NULL, 0);
    expect_ok(h, n, &r);
    assert_int_equal(r.local, 1);
    /* LOCAL with an address block: discarded whatever it holds */
    n = v2(h, 0x20, 0x11, inet_body, sizeof(inet_body));
    expect_ok(h, n, &r);
    assert_int_equal(r.local, 1);
    n = v2(h, 0x20, 0x31, body, 216);
    expect_ok(h, n, &r);
    assert_int_equal(r.local, 1);
    /* PROXY with AF_UNSPEC: LOCAL semantics */
    n = v2(h, 0x21, 0x00, NULL, 0);
    expect_ok(h, n, &r);
    assert_int_equal(r.local, 1);
}

static void test_v2_malformed(void **state)
{
    uint8_t h[PX_PP_MAX + 64], body[PX_PP_MAX + 64];
    size_t n;
    (void)state;

    memset(body, 0, sizeof(body));
    memcpy(body, inet_body, 12);
    expect_bad(h, v2(h, 0x11, 0x11, inet_body, 12)); /* version 1 in binary */
    expect_bad(h, v2(h, 0x31, 0x11, inet_body, 12)); /* version 3 */
    expect_bad(h, v2(h, 0x22, 0x11, inet_body, 12)); /* command 2 */
    expect_bad(h, v2(h, 0x2F, 0x11, inet_body, 12)); /* command 15 */
    expect_bad(h, v2(h, 0x21, 0x41, inet_body, 12)); /* family 4 */
    expect_bad(h, v2(h, 0x21, 0x13, inet_body, 12)); /* transport 3 */
    expect_bad(h, v2(h, 0x21, 0x12, inet_body, 12)); /* UDP over IPv4 */
    expect_bad(h, v2(h, 0x21, 0x22, body, 36));      /* UDP over IPv6 */
    expect_bad(h, v2(h, 0x21, 0x10, inet_body, 12)); /* IPv4, transport UNSPEC */
    expect_bad(h, v2(h, 0x21, 0x31, body, 216));     /* PROXY over AF_UNIX */
    expect_bad(h, v2(h, 0x21, 0x11, inet_body, 11)); /* IPv4 block too short */
    expect_bad(h, v2(h, 0x21, 0x21, body, 35));      /* IPv6 block too short */
    expect_bad(h, v2(h, 0x20, 0x31, body, 215));     /* even LOCAL: block < its family */
    /* TLVs that do not tile the rest */
    body[12] = 0x01, body[13] = 0x00, body[14] = 0x05, body[15] = 'h';
    expect_bad(h, v2(h, 0x21, 0x11, body, 16)); /* value runs past the end */
    expect_bad(h, v2(h, 0x21, 0x11, body, 14)); /* a TLV head cut short */
    expect_bad(h, v2(h, 0x21, 0x11, body, 13));
    expect_bad(h, v2(h, 0x21, 0x00, body + 12, 2)); /* AF_UNSPEC: TLVs checked too */
    /* longer than PX_PP_MAX: refused as soon as the length is read */
    n = v2(h, 0x21, 0x11, body, PX_PP_MAX - 16 + 1);
    struct px_pp_result r;
    assert_int_equal(px_pp_parse(h, 16, &r), PX_PARSE_BAD);
    (void)n;
    /* the maximum the 16-bit length allows, likewise */
    h[14] = 0xff, h[15] = 0xff;
    assert_int_equal(px_pp_parse(h, 16, &r), PX_PARSE_BAD);
    /* a bad signature byte at each position */
    for (int i = 0; i < 12; i++) {
        v2(h, 0x21, 0x11, inet_body, 12);
        h[i] ^= 0x40;
        assert_int_equal(px_pp_parse(h, (size_t)i + 1, &r), PX_PARSE_BAD);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_valid),      cmocka_unit_test(test_v1_malformed),
        cmocka_unit_test(test_early_refusal), cmocka_unit_test(test_v2_valid),
        cmocka_unit_test(test_v2_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

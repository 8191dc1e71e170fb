/* test_routing_host.c — px_host_parse / px_host_is_base (SPEC 1), table-driven,
 * with the Host edge cases of nginx-tests http_host.t. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "routing/host.h"

#define BAD PX_HOST_BAD
#define PREVIEW PX_HOST_PREVIEW
#define BASE PX_HOST_BASE

struct host_case {
    const char *in;
    enum px_host_kind kind;
    const char *name;  /* expected h.name (BASE and PREVIEW), NULL to skip */
    unsigned port;     /* PREVIEW only */
    const char *label; /* PREVIEW only */
};

static int run_case(const struct host_case *c, char *const *domains, int ndomains)
{
    char buf[512];
    struct px_host h;
    size_t len = strlen(c->in);
    int ok = 1;

    memcpy(buf, c->in, len + 1);
    enum px_host_kind k = px_host_parse(buf, len, domains, ndomains, &h);
    if (k != c->kind) {
        print_error("host \"%s\": kind %d, expected %d (why: %s)\n", c->in, k, c->kind,
                    h.why ? h.why : "-");
        return 0;
    }
    if (k == BAD) {
        if (h.why == NULL || h.why[0] == '\0') {
            print_error("host \"%s\": BAD without a reason\n", c->in);
            ok = 0;
        }
        return ok;
    }
    if (c->name != NULL && !px_str_eq(h.name, px_str_make(c->name, strlen(c->name)))) {
        print_error("host \"%s\": name \"%.*s\", expected \"%s\"\n", c->in, (int)h.name.len,
                    h.name.p ? h.name.p : "", c->name);
        ok = 0;
    }
    /* Slices point into the caller's buffer. */
    if (h.name.len > 0 && (h.name.p < buf || h.name.p + h.name.len > buf + len)) {
        print_error("host \"%s\": name does not point into the buffer\n", c->in);
        ok = 0;
    }
    if (k == PREVIEW) {
        if (h.port != c->port) {
            print_error("host \"%s\": port %u, expected %u\n", c->in, h.port, c->port);
            ok = 0;
        }
        if (!px_str_eq(h.label, px_str_make(c->label, strlen(c->label)))) {
            print_error("host \"%s\": label \"%.*s\", expected \"%s\"\n", c->in, (int)h.label.len,
                        h.label.p ? h.label.p : "", c->label);
            ok = 0;
        }
        if (h.label.p < buf || h.label.p + h.label.len > buf + len) {
            print_error("host \"%s\": label does not point into the buffer\n", c->in);
            ok = 0;
        }
    }
    return ok;
}

static void run_table(const struct host_case *t, size_t n, char *const *domains, int ndomains)
{
    int failed = 0;

    for (size_t i = 0; i < n; i++)
        if (!run_case(&t[i], domains, ndomains))
            failed++;
    if (failed)
        fail_msg("%d of %zu host cases failed", failed, n);
}

#define UUID "4f1c0e2a-9c1d-4e55-b0a4-0c8d7e1f2a3b"

/* SPEC 1 preview hosts and the port grammar: 1-65535, decimal, no sign, no leading zeros. */
static void test_preview_ports(void **state)
{
    (void)state;
    static const struct host_case t[] = {
        {"3000-abc123.preview.test", PREVIEW, "3000-abc123.preview.test", 3000, "abc123"},
        {"3000-" UUID ".proxy.localhost", PREVIEW, NULL, 3000, UUID},
        {"1-a.x", PREVIEW, "1-a.x", 1, "a"},
        {"65535-a.x", PREVIEW, NULL, 65535, "a"},
        {"9-a.x", PREVIEW, NULL, 9, "a"},
        {"10-a.x", PREVIEW, NULL, 10, "a"},
        {"22222-sb.proxy.test", PREVIEW, NULL, 22222, "sb"},
        {"2280-sb.proxy.test", PREVIEW, NULL, 2280, "sb"},
        {"0-a.x", BAD, NULL, 0, NULL}, /* port 0 */
        {"00-a.x", BAD, NULL, 0, NULL},
        {"03000-abc.preview.test", BAD, NULL, 0, NULL}, /* leading zero */
        {"065535-a.x", BAD, NULL, 0, NULL},
        {"65536-a.x", BAD, NULL, 0, NULL}, /* out of range */
        {"99999-a.x", BAD, NULL, 0, NULL},
        {"100000-a.x", BAD, NULL, 0, NULL},
        {"4294967297-a.x", BAD, NULL, 0, NULL}, /* would wrap a 32-bit port */
        {"3000-.x", BAD, NULL, 0, NULL},        /* empty label */
        /* the label is everything between the first '-' and the first '.' */
        {"3000-abc-def.example.com", PREVIEW, NULL, 3000, "abc-def"},
        {"3000--abc.example.com", PREVIEW, NULL, 3000, "-abc"},
        {"3000-abc_def.example.com", PREVIEW, NULL, 3000, "abc_def"},
        {"3000-abc.a-b.example.com", PREVIEW, NULL, 3000, "abc"},
        /* signed preview tokens are labels too */
        {"8080-tok3n0123456789abcdef.proxy.localhost", PREVIEW, NULL, 8080,
         "tok3n0123456789abcdef"},
    };
    run_table(t, sizeof(t) / sizeof(t[0]), NULL, 0);
}

/* Things that are valid hosts but not preview hosts. */
static void test_base_hosts(void **state)
{
    (void)state;
    static const struct host_case t[] = {
        {"proxy.localhost", BASE, "proxy.localhost", 0, NULL},
        {"localhost", BASE, "localhost", 0, NULL},
        {"localhost:4000", BASE, "localhost", 0, NULL},
        {"my-proxy.example.com", BASE, "my-proxy.example.com", 0, NULL},
        {"3000abc-x.example.com", BASE, "3000abc-x.example.com", 0, NULL},
        {"3000.example.com", BASE, "3000.example.com", 0, NULL}, /* digits, no '-' */
        {"3000-abc", BASE, "3000-abc", 0, NULL},                 /* no base domain */
        {"3000-abc:80", BASE, "3000-abc", 0, NULL},
        {"a-3000.example.com", BASE, "a-3000.example.com", 0, NULL},
        {"www.abcd-ef.g02.xyz", BASE, "www.abcd-ef.g02.xyz", 0, NULL},
        {"abcd-ef.g02.xyz:10", BASE, "abcd-ef.g02.xyz", 0, NULL},
        {"123.40.56.78", BASE, "123.40.56.78", 0, NULL},
        {"123.49.0.78:987", BASE, "123.49.0.78", 0, NULL},
        {"_srv.example.com", BASE, "_srv.example.com", 0, NULL},
    };
    run_table(t, sizeof(t) / sizeof(t[0]), NULL, 0);
}

/* Host matching is case-insensitive: the buffer is lowercased in place. */
static void test_case_insensitive(void **state)
{
    (void)state;
    static const struct host_case t[] = {
        {"3000-ABC123.Preview.TEST", PREVIEW, "3000-abc123.preview.test", 3000, "abc123"},
        {"AbC-d93.0.34ZhGt-s.nk.Ru:88", BASE, "abc-d93.0.34zhgt-s.nk.ru", 0, NULL},
        {"PROXY.LOCALHOST", BASE, "proxy.localhost", 0, NULL},
    };
    run_table(t, sizeof(t) / sizeof(t[0]), NULL, 0);

    char buf[] = "3000-SB1.Proxy.Test:8080";
    struct px_host h;
    assert_int_equal(px_host_parse(buf, strlen(buf), NULL, 0, &h), PREVIEW);
    assert_memory_equal(buf, "3000-sb1.proxy.test", 19);
    assert_true(px_str_eq(h.label, PX_STR("sb1")));
}

/* The :port suffix is ignored for routing. */
static void test_port_suffix(void **state)
{
    (void)state;
    static const struct host_case t[] = {
        {"3000-abc.example.com:8080", PREVIEW, "3000-abc.example.com", 3000, "abc"},
        {"3000-abc.example.com:1", PREVIEW, "3000-abc.example.com", 3000, "abc"},
        {"3000-abc.example.com:443", PREVIEW, NULL, 3000, "abc"},
        {"example.com:abc", BAD, NULL, 0, NULL},
        {"example.com:-1", BAD, NULL, 0, NULL},
        {"example.com:+80", BAD, NULL, 0, NULL},
        {"example.com: 80", BAD, NULL, 0, NULL},
        {":80", BAD, NULL, 0, NULL},
        {":", BAD, NULL, 0, NULL},
    };
    run_table(t, sizeof(t) / sizeof(t[0]), NULL, 0);
}

/* Trailing dot: "a.example.com." names a.example.com (http_host.t). */
static void test_trailing_dot(void **state)
{
    (void)state;
    static const struct host_case t[] = {
        {"www.abcd-ef.g02.xyz.", BASE, "www.abcd-ef.g02.xyz", 0, NULL},
        {"3000-abc.example.com.", PREVIEW, "3000-abc.example.com", 3000, "abc"},
        {"www.abcd-ef.g02.xyz..", BAD, NULL, 0, NULL},
    };
    run_table(t, sizeof(t) / sizeof(t[0]), NULL, 0);
}

/* http_host.t "domain w/ ending dot w/port": "abcd-ef.g02.xyz.:88" -> abcd-ef.g02.xyz. */
static void test_trailing_dot_with_port(void **state)
{
    (void)state;
    static const struct host_case t[] = {
        {"abcd-ef.g02.xyz.:88", BASE, "abcd-ef.g02.xyz", 0, NULL},
        {"3000-abc.example.com.:8080", PREVIEW, "3000-abc.example.com", 3000, "abc"},
    };
    run_table(t, sizeof(t) / sizeof(t[0]), NULL, 0);
}

/* fuzz_host (fuzz/corpus/host/regress-trailing-dot): without `domains`,
 * "3000-abt." parsed as a preview of sandbox "abt" with an empty base domain,
 * while "3000-abt" (the same name) is a base host. A trailing dot is dropped
 * first, with or without a port, so both read alike. */
static void test_trailing_dot_only_dot(void **state)
{
    (void)state;
    static const struct host_case t[] = {
        {"3000-abt.", BASE, "3000-abt", 0, NULL},
        {"3000-abt", BASE, "3000-abt", 0, NULL},
        {"3000-abt.:80", BASE, "3000-abt", 0, NULL},
        {"localhost.", BASE, "localhost", 0, NULL},
    };
    run_table(t, sizeof(t) / sizeof(t[0]), NULL, 0);
}

/* Malformed hosts: empty labels, "..", path separators, controls. */
static void test_bad_hosts(void **state)
{
    (void)state;
    static const struct host_case t[] = {
        {"", BAD, NULL, 0, NULL},
        {".", BAD, NULL, 0, NULL},
        {"..", BAD, NULL, 0, NULL},
        {"..proxy.test", BAD, NULL, 0, NULL},
        {".proxy.test", BAD, NULL, 0, NULL},
        {"..examp-LE.com", BAD, NULL, 0, NULL},
        {"com.exa-m.45..:", BAD, NULL, 0, NULL},
        {"a..b", BAD, NULL, 0, NULL},
        {"3000-abc..example.com", BAD, NULL, 0, NULL},
        {"example.com/\\:552", BAD, NULL, 0, NULL},
        {"example.com/", BAD, NULL, 0, NULL},
        {"example.com\\", BAD, NULL, 0, NULL},
        {"\\e/xample.com", BAD, NULL, 0, NULL},
        {"exa mple.com", BAD, NULL, 0, NULL},
        {"example.com\t", BAD, NULL, 0, NULL},
        {"exa\x01mple.com", BAD, NULL, 0, NULL},
        {"exa\x7fmple.com", BAD, NULL, 0, NULL},
        {"exa\xc3\xa9mple.com", BAD, NULL, 0, NULL},
        {"user@example.com", BAD, NULL, 0, NULL},
        {"example.com?x", BAD, NULL, 0, NULL},
        {"example.com#x", BAD, NULL, 0, NULL},
        {"example.com:", BAD, NULL, 0, NULL},
        {"-abc.example.com", BAD, NULL, 0, NULL},
        {"3000-abc.example.com:80:90", BAD, NULL, 0, NULL},
        {"[::1", BAD, NULL, 0, NULL}, /* no closing bracket */
        {"[::1]x", BAD, NULL, 0, NULL},
        {"[abcd::ef98:0:7654:321]..:98", BAD, NULL, 0, NULL},
    };
    run_table(t, sizeof(t) / sizeof(t[0]), NULL, 0);
}

/* A NUL byte inside the value (len covers it) is rejected. */
static void test_embedded_nul(void **state)
{
    (void)state;
    char buf[] = "3000-a\0b.example.com";
    struct px_host h;
    assert_int_equal(px_host_parse(buf, sizeof(buf) - 1, NULL, 0, &h), BAD);
}

/* The parser must not read past len: the bytes after it are not part of the Host. */
static void test_respects_len(void **state)
{
    (void)state;
    char buf[] = "3000-abc.example.com\r\nX-Other: 1";
    struct px_host h;
    assert_int_equal(px_host_parse(buf, 20, NULL, 0, &h), PREVIEW);
    assert_true(px_str_eq(h.name, PX_STR("3000-abc.example.com")));
    assert_memory_equal(buf + 20, "\r\nX-Other: 1", 12);
}

/* IPv6 literals are base hosts (http_host.t). */
static void test_ipv6_literals(void **state)
{
    (void)state;
    static const struct host_case t[] = {
        {"[::1]", BASE, "[::1]", 0, NULL},
        {"[::1]:4000", BASE, "[::1]", 0, NULL},
        {"[abcd::ef98:0:7654:321]", BASE, "[abcd::ef98:0:7654:321]", 0, NULL},
        {"[abcd::ef98:0:7654:321]:80", BASE, "[abcd::ef98:0:7654:321]", 0, NULL},
        {"[::ffff:12.30.67.89]", BASE, "[::ffff:12.30.67.89]", 0, NULL},
        {"[::123.45.67.89]:4321", BASE, "[::123.45.67.89]", 0, NULL},
        {"[AbC::1]", BASE, "[abc::1]", 0, NULL},
    };
    run_table(t, sizeof(t) / sizeof(t[0]), NULL, 0);
}

/* Garbage inside brackets is not an IPv6 literal (http_host.t). */
static void test_ipv6_bad(void **state)
{
    (void)state;
    static const struct host_case t[] = {
        {"[abcd::e\\f98:0/:7654:321]", BAD, NULL, 0, NULL},
        {"[ab..cd::ef98:0:7654:321]", BAD, NULL, 0, NULL},
        {"[]", BAD, NULL, 0, NULL},
        {"[::1]:", BAD, NULL, 0, NULL},
        {"[::1]:8x", BAD, NULL, 0, NULL},
    };
    run_table(t, sizeof(t) / sizeof(t[0]), NULL, 0);
}

/* With `domains` configured, only those base domains make preview hosts. */
static void test_domains_restriction(void **state)
{
    (void)state;
    char *domains[] = {"proxy.test", "eu.example.com"};
    static const struct host_case t[] = {
        {"3000-abc.proxy.test", PREVIEW, "3000-abc.proxy.test", 3000, "abc"},
        {"3000-abc.PROXY.test:443", PREVIEW, "3000-abc.proxy.test", 3000, "abc"},
        {"3000-abc.proxy.test.", PREVIEW, "3000-abc.proxy.test", 3000, "abc"},
        {"3000-abc.eu.example.com", PREVIEW, NULL, 3000, "abc"},
        {"3000-abc.other.test", BASE, "3000-abc.other.test", 0, NULL},
        {"3000-abc.example.com", BASE, NULL, 0, NULL},
        {"3000-abc.sub.proxy.test", BASE, NULL, 0, NULL},
        {"3000-abc.xproxy.test", BASE, NULL, 0, NULL},
        {"3000-abc.proxy.testx", BASE, NULL, 0, NULL},
        {"70000-abc.other.test", BASE, NULL, 0, NULL}, /* maybe a custom domain */
        {"70000-abc.proxy.test", BAD, NULL, 0, NULL},
        {"proxy.test", BASE, "proxy.test", 0, NULL},
        {"app.customer.com", BASE, "app.customer.com", 0, NULL},
    };
    run_table(t, sizeof(t) / sizeof(t[0]), domains, 2);
}

static void test_is_base(void **state)
{
    (void)state;
    char *domains[] = {"proxy.test", "eu.example.com"};
    struct px_host h = {.name = PX_STR("proxy.test")};

    assert_true(px_host_is_base(&h, domains, 2));
    assert_true(px_host_is_base(&h, NULL, 0));
    h.name = PX_STR("eu.example.com");
    assert_true(px_host_is_base(&h, domains, 2));
    h.name = PX_STR("example.com");
    assert_false(px_host_is_base(&h, domains, 2));
    assert_true(px_host_is_base(&h, NULL, 0));
    h.name = PX_STR("proxy.tes");
    assert_false(px_host_is_base(&h, domains, 2));
    h.name = PX_STR("proxy.testt");
    assert_false(px_host_is_base(&h, domains, 2));
}

static void test_reserved_ports(void **state)
{
    (void)state;
    assert_true(px_port_reserved(22222));
    assert_true(px_port_reserved(2280));
    assert_true(px_port_reserved(33333));
    assert_false(px_port_reserved(3000));
    assert_false(px_port_reserved(0));
    assert_false(px_port_reserved(22223));
}

static void test_str_is_label(void **state)
{
    (void)state;
    assert_true(px_str_is_label(PX_STR("sbx-1_A"), 16));
    assert_true(px_str_is_label(PX_STR("a"), 1));
    assert_false(px_str_is_label(PX_STR("ab"), 1)); /* over max */
    assert_false(px_str_is_label(PX_STR(""), 16));
    const char *bad[] = {"a/b", "a.b", "a%2f", "a b", "a:b", "a?b", "\xc3\xa9"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(px_str_is_label(px_str_make(bad[i], strlen(bad[i])), 16));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_preview_ports),    cmocka_unit_test(test_base_hosts),
        cmocka_unit_test(test_case_insensitive), cmocka_unit_test(test_port_suffix),
        cmocka_unit_test(test_trailing_dot),     cmocka_unit_test(test_trailing_dot_with_port),
        cmocka_unit_test(test_bad_hosts),        cmocka_unit_test(test_embedded_nul),
        cmocka_unit_test(test_respects_len),     cmocka_unit_test(test_ipv6_literals),
        cmocka_unit_test(test_ipv6_bad),         cmocka_unit_test(test_domains_restriction),
        cmocka_unit_test(test_is_base),          cmocka_unit_test(test_reserved_ports),
        cmocka_unit_test(test_str_is_label),     cmocka_unit_test(test_trailing_dot_only_dot),
    };
    return cmocka_run_group_tests_name("routing/host", tests, NULL, NULL);
}

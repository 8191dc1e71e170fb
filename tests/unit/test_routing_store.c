/* test_routing_store.c — sandbox records: px_sandbox_set / px_sandbox_finish / dup / find. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "routing/store.h"

static void test_new_defaults(void **state)
{
    (void)state;
    struct px_sandbox *sb = px_sandbox_new("sb1");

    assert_non_null(sb);
    assert_string_equal(sb->id, "sb1");
    assert_int_equal(sb->warning, -1); /* follow the global switch */
    assert_false(sb->is_public);
    assert_false(sb->direct);
    assert_false(sb->wake_http);
    assert_null(sb->runner_url);
    assert_null(sb->auth_token);
    assert_null(sb->next);
    px_sandbox_free(sb);
    px_sandbox_free(NULL);
}

static void test_set_fields(void **state)
{
    (void)state;
    struct px_sandbox *sb = px_sandbox_new("sb1");
    const char *why = NULL;

    assert_int_equal(px_sandbox_set(sb, "runner_url", "http://10.0.0.5:3003", &why), 0);
    assert_int_equal(px_sandbox_set(sb, "runner_key", "rk", &why), 0);
    assert_int_equal(px_sandbox_set(sb, "auth_token", "tok", &why), 0);
    assert_int_equal(px_sandbox_set(sb, "org", "o1", &why), 0);
    assert_int_equal(px_sandbox_set(sb, "state", "stopped", &why), 0);
    assert_int_equal(px_sandbox_set(sb, "signing_key", "sk", &why), 0);
    assert_int_equal(px_sandbox_set(sb, "wake", "http", &why), 0);
    assert_string_equal(sb->runner_url, "http://10.0.0.5:3003");
    assert_string_equal(sb->runner_key, "rk");
    assert_string_equal(sb->auth_token, "tok");
    assert_string_equal(sb->org, "o1");
    assert_string_equal(sb->state, "stopped");
    assert_string_equal(sb->signing_key, "sk");
    assert_true(sb->wake_http);
    assert_int_equal(px_sandbox_set(sb, "wake", "none", &why), 0);
    assert_false(sb->wake_http);

    /* setting again replaces (and the old value is freed: run under ASan) */
    assert_int_equal(px_sandbox_set(sb, "runner_key", "rk2", &why), 0);
    assert_string_equal(sb->runner_key, "rk2");
    /* an empty value is a value */
    assert_int_equal(px_sandbox_set(sb, "auth_token", "", &why), 0);
    assert_string_equal(sb->auth_token, "");

    static const struct {
        const char *v;
        int b;
    } bools[] = {
        {"1", 1}, {"true", 1},  {"TRUE", 1},  {"on", 1},  {"yes", 1},
        {"0", 0}, {"false", 0}, {"False", 0}, {"off", 0}, {"no", 0},
    };
    for (size_t i = 0; i < sizeof(bools) / sizeof(bools[0]); i++) {
        assert_int_equal(px_sandbox_set(sb, "public", bools[i].v, &why), 0);
        assert_int_equal(sb->is_public, bools[i].b);
        assert_int_equal(px_sandbox_set(sb, "direct", bools[i].v, &why), 0);
        assert_int_equal(sb->direct, bools[i].b);
        assert_int_equal(px_sandbox_set(sb, "warning", bools[i].v, &why), 0);
        assert_int_equal(sb->warning, bools[i].b);
    }
    px_sandbox_free(sb);
}

static void test_set_bad(void **state)
{
    (void)state;
    struct px_sandbox *sb = px_sandbox_new("sb1");
    static const struct {
        const char *k, *v;
    } t[] = {
        {"public", "2"},
        {"public", ""},
        {"public", "yes!"},
        {"direct", "maybe"},
        {"warning", "-1"},
        {"wake", "sometimes"},
        {"wake", "HTTP"},
        {"colour", "blue"},
        {"", "x"},
        {"Runner_url", "http://h"},
        {"runner_url ", "http://h"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        const char *why = NULL;
        sb->is_public = 0;
        if (px_sandbox_set(sb, t[i].k, t[i].v, &why) != -1)
            fail_msg("set(\"%s\", \"%s\") accepted", t[i].k, t[i].v);
        if (why == NULL || why[0] == '\0')
            fail_msg("set(\"%s\", \"%s\"): no reason", t[i].k, t[i].v);
        assert_false(sb->is_public); /* a bad value leaves the field alone */
    }
    px_sandbox_free(sb);
}

struct url_case {
    const char *url;
    int rc;
    int tls;
    const char *host;
    int port;
    const char *authority;
};

static void test_finish_urls(void **state)
{
    (void)state;
    static const struct url_case t[] = {
        {"http://10.0.0.5:3003", 0, 0, "10.0.0.5", 3003, "10.0.0.5:3003"},
        {"http://10.0.0.5", 0, 0, "10.0.0.5", 80, "10.0.0.5"},
        {"https://10.0.0.5", 0, 1, "10.0.0.5", 443, "10.0.0.5"},
        {"https://runner.example:8443", 0, 1, "runner.example", 8443, "runner.example:8443"},
        {"http://runner.example/", 0, 0, "runner.example", 80, "runner.example"},
        {"http://runner.example:3003/some/base?x#y", 0, 0, "runner.example", 3003,
         "runner.example:3003"},
        {"http://runner.example?x", 0, 0, "runner.example", 80, "runner.example"},
        {"http://[::1]:3003", 0, 0, "::1", 3003, "[::1]:3003"},
        {"http://[fd00::5]", 0, 0, "fd00::5", 80, "[fd00::5]"},
        {"https://[fd00::5]/", 0, 1, "fd00::5", 443, "[fd00::5]"},
        {"http://h:1", 0, 0, "h", 1, "h:1"},
        {"http://h:65535", 0, 0, "h", 65535, "h:65535"},
        /* errors */
        {"ftp://h", -1, 0, NULL, 0, NULL},
        {"h:80", -1, 0, NULL, 0, NULL},
        {"//h:80", -1, 0, NULL, 0, NULL},
        {"http:/h", -1, 0, NULL, 0, NULL},
        {"http://", -1, 0, NULL, 0, NULL},
        {"http:///x", -1, 0, NULL, 0, NULL},
        {"http://h:0", -1, 0, NULL, 0, NULL},
        {"http://h:65536", -1, 0, NULL, 0, NULL},
        {"http://h:-1", -1, 0, NULL, 0, NULL},
        {"http://h:", -1, 0, NULL, 0, NULL},
        {"http://h:80x", -1, 0, NULL, 0, NULL},
        {"http://h:99999999999999999999", -1, 0, NULL, 0, NULL},
        {"http://[::1:80", -1, 0, NULL, 0, NULL},
        {"", -1, 0, NULL, 0, NULL},
    };
    int failed = 0;

    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct px_sandbox *sb = px_sandbox_new("sb");
        const char *why = NULL;
        assert_int_equal(px_sandbox_set(sb, "runner_url", t[i].url, &why), 0);
        int rc = px_sandbox_finish(sb, &why);
        if (rc != t[i].rc) {
            print_error("finish(\"%s\") = %d (%s), expected %d\n", t[i].url, rc, rc ? why : "-",
                        t[i].rc);
            failed++;
        } else if (rc != 0) {
            if (why == NULL || why[0] == '\0') {
                print_error("finish(\"%s\"): no reason\n", t[i].url);
                failed++;
            }
        } else if (sb->runner_tls != t[i].tls || sb->runner_port != t[i].port ||
                   sb->runner_host == NULL || strcmp(sb->runner_host, t[i].host) ||
                   sb->runner_authority == NULL || strcmp(sb->runner_authority, t[i].authority)) {
            print_error("finish(\"%s\"): tls %d host \"%s\" port %d authority \"%s\"\n", t[i].url,
                        sb->runner_tls, sb->runner_host ? sb->runner_host : "(null)",
                        sb->runner_port, sb->runner_authority ? sb->runner_authority : "(null)");
            failed++;
        }
        px_sandbox_free(sb);
    }
    if (failed)
        fail_msg("%d runner_url cases failed", failed);
}

/* Junk between "]" and the end of the authority, or a port strtol() would take
 * but that is not 1*DIGIT, is not a valid runner_url. */
static void test_finish_strict_authority(void **state)
{
    (void)state;
    static const char *const t[] = {
        "http://[::1]x",
        "http://[::1]junk:80",
        "http://h:+80",
        "http://h: 80",
    };
    int failed = 0;

    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct px_sandbox *sb = px_sandbox_new("sb");
        const char *why = NULL;
        assert_int_equal(px_sandbox_set(sb, "runner_url", t[i], &why), 0);
        if (px_sandbox_finish(sb, &why) != -1) {
            print_error("finish(\"%s\") accepted: host \"%s\" port %d\n", t[i], sb->runner_host,
                        sb->runner_port);
            failed++;
        }
        px_sandbox_free(sb);
    }
    if (failed)
        fail_msg("%d malformed runner_urls accepted", failed);
}

static void test_finish_requires_url(void **state)
{
    (void)state;
    struct px_sandbox *sb = px_sandbox_new("sb");
    const char *why = NULL;

    assert_int_equal(px_sandbox_finish(sb, &why), -1);
    assert_non_null(why);
    assert_non_null(strstr(why, "runner_url"));

    /* finishing twice (e.g. a changed runner_url) replaces the parsed fields */
    assert_int_equal(px_sandbox_set(sb, "runner_url", "http://a:1", &why), 0);
    assert_int_equal(px_sandbox_finish(sb, &why), 0);
    assert_int_equal(px_sandbox_set(sb, "runner_url", "https://b", &why), 0);
    assert_int_equal(px_sandbox_finish(sb, &why), 0);
    assert_string_equal(sb->runner_host, "b");
    assert_int_equal(sb->runner_port, 443);
    assert_true(sb->runner_tls);
    assert_string_equal(sb->runner_authority, "b");
    px_sandbox_free(sb);
}

static void test_dup(void **state)
{
    (void)state;
    struct px_sandbox *sb = px_sandbox_new("sb1");
    const char *why;

    px_sandbox_set(sb, "runner_url", "https://[fd00::5]:8443", &why);
    px_sandbox_set(sb, "runner_key", "rk", &why);
    px_sandbox_set(sb, "auth_token", "tok", &why);
    px_sandbox_set(sb, "public", "1", &why);
    px_sandbox_set(sb, "warning", "0", &why);
    px_sandbox_set(sb, "wake", "http", &why);
    assert_int_equal(px_sandbox_finish(sb, &why), 0);

    struct px_sandbox *d = px_sandbox_dup(sb);
    assert_non_null(d);
    assert_ptr_not_equal(d->id, sb->id);
    assert_string_equal(d->id, "sb1");
    assert_string_equal(d->runner_url, sb->runner_url);
    assert_string_equal(d->runner_key, "rk");
    assert_string_equal(d->auth_token, "tok");
    assert_null(d->org);
    assert_string_equal(d->runner_host, "fd00::5");
    assert_string_equal(d->runner_authority, "[fd00::5]:8443");
    assert_int_equal(d->runner_port, 8443);
    assert_true(d->runner_tls);
    assert_true(d->is_public);
    assert_int_equal(d->warning, 0);
    assert_true(d->wake_http);
    assert_null(d->next);
    px_sandbox_free(sb);
    assert_string_equal(d->runner_key, "rk"); /* independent copy */
    px_sandbox_free(d);
}

static void test_store_find(void **state)
{
    (void)state;
    struct px_config cfg;
    struct px_sandbox *a = px_sandbox_new("abc"), *b = px_sandbox_new("abcd");

    memset(&cfg, 0, sizeof(cfg));
    a->next = b;
    cfg.sandboxes = a;
    assert_ptr_equal(px_store_find(&cfg, PX_STR("abc")), a);
    assert_ptr_equal(px_store_find(&cfg, PX_STR("abcd")), b);
    assert_null(px_store_find(&cfg, PX_STR("ab")));
    assert_null(px_store_find(&cfg, PX_STR("abcde")));
    assert_null(px_store_find(&cfg, PX_STR("")));
    /* the id is a slice, not a C string */
    assert_ptr_equal(px_store_find(&cfg, px_str_make("abcdef", 3)), a);
    px_sandbox_free(a);
    px_sandbox_free(b);
}

/* SPEC 9 direct mode: addr and ports, and the ports a request may reach. */
static void test_direct_ports(void **state)
{
    (void)state;
    struct px_sandbox *sb = px_sandbox_new("d1");
    const char *why = NULL;

    assert_int_equal(px_sandbox_set(sb, "runner_url", "http://10.0.0.5:3003", &why), 0);
    assert_int_equal(px_sandbox_finish(sb, &why), 0);
    /* no list: anything but the runner's own port */
    assert_true(px_sandbox_direct_port_ok(sb, 3000));
    assert_false(px_sandbox_direct_port_ok(sb, 3003));
    assert_false(px_sandbox_direct_port_ok(sb, 0));
    assert_int_equal(px_sandbox_set(sb, "ports", "3000,8000-8099", &why), 0);
    assert_int_equal(sb->nports, 2);
    assert_true(px_sandbox_direct_port_ok(sb, 3000));
    assert_true(px_sandbox_direct_port_ok(sb, 8000));
    assert_true(px_sandbox_direct_port_ok(sb, 8099));
    assert_false(px_sandbox_direct_port_ok(sb, 8100));
    assert_false(px_sandbox_direct_port_ok(sb, 3001));
    assert_int_equal(px_sandbox_set(sb, "ports", "3003", &why), 0);
    assert_false(px_sandbox_direct_port_ok(sb, 3003)); /* listed or not, never the runner's */
    /* unreadable lists fail closed */
    const char *bad[] = {"", "x", "3000,", "0", "70000", "9-8", "3000;3001", "-5", "1-"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(px_sandbox_set(sb, "ports", bad[i], &why), -1);
        assert_false(px_sandbox_direct_port_ok(sb, 3000));
    }
    assert_int_equal(px_sandbox_set(sb, "ports", "1-65535", &why), 0);
    assert_true(px_sandbox_direct_port_ok(sb, 65535));
    assert_int_equal(px_sandbox_set(sb, "addr", "[::1]", &why), 0);
    assert_string_equal(sb->addr, "::1");
    assert_int_equal(px_sandbox_set(sb, "addr", "10.1.2.3", &why), 0);
    struct px_sandbox *d = px_sandbox_dup(sb);
    assert_string_equal(d->addr, "10.1.2.3");
    assert_int_equal(d->nports, 1);
    px_sandbox_free(d);
    assert_int_equal(px_sandbox_set(sb, "addr", "10.1.2.3/evil", &why), -1);
    assert_false(px_sandbox_direct_port_ok(sb, 3000)); /* bad addr: reaches nothing */
    px_sandbox_free(sb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_defaults),
        cmocka_unit_test(test_set_fields),
        cmocka_unit_test(test_set_bad),
        cmocka_unit_test(test_finish_urls),
        cmocka_unit_test(test_finish_strict_authority),
        cmocka_unit_test(test_finish_requires_url),
        cmocka_unit_test(test_dup),
        cmocka_unit_test(test_store_find),
        cmocka_unit_test(test_direct_ports),
    };
    return cmocka_run_group_tests_name("routing/store", tests, NULL, NULL);
}

/* test_routing_path.c — px_path_has_dot_segment, px_path_toolbox, px_query_strip (SPEC 9). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "routing/path.h"

static struct px_str S(const char *s) {
    return px_str_make(s, strlen(s));
}

struct dot_case {
    const char *path;
    int expect;
};

static void run_dot_table(const struct dot_case *t, size_t n)
{
    int failed = 0;

    for (size_t i = 0; i < n; i++) {
        int got = px_path_has_dot_segment(S(t[i].path));
        if (got != t[i].expect) {
            print_error("path \"%s\": has_dot_segment %d, expected %d\n", t[i].path, got,
                        t[i].expect);
            failed++;
        }
    }
    if (failed)
        fail_msg("%d of %zu path cases failed", failed, n);
}

static void test_dot_segments_rejected(void **state)
{
    (void)state;
    static const struct dot_case t[] = {
        {"/a/../b", 1},     {"/../etc/passwd", 1},
        {"/./", 1},         {"/a/./b", 1},
        {"/.", 1},          {"/..", 1},
        {"/a/..", 1}, /* trailing /.. */
        {"/a/.", 1},        {"/%2e%2e/", 1},
        {"/%2E%2E/", 1},    {"/%2E./", 1},
        {"/.%2e/", 1},      {"/%2e/", 1},
        {"/a/%2e%2e", 1},   {"/a%2f..%2fb", 1}, /* hidden behind an encoded slash */
        {"/a%2F..%2Fb", 1}, {"/a%2f%2e%2e%2fb", 1},
        {"/a%5c..%5cb", 1}, {"/a\\..\\b", 1}, /* backslash */
        {"/a\\..", 1},      {"\\..\\", 1},
        {"/a/..?x=1", 1},   {"/a/../?x=1", 1},
        {"..", 1},          {"/a//../b", 1},
    };
    run_dot_table(t, sizeof(t) / sizeof(t[0]));
}

static void test_dot_segments_allowed(void **state)
{
    (void)state;
    static const struct dot_case t[] = {
        {"", 0},          {"/", 0},         {"//", 0},           {"/a/b/c", 0},
        {"/a..b/", 0},    {"/a..b", 0},     {"/.hidden", 0},     {"/.hidden/x", 0},
        {"/..hidden", 0}, {"/x./", 0},      {"/x..", 0},         {"/...", 0},
        {"/file.txt", 0}, {"/%2e%2ex/", 0}, {"/%2", 0}, /* truncated escapes are just bytes */
        {"/%", 0},        {"/%2f", 0},      {"/%252e%252e/", 0}, /* double-encoded: the runner
                                                                    decodes once */
        {"/a?x=/../", 0},                                        /* the query is not the path */
        {"/a?/./", 0},    {"/a?..", 0},
    };
    run_dot_table(t, sizeof(t) / sizeof(t[0]));
}

/* "..." is an ordinary segment (RFC 3986 5.2.4 removes only "." and ".."),
 * so it must pass in the middle of a path as it does at the end. */
static void test_triple_dot_segment(void **state)
{
    (void)state;
    static const struct dot_case t[] = {
        {"/...", 0}, {"/.../", 0}, {"/.../b", 0}, {"/a/..../b", 0}, {"/%2e%2e%2e/b", 0},
    };
    run_dot_table(t, sizeof(t) / sizeof(t[0]));
}

static void test_toolbox(void **state)
{
    (void)state;
    struct px_str id, rest;

    assert_int_equal(px_path_toolbox(S("/toolbox/sb1/files/list"), &id, &rest), 0);
    assert_true(px_str_eq(id, PX_STR("sb1")));
    assert_true(px_str_eq(rest, PX_STR("/files/list")));

    assert_int_equal(px_path_toolbox(S("/toolbox/sb1"), &id, &rest), 0);
    assert_true(px_str_eq(id, PX_STR("sb1")));
    assert_int_equal(rest.len, 0);

    assert_int_equal(px_path_toolbox(S("/toolbox/sb1/"), &id, &rest), 0);
    assert_true(px_str_eq(id, PX_STR("sb1")));
    assert_true(px_str_eq(rest, PX_STR("/")));

    assert_int_equal(px_path_toolbox(S("/toolbox/4f1c0e2a-9c1d/process/execute?x=1"), &id, &rest),
                     0);
    assert_true(px_str_eq(id, PX_STR("4f1c0e2a-9c1d")));
    assert_true(px_str_eq(rest, PX_STR("/process/execute?x=1")));

    /* an id directly followed by a query */
    assert_int_equal(px_path_toolbox(S("/toolbox/sb1?x=1"), &id, &rest), 0);
    assert_true(px_str_eq(id, PX_STR("sb1")));

    /* slices point into the input */
    const char *p = "/toolbox/abc/def";
    assert_int_equal(px_path_toolbox(S(p), &id, &rest), 0);
    assert_ptr_equal(id.p, p + 9);
    assert_ptr_equal(rest.p, p + 12);

    static const char *const no[] = {
        "/toolbox/", "/toolbox", "/toolbox//x", "/toolboxx/sb1",  "/Toolbox/sb1",
        "/",         "",         "toolbox/sb1", "/x/toolbox/sb1", "/toolbox?x=1",
    };
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (px_path_toolbox(S(no[i]), &id, &rest) != -1)
            fail_msg("\"%s\" parsed as a toolbox path", no[i]);
}

#define K "DAYTONA_SANDBOX_AUTH_KEY"

struct strip_case {
    const char *in, *out;
    int found;
    const char *value; /* first removed value; NULL for none/empty */
};

static void run_strip_table(const struct strip_case *t, size_t n)
{
    int failed = 0;

    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(t[i].in);
        char *out = malloc(len + 1);
        int found = -1;
        struct px_str value = PX_STR("sentinel");
        assert_non_null(out);
        size_t got = px_query_strip(S(t[i].in), PX_STR(K), out, &found, &value);
        if (got > len || got != strlen(t[i].out) || memcmp(out, t[i].out, got) != 0) {
            print_error("query \"%s\": got \"%.*s\", expected \"%s\"\n", t[i].in,
                        (int)(got <= len ? got : 0), out, t[i].out);
            failed++;
        } else if (found != t[i].found) {
            print_error("query \"%s\": found %d, expected %d\n", t[i].in, found, t[i].found);
            failed++;
        } else if (t[i].found) {
            struct px_str want = t[i].value ? S(t[i].value) : PX_STR_NULL;
            if (!px_str_eq(value, want)) {
                print_error("query \"%s\": value \"%.*s\", expected \"%s\"\n", t[i].in,
                            (int)value.len, value.p ? value.p : "", t[i].value ? t[i].value : "");
                failed++;
            }
        }
        free(out);
    }
    if (failed)
        fail_msg("%d of %zu query cases failed", failed, n);
}

static void test_query_strip(void **state)
{
    (void)state;
    static const struct strip_case t[] = {
        {K "=tok", "", 1, "tok"},
        {"a=1&" K "=tok&b=2", "a=1&b=2", 1, "tok"},
        {K "=tok&a=1", "a=1", 1, "tok"},
        {"a=1&" K "=tok", "a=1", 1, "tok"},
        /* every occurrence goes; the first value is reported */
        {K "=one&a=1&" K "=two&b=2&" K "=three", "a=1&b=2", 1, "one"},
        {K "=one&" K "=two", "", 1, "one"},
        /* percent-encoding, '+', ordering and odd params stay byte for byte */
        {"z=%2F%2f&" K "=t%2Bk&a=b+c&y=%E2%9C%93", "z=%2F%2f&a=b+c&y=%E2%9C%93", 1, "t%2Bk"},
        {"b=2&a=1&" K "=x&c", "b=2&a=1&c", 1, "x"},
        {"a=1&&" K "=x&&b=2", "a=1&&&b=2", 1, "x"},
        {"a==1&" K "=x=y&b=", "a==1&b=", 1, "x=y"},
        {K "&a=1", "a=1", 1, NULL},
        {K "=&a=1", "a=1", 1, NULL},
        /* names that merely start with the key are other parameters */
        {K "X=1", K "X=1", 0, NULL},
        {K "X=1&" K "=t", K "X=1", 1, "t"},
        {"X" K "=1", "X" K "=1", 0, NULL},
        {"a=" K "&b=" K "=1", "a=" K "&b=" K "=1", 0, NULL},
        {"daytona_sandbox_auth_key=1", "daytona_sandbox_auth_key=1", 0, NULL},
        {K "%3D1", K "%3D1", 0, NULL},
        /* nothing to remove: unchanged */
        {"a=1&b=2", "a=1&b=2", 0, NULL},
        {"a", "a", 0, NULL},
        {"", "", 0, NULL},
    };
    run_strip_table(t, sizeof(t) / sizeof(t[0]));
}

/* "leaves the rest untouched": empty parameters at the edges are bytes of the
 * rest too, so removing the key must not also eat a leading or trailing '&'. */
static void test_query_strip_edges(void **state)
{
    (void)state;
    static const struct strip_case t[] = {
        {K "=x&a=1&", "a=1&", 1, "x"},
        {"&a=1&" K "=x", "&a=1", 1, "x"},
    };
    run_strip_table(t, sizeof(t) / sizeof(t[0]));
}

/* fuzz_path (fuzz/corpus/path/regress-no-query): the query of a target without
 * '?' is PX_STR_NULL; stripping it did NULL + 0 (undefined, UBSan aborts). */
static void test_query_strip_absent(void **state)
{
    (void)state;
    char out[1] = {'x'};
    int found = 1;
    struct px_str v = PX_STR("sentinel");
    struct px_str q = px_target_query(PX_STR("/p"));

    assert_null(q.p);
    assert_int_equal(px_query_strip(q, PX_STR(K), out, &found, &v), 0);
    assert_false(found);
    assert_int_equal(out[0], 'x');
    assert_int_equal(px_query_strip(PX_STR(""), PX_STR(K), out, &found, &v), 0);
    assert_false(found);
}

static void test_query_strip_value_slice(void **state)
{
    (void)state;
    const char *q = "a=1&" K "=secret&b=2";
    char out[64];
    int found = 0;
    struct px_str v;

    size_t n = px_query_strip(S(q), PX_STR(K), out, &found, &v);
    assert_int_equal(n, 7);
    assert_true(found);
    assert_ptr_equal(v.p, q + 4 + sizeof(K)); /* a slice of the query */
    assert_int_equal(v.len, 6);

    /* value may be NULL */
    found = 0;
    n = px_query_strip(S(q), PX_STR(K), out, &found, NULL);
    assert_int_equal(n, 7);
    assert_memory_equal(out, "a=1&b=2", 7);
    assert_true(found);
}

/* The output never exceeds query.len (the documented capacity): guard bytes
 * right after it stay untouched. */
static void test_query_strip_capacity(void **state)
{
    (void)state;
    static const char *const qs[] = {
        "a=1&" K "=x&b=2", "&&&", "&", K, "a&b&c&" K, "&" K "&",
    };
    for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
        size_t len = strlen(qs[i]);
        char buf[128];
        int found;
        memset(buf, 0x5a, sizeof(buf));
        size_t n = px_query_strip(S(qs[i]), PX_STR(K), buf, &found, NULL);
        assert_true(n <= len);
        for (size_t k = len; k < sizeof(buf); k++)
            if ((unsigned char)buf[k] != 0x5a)
                fail_msg("query \"%s\": wrote past its capacity at %zu", qs[i], k);
    }
}

/* px_query_get: the first exact name=value, a slice of the query; a name that
 * is only a prefix of another, or has no '=', does not match; the target's
 * query starts after the first '?'. */
static void test_query_get(void **state)
{
    (void)state;
    struct px_str v;
    const char *q = "redirectx=1&redirect&redirect=%2Fa&redirect=2";

    assert_true(px_query_get(S(q), PX_STR("redirect"), &v));
    assert_ptr_equal(v.p, strstr(q, "%2Fa"));
    assert_int_equal(v.len, 4);
    assert_true(px_query_get(S("a=&b=1"), PX_STR("a"), &v));
    assert_int_equal(v.len, 0);
    assert_false(px_query_get(S("ab=1&b"), PX_STR("a"), &v));
    assert_false(px_query_get(S(""), PX_STR("a"), &v));
    /* the slice is bounded by the query's length, not by a NUL */
    assert_false(px_query_get(px_str_make("a=1&key=x", 4), PX_STR("key"), &v));

    struct px_str t = px_target_query(S("/p?x=1?y"));
    assert_int_equal(t.len, 5);
    assert_memory_equal(t.p, "x=1?y", 5);
    assert_int_equal(px_target_query(S("/p")).len, 0);
    assert_int_equal(px_target_query(S("/p?")).len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_get),
        cmocka_unit_test(test_dot_segments_rejected),
        cmocka_unit_test(test_dot_segments_allowed),
        cmocka_unit_test(test_triple_dot_segment),
        cmocka_unit_test(test_toolbox),
        cmocka_unit_test(test_query_strip),
        cmocka_unit_test(test_query_strip_edges),
        cmocka_unit_test(test_query_strip_value_slice),
        cmocka_unit_test(test_query_strip_absent),
        cmocka_unit_test(test_query_strip_capacity),
    };
    return cmocka_run_group_tests_name("routing/path", tests, NULL, NULL);
}

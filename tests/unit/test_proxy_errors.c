/* test_proxy_errors.c — the escapers and error bodies of proxy/errors.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/errors.h"

static int equals(struct evbuffer *b, const char *want)
{
    size_t n = evbuffer_get_length(b);
    return n == strlen(want) && (n == 0 || memcmp(evbuffer_pullup(b, -1), want, n) == 0);
}

static void test_escapes(void **state)
{
    (void)state;
    struct evbuffer *b = evbuffer_new();

    px_json_escape(b, PX_STR("a\"b<\x01>c\\"));
    assert_true(equals(b, "a\\u0022b\\u003c\\u0001\\u003ec\\u005c"));
    evbuffer_drain(b, evbuffer_get_length(b));
    px_html_escape(b, PX_STR("<a href='x'>&\"</a>"));
    assert_true(equals(b, "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"));
    evbuffer_free(b);
}

/* fuzz_h2 (fuzz/corpus/h2/regress-null-path): a stream whose head conn.c
 * refused answers with an error body whose method and path are PX_STR_NULL;
 * the escapers did NULL + 0, which clang's UBSan aborts on. */
static void test_escape_null_slices(void **state)
{
    (void)state;
    struct evbuffer *b = evbuffer_new();
    struct px_error e = {400, NULL, "malformed request head"};

    px_json_escape(b, PX_STR_NULL);
    px_html_escape(b, PX_STR_NULL);
    assert_int_equal(evbuffer_get_length(b), 0);
    assert_string_equal(px_error_body(NULL, b, &e, PX_STR_NULL, PX_STR_NULL, "r1", 0),
                        "application/json");
    assert_true(evbuffer_search(b, "\"path\":\"\"", 9, NULL).pos >= 0);
    evbuffer_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_escape_null_slices),
    };
    return cmocka_run_group_tests_name("proxy/errors", tests, NULL, NULL);
}

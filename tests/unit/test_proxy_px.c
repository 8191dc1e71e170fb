/* test_proxy_px.c — the inline helpers of proxy/px.h that replaced libc calls
 * on the per-request path (issue 13): they must answer exactly as the libc
 * calls did. */
#include <locale.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "proxy/px.h"

/* Every pair of bytes, and longer strings that differ in one place, against
 * strncasecmp in the C locale (what px_str_ieq called before). */
static void test_str_ieq_matches_strncasecmp(void **state)
{
    (void)state;
    setlocale(LC_ALL, "C");
    for (int x = 0; x < 256; x++)
        for (int y = 0; y < 256; y++) {
            char a[3] = {'k', (char)x, 'z'}, b[3] = {'K', (char)y, 'Z'};
            int want = strncasecmp(a, b, 3) == 0;
            if (px_str_ieq(px_str_make(a, 3), px_str_make(b, 3)) != want)
                fail_msg("bytes %02x %02x: px_str_ieq says %d", x, y, !want);
        }
    assert_true(px_str_ieq(PX_STR("Content-Length"), PX_STR("content-length")));
    assert_false(px_str_ieq(PX_STR("content-length"), PX_STR("content-lengt")));
    assert_false(px_str_ieq(PX_STR("["), PX_STR("{"))); /* 0x5b | 0x20 == 0x7b, not letters */
    assert_false(px_str_ieq(PX_STR("@"), PX_STR("`")));
    assert_true(px_str_ieq(PX_STR_NULL, PX_STR("")));
}

/* px_cat/px_cat_num against snprintf, cut included. */
static void test_cat_matches_snprintf(void **state)
{
    (void)state;
    static const unsigned long long nums[] = {
        0, 1, 9, 10, 255, 4096, 65535, 4294967295ull, 18446744073709551615ull};
    for (size_t cap = 1; cap < 28; cap++)
        for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
            char got[32], want[32];
            for (int hex = 0; hex < 2; hex++) {
                size_t n = px_cat(got, cap, 0, "ab-", 3);
                n = px_cat_num(got, cap, n, nums[i], hex);
                snprintf(want, cap, hex ? "ab-%llx" : "ab-%llu", nums[i]);
                assert_string_equal(got, want);
                assert_int_equal(n, strlen(want));
            }
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_str_ieq_matches_strncasecmp),
        cmocka_unit_test(test_cat_matches_snprintf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

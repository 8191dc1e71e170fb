/* Unit tests for the header filtering of proxy/forward.c (SPEC 9). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "proxy/conn_priv.h"
#include "proxy/hbuf.h"

static struct px_str S(const char *s) {
    return px_str_make(s, strlen(s));
}

static void
test_hop_by_hop(void **state)
{
    static const char *const hop[] = {"Connection", "keep-alive",    "Proxy-Connection",
                                      "TE",         "Trailer",       "Transfer-Encoding",
                                      "Upgrade",    "content-length"};
    static const char *const end2end[] = {"Accept",       "Cookie",
                                          "X-Custom",     "Authorization",
                                          "Content-Type", "Upgrade-Insecure-Requests"};
    (void)state;
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        assert_true(px_fwd_hop_by_hop(S(hop[i]), PX_STR_NULL));
    for (size_t i = 0; i < sizeof(end2end) / sizeof(end2end[0]); i++)
        assert_false(px_fwd_hop_by_hop(S(end2end[i]), PX_STR_NULL));
    /* fields named by Connection are hop-by-hop too, case-insensitively */
    assert_true(px_fwd_hop_by_hop(S("X-Secret-Hop"), S("keep-alive, x-secret-hop")));
    assert_true(px_fwd_hop_by_hop(S("x-a"), S(" X-A ,b")));
    assert_false(px_fwd_hop_by_hop(S("x-ab"), S("x-a, b")));
}

static void test_consumed(void **state)
{
    static const char *const mine[] = {"Host",
                                       "X-Daytona-Authorization",
                                       "x-daytona-preview-token",
                                       "X-Daytona-Disable-CORS",
                                       "X-Forwarded-For",
                                       "X-Forwarded-Proto",
                                       "X-Forwarded-Host",
                                       "X-Daytona-Skip-Last-Activity-Update",
                                       "X-Daytona-Skip-Preview-Warning"};
    (void)state;
    for (size_t i = 0; i < sizeof(mine) / sizeof(mine[0]); i++)
        assert_true(px_fwd_consumed(S(mine[i]), 0));
    assert_false(px_fwd_consumed(S("X-Daytona-Other"), 0));
    assert_false(px_fwd_consumed(S("X-Daytona-Skip"), 0)); /* only the X-Daytona-Skip-* family */
    /* an app's own Authorization passes unless the proxy used it */
    assert_false(px_fwd_consumed(S("Authorization"), 0));
    assert_true(px_fwd_consumed(S("authorization"), 1));
}

static void check_cookie(const char *in, const char *want)
{
    struct evbuffer *b = evbuffer_new();
    size_t n;
    char *got;

    struct px_hbuf hb;

    px_hb_init(&hb, b);
    px_fwd_add_cookie(&hb, S(in));
    px_hb_flush(&hb);
    n = evbuffer_get_length(b);
    got = calloc(1, n + 1);
    evbuffer_remove(b, got, n);
    assert_string_equal(got, want);
    free(got);
    evbuffer_free(b);
}

static void test_cookie_filter(void **state)
{
    (void)state;
    check_cookie("a=1; b=2", "Cookie: a=1; b=2\r\n");
    check_cookie("daytona-sandbox-auth-sb1=v1.x.y.z; a=1", "Cookie: a=1\r\n");
    check_cookie("a=1;daytona-preview-page-accepted=true;b=2", "Cookie: a=1; b=2\r\n");
    /* only the proxy's own cookies go: none left means no Cookie line at all */
    check_cookie("daytona-sandbox-auth-x=1; daytona-preview-page-accepted=true", "");
    /* a look-alike name of the app's is kept */
    check_cookie("daytona-sandbox-authx=1", "Cookie: daytona-sandbox-authx=1\r\n");
}

static void test_proxy_cookie_names(void **state)
{
    (void)state;
#define PC(lit) px_fwd_proxy_cookie(PX_STR(lit))
    assert_true(PC("daytona-preview-page-accepted=true; Domain=proxy.test"));
    assert_true(PC(" daytona-preview-page-accepted =true"));
    assert_true(PC("DAYTONA-SANDBOX-AUTH-abc=x"));
    assert_true(PC("daytona-sandbox-auth-=x"));
    assert_true(PC("pkce_verifier=v; Path=/"));
    assert_true(PC("pkce_verifier"));
    assert_false(PC("app=1"));
    assert_false(PC("daytona-preview-page-accepted-not=1"));
    assert_false(PC("daytona-sandbox-aut=1"));
    assert_false(PC(""));
    assert_false(PC("=x"));
#undef PC
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hop_by_hop),
        cmocka_unit_test(test_consumed),
        cmocka_unit_test(test_cookie_filter),
        cmocka_unit_test(test_proxy_cookie_names),
    };
    return cmocka_run_group_tests_name("proxy/forward", tests, NULL, NULL);
}

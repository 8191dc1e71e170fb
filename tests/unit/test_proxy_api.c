/* test_proxy_api.c — the Daytona API client's pure parts: api_url, the §3
 * retry classification (DAYTONA-API.md), and reading DaytonaConfiguration. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/api.h"

static void test_parse_url(void **state)
{
    (void)state;
    char host[64], prefix[64];
    int tls, port;

    assert_int_equal(px_api_parse_url("http://api:3000/api", &tls, host, sizeof(host), &port,
                                      prefix, sizeof(prefix)),
                     0);
    assert_false(tls);
    assert_string_equal(host, "api");
    assert_int_equal(port, 3000);
    assert_string_equal(prefix, "/api");
    assert_int_equal(px_api_parse_url("https://app.daytona.io/api/", &tls, host, sizeof(host),
                                      &port, prefix, sizeof(prefix)),
                     0);
    assert_true(tls);
    assert_int_equal(port, 443);
    assert_string_equal(prefix, "/api"); /* no double slash when paths are appended */
    assert_int_equal(px_api_parse_url("http://[::1]:8080", &tls, host, sizeof(host), &port, prefix,
                                      sizeof(prefix)),
                     0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 8080);
    assert_string_equal(prefix, "");
    const char *bad[] = {NULL,          "ftp://x/api",      "http://",       "http://:80/a",
                         "http://h:/a", "http://h:99999/a", "http://h:0",    "http://h:8x/",
                         "http://[::1", "http://h/api?x=1", "http://h#frag", "api:3000/api"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(
            px_api_parse_url(bad[i], &tls, host, sizeof(host), &port, prefix, sizeof(prefix)), -1);
    char small[4];
    assert_int_equal(px_api_parse_url("http://longhost/api", &tls, small, sizeof(small), &port,
                                      prefix, sizeof(prefix)),
                     -1);
}

#define RETRY(st, body, flags) px_api_retryable((st), (body), strlen(body), (flags), &js)

/* DAYTONA-API.md §3, rule by rule. */
static void test_retry_rules(void **state)
{
    (void)state;
    int js;

    assert_false(RETRY(200, "true", 0));
    assert_false(RETRY(201, "", 0));
    /* rule 2: not a JSON object, or mistyped -> retryable */
    assert_true(RETRY(502, "<html>Bad Gateway</html>", 0));
    assert_true(RETRY(500, "", 0));
    assert_true(RETRY(404, "[1,2]", 0));
    assert_true(RETRY(503, "{\"statusCode\":\"503\"}", 0));
    /* rule 3: judged by the body's statusCode, not the status line */
    assert_true(RETRY(500, "{\"statusCode\":503,\"message\":\"x\"}", 0));
    assert_int_equal(js, 503);
    assert_true(RETRY(400, "{\"statusCode\":502}", 0));
    assert_true(RETRY(400, "{\"statusCode\":504}", 0));
    assert_false(RETRY(503, "{\"statusCode\":500}", 0));
    assert_int_equal(js, 500);
    assert_false(RETRY(408, "{\"statusCode\":408}", 0));
    assert_false(RETRY(429, "{\"statusCode\":429}", 0));
    assert_false(RETRY(502, "{}", 0)); /* status 0: final */
    assert_int_equal(js, 0);
    /* rule 4: for C2-C4, C12, C13 a 4xx other than 408/429 is final, before the body */
    assert_false(RETRY(404, "<html>", PX_API_FINAL_4XX));
    assert_false(RETRY(401, "{\"statusCode\":503}", PX_API_FINAL_4XX));
    assert_true(RETRY(408, "<html>", PX_API_FINAL_4XX));
    assert_true(RETRY(429, "nope", PX_API_FINAL_4XX));
    assert_true(RETRY(503, "<html>", PX_API_FINAL_4XX));
    /* hostile bodies */
    assert_true(RETRY(500, "{\"statusCode\":99999999999999999999}", 0)); /* undecodable */
    assert_true(RETRY(500, "{\"statusCode\":5", 0));
}

static void test_parse_config(void **state)
{
    (void)state;
    struct px_api_info info = {0};
    const char *why = NULL;
    const char *good = "{\"version\":\"0.190.0\",\"oidc\":{\"issuer\":\"http://idp/\","
                       "\"clientId\":\"proxy-test\",\"audience\":\"daytona\"},\"extra\":[1]}";

    assert_int_equal(px_api_parse_config(good, strlen(good), &info, &why), 0);
    assert_true(info.ready);
    assert_string_equal(info.oidc_issuer, "http://idp/");
    assert_string_equal(info.oidc_client_id, "proxy-test");
    assert_string_equal(info.oidc_audience, "daytona");
    const char *bad[] = {
        "",
        "true",
        "{\"version\":\"1\"}",
        "{\"version\":1,\"oidc\":{\"issuer\":\"a\",\"clientId\":\"b\",\"audience\":\"c\"}}",
        "{\"version\":\"1\",\"oidc\":{\"issuer\":\"a\",\"clientId\":\"b\"}}",
        "{\"version\":\"1\",\"oidc\":{\"issuer\":\"a\\u0000b\",\"clientId\":\"b\",\"audience\":"
        "\"c\"}}",
        "{\"version\":\"1\",\"oidc\":{\"issuer\":\"a\\r\\nX: "
        "y\",\"clientId\":\"b\",\"audience\":\"c\"}}",
        "{\"version\":\"1\",\"oidc\":[]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(px_api_parse_config(bad[i], strlen(bad[i]), &info, &why), -1);
        assert_non_null(why);
    }
    /* a failed read keeps what was read before */
    assert_string_equal(info.oidc_client_id, "proxy-test");
    px_api_info_clear(&info);
    assert_false(info.ready);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_url),
        cmocka_unit_test(test_retry_rules),
        cmocka_unit_test(test_parse_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

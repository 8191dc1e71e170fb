/* test_proxy_browser.c — px_cors_credentials_allowed (SPEC 7), table-driven:
 * which Origins get Access-Control-Allow-Credentials under each cors_credentials
 * mode, and that malformed values (including ones that overflow the parse
 * buffers, or are not NUL-terminated) never pass. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/browser.h"

struct cors_case {
    int mode;           /* PX_CORS_* */
    const char *host;   /* the request's Host */
    const char *label;  /* the request's label, "" for none */
    const char *sb;     /* resolved sandbox ID or NULL */
    const char *origin; /* the Origin value */
    int want;
};

#define SS PX_CORS_SAME_SANDBOX
#define SD PX_CORS_SAME_DOMAIN
#define ANY PX_CORS_ANY

static const struct cors_case cases[] = {
    /* same sandbox: another port, scheme, listener port, case */
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://3001-abc.proxy.test", 1},
    {SS, "3000-abc.proxy.test", "abc", NULL, "https://3000-abc.proxy.test:4443", 1},
    {SS, "3000-abc.proxy.test", "abc", NULL, "HTTP://3001-ABC.Proxy.Test", 1},
    {SS, "3000-abc.proxy.test:4000", "abc", NULL, "http://3001-abc.other.test:4000", 1},
    /* the resolved sandbox counts too (signed-token label, custom domain) */
    {SS, "3000-tok123.proxy.test", "tok123", "abc", "http://3001-abc.proxy.test", 1},
    {SS, "3000-tok123.proxy.test", "tok123", NULL, "http://3001-abc.proxy.test", 0},
    {SS, "app.customer.test", "abc", "abc", "http://5173-abc.proxy.test", 1},
    /* not the same sandbox */
    {SS, "3000-abc.proxy.test", "abc", NULL, "https://evil.example", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://3001-abd.proxy.test", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://3001-abcd.proxy.test", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://3001-abc.evil.example", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://3001-abc.proxy.test.evil.example", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://proxy.test", 0},
    {SS, "proxy.test", "", NULL, "http://3001-abc.proxy.test", 0}, /* no label known */
    /* malformed */
    {SS, "3000-abc.proxy.test", "abc", NULL, "null", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "https://", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "ftp://3001-abc.proxy.test", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "3001-abc.proxy.test", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://3001-abc.proxy.test/", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://evil@3001-abc.proxy.test", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://3001-abc.proxy.test@evil", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://evil#3001-abc.proxy.test", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://3001-abc.proxy.test:", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://3001-abc..proxy.test", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://3001-.proxy.test", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://[::1]:3000", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://[", 0},
    /* same domain: the request's base, not another configured one */
    {SD, "3000-abc.proxy.test", "abc", NULL, "http://3000-xyz.proxy.test", 1},
    {SD, "3000-abc.proxy.test", "abc", NULL, "https://proxy.test", 1},
    {SD, "3000-abc.proxy.test", "abc", NULL, "https://a.b.proxy.test:8443", 1},
    {SD, "3000-abc.proxy.test", "abc", NULL, "https://a.other.test", 0},
    {SD, "3000-abc.proxy.test", "abc", NULL, "https://evilproxy.test", 0},
    {SD, "3000-abc.proxy.test", "abc", NULL, "https://proxy.test.evil", 0},
    {SD, "3000-abc.proxy.test", "abc", NULL, "null", 0},
    {SD, "3000-abc.proxy.test", "abc", NULL, "http://3001-abc.other.test", 1}, /* same sandbox */
    {SD, "app.customer.test", "abc", "abc", "https://x.proxy.test", 0},
    /* listed */
    {SS, "3000-abc.proxy.test", "abc", NULL, "https://app.example.com", 1},
    {SS, "3000-abc.proxy.test", "abc", NULL, "https://APP.example.com/", 1},
    {SS, "3000-abc.proxy.test", "abc", NULL, "https://app.example.com:443", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "http://app.example.com", 0},
    {SS, "3000-abc.proxy.test", "abc", NULL, "https://app.example.co", 0},
    /* any: every value */
    {ANY, "3000-abc.proxy.test", "abc", NULL, "https://evil.example", 1},
    {ANY, "3000-abc.proxy.test", "abc", NULL, "null", 1},
};

static struct px_config config(int mode)
{
    static char d1[] = "proxy.test", d2[] = "other.test", o1[] = "https://app.example.com";
    struct px_config cfg;

    memset(&cfg, 0, sizeof(cfg));
    cfg.domains[0] = d1;
    cfg.domains[1] = d2;
    cfg.ndomains = 2;
    cfg.cors_origins[0] = o1;
    cfg.ncors_origins = 1;
    cfg.cors_credentials = mode;
    return cfg;
}

static int allowed(const struct px_config *cfg, const char *host, const char *label, const char *sb,
                   struct px_str origin)
{
    struct px_head req;
    struct px_cors_req r = {cfg, px_str_make(label, strlen(label)), sb};

    memset(&req, 0, sizeof(req));
    req.host = px_str_make(host, strlen(host));
    return px_cors_credentials_allowed(origin, &req, &r);
}

static void table(void **state)
{
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct cors_case *c = &cases[i];
        struct px_config cfg = config(c->mode);
        int got =
            allowed(&cfg, c->host, c->label, c->sb, px_str_make(c->origin, strlen(c->origin)));
        if (got != c->want) {
            print_error("mode %d host %s label %s sb %s origin \"%s\": %d, expected %d\n", c->mode,
                        c->host, c->label, c->sb ? c->sb : "-", c->origin, got, c->want);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

/* Without domains any {port}-{label}.{x} is a preview host: the origin must sit
 * under the request's own base. */
static void no_domains(void **state)
{
    (void)state;
    struct px_config cfg = config(SS);
    cfg.ndomains = 0;
    assert_int_equal(
        allowed(&cfg, "3000-abc.proxy.test", "abc", NULL, PX_STR("http://3001-abc.proxy.test")), 1);
    assert_int_equal(
        allowed(&cfg, "3000-abc.proxy.test", "abc", NULL, PX_STR("http://3001-abc.evil.example")),
        0);
    assert_int_equal(allowed(&cfg, "", "abc", NULL, PX_STR("http://3001-abc.proxy.test")), 0);
}

/* Values longer than the parse buffers, and slices that are not NUL-terminated:
 * ASan catches a read past the slice. */
static void long_and_unterminated(void **state)
{
    (void)state;
    struct px_config cfg = config(SD);
    size_t n = 5000;
    char *big = malloc(n);
    assert_non_null(big);
    memcpy(big, "http://", 7);
    memset(big + 7, 'a', n - 7 - 11);
    memcpy(big + n - 11, ".proxy.test", 11);
    assert_int_equal(allowed(&cfg, "3000-abc.proxy.test", "abc", NULL, px_str_make(big, n)), 0);
    free(big);

    const char src[] = "http://3001-abc.proxy.test";
    char *exact = malloc(sizeof(src) - 1); /* no NUL after the last byte */
    assert_non_null(exact);
    memcpy(exact, src, sizeof(src) - 1);
    assert_int_equal(
        allowed(&cfg, "3000-abc.proxy.test", "abc", NULL, px_str_make(exact, sizeof(src) - 1)), 1);
    assert_int_equal(allowed(&cfg, "3000-abc.proxy.test", "abc", NULL, px_str_make(exact, 9)), 0);
    free(exact);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(table),
        cmocka_unit_test(no_domains),
        cmocka_unit_test(long_and_unterminated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

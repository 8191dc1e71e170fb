/* test_proxy_headw.c — proxy/headw.h, the response head writer both front
 * ends use (issue 13): the same calls give an HTTP/1.1 head or HTTP/2
 * fields, names lowercased for HTTP/2, our own header lines split, and the
 * bounds drop a field rather than overflow. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "proxy/headw.h"

static void write_head(struct px_headw *w)
{
    px_hw_status(w, 1, 503, PX_STR("Service Unavailable"));
    px_hw_lit(w, "Server", "preview-proxy");
    px_hw_field_u64(w, PX_STR("Content-Length"), 42);
    px_hw_lines(w, "Retry-After: 5\r\nSet-Cookie: a=b; Path=/\r\n", 41);
}

static int nv_is(const nghttp2_nv *nv, const char *name, const char *value)
{
    return nv->namelen == strlen(name) && !memcmp(nv->name, name, nv->namelen) &&
           nv->valuelen == strlen(value) && !memcmp(nv->value, value, nv->valuelen);
}

static void test_http1_bytes(void **state)
{
    struct evbuffer *out = evbuffer_new();
    struct px_hbuf hb;
    struct px_headw w;
    const char want[] = "HTTP/1.1 503 Service Unavailable\r\nServer: preview-proxy\r\n"
                        "Content-Length: 42\r\nRetry-After: 5\r\nSet-Cookie: a=b; Path=/\r\n\r\n";
    (void)state;

    px_hb_init(&hb, out);
    px_hw_init(&w, &hb);
    write_head(&w);
    px_hw_end(&w);
    assert_int_equal(evbuffer_get_length(out), sizeof(want) - 1);
    assert_memory_equal(evbuffer_pullup(out, -1), want, sizeof(want) - 1);
    evbuffer_free(out);
}

static void test_http2_fields(void **state)
{
    struct px_headw w;
    (void)state;

    px_hw_init(&w, NULL);
    write_head(&w);
    px_hw_end(&w); /* nothing for HTTP/2 */
    assert_int_equal(w.n, 5);
    assert_true(nv_is(&w.nv[0], ":status", "503"));
    assert_true(nv_is(&w.nv[1], "server", "preview-proxy"));
    assert_true(nv_is(&w.nv[2], "content-length", "42"));
    assert_true(nv_is(&w.nv[3], "retry-after", "5"));
    assert_true(nv_is(&w.nv[4], "set-cookie", "a=b; Path=/"));
    assert_int_equal(w.dropped, 0);
}

static void test_http2_bounds_drop_fields(void **state)
{
    struct px_headw w;
    char big[PX_HW_STORE + 1];
    (void)state;

    px_hw_init(&w, NULL);
    memset(big, 'X', sizeof(big));
    px_hw_field(&w, px_str_make(big, sizeof(big)), PX_STR("v")); /* name over the store */
    assert_int_equal(w.n, 0);
    assert_int_equal(w.dropped, 1);
    for (int i = 0; i < PX_HW_MAX_FIELDS + 5; i++)
        px_hw_lit(&w, "X-A", "1");
    assert_int_equal(w.n, PX_HW_MAX_FIELDS);
    assert_int_equal(w.dropped, 6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http1_bytes),
        cmocka_unit_test(test_http2_fields),
        cmocka_unit_test(test_http2_bounds_drop_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

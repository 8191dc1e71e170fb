/* test_proxy_h1.c — HTTP/1.1 heads and the chunked codec (proxy/h1.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/h1.h"

static struct px_str S(const char *s) {
    return px_str_make(s, strlen(s));
}

/* ---- px_h1_find_head ---- */

static enum px_parse
find_in(struct evbuffer *in, size_t len, size_t max_line, size_t max_head, size_t *head_len,
        int *status)
{
    *head_len = 0;
    *status = 0;
    enum px_parse r = px_h1_find_head(in, max_line, max_head, head_len, status);
    assert_int_equal(evbuffer_get_length(in), len); /* never drains */
    evbuffer_free(in);
    return r;
}

/* Every case twice: the bytes in one chain (px_h1_find_head()'s flat search)
 * and spread over chains of 1 to 3 bytes (its evbuffer search); both readings
 * must agree. */
static enum px_parse find(const char *data, size_t len, size_t max_line, size_t max_head,
                          size_t *head_len, int *status)
{
    struct evbuffer *flat = evbuffer_new(), *chained = evbuffer_new();
    size_t hl2;
    int st2;

    assert_non_null(flat);
    assert_non_null(chained);
    evbuffer_add(flat, data, len);
    for (size_t i = 0, k = 0; i < len; k++) {
        size_t n = 1 + k % 3 < len - i ? 1 + k % 3 : len - i;
        evbuffer_add_reference(chained, data + i, n, NULL, NULL);
        i += n;
    }
    enum px_parse r = find_in(flat, len, max_line, max_head, head_len, status);
    enum px_parse r2 = find_in(chained, len, max_line, max_head, &hl2, &st2);
    assert_int_equal(r, r2);
    assert_int_equal(*status, st2);
    assert_int_equal(*head_len, hl2);
    return r;
}

static void test_find_head(void **state)
{
    (void)state;
    const char *req = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t hl;
    int st;

    assert_int_equal(find(req, strlen(req), 8192, 65536, &hl, &st), PX_PARSE_OK);
    assert_int_equal(hl, strlen(req));

    /* a body or a pipelined request after the head is not part of it */
    const char *two =
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbodyGET / HTTP/1.1\r\n";
    assert_int_equal(find(two, strlen(two), 8192, 65536, &hl, &st), PX_PARSE_OK);
    assert_int_equal(hl, strlen(two) - strlen("bodyGET / HTTP/1.1\r\n"));

    /* every proper prefix needs more bytes */
    for (size_t n = 0; n < strlen(req); n++)
        if (find(req, n, 8192, 65536, &hl, &st) != PX_PARSE_AGAIN)
            fail_msg("prefix of %zu bytes is not AGAIN (status %d)", n, st);
}

static void test_find_head_414(void **state)
{
    (void)state;
    char buf[400];
    size_t hl;
    int st;

    /* request line longer than max_line, still unterminated */
    memset(buf, 'a', sizeof(buf));
    memcpy(buf, "GET /", 5);
    assert_int_equal(find(buf, 200, 100, 4096, &hl, &st), PX_PARSE_BAD);
    assert_int_equal(st, 414);

    /* terminated but over the limit */
    snprintf(buf, sizeof(buf), "GET /%0150d HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    assert_int_equal(find(buf, strlen(buf), 100, 4096, &hl, &st), PX_PARSE_BAD);
    assert_int_equal(st, 414);

    /* well under the limit */
    snprintf(buf, sizeof(buf), "GET /%050d HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    assert_int_equal(find(buf, strlen(buf), 100, 4096, &hl, &st), PX_PARSE_OK);
    /* short line, not yet terminated */
    assert_int_equal(find(buf, 40, 100, 4096, &hl, &st), PX_PARSE_AGAIN);
}

static void test_find_head_431(void **state)
{
    (void)state;
    char buf[1024];
    size_t hl;
    int st;

    /* unterminated head over max_head */
    strcpy(buf, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: ");
    size_t n = strlen(buf);
    memset(buf + n, 'x', 600);
    assert_int_equal(find(buf, n + 600, 100, 512, &hl, &st), PX_PARSE_BAD);
    assert_int_equal(st, 431);

    /* complete head over max_head */
    memcpy(buf + n + 600, "\r\n\r\n", 4);
    assert_int_equal(find(buf, n + 604, 100, 512, &hl, &st), PX_PARSE_BAD);
    assert_int_equal(st, 431);

    /* exactly max_head is fine */
    assert_int_equal(find(buf, n + 604, 100, n + 604, &hl, &st), PX_PARSE_OK);
    assert_int_equal(hl, n + 604);
}

static void test_find_head_bare_lf(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "GET / HTTP/1.1\nHost: a\n\n", "GET / HTTP/1.1\r\nHost: a\n\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", /* a bare CR: no CRLFCRLF ever comes */
    };
    size_t hl;
    int st;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (find(bad[i], strlen(bad[i]), 8192, 65536, &hl, &st) != PX_PARSE_BAD || st != 400)
            fail_msg("bare-LF head %zu: not 400 (status %d)", i, st);
    }
}

/* A head whose last line ends in a bare LF followed by CRLF ("...\n\r\n") can
 * never complete; like the "\n\n" case it should be 400 now rather than wait
 * for client_header_timeout. */
static void test_find_head_lf_crlf(void **state)
{
    (void)state;
    const char *req = "GET / HTTP/1.1\r\nHost: a\n\r\n";
    size_t hl;
    int st;

    assert_int_equal(find(req, strlen(req), 8192, 65536, &hl, &st), PX_PARSE_BAD);
    assert_int_equal(st, 400);
}

/* ---- px_h1_parse_request ---- */

/* fuzz_h1_request (fuzz/corpus/h1_request/regress-crlf-only): a head that is
 * only the empty line returned -1 without a reason. */
static void test_parse_empty_head(void **state)
{
    (void)state;
    struct px_head h;
    int st = 0;
    const char *why = NULL;

    assert_int_equal(px_h1_parse_request(&h, "\r\n", 2, 100, &st, &why), -1);
    assert_int_equal(st, 400);
    assert_non_null(why);
    px_head_free(&h);
    why = NULL;
    assert_int_equal(px_h1_parse_response(&h, "\r\n", 2, 100, &why), -1);
    assert_non_null(why);
    px_head_free(&h);
}

/* fuzz_h1_response (fuzz/corpus/h1_response/regress-bad-version): the
 * non-strict http-parser took any letters for "HTTP" and two-digit codes in
 * a status line; px_h1_find_head() refused some of those heads, so the two
 * disagreed. RFC 9112 4: HTTP-version SP 3DIGIT SP [reason]. */
static void test_parse_response_status_line(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "HT@P/1.1 200\r\n\r\n",     "HTTX/1.1 200 OK\r\n\r\n",  "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1  200 OK\r\n\r\n", "HTTP/11 200 OK\r\n\r\n",
        "http/1.1 200 OK\r\n\r\n",  "HTTP/1.1 200OK\r\n\r\n",   "HTTP/1.2 000\r\n\r\n",
        "HTTP/1.1 600 X\r\n\r\n",   "HTTP/1.1 099 X\r\n\r\n",
    };
    static const char *const good[] = {
        "HTTP/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 200\r\n\r\n", /* no SP before an empty reason: common, allowed */
        "HTTP/1.1 200 \r\n\r\n",
        "HTTP/1.0 404 Not Found\r\n\r\n",
    };
    struct px_head h;
    const char *why;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why = NULL;
        if (px_h1_parse_response(&h, bad[i], strlen(bad[i]), 100, &why) != -1 || why == NULL)
            fail_msg("status line %zu accepted", i);
        px_head_free(&h);
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        why = NULL;
        if (px_h1_parse_response(&h, good[i], strlen(good[i]), 100, &why) != 0)
            fail_msg("status line %zu refused: %s", i, why);
        px_head_free(&h);
    }
}

static int parse(struct px_head *h, const char *req, int max_headers, int *status, const char **why)
{
    *status = 0;
    *why = NULL;
    int r = px_h1_parse_request(h, req, strlen(req), max_headers, status, why);
    if (r != 0) {
        assert_int_equal(r, -1);
        assert_non_null(*why);
        px_head_free(h);
    }
    return r;
}

static void test_parse_valid_get(void **state)
{
    (void)state;
    const char *req = "GET /a/b?x=1 HTTP/1.1\r\n"
                      "Host: 3000-sb1.proxy.test\r\n"
                      "User-Agent:   curl/8   \r\n"
                      "X-Empty:\r\n"
                      "Accept: */*\r\n\r\n";
    struct px_head h;
    int st;
    const char *why;

    assert_int_equal(parse(&h, req, 100, &st, &why), 0);
    assert_true(px_str_eq(h.method, PX_STR("GET")));
    assert_int_equal(h.m, HTTP_GET);
    assert_true(px_str_eq(h.target, PX_STR("/a/b?x=1")));
    assert_int_equal(h.http_major, 1);
    assert_int_equal(h.http_minor, 1);
    assert_int_equal(h.nhdrs, 4);
    assert_true(px_str_eq(h.host, PX_STR("3000-sb1.proxy.test")));
    assert_int_equal(h.content_length, -1);
    assert_false(h.chunked);
    assert_true(h.keepalive);
    assert_false(h.ws_upgrade);
    assert_false(h.expect_continue);
    const struct px_hdr *ua = px_head_get(&h, PX_STR("user-agent"));
    assert_non_null(ua);
    assert_true(px_str_eq(ua->value, PX_STR("curl/8"))); /* OWS trimmed */
    const struct px_hdr *e = px_head_get(&h, PX_STR("X-EMPTY"));
    assert_non_null(e);
    assert_int_equal(e->value.len, 0);
    assert_null(px_head_get(&h, PX_STR("cookie")));
    /* slices point into h.buf, which is a copy */
    assert_true(h.target.p >= h.buf && h.target.p < h.buf + h.len);
    assert_int_equal(h.len, strlen(req));
    px_head_free(&h);
}

static void test_parse_post_framing(void **state)
{
    (void)state;
    struct px_head h;
    int st;
    const char *why;

    assert_int_equal(parse(&h,
                           "POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n"
                           "Expect: 100-continue\r\n\r\n",
                           100, &st, &why),
                     0);
    assert_int_equal(h.content_length, 12);
    assert_true(h.expect_continue);
    px_head_free(&h);

    assert_int_equal(parse(&h, "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                           100, &st, &why),
                     0);
    assert_true(h.chunked);
    assert_int_equal(h.content_length, -1);
    px_head_free(&h);

    assert_int_equal(
        parse(&h, "POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 100, &st, &why), 0);
    assert_int_equal(h.content_length, 0);
    px_head_free(&h);

    /* HTTP/1.0 without Host, keep-alive only when asked */
    assert_int_equal(parse(&h, "GET / HTTP/1.0\r\n\r\n", 100, &st, &why), 0);
    assert_false(h.keepalive);
    px_head_free(&h);
    assert_int_equal(parse(&h, "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 100, &st, &why),
                     0);
    assert_true(h.keepalive);
    px_head_free(&h);
    assert_int_equal(
        parse(&h, "GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n", 100, &st, &why),
        0);
    assert_false(h.keepalive);
    px_head_free(&h);

    /* absolute-form target */
    assert_int_equal(
        parse(&h, "GET http://3000-a.x/p?q HTTP/1.1\r\nHost: other\r\n\r\n", 100, &st, &why), 0);
    assert_true(px_str_eq(h.target, PX_STR("http://3000-a.x/p?q")));
    px_head_free(&h);
}

struct bad_req {
    const char *what, *req;
    int status;
};

static void run_bad_table(const struct bad_req *t, size_t n, int max_headers)
{
    int failed = 0;

    for (size_t i = 0; i < n; i++) {
        struct px_head h;
        int st;
        const char *why;
        int r = px_h1_parse_request(&h, t[i].req, strlen(t[i].req), max_headers, &st, &why);
        if (r == 0) {
            print_error("%s: accepted, expected %d\n", t[i].what, t[i].status);
            failed++;
        } else if (st != t[i].status) {
            print_error("%s: status %d (%s), expected %d\n", t[i].what, st, why ? why : "-",
                        t[i].status);
            failed++;
        } else if (why == NULL) {
            print_error("%s: no reason\n", t[i].what);
            failed++;
        }
        px_head_free(&h);
    }
    if (failed)
        fail_msg("%d of %zu bad requests were mishandled", failed, n);
}

#define H "GET / HTTP/1.1\r\nHost: a\r\n"
#define P "POST / HTTP/1.1\r\nHost: a\r\n"

static void test_parse_smuggling(void **state)
{
    (void)state;
    static const struct bad_req t[] = {
        {"CL+TE", P "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"TE+CL", P "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400},
        {"differing CL", P "Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400},
        {"CL list", P "Content-Length: 5, 6\r\n\r\n", 400},
        {"CL +5", P "Content-Length: +5\r\n\r\n", 400},
        {"CL -1", P "Content-Length: -1\r\n\r\n", 400},
        {"CL abc", P "Content-Length: abc\r\n\r\n", 400},
        {"CL 0x5", P "Content-Length: 0x5\r\n\r\n", 400},
        {"CL 5 5", P "Content-Length: 5 5\r\n\r\n", 400},
        {"CL empty", P "Content-Length:\r\n\r\n", 400},
        {"CL huge", P "Content-Length: 99999999999999999999999\r\n\r\n", 400},
        {"TE gzip", P "Transfer-Encoding: gzip\r\n\r\n", 400},
        {"TE gzip, chunked", P "Transfer-Encoding: gzip, chunked\r\n\r\n", 400},
        {"TE chunked, identity", P "Transfer-Encoding: chunked, identity\r\n\r\n", 400},
        {"TE identity", P "Transfer-Encoding: identity\r\n\r\n", 400},
        {"TE twice", P "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"TE xchunked", P "Transfer-Encoding: xchunked\r\n\r\n", 400},
        {"TE in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"obs-fold", H "X-A: 1\r\n  continued\r\n\r\n", 400},
        {"obs-fold tab", H "X-A: 1\r\n\tcontinued\r\n\r\n", 400},
        {"fold after request line", "GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400},
        {"bare CR in value", H "X-A: 1\r2\r\n\r\n", 400},
        {"bare LF in value", H "X-A: 1\n2\r\n\r\n", 400},
        {"CTL in value",
         H "X-A: 1\x01"
           "2\r\n\r\n",
         400},
        {"DEL in value", H "X-A: 1\x7f\r\n\r\n", 400},
        {"space before colon", H "X-A : 1\r\n\r\n", 400},
        {"space before colon CL", P "Content-Length : 5\r\n\r\n", 400},
        {"tab before colon", H "X-A\t: 1\r\n\r\n", 400},
        {"no colon", H "X-A 1\r\n\r\n", 400},
        {"empty name", H ": 1\r\n\r\n", 400},
        {"bad name char", H "X(A): 1\r\n\r\n", 400},
        {"missing Host 1.1", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400},
        {"two Host", H "Host: b\r\n\r\n", 400},
        {"two Host same", H "Host: a\r\n\r\n", 400},
        {"CTL in request line", "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"garbage request line", "HELLO\r\nHost: a\r\n\r\n", 400},
        {"lowercase version", "GET / http/1.1\r\nHost: a\r\n\r\n", 400},
        {"data after head", H "\r\nxyz", 400},
        {"unterminated", H, 400},
    };
    run_bad_table(t, sizeof(t) / sizeof(t[0]), 100);
}

static void test_parse_nul_in_value(void **state)
{
    (void)state;
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\0"
                              "2\r\n\r\n";
    struct px_head h;
    int st;
    const char *why;

    assert_int_equal(px_h1_parse_request(&h, req, sizeof(req) - 1, 100, &st, &why), -1);
    assert_int_equal(st, 400);
    px_head_free(&h);
}

/* The control-byte scan looks at eight bytes at a time (issue 13): every
 * forbidden byte at every offset of a long value, and of the start line, is
 * still found, and HTAB, obs-text and plain text at those offsets are not. */
static void test_parse_control_byte_every_offset(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        int bad_value = (c < 0x20 && c != '\t') || c == 0x7f;
        if (c == '\r' || c == '\n')
            continue; /* line ends: refused by the line scan, not this one */
        for (size_t off = 0; off < 24; off++) {
            /* built with memcpy: a NUL would end a printf %s */
            static const char pre[] = "GET / HTTP/1.1\r\nHost: a\r\nX-V: ";
            char req[128];
            size_t n = sizeof(pre) - 1;
            memcpy(req, pre, n);
            memset(req + n, 'v', 31);
            req[n + off] = (char)c;
            memcpy(req + n + 31, "\r\n\r\n", 4);
            n += 35;
            struct px_head h;
            int st = 0;
            const char *why = NULL;
            int r = px_h1_parse_request(&h, req, n, 100, &st, &why);
            if (bad_value) {
                assert_int_equal(r, -1);
                assert_string_equal(why, "control character in a header value");
            } else if (!(off == 0 && (c == ' ' || c == '\t'))) { /* leading blanks are trimmed */
                assert_int_equal(r, 0);
                assert_int_equal(px_head_get(&h, PX_STR("x-v"))->value.len, 31);
            }
            px_head_free(&h);
            /* the start line: no control at all, HTAB included */
            memcpy(req, "GET /", 5);
            memset(req + 5, 'p', 24);
            req[5 + off] = (char)c;
            static const char post[] = " HTTP/1.1\r\nHost: a\r\n\r\n";
            memcpy(req + 29, post, sizeof(post) - 1);
            r = px_h1_parse_request(&h, req, 29 + sizeof(post) - 1, 100, &st, &why);
            if (bad_value || c == '\t') {
                assert_int_equal(r, -1);
                assert_int_equal(st, 400);
            }
            px_head_free(&h);
        }
    }
}

static void test_parse_status_codes(void **state)
{
    (void)state;
    static const struct bad_req t[] = {
        {"CONNECT", "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", 405},
        {"HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
        {"HTTP/3.0", "GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505},
    };
    run_bad_table(t, sizeof(t) / sizeof(t[0]), 100);
}

static void test_parse_max_headers(void **state)
{
    (void)state;
    char req[4096];
    struct px_head h;
    int st;
    const char *why;
    size_t n = (size_t)snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: a\r\n");

    for (int i = 1; i < 5; i++) /* 5 fields with Host */
        n += (size_t)snprintf(req + n, sizeof(req) - n, "X-%d: %d\r\n", i, i);
    snprintf(req + n, sizeof(req) - n, "\r\n");
    assert_int_equal(parse(&h, req, 5, &st, &why), 0);
    assert_int_equal(h.nhdrs, 5);
    px_head_free(&h);

    assert_int_equal(parse(&h, req, 4, &st, &why), -1);
    assert_int_equal(st, 431);
    assert_int_equal(parse(&h, req, 1, &st, &why), -1);
    assert_int_equal(st, 431);
}

static void test_parse_ws_upgrade(void **state)
{
    (void)state;
    struct px_head h;
    int st;
    const char *why;

    /* Firefox */
    assert_int_equal(parse(&h,
                           "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
                           "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                           100, &st, &why),
                     0);
    assert_true(h.conn_upgrade);
    assert_true(h.ws_upgrade);
    px_head_free(&h);

    /* Chrome */
    assert_int_equal(parse(&h,
                           "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\n"
                           "Connection: Upgrade\r\n\r\n",
                           100, &st, &why),
                     0);
    assert_true(h.ws_upgrade);
    px_head_free(&h);

    /* Upgrade without Connection: upgrade */
    assert_int_equal(parse(&h,
                           "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                           "Connection: keep-alive\r\n\r\n",
                           100, &st, &why),
                     0);
    assert_false(h.ws_upgrade);
    px_head_free(&h);

    /* Connection: upgrade but a different protocol */
    assert_int_equal(parse(&h,
                           "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n"
                           "Connection: Upgrade, HTTP2-Settings\r\n\r\n",
                           100, &st, &why),
                     0);
    assert_true(h.conn_upgrade);
    assert_false(h.ws_upgrade);
    px_head_free(&h);

    /* "upgrades" is not "upgrade" */
    assert_int_equal(parse(&h,
                           "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                           "Connection: upgrades\r\n\r\n",
                           100, &st, &why),
                     0);
    assert_false(h.ws_upgrade);
    px_head_free(&h);
}

static void test_token_list_has(void **state)
{
    (void)state;
    struct {
        const char *list, *tok;
        int expect;
    } t[] = {
        {"keep-alive, Upgrade", "upgrade", 1},
        {"Upgrade", "upgrade", 1},
        {"UPGRADE", "upgrade", 1},
        {"  upgrade  ", "upgrade", 1},
        {"a,upgrade,b", "upgrade", 1},
        {"a ,\tupgrade\t, b", "upgrade", 1},
        {"a,,upgrade", "upgrade", 1},
        {"keep-alive", "upgrade", 0},
        {"upgrades", "upgrade", 0},
        {"up grade", "upgrade", 0},
        {"xupgrade", "upgrade", 0},
        {"", "upgrade", 0},
        {",", "upgrade", 0},
        {"close", "close", 1},
        {"foo, close", "close", 1},
    };
    int failed = 0;
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        int got = px_token_list_has(S(t[i].list), S(t[i].tok));
        if (got != t[i].expect) {
            print_error("\"%s\" has \"%s\": %d, expected %d\n", t[i].list, t[i].tok, got,
                        t[i].expect);
            failed++;
        }
    }
    if (failed)
        fail_msg("%d token list cases failed", failed);
}

static void test_parse_response(void **state)
{
    (void)state;
    struct px_head h;
    const char *why = NULL;
    const char *r1 = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b \r\n\r\n";

    assert_int_equal(px_h1_parse_response(&h, r1, strlen(r1), 100, &why), 0);
    assert_int_equal(h.status, 200);
    assert_true(px_str_eq(h.reason, PX_STR("OK")));
    assert_int_equal(h.content_length, 5);
    assert_true(h.keepalive);
    assert_true(px_str_eq(px_head_get(&h, PX_STR("x-a"))->value, PX_STR("b")));
    assert_true(px_h1_response_has_body(&h, HTTP_GET));
    assert_false(px_h1_response_has_body(&h, HTTP_HEAD));
    px_head_free(&h);

    const char *r2 = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\n\r\n";
    assert_int_equal(px_h1_parse_response(&h, r2, strlen(r2), 100, &why), 0);
    assert_int_equal(h.status, 101);
    assert_true(h.conn_upgrade);
    assert_false(px_h1_response_has_body(&h, HTTP_GET));
    px_head_free(&h);

    static const int nobody[] = {204, 304, 100};
    for (size_t i = 0; i < 3; i++) {
        char r[64];
        snprintf(r, sizeof(r), "HTTP/1.1 %d X\r\n\r\n", nobody[i]);
        assert_int_equal(px_h1_parse_response(&h, r, strlen(r), 100, &why), 0);
        assert_false(px_h1_response_has_body(&h, HTTP_GET));
        px_head_free(&h);
    }

    static const char *const bad[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\nContent-Length: 5\n\n",
        "HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n",
        "HTTP/1.1 abc OK\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why = NULL;
        if (px_h1_parse_response(&h, bad[i], strlen(bad[i]), 100, &why) != -1 || why == NULL)
            fail_msg("bad response %zu accepted", i);
        px_head_free(&h);
    }
}

/* ---- chunked ---- */

static char *drain_all(struct evbuffer *b, size_t *len)
{
    *len = evbuffer_get_length(b);
    char *s = malloc(*len + 1);
    assert_non_null(s);
    evbuffer_remove(b, s, *len);
    s[*len] = '\0';
    return s;
}

/* Feeds data in pieces of step bytes (0 = all at once). Returns the final result
 * and the output; *left gets the bytes left unread in the input. */
static enum px_parse chunked_run(const char *data, size_t len, size_t step, int plain, char **out,
                                 size_t *outlen, size_t *left, uint64_t *total)
{
    struct px_chunked ch;
    struct evbuffer *in = evbuffer_new(), *o = evbuffer_new();
    enum px_parse r = PX_PARSE_AGAIN;
    size_t off = 0;

    assert_non_null(in);
    assert_non_null(o);
    memset(&ch, 0, sizeof(ch));
    ch.plain = plain ? 1 : 0;
    if (step == 0)
        step = len ? len : 1;
    while (off < len) {
        size_t n = len - off < step ? len - off : step;
        evbuffer_add(in, data + off, n);
        off += n;
        r = px_chunked_feed(&ch, in, o);
        if (r == PX_PARSE_BAD)
            break;
        if (r == PX_PARSE_OK && off < len) { /* rest is the next message */
            evbuffer_add(in, data + off, len - off);
            off = len;
        }
    }
    if (len == 0)
        r = px_chunked_feed(&ch, in, o);
    if (left)
        *left = evbuffer_get_length(in);
    if (total)
        *total = ch.total;
    *out = drain_all(o, outlen);
    px_chunked_reset(&ch);
    evbuffer_free(in);
    evbuffer_free(o);
    return r;
}

struct chunk_case {
    const char *what, *in, *out;
    enum px_parse result;
};

static const struct chunk_case good_chunks[] = {
    {"simple", "5\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n", PX_PARSE_OK},
    {"two chunks", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
     "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", PX_PARSE_OK},
    {"hex sizes", "A\r\n0123456789\r\nf\r\n0123456789abcde\r\n0\r\n\r\n",
     "a\r\n0123456789\r\nf\r\n0123456789abcde\r\n0\r\n\r\n", PX_PARSE_OK},
    {"leading zeros", "0005\r\nhello\r\n000\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n", PX_PARSE_OK},
    {"extensions dropped", "5;foo=bar\r\nhello\r\n0;x=\"y\"\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n",
     PX_PARSE_OK},
    {"BWS before ext", "5 ;foo\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n", PX_PARSE_OK},
    {"CRLF in data", "4\r\n\r\n\r\n\r\n0\r\n\r\n", "4\r\n\r\n\r\n\r\n0\r\n\r\n", PX_PARSE_OK},
    {"empty body", "0\r\n\r\n", "0\r\n\r\n", PX_PARSE_OK},
    {"trailers", "5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-B:  2\r\n\r\n",
     "5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-B:  2\r\n\r\n", PX_PARSE_OK},
    {"forbidden trailers",
     "0\r\nContent-Length: 5\r\nX-A: 1\r\ntransfer-encoding: chunked\r\n"
     "Host: evil\r\nX-Daytona-Authorization: Bearer x\r\n\r\n",
     "0\r\nX-A: 1\r\n\r\n", PX_PARSE_OK},
    {"2^52 - 1 (the largest size)", "fffffffffffff\r\nhel", "fffffffffffff\r\nhel", PX_PARSE_AGAIN},
    {"incomplete", "5\r\nhel", "5\r\nhel", PX_PARSE_AGAIN},
    {"incomplete last", "5\r\nhello\r\n0\r\n", "5\r\nhello\r\n", PX_PARSE_AGAIN},
};

static void test_chunked_good(void **state)
{
    (void)state;
    int failed = 0;

    for (size_t i = 0; i < sizeof(good_chunks) / sizeof(good_chunks[0]); i++) {
        const struct chunk_case *c = &good_chunks[i];
        char *out;
        size_t outlen, left;
        enum px_parse r = chunked_run(c->in, strlen(c->in), 0, 0, &out, &outlen, &left, NULL);
        if (r != c->result || outlen != strlen(c->out) || memcmp(out, c->out, outlen) != 0) {
            print_error("%s: result %d out \"%s\", expected %d \"%s\"\n", c->what, r, out,
                        c->result, c->out);
            failed++;
        } else if (r == PX_PARSE_OK && left != 0) {
            print_error("%s: %zu bytes left unread\n", c->what, left);
            failed++;
        }
        free(out);
    }
    if (failed)
        fail_msg("%d chunked cases failed", failed);
}

/* Byte-by-byte (and other splits) give the same output as one piece. */
static void test_chunked_fragmented(void **state)
{
    (void)state;
    static const size_t steps[] = {1, 2, 3, 5, 7};
    int failed = 0;

    for (size_t i = 0; i < sizeof(good_chunks) / sizeof(good_chunks[0]); i++) {
        const struct chunk_case *c = &good_chunks[i];
        for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
            char *out;
            size_t outlen;
            enum px_parse r =
                chunked_run(c->in, strlen(c->in), steps[s], 0, &out, &outlen, NULL, NULL);
            if (r != c->result || outlen != strlen(c->out) || memcmp(out, c->out, outlen) != 0) {
                print_error("%s in %zu-byte pieces: result %d out \"%s\", expected %d \"%s\"\n",
                            c->what, steps[s], r, out, c->result, c->out);
                failed++;
            }
            free(out);
        }
    }
    if (failed)
        fail_msg("%d fragmented chunked cases failed", failed);
}

static void test_chunked_bad(void **state)
{
    (void)state;
    static const struct {
        const char *what, *in;
    } t[] = {
        {"bare LF after size", "5\nhello\r\n0\r\n\r\n"},
        {"bare LF after last", "5\r\nhello\r\n0\n\r\n"},
        {"bare LF in trailer", "0\r\nX-A: 1\n\r\n"},
        {"17 hex digits", "00000000000000005\r\nhello\r\n0\r\n\r\n"},
        {"17 hex digits ffff", "fffffffffffffffff\r\n"},
        {"2^52", "10000000000000\r\nhello\r\n"},
        {"2^63 - 1", "7fffffffffffffff\r\nhello\r\n"},
        {"2^64 - 1", "ffffffffffffffff\r\nhello\r\n"},
        {"zz", "zz\r\n"},
        {"empty size", "\r\nhello\r\n"},
        {"0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"},
        {"negative", "-5\r\nhello\r\n"},
        {"plus", "+5\r\nhello\r\n"},
        {"junk after size", "5 x\r\nhello\r\n"},
        {"leading space", " 5\r\nhello\r\n"},
        {"missing CRLF after data", "5\r\nhelloX\r\n0\r\n\r\n"},
        {"LF only after data", "5\r\nhello\n0\r\n\r\n"},
        {"CR only after data", "5\r\nhello\r0\r\n\r\n"},
        {"too much data", "3\r\nhello\r\n0\r\n\r\n"},
        {"bare CR in size", "5\r;a\r\nhello\r\n"},
        {"CTL in extension", "5;a\x01\r\nhello\r\n"},
        {"obs-fold trailer", "0\r\nX-A: 1\r\n continued\r\n\r\n"},
        {"trailer without colon", "0\r\nX-A 1\r\n\r\n"},
        {"trailer space before colon", "0\r\nX-A : 1\r\n\r\n"},
        {"trailer CTL", "0\r\nX-A: 1\x01\r\n\r\n"},
    };
    int failed = 0;

    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        static const size_t steps[] = {0, 1};
        for (size_t s = 0; s < 2; s++) {
            char *out;
            size_t outlen;
            enum px_parse r =
                chunked_run(t[i].in, strlen(t[i].in), steps[s], 0, &out, &outlen, NULL, NULL);
            if (r != PX_PARSE_BAD) {
                print_error("%s (step %zu): result %d, expected BAD\n", t[i].what, steps[s], r);
                failed++;
            }
            free(out);
        }
    }
    if (failed)
        fail_msg("%d bad chunked cases were accepted", failed);
}

/* NUL inside a size line is rejected. */
static void test_chunked_nul(void **state)
{
    (void)state;
    static const char in[] = "5;a\0b\r\nhello\r\n0\r\n\r\n";
    char *out;
    size_t outlen;

    assert_int_equal(chunked_run(in, sizeof(in) - 1, 0, 0, &out, &outlen, NULL, NULL),
                     PX_PARSE_BAD);
    free(out);
}

/* Over-long size lines and trailer sections are bounded. */
static void test_chunked_limits(void **state)
{
    (void)state;
    size_t n = PX_CHUNK_MAX_LINE + 100;
    char *in = malloc(n + 1);
    char *out;
    size_t outlen;

    assert_non_null(in);
    /* an extension that never ends */
    in[0] = '5';
    in[1] = ';';
    memset(in + 2, 'a', n - 2);
    assert_int_equal(chunked_run(in, n, 0, 0, &out, &outlen, NULL, NULL), PX_PARSE_BAD);
    free(out);
    free(in);

    /* trailers over PX_CHUNK_MAX_TRAILERS */
    size_t cap = PX_CHUNK_MAX_TRAILERS + 4096;
    char *big = malloc(cap);
    size_t len = 0;
    assert_non_null(big);
    len += (size_t)snprintf(big, cap, "0\r\n");
    while (len < PX_CHUNK_MAX_TRAILERS + 100)
        len += (size_t)snprintf(big + len, cap - len, "X-Pad: %0100d\r\n", 0);
    len += (size_t)snprintf(big + len, cap - len, "\r\n");
    assert_int_equal(chunked_run(big, len, 0, 0, &out, &outlen, NULL, NULL), PX_PARSE_BAD);
    free(out);
    free(big);
}

static void test_chunked_plain(void **state)
{
    (void)state;
    const char *in = "5;ext\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
    char *out;
    size_t outlen;
    uint64_t total;

    for (size_t step = 0; step < 4; step++) {
        assert_int_equal(chunked_run(in, strlen(in), step, 1, &out, &outlen, NULL, &total),
                         PX_PARSE_OK);
        assert_int_equal(outlen, 11);
        assert_memory_equal(out, "hello world", 11);
        assert_int_equal(total, 11);
        free(out);
    }
}

/* The decoder stops at the end of the message: what follows is left in the input. */
static void test_chunked_stops_at_end(void **state)
{
    (void)state;
    struct px_chunked ch;
    struct evbuffer *in = evbuffer_new(), *o = evbuffer_new();
    const char *data = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";

    memset(&ch, 0, sizeof(ch));
    evbuffer_add(in, data, strlen(data));
    assert_int_equal(px_chunked_feed(&ch, in, o), PX_PARSE_OK);
    assert_int_equal(ch.total, 3);
    assert_int_equal(evbuffer_get_length(in), strlen("GET / HTTP/1.1\r\n"));
    /* feeding again after DONE stays OK and consumes nothing */
    assert_int_equal(px_chunked_feed(&ch, in, o), PX_PARSE_OK);
    assert_int_equal(evbuffer_get_length(in), strlen("GET / HTTP/1.1\r\n"));

    /* out == NULL discards */
    px_chunked_reset(&ch);
    evbuffer_drain(in, evbuffer_get_length(in));
    const char *next = "4\r\nabcd\r\n0\r\nX-A: 1\r\n\r\n";
    evbuffer_add(in, next, strlen(next));
    assert_int_equal(px_chunked_feed(&ch, in, NULL), PX_PARSE_OK);
    assert_int_equal(ch.total, 4);
    assert_int_equal(evbuffer_get_length(in), 0);
    px_chunked_reset(&ch);
    evbuffer_free(in);
    evbuffer_free(o);
}

/* A large chunk streams through as it arrives, before its end is seen. */
static void test_chunked_streams(void **state)
{
    (void)state;
    struct px_chunked ch;
    struct evbuffer *in = evbuffer_new(), *o = evbuffer_new();

    memset(&ch, 0, sizeof(ch));
    evbuffer_add(in, "100000\r\n", 8); /* 1 MiB */
    char block[4096];
    memset(block, 'x', sizeof(block));
    evbuffer_add(in, block, sizeof(block));
    assert_int_equal(px_chunked_feed(&ch, in, o), PX_PARSE_AGAIN);
    assert_int_equal(ch.total, sizeof(block));
    assert_int_equal(evbuffer_get_length(o), 8 + sizeof(block));
    assert_int_equal(evbuffer_get_length(in), 0);
    px_chunked_reset(&ch);
    evbuffer_free(in);
    evbuffer_free(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_find_head),
        cmocka_unit_test(test_parse_control_byte_every_offset),
        cmocka_unit_test(test_find_head_414),
        cmocka_unit_test(test_find_head_431),
        cmocka_unit_test(test_find_head_bare_lf),
        cmocka_unit_test(test_find_head_lf_crlf),
        cmocka_unit_test(test_parse_valid_get),
        cmocka_unit_test(test_parse_post_framing),
        cmocka_unit_test(test_parse_smuggling),
        cmocka_unit_test(test_parse_nul_in_value),
        cmocka_unit_test(test_parse_status_codes),
        cmocka_unit_test(test_parse_max_headers),
        cmocka_unit_test(test_parse_ws_upgrade),
        cmocka_unit_test(test_token_list_has),
        cmocka_unit_test(test_parse_response),
        cmocka_unit_test(test_parse_empty_head),
        cmocka_unit_test(test_parse_response_status_line),
        cmocka_unit_test(test_chunked_good),
        cmocka_unit_test(test_chunked_fragmented),
        cmocka_unit_test(test_chunked_bad),
        cmocka_unit_test(test_chunked_nul),
        cmocka_unit_test(test_chunked_limits),
        cmocka_unit_test(test_chunked_plain),
        cmocka_unit_test(test_chunked_stops_at_end),
        cmocka_unit_test(test_chunked_streams),
    };
    return cmocka_run_group_tests_name("proxy/h1", tests, NULL, NULL);
}

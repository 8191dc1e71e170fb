/* fuzz_h1_response.c — the runner's response head, as proxy/forward.c and the
 * HTTP/2 bridge (proxy/h2.c) read it: px_h1_find_head() with the 64 KiB head
 * limit, then px_h1_parse_response() and px_h1_response_has_body().
 *
 * Oracles: slices stay inside the copy, an accepted head is framed whole by
 * find_head(), framing is never both Content-Length and chunked, and 1xx, 204
 * and 304 (and any answer to HEAD) have no body (RFC 9112 6.3). */
#include <stdio.h>
#include <stdlib.h>

#include "proxy/h1.h"
#include "fuzz/check.h"

static int inside(const struct px_head *h, struct px_str s)
{
    return s.len == 0 || (s.p >= h->buf && s.p + s.len <= h->buf + h->len);
}

static void check_parse(const char *data, size_t len)
{
    struct px_head h;
    const char *why = NULL;

    if (px_h1_parse_response(&h, data, len, 1000, &why) != 0) {
        CHECK(why != NULL);
        px_head_free(&h);
        return;
    }
    CHECK(h.len == len && inside(&h, h.reason));
    for (int i = 0; i < h.nhdrs; i++)
        CHECK(inside(&h, h.hdrs[i].name) && h.hdrs[i].name.len > 0 && inside(&h, h.hdrs[i].value));
    CHECK(h.http_major == 1);
    CHECK(h.status >= 100 && h.status <= 599);
    CHECK(!(h.chunked && h.content_length >= 0));
    CHECK(h.content_length >= -1);
    int body_get = px_h1_response_has_body(&h, HTTP_GET);
    CHECK(!px_h1_response_has_body(&h, HTTP_HEAD));
    if (h.status / 100 == 1 || h.status == 204 || h.status == 304)
        CHECK(!body_get);
    (void)px_head_get(&h, PX_STR("content-type"));

    struct evbuffer *in = evbuffer_new();
    size_t head_len = 0;
    int st = 0;
    CHECK(in != NULL);
    evbuffer_add(in, data, len);
    CHECK(px_h1_find_head(in, 1u << 20, 1u << 20, &head_len, &st) == PX_PARSE_OK &&
          head_len == len);
    evbuffer_free(in);
    px_head_free(&h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct evbuffer *in = evbuffer_new();
    size_t head_len = 0;
    int status = 0;

    if (in == NULL)
        return 0;
    evbuffer_add(in, data, size);
    /* proxy/h2.c's limits; forward.c uses PX_MAX_RESP_HEAD (the same 64 KiB) */
    switch (px_h1_find_head(in, 64 * 1024, 64 * 1024, &head_len, &status)) {
    case PX_PARSE_AGAIN: break;
    case PX_PARSE_BAD: CHECK(status == 400 || status == 414 || status == 431); break;
    case PX_PARSE_OK: {
        const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)head_len);
        char *copy = malloc(head_len);
        CHECK(p != NULL && copy != NULL);
        memcpy(copy, p, head_len);
        check_parse(copy, head_len);
        free(copy);
        break;
    }
    }
    evbuffer_free(in);
    if (size > 0) {
        char *copy = malloc(size);
        CHECK(copy != NULL);
        memcpy(copy, data, size);
        check_parse(copy, size);
        free(copy);
    }
    return 0;
}

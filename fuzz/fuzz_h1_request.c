/* fuzz_h1_request.c — the request head path of proxy/conn.c: px_h1_find_head()
 * frames a head out of the input buffer, px_h1_parse_request() checks and
 * parses it; both also run on the raw input (trailing bytes, bare LFs).
 *
 * Oracles besides the sanitizers: every slice points into the head's own copy;
 * a refused head names a status the proxy can send and a reason; an accepted
 * head is one find_head() frames whole (two readings of one head must agree,
 * or a smuggled request could slip between them), and never carries both
 * Content-Length and chunked. */
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
    int status = 0;
    const char *why = NULL;

    if (px_h1_parse_request(&h, data, len, 100, &status, &why) != 0) {
        CHECK(why != NULL);
        CHECK(status == 400 || status == 405 || status == 431 || status == 500 || status == 505);
        px_head_free(&h); /* a refused head may still own its copy */
        return;
    }
    CHECK(h.len == len && memcmp(h.buf, data, len) == 0);
    CHECK(inside(&h, h.method) && h.method.len > 0 && inside(&h, h.target) && h.target.len > 0);
    CHECK(inside(&h, h.host));
    CHECK(h.nhdrs <= 100);
    for (int i = 0; i < h.nhdrs; i++) {
        CHECK(inside(&h, h.hdrs[i].name) && h.hdrs[i].name.len > 0);
        CHECK(inside(&h, h.hdrs[i].value));
    }
    CHECK(h.http_major == 1 && (h.http_minor == 0 || h.http_minor == 1));
    CHECK(!(h.chunked && h.content_length >= 0));
    CHECK(h.content_length >= -1);
    CHECK(h.m != HTTP_CONNECT);
    CHECK(!h.ws_upgrade || h.m == HTTP_GET);
    if (h.http_minor == 1)
        CHECK(h.host.p != NULL);
    const struct px_hdr *c = px_head_get(&h, PX_STR("connection"));
    if (c != NULL)
        (void)px_token_list_has(c->value, PX_STR("keep-alive"));

    /* The framer agrees: an accepted head is exactly one head. */
    struct evbuffer *in = evbuffer_new();
    size_t head_len = 0;
    int st = 0;
    CHECK(in != NULL);
    evbuffer_add(in, data, len);
    enum px_parse r = px_h1_find_head(in, 1u << 20, 1u << 20, &head_len, &st);
    CHECK(r == PX_PARSE_OK && head_len == len);
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
    /* As conn.c reads a client: the configured defaults, then the small limits
     * a tight config would set (the 414/431 edges). */
    static const size_t lim[][2] = {{8192, 65536}, {64, 256}};
    evbuffer_add(in, data, size);
    for (int k = 0; k < 2; k++) {
        switch (px_h1_find_head(in, lim[k][0], lim[k][1], &head_len, &status)) {
        case PX_PARSE_AGAIN: break;
        case PX_PARSE_BAD: CHECK(status == 400 || status == 414 || status == 431); break;
        case PX_PARSE_OK: {
            CHECK(head_len >= 4 && head_len <= size && head_len <= lim[k][1]);
            const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)head_len);
            CHECK(p != NULL && memcmp(p + head_len - 4, "\r\n\r\n", 4) == 0);
            char *copy = malloc(head_len); /* exact size: ASan sees any overread */
            CHECK(copy != NULL);
            memcpy(copy, p, head_len);
            check_parse(copy, head_len);
            free(copy);
            break;
        }
        }
        CHECK(evbuffer_get_length(in) == size); /* find_head never drains */
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

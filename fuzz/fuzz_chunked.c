/* fuzz_chunked.c — px_chunked_feed(), the chunked decoder of request bodies
 * (client to runner, re-framed: proxy/forward.c) and of response bodies
 * (runner to client: re-framed for HTTP/1.1, payload only for HTTP/1.0 and
 * HTTP/2), fed the way the network delivers bytes: in random splits.
 *
 * Input: byte 0 picks the mode (re-framed, plain, discard), byte 1 seeds the
 * split sizes, the rest is the body. Oracles:
 *  - the verdict, the output, the payload count and the bytes left after the
 *    last chunk do not depend on how the input was split;
 *  - a re-framed body decodes again to the same payload and is consumed
 *    exactly (what we send is strict chunked, whatever we were sent);
 *  - the decoder never reads past what it was given (ASan) and frees its
 *    trailers (LeakSanitizer). */
#include <stdio.h>
#include <stdlib.h>

#include "proxy/h1.h"
#include "fuzz/check.h"

struct run {
    enum px_parse r;
    struct evbuffer *out; /* owned; NULL in discard mode */
    uint64_t total;
    size_t left; /* input bytes after the terminator (the next message) */
};

/* Feeds body in pieces (sizes from seed; 0 = all at once) like conn.c does on
 * each read: append, feed, stop at OK or BAD. */
static void feed(const uint8_t *body, size_t n, unsigned seed, int mode, struct run *res)
{
    struct px_chunked ch;
    struct evbuffer *in = evbuffer_new();
    size_t off = 0;

    memset(&ch, 0, sizeof(ch));
    memset(res, 0, sizeof(*res));
    ch.plain = mode == 1;
    res->out = mode == 2 ? NULL : evbuffer_new();
    CHECK(in != NULL && (mode == 2 || res->out != NULL));
    res->r = PX_PARSE_AGAIN;
    while (off < n || res->r == PX_PARSE_AGAIN) {
        size_t take = n - off;
        if (seed != 0 && take > 0) {
            seed = seed * 1103515245u + 12345u;
            size_t piece = 1 + (seed >> 16) % 7;
            if ((seed >> 8) % 5 == 0)
                piece = 1 + (seed >> 12) % 300;
            take = piece < take ? piece : take;
        }
        evbuffer_add(in, body + off, take);
        off += take;
        if (res->r == PX_PARSE_AGAIN)
            res->r = px_chunked_feed(&ch, in, res->out);
        if (res->r == PX_PARSE_BAD)
            break;
        if (off == n && res->r == PX_PARSE_AGAIN)
            break; /* the body ends before the message does */
    }
    res->total = ch.total;
    res->left = evbuffer_get_length(in);
    if (res->r == PX_PARSE_OK)
        CHECK(ch.st == PX_CH_DONE && px_chunked_feed(&ch, in, res->out) == PX_PARSE_OK);
    px_chunked_reset(&ch);
    CHECK(ch.trailers == NULL && ch.st == PX_CH_SIZE);
    evbuffer_free(in);
}

static int same_bytes(struct evbuffer *a, struct evbuffer *b)
{
    size_t n = evbuffer_get_length(a);

    if (n != evbuffer_get_length(b))
        return 0;
    return n == 0 || memcmp(evbuffer_pullup(a, -1), evbuffer_pullup(b, -1), n) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct run whole, split;

    if (size < 2)
        return 0;
    int mode = data[0] % 3;
    unsigned seed = data[1] + 1u;
    data += 2;
    size -= 2;

    feed(data, size, 0, mode, &whole);
    feed(data, size, seed, mode, &split);
    CHECK(whole.r == split.r);
    if (whole.r == PX_PARSE_OK) {
        CHECK(whole.total == split.total && whole.left == split.left);
        if (mode != 2)
            CHECK(same_bytes(whole.out, split.out));
    }
    if (whole.r == PX_PARSE_BAD)
        CHECK(split.r == PX_PARSE_BAD);

    /* Re-framed output is strict chunked carrying the same payload. */
    if (whole.r == PX_PARSE_OK && mode == 0) {
        size_t n = evbuffer_get_length(whole.out);
        uint8_t *again = malloc(n + 1);
        struct run plain, orig_plain;
        CHECK(again != NULL);
        evbuffer_copyout(whole.out, again, n);
        feed(again, n, seed, 1, &plain);
        CHECK(plain.r == PX_PARSE_OK && plain.left == 0 && plain.total == whole.total);
        feed(data, size, 0, 1, &orig_plain);
        CHECK(orig_plain.r == PX_PARSE_OK && same_bytes(plain.out, orig_plain.out));
        CHECK(evbuffer_get_length(plain.out) == plain.total);
        evbuffer_free(plain.out);
        evbuffer_free(orig_plain.out);
        free(again);
    }
    if (whole.out != NULL)
        evbuffer_free(whole.out);
    if (split.out != NULL)
        evbuffer_free(split.out);
    return 0;
}

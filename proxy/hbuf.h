/* hbuf.h — a message head built in one contiguous buffer and handed to its
 * evbuffer in one piece (issue 13).
 *
 * Why: every evbuffer_add() on a bufferevent's output runs the buffer's
 * callbacks, and the socket bufferevent's callback re-checks and re-arms its
 * write event; a head of a dozen fields built field by field paid that ~40
 * times. Here the pieces are copied into b[] and moved with one
 * evbuffer_add() when the head is done.
 *
 * The builder lives on the caller's stack. Bound: PX_HBUF_CAP bytes at a time;
 * a head longer than that (heads are bounded by max_header_size plus what the
 * proxy adds, but the cap is not tied to it) is flushed in PX_HBUF_CAP pieces,
 * so correctness never depends on the size. */
#ifndef PX_HBUF_H
#define PX_HBUF_H

#include <stdint.h>
#include <string.h>

#include <event2/buffer.h>

#include "proxy/px.h"

#define PX_HBUF_CAP 8192

struct px_hbuf {
    struct evbuffer *out;  /* not owned: the bytes go there */
    struct evbuffer *copy; /* not owned, or NULL: and a copy there (a retry's replay) */
    size_t len;            /* bytes in b[] not yet flushed */
    char b[PX_HBUF_CAP];
};

static inline void px_hb_init(struct px_hbuf *h, struct evbuffer *out)
{
    h->out = out;
    h->copy = NULL;
    h->len = 0;
}

/* Moves what b[] holds to the evbuffer (also before anything else writes to
 * it directly, so the order stays). */
static inline void px_hb_flush(struct px_hbuf *h)
{
    if (h->len) {
        evbuffer_add(h->out, h->b, h->len);
        if (h->copy != NULL)
            evbuffer_add(h->copy, h->b, h->len);
    }
    h->len = 0;
}

static inline void px_hb_add(struct px_hbuf *h, const void *p, size_t n)
{
    if (n > PX_HBUF_CAP - h->len) {
        px_hb_flush(h);
        if (n > PX_HBUF_CAP) { /* larger than the whole buffer: straight through */
            evbuffer_add(h->out, p, n);
            if (h->copy != NULL)
                evbuffer_add(h->copy, p, n);
            return;
        }
    }
    if (n) /* memcpy with a NULL source is undefined even for 0 bytes */
        memcpy(h->b + h->len, p, n);
    h->len += n;
}

/* A string literal: its length is known at compile time. */
#define px_hb_lit(h, s) px_hb_add((h), (s), sizeof(s) - 1)

static inline void px_hb_str(struct px_hbuf *h, const char *s)
{
    px_hb_add(h, s, strlen(s));
}

static inline void px_hb_slice(struct px_hbuf *h, struct px_str s)
{
    px_hb_add(h, s.p, s.len);
}

static inline void px_hb_u64(struct px_hbuf *h, uint64_t v)
{
    char d[24];
    int i = sizeof(d);

    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    px_hb_add(h, d + i, sizeof(d) - (size_t)i);
}

static inline void px_hb_hex(struct px_hbuf *h, uint64_t v)
{
    char d[16];
    int i = sizeof(d);

    do {
        d[--i] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v != 0);
    px_hb_add(h, d + i, sizeof(d) - (size_t)i);
}

/* "Name: value\r\n" from a field as received. */
static inline void px_hb_field(struct px_hbuf *h, struct px_str name, struct px_str value)
{
    px_hb_slice(h, name);
    px_hb_lit(h, ": ");
    px_hb_slice(h, value);
    px_hb_lit(h, "\r\n");
}

#endif

/* headw.h — a response head written once for either front end (issue 13
 * item 1): the pipeline says status and fields; for an HTTP/1.1 client they
 * become bytes in a px_hbuf, for an HTTP/2 stream nghttp2 name/value pairs
 * that proxy/h2.c submits as HEADERS. Nothing is formatted as HTTP/1.1 and
 * parsed back.
 *
 * The writer lives on the caller's stack. HTTP/2 bounds: PX_HW_MAX_FIELDS
 * fields and PX_HW_STORE bytes of lowercased names and built values; a field
 * past either is dropped (and counted in `dropped`), as a field over those
 * sizes cannot be a sane response header. Values given by slice must stay
 * valid until the head is submitted (nghttp2 copies them then). */
#ifndef PX_HEADW_H
#define PX_HEADW_H

#include <nghttp2/nghttp2.h>

#include "proxy/hbuf.h"

#define PX_HW_MAX_FIELDS 128
#define PX_HW_STORE 8192

struct px_headw {
    struct px_hbuf *hb; /* not owned: HTTP/1.1 bytes go here; NULL for HTTP/2 */
    int status;
    size_t n; /* HTTP/2: fields in nv[] */
    size_t used;
    unsigned dropped;
    nghttp2_nv nv[PX_HW_MAX_FIELDS];
    char store[PX_HW_STORE];
};

static inline void px_hw_init(struct px_headw *w, struct px_hbuf *hb)
{
    w->hb = hb;
    w->status = 0;
    w->n = w->used = 0;
    w->dropped = 0;
}

/* HTTP/2: bytes copied into store (lowercased when lower), or NULL when full. */
static inline uint8_t *px_hw_keep(struct px_headw *w, const char *p, size_t n, int lower)
{
    uint8_t *d;

    if (n > PX_HW_STORE - w->used)
        return NULL;
    d = (uint8_t *)w->store + w->used;
    for (size_t i = 0; i < n; i++)
        d[i] = (uint8_t)(lower && p[i] >= 'A' && p[i] <= 'Z' ? p[i] + 32 : p[i]);
    w->used += n;
    return d;
}

static inline void px_hw_nv(struct px_headw *w, const uint8_t *name, size_t nlen,
                            const uint8_t *value, size_t vlen)
{
    if (name == NULL || value == NULL || w->n == PX_HW_MAX_FIELDS) {
        w->dropped++;
        return;
    }
    w->nv[w->n++] =
        (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, nlen, vlen, NGHTTP2_NV_FLAG_NONE};
}

/* The status line (HTTP/1.1) or :status (HTTP/2). */
static inline void px_hw_status(struct px_headw *w, int minor, int status, struct px_str reason)
{
    w->status = status;
    if (w->hb != NULL) {
        px_hb_str(w->hb, minor ? "HTTP/1.1 " : "HTTP/1.0 ");
        px_hb_u64(w->hb, (uint64_t)status);
        px_hb_lit(w->hb, " ");
        px_hb_slice(w->hb, reason);
        px_hb_lit(w->hb, "\r\n");
        return;
    }
    char d[3] = {(char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10),
                 (char)('0' + status % 10)};
    px_hw_nv(w, (const uint8_t *)":status", 7, px_hw_keep(w, d, 3, 0), 3);
}

/* One field; value must live until the head is submitted. */
static inline void px_hw_field(struct px_headw *w, struct px_str name, struct px_str value)
{
    if (w->hb != NULL)
        return px_hb_field(w->hb, name, value);
    px_hw_nv(w, px_hw_keep(w, name.p, name.len, 1), name.len,
             value.len ? (const uint8_t *)value.p : (const uint8_t *)"", value.len);
}

/* One field whose value is built here (copied). */
static inline void px_hw_field_copy(struct px_headw *w, struct px_str name, struct px_str value)
{
    if (w->hb != NULL)
        return px_hb_field(w->hb, name, value);
    uint8_t *nm = px_hw_keep(w, name.p, name.len, 1);
    px_hw_nv(w, nm, name.len, px_hw_keep(w, value.p, value.len, 0), value.len);
}

static inline void px_hw_field_u64(struct px_headw *w, struct px_str name, uint64_t v)
{
    char d[24];
    size_t n = px_cat_num(d, sizeof(d), 0, v, 0);

    px_hw_field_copy(w, name, px_str_make(d, n));
}

/* Whole "Name: value\r\n" lines of our own making (never peer bytes): as
 * they are for HTTP/1.1, split into fields for HTTP/2. */
static inline void px_hw_lines(struct px_headw *w, const char *lines, size_t len)
{
    if (w->hb != NULL)
        return px_hb_add(w->hb, lines, len);
    while (len > 0) {
        const char *eol = memchr(lines, '\n', len);
        size_t ll = eol ? (size_t)(eol - lines) + 1 : len;
        struct px_str line = px_str_make(lines, ll);
        const char *colon = memchr(line.p, ':', line.len);
        while (line.len && (line.p[line.len - 1] == '\n' || line.p[line.len - 1] == '\r'))
            line.len--;
        if (colon != NULL && colon < line.p + line.len) {
            struct px_str v = px_str_make(colon + 1, (size_t)(line.p + line.len - colon - 1));
            while (v.len && (v.p[0] == ' ' || v.p[0] == '\t'))
                v.p++, v.len--;
            px_hw_field_copy(w, px_str_make(line.p, (size_t)(colon - line.p)), v);
        }
        lines += ll;
        len -= ll;
    }
}

#define px_hw_lit(w, name, value) px_hw_field((w), PX_STR(name), PX_STR(value))

/* HTTP/1.1 only: the empty line, and the head handed over. */
static inline void px_hw_end(struct px_headw *w)
{
    if (w->hb != NULL) {
        px_hb_lit(w->hb, "\r\n");
        px_hb_flush(w->hb);
    }
}

#endif

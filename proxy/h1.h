/* h1.h — HTTP/1.1 message heads (parsed with http-parser after a strict byte
 * scan) and the chunked body codec. */
#ifndef PX_H1_H
#define PX_H1_H

#include <event2/buffer.h>
#include <http_parser.h>

#include "proxy/px.h"

enum px_parse { PX_PARSE_OK = 0, PX_PARSE_AGAIN, PX_PARSE_BAD };

struct px_hdr {
    struct px_str name, value; /* slices into px_head.buf */
};

/* A parsed request or response head. buf owns the bytes every slice points into. */
struct px_head {
    char *buf; /* owned; the raw head, NUL-terminated */
    size_t len;
    struct px_str method, target, reason; /* request: method, target; response: reason */
    enum http_method m;
    int status; /* response */
    int http_major, http_minor;
    struct px_hdr *hdrs; /* owned array */
    int nhdrs, cap;
    int64_t content_length; /* -1 when absent */
    struct px_str host;     /* request Host value (slice) */
    unsigned chunked : 1;
    unsigned keepalive : 1;    /* the peer wants the connection kept */
    unsigned conn_upgrade : 1; /* Connection lists "upgrade" */
    unsigned ws_upgrade : 1;   /* Upgrade: websocket and Connection: upgrade */
    unsigned expect_continue : 1;
};

/* Looks for a complete head at the start of in without draining it.
 * OK: *head_len is its length (through CRLFCRLF). AGAIN: need more bytes.
 * BAD: *status is 400, 414 (request line over max_line) or 431 (over max_head). */
enum px_parse px_h1_find_head(struct evbuffer *in, size_t max_line, size_t max_head,
                              size_t *head_len, int *status);

/* Parses a request head of exactly len bytes (copied into h->buf). Returns 0,
 * or -1 with *status (400, 405, 431, 505) and *why (a message safe to show). */
int px_h1_parse_request(struct px_head *h, const char *data, size_t len, int max_headers,
                        int *status, const char **why);

/* Same for a response head; req_method is the request's, for HEAD. */
int px_h1_parse_response(struct px_head *h, const char *data, size_t len, int max_headers,
                         const char **why);

/* Does the response carry a body (RFC 9112 6.3)? */
int px_h1_response_has_body(const struct px_head *resp, enum http_method req_method);

void px_head_free(struct px_head *h);

/* Is p[0..n) a valid field value: no control byte but HTAB (the rule the
 * HTTP/1.1 head scan applies; proxy/h2.c applies it to HTTP/2 fields)? */
int px_h1_value_ok(const char *p, size_t n);

/* Header lookup (case-insensitive name); first match or NULL. */
const struct px_hdr *px_head_get(const struct px_head *h, struct px_str name);

/* Is tok in the comma-separated list (case-insensitive, OWS trimmed)? */
int px_token_list_has(struct px_str list, struct px_str tok);

/* Strict chunked decoder (RFC 9112 7.1) that re-frames into out as it goes:
 * chunk data moves between evbuffers without copying; extensions are dropped;
 * trailers are validated and re-emitted. Bare LF, more than 16 hex digits, bad
 * digits or an over-long line are errors. */
struct px_chunked {
    enum { PX_CH_SIZE = 0, PX_CH_DATA, PX_CH_DATA_END, PX_CH_TRAILER, PX_CH_DONE } st;
    uint64_t left;             /* bytes of the current chunk still to move */
    size_t trailer_bytes;      /* bounded by PX_CHUNK_MAX_TRAILERS */
    struct evbuffer *trailers; /* owned; NULL until the first trailer */
    uint64_t total;            /* payload bytes moved so far */
    unsigned plain : 1;        /* emit only the payload (for an HTTP/1.0 receiver) */
};

#define PX_CHUNK_MAX_LINE 4096
#define PX_CHUNK_MAX_TRAILERS 16384

/* Moves what it can from in to out (out may be NULL to discard). OK when the last
 * chunk and trailers are through; AGAIN for more; BAD for a framing error. */
enum px_parse px_chunked_feed(struct px_chunked *ch, struct evbuffer *in, struct evbuffer *out);
void px_chunked_reset(struct px_chunked *ch);

#endif

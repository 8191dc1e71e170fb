/* h2.c — HTTP/2 server sessions (nghttp2) feeding the request pipeline.
 *
 * One request pipeline for both protocols (issue 13 item 1): each stream's
 * request becomes the same structured head (struct px_head) an HTTP/1.1
 * request is parsed into, and px_conn_h2_open() runs routing, authentication,
 * the warning page, CORS and forwarding on it, as for HTTP/1.1. The pipeline
 * answers through a struct px_headw (HEADERS) and the stream's `out` buffer
 * (DATA); request DATA reaches it through the stream's `in` buffer. Nothing
 * is written as HTTP/1.1 text and parsed back, and no bufferevent sits
 * between a stream and its exchange.
 *
 * Flow control is end to end: DATA is acknowledged (WINDOW_UPDATE) only when
 * the pipeline has taken the bytes from `in`, and the pipeline stops reading
 * the runner while `out` holds BODY_HIGH bytes the client's window has not let
 * leave.
 *
 * Lifetimes: a stream and its exchange (struct px_conn) point at each other
 * while both live. Whichever ends first unlinks both pointers: the exchange
 * with px_h2s_finish() (complete: END_STREAM after `out`; else RST_STREAM),
 * the stream with px_conn_h2_gone() (the exchange is aborted, 499).
 *
 * Abuse limits (LESSONS B4): at most 100 concurrent streams, a header list of
 * 64 KiB, 8 CONTINUATION frames (nghttp2), and per-second budgets for PING,
 * SETTINGS, RST_STREAM and empty frames; past them the connection gets GOAWAY
 * (ENHANCE_YOUR_CALM), is counted in srv->h2_goaways, and closes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <nghttp2/nghttp2.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "proxy/h1.h"
#include "proxy/headw.h"
#include "proxy/metrics.h"
#include "proxy/peers.h"
#include "proxy/h2.h"
#include "tls/tls.h"

#define MAX_STREAMS 100
#define MAX_HEADER_LIST (64 * 1024)
#define STREAM_WINDOW (256 * 1024)
#define CONN_WINDOW (4 * 1024 * 1024)
#define OUT_HIGH (256 * 1024)  /* bytes queued towards the client before we stop producing */
#define BODY_HIGH (256 * 1024) /* response bytes a stream holds before the runner is paused */
#define PER_SECOND_LIMIT 100

struct px_h2s {
    int32_t id;
    struct px_h2 *h2;         /* borrowed: the owner */
    struct px_conn *c;        /* borrowed: the exchange answering this stream, or NULL */
    struct evbuffer *fields;  /* owned until the head is used: request fields as
                               * (u32 name length, u32 value length, name, value) */
    struct evbuffer *cookies; /* owned: cookie crumbs joined with "; " (RFC 9113 8.2.3) */
    int nfields;
    char method[24];
    char *path, *authority, *protocol; /* owned */
    size_t hdr_bytes;                  /* bounded by MAX_HEADER_LIST */
    int64_t req_cl;                    /* Content-Length, -1 without */
    unsigned req_ended : 1, started : 1, ws : 1;
    struct evbuffer *in;  /* owned: request body bytes the pipeline has not taken (bounded
                           * by STREAM_WINDOW: only taken bytes are acknowledged) */
    struct evbuffer *out; /* owned: response payload waiting for DATA frames */
    unsigned out_eof : 1, deferred : 1, submitted : 1;
    unsigned done : 1;  /* the response is complete on our side (END_STREAM queued or sent) */
    unsigned reset : 1; /* we sent (queued) RST_STREAM: no more time bounds */
    unsigned wake_armed : 1, wake : 1; /* the pipeline waits for `out` to drain */
    /* Per-stream time bounds (on_tick(), CLOCK_MONOTONIC seconds): the last time
     * the client sent request body or could not send any (our window closed), and
     * the last time response DATA left or none was waiting. */
    time_t body_at, send_at;
    struct px_h2s *next, *prev;
};

struct px_h2 {
    struct px_server *srv;   /* borrowed */
    struct bufferevent *bev; /* owned: the client connection */
    nghttp2_session *ng;     /* owned */
    struct sockaddr_storage peer;
    struct px_peer *slot; /* owned: the socket's count in proxy/peers.c, or NULL */
    int tls;
    struct px_h2s *streams; /* owned list */
    struct event *kick;     /* owned: a send asked for where calling nghttp2 is unsafe */
    struct event *tick;     /* owned: 1 s, while streams exist: per-stream timeouts */
    int nstreams;
    /* >0 while nghttp2_session_mem_recv() or _mem_send() is on the stack: nghttp2
     * is not reentrant, so its callbacks (and what they reach: stream_free() ->
     * px_conn_h2_gone() -> the pipeline) must not call back into the session's
     * send or recv. h2_send() then only sets want_send, and the outer h2_send()
     * loops (on_read() sends after mem_recv returns). */
    unsigned in_ng;
    unsigned busy;
    unsigned doomed : 1, draining : 1, want_send : 1, want_wake : 1;
    time_t win;
    unsigned pings, settings, resets, empty;
    struct px_h2 *next, *prev; /* srv->h2s */
};

static void h2_send(struct px_h2 *h);

static void stream_reset(struct px_h2s *s, uint32_t code)
{
    s->reset = 1;
    nghttp2_submit_rst_stream(s->h2->ng, NGHTTP2_FLAG_NONE, s->id, code);
}

static time_t now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

/* Asks for a send without calling into nghttp2 from here. Inside one of its
 * callbacks the h2_send() or on_read() on the stack sends once mem_send/recv
 * returns; elsewhere (the pipeline, deep in a runner or lookup callback, or an
 * evbuffer callback) the event loop runs on_kick() next. */
static void kick(struct px_h2 *h)
{
    h->want_send = 1;
    if (h->in_ng == 0 && h->kick != NULL)
        event_active(h->kick, EV_TIMEOUT, 0);
}

/* ---- lifetime ---- */

/* The exchange must not outlive its stream: it is told (and aborted, 499
 * in the log, its runner connection dropped). */
static void unlink_exchange(struct px_h2s *s)
{
    struct px_conn *c = s->c;

    if (c == NULL)
        return;
    s->c = NULL;
    px_conn_h2_gone(c);
}

/* Request bytes nobody will take still count against the connection window. */
static void drop_input(struct px_h2s *s)
{
    size_t n = evbuffer_get_length(s->in);

    if (n > 0)
        evbuffer_drain(s->in, n); /* on_in_drained() acknowledges them */
}

static void stream_free(struct px_h2s *s)
{
    struct px_h2 *h = s->h2;

    unlink_exchange(s);
    if (s->in != NULL) {
        drop_input(s);
        evbuffer_free(s->in);
    }
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    h->nstreams--;
    if (s->fields != NULL)
        evbuffer_free(s->fields);
    if (s->cookies != NULL)
        evbuffer_free(s->cookies);
    if (s->out != NULL)
        evbuffer_free(s->out);
    free(s->path);
    free(s->authority);
    free(s->protocol);
    free(s);
}

static void h2_destroy(struct px_h2 *h)
{
    struct px_server *srv = h->srv;

    h->doomed = 1; /* nothing is sent from here on (px_h2_close_all() comes straight here) */
    while (h->streams != NULL)
        stream_free(h->streams);
    if (h->kick != NULL)
        event_free(h->kick);
    if (h->tick != NULL)
        event_free(h->tick);
    if (h->ng != NULL)
        nghttp2_session_del(h->ng);
    if (h->bev != NULL) {
        if (h->tls)
            px_tls_close_notify(h->bev);
        bufferevent_free(h->bev);
    }
    if (h->prev != NULL)
        h->prev->next = h->next;
    else
        srv->h2s = h->next;
    if (h->next != NULL)
        h->next->prev = h->prev;
    srv->nh2--;
    px_peer_release(h->slot);
    free(h);
    px_server_maybe_exit(srv);
}

static void h2_close(struct px_h2 *h)
{
    h->doomed = 1;
    if (h->busy == 0)
        h2_destroy(h);
}

static void calm_down(struct px_h2 *h, const char *why)
{
    if (h->doomed)
        return;
    h->srv->h2_goaways++;
    if (px_log_allow(10)) /* an attacker with many connections must not flood the log */
        px_log(PX_WARN, "h2: %s: GOAWAY ENHANCE_YOUR_CALM (%lu so far)", why, h->srv->h2_goaways);
    nghttp2_session_terminate_session(h->ng, NGHTTP2_ENHANCE_YOUR_CALM);
}

/* Per-second budgets for frames that cost us work but carry no request. */
static int budget(struct px_h2 *h, unsigned *counter, const char *what)
{
    time_t now = time(NULL);

    if (now != h->win) {
        h->win = now;
        h->pings = h->settings = h->resets = h->empty = 0;
    }
    if (++*counter > PER_SECOND_LIMIT) {
        calm_down(h, what);
        return -1;
    }
    return 0;
}

/* ---- the pipeline side of a stream ---- */

static int lower_eq(const uint8_t *p, size_t n, const char *lit)
{
    return strlen(lit) == n && !memcmp(p, lit, n);
}

/* The pipeline took request bytes from `in`: now the peer may send more. */
static void on_in_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct px_h2s *s = arg;
    (void)buf;

    if (info->n_deleted > 0 && !s->h2->doomed) {
        nghttp2_session_consume(s->h2->ng, s->id, info->n_deleted);
        kick(s->h2);
    }
}

static ssize_t read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *user)
{
    struct px_h2s *s = src->ptr;
    size_t n = evbuffer_remove(s->out, buf, len);
    (void)ng;
    (void)id;
    (void)user;

    if (s->wake_armed && evbuffer_get_length(s->out) < BODY_HIGH / 2) {
        /* The client's window moved: the pipeline may read the runner again,
         * once we are out of nghttp2 (h2_send() runs the wake-ups). */
        s->wake_armed = 0;
        s->wake = 1;
        s->h2->want_wake = 1;
    }
    if (n > 0)
        s->send_at = now_s();
    if (n == 0 && !s->out_eof) {
        s->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (s->out_eof && evbuffer_get_length(s->out) == 0)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static void resume(struct px_h2s *s)
{
    if (s->deferred && s->submitted) {
        s->deferred = 0;
        nghttp2_session_resume_data(s->h2->ng, s->id);
    }
}

struct evbuffer *px_h2s_in(struct px_h2s *s)
{
    return s->in;
}

int px_h2s_in_ended(const struct px_h2s *s)
{
    return s->req_ended;
}

struct evbuffer *px_h2s_out(struct px_h2s *s)
{
    return s->out;
}

int px_h2s_head(struct px_h2s *s, const struct px_headw *w, int has_body)
{
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_body};
    int rc;

    if (s->submitted || s->reset)
        return -1;
    s->submitted = 1;
    if (!has_body)
        s->done = 1;
    rc = nghttp2_submit_response(s->h2->ng, s->id, w->nv, w->n, has_body ? &prd : NULL);
    kick(s->h2);
    return rc;
}

void px_h2s_wrote(struct px_h2s *s)
{
    resume(s);
    kick(s->h2);
}

int px_h2s_out_full(struct px_h2s *s)
{
    if (evbuffer_get_length(s->out) < BODY_HIGH)
        return 0;
    s->wake_armed = 1;
    return 1;
}

void px_h2s_finish(struct px_h2s *s, int complete)
{
    s->c = NULL;
    if (complete && s->submitted) {
        s->out_eof = 1;
        s->done = 1;
        resume(s);
    } else if (!s->reset && !s->done) {
        evbuffer_drain(s->out, evbuffer_get_length(s->out));
        stream_reset(s, s->submitted ? NGHTTP2_INTERNAL_ERROR : NGHTTP2_REFUSED_STREAM);
    }
    /* Whatever the client still sends is not wanted: acknowledge and drop it. */
    drop_input(s);
    kick(s->h2);
}

/* The target and authority: visible ASCII only (no spaces, no controls). */
static int visible(const char *p)
{
    for (; *p != '\0'; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return 0;
    return 1;
}

static enum http_method method_of(const char *m, int *known)
{
    for (int i = 0; i < 64; i++) {
        const char *name = http_method_str((enum http_method)i);
        if (name == NULL || !strcmp(name, "<unknown>"))
            break;
        if (!strcmp(name, m)) {
            *known = 1;
            return (enum http_method)i;
        }
    }
    *known = 0;
    return HTTP_GET;
}

/* The request head as the pipeline reads it (what px_h1_parse_request()
 * makes of an HTTP/1.1 head), built from the stream's fields: one block holds
 * the field array and every byte the slices point at. Returns 0, or -1 with
 * *status and *why. */
static int build_head(struct px_h2s *s, struct px_head *h, int max_headers, int *status,
                      const char **why)
{
    const char *method = s->ws ? "GET" : s->method;
    const char *authority = s->authority != NULL ? s->authority : "";
    size_t flen = evbuffer_get_length(s->fields);
    size_t clen = s->cookies != NULL ? evbuffer_get_length(s->cookies) : 0;
    size_t ml = strlen(method), pl = strlen(s->path), al = strlen(authority);
    int n = s->nfields + 1 /* host */ + (clen > 0) + s->ws, known;
    unsigned char key[16], b64[32]; /* 16 bytes: 24 base64 characters with "==" */
    const uint8_t *f;
    char *p;

    memset(h, 0, sizeof(*h));
    h->content_length = -1;
    *status = 400;
    if (n > max_headers + 1) {
        *status = 431;
        *why = "too many header fields";
        return -1;
    }
    h->m = method_of(method, &known);
    if (!known) {
        *why = "unknown method";
        return -1;
    }
    if (pl == 0 || (s->path[0] != '/' && strcmp(s->path, "*")) || !visible(s->path) ||
        !visible(authority)) {
        *why = "bad request target";
        return -1;
    }
    if (s->ws) {
        /* RFC 8441: the runner speaks HTTP/1.1, so this becomes a classic
         * upgrade (forward.c adds Connection and Upgrade) with our own key. */
        RAND_bytes(key, sizeof(key));
        EVP_EncodeBlock(b64, key, sizeof(key)); /* RFC 6455: standard base64 */
    }
    h->cap = n;
    h->hdrs = malloc(sizeof(*h->hdrs) * (size_t)n + ml + pl + al + flen + clen + 64);
    if (h->hdrs == NULL) {
        *status = 500;
        *why = "out of memory";
        return -1;
    }
    p = h->buf = (char *)(h->hdrs + n);
#define PUT(dst, src, len)                                                                         \
    do {                                                                                           \
        memcpy(p, (src), (len));                                                                   \
        (dst) = px_str_make(p, (len));                                                             \
        p += (len);                                                                                \
    } while (0)
    PUT(h->method, method, ml);
    PUT(h->target, s->path, pl);
    PUT(h->host, authority, al);
    h->hdrs[h->nhdrs++] = (struct px_hdr){PX_STR("host"), h->host};
    f = flen ? evbuffer_pullup(s->fields, -1) : NULL;
    for (size_t off = 0; off < flen;) {
        uint32_t nl, vl;
        struct px_hdr *d = &h->hdrs[h->nhdrs++];
        memcpy(&nl, f + off, 4);
        memcpy(&vl, f + off + 4, 4);
        off += 8;
        PUT(d->name, f + off, nl);
        PUT(d->value, f + off + nl, vl);
        off += nl + vl;
    }
    if (clen > 0) {
        struct px_hdr *d = &h->hdrs[h->nhdrs++];
        d->name = PX_STR("cookie");
        PUT(d->value, evbuffer_pullup(s->cookies, -1), clen);
    }
    if (s->ws) {
        struct px_hdr *d = &h->hdrs[h->nhdrs++];
        d->name = PX_STR("sec-websocket-key");
        PUT(d->value, b64, 24);
        h->ws_upgrade = h->conn_upgrade = 1;
    }
#undef PUT
    *p = '\0';
    h->len = (size_t)(p - h->buf);
    h->http_major = h->http_minor = 1;
    h->keepalive = 0;
    h->content_length = s->req_cl;
    return 0;
}

/* The request head is complete: the exchange starts. Returns -1 (the caller
 * resets the stream) only when no exchange could be made; a request the
 * pipeline refuses gets its answer from the pipeline (400, 431, ...). */
static int stream_start(struct px_h2s *s, int end_stream)
{
    struct px_h2 *h = s->h2;
    struct px_head req;
    int status = 400;
    const char *why = NULL;

    s->started = 1; /* the head is used up, whatever happens: trailers never restart it */
    if (s->path == NULL || s->method[0] == '\0' || (s->authority == NULL && !s->ws))
        return -1;
    if ((s->in = evbuffer_new()) == NULL)
        return -1;
    /* Without this the client's window would never reopen. */
    if (evbuffer_add_cb(s->in, on_in_drained, s) == NULL)
        return -1;
    if (end_stream)
        s->req_ended = 1;
    s->body_at = now_s(); /* the body clock starts when the pipeline can take one */
    if (build_head(s, &req, h->srv->cfg->max_headers, &status, &why) == 0)
        status = 0;
    evbuffer_free(s->fields);
    s->fields = NULL;
    /* From here the exchange owns req (it answers status when not 0). */
    px_conn_h2_open(h->srv, s, &req, status, why, (const struct sockaddr *)&h->peer, h->tls);
    return 0;
}

/* The pipeline links itself (px_conn_h2_open()). */
void px_h2s_attach(struct px_h2s *s, struct px_conn *c)
{
    s->c = c;
}

static void stream_end_request(struct px_h2s *s)
{
    if (s->req_ended)
        return;
    s->req_ended = 1; /* also when the pipeline is gone: on_tick() reads it */
    if (s->c != NULL)
        px_conn_h2_input(s->c);
}

/* ---- nghttp2 callbacks ---- */

static struct px_h2s *get_stream(struct px_h2 *h, int32_t id)
{
    return nghttp2_session_get_stream_user_data(h->ng, id);
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    struct px_h2 *h = user;
    struct px_h2s *s;

    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (h->nstreams >= MAX_STREAMS + 28) { /* ignoring our SETTINGS */
        calm_down(h, "too many concurrent streams");
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if ((s = calloc(1, sizeof(*s))) == NULL || (s->fields = evbuffer_new()) == NULL ||
        (s->out = evbuffer_new()) == NULL) {
        if (s != NULL && s->fields != NULL)
            evbuffer_free(s->fields);
        free(s);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    s->id = f->hd.stream_id;
    s->h2 = h;
    s->req_cl = -1;
    s->next = h->streams;
    if (h->streams != NULL)
        h->streams->prev = s;
    h->streams = s;
    h->nstreams++;
    s->body_at = s->send_at = now_s();
    if (!evtimer_pending(h->tick, NULL)) {
        struct timeval sec = {1, 0};
        evtimer_add(h->tick, &sec);
    }
    nghttp2_session_set_stream_user_data(ng, s->id, s);
    return 0;
}

static char *dup_n(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s != NULL) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    struct px_h2 *h = user;
    struct px_h2s *s = get_stream(h, f->hd.stream_id);
    (void)ng;
    (void)flags;

    if (s == NULL || s->started) /* trailers: not forwarded */
        return 0;
    s->hdr_bytes += nlen + vlen + 32;
    if (s->hdr_bytes > MAX_HEADER_LIST) {
        calm_down(h, "oversized header list");
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (nlen > 0 && name[0] == ':') {
        if (lower_eq(name, nlen, ":method") && vlen < sizeof(s->method)) {
            memcpy(s->method, value, vlen);
            s->method[vlen] = '\0';
        } else if (lower_eq(name, nlen, ":path")) {
            free(s->path);
            s->path = dup_n(value, vlen);
        } else if (lower_eq(name, nlen, ":authority")) {
            free(s->authority);
            s->authority = dup_n(value, vlen);
        } else if (lower_eq(name, nlen, ":protocol")) {
            free(s->protocol);
            s->protocol = dup_n(value, vlen);
        }
        return 0;
    }
    if (lower_eq(name, nlen, "host")) {
        if (s->authority == NULL)
            s->authority = dup_n(value, vlen);
        return 0;
    }
    if (lower_eq(name, nlen, "cookie")) {
        if (s->cookies == NULL && (s->cookies = evbuffer_new()) == NULL)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        if (evbuffer_get_length(s->cookies) > 0)
            evbuffer_add(s->cookies, "; ", 2);
        evbuffer_add(s->cookies, value, vlen);
        return 0;
    }
    if (lower_eq(name, nlen, "content-length")) {
        int64_t v = 0;
        for (size_t i = 0; i < vlen && v >= 0; i++)
            v = value[i] >= '0' && value[i] <= '9' && i < 18 ? v * 10 + (value[i] - '0') : -1;
        s->req_cl = vlen > 0 ? v : -1;
        return 0;
    }
    if (lower_eq(name, nlen, "te") || lower_eq(name, nlen, "expect"))
        return 0;
    if (!px_h1_value_ok((const char *)value, vlen)) {
        /* As the HTTP/1.1 scan would: the stream is refused, not the session. */
        s->started = 1;
        stream_reset(s, NGHTTP2_PROTOCOL_ERROR);
        return 0;
    }
    uint32_t lens[2] = {(uint32_t)nlen, (uint32_t)vlen}; /* both under MAX_HEADER_LIST */
    if (evbuffer_add(s->fields, lens, sizeof(lens)) != 0 || evbuffer_add(s->fields, name, nlen) ||
        evbuffer_add(s->fields, value, vlen) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    s->nfields++;
    return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    struct px_h2 *h = user;
    struct px_h2s *s;
    (void)ng;

    switch (f->hd.type) {
    case NGHTTP2_PING:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK))
            budget(h, &h->pings, "PING flood");
        break;
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK))
            budget(h, &h->settings, "SETTINGS flood");
        break;
    case NGHTTP2_RST_STREAM:
        /* Only resets that cancel work count: a client answers DATA that was in
         * flight for a stream it already reset with more RST_STREAMs. */
        if (get_stream(h, f->hd.stream_id) != NULL)
            budget(h, &h->resets, "rapid reset");
        break;
    case NGHTTP2_DATA:
        if (f->hd.length == 0 && !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            budget(h, &h->empty, "empty DATA frames");
        if ((s = get_stream(h, f->hd.stream_id)) != NULL && (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            stream_end_request(s);
        break;
    case NGHTTP2_HEADERS:
        if ((s = get_stream(h, f->hd.stream_id)) == NULL)
            break;
        if (!s->started) {
            s->ws = !strcmp(s->method, "CONNECT") && s->protocol != NULL &&
                    !strcasecmp(s->protocol, "websocket");
            if (!strcmp(s->method, "CONNECT") && !s->ws) {
                s->started = 1;
                stream_reset(s, NGHTTP2_REFUSED_STREAM);
                break;
            }
            if (stream_start(s, (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) != 0)
                stream_reset(s, NGHTTP2_PROTOCOL_ERROR);
        } else if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) {
            stream_end_request(s); /* trailers end the body */
        }
        break;
    default: break;
    }
    return 0;
}

static int on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *user)
{
    struct px_h2 *h = user;
    struct px_h2s *s = get_stream(h, id);
    (void)flags;

    if (s == NULL || s->c == NULL || s->req_ended) {
        nghttp2_session_consume(ng, id, len); /* nobody will read it: do not stall the connection */
        return 0;
    }
    s->body_at = now_s();
    /* Acknowledged when the pipeline takes it (on_in_drained()). */
    if (evbuffer_add(s->in, data, len) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    px_conn_h2_input(s->c);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t err, void *user)
{
    struct px_h2 *h = user;
    struct px_h2s *s = get_stream(h, id);
    (void)err;

    if (s != NULL) {
        nghttp2_session_set_stream_user_data(ng, id, NULL);
        stream_free(s); /* a reset stream closes its pipeline side (and its upstream) */
    }
    return 0;
}

/* ---- I/O ---- */

/* Moves what nghttp2 has queued to the client connection. Safe to call from
 * anywhere: from inside an nghttp2 callback it only records that a send is
 * wanted, and the call already on the stack (h2_send() or on_read()) does it.
 * mem_send() hands out a pointer into the session's own frame buffer, valid
 * until the next call; a nested mem_send() from a callback (on_stream_close
 * after an RST_STREAM went out) overwrote it and split frames. */
/* Streams whose `out` drained while nghttp2 was on the stack: their exchange
 * may read the runner again. Only the pipeline is called: it submits and
 * resumes (kick() brings us back here), it never frees a stream. */
static void wake_streams(struct px_h2 *h)
{
    h->want_wake = 0;
    for (struct px_h2s *s = h->streams; s != NULL; s = s->next) {
        if (!s->wake)
            continue;
        s->wake = 0;
        if (s->c != NULL)
            px_conn_h2_drained(s->c);
    }
}

static void h2_send(struct px_h2 *h)
{
    struct evbuffer *out;
    const uint8_t *data;
    ssize_t n = 0;

    if (h->in_ng > 0) {
        h->want_send = 1;
        return;
    }
    if (h->bev == NULL || h->doomed)
        return;
    out = bufferevent_get_output(h->bev);
    /* h2c: written at once (px_bev_send); while the socket takes it all, go on
     * producing (a bounded number of rounds; the rest from on_write). */
    for (int round = 0; round < 16; round++) {
        h->in_ng++;
        do {
            h->want_send = 0;
            while (evbuffer_get_length(out) < OUT_HIGH &&
                   (n = nghttp2_session_mem_send(h->ng, &data)) > 0)
                evbuffer_add(out, data, (size_t)n); /* may run on_write (TLS): it defers too */
        } while (h->want_send && n >= 0 && evbuffer_get_length(out) < OUT_HIGH);
        h->in_ng--;
        if (h->want_wake && n >= 0)
            wake_streams(h);
        if (h->tls || n < 0 || h->doomed)
            break;
        px_bev_send(h->bev);
        if (evbuffer_get_length(out) > 0 || !nghttp2_session_want_write(h->ng))
            break;
    }
    if (n < 0) { /* only out of memory or a callback failure: nothing sane left to send */
        if (px_log_allow(10))
            px_log(PX_WARN, "h2: send failed: %s", nghttp2_strerror((int)n));
        h2_close(h);
        return;
    }
    if (!nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng) &&
        evbuffer_get_length(out) == 0)
        h2_close(h);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    struct px_h2 *h = arg;
    (void)fd;
    (void)what;

    h->busy++;
    h2_send(h);
    if (--h->busy == 0 && h->doomed)
        h2_destroy(h);
}

/* Resets one stream and lets its pipeline side (and runner connection) go. The
 * stream itself is freed by on_stream_close() once the RST_STREAM is out. */
static void expire(struct px_h2s *s, const char *why)
{
    if (px_log_allow(10))
        px_log(PX_INFO, "h2: stream %d: %s: RST_STREAM", (int)s->id, why);
    s->done = 1;
    unlink_exchange(s); /* conn.c logs 499 and drops the runner side */
    evbuffer_drain(s->out, evbuffer_get_length(s->out));
    drop_input(s);
    stream_reset(s, NGHTTP2_CANCEL);
}

/* Issue 9 item 4, per stream (nginx's meaning of both directives): a request
 * body that has not moved for client_body_timeout while the client could send
 * (both flow-control windows open towards it), and response bytes that have
 * not left for send_timeout (the client keeps the stream's window shut), reset
 * that stream only; a client that reads nothing at all stalls the connection,
 * which its own send_timeout closes. A stream waiting on the runner is not the
 * client's fault: conn.c's timers bound that. */
static void check_stream(struct px_h2s *s, const struct px_config *cfg, time_t now)
{
    nghttp2_session *ng = s->h2->ng;

    if (s->reset)
        return;
    if (s->started && !s->req_ended && !s->ws &&
        !nghttp2_session_get_stream_remote_close(ng, s->id)) {
        if (nghttp2_session_get_stream_local_window_size(ng, s->id) <= 0 ||
            nghttp2_session_get_local_window_size(ng) <= 0)
            s->body_at = now; /* we hold the client back: its clock does not run */
        else if (now - s->body_at >= cfg->client_body_timeout)
            expire(s, "client_body_timeout");
    }
    if (evbuffer_get_length(s->out) == 0 ||
        evbuffer_get_length(bufferevent_get_output(s->h2->bev)) >= OUT_HIGH)
        s->send_at = now; /* nothing waits, or the client takes nothing at all: the
                           * connection's own send_timeout closes it (px_h2_start()) */
    else if (now - s->send_at >= cfg->send_timeout)
        expire(s, "send_timeout");
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct px_h2 *h = arg;
    const struct px_config *cfg = h->srv->cfg; /* read each time: SIGHUP swaps it */
    time_t now = now_s();
    (void)fd;
    (void)what;

    h->busy++;
    /* expire() frees nothing: streams leave the list in h2_send(), below. */
    for (struct px_h2s *s = h->streams; s != NULL; s = s->next)
        check_stream(s, cfg, now);
    if (h->nstreams == 0)
        evtimer_del(h->tick); /* on_begin_headers() re-arms it */
    h2_send(h);
    if (--h->busy == 0 && h->doomed)
        h2_destroy(h);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct px_h2 *h = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    h->busy++;
    while (evbuffer_get_length(in) > 0 && !h->doomed) {
        size_t len = evbuffer_get_contiguous_space(in);
        const uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)len);
        h->in_ng++;
        ssize_t n = nghttp2_session_mem_recv(h->ng, p, len);
        h->in_ng--;
        if (n < 0) {
            if (px_log_allow(10))
                px_log(PX_INFO, "h2: closing: %s", nghttp2_strerror((int)n));
            /* A fatal receive error queues nothing by itself: say why before closing. */
            nghttp2_session_terminate_session(h->ng, n == NGHTTP2_ERR_FLOODED ||
                                                             n == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS
                                                         ? NGHTTP2_ENHANCE_YOUR_CALM
                                                         : NGHTTP2_PROTOCOL_ERROR);
            h2_send(h);
            /* No more reading; h2_send() closes once the GOAWAY is written. */
            bufferevent_disable(h->bev, EV_READ);
            evbuffer_drain(in, evbuffer_get_length(in));
            break;
        }
        evbuffer_drain(in, (size_t)n);
    }
    h2_send(h);
    if (--h->busy == 0 && h->doomed)
        h2_destroy(h);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct px_h2 *h = arg;

    h->busy++;
    if (!h->tls && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bufferevent_disable(bev, EV_WRITE); /* drained: back to px_bev_send() */
    h2_send(h);
    if (--h->busy == 0 && h->doomed)
        h2_destroy(h);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct px_h2 *h = arg;
    (void)bev;

    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) && h->nstreams > 0) {
        bufferevent_enable(h->bev, EV_READ); /* busy, only quiet: keep it */
        return;
    }
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_WRITING) && px_log_allow(10))
        px_log(PX_INFO, "h2: send_timeout: the client took no bytes, closing");
    h2_close(h);
}

void px_h2_start(struct px_server *srv, struct bufferevent *bev, const struct sockaddr *peer,
                 int tls, struct px_peer *slot)
{
    struct px_h2 *h = calloc(1, sizeof(*h));
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    struct timeval idle = {srv->cfg->keepalive_timeout, 0};
    /* A client that takes no byte at all stalls every stream: that one bound is
     * the connection's (per-stream stalls are on_tick()'s). */
    struct timeval send = {srv->cfg->send_timeout, 0};
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST},
        {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
    };

    if (h == NULL) {
        bufferevent_free(bev);
        px_peer_release(slot);
        return;
    }
    h->srv = srv;
    h->slot = slot;
    h->bev = bev;
    h->tls = tls;
    memcpy(&h->peer, peer,
           peer->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    h->next = srv->h2s;
    if (srv->h2s != NULL)
        srv->h2s->prev = h;
    srv->h2s = h;
    srv->nh2++;
    px_metrics.h2_connections++;
    h->kick = event_new(srv->base, -1, 0, on_kick, h);
    h->tick = event_new(srv->base, -1, EV_PERSIST, on_tick, h);
    if (h->kick == NULL || h->tick == NULL) {
        h2_destroy(h);
        return;
    }
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_continuations(opt, 8);
    nghttp2_option_set_stream_reset_rate_limit(opt, 200, 33);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_settings(opt, 32);
    int rc = nghttp2_session_server_new2(&h->ng, cb, h, opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    if (rc != 0) {
        h->ng = NULL;
        h2_destroy(h);
        return;
    }
    nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW);
    bufferevent_setwatermark(bev, EV_READ, 0, 0);
    bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    bufferevent_set_timeouts(bev, &idle, &send);
    bufferevent_setcb(bev, on_read, on_write, on_event, h);
    if (!tls) /* h2c is written at once (h2_send) */
        bufferevent_disable(bev, EV_WRITE);
    bufferevent_enable(bev, tls ? EV_READ | EV_WRITE : EV_READ);
    if (srv->draining)
        nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        on_read(bev, h);
    else
        h2_send(h);
}

void px_h2_drain_all(struct px_server *srv)
{
    for (struct px_h2 *h = srv->h2s, *next; h != NULL; h = next) {
        next = h->next;
        /* Streams already open finish; new ones are refused. */
        nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(h->ng), NGHTTP2_NO_ERROR,
                              NULL, 0);
        h->busy++;
        h2_send(h);
        if (h->nstreams == 0)
            h->doomed = 1;
        if (--h->busy == 0 && h->doomed)
            h2_destroy(h);
    }
}

void px_h2_close_all(struct px_server *srv)
{
    while (srv->h2s != NULL)
        h2_destroy(srv->h2s);
}

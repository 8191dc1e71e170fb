/* h2.c — HTTP/2 server sessions bridged to the HTTP/1.1 pipeline.
 *
 * Each stream owns one end of a bufferevent pair; the other end is handed to
 * px_conn_attach() as if it were a client connection. The stream writes an
 * HTTP/1.1 request head (from the HEADERS frame) and the body (from DATA
 * frames) into the pair, and reads back the HTTP/1.1 response, which it parses
 * with the same head parser and chunked codec and turns into HEADERS and DATA
 * frames. Flow control is end to end: DATA is acknowledged (WINDOW_UPDATE)
 * only when the pipeline has taken the bytes, and response bytes are read from
 * the pair only while the client's window lets them leave.
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
#include "proxy/metrics.h"
#include "proxy/peers.h"
#include "proxy/h2.h"
#include "tls/tls.h"

#define MAX_STREAMS 100
#define MAX_HEADER_LIST (64 * 1024)
#define STREAM_WINDOW (256 * 1024)
#define CONN_WINDOW (4 * 1024 * 1024)
#define OUT_HIGH (256 * 1024)  /* bytes queued towards the client before we stop producing */
#define BODY_HIGH (256 * 1024) /* decoded response bytes a stream holds before pausing its pair */
#define PER_SECOND_LIMIT 100

enum rstate { R_HEAD = 0, R_BODY, R_TUNNEL, R_DONE };
enum bkind { B_NONE = 0, B_LENGTH, B_CHUNKED, B_EOF };

struct stream {
    int32_t id;
    struct px_h2 *h2;         /* borrowed: the owner */
    struct bufferevent *bev;  /* owned: our end of the pair; NULL once finished */
    struct evbuffer *head;    /* owned: HTTP/1.1 header lines being built */
    struct evbuffer *cookies; /* owned: cookie crumbs joined with "; " (RFC 9113 8.2.3) */
    char method[24];
    char *path, *authority, *protocol; /* owned */
    size_t hdr_bytes;
    int64_t req_cl;
    unsigned req_chunked : 1, req_ended : 1, started : 1, is_head : 1, ws : 1;
    size_t unconsumed; /* DATA bytes not yet acknowledged to the peer */
    enum rstate rst;
    struct px_head resp; /* owned */
    enum bkind body;
    int64_t left;
    struct px_chunked ch;
    struct evbuffer *out; /* owned: response payload waiting for DATA frames */
    unsigned out_eof : 1, deferred : 1, submitted : 1;
    unsigned reset : 1; /* we sent (queued) RST_STREAM: no more time bounds */
    /* Per-stream time bounds (on_tick(), CLOCK_MONOTONIC seconds): the last time
     * the client sent request body or could not send any (our window closed), and
     * the last time response DATA left or none was waiting. */
    time_t body_at, send_at;
    struct stream *next, *prev;
};

struct px_h2 {
    struct px_server *srv;   /* borrowed */
    struct bufferevent *bev; /* owned: the client connection */
    nghttp2_session *ng;     /* owned */
    struct sockaddr_storage peer;
    struct px_peer *slot; /* owned: the socket's count in proxy/peers.c, or NULL */
    int tls;
    struct stream *streams; /* owned list */
    struct event *kick;     /* owned: a send asked for where calling nghttp2 is unsafe */
    struct event *tick;     /* owned: 1 s, while streams exist: per-stream timeouts */
    int nstreams;
    /* >0 while nghttp2_session_mem_recv() or _mem_send() is on the stack: nghttp2
     * is not reentrant, so its callbacks (and what they reach: stream_free() ->
     * finish_pair() -> on_pair_drained()) must not call back into the session's
     * send or recv. h2_send() then only sets want_send, and the outer h2_send()
     * loops (on_read() sends after mem_recv returns). */
    unsigned in_ng;
    unsigned busy;
    unsigned doomed : 1, draining : 1, want_send : 1;
    time_t win;
    unsigned pings, settings, resets, empty;
    struct px_h2 *next, *prev; /* srv->h2s */
};

static void h2_send(struct px_h2 *h);
static void stream_pump(struct stream *s);

static void stream_reset(struct stream *s, uint32_t code)
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
 * returns; elsewhere (a pair's evbuffer callback, which can run while that
 * buffer is being flushed or freed) the event loop runs on_kick() next. */
static void kick(struct px_h2 *h)
{
    h->want_send = 1;
    if (h->in_ng == 0 && h->kick != NULL)
        event_active(h->kick, EV_TIMEOUT, 0);
}

/* ---- lifetime ---- */

static void finish_pair(struct stream *s)
{
    if (s->bev == NULL)
        return;
    /* Tell the pipeline's end we are gone (a plain free would not). The flush
     * hands it our unread request bytes, which on_pair_drained() credits back. */
    bufferevent_flush(s->bev, EV_READ | EV_WRITE, BEV_FINISHED);
    bufferevent_free(s->bev);
    s->bev = NULL;
    if (s->unconsumed > 0) {
        /* The pipeline's end was already gone: those bytes die with our end, but
         * they still count against the connection window. */
        nghttp2_session_consume(s->h2->ng, s->id, s->unconsumed);
        s->unconsumed = 0;
        kick(s->h2);
    }
}

static void stream_free(struct stream *s)
{
    struct px_h2 *h = s->h2;

    finish_pair(s);
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    h->nstreams--;
    if (s->head != NULL)
        evbuffer_free(s->head);
    if (s->cookies != NULL)
        evbuffer_free(s->cookies);
    if (s->out != NULL)
        evbuffer_free(s->out);
    px_head_free(&s->resp);
    px_chunked_reset(&s->ch);
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
    if (srv->draining && srv->nconns == 0 && srv->nsplices == 0 && srv->nh2 == 0)
        event_base_loopexit(srv->base, NULL);
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

static void on_pair_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct stream *s = arg;
    size_t n = info->n_deleted < s->unconsumed ? info->n_deleted : s->unconsumed;
    (void)buf;

    /* The pipeline took request bytes: now the peer may send more. */
    if (n > 0) {
        s->unconsumed -= n;
        nghttp2_session_consume(s->h2->ng, s->id, n);
        kick(s->h2);
    }
}

static ssize_t read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *user)
{
    struct stream *s = src->ptr;
    size_t n = evbuffer_remove(s->out, buf, len);
    (void)ng;
    (void)id;
    (void)user;

    if (s->bev != NULL && evbuffer_get_length(s->out) < BODY_HIGH / 2)
        bufferevent_enable(s->bev, EV_READ); /* the client's window moved: produce again */
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

static void resume(struct stream *s)
{
    if (s->deferred && s->submitted) {
        s->deferred = 0;
        nghttp2_session_resume_data(s->h2->ng, s->id);
    }
}

static int hop_header(struct px_str name)
{
    return px_str_ieq(name, PX_STR("connection")) || px_str_ieq(name, PX_STR("keep-alive")) ||
           px_str_ieq(name, PX_STR("proxy-connection")) ||
           px_str_ieq(name, PX_STR("transfer-encoding")) || px_str_ieq(name, PX_STR("upgrade")) ||
           px_str_ieq(name, PX_STR("te")) || px_str_ieq(name, PX_STR("trailer"));
}

/* Turns the pipeline's HTTP/1.1 response head into HEADERS. */
static int submit_head(struct stream *s)
{
    struct px_head *r = &s->resp;
    nghttp2_nv nva[128];
    char status[4], names[128][64];
    size_t n = 0;
    int tunnel = r->status == 101;
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_body};

    snprintf(status, sizeof(status), "%d", tunnel ? 200 : r->status);
    nva[n++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE};
    for (int i = 0; i < r->nhdrs && n < 128; i++) {
        struct px_str nm = r->hdrs[i].name;
        if (hop_header(nm) || nm.len >= sizeof(names[0]))
            continue;
        if (tunnel && (px_str_ieq(nm, PX_STR("sec-websocket-accept")) ||
                       px_str_ieq(nm, PX_STR("content-length"))))
            continue;
        for (size_t k = 0; k < nm.len; k++) /* HTTP/2 field names are lowercase */
            names[n][k] = (char)(nm.p[k] >= 'A' && nm.p[k] <= 'Z' ? nm.p[k] + 32 : nm.p[k]);
        nva[n] = (nghttp2_nv){(uint8_t *)names[n], (uint8_t *)r->hdrs[i].value.p, nm.len,
                              r->hdrs[i].value.len, NGHTTP2_NV_FLAG_NONE};
        n++;
    }
    s->submitted = 1;
    if (!tunnel && s->body == B_NONE) {
        s->rst = R_DONE;
        return nghttp2_submit_response(s->h2->ng, s->id, nva, n, NULL);
    }
    return nghttp2_submit_response(s->h2->ng, s->id, nva, n, &prd);
}

/* Reads what the pipeline wrote back. */
static void stream_pump(struct stream *s)
{
    struct evbuffer *in;
    size_t head_len;
    int status;
    const char *why;

    if (s->bev == NULL)
        return;
    in = bufferevent_get_input(s->bev);
    if (s->rst == R_HEAD) {
        for (;;) {
            switch (px_h1_find_head(in, 64 * 1024, 64 * 1024, &head_len, &status)) {
            case PX_PARSE_AGAIN: return;
            case PX_PARSE_BAD: goto bad;
            case PX_PARSE_OK: break;
            }
            const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)head_len);
            px_head_free(&s->resp);
            if (data == NULL || px_h1_parse_response(&s->resp, data, head_len, 1000, &why) != 0)
                goto bad;
            evbuffer_drain(in, head_len);
            if (s->resp.status / 100 != 1 || s->resp.status == 101)
                break;
        }
        if (s->resp.status == 101) {
            s->rst = R_TUNNEL;
        } else if (s->is_head || s->resp.status == 204 || s->resp.status == 304) {
            s->body = B_NONE;
        } else if (s->resp.chunked) {
            s->body = B_CHUNKED;
            s->ch.plain = 1;
        } else if (s->resp.content_length >= 0) {
            s->body = s->resp.content_length > 0 ? B_LENGTH : B_NONE;
            s->left = s->resp.content_length;
        } else {
            s->body = B_EOF;
        }
        if (s->rst == R_HEAD)
            s->rst = R_BODY;
        if (submit_head(s) != 0)
            goto bad;
    }
    switch (s->rst) {
    case R_TUNNEL: evbuffer_add_buffer(s->out, in); break;
    case R_BODY:
        if (s->body == B_LENGTH) {
            size_t avail = evbuffer_get_length(in);
            size_t k = (int64_t)avail < s->left ? avail : (size_t)s->left;
            evbuffer_remove_buffer(in, s->out, k);
            s->left -= (int64_t)k;
            if (s->left == 0)
                s->out_eof = 1;
        } else if (s->body == B_CHUNKED) {
            enum px_parse r = px_chunked_feed(&s->ch, in, s->out);
            if (r == PX_PARSE_BAD)
                goto bad;
            if (r == PX_PARSE_OK)
                s->out_eof = 1;
        } else {
            evbuffer_add_buffer(s->out, in);
        }
        if (s->out_eof)
            s->rst = R_DONE;
        break;
    case R_HEAD:
    case R_DONE: evbuffer_drain(in, evbuffer_get_length(in)); break;
    }
    if (evbuffer_get_length(s->out) >= BODY_HIGH && s->bev != NULL)
        bufferevent_disable(s->bev, EV_READ);
    resume(s);
    return;
bad:
    px_log(PX_WARN, "h2: stream %d: bad response from the pipeline", (int)s->id);
    finish_pair(s);
    stream_reset(s, NGHTTP2_INTERNAL_ERROR);
}

static void on_pair_read(struct bufferevent *bev, void *arg)
{
    struct stream *s = arg;
    struct px_h2 *h = s->h2;
    (void)bev;

    h->busy++;
    stream_pump(s);
    h2_send(h);
    if (--h->busy == 0 && h->doomed)
        h2_destroy(h);
}

static void on_pair_event(struct bufferevent *bev, short what, void *arg)
{
    struct stream *s = arg;
    struct px_h2 *h = s->h2;
    (void)bev;
    (void)what;

    h->busy++;
    stream_pump(s); /* whatever arrived before the end */
    finish_pair(s);
    if (s->rst == R_TUNNEL || (s->rst == R_BODY && s->body == B_EOF)) {
        s->out_eof = 1;
        s->rst = R_DONE;
        resume(s);
    } else if (s->rst != R_DONE && !s->reset) { /* stream_pump() may have reset it */
        stream_reset(s, s->submitted ? NGHTTP2_INTERNAL_ERROR : NGHTTP2_REFUSED_STREAM);
    }
    h2_send(h);
    if (--h->busy == 0 && h->doomed)
        h2_destroy(h);
}

/* The request head is complete: open the pair and hand one end to conn.c.
 * On failure nothing is left allocated (s->bev stays NULL) and the caller
 * resets the stream. The request head is built before the pair exists, so the
 * only step after bufferevent_pair_new() that can fail frees both ends. */
static int stream_start(struct stream *s, int end_stream)
{
    struct px_h2 *h = s->h2;
    struct bufferevent *pair[2];
    struct evbuffer *req;
    int rc = 0;

    s->started = 1; /* the head is used up, whatever happens: trailers never restart it */
    if (s->path == NULL || s->method[0] == '\0' || (s->authority == NULL && !s->ws))
        return -1;
    if ((req = evbuffer_new()) == NULL)
        return -1;
    rc |= evbuffer_add_printf(req, "%s %s HTTP/1.1\r\nHost: %s\r\n", s->ws ? "GET" : s->method,
                              s->path, s->authority ? s->authority : "") < 0;
    rc |= evbuffer_add_buffer(req, s->head);
    if (s->cookies != NULL && evbuffer_get_length(s->cookies) > 0) {
        rc |= evbuffer_add(req, "Cookie: ", 8);
        rc |= evbuffer_add_buffer(req, s->cookies);
        rc |= evbuffer_add(req, "\r\n", 2);
    }
    if (s->ws) {
        /* RFC 8441: the runner speaks HTTP/1.1, so this becomes a classic upgrade. */
        unsigned char key[16], b64[32]; /* 16 bytes: 24 base64 characters with "==" */
        RAND_bytes(key, sizeof(key));
        EVP_EncodeBlock(b64, key, sizeof(key)); /* RFC 6455: standard base64 */
        rc |= evbuffer_add_printf(req,
                                  "Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                  "Sec-WebSocket-Key: %s\r\n",
                                  (const char *)b64) < 0;
    } else if (s->req_cl >= 0) {
        rc |= evbuffer_add_printf(req, "Content-Length: %lld\r\n", (long long)s->req_cl) < 0;
    } else if (!end_stream) {
        rc |= evbuffer_add(req, "Transfer-Encoding: chunked\r\n", 28);
        s->req_chunked = 1;
    }
    rc |= evbuffer_add(req, "Connection: close\r\n\r\n", 21);
    if (rc != 0 || bufferevent_pair_new(
                       h->srv->base, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS, pair) != 0) {
        evbuffer_free(req); /* a truncated head must never reach the pipeline */
        return -1;
    }
    /* Without the drain callback the client's window would never reopen. */
    if (evbuffer_add_buffer(bufferevent_get_output(pair[0]), req) != 0 ||
        evbuffer_add_cb(bufferevent_get_output(pair[0]), on_pair_drained, s) == NULL) {
        evbuffer_free(req);
        bufferevent_free(pair[1]); /* neither end has callbacks yet: nobody hears this */
        bufferevent_free(pair[0]);
        return -1;
    }
    evbuffer_free(req);
    s->bev = pair[0];
    s->body_at = now_s(); /* the body clock starts when the pipeline can take one */
    bufferevent_setcb(s->bev, on_pair_read, NULL, on_pair_event, s);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
    /* From here pair[1] is conn.c's, even if px_conn_attach() fails (it frees it). */
    px_conn_attach(h->srv, pair[1], (const struct sockaddr *)&h->peer,
                   PX_CONN_H2_STREAM | (h->tls ? PX_CONN_TLS : 0), NULL);
    if (end_stream)
        s->req_ended = 1;
    return 0;
}

static void stream_end_request(struct stream *s)
{
    if (s->req_ended)
        return;
    s->req_ended = 1; /* also when the pipeline is gone: on_tick() reads it */
    if (s->bev == NULL)
        return;
    if (s->req_chunked)
        evbuffer_add(bufferevent_get_output(s->bev), "0\r\n\r\n", 5);
    else if (s->ws)
        finish_pair(s); /* END_STREAM on a tunnel: the client is done */
}

/* ---- nghttp2 callbacks ---- */

static struct stream *get_stream(struct px_h2 *h, int32_t id)
{
    return nghttp2_session_get_stream_user_data(h->ng, id);
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    struct px_h2 *h = user;
    struct stream *s;

    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (h->nstreams >= MAX_STREAMS + 28) { /* ignoring our SETTINGS */
        calm_down(h, "too many concurrent streams");
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if ((s = calloc(1, sizeof(*s))) == NULL || (s->head = evbuffer_new()) == NULL ||
        (s->out = evbuffer_new()) == NULL) {
        if (s != NULL && s->head != NULL)
            evbuffer_free(s->head);
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
    struct stream *s = get_stream(h, f->hd.stream_id);
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
    evbuffer_add(s->head, name, nlen);
    evbuffer_add(s->head, ": ", 2);
    evbuffer_add(s->head, value, vlen);
    evbuffer_add(s->head, "\r\n", 2);
    return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    struct px_h2 *h = user;
    struct stream *s;
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
            s->is_head = !strcmp(s->method, "HEAD");
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
    struct stream *s = get_stream(h, id);
    (void)flags;

    if (s == NULL || s->bev == NULL || s->req_ended) {
        nghttp2_session_consume(ng, id, len); /* nobody will read it: do not stall the connection */
        return 0;
    }
    struct evbuffer *out = bufferevent_get_output(s->bev);
    s->body_at = now_s();
    s->unconsumed += len;
    if (s->req_chunked)
        evbuffer_add_printf(out, "%zx\r\n", len);
    evbuffer_add(out, data, len);
    if (s->req_chunked)
        evbuffer_add(out, "\r\n", 2);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t err, void *user)
{
    struct px_h2 *h = user;
    struct stream *s = get_stream(h, id);
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
    h->in_ng++;
    do {
        h->want_send = 0;
        while (evbuffer_get_length(out) < OUT_HIGH &&
               (n = nghttp2_session_mem_send(h->ng, &data)) > 0)
            evbuffer_add(out, data, (size_t)n); /* may run on_write (TLS): it defers too */
    } while (h->want_send && n >= 0 && evbuffer_get_length(out) < OUT_HIGH);
    h->in_ng--;
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
static void expire(struct stream *s, const char *why)
{
    if (px_log_allow(10))
        px_log(PX_INFO, "h2: stream %d: %s: RST_STREAM", (int)s->id, why);
    s->rst = R_DONE;
    finish_pair(s); /* conn.c hears EOF mid-exchange: logs 499, drops the runner side */
    evbuffer_drain(s->out, evbuffer_get_length(s->out));
    stream_reset(s, NGHTTP2_CANCEL);
}

/* Issue 9 item 4, per stream (nginx's meaning of both directives): a request
 * body that has not moved for client_body_timeout while the client could send
 * (both flow-control windows open towards it), and response bytes that have
 * not left for send_timeout (the client keeps its window shut, or does not read
 * at all), reset that stream only. A stream waiting on the runner is not the
 * client's fault: conn.c's timers bound that. */
static void check_stream(struct stream *s, const struct px_config *cfg, time_t now)
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
    if (evbuffer_get_length(s->out) == 0)
        s->send_at = now;
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
    for (struct stream *s = h->streams; s != NULL; s = s->next)
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
    (void)bev;

    h->busy++;
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
    bufferevent_enable(bev, EV_READ | EV_WRITE);
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

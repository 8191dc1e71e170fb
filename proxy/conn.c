/* conn.c — a client connection, from accept() until its last byte is flushed.
 *
 * The conductor: reads a request head, hands it to route.c (routing and
 * authentication) and forward.c (the runner side), writes our own responses,
 * and keeps the access log. One request is in flight per connection;
 * pipelined requests wait in the input buffer, so responses leave in order.
 * An HTTP/2 connection leaves for proxy/h2.c and a WebSocket for ws/. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <event2/event.h>

#include "auth/activity.h"
#include "auth/auth.h"
#include "auth/oidc.h"
#include "auth/lookup.h"
#include "proxy/api.h"
#include "proxy/browser.h"
#include "proxy/errors.h"
#include "proxy/h1.h"
#include "proxy/headw.h"
#include "proxy/metrics.h"
#include "proxy/peers.h"
#include "proxy/server.h"
#include "proxy/upstream.h"
#include "routing/host.h"
#include "routing/store.h"
#include "proxy/h2.h"
#include "tls/tls.h"
#include "ws/ws.h"

#include "proxy/conn_priv.h"

static void on_client_read(struct bufferevent *bev, void *arg);
static void on_client_write(struct bufferevent *bev, void *arg);
static void on_client_event(struct bufferevent *bev, short what, void *arg);
static void timer_cb(evutil_socket_t fd, short what, void *arg);

const char *px_conn_state_name(enum px_conn_state st)
{
    switch (st) {
    case PX_CONN_IDLE: return "IDLE";
    case PX_CONN_HEAD: return "HEAD";
    case PX_CONN_AUTH: return "AUTH";
    case PX_CONN_STREAM: return "STREAM";
    case PX_CONN_CLOSING: return "CLOSING";
    }
    return "?";
}

void px_conn_set_state(struct px_conn *c, enum px_conn_state next)
{
    clog(c, PX_DEBUG, "%s -> %s", px_conn_state_name(c->state), px_conn_state_name(next));
    c->state = next;
}

void px_conn_arm_timer(struct px_conn *c, int seconds)
{
    struct timeval tv = {seconds, 0};
    evtimer_add(c->timer, &tv);
}

/* ---- lifetime ---- */

void px_conn_upstream_drop(struct px_conn *c)
{
    if (c->ex.up != NULL) {
        px_upstream_release(c->srv->pool, c->ex.up, 0);
        c->ex.up = NULL;
    }
}

/* Releases what the exchange owns (in-flight lookups and calls are
 * cancelled, the runner connection closed), then starts the next one from
 * zero in one assignment. */
static void exchange_reset(struct px_conn *c)
{
    struct px_exchange *x = &c->ex;

    px_conn_upstream_drop(c);
    if (x->auth != NULL)
        px_auth_cancel(x->auth);
    if (x->dom_lk != NULL)
        px_lookup_cancel(x->dom_lk);
    if (x->warn_lk != NULL)
        px_lookup_cancel(x->warn_lk);
    px_api_cancel(x->api_call);
    px_oidc_cancel(x->oidc);
    free(x->build_ref);
    free(x->fwd_target);
    free(x->set_cookie);
    px_head_free(&x->req);
    px_head_free(&x->resp);
    px_chunked_reset(&x->req_ch);
    px_chunked_reset(&x->resp_ch);
    px_sandbox_free(x->sb);
    if (x->replay != NULL)
        evbuffer_free(x->replay);
    /* Nothing of one request's Host, timings or answer may reach the next
     * one: a signed token label is a credential (issue 9). */
    *x = (struct px_exchange){0};
}

void px_conn_destroy(struct px_conn *c)
{
    struct px_server *srv = c->srv;

    exchange_reset(c);
    px_conn_upstream_drop(c);
    if (c->timer != NULL)
        event_free(c->timer);
    if (c->h2s != NULL) { /* the exchange did not finish: the stream is reset */
        px_h2s_finish(c->h2s, 0);
        c->h2s = NULL;
    }
    if (c->bev != NULL) {
        if (c->tls)
            px_tls_close_notify(c->bev);
        bufferevent_free(c->bev);
    }
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    srv->nconns--;
    px_peer_release(c->peer_slot);
    free(c);
    px_server_maybe_exit(srv);
}

/* The one way to end an exchange that cannot finish (REVIEW change 2): the
 * runner connection goes; with a status and nothing sent yet, the client gets
 * that error (px_conn_fail: kept alive only if its request body was read
 * whole); otherwise the access log says what was sent (499 for nothing) and
 * the connection closes. c may be gone on return. */
void px_conn_abort(struct px_conn *c, int status, const char *why)
{
    px_conn_upstream_drop(c);
    if (status != 0 && c->ex.status == 0)
        return px_conn_fail(c, status, NULL, why);
    if (c->ex.status == 0)
        c->ex.status = 499;
    c->ex.keepalive = 0;
    px_conn_access_log(c);
    px_conn_close(c);
}

/* Safe at any depth (STYLE 8). */
void px_conn_close(struct px_conn *c)
{
    c->doomed = 1;
    if (c->busy == 0)
        px_conn_destroy(c);
}

#define LINGER_TIMEOUT 5 /* seconds of client silence that end lingering */
#define LINGER_TIME 30   /* and the most it lasts (nginx's lingering_timeout/time) */
/* After a 408 on client_header_timeout, the most it lasts: a slowloris client
 * that keeps trickling would otherwise hold its slot (max_connections, the
 * per-IP cap) LINGER_TIME longer than the head timeout allows (issue 12 item
 * 3, tests/integration/test_attack_limits.py). nginx does not even answer there. */
#define LINGER_AFTER_HEAD_TIMEOUT 2

/* Our answer is out: say so (FIN, or close_notify over TLS), then read and
 * discard what the client still sends until it closes, falls silent for
 * LINGER_TIMEOUT or LINGER_TIME is up. Closing at once while request bytes
 * are still arriving makes the kernel send RST, and an RST makes the client's
 * kernel drop the answer it has not read yet: a client still uploading would
 * see "connection reset" instead of our 413 or 400. */
static int pending_input(struct px_conn *c);

static void linger_start(struct px_conn *c)
{
    /* The client asked to close and sent its whole request, and nothing more
     * has come: no reason to expect bytes that would turn our close into an
     * RST, so close at once, as nginx does without evidence of more input
     * (issue 13: the linger cost a shutdown, two epoll_ctl, a read and a
     * wake-up per new connection). */
    if (c->close_asked && !c->linger_short && !pending_input(c))
        return px_conn_close(c);
    c->lingering = 1;
    c->linger_until = time(NULL) + (c->linger_short ? LINGER_AFTER_HEAD_TIMEOUT : LINGER_TIME);
    if (c->tls)
        px_tls_close_notify(c->bev);
    shutdown(bufferevent_getfd(c->bev), SHUT_WR);
    evbuffer_drain(bufferevent_get_input(c->bev),
                   evbuffer_get_length(bufferevent_get_input(c->bev)));
    bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
    bufferevent_enable(c->bev, EV_READ);
    px_conn_arm_timer(c, c->linger_short ? LINGER_AFTER_HEAD_TIMEOUT : LINGER_TIMEOUT);
}

/* Stop reading, flush what we wrote, then linger and destroy. */
void px_conn_linger(struct px_conn *c)
{
    px_conn_upstream_drop(c);
    evtimer_del(c->timer);
    px_conn_set_state(c, PX_CONN_CLOSING);
    if (c->bev == NULL) /* an HTTP/2 stream: proxy/h2.c owns the connection */
        return px_conn_close(c);
    px_conn_wrote(c);
    bufferevent_disable(c->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        linger_start(c);
        return;
    }
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    px_conn_arm_timer(c, 10); /* a peer that never reads does not keep us */
}

void px_conn_accept(struct px_server *srv, int fd, const struct sockaddr *sa, int salen, int tls,
                    struct px_peer *peer)
{
    struct bufferevent *bev = NULL;
    int one = 1;

    (void)salen;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (tls) {
        SSL *ssl = px_tls_new_ssl(srv->tls);
        if (ssl != NULL &&
            (bev = bufferevent_openssl_socket_new(srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                  BEV_OPT_CLOSE_ON_FREE)) == NULL)
            SSL_free(ssl);
    } else {
        bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    if (bev == NULL) {
        evutil_closesocket(fd);
        px_peer_release(peer);
        return;
    }
    px_conn_attach(srv, bev, sa, tls ? PX_CONN_TLS : 0, peer);
}

/* Dotted quad: glibc's inet_ntop goes through sprintf (~1.7k instructions on
 * every accepted connection, issue 13). out holds at least 16 bytes. */
static void ipv4_str(const struct in_addr *a, char *out)
{
    const unsigned char *b = (const unsigned char *)&a->s_addr;
    size_t n = 0;

    for (int i = 0; i < 4; i++) {
        if (i)
            out[n++] = '.';
        n = px_cat_num(out, 16, n, b[i], 0);
    }
}

/* A connection (or an HTTP/2 stream's exchange) in the server's list, with
 * its timer; nothing armed. NULL when out of memory. */
static struct px_conn *conn_new(struct px_server *srv, const struct sockaddr *sa, int tls)
{
    struct px_conn *c = calloc(1, sizeof(*c));

    if (c == NULL || (c->timer = evtimer_new(srv->base, timer_cb, c)) == NULL) {
        free(c);
        return NULL;
    }
    c->srv = srv;
    c->id = ++srv->next_conn_id;
    c->tls = tls != 0;
    memcpy(&c->peer, sa,
           sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    if (sa->sa_family == AF_INET)
        ipv4_str(&((const struct sockaddr_in *)sa)->sin_addr, c->peer_ip);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, c->peer_ip,
                  sizeof(c->peer_ip));
    else
        strcpy(c->peer_ip, "unix");
    c->peer_trusted = px_config_trusted(srv->cfg, sa);
    c->next = srv->conns;
    if (srv->conns != NULL)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    return c;
}

void px_conn_attach(struct px_server *srv, struct bufferevent *bev, const struct sockaddr *sa,
                    unsigned flags, struct px_peer *peer)
{
    struct px_conn *c = conn_new(srv, sa, (flags & PX_CONN_TLS) != 0);

    if (c == NULL) {
        bufferevent_free(bev);
        px_peer_release(peer);
        return;
    }
    c->peer_slot = peer;
    c->bev = bev;
    px_metrics.accepted++;
    /* Pipelined requests wait in the input buffer; cap how much of them we hold. */
    bufferevent_setwatermark(c->bev, EV_READ, 0, srv->cfg->max_header_size + 16384);
    bufferevent_setcb(c->bev, on_client_read, on_client_write, on_client_event, c);
    /* send_timeout (nginx's): a client that stops taking our bytes for this
     * long is dropped, whatever the state (a stalled download, pipelined
     * answers never read). It only runs while bytes wait to be written.
     * HTTP/2 streams are bounded by proxy/h2.c. */
    struct timeval wr = {srv->cfg->send_timeout, 0};
    bufferevent_set_timeouts(c->bev, NULL, &wr);
    if (!c->tls) /* written at once (px_bev_send): EPOLLOUT only for a backlog */
        bufferevent_disable(c->bev, EV_WRITE);
    bufferevent_enable(c->bev, c->tls ? EV_READ | EV_WRITE : EV_READ);
    px_conn_set_state(c, PX_CONN_IDLE);
    px_conn_arm_timer(c, srv->cfg->client_header_timeout);
}

/* The connection speaks HTTP/2 (ALPN h2, or the h2c preface): the socket
 * leaves this connection for proxy/h2.c. */
static void handoff_h2(struct px_conn *c)
{
    struct bufferevent *bev = c->bev;

    c->bev = NULL;
    evtimer_del(c->timer);
    px_h2_start(c->srv, bev, (const struct sockaddr *)&c->peer, c->tls, c->peer_slot);
    c->peer_slot = NULL;
    px_conn_close(c);
}

/* ---- small writers: printf is measurable on the per-request path ---- */

/* ---- access log ---- */

static double ms_since(const struct timeval *t)
{
    struct timeval now;
    if (t->tv_sec == 0) /* never set in this exchange */
        return 0.0;
    gettimeofday(&now, NULL);
    return (double)(now.tv_sec - t->tv_sec) * 1e3 + (double)(now.tv_usec - t->tv_usec) / 1e3;
}

void px_conn_access_log(struct px_conn *c)
{
    FILE *f = c->srv->access;
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    struct px_str path = c->ex.path;
    const char *q;

    if (c->ex.logged) /* one line per exchange, whichever way it ends */
        return;
    c->ex.logged = 1;
    px_metrics_request(c->ex.route_kind, c->ex.status);
    px_metrics.bytes_out += c->ex.bytes_out;
    if (f == NULL)
        return;
    /* The query may hold DAYTONA_SANDBOX_AUTH_KEY or signatures: never log it. */
    if (path.len && (q = memchr(path.p, '?', path.len)) != NULL)
        path.len = (size_t)(q - path.p);
    if (path.len > 512)
        path.len = 512;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(f, "%s ACCESS id=%s conn=%llu peer=%s %.*s host=%s path=", ts, c->ex.reqid,
            (unsigned long long)c->id, c->peer_ip, c->ex.have_req ? (int)c->ex.req.method.len : 1,
            c->ex.have_req ? c->ex.req.method.p : "-", c->ex.loghost[0] ? c->ex.loghost : "-");
    for (size_t i = 0; i < path.len; i++) {
        unsigned char ch = (unsigned char)path.p[i];
        if (ch > 0x20 && ch < 0x7f && ch != '"')
            fputc(ch, f);
        else
            fprintf(f, "%%%02X", ch);
    }
    fprintf(f, " status=%d bytes=%llu upstream_ms=%.1f total_ms=%.1f\n", c->ex.status,
            (unsigned long long)c->ex.bytes_out, ms_since(&c->ex.t_upstream),
            ms_since(&c->ex.t_start));
}

/* ---- local responses ---- */

int px_conn_wants_html(const struct px_conn *c)
{
    const struct px_hdr *a;

    if (!c->ex.have_req || (a = px_head_get(&c->ex.req, PX_STR("accept"))) == NULL)
        return 0;
    for (size_t i = 0; i + 9 <= a->value.len; i++)
        if (!strncasecmp(a->value.p + i, "text/html", 9))
            return 1;
    return 0;
}

struct evbuffer *px_conn_in(struct px_conn *c)
{
    if (c->h2s != NULL)
        return px_h2s_in(c->h2s);
    return c->bev != NULL ? bufferevent_get_input(c->bev) : NULL;
}

struct evbuffer *px_conn_out(struct px_conn *c)
{
    if (c->h2s != NULL)
        return px_h2s_out(c->h2s);
    return c->bev != NULL ? bufferevent_get_output(c->bev) : NULL;
}

void px_conn_wrote(struct px_conn *c)
{
    if (c->h2s != NULL)
        px_h2s_wrote(c->h2s);
    else if (c->bev != NULL && !c->tls)
        px_bev_send(c->bev);
}

void px_bev_send(struct bufferevent *bev)
{
    struct evbuffer *out = bufferevent_get_output(bev);

    if (evbuffer_get_length(out) == 0 || (bufferevent_get_enabled(bev) & EV_WRITE))
        return; /* nothing to send, or waiting for the socket: libevent writes then */
    /* A socket bufferevent keeps the front of its output frozen except while
     * it writes itself; we write on its behalf, then restore that. On an
     * error the bytes stay: libevent's own write meets it again and reports
     * it to the event callback, which knows what it means. */
    evbuffer_unfreeze(out, 1);
    (void)evbuffer_write(out, bufferevent_getfd(bev));
    evbuffer_freeze(out, 1);
    if (evbuffer_get_length(out) > 0)
        bufferevent_enable(bev, EV_WRITE); /* the rest when the socket takes it */
}

void px_conn_head_begin(struct px_conn *c, struct px_headw *w, struct px_hbuf *hb)
{
    if (c->bev == NULL) { /* HTTP/2: fields for HEADERS */
        px_hw_init(w, NULL);
        return;
    }
    px_hb_init(hb, bufferevent_get_output(c->bev));
    px_hw_init(w, hb);
}

void px_conn_head_end(struct px_conn *c, struct px_headw *w, int has_body)
{
    if (w->hb != NULL)
        px_hw_end(w);
    else if (c->h2s != NULL && px_h2s_head(c->h2s, w, has_body) != 0)
        clog(c, PX_WARN, "HTTP/2 response head refused by the session");
}

/* Writes a complete response of our own. The connection is kept only if the
 * request body is fully read and the client wants it kept. */
void px_conn_respond(struct px_conn *c, int status, const char *ctype, struct evbuffer *body,
                     const char *extra_headers)
{
    struct px_hbuf hb;
    struct px_headw w;
    const char *reason = px_status_text(status);
    size_t blen = body ? evbuffer_get_length(body) : 0;
    int minor = c->ex.have_req ? c->ex.req.http_minor : 1;
    int send_body = body != NULL && !(c->ex.have_req && c->ex.req.m == HTTP_HEAD);

    if (!c->ex.req_done || c->srv->draining)
        c->ex.keepalive = 0;
    c->ex.status = status;
    px_conn_head_begin(c, &w, &hb);
    px_hw_status(&w, minor, status, px_str_make(reason, strlen(reason)));
    px_hw_lit(&w, "Server", "preview-proxy");
    px_hw_field_u64(&w, PX_STR("Content-Length"), blen);
    if (ctype != NULL) {
        px_hw_field(&w, PX_STR("Content-Type"), px_str_make(ctype, strlen(ctype)));
        px_hw_lit(&w, "Cache-Control", "no-store");
    }
    if (extra_headers != NULL)
        px_hw_lines(&w, extra_headers, strlen(extra_headers));
    if (c->ex.set_cookie != NULL)
        px_hw_lines(&w, c->ex.set_cookie, strlen(c->ex.set_cookie));
    if (c->ex.have_req) /* so that fetch() can read our errors too */
        px_cors_headers(&w, &c->ex.req, PX_CORS_REQ(c->srv->cfg, c->ex.label, c->ex.sb));
    if (w.hb != NULL && !c->ex.keepalive)
        px_hw_lit(&w, "Connection", "close");
    else if (w.hb != NULL && minor == 0)
        px_hw_lit(&w, "Connection", "keep-alive");
    px_conn_head_end(c, &w, send_body && blen > 0);
    if (send_body && blen > 0 && px_conn_out(c) != NULL) {
        c->ex.bytes_out = blen;
        /* A small body is copied: moving its chain would leave a mostly empty
         * block per answer in a backlog of pipelined answers (issue 9). */
        if (blen <= 4096)
            evbuffer_add(px_conn_out(c), evbuffer_pullup(body, -1), blen);
        else
            evbuffer_add_buffer(px_conn_out(c), body);
    }
    px_conn_exchange_done(c); /* sends it (or batches it with the next pipelined answer) */
}

void px_conn_respond_preflight(struct px_conn *c)
{
    struct px_hbuf hb;
    struct px_headw w;

    if (!c->ex.req_done || c->srv->draining)
        c->ex.keepalive = 0;
    c->ex.status = 204;
    px_conn_head_begin(c, &w, &hb);
    px_hw_status(&w, c->ex.req.http_minor, 204,
                 px_str_make(px_status_text(204), strlen(px_status_text(204))));
    px_hw_lit(&w, "Server", "preview-proxy");
    px_cors_preflight_headers(&w, &c->ex.req, PX_CORS_REQ(c->srv->cfg, c->ex.label, c->ex.sb));
    if (w.hb != NULL && !c->ex.keepalive)
        px_hw_lit(&w, "Connection", "close");
    px_conn_head_end(c, &w, 0);
    px_conn_exchange_done(c);
}

/* "pid-counter" in hex: unique per process lifetime (X-Request-Id, the log). */
static void px_conn_new_reqid(struct px_conn *c)
{
    size_t n = px_cat_num(c->ex.reqid, sizeof(c->ex.reqid), 0, (unsigned)c->srv->pid, 1);

    n = px_cat(c->ex.reqid, sizeof(c->ex.reqid), n, "-", 1);
    px_cat_num(c->ex.reqid, sizeof(c->ex.reqid), n, ++c->srv->next_req_id, 1);
}

void px_conn_fail(struct px_conn *c, int status, const char *code, const char *message)
{
    struct evbuffer *body = evbuffer_new();
    struct px_error e = {status, code, message};
    struct px_str method = c->ex.have_req ? c->ex.req.method : PX_STR("-");
    struct px_str path = c->ex.path;
    const char *q, *ctype;

    if (path.len && (q = memchr(path.p, '?', path.len)) != NULL)
        path.len = (size_t)(q - path.p);
    if (body == NULL) {
        px_conn_close(c);
        return;
    }
    if (c->ex.reqid[0] == '\0')
        px_conn_new_reqid(c);
    ctype = px_error_body(c->srv->cfg, body, &e, method, path, c->ex.reqid, px_conn_wants_html(c));
    if (status >= 500 && px_log_allow(10)) /* a dead runner must not flood the log */
        clog(c, PX_WARN, "%d %s", status, message ? message : px_status_text(status));
    /* A 503 is a backend (Redis, the Daytona API) that is away: say when to retry. */
    px_conn_respond(c, status, ctype, body, status == 503 ? "Retry-After: 5\r\n" : NULL);
    evbuffer_free(body);
}

/* A request we cannot even frame: answer and close, nothing is forwarded. */
void px_conn_fail_close(struct px_conn *c, int status, const char *message)
{
    c->ex.keepalive = 0;
    c->ex.req_done = 0;
    px_conn_fail(c, status, NULL, message);
}

/* ---- request head ---- */

void px_conn_loghost(struct px_conn *c, const struct px_host *h, int label_is_id)
{
    char *o = c->ex.loghost;
    size_t cap = sizeof(c->ex.loghost), n;

    if (c->ex.toolbox)
        px_cat(o, cap, 0, "toolbox", 7);
    else if (h == NULL)
        px_cat(o, cap, 0, "-", 1);
    else if (c->ex.port == 0) /* base host */
        px_cat(o, cap, 0, h->name.p, h->name.len > 60 ? 60 : h->name.len);
    else {
        n = px_cat_num(o, cap, 0, c->ex.port, 0);
        if (label_is_id) {
            n = px_cat(o, cap, n, "-", 1);
            px_cat(o, cap, n, h->label.p, h->label.len > 64 ? 64 : h->label.len);
        } else /* may be a signed token: a credential (SPEC 11) */
            px_cat(o, cap, n, "-<signed>", 9);
    }
}

void px_bev_slurp(struct bufferevent *bev, size_t budget)
{
    evutil_socket_t fd = bufferevent_getfd(bev);
    struct evbuffer *in = bufferevent_get_input(bev);

    /* A socket bufferevent keeps the back of its input frozen except while it
     * reads itself; we read on its behalf, then restore that. */
    evbuffer_unfreeze(in, 0);
    while (fd >= 0 && budget > 0) {
        struct evbuffer_iovec v[1];
        size_t want = budget < 65536 ? budget : 65536;
        if (evbuffer_reserve_space(in, (ev_ssize_t)want, v, 1) < 1)
            break;
        ssize_t n = read(fd, v[0].iov_base, want);
        if (n <= 0) { /* EAGAIN, EOF or an error: libevent's own read reports it */
            evbuffer_commit_space(in, v, 0);
            break;
        }
        v[0].iov_len = (size_t)n;
        evbuffer_commit_space(in, v, 1);
        if ((size_t)n < want)
            break; /* the socket is drained */
        budget -= (size_t)n;
    }
    evbuffer_freeze(in, 0);
}

struct px_str px_path_only(struct px_str p)
{
    const char *q = memchr(p.p, '?', p.len);
    return q ? px_str_make(p.p, (size_t)(q - p.p)) : p;
}

/* Called once the body framing of the request is known. */
static void parse_head(struct px_conn *c, size_t head_len)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    const char *why = NULL;
    int status = 400;
    const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)head_len);

    gettimeofday(&c->ex.t_start, NULL);
    px_conn_new_reqid(c);
    if (data == NULL)
        return px_conn_close(c);
    if (px_h1_parse_request(&c->ex.req, data, head_len, c->srv->cfg->max_headers, &status, &why) !=
        0) {
        evbuffer_drain(in, head_len);
        px_head_free(&c->ex.req);
        clog(c, PX_INFO, "rejected request: %s", why);
        return px_conn_fail_close(c, status, why);
    }
    c->ex.have_req = 1;
    evbuffer_drain(in, head_len);
    c->nreq++;
    c->ex.keepalive = c->ex.req.keepalive && !c->srv->draining;
    if (c->ex.req.chunked) {
        c->ex.req_body = BODY_CHUNKED;
    } else if (c->ex.req.content_length > 0) {
        c->ex.req_body = BODY_LENGTH;
        c->ex.req_left = c->ex.req.content_length;
    } else {
        c->ex.req_body = BODY_NONE;
        c->ex.req_done = 1;
    }
    if (c->srv->cfg->max_body_size > 0 &&
        c->ex.req.content_length > (int64_t)c->srv->cfg->max_body_size)
        return px_conn_fail_close(c, 413, "request body larger than max_body_size");
    px_conn_set_state(c, PX_CONN_AUTH);
    px_route_request(c);
}

static void read_head(struct px_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    const struct px_config *cfg = c->srv->cfg;
    size_t head_len = 0;
    int status = 400;

    if (evbuffer_get_length(in) == 0)
        return;
    if (c->nreq == 0) {
        /* h2c with prior knowledge (RFC 9113 3.3) starts with this preface. */
        static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        char head[sizeof(preface) - 1];
        ev_ssize_t n = evbuffer_copyout(in, head, sizeof(head));
        if (n > 0 && !memcmp(head, preface, (size_t)n)) {
            if ((size_t)n == sizeof(head))
                return handoff_h2(c);
            return; /* a prefix of the preface: wait for the rest */
        }
    }
    enum px_parse r =
        px_h1_find_head(in, cfg->max_request_line, cfg->max_header_size, &head_len, &status);
    if (c->state == PX_CONN_IDLE && r == PX_PARSE_AGAIN) {
        /* A head that came whole needs no header timer (issue 13: one timer
         * add less per request); a partial one starts client_header_timeout. */
        px_conn_set_state(c, PX_CONN_HEAD);
        px_conn_arm_timer(c, cfg->client_header_timeout);
        /* The access log's total_ms counts from here when the head never
         * completes (a 408 on client_header_timeout): parse_head() sets it
         * again otherwise. Unset, it logged milliseconds since 1970. */
        gettimeofday(&c->ex.t_start, NULL);
    }
    switch (r) {
    case PX_PARSE_AGAIN: return;
    case PX_PARSE_BAD:
        evbuffer_drain(in, evbuffer_get_length(in));
        return px_conn_fail_close(c, status,
                                  status == 414   ? "request line too long"
                                  : status == 431 ? "request header fields too large"
                                                  : "malformed request head");
    case PX_PARSE_OK: evtimer_del(c->timer); return parse_head(c, head_len);
    }
}

/* ---- auth ---- */

/* ---- forwarding ---- */

/* ---- response ---- */

/* ---- WebSocket: hand over to ws/ after 101 ---- */

/* ---- exchange end ---- */

void px_conn_exchange_done(struct px_conn *c)
{
    const struct px_config *cfg = c->srv->cfg;

    px_conn_access_log(c);
    px_conn_upstream_drop(c);
    /* HTTP/1.1: what is queued leaves now, unless a pipelined request waits
     * behind this one inside a callback of c: px_conn_step() answers it
     * first and sends the answers together (one write, not one each). */
    if (c->bev != NULL && (c->busy == 0 || !c->ex.keepalive ||
                           evbuffer_get_length(bufferevent_get_input(c->bev)) == 0))
        px_conn_wrote(c);
    if (c->h2_stream) { /* one exchange per stream: it ends with its response */
        if (c->h2s != NULL)
            px_h2s_finish(c->h2s, 1);
        c->h2s = NULL;
        exchange_reset(c);
        px_conn_set_state(c, PX_CONN_CLOSING);
        return px_conn_close(c);
    }
    if (!c->ex.keepalive) {
        c->close_asked = c->ex.have_req && !c->ex.req.keepalive && c->ex.req_done;
        exchange_reset(c);
        return px_conn_linger(c);
    }
    exchange_reset(c);
    px_conn_set_state(c, PX_CONN_IDLE);
    /* Reading may be off (a half-closed client, an upload paused by
     * backpressure); the read watermark set at attach never changes before
     * the linger, which ends the connection. */
    if (!(bufferevent_get_enabled(c->bev) & EV_READ))
        bufferevent_enable(c->bev, EV_READ);
    px_conn_arm_timer(c, cfg->keepalive_timeout);
    /* A pipelined request may already be waiting; px_conn_step() picks it up
     * (the caller loops while the state is IDLE with input). */
}

/* ---- callbacks ---- */

/* A client that pipelines requests and never reads would make us pile up
 * answers without bound (issue 9: 200,000 pipelined 404s grew RSS by 190 MB).
 * Before starting the next exchange, check what the client has not taken yet:
 * above PX_HIGH_WATER, stop reading until it drains to half of that
 * (on_client_write resumes); send_timeout drops a client that takes nothing.
 * The input side is already
 * bounded by the read watermark, so a pipelining client holds at most
 * PX_HIGH_WATER + max_header_size + 16 KiB here. Returns 1 when paused. */
static int output_backlogged(struct px_conn *c)
{
    px_conn_wrote(c); /* what the kernel takes is no backlog */
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) <= PX_HIGH_WATER)
        return 0;
    if (!c->out_paused) {
        c->out_paused = 1;
        bufferevent_disable(c->bev, EV_READ);
        bufferevent_setwatermark(c->bev, EV_WRITE, PX_HIGH_WATER / 2, 0);
        evtimer_del(c->timer); /* not idle: send_timeout bounds the wait */
    }
    return 1;
}

static void output_resume(struct px_conn *c)
{
    c->out_paused = 0;
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    bufferevent_enable(c->bev, EV_READ);
    px_conn_arm_timer(c, c->srv->cfg->keepalive_timeout);
}

static void step_loop(struct px_conn *c)
{
    /* Loop so that pipelined requests answered locally are all processed. */
    for (int guard = 0; guard < 64 && !c->doomed; guard++) {
        uint64_t before = c->srv->next_req_id;
        switch (c->state) {
        case PX_CONN_IDLE:
            if (output_backlogged(c))
                return;
            read_head(c);
            break;
        case PX_CONN_HEAD: read_head(c); break;
        case PX_CONN_AUTH: return;
        case PX_CONN_STREAM: px_fwd_pump_request(c); return;
        case PX_CONN_CLOSING:
            if (c->bev == NULL)
                return;
            evbuffer_drain(bufferevent_get_input(c->bev),
                           evbuffer_get_length(bufferevent_get_input(c->bev)));
            if (c->lingering) { /* the client still talks: give it more time, within bounds */
                time_t left = c->linger_until - time(NULL);
                if (left <= 0)
                    px_conn_close(c);
                else
                    px_conn_arm_timer(c, left < LINGER_TIMEOUT ? (int)left : LINGER_TIMEOUT);
            }
            return;
        }
        /* Go round again only if a whole exchange finished and more input waits. */
        if (c->doomed || c->state != PX_CONN_IDLE || before == c->srv->next_req_id ||
            c->bev == NULL || evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
            return;
    }
}

void px_conn_step(struct px_conn *c)
{
    step_loop(c);
    if (c->doomed || c->bev == NULL)
        return;
    px_conn_wrote(c); /* the answers the loop batched, in one write */
    /* 64 pipelined requests answered and more waiting: yield to the other
     * connections and come back on the next loop pass. The socket is
     * writable, so its write callback runs then, and its LEAVE() steps. */
    if (c->state == PX_CONN_IDLE && !c->out_paused && !c->tls &&
        evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        bufferevent_enable(c->bev, EV_WRITE);
}

static void on_client_read(struct bufferevent *bev, void *arg)
{
    struct px_conn *c = arg;

    ENTER(c);
    /* Request bodies (uploads): bigger bites, as for responses in forward.c. */
    if (c->state == PX_CONN_STREAM && !c->ex.req_done && !c->tls && c->ex.up != NULL &&
        evbuffer_get_length(bufferevent_get_output(c->ex.up->bev)) < PX_HIGH_WATER)
        px_bev_slurp(bev, PX_HIGH_WATER);
    px_conn_step(c);
    LEAVE(c);
}

static void on_client_write(struct bufferevent *bev, void *arg)
{
    struct px_conn *c = arg;
    (void)bev;

    ENTER(c);
    /* Drained: back to writing at once (px_bev_send). */
    if (!c->tls && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        bufferevent_disable(c->bev, EV_WRITE);
    switch (c->state) {
    case PX_CONN_CLOSING:
        if (!c->lingering && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            linger_start(c);
        break;
    case PX_CONN_STREAM:
        /* The client drained below the low mark: resume reading the runner. */
        if (c->ex.up != NULL) {
            bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
            bufferevent_enable(c->ex.up->bev, EV_READ);
            if (evbuffer_get_length(bufferevent_get_input(c->ex.up->bev)))
                px_fwd_on_response(c);
        }
        break;
    case PX_CONN_IDLE:
        /* Pipelined requests wait until the client has taken our answers. */
        if (c->out_paused &&
            evbuffer_get_length(bufferevent_get_output(c->bev)) <= PX_HIGH_WATER / 2)
            output_resume(c); /* LEAVE() steps into the waiting request */
        break;
    case PX_CONN_HEAD:
    case PX_CONN_AUTH: break;
    }
    LEAVE(c);
}

static void on_client_event(struct bufferevent *bev, short what, void *arg)
{
    struct px_conn *c = arg;
    (void)bev;

    if (what & BEV_EVENT_CONNECTED) { /* TLS handshake done */
        SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
        ENTER(c);
        if (ssl != NULL && px_tls_is_h2(ssl))
            handoff_h2(c);
        LEAVE(c);
        return;
    }
    ENTER(c);
    switch (c->state) {
    case PX_CONN_IDLE:
    case PX_CONN_HEAD:
    case PX_CONN_AUTH:
    case PX_CONN_CLOSING: px_conn_close(c); break;
    case PX_CONN_STREAM:
        if (what & BEV_EVENT_TIMEOUT) {
            /* issue 9: a stalled body or a client that stops reading must not
             * hold a client fd and a runner fd forever */
            int body = (what & BEV_EVENT_READING) != 0;
            if (px_log_allow(10))
                clog(c, PX_INFO, "%s: closing",
                     body ? "client_body_timeout (request body stalled)"
                          : "send_timeout (client stopped reading)");
            px_conn_abort(c, body ? 408 : 0, "the request body did not arrive in time");
            break;
        }
        if ((what & BEV_EVENT_EOF) && c->ex.req_done) {
            /* Half-close after a complete request: finish the response, then close. */
            c->ex.keepalive = 0;
            bufferevent_disable(c->bev, EV_READ);
            break;
        }
        clog(c, PX_DEBUG, "client went away mid-exchange");
        px_conn_abort(c, 0, NULL);
        break;
    }
    LEAVE(c);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct px_conn *c = arg;
    (void)fd;
    (void)what;

    ENTER(c);
    switch (c->state) {
    case PX_CONN_HEAD:
        clog(c, PX_INFO, "client_header_timeout: closing");
        c->linger_short = 1;
        px_conn_fail_close(c, 408, "the request head did not arrive in time");
        break;
    case PX_CONN_STREAM: {
        /* SPEC 8: a long response (SSE, a download) keeps its sandbox awake --
         * while it moves, or while it waits on the runner (an idle SSE stream).
         * An exchange stalled on its client (a body that stopped coming, a
         * client that stopped reading) does not (issue 9). */
        uint64_t progress = c->ex.bytes_out + c->ex.req_bytes;
        struct evbuffer *out = px_conn_out(c);
        int waits_on_client = !c->ex.req_done || (out != NULL && evbuffer_get_length(out) > 0);
        if (c->ex.sb != NULL && !c->ex.no_activity &&
            (progress != c->ex.progress_seen || !waits_on_client))
            px_activity_touch(c->ex.sb->id, c->srv->cfg->activity_interval);
        c->ex.progress_seen = progress;
        px_conn_arm_timer(c, PX_ACTIVITY_REFRESH(c->srv->cfg->activity_interval));
        break;
    }
    case PX_CONN_IDLE:
    case PX_CONN_CLOSING:
    case PX_CONN_AUTH: px_conn_close(c); break;
    }
    LEAVE(c);
}

void px_server_maybe_exit(struct px_server *srv)
{
    if (srv->draining && srv->nconns == 0 && srv->nsplices == 0 && srv->nh2 == 0)
        event_base_loopexit(srv->base, NULL);
}

/* ---- HTTP/2 streams (proxy/h2.c) ---- */

void px_conn_h2_open(struct px_server *srv, struct px_h2s *s, struct px_head *req, int status,
                     const char *why, const struct sockaddr *peer, int tls)
{
    struct px_conn *c = conn_new(srv, peer, tls);

    if (c == NULL) {
        if (status == 0)
            px_head_free(req);
        px_h2s_finish(s, 0);
        return;
    }
    c->h2_stream = 1;
    px_metrics.h2_streams++;
    px_metrics.accepted++; /* as before issue 13: each stream counts as a connection */
    c->h2s = s;
    px_h2s_attach(s, c);
    ENTER(c);
    gettimeofday(&c->ex.t_start, NULL);
    px_conn_new_reqid(c);
    c->nreq = 1;
    if (status != 0) {
        clog(c, PX_INFO, "rejected request: %s", why);
        px_conn_fail_close(c, status, why);
        LEAVE(c);
        return;
    }
    c->ex.req = *req; /* moved: the exchange frees it */
    c->ex.have_req = 1;
    if (c->ex.req.content_length > 0) {
        c->ex.req_body = BODY_LENGTH;
        c->ex.req_left = c->ex.req.content_length;
    } else if (c->ex.req.content_length == 0 || c->ex.req.ws_upgrade || px_h2s_in_ended(s)) {
        c->ex.req_body = BODY_NONE; /* a WebSocket's bytes come after the 101 (a tunnel) */
        c->ex.req_done = 1;
    } else {
        c->ex.req_body = BODY_STREAM;
    }
    if (srv->cfg->max_body_size > 0 &&
        c->ex.req.content_length > (int64_t)srv->cfg->max_body_size) {
        px_conn_fail_close(c, 413, "request body larger than max_body_size");
    } else {
        px_conn_set_state(c, PX_CONN_AUTH);
        px_route_request(c);
    }
    LEAVE(c);
}

void px_conn_h2_input(struct px_conn *c)
{
    ENTER(c);
    if (c->state == PX_CONN_STREAM)
        px_fwd_pump_request(c);
    LEAVE(c);
}

void px_conn_h2_drained(struct px_conn *c)
{
    ENTER(c);
    if (c->state == PX_CONN_STREAM && c->ex.up != NULL) {
        bufferevent_enable(c->ex.up->bev, EV_READ);
        if (evbuffer_get_length(bufferevent_get_input(c->ex.up->bev)))
            px_fwd_on_response(c);
    }
    LEAVE(c);
}

void px_conn_h2_gone(struct px_conn *c)
{
    c->h2s = NULL;
    ENTER(c);
    clog(c, PX_DEBUG, "HTTP/2 stream gone mid-exchange");
    px_conn_abort(c, 0, NULL);
    LEAVE(c);
}

/* ---- drain ---- */

/* Has the client sent bytes we have not read or handled yet? */
static int pending_input(struct px_conn *c)
{
    int n = 0;

    return evbuffer_get_length(bufferevent_get_input(c->bev)) > 0 ||
           (ioctl(bufferevent_getfd(c->bev), FIONREAD, &n) == 0 && n > 0);
}

/* Idle keep-alive connections close now: a client that reuses one gets EOF
 * before sending or before any answer, which HTTP clients retry (RFC 9112
 * 9.3.1). A connection not yet used, or with a request already on its way, is
 * not idle for its client: closing it would fail a request that cannot be
 * retried safely (a fresh connection, or an RST that loses the request). It
 * gets its answer with Connection: close, within client_header_timeout. */
void px_conn_drain_all(struct px_server *srv)
{
    struct px_conn *c = srv->conns, *next;

    srv->draining = 1;
    for (; c != NULL; c = next) {
        next = c->next;
        if (c->state == PX_CONN_IDLE && c->bev != NULL &&
            (c->h2_stream || (c->nreq > 0 && !pending_input(c))))
            px_conn_close(c);
        else
            c->ex.keepalive = 0;
    }
    px_h2_drain_all(srv);
    px_server_maybe_exit(srv);
}

void px_conn_close_all(struct px_server *srv)
{
    while (srv->conns != NULL)
        px_conn_destroy(srv->conns);
    px_splice_close_all(srv);
    px_h2_close_all(srv);
}

/* conn.c — a client connection, from accept() until its last byte is flushed.
 *
 * The conductor: reads a request head, routes it (routing/), authenticates it
 * (auth/), forwards it to the runner over a pooled upstream connection
 * (upstream.c), and relays the response. One request is in flight per
 * connection; pipelined requests wait in the input buffer, so responses leave
 * in order. Bodies move between evbuffers without copying, with backpressure:
 * when the receiving side's output passes PX_HIGH_WATER the sending side stops
 * reading until it drains to half. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <event2/event.h>

#include "auth/activity.h"
#include "auth/auth.h"
#include "auth/lookup.h"
#include "proxy/browser.h"
#include "proxy/errors.h"
#include "proxy/h1.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/upstream.h"
#include "routing/route.h"
#include "routing/store.h"
#include "tls/h2.h"
#include "tls/tls.h"
#include "ws/ws.h"

#define PX_HIGH_WATER (256 * 1024)
#define PX_REPLAY_MAX (256 * 1024) /* SPEC 9: retry only bodies buffered whole */
#define PX_MAX_RESP_HEAD (64 * 1024)

enum px_conn_state {
    PX_CONN_IDLE = 0, /* between requests; keepalive timer armed */
    PX_CONN_HEAD,     /* reading a request head; header timer armed */
    PX_CONN_AUTH,     /* auth lookup in flight; no timer (the lookup has its own) */
    PX_CONN_STREAM,   /* request forwarded; upstream timers on the upstream bev */
    PX_CONN_CLOSING,  /* flushing our output, then destroy */
};

enum body_kind { BODY_NONE = 0, BODY_LENGTH, BODY_CHUNKED, BODY_EOF };

enum resp_state { RESP_HEAD = 0, RESP_BODY, RESP_DONE };

struct px_conn {
    uint64_t id;                 /* for logs; never reused */
    enum px_conn_state state;
    struct px_server *srv;       /* borrowed; outlives us */
    struct bufferevent *bev;     /* owned; frees the fd */
    struct event *timer;         /* owned; keepalive / header timer */
    char peer_ip[INET6_ADDRSTRLEN];
    struct sockaddr_storage peer;
    unsigned tls : 1;            /* the client reached us over TLS */
    unsigned h2_stream : 1;      /* an HTTP/2 stream bridged by tls/h2.c */
    unsigned nreq;               /* requests seen on this connection */
    unsigned peer_trusted : 1;
    unsigned busy;               /* >0 while our frames are on the stack */
    unsigned doomed : 1;         /* destroy as soon as busy == 0 */
    struct px_conn *next, *prev; /* srv->conns */

    /* The current exchange; reset by exchange_reset(). */
    struct px_head req;          /* owned */
    int have_req;
    char reqid[24];
    struct timeval t_start, t_upstream;
    char loghost[80];            /* redacted host for the access log */
    char host[256];              /* lowercased Host; the auth label points into it */
    struct px_str label;         /* slice of host (or of req.buf for toolbox) */
    struct px_str authority;     /* the routed authority as received: absolute-form target, else Host */
    char *set_cookie;            /* owned; a full Set-Cookie line for the response, or NULL */
    struct px_str path;          /* slice of req.buf: path+query as received */
    struct px_auth *auth;        /* owned by auth/; we only cancel it */
    struct px_lk *dom_lk;        /* owned by lookup.c; custom-domain lookup, we only cancel it */
    char dom_sandbox[256];       /* the sandbox a custom domain names; the label points here */
    struct px_host hinfo;        /* the parsed Host; slices into host */
    struct px_sandbox *sb;       /* owned; the resolved sandbox */
    unsigned port;               /* preview port */
    unsigned toolbox : 1;
    unsigned drop_authorization : 1;
    struct px_str toolbox_rest;  /* slice of req.buf */
    struct px_str query_token;   /* slice of req.buf */
    unsigned has_query_token : 1;

    enum body_kind req_body;
    int64_t req_left;            /* BODY_LENGTH: bytes still to read */
    struct px_chunked req_ch;
    unsigned req_done : 1;       /* whole request body read from the client */
    unsigned keepalive : 1;      /* keep the client connection after this exchange */

    struct px_upstream *up;      /* owned; NULL until forwarded */
    struct evbuffer *replay;     /* owned; bytes sent on a reused connection, for one retry */
    unsigned retried : 1;
    unsigned resp_seen : 1;      /* any response byte came back */

    enum resp_state resp_st;
    struct px_head resp;         /* owned */
    enum body_kind resp_body;
    int64_t resp_left;
    struct px_chunked resp_ch;
    unsigned resp_chunk_out : 1; /* we chunk an EOF-delimited body for the client */
    unsigned up_reusable : 1;
    unsigned no_activity : 1;    /* X-Daytona-Skip-Last-Activity-Update: true */
    int status;                  /* status sent to the client, 0 before */
    uint64_t bytes_out;          /* response body bytes sent */
};

static void conn_step(struct px_conn *c);
static void on_client_read(struct bufferevent *bev, void *arg);
static void on_client_write(struct bufferevent *bev, void *arg);
static void on_client_event(struct bufferevent *bev, short what, void *arg);
static void on_up_read(struct bufferevent *bev, void *arg);
static void on_up_write(struct bufferevent *bev, void *arg);
static void on_up_event(struct bufferevent *bev, short what, void *arg);
static void exchange_done(struct px_conn *c);
static void conn_close(struct px_conn *c);

static const char *state_name(enum px_conn_state st)
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

#define clog(c, lvl, ...)                                                                          \
    do {                                                                                           \
        if ((lvl) <= px_log_level) {                                                               \
            char ctx_[160];                                                                        \
            snprintf(ctx_, sizeof(ctx_), "conn=%llu st=%s host=%s",                                \
                     (unsigned long long)(c)->id, state_name((c)->state),                          \
                     (c)->loghost[0] ? (c)->loghost : "-");                                        \
            px_logf((lvl), ctx_, __VA_ARGS__);                                                     \
        }                                                                                          \
    } while (0)

static void set_state(struct px_conn *c, enum px_conn_state next)
{
    clog(c, PX_DEBUG, "%s -> %s", state_name(c->state), state_name(next));
    c->state = next;
}

static void arm_timer(struct px_conn *c, int seconds)
{
    struct timeval tv = {seconds, 0};
    evtimer_add(c->timer, &tv);
}

/* ---- lifetime ---- */

static void upstream_drop(struct px_conn *c)
{
    if (c->up != NULL) {
        px_upstream_release(c->srv->pool, c->up, 0);
        c->up = NULL;
    }
}

static void exchange_reset(struct px_conn *c)
{
    if (c->auth != NULL) {
        px_auth_cancel(c->auth);
        c->auth = NULL;
    }
    if (c->dom_lk != NULL) {
        px_lookup_cancel(c->dom_lk);
        c->dom_lk = NULL;
    }
    px_head_free(&c->req);
    px_head_free(&c->resp);
    px_chunked_reset(&c->req_ch);
    px_chunked_reset(&c->resp_ch);
    px_sandbox_free(c->sb);
    c->sb = NULL;
    if (c->replay != NULL) {
        evbuffer_free(c->replay);
        c->replay = NULL;
    }
    free(c->set_cookie);
    c->set_cookie = NULL;
    c->label = PX_STR_NULL;
    c->have_req = 0;
    c->loghost[0] = '\0';
    c->path = PX_STR_NULL;
    c->port = 0;
    c->toolbox = c->drop_authorization = c->has_query_token = 0;
    c->req_body = BODY_NONE;
    c->req_left = 0;
    c->req_done = 0;
    c->retried = c->resp_seen = 0;
    c->resp_st = RESP_HEAD;
    c->resp_body = BODY_NONE;
    c->resp_left = 0;
    c->resp_chunk_out = c->up_reusable = 0;
    c->status = 0;
    c->bytes_out = 0;
    c->no_activity = 0;
}

static void conn_destroy(struct px_conn *c)
{
    struct px_server *srv = c->srv;

    exchange_reset(c);
    upstream_drop(c);
    if (c->timer != NULL)
        event_free(c->timer);
    if (c->bev != NULL) {
        /* An HTTP/2 stream's pair end must hear that we are gone. */
        if (c->h2_stream)
            bufferevent_flush(c->bev, EV_READ | EV_WRITE, BEV_FINISHED);
        bufferevent_free(c->bev);
    }
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    srv->nconns--;
    free(c);
    if (srv->draining && srv->nconns == 0 && srv->nsplices == 0 && srv->nh2 == 0)
        event_base_loopexit(srv->base, NULL);
}

/* Safe at any depth (STYLE 8). */
static void conn_close(struct px_conn *c)
{
    c->doomed = 1;
    if (c->busy == 0)
        conn_destroy(c);
}

#define ENTER(c) ((c)->busy++)
/* Leaving a callback: a finished exchange may leave a pipelined request waiting. */
#define LEAVE(c)                                                                                   \
    do {                                                                                           \
        if ((c)->busy == 1 && !(c)->doomed && (c)->state == PX_CONN_IDLE &&                        \
            evbuffer_get_length(bufferevent_get_input((c)->bev)) > 0)                              \
            conn_step(c);                                                                          \
        if (--(c)->busy == 0 && (c)->doomed)                                                       \
            conn_destroy(c);                                                                       \
    } while (0)

/* Stop reading, flush what we wrote, then destroy. */
static void conn_linger(struct px_conn *c)
{
    upstream_drop(c);
    evtimer_del(c->timer);
    set_state(c, PX_CONN_CLOSING);
    bufferevent_disable(c->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        conn_close(c);
        return;
    }
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    arm_timer(c, 10); /* a peer that never reads does not keep us */
}

static void timer_cb(evutil_socket_t fd, short what, void *arg);

void px_conn_accept(struct px_server *srv, int fd, const struct sockaddr *sa, int salen, int tls)
{
    struct bufferevent *bev;
    int one = 1;

    (void)salen;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (tls) {
        SSL *ssl = px_tls_new_ssl(srv->tls);
        if (ssl == NULL) {
            evutil_closesocket(fd);
            return;
        }
        bev = bufferevent_openssl_socket_new(srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                             BEV_OPT_CLOSE_ON_FREE);
        if (bev == NULL) {
            SSL_free(ssl);
            evutil_closesocket(fd);
            return;
        }
    } else if ((bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE)) == NULL) {
        evutil_closesocket(fd);
        return;
    }
    px_conn_attach(srv, bev, sa, tls ? PX_CONN_TLS : 0);
}

void px_conn_attach(struct px_server *srv, struct bufferevent *bev, const struct sockaddr *sa,
                    unsigned flags)
{
    struct px_conn *c = calloc(1, sizeof(*c));

    if (c == NULL || (c->timer = evtimer_new(srv->base, timer_cb, c)) == NULL) {
        free(c);
        bufferevent_free(bev);
        return;
    }
    c->srv = srv;
    c->id = ++srv->next_conn_id;
    c->bev = bev;
    px_metrics.accepted++;
    c->tls = (flags & PX_CONN_TLS) != 0;
    c->h2_stream = (flags & PX_CONN_H2_STREAM) != 0;
    memcpy(&c->peer, sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                   : sizeof(struct sockaddr_in));
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->peer_ip,
                  sizeof(c->peer_ip));
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
    /* Pipelined requests wait in the input buffer; cap how much of them we hold. */
    bufferevent_setwatermark(c->bev, EV_READ, 0, srv->cfg->max_header_size + 16384);
    bufferevent_setcb(c->bev, on_client_read, on_client_write, on_client_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    set_state(c, PX_CONN_IDLE);
    arm_timer(c, srv->cfg->client_header_timeout);
    if (c->h2_stream && evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        on_client_read(bev, c);
}

/* The connection speaks HTTP/2 (ALPN h2, or the h2c preface): the socket
 * leaves this connection for tls/h2.c. */
static void handoff_h2(struct px_conn *c)
{
    struct bufferevent *bev = c->bev;

    c->bev = NULL;
    evtimer_del(c->timer);
    px_h2_start(c->srv, bev, (const struct sockaddr *)&c->peer, c->tls);
    conn_close(c);
}

/* ---- small writers: printf is measurable on the per-request path ---- */

static void add_str(struct evbuffer *o, const char *s)
{
    evbuffer_add(o, s, strlen(s));
}

static void add_slice(struct evbuffer *o, struct px_str s)
{
    evbuffer_add(o, s.p, s.len);
}

static void add_u64(struct evbuffer *o, uint64_t v)
{
    char b[24];
    int i = sizeof(b);

    do {
        b[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    evbuffer_add(o, b + i, sizeof(b) - (size_t)i);
}

/* "Name: value\r\n" */
static void add_field(struct evbuffer *o, const char *name, struct px_str value)
{
    add_str(o, name);
    add_slice(o, value);
    evbuffer_add(o, "\r\n", 2);
}

/* ---- access log ---- */

static double ms_since(const struct timeval *t)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    return (double)(now.tv_sec - t->tv_sec) * 1e3 + (double)(now.tv_usec - t->tv_usec) / 1e3;
}

static void access_log(struct px_conn *c)
{
    FILE *f = c->srv->access;
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    struct px_str path = c->path;
    const char *q;

    if (c->status > 0 && c->status < 600)
        px_metrics.responses[c->status / 100]++;
    px_metrics.bytes_out += c->bytes_out;
    if (f == NULL)
        return;
    /* The query may hold DAYTONA_SANDBOX_AUTH_KEY or signatures: never log it. */
    if (path.len && (q = memchr(path.p, '?', path.len)) != NULL)
        path.len = (size_t)(q - path.p);
    if (path.len > 512)
        path.len = 512;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(f, "%s ACCESS id=%s conn=%llu peer=%s %.*s host=%s path=", ts, c->reqid,
            (unsigned long long)c->id, c->peer_ip, c->have_req ? (int)c->req.method.len : 1,
            c->have_req ? c->req.method.p : "-",
            c->loghost[0] ? c->loghost : "-");
    for (size_t i = 0; i < path.len; i++) {
        unsigned char ch = (unsigned char)path.p[i];
        if (ch > 0x20 && ch < 0x7f && ch != '"')
            fputc(ch, f);
        else
            fprintf(f, "%%%02X", ch);
    }
    fprintf(f, " status=%d bytes=%llu upstream_ms=%.1f total_ms=%.1f\n", c->status,
            (unsigned long long)c->bytes_out,
            c->t_upstream.tv_sec ? ms_since(&c->t_upstream) : 0.0, ms_since(&c->t_start));
}

/* ---- local responses ---- */

static int wants_html(const struct px_conn *c)
{
    const struct px_hdr *a;

    if (!c->have_req || (a = px_head_get(&c->req, PX_STR("accept"))) == NULL)
        return 0;
    for (size_t i = 0; i + 9 <= a->value.len; i++)
        if (!strncasecmp(a->value.p + i, "text/html", 9))
            return 1;
    return 0;
}

/* Writes a complete response of our own. The connection is kept only if the
 * request body is fully read and the client wants it kept. */
static void respond(struct px_conn *c, int status, const char *ctype, struct evbuffer *body,
                    const char *extra_headers)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t blen = body ? evbuffer_get_length(body) : 0;
    int minor = c->have_req ? c->req.http_minor : 1;

    if (!c->req_done || c->srv->draining)
        c->keepalive = 0;
    c->status = status;
    evbuffer_add_printf(out, "HTTP/1.%d %d %s\r\nServer: preview-proxy\r\nContent-Length: %zu\r\n",
                        minor, status, px_status_text(status), blen);
    if (ctype != NULL)
        evbuffer_add_printf(out, "Content-Type: %s\r\nCache-Control: no-store\r\n", ctype);
    if (extra_headers != NULL)
        evbuffer_add(out, extra_headers, strlen(extra_headers));
    if (c->set_cookie != NULL)
        evbuffer_add(out, c->set_cookie, strlen(c->set_cookie));
    if (c->have_req) /* so that fetch() can read our errors too */
        px_cors_headers(out, &c->req);
    if (!c->keepalive)
        evbuffer_add(out, "Connection: close\r\n", 19);
    else if (minor == 0)
        evbuffer_add(out, "Connection: keep-alive\r\n", 24);
    evbuffer_add(out, "\r\n", 2);
    if (body != NULL && !(c->have_req && c->req.m == HTTP_HEAD)) {
        c->bytes_out = blen;
        evbuffer_add_buffer(out, body);
    }
    exchange_done(c);
}

/* A response without a body and without Content-Length (204). */
static void respond_status_only(struct px_conn *c, int status, const char *headers)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);

    if (!c->req_done || c->srv->draining)
        c->keepalive = 0;
    c->status = status;
    evbuffer_add_printf(out, "HTTP/1.%d %d %s\r\nServer: preview-proxy\r\n%s%s\r\n",
                        c->req.http_minor, status, px_status_text(status), headers,
                        c->keepalive ? "" : "Connection: close\r\n");
    exchange_done(c);
}

static void fail(struct px_conn *c, int status, const char *code, const char *message)
{
    struct evbuffer *body = evbuffer_new();
    struct px_error e = {status, code, message};
    struct px_str method = c->have_req ? c->req.method : PX_STR("-");
    struct px_str path = c->path;
    const char *q, *ctype;

    if (path.len && (q = memchr(path.p, '?', path.len)) != NULL)
        path.len = (size_t)(q - path.p);
    if (body == NULL) {
        conn_close(c);
        return;
    }
    if (c->reqid[0] == '\0')
        snprintf(c->reqid, sizeof(c->reqid), "%x-%llx", c->srv->pid,
                 (unsigned long long)++c->srv->next_req_id);
    ctype = px_error_body(c->srv->cfg, body, &e, method, path, c->reqid, wants_html(c));
    if (status >= 500)
        clog(c, PX_WARN, "%d %s", status, message ? message : px_status_text(status));
    respond(c, status, ctype, body, NULL);
    evbuffer_free(body);
}

/* A request we cannot even frame: answer and close, nothing is forwarded. */
static void fail_close(struct px_conn *c, int status, const char *message)
{
    c->keepalive = 0;
    c->req_done = 0;
    fail(c, status, NULL, message);
}

/* ---- request head ---- */

static void make_loghost(struct px_conn *c, const struct px_host *h, int label_is_id)
{
    if (c->toolbox)
        snprintf(c->loghost, sizeof(c->loghost), "toolbox");
    else if (h == NULL)
        snprintf(c->loghost, sizeof(c->loghost), "-");
    else if (c->port == 0) /* base host */
        snprintf(c->loghost, sizeof(c->loghost), "%.*s", (int)(h->name.len > 60 ? 60 : h->name.len),
                 h->name.p);
    else if (label_is_id)
        snprintf(c->loghost, sizeof(c->loghost), "%u-%.*s", c->port,
                 (int)(h->label.len > 64 ? 64 : h->label.len), h->label.p);
    else /* may be a signed token: a credential (SPEC 11) */
        snprintf(c->loghost, sizeof(c->loghost), "%u-<signed>", c->port);
}

static void start_auth(struct px_conn *c, struct px_str label);
static void preview_flow(struct px_conn *c, unsigned port, struct px_str label);
static void base_routes(struct px_conn *c);
static void accept_warning(struct px_conn *c);
static void on_domain(void *arg, const struct px_lk_value *v, const char *err);
static void respond_status_only(struct px_conn *c, int status, const char *headers);

static struct px_str pathonly(struct px_str p)
{
    const char *q = memchr(p.p, '?', p.len);
    return q ? px_str_make(p.p, (size_t)(q - p.p)) : p;
}
static void make_set_cookie(struct px_conn *c, const char *value);
static void forward(struct px_conn *c);

static void route(struct px_conn *c)
{
    struct px_head *r = &c->req;
    const struct px_config *cfg = c->srv->cfg;
    struct px_str hostval = r->host;
    struct http_parser_url u;
    char *hostbuf = c->host;
    struct px_host h;
    enum px_host_kind kind;

    c->path = r->target;
    if (r->target.len > 0 && r->target.p[0] != '/') {
        /* absolute-form: its authority wins over Host (RFC 9112 3.2.2) */
        http_parser_url_init(&u);
        if (r->target.len == 1 && r->target.p[0] == '*') {
            if (r->m != HTTP_OPTIONS)
                return fail_close(c, 400, "bad request target");
            c->path = PX_STR("*");
        } else if (http_parser_parse_url(r->target.p, r->target.len, 0, &u) != 0 ||
                   !(u.field_set & (1 << UF_HOST))) {
            return fail_close(c, 400, "bad request target");
        } else {
            size_t hs = u.field_data[UF_HOST].off, hl = u.field_data[UF_HOST].len;
            if (u.field_set & (1 << UF_PORT))
                hl = u.field_data[UF_PORT].off + u.field_data[UF_PORT].len - hs;
            hostval = px_str_make(r->target.p + hs, hl);
            if (u.field_set & (1 << UF_PATH)) {
                size_t ps = u.field_data[UF_PATH].off;
                c->path = px_str_make(r->target.p + ps, r->target.len - ps);
            } else if (u.field_set & (1 << UF_QUERY)) {
                return fail_close(c, 400, "bad request target");
            } else {
                c->path = PX_STR("/");
            }
        }
    }
    if (hostval.len == 0 && r->http_minor == 0) {
        /* HTTP/1.0 needs no Host (RFC 9112 3.2): health probes send none. With
         * no host it cannot name a sandbox, so only the base routes apply. */
        c->host[0] = '\0';
        c->authority = PX_STR_NULL;
        snprintf(c->loghost, sizeof(c->loghost), "-");
        return base_routes(c);
    }
    if (hostval.len == 0 || hostval.len >= sizeof(c->host))
        return fail(c, 400, "BAD_HOST", "missing or oversized Host header");
    memcpy(hostbuf, hostval.p, hostval.len);
    c->authority = hostval;
    kind = px_host_parse(hostbuf, hostval.len, cfg->domains, cfg->ndomains, &h);
    if (kind == PX_HOST_BAD)
        return fail(c, 400, "BAD_HOST", h.why);

    c->hinfo = h;
    if (px_str_eq(pathonly(c->path), PX_STR("/accept-daytona-preview-warning")) &&
        r->m == HTTP_POST)
        return accept_warning(c);
    if (kind == PX_HOST_PREVIEW)
        return preview_flow(c, h.port, h.label);
    make_loghost(c, &h, 0);
    if (cfg->ndomains > 0 && px_host_is_base(&h, cfg->domains, cfg->ndomains))
        return base_routes(c);
    /* Not one of our base domains: maybe a custom domain (SPEC 2, 5). */
    c->dom_lk = px_lookup(PX_LK_DOMAIN, h.name, on_domain, c);
}

static void on_domain(void *arg, const struct px_lk_value *v, const char *err)
{
    struct px_conn *c = arg;
    const struct px_config *cfg = c->srv->cfg;

    c->dom_lk = NULL;
    if (err != NULL) {
        if (px_str_eq(pathonly(c->path), PX_STR("/health")))
            return base_routes(c);
        return fail(c, err == px_err_busy ? 429 : 503, NULL,
                    "cannot look up the custom domain right now; try again shortly");
    }
    if (v->found && strlen(v->str) < sizeof(c->dom_sandbox) && v->num > 0 && v->num <= 65535) {
        strcpy(c->dom_sandbox, v->str);
        for (char *p = c->dom_sandbox; *p; p++)
            *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
        return preview_flow(c, (unsigned)v->num,
                            px_str_make(c->dom_sandbox, strlen(c->dom_sandbox)));
    }
    if (cfg->ndomains > 0)
        return fail(c, 404, NULL, "unknown host");
    base_routes(c);
}

static void preview_flow(struct px_conn *c, unsigned port, struct px_str label)
{
    const struct px_config *cfg = c->srv->cfg;
    struct px_host lh = {.port = port, .label = label};

    c->port = port;
    make_loghost(c, &lh, 0);
    if (cfg->toolbox_only && port != 2280)
        return fail(c, 404, NULL, "only the toolbox port is served here");
    if (c->path.len == 0 || c->path.p[0] != '/')
        return fail(c, 400, NULL, "bad request target");
    if (px_path_has_dot_segment(c->path))
        return fail(c, 400, "BAD_PATH", "dot segments are not allowed in the path");
    /* SPEC 3, 7: preflights carry no credentials, so they are answered before auth. */
    if (px_cors_is_preflight(&c->req) && !px_cors_disabled(&c->req)) {
        struct evbuffer *h = evbuffer_new();
        if (h == NULL)
            return conn_close(c);
        px_cors_preflight_headers(h, &c->req);
        evbuffer_add(h, "", 1);
        c->status = 204;
        respond_status_only(c, 204, (const char *)evbuffer_pullup(h, -1));
        evbuffer_free(h);
        return;
    }
    start_auth(c, label);
}

static void base_routes(struct px_conn *c)
{
    struct px_head *r = &c->req;
    struct px_str p = c->path, id;
    struct px_str po = pathonly(p);

    c->port = 0;
    if (px_str_eq(po, PX_STR("/health")) && (r->m == HTTP_GET || r->m == HTTP_HEAD)) {
        struct evbuffer *b = evbuffer_new();
        if (b == NULL)
            return conn_close(c);
        evbuffer_add_printf(b, "{\"status\":\"ok\",\"version\":\"%s\"}", PX_VERSION);
        respond(c, 200, "application/json", b, NULL);
        evbuffer_free(b);
        return;
    }
    if (px_path_toolbox(po, &id, &c->toolbox_rest) == 0) {
        c->toolbox = 1;
        c->port = 2280;
        c->toolbox_rest = px_str_make(c->toolbox_rest.p, p.len - (size_t)(c->toolbox_rest.p - p.p));
        make_loghost(c, NULL, 0);
        if (px_path_has_dot_segment(p))
            return fail(c, 400, "BAD_PATH", "dot segments are not allowed in the path");
        if (id.len >= 256)
            return fail(c, 400, NULL, "sandbox ID too long");
        /* IDs are case-insensitive like the host label they usually come from. */
        for (size_t i = 0; i < id.len; i++)
            ((char *)id.p)[i] = (char)(id.p[i] >= 'A' && id.p[i] <= 'Z' ? id.p[i] + 32 : id.p[i]);
        return start_auth(c, id);
    }
    return fail(c, 404, NULL, "no route for this path");
}

/* SPEC 6: POST /accept-daytona-preview-warning?redirect=URL on any host. */
static void accept_warning(struct px_conn *c)
{
    const struct px_config *cfg = c->srv->cfg;
    const char *q = memchr(c->path.p, '?', c->path.len);
    struct px_str redirect = PX_STR_NULL, host = c->authority;
    char target[2048], hdrs[2600];
    int found = 0;

    if (q != NULL) {
        struct px_str query = px_str_make(q + 1, c->path.len - (size_t)(q + 1 - c->path.p));
        char tmp[1];
        (void)tmp;
        for (size_t i = 0; i < query.len && !found;) {
            size_t st = i;
            while (i < query.len && query.p[i] != '&')
                i++;
            if (i - st >= 9 && !memcmp(query.p + st, "redirect=", 9)) {
                redirect = px_str_make(query.p + st + 9, i - st - 9);
                found = 1;
            }
            i++;
        }
    }
    px_safe_redirect(redirect, host, target, sizeof(target));
    size_t hl = strcspn(c->host, ":");
    snprintf(hdrs, sizeof(hdrs),
             "Location: %s\r\n" PX_WARNING_HEADERS
             "Set-Cookie: daytona-preview-page-accepted=true; Max-Age=86400; Path=/; HttpOnly; "
             "Domain=%.*s; %s\r\n",
             target, (int)hl, c->host,
             cfg->external_https || c->tls ? "Secure; SameSite=None" : "SameSite=Lax");
    respond(c, 302, NULL, NULL, hdrs);
}

/* SPEC 6: all must hold for the warning page. */
static int warning_applies(const struct px_conn *c)
{
    const struct px_config *cfg = c->srv->cfg;
    const struct px_hdr *skip = px_head_get(&c->req, PX_STR("x-daytona-skip-preview-warning"));
    const struct px_hdr *ua = px_head_get(&c->req, PX_STR("user-agent"));
    int on = c->sb->warning >= 0 ? c->sb->warning : cfg->preview_warning;

    return on && !c->toolbox && !px_port_reserved(c->port) && !c->req.ws_upgrade &&
           (skip == NULL || !px_str_ieq(skip->value, PX_STR("true"))) && ua != NULL &&
           px_ua_is_browser(ua->value) && !px_warning_accepted(&c->req);
}

static void show_warning(struct px_conn *c)
{
    struct evbuffer *b = evbuffer_new(), *url = evbuffer_new();

    if (b == NULL || url == NULL) {
        if (b)
            evbuffer_free(b);
        if (url)
            evbuffer_free(url);
        return conn_close(c);
    }
    evbuffer_add_printf(url, "%s://%.*s",
                        c->srv->cfg->external_https || c->tls ? "https" : "http",
                        (int)c->authority.len, c->authority.p);
    evbuffer_add(url, c->path.p, c->path.len);
    size_t n = evbuffer_get_length(url);
    px_warning_page(b, px_str_make((const char *)evbuffer_pullup(url, -1), n));
    respond(c, 200, "text/html; charset=utf-8", b, PX_WARNING_HEADERS);
    evbuffer_free(b);
    evbuffer_free(url);
}

/* Called once the body framing of the request is known. */
static void parse_head(struct px_conn *c, size_t head_len)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    const char *why = NULL;
    int status = 400;
    const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)head_len);

    gettimeofday(&c->t_start, NULL);
    snprintf(c->reqid, sizeof(c->reqid), "%x-%llx", c->srv->pid,
             (unsigned long long)++c->srv->next_req_id);
    if (data == NULL)
        return conn_close(c);
    if (px_h1_parse_request(&c->req, data, head_len, c->srv->cfg->max_headers, &status, &why) !=
        0) {
        evbuffer_drain(in, head_len);
        px_head_free(&c->req);
        clog(c, PX_INFO, "rejected request: %s", why);
        return fail_close(c, status, why);
    }
    c->have_req = 1;
    evbuffer_drain(in, head_len);
    c->nreq++;
    c->keepalive = c->req.keepalive && !c->srv->draining;
    if (c->req.chunked) {
        c->req_body = BODY_CHUNKED;
    } else if (c->req.content_length > 0) {
        c->req_body = BODY_LENGTH;
        c->req_left = c->req.content_length;
    } else {
        c->req_body = BODY_NONE;
        c->req_done = 1;
    }
    set_state(c, PX_CONN_AUTH);
    route(c);
}

static void read_head(struct px_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    const struct px_config *cfg = c->srv->cfg;
    size_t head_len = 0;
    int status = 400;

    if (evbuffer_get_length(in) == 0)
        return;
    if (c->nreq == 0 && !c->h2_stream) {
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
    if (c->state == PX_CONN_IDLE) {
        set_state(c, PX_CONN_HEAD);
        arm_timer(c, cfg->client_header_timeout);
    }
    switch (px_h1_find_head(in, cfg->max_request_line, cfg->max_header_size, &head_len, &status)) {
    case PX_PARSE_AGAIN:
        return;
    case PX_PARSE_BAD:
        evbuffer_drain(in, evbuffer_get_length(in));
        return fail_close(c, status, status == 414   ? "request line too long"
                                     : status == 431 ? "request header fields too large"
                                                     : "malformed request head");
    case PX_PARSE_OK:
        evtimer_del(c->timer);
        return parse_head(c, head_len);
    }
}

/* ---- auth ---- */

static int warning_applies(const struct px_conn *c);
static void show_warning(struct px_conn *c);

static void on_auth(void *arg, struct px_auth_out *out)
{
    struct px_conn *c = arg;

    c->auth = NULL;
    if (out->status != 0) {
        px_sandbox_free(out->sb);
        free(out->cookie_value);
        return fail(c, out->status, out->code, out->message);
    }
    c->sb = out->sb;
    c->drop_authorization = out->used_authorization;
    if (out->cookie_value != NULL) {
        make_set_cookie(c, out->cookie_value);
        free(out->cookie_value);
    }
    /* SPEC 8: activity, unless the caller opted out; never on the critical path. */
    const struct px_hdr *skip = px_head_get(&c->req, PX_STR("x-daytona-skip-last-activity-update"));
    c->no_activity = skip != NULL && px_str_ieq(skip->value, PX_STR("true"));
    if (!c->no_activity)
        px_activity_touch(c->sb->id);
    if (out->label_is_sandbox && !c->toolbox) {
        struct px_host h = {.port = c->port,
                            .label = px_str_make(c->sb->id, strlen(c->sb->id))};
        make_loghost(c, &h, 1);
    }
    /* The warning needs the sandbox's own override, so it comes after auth; the
     * page carries the auth cookie so the click-through needs no new lookup. */
    if (warning_applies(c))
        return show_warning(c);
    forward(c);
}

/* SPEC 4.5: Secure and SameSite follow the external scheme. */
static void make_set_cookie(struct px_conn *c, const char *value)
{
    const struct px_config *cfg = c->srv->cfg;
    struct px_str dom = c->toolbox ? PX_STR_NULL : px_str_make(c->host, strcspn(c->host, ":"));
    char buf[1200];
    int n;

    if (cfg->cookie_domain != NULL)
        dom = px_str_make(cfg->cookie_domain, strlen(cfg->cookie_domain));
    n = snprintf(buf, sizeof(buf),
                 "Set-Cookie: daytona-sandbox-auth-%.*s=%s; Max-Age=3600; Path=/; HttpOnly; %s%s%.*s\r\n",
                 (int)c->label.len, c->label.p, value,
                 cfg->external_https || c->tls ? "Secure; SameSite=None" : "SameSite=Lax",
                 dom.len ? "; Domain=" : "", (int)dom.len, dom.p);
    if (n > 0 && (size_t)n < sizeof(buf))
        c->set_cookie = strdup(buf);
}

static void start_auth(struct px_conn *c, struct px_str label)
{
    struct px_auth_in in = {0};
    const char *q = memchr(c->path.p, '?', c->path.len);

    if (q != NULL) {
        struct px_str query = px_str_make(q + 1, c->path.len - (size_t)(q + 1 - c->path.p));
        int found = 0;
        /* Only to find the value; the rewrite happens when the target is built. */
        for (size_t i = 0; i < query.len;) {
            size_t s = i;
            while (i < query.len && query.p[i] != '&')
                i++;
            struct px_str param = px_str_make(query.p + s, i - s);
            static const char key[] = "DAYTONA_SANDBOX_AUTH_KEY=";
            if (!found && param.len >= sizeof(key) - 1 && !memcmp(param.p, key, sizeof(key) - 1)) {
                c->query_token = px_str_make(param.p + sizeof(key) - 1, param.len - sizeof(key) + 1);
                c->has_query_token = 1;
                found = 1;
            }
            i++;
        }
    }
    c->label = label;
    in.cfg = c->srv->cfg;
    in.now = time(NULL);
    in.req = &c->req;
    in.label = label;
    in.port = c->port;
    in.toolbox = c->toolbox;
    in.query_token = c->query_token;
    in.has_query_token = c->has_query_token;
    c->auth = px_auth_start(&in, on_auth, c);
}

/* ---- forwarding ---- */

static int hop_by_hop(struct px_str name, struct px_str conn_value)
{
    static const struct px_str hop[] = {
        PX_STR("connection"), PX_STR("keep-alive"), PX_STR("proxy-connection"),
        PX_STR("te"), PX_STR("trailer"), PX_STR("transfer-encoding"), PX_STR("upgrade"),
        PX_STR("content-length"),
    };
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (px_str_ieq(name, hop[i]))
            return 1;
    return conn_value.len && px_token_list_has(conn_value, name);
}

/* Headers the proxy consumes or sets itself (SPEC 9). */
static int consumed(const struct px_conn *c, struct px_str name)
{
    if (px_str_ieq(name, PX_STR("host")) || px_str_ieq(name, PX_STR("x-daytona-authorization")) ||
        px_str_ieq(name, PX_STR("x-daytona-preview-token")) ||
        px_str_ieq(name, PX_STR("x-daytona-disable-cors")) ||
        px_str_ieq(name, PX_STR("x-forwarded-for")) ||
        px_str_ieq(name, PX_STR("x-forwarded-proto")) ||
        px_str_ieq(name, PX_STR("x-forwarded-host")))
        return 1;
    if (name.len >= 15 && !strncasecmp(name.p, "x-daytona-skip-", 15))
        return 1;
    if (c->drop_authorization && px_str_ieq(name, PX_STR("authorization")))
        return 1;
    return 0;
}

/* Copies the Cookie value without the proxy's own cookies. */
static void add_cookie_filtered(struct evbuffer *out, struct px_str v)
{
    size_t i = 0;
    int n = 0;

    while (i < v.len) {
        size_t s = i;
        while (i < v.len && v.p[i] != ';')
            i++;
        struct px_str ck = px_str_make(v.p + s, i - s);
        while (ck.len && (ck.p[0] == ' ' || ck.p[0] == '\t'))
            ck.p++, ck.len--;
        i++;
        if (ck.len == 0 || (ck.len >= 21 && !strncmp(ck.p, "daytona-sandbox-auth-", 21)) ||
            (ck.len >= 30 && !strncmp(ck.p, "daytona-preview-page-accepted=", 30)))
            continue;
        evbuffer_add_printf(out, n++ ? "; %.*s" : "Cookie: %.*s", (int)ck.len, ck.p);
    }
    if (n)
        evbuffer_add(out, "\r\n", 2);
}

/* Appends the forwarded request head to out. */
static void build_request(struct px_conn *c, struct evbuffer *out)
{
    const struct px_head *r = &c->req;
    const struct px_sandbox *sb = c->sb;
    struct px_str conn_value = PX_STR_NULL, target = c->path;
    const struct px_hdr *xfh = NULL, *xff = NULL, *xfp = NULL;

    add_slice(out, r->method);
    evbuffer_add(out, " ", 1);
    if (c->toolbox) {
        add_str(out, "/sandboxes/");
        add_str(out, sb->id);
        add_str(out, "/toolbox");
        target = c->toolbox_rest;
    } else if (!sb->direct) {
        add_str(out, "/sandboxes/");
        add_str(out, sb->id);
        add_str(out, "/toolbox/proxy/");
        add_u64(out, c->port);
    }
    const char *q = memchr(target.p, '?', target.len);
    if (q != NULL && c->has_query_token) {
        /* Drop the consumed auth parameter; every other byte stays as received. */
        struct px_str query = px_str_make(q + 1, target.len - (size_t)(q + 1 - target.p));
        char *tmp = malloc(query.len + 1);
        int found;
        evbuffer_add(out, target.p, (size_t)(q - target.p));
        if (tmp != NULL) {
            size_t n = px_query_strip(query, PX_STR("DAYTONA_SANDBOX_AUTH_KEY"), tmp, &found, NULL);
            if (n > 0) {
                evbuffer_add(out, "?", 1);
                evbuffer_add(out, tmp, n);
            }
            free(tmp);
        }
    } else {
        evbuffer_add(out, target.p, target.len);
    }
    evbuffer_add(out, " HTTP/1.1\r\n", 11);
    if (sb->direct && !c->toolbox)
        add_field(out, "Host: ", r->host);
    else
        add_field(out, "Host: ", px_str_make(sb->runner_authority, strlen(sb->runner_authority)));

    for (int i = 0; i < r->nhdrs; i++)
        if (px_str_ieq(r->hdrs[i].name, PX_STR("connection")))
            conn_value = r->hdrs[i].value;
    for (int i = 0; i < r->nhdrs; i++) {
        const struct px_hdr *f = &r->hdrs[i];
        if (px_str_ieq(f->name, PX_STR("x-forwarded-host")))
            xfh = f;
        else if (px_str_ieq(f->name, PX_STR("x-forwarded-for")))
            xff = f;
        else if (px_str_ieq(f->name, PX_STR("x-forwarded-proto")))
            xfp = f;
        if (hop_by_hop(f->name, conn_value) || consumed(c, f->name))
            continue;
        if (px_str_ieq(f->name, PX_STR("cookie"))) {
            add_cookie_filtered(out, f->value);
            continue;
        }
        evbuffer_add(out, f->name.p, f->name.len);
        evbuffer_add(out, ": ", 2);
        evbuffer_add(out, f->value.p, f->value.len);
        evbuffer_add(out, "\r\n", 2);
    }
    /* Replace semantics: whatever the client sent, the runner sees only ours. */
    add_field(out, "X-Daytona-Authorization: Bearer ",
              sb->runner_key ? px_str_make(sb->runner_key, strlen(sb->runner_key)) : PX_STR_NULL);
    if (xfh != NULL) /* custom-domain front ends send the original host [compat] */
        add_field(out, "X-Forwarded-Host: ", xfh->value);
    else
        add_field(out, "X-Forwarded-Host: ", r->host);
    if (xff != NULL && c->peer_trusted)
        evbuffer_add_printf(out, "X-Forwarded-For: %.*s, %s\r\n", (int)xff->value.len,
                            xff->value.p, c->peer_ip);
    else
        add_field(out, "X-Forwarded-For: ", px_str_make(c->peer_ip, strlen(c->peer_ip)));
    if (xfp != NULL && c->peer_trusted)
        evbuffer_add_printf(out, "X-Forwarded-Proto: %.*s\r\n", (int)xfp->value.len, xfp->value.p);
    else
        add_str(out, c->srv->cfg->external_https || c->tls ? "X-Forwarded-Proto: https\r\n"
                                                           : "X-Forwarded-Proto: http\r\n");
    add_field(out, "X-Request-Id: ", px_str_make(c->reqid, strlen(c->reqid)));
    if (r->ws_upgrade)
        evbuffer_add(out, "Connection: Upgrade\r\nUpgrade: websocket\r\n", 41);
    if (c->req_body == BODY_LENGTH)
    {
        add_str(out, "Content-Length: ");
        add_u64(out, (uint64_t)r->content_length);
        evbuffer_add(out, "\r\n", 2);
    }
    else if (c->req_body == BODY_CHUNKED)
        evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
    else if (r->content_length == 0)
        evbuffer_add(out, "Content-Length: 0\r\n", 19);
    evbuffer_add(out, "\r\n", 2);
}

static int idempotent(enum http_method m)
{
    return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS || m == HTTP_PUT ||
           m == HTTP_DELETE;
}

/* Writes bytes to the upstream, keeping a copy while a retry is still possible. */
static void up_write_buffer(struct px_conn *c, struct evbuffer *data)
{
    struct evbuffer *out = bufferevent_get_output(c->up->bev);

    if (c->replay != NULL) {
        if (evbuffer_get_length(c->replay) + evbuffer_get_length(data) > PX_REPLAY_MAX) {
            evbuffer_free(c->replay);
            c->replay = NULL;
        } else {
            evbuffer_add_buffer_reference(c->replay, data);
        }
    }
    evbuffer_add_buffer(out, data);
}

/* Moves request body bytes from the client to the upstream. */
static void pump_request(struct px_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer *tmp;

    if (c->req_done || c->up == NULL)
        return;
    if ((tmp = evbuffer_new()) == NULL)
        return conn_close(c);
    if (c->req_body == BODY_LENGTH) {
        size_t avail = evbuffer_get_length(in);
        size_t n = (int64_t)avail < c->req_left ? avail : (size_t)c->req_left;
        evbuffer_remove_buffer(in, tmp, n);
        c->req_left -= (int64_t)n;
        if (c->req_left == 0)
            c->req_done = 1;
    } else if (c->req_body == BODY_CHUNKED) {
        switch (px_chunked_feed(&c->req_ch, in, tmp)) {
        case PX_PARSE_OK:
            c->req_done = 1;
            break;
        case PX_PARSE_AGAIN:
            break;
        case PX_PARSE_BAD:
            evbuffer_free(tmp);
            clog(c, PX_INFO, "bad chunked request body");
            upstream_drop(c);
            if (c->status == 0)
                return fail_close(c, 400, "malformed chunked body");
            return conn_close(c);
        }
    }
    if (evbuffer_get_length(tmp) > 0)
        up_write_buffer(c, tmp);
    evbuffer_free(tmp);
    if (c->req_done) {
        /* SPEC 9: response_header_timeout counts from the end of the request. */
        struct timeval tv = {c->srv->cfg->response_header_timeout, 0};
        if (c->resp_st == RESP_HEAD)
            bufferevent_set_timeouts(c->up->bev, &tv, NULL);
        return;
    }
    if (evbuffer_get_length(bufferevent_get_output(c->up->bev)) >= PX_HIGH_WATER) {
        bufferevent_disable(c->bev, EV_READ);
        bufferevent_setwatermark(c->up->bev, EV_WRITE, PX_HIGH_WATER / 2, 0);
    }
}

static int connect_upstream(struct px_conn *c, int allow_pool)
{
    const struct px_sandbox *sb = c->sb;
    int port = sb->direct && !c->toolbox ? (int)c->port : sb->runner_port;
    struct timeval tv = {c->srv->cfg->connect_timeout, 0};

    int tls = sb->runner_tls && !(sb->direct && !c->toolbox);

    c->up = allow_pool ? px_pool_take(c->srv->pool, sb->runner_host, port, tls) : NULL;
    if (c->up == NULL) {
        if ((c->up = px_upstream_connect(c->srv, sb->runner_host, port, tls)) == NULL)
            return -1;
        bufferevent_set_timeouts(c->up->bev, NULL, &tv); /* connect timeout */
    }
    bufferevent_setcb(c->up->bev, on_up_read, on_up_write, on_up_event, c);
    bufferevent_enable(c->up->bev, EV_READ | EV_WRITE);
    if (c->up->reused && idempotent(c->req.m) && !c->req.ws_upgrade) {
        if ((c->replay = evbuffer_new()) == NULL)
            return -1;
    }
    return 0;
}

static void forward(struct px_conn *c)
{
    if (connect_upstream(c, 1) != 0)
        return fail(c, 502, NULL, "cannot connect to the runner");
    gettimeofday(&c->t_upstream, NULL);
    if (c->replay == NULL) { /* the common case: straight into the socket's buffer */
        build_request(c, bufferevent_get_output(c->up->bev));
    } else {
        struct evbuffer *head = evbuffer_new();
        if (head == NULL)
            return conn_close(c);
        build_request(c, head);
        up_write_buffer(c, head);
        evbuffer_free(head);
    }
    set_state(c, PX_CONN_STREAM);
    pump_request(c);
}

/* The pooled connection was stale: one fresh attempt with the same bytes. */
static int retry(struct px_conn *c)
{
    struct evbuffer *replay = c->replay;

    if (replay == NULL || c->retried || c->resp_seen)
        return -1;
    clog(c, PX_INFO, "retrying on a fresh connection after a stale pooled one failed");
    c->replay = NULL;
    upstream_drop(c);
    c->retried = 1;
    if (connect_upstream(c, 0) != 0) {
        evbuffer_free(replay);
        return -1;
    }
    evbuffer_add_buffer(bufferevent_get_output(c->up->bev), replay);
    evbuffer_free(replay);
    if (c->req_done) {
        struct timeval tv = {c->srv->cfg->response_header_timeout, 0};
        struct timeval ctv = {c->srv->cfg->connect_timeout, 0};
        bufferevent_set_timeouts(c->up->bev, &tv, &ctv);
    }
    return 0;
}

/* ---- response ---- */

static void add_response_head(struct px_conn *c, struct evbuffer *out)
{
    const struct px_head *rs = &c->resp;
    struct px_str conn_value = PX_STR_NULL;
    int minor = c->req.http_minor;
    int cors = px_head_get(&c->req, PX_STR("origin")) != NULL && !px_cors_disabled(&c->req);

    for (int i = 0; i < rs->nhdrs; i++)
        if (px_str_ieq(rs->hdrs[i].name, PX_STR("connection")))
            conn_value = rs->hdrs[i].value;
    add_str(out, minor ? "HTTP/1.1 " : "HTTP/1.0 ");
    add_u64(out, (uint64_t)rs->status);
    evbuffer_add(out, " ", 1);
    add_slice(out, rs->reason);
    evbuffer_add(out, "\r\n", 2);
    for (int i = 0; i < rs->nhdrs; i++) {
        const struct px_hdr *f = &rs->hdrs[i];
        if (rs->status == 101 &&
            (px_str_ieq(f->name, PX_STR("upgrade")) || px_str_ieq(f->name, PX_STR("connection"))))
            goto copy;
        if (hop_by_hop(f->name, conn_value))
            continue;
        if (cors && px_cors_owned_header(f->name))
            continue; /* ours replace the sandbox's: never two Allow-Origin headers */
        if (c->toolbox && rs->status / 100 == 3 && px_str_ieq(f->name, PX_STR("location"))) {
            /* [compat] keep redirects inside /toolbox/{id} */
            char pre[300];
            int n = snprintf(pre, sizeof(pre), "/toolbox/%s", c->sb->id);
            if (f->value.len < (size_t)n || memcmp(f->value.p, pre, (size_t)n) != 0) {
                evbuffer_add_printf(out, "Location: %s%s%.*s\r\n", pre,
                                    f->value.len && f->value.p[0] == '/' ? "" : "/",
                                    (int)f->value.len, f->value.p);
                continue;
            }
        }
    copy:
        evbuffer_add(out, f->name.p, f->name.len);
        evbuffer_add(out, ": ", 2);
        evbuffer_add(out, f->value.p, f->value.len);
        evbuffer_add(out, "\r\n", 2);
    }
    if (c->set_cookie != NULL)
        evbuffer_add(out, c->set_cookie, strlen(c->set_cookie));
    if (cors)
        px_cors_headers(out, &c->req);
    if (rs->status == 101) {
        evbuffer_add(out, "\r\n", 2);
        return;
    }
    switch (c->resp_body) {
    case BODY_LENGTH:
        add_str(out, "Content-Length: ");
        add_u64(out, (uint64_t)c->resp_left);
        evbuffer_add(out, "\r\n", 2);
        break;
    case BODY_CHUNKED:
        if (minor == 1)
            evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
        else
            c->keepalive = 0; /* HTTP/1.0 client: de-chunk and close to delimit */
        break;
    case BODY_EOF:
        if (minor == 1) {
            evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
            c->resp_chunk_out = 1;
        } else {
            c->keepalive = 0;
        }
        break;
    case BODY_NONE:
        if (rs->content_length >= 0) /* HEAD, 304: keep the representation's length */
            evbuffer_add_printf(out, "Content-Length: %lld\r\n", (long long)rs->content_length);
        else if (rs->status != 204 && rs->status != 304 && c->req.m != HTTP_HEAD)
            evbuffer_add(out, "Content-Length: 0\r\n", 19);
        break;
    }
    if (!c->req_done || c->srv->draining)
        c->keepalive = 0;
    if (!c->keepalive)
        evbuffer_add(out, "Connection: close\r\n", 19);
    else if (minor == 0)
        evbuffer_add(out, "Connection: keep-alive\r\n", 24);
    evbuffer_add(out, "\r\n", 2);
}

static void start_tunnel(struct px_conn *c);

/* Reads the response head. Returns 1 when the body phase may start. */
static int read_response_head(struct px_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->up->bev);
    size_t head_len;
    int status;
    const char *why = "malformed response head";

    for (;;) {
        switch (px_h1_find_head(in, PX_MAX_RESP_HEAD, PX_MAX_RESP_HEAD, &head_len, &status)) {
        case PX_PARSE_AGAIN:
            return 0;
        case PX_PARSE_BAD:
            goto bad;
        case PX_PARSE_OK:
            break;
        }
        const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)head_len);
        px_head_free(&c->resp);
        if (data == NULL || px_h1_parse_response(&c->resp, data, head_len, 1000, &why) != 0)
            goto bad;
        evbuffer_drain(in, head_len);
        if (c->resp.status == 101) {
            if (!c->req.ws_upgrade)
                goto bad;
            return 1;
        }
        if (c->resp.status / 100 != 1)
            break;
        /* 1xx: relay 100 Continue to a client that asked for it; drop the rest. */
        if (c->resp.status == 100 && c->req.expect_continue && c->req.http_minor == 1)
            evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
    c->up_reusable = c->resp.keepalive;
    if (!px_h1_response_has_body(&c->resp, c->req.m)) {
        c->resp_body = BODY_NONE;
    } else if (c->resp.chunked) {
        c->resp_body = BODY_CHUNKED;
    } else if (c->resp.content_length >= 0) {
        c->resp_body = c->resp.content_length > 0 ? BODY_LENGTH : BODY_NONE;
        c->resp_left = c->resp.content_length;
        if (c->resp.content_length == 0)
            c->resp.content_length = 0;
    } else {
        c->resp_body = BODY_EOF;
        c->up_reusable = 0;
    }
    return 1;
bad:
    clog(c, PX_WARN, "runner sent %s", why);
    upstream_drop(c);
    if (c->status == 0)
        fail(c, 502, NULL, "the runner sent an invalid response");
    else
        conn_close(c);
    return -1;
}

static void response_done(struct px_conn *c)
{
    c->resp_st = RESP_DONE;
    if (c->up != NULL) {
        int reusable = c->up_reusable && c->req_done;
        struct px_upstream *up = c->up;
        c->up = NULL;
        px_upstream_release(c->srv->pool, up, reusable);
    }
    exchange_done(c);
}

/* Moves response body bytes to the client. */
static void pump_response(struct px_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->up->bev);
    struct evbuffer *out = bufferevent_get_output(c->bev);

    switch (c->resp_body) {
    case BODY_NONE:
        return response_done(c);
    case BODY_LENGTH: {
        size_t avail = evbuffer_get_length(in);
        size_t n = (int64_t)avail < c->resp_left ? avail : (size_t)c->resp_left;
        evbuffer_remove_buffer(in, out, n);
        c->resp_left -= (int64_t)n;
        c->bytes_out += n;
        if (c->resp_left == 0) {
            if (evbuffer_get_length(in) > 0)
                c->up_reusable = 0; /* the runner sent more than it announced */
            return response_done(c);
        }
        break;
    }
    case BODY_CHUNKED: {
        uint64_t t0 = c->resp_ch.total;
        /* An HTTP/1.0 client gets plain bytes, delimited by close. */
        c->resp_ch.plain = c->req.http_minor == 0;
        enum px_parse r = px_chunked_feed(&c->resp_ch, in, out);
        c->bytes_out += c->resp_ch.total - t0;
        if (r == PX_PARSE_BAD) {
            clog(c, PX_WARN, "runner sent a malformed chunked body");
            upstream_drop(c);
            return conn_close(c);
        }
        if (r == PX_PARSE_OK)
            return response_done(c);
        break;
    }
    case BODY_EOF: {
        size_t n = evbuffer_get_length(in);
        if (n == 0)
            break;
        if (c->resp_chunk_out)
            evbuffer_add_printf(out, "%zx\r\n", n);
        evbuffer_remove_buffer(in, out, n);
        if (c->resp_chunk_out)
            evbuffer_add(out, "\r\n", 2);
        c->bytes_out += n;
        break;
    }
    }
    if (c->up != NULL && evbuffer_get_length(out) >= PX_HIGH_WATER) {
        bufferevent_disable(c->up->bev, EV_READ);
        bufferevent_setwatermark(c->bev, EV_WRITE, PX_HIGH_WATER / 2, 0);
    }
}

static void on_response_bytes(struct px_conn *c)
{
    if (c->resp_st == RESP_HEAD) {
        int r = read_response_head(c);
        if (r <= 0)
            return;
        if (c->resp.status == 101)
            return start_tunnel(c);
        add_response_head(c, bufferevent_get_output(c->bev));
        c->status = c->resp.status;
        c->resp_st = RESP_BODY;
        /* Streaming bodies (SSE, downloads) may idle for long; bound them by the
         * long-lived connection timeout instead of the header timeout. */
        struct timeval tv = {c->srv->cfg->ws_idle_timeout, 0};
        bufferevent_set_timeouts(c->up->bev, &tv, NULL);
        arm_timer(c, PX_ACTIVITY_REFRESH);
    }
    if (c->resp_st == RESP_BODY)
        pump_response(c);
}

/* ---- WebSocket: hand over to ws/ after 101 ---- */

static void start_tunnel(struct px_conn *c)
{
    struct bufferevent *client = c->bev, *runner = c->up->bev;
    int raw = !c->tls && !c->h2_stream && !c->up->tls;
    const struct px_hdr *skip = px_head_get(&c->req, PX_STR("x-daytona-skip-last-activity-update"));
    int activity = skip == NULL || !px_str_ieq(skip->value, PX_STR("true"));

    c->status = 101;
    add_response_head(c, bufferevent_get_output(c->bev));
    access_log(c);
    c->have_req = 0;
    /* Both sockets leave this connection, whose per-request state is freed:
     * an idle tunnel then costs only what ws/ keeps. */
    evtimer_del(c->timer);
    c->bev = NULL;
    c->up->bev = NULL;
    upstream_drop(c);
    px_splice_start(c->srv, client, runner, c->sb->id, activity, raw);
    conn_close(c);
}

/* ---- exchange end ---- */

static void exchange_done(struct px_conn *c)
{
    const struct px_config *cfg = c->srv->cfg;

    access_log(c);
    upstream_drop(c);
    if (!c->keepalive) {
        exchange_reset(c);
        return conn_linger(c);
    }
    exchange_reset(c);
    set_state(c, PX_CONN_IDLE);
    bufferevent_enable(c->bev, EV_READ);
    bufferevent_setwatermark(c->bev, EV_READ, 0, cfg->max_header_size + 16384);
    arm_timer(c, cfg->keepalive_timeout);
    /* A pipelined request may already be waiting; conn_step() picks it up
     * (the caller loops while the state is IDLE with input). */
}

/* ---- callbacks ---- */

static void conn_step(struct px_conn *c)
{
    /* Loop so that pipelined requests answered locally are all processed. */
    for (int guard = 0; guard < 64 && !c->doomed; guard++) {
        uint64_t before = c->srv->next_req_id;
        switch (c->state) {
        case PX_CONN_IDLE:
        case PX_CONN_HEAD:
            read_head(c);
            break;
        case PX_CONN_AUTH:
            return;
        case PX_CONN_STREAM:
            pump_request(c);
            return;
        case PX_CONN_CLOSING:
            evbuffer_drain(bufferevent_get_input(c->bev),
                           evbuffer_get_length(bufferevent_get_input(c->bev)));
            return;
        }
        /* Go round again only if a whole exchange finished and more input waits. */
        if (c->doomed || c->state != PX_CONN_IDLE || before == c->srv->next_req_id ||
            evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
            return;
    }
}

static void on_client_read(struct bufferevent *bev, void *arg)
{
    struct px_conn *c = arg;
    (void)bev;
    ENTER(c);
    conn_step(c);
    LEAVE(c);
}

static void on_client_write(struct bufferevent *bev, void *arg)
{
    struct px_conn *c = arg;
    (void)bev;

    ENTER(c);
    switch (c->state) {
    case PX_CONN_CLOSING:
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            conn_close(c);
        break;
    case PX_CONN_STREAM:
        /* The client drained below the low mark: resume reading the runner. */
        if (c->up != NULL) {
            bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
            bufferevent_enable(c->up->bev, EV_READ);
            if (evbuffer_get_length(bufferevent_get_input(c->up->bev)))
                on_response_bytes(c);
        }
        break;
    case PX_CONN_IDLE:
    case PX_CONN_HEAD:
    case PX_CONN_AUTH:
        break;
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
    case PX_CONN_CLOSING:
        conn_close(c);
        break;
    case PX_CONN_STREAM:
        if ((what & BEV_EVENT_EOF) && c->req_done && !c->h2_stream) {
            /* (An HTTP/2 stream's end means it was reset or its connection died:
             * nobody will read the answer, so it falls through to the abort.) */
            /* Half-close after a complete request: finish the response, then close. */
            c->keepalive = 0;
            bufferevent_disable(c->bev, EV_READ);
            break;
        }
        clog(c, PX_DEBUG, "client went away mid-exchange");
        if (c->status == 0)
            c->status = 499;
        access_log(c);
        c->have_req = 0;
        conn_close(c);
        break;
    }
    LEAVE(c);
}

static void on_up_read(struct bufferevent *bev, void *arg)
{
    struct px_conn *c = arg;
    (void)bev;

    ENTER(c);
    c->resp_seen = 1;
    if (c->replay != NULL) { /* a byte came back: the request can no longer be retried */
        evbuffer_free(c->replay);
        c->replay = NULL;
    }
    if (c->state == PX_CONN_STREAM)
        on_response_bytes(c);
    LEAVE(c);
}

static void on_up_write(struct bufferevent *bev, void *arg)
{
    struct px_conn *c = arg;
    (void)bev;

    ENTER(c);
    if (c->state == PX_CONN_STREAM) {
        /* The runner drained below the low mark: resume reading the client. */
        bufferevent_setwatermark(c->up->bev, EV_WRITE, 0, 0);
        bufferevent_enable(c->bev, EV_READ);
        if (evbuffer_get_length(bufferevent_get_input(c->bev)))
            pump_request(c);
    }
    LEAVE(c);
}

/* SPEC 10: a stopped sandbox that wants waking, or one already starting. */
static int sandbox_asleep(const struct px_conn *c)
{
    const char *st = c->sb->state ? c->sb->state : "started";

    return !strcmp(st, "starting") || (c->sb->wake_http && !strcmp(st, "stopped"));
}

static void starting(struct px_conn *c)
{
    struct evbuffer *b = evbuffer_new();

    if (b == NULL)
        return conn_close(c);
    if (!strcmp(c->sb->state ? c->sb->state : "", "stopped"))
        px_activity_wake(c->sb->id);
    if (wants_html(c)) {
        px_starting_page(b, c->reqid);
        respond(c, 503, "text/html; charset=utf-8", b, "Retry-After: 5\r\n");
    } else {
        struct px_error e = {503, "SANDBOX_STARTING", "the sandbox is starting; retry shortly"};
        const char *ct = px_error_body(c->srv->cfg, b, &e, c->req.method, pathonly(c->path),
                                       c->reqid, 0);
        respond(c, 503, ct, b, "Retry-After: 5\r\n");
    }
    evbuffer_free(b);
}

static void on_up_event(struct bufferevent *bev, short what, void *arg)
{
    struct px_conn *c = arg;
    (void)bev;

    ENTER(c);
    if (what & BEV_EVENT_CONNECTED) {
        c->up->connected = 1;
        px_upstream_nodelay(c->up);
        bufferevent_set_timeouts(c->up->bev, NULL, NULL);
        if (c->req_done) {
            struct timeval tv = {c->srv->cfg->response_header_timeout, 0};
            bufferevent_set_timeouts(c->up->bev, &tv, NULL);
        }
        goto out;
    }
    if (c->state != PX_CONN_STREAM)
        goto out;
    if ((what & BEV_EVENT_EOF) && c->resp_st == RESP_BODY && c->resp_body == BODY_EOF) {
        pump_response(c);
        if (c->resp_chunk_out)
            evbuffer_add(bufferevent_get_output(c->bev), "0\r\n\r\n", 5);
        c->up_reusable = 0;
        response_done(c);
        goto out;
    }
    if (c->resp_st == RESP_HEAD) {
        int timeout = (what & BEV_EVENT_TIMEOUT) != 0;
        int connecting = !c->up->connected;
        if (c->up->tls && connecting && !timeout) {
            SSL *ssl = bufferevent_openssl_get_ssl(c->up->bev);
            long vr = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
            if (vr != X509_V_OK) {
                clog(c, PX_WARN, "runner TLS certificate verification failed: %s",
                     X509_verify_cert_error_string(vr));
                upstream_drop(c);
                fail(c, 502, "RUNNER_TLS_ERROR", "the runner's TLS certificate is not trusted");
                goto out;
            }
        }
        if (!timeout && c->up->reused && retry(c) == 0)
            goto out;
        upstream_drop(c);
        if (connecting && sandbox_asleep(c))
            starting(c);
        else if (timeout)
            fail(c, 504, NULL,
                 connecting ? "timed out connecting to the runner"
                            : "the sandbox service did not answer in time");
        else
            fail(c, 502, NULL,
                 connecting ? "the sandbox service (or its runner) refused the connection"
                            : "the runner closed the connection before answering");
        goto out;
    }
    /* Mid-body failure: the status line is out, so all we can do is close. */
    clog(c, PX_INFO, "runner connection ended mid-response");
    upstream_drop(c);
    c->keepalive = 0;
    access_log(c);
    c->have_req = 0;
    conn_close(c);
out:
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
        fail_close(c, 408, "the request head did not arrive in time");
        break;
    case PX_CONN_STREAM:
        /* SPEC 8: a long response (SSE, a download) keeps its sandbox awake. */
        if (c->sb != NULL && !c->no_activity)
            px_activity_touch(c->sb->id);
        arm_timer(c, PX_ACTIVITY_REFRESH);
        break;
    case PX_CONN_IDLE:
    case PX_CONN_CLOSING:
    case PX_CONN_AUTH:
        conn_close(c);
        break;
    }
    LEAVE(c);
}

/* ---- drain ---- */

void px_conn_drain_all(struct px_server *srv)
{
    struct px_conn *c = srv->conns, *next;

    srv->draining = 1;
    for (; c != NULL; c = next) {
        next = c->next;
        if (c->state == PX_CONN_IDLE)
            conn_close(c);
        else
            c->keepalive = 0;
    }
    px_h2_drain_all(srv);
    if (srv->nconns == 0 && srv->nsplices == 0 && srv->nh2 == 0)
        event_base_loopexit(srv->base, NULL);
}

void px_conn_close_all(struct px_server *srv)
{
    while (srv->conns != NULL)
        conn_destroy(srv->conns);
    px_splice_close_all(srv);
    px_h2_close_all(srv);
}

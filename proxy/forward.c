/* forward.c — the runner side of an exchange: the forwarded request head
 * (SPEC 9 header rules), the upstream connection and its one retry, body
 * pumping with backpressure both ways, the response head and body, wake-on-
 * request, and the hand-over of WebSockets to ws/. Part of the connection
 * module: it shares struct px_conn (conn_priv.h). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "auth/activity.h"
#include "proxy/browser.h"
#include "proxy/conn_priv.h"
#include "proxy/errors.h"
#include "proxy/h2.h"
#include "proxy/hbuf.h"
#include "proxy/headw.h"
#include "proxy/upstream.h"
#include "routing/path.h"
#include "routing/store.h"
#include "ws/ws.h"

static void on_up_read(struct bufferevent *bev, void *arg);
static void response_done(struct px_conn *c);
static void on_up_write(struct bufferevent *bev, void *arg);
static void on_up_event(struct bufferevent *bev, short what, void *arg);
static void start_tunnel(struct px_conn *c);

/* "Name: value\r\n", the name given with its ": " */
static void add_field(struct px_hbuf *o, const char *name, struct px_str value)
{
    px_hb_str(o, name);
    px_hb_slice(o, value);
    px_hb_lit(o, "\r\n");
}

int px_fwd_hop_by_hop(struct px_str name, struct px_str conn_value)
{
    static const struct px_str hop[] = {
        PX_STR("connection"), PX_STR("keep-alive"),     PX_STR("proxy-connection"),
        PX_STR("te"),         PX_STR("trailer"),        PX_STR("transfer-encoding"),
        PX_STR("upgrade"),    PX_STR("content-length"),
    };
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (px_str_ieq(name, hop[i]))
            return 1;
    return conn_value.len && px_token_list_has(conn_value, name);
}

/* Headers the proxy consumes or sets itself (SPEC 9). */
int px_fwd_consumed(struct px_str name, int drop_authorization)
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
    if (drop_authorization && px_str_ieq(name, PX_STR("authorization")))
        return 1;
    return 0;
}

/* Copies the Cookie value without the proxy's own cookies. */
void px_fwd_add_cookie(struct px_hbuf *out, struct px_str v)
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
        if (n++)
            px_hb_lit(out, "; ");
        else
            px_hb_lit(out, "Cookie: ");
        px_hb_slice(out, ck);
    }
    if (n)
        px_hb_lit(out, "\r\n");
}

/* Appends the forwarded request head to dst, and to copy unless NULL. */
static void build_request(struct px_conn *c, struct evbuffer *dst, struct evbuffer *copy)
{
    struct px_hbuf hb, *out = &hb;
    const struct px_head *r = &c->ex.req;
    const struct px_sandbox *sb = c->ex.sb;
    struct px_str conn_value = PX_STR_NULL, target = c->ex.path;
    const struct px_hdr *xfh = NULL, *xff = NULL, *xfp = NULL;

    px_hb_init(out, dst);
    out->copy = copy;

    px_hb_slice(out, r->method);
    px_hb_lit(out, " ");
    if (c->ex.fwd_target != NULL) { /* built whole by its route (build logs) */
        px_hb_str(out, c->ex.fwd_target);
        target = PX_STR("");
    } else if (c->ex.toolbox) {
        px_hb_str(out, "/sandboxes/");
        px_hb_str(out, sb->id);
        px_hb_str(out, "/toolbox");
        target = c->ex.toolbox_rest;
    } else if (!sb->direct) {
        px_hb_str(out, "/sandboxes/");
        px_hb_str(out, sb->id);
        px_hb_str(out, "/toolbox/proxy/");
        px_hb_u64(out, c->ex.port);
    }
    const char *q = target.len ? memchr(target.p, '?', target.len) : NULL;
    if (q != NULL && (c->ex.has_query_token || c->ex.file_url)) {
        /* Drop the consumed auth parameters (a signed file URL's signature and
         * expires, SPEC 4.7; its path is the runner's); every other byte stays
         * as received. */
        static const struct px_str consumed[] = {PX_STR("DAYTONA_SANDBOX_AUTH_KEY"),
                                                 PX_STR("signature"), PX_STR("expires")};
        struct px_str query = px_str_make(q + 1, target.len - (size_t)(q + 1 - target.p));
        char *tmp = malloc(2 * query.len + 2);
        int found;
        px_hb_add(out, target.p, (size_t)(q - target.p));
        if (tmp != NULL) {
            char *buf[2] = {tmp, tmp + query.len + 1};
            int cur = 0;
            for (size_t i = 0; i < sizeof(consumed) / sizeof(consumed[0]); i++) {
                if (i == 0 ? !c->ex.has_query_token : !c->ex.file_url)
                    continue;
                query.len = px_query_strip(query, consumed[i], buf[cur], &found, NULL);
                query.p = buf[cur];
                cur ^= 1;
            }
            if (query.len > 0) {
                px_hb_lit(out, "?");
                px_hb_add(out, query.p, query.len);
            }
            free(tmp);
        }
    } else {
        px_hb_add(out, target.p, target.len);
    }
    px_hb_lit(out, " HTTP/1.1\r\n");
    /* c->ex.authority, not the Host field: for an absolute-form target the
     * target's authority is what was routed, and a proxy MUST send it as
     * the Host (RFC 9112 3.2.2). */
    if (sb->direct && !c->ex.toolbox)
        add_field(out, "Host: ", c->ex.authority);
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
        if (px_fwd_hop_by_hop(f->name, conn_value) ||
            px_fwd_consumed(f->name, c->ex.drop_authorization))
            continue;
        if (px_str_ieq(f->name, PX_STR("cookie"))) {
            px_fwd_add_cookie(out, f->value);
            continue;
        }
        px_hb_field(out, f->name, f->value);
    }
    /* Replace semantics: whatever the client sent, the runner sees only ours.
     * Direct mode talks to sandbox code itself, which must never see the key. */
    if (!sb->direct || c->ex.toolbox)
        add_field(out, "X-Daytona-Authorization: Bearer ",
                  sb->runner_key ? px_str_make(sb->runner_key, strlen(sb->runner_key))
                                 : PX_STR_NULL);
    if (xfh != NULL) /* custom-domain front ends send the original host [compat] */
        add_field(out, "X-Forwarded-Host: ", xfh->value);
    else
        add_field(out, "X-Forwarded-Host: ", c->ex.authority);
    if (xff != NULL && c->peer_trusted) {
        px_hb_lit(out, "X-Forwarded-For: ");
        px_hb_slice(out, xff->value);
        px_hb_lit(out, ", ");
        px_hb_str(out, c->peer_ip);
        px_hb_lit(out, "\r\n");
    } else
        add_field(out, "X-Forwarded-For: ", px_str_make(c->peer_ip, strlen(c->peer_ip)));
    if (xfp != NULL && c->peer_trusted)
        add_field(out, "X-Forwarded-Proto: ", xfp->value);
    else
        px_hb_str(out, c->srv->cfg->external_https || c->tls ? "X-Forwarded-Proto: https\r\n"
                                                             : "X-Forwarded-Proto: http\r\n");
    add_field(out, "X-Request-Id: ", px_str_make(c->ex.reqid, strlen(c->ex.reqid)));
    if (r->ws_upgrade)
        px_hb_lit(out, "Connection: Upgrade\r\nUpgrade: websocket\r\n");
    if (c->ex.req_body == BODY_LENGTH) {
        px_hb_str(out, "Content-Length: ");
        px_hb_u64(out, (uint64_t)r->content_length);
        px_hb_lit(out, "\r\n");
    } else if (c->ex.req_body == BODY_CHUNKED || c->ex.req_body == BODY_STREAM)
        px_hb_lit(out, "Transfer-Encoding: chunked\r\n");
    else if (r->content_length == 0)
        px_hb_lit(out, "Content-Length: 0\r\n");
    px_hb_lit(out, "\r\n");
    px_hb_flush(out);
}

static const char *up_state_name(enum px_up_state st)
{
    switch (st) {
    case PX_UP_NONE: return "NONE";
    case PX_UP_CONNECT: return "CONNECT";
    case PX_UP_SEND: return "SEND";
    case PX_UP_WAIT_HEAD: return "WAIT_HEAD";
    case PX_UP_BODY: return "BODY";
    case PX_UP_DONE: return "DONE";
    }
    return "?";
}

/* The one place that arms the runner connection's timeouts (issue 9: no
 * exchange may wait forever); what each state arms is written beside enum
 * px_up_state (conn_priv.h). Called again in the same state when req_done
 * changes what it arms (CONNECT, BODY). */
static void up_set_state(struct px_conn *c, enum px_up_state next)
{
    const struct px_config *cfg = c->srv->cfg;
    struct timeval rd = {0, 0}, wr = {0, 0};
    int read_armed = 0, write_armed = 0;

    if (c->ex.up_st != next) /* (WAIT_HEAD -> BODY is entered unarmed first: px_fwd_on_response) */
        clog(c, PX_DEBUG, "runner %s -> %s", up_state_name(c->ex.up_st), up_state_name(next));
    c->ex.up_st = next;
    switch (next) {
    case PX_UP_NONE:
    case PX_UP_DONE: return;
    case PX_UP_CONNECT:
        wr.tv_sec = cfg->connect_timeout, write_armed = 1;
        rd.tv_sec = cfg->response_header_timeout, read_armed = c->ex.req_done;
        break;
    case PX_UP_SEND: wr.tv_sec = cfg->send_timeout, write_armed = 1; break;
    case PX_UP_WAIT_HEAD: rd.tv_sec = cfg->response_header_timeout, read_armed = 1; break;
    case PX_UP_BODY:
        rd.tv_sec = cfg->ws_idle_timeout, read_armed = 1;
        wr.tv_sec = cfg->send_timeout, write_armed = !c->ex.req_done;
        break;
    }
    bufferevent_set_timeouts(c->ex.up->bev, read_armed ? &rd : NULL, write_armed ? &wr : NULL);
}

/* The request is whole (or the connect finished): the state that follows. */
static void up_request_progress(struct px_conn *c)
{
    switch (c->ex.up_st) {
    case PX_UP_CONNECT:
        if (c->ex.up->connected)
            return up_set_state(c, c->ex.req_done ? PX_UP_WAIT_HEAD : PX_UP_SEND);
        return up_set_state(c, PX_UP_CONNECT); /* the read slot once req_done */
    case PX_UP_SEND:
        if (c->ex.req_done)
            up_set_state(c, PX_UP_WAIT_HEAD);
        return;
    case PX_UP_BODY: /* the runner answered before the request ended */
        if (c->ex.req_done)
            up_set_state(c, PX_UP_BODY);
        return;
    case PX_UP_NONE:
    case PX_UP_WAIT_HEAD:
    case PX_UP_DONE: return;
    }
}

/* The client side of a forwarded exchange: client_body_timeout between two
 * reads while the request body is still coming. (send_timeout, between two
 * writes the client accepts, is set once per connection by conn.c.) HTTP/2
 * streams are bounded per stream by proxy/h2.c instead: a pair's generic
 * timeouts do not look at pending bytes. */
static void client_body_timeout(struct px_conn *c, int on)
{
    struct timeval rd = {c->srv->cfg->client_body_timeout, 0};
    struct timeval wr = {c->srv->cfg->send_timeout, 0};

    if (!c->h2_stream)
        bufferevent_set_timeouts(c->bev, on ? &rd : NULL, &wr);
}

/* A connected plain runner socket is written at once, EV_WRITE armed only for
 * what the kernel did not take (px_bev_send). While connecting (and over TLS)
 * libevent writes when it can. */
static void up_send(struct px_conn *c)
{
    if (c->ex.up != NULL && c->ex.up->connected && !c->ex.up->tls)
        px_bev_send(c->ex.up->bev);
}

static int idempotent(enum http_method m)
{
    return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS || m == HTTP_PUT ||
           m == HTTP_DELETE;
}

/* Writes bytes to the upstream, keeping a copy while a retry is still possible. */
static void up_write_buffer(struct px_conn *c, struct evbuffer *data)
{
    struct evbuffer *out = bufferevent_get_output(c->ex.up->bev);

    if (c->ex.replay != NULL) {
        if (evbuffer_get_length(c->ex.replay) + evbuffer_get_length(data) > PX_REPLAY_MAX) {
            evbuffer_free(c->ex.replay);
            c->ex.replay = NULL;
        } else {
            evbuffer_add_buffer_reference(c->ex.replay, data);
        }
    }
    evbuffer_add_buffer(out, data);
}

/* Moves request body bytes from the client to the upstream. */
void px_fwd_pump_request(struct px_conn *c)
{
    struct evbuffer *in = px_conn_in(c);
    struct evbuffer *tmp;

    if (c->ex.req_done || c->ex.up == NULL || in == NULL)
        return;
    if (c->bev == NULL &&
        evbuffer_get_length(bufferevent_get_output(c->ex.up->bev)) >= PX_HIGH_WATER) {
        /* HTTP/2: what stays in `in` is not acknowledged, so the client's
         * window closes; on_up_write() pumps again at the low mark. */
        bufferevent_setwatermark(c->ex.up->bev, EV_WRITE, PX_HIGH_WATER / 2, 0);
        return;
    }
    if ((tmp = evbuffer_new()) == NULL)
        return px_conn_close(c);
    if (c->ex.req_body == BODY_LENGTH) {
        size_t avail = evbuffer_get_length(in);
        size_t n = (int64_t)avail < c->ex.req_left ? avail : (size_t)c->ex.req_left;
        evbuffer_remove_buffer(in, tmp, n);
        c->ex.req_left -= (int64_t)n;
        c->ex.req_bytes += n;
        if (c->ex.req_left == 0)
            c->ex.req_done = 1;
    } else if (c->ex.req_body == BODY_CHUNKED) {
        uint64_t t0 = c->ex.req_ch.total;
        enum px_parse r = px_chunked_feed(&c->ex.req_ch, in, tmp);
        c->ex.req_bytes += c->ex.req_ch.total - t0;
        switch (r) {
        case PX_PARSE_OK: c->ex.req_done = 1; break;
        case PX_PARSE_AGAIN: break;
        case PX_PARSE_BAD:
            evbuffer_free(tmp);
            clog(c, PX_INFO, "bad chunked request body");
            return px_conn_abort(c, 400, "malformed chunked body");
        }
    } else if (c->ex.req_body == BODY_STREAM) {
        /* HTTP/2 DATA without a Content-Length: chunked towards the runner;
         * in a tunnel the bytes pass as they are. */
        size_t n = evbuffer_get_length(in);
        if (n > 0 && !c->ex.tunnel) {
            struct px_hbuf hb;
            px_hb_init(&hb, tmp);
            px_hb_hex(&hb, n);
            px_hb_lit(&hb, "\r\n");
            px_hb_flush(&hb);
        }
        evbuffer_remove_buffer(in, tmp, n);
        if (n > 0 && !c->ex.tunnel)
            evbuffer_add(tmp, "\r\n", 2);
        c->ex.req_bytes += n;
        if (c->h2s != NULL && px_h2s_in_ended(c->h2s)) {
            if (c->ex.tunnel) { /* the client ended the WebSocket: so does the runner side */
                if (n > 0)
                    up_write_buffer(c, tmp);
                evbuffer_free(tmp);
                up_send(c);
                c->ex.up_reusable = 0;
                return response_done(c);
            }
            evbuffer_add(tmp, "0\r\n\r\n", 5);
            c->ex.req_done = 1;
        }
    }
    size_t cap = c->srv->cfg->max_body_size;
    if (cap > 0 && !c->ex.tunnel &&
        ((c->ex.req_body == BODY_CHUNKED && c->ex.req_ch.total > cap) ||
         (c->ex.req_body == BODY_STREAM && c->ex.req_bytes > cap))) {
        /* A chunked body has no length to check up front: cut it off here. */
        evbuffer_free(tmp);
        return px_conn_abort(c, 413, "request body larger than max_body_size");
    }
    if (evbuffer_get_length(tmp) > 0)
        up_write_buffer(c, tmp);
    evbuffer_free(tmp);
    up_send(c);
    if (c->ex.req_done) {
        /* SPEC 9: response_header_timeout counts from the end of the request. */
        up_request_progress(c);
        if (c->ex.req_body != BODY_NONE)
            client_body_timeout(c, 0);
        return;
    }
    if (evbuffer_get_length(bufferevent_get_output(c->ex.up->bev)) >= PX_HIGH_WATER) {
        if (c->bev != NULL)
            bufferevent_disable(c->bev, EV_READ);
        bufferevent_setwatermark(c->ex.up->bev, EV_WRITE, PX_HIGH_WATER / 2, 0);
    }
}

static int connect_upstream(struct px_conn *c, int allow_pool)
{
    const struct px_sandbox *sb = c->ex.sb;
    int direct = sb->direct && !c->ex.toolbox;
    int port = direct ? (int)c->ex.port : sb->runner_port;
    const char *host = direct && sb->addr != NULL ? sb->addr : sb->runner_host;
    int tls = sb->runner_tls && !direct;

    c->ex.up = allow_pool ? px_pool_take(c->srv->pool, host, port, tls) : NULL;
    if (c->ex.up == NULL) {
        if ((c->ex.up = px_upstream_connect(c->srv, host, port, tls)) == NULL)
            return -1;
        up_set_state(c, PX_UP_CONNECT);
    } else {
        up_set_state(c, c->ex.req_done ? PX_UP_WAIT_HEAD : PX_UP_SEND);
    }
    bufferevent_setcb(c->ex.up->bev, on_up_read, on_up_write, on_up_event, c);
    if (c->ex.up->connected && !c->ex.up->tls) {
        /* a pooled plain socket, written at once (up_send()): nothing queued,
         * so disabling EV_WRITE costs no epoll_ctl */
        bufferevent_disable(c->ex.up->bev, EV_WRITE);
        if (!(bufferevent_get_enabled(c->ex.up->bev) & EV_READ))
            bufferevent_enable(c->ex.up->bev, EV_READ);
    } else {
        bufferevent_enable(c->ex.up->bev, EV_READ | EV_WRITE);
    }
    if (c->ex.up->reused && idempotent(c->ex.req.m) && !c->ex.req.ws_upgrade) {
        if ((c->ex.replay = evbuffer_new()) == NULL)
            return -1;
    }
    return 0;
}

void px_fwd_start(struct px_conn *c)
{
    /* SPEC 9: a direct sandbox reaches only its own ports, never the runner's
     * API port (a path there would be served with the runner's authority). */
    if (c->ex.sb->direct && !c->ex.toolbox && !px_sandbox_direct_port_ok(c->ex.sb, c->ex.port))
        return px_conn_fail(c, 403, "PORT_NOT_ALLOWED",
                            "this port of the sandbox cannot be reached through the proxy");
    if (connect_upstream(c, 1) != 0)
        return px_conn_fail(c, 502, NULL, "cannot connect to the runner");
    gettimeofday(&c->ex.t_upstream, NULL);
    /* Straight into the socket's buffer, and into the replay copy when a
     * retry is possible (a head is far below PX_REPLAY_MAX). */
    build_request(c, bufferevent_get_output(c->ex.up->bev), c->ex.replay);
    if (c->ex.replay != NULL && evbuffer_get_length(c->ex.replay) > PX_REPLAY_MAX) {
        evbuffer_free(c->ex.replay); /* max_header_size set above it: no retry */
        c->ex.replay = NULL;
    }
    px_conn_set_state(c, PX_CONN_STREAM);
    if (c->ex.req_done) /* no body: the head leaves now (else with the first body bytes) */
        return up_send(c);
    client_body_timeout(c, 1);
    px_fwd_pump_request(c);
}

/* The pooled connection was stale: one fresh attempt with the same bytes. */
static int retry(struct px_conn *c)
{
    struct evbuffer *replay = c->ex.replay;

    if (replay == NULL || c->ex.retried || c->ex.resp_seen)
        return -1;
    clog(c, PX_INFO, "retrying on a fresh connection after a stale pooled one failed");
    c->ex.replay = NULL;
    px_conn_upstream_drop(c);
    c->ex.retried = 1;
    if (connect_upstream(c, 0) != 0) {
        evbuffer_free(replay);
        return -1;
    }
    evbuffer_add_buffer(bufferevent_get_output(c->ex.up->bev), replay);
    evbuffer_free(replay);
    return 0;
}

/* A sandbox must not set the proxy's own cookies: `daytona-preview-page-accepted`
 * with the parent's Domain would switch the warning page off for every sandbox,
 * and the auth and PKCE cookies are the proxy's credentials (issue 9). Cookie
 * names are compared without case, as some browsers' stores are lax. */
int px_fwd_proxy_cookie(struct px_str set_cookie_value)
{
    struct px_str v = set_cookie_value;
    size_t n = 0;

    while (v.len && (v.p[0] == ' ' || v.p[0] == '\t'))
        v.p++, v.len--;
    while (n < v.len && v.p[n] != '=' && v.p[n] != ';')
        n++;
    while (n > 0 && (v.p[n - 1] == ' ' || v.p[n - 1] == '\t'))
        n--;
    struct px_str name = px_str_make(v.p, n);
    return px_str_ieq(name, PX_STR("daytona-preview-page-accepted")) ||
           px_str_ieq(name, PX_STR("pkce_verifier")) ||
           (n >= 21 && !strncasecmp(name.p, "daytona-sandbox-auth-", 21));
}

/* The runner's response head as the client gets it (SPEC 9): hop-by-hop and
 * the proxy's own fields dropped, CORS ours, framing for the client's
 * protocol (HTTP/1.1: Content-Length, chunked or close; HTTP/2: DATA frames,
 * so only Content-Length when known). */
static void add_response_head(struct px_conn *c)
{
    struct px_hbuf hb;
    struct px_headw w;
    const struct px_head *rs = &c->ex.resp;
    struct px_str conn_value = PX_STR_NULL;
    int minor = c->ex.req.http_minor;
    int cors = px_head_get(&c->ex.req, PX_STR("origin")) != NULL && !px_cors_disabled(&c->ex.req);
    int h2 = c->bev == NULL;
    int tunnel = rs->status == 101;

    px_conn_head_begin(c, &w, &hb);
    for (int i = 0; i < rs->nhdrs; i++)
        if (px_str_ieq(rs->hdrs[i].name, PX_STR("connection")))
            conn_value = rs->hdrs[i].value;
    /* RFC 8441: an HTTP/2 WebSocket is accepted with a 200 */
    px_hw_status(&w, minor, tunnel && h2 ? 200 : rs->status, rs->reason);
    for (int i = 0; i < rs->nhdrs; i++) {
        const struct px_hdr *f = &rs->hdrs[i];
        if (tunnel && h2 && px_str_ieq(f->name, PX_STR("sec-websocket-accept")))
            continue;
        if (tunnel && !h2 &&
            (px_str_ieq(f->name, PX_STR("upgrade")) || px_str_ieq(f->name, PX_STR("connection"))))
            goto copy;
        if (px_fwd_hop_by_hop(f->name, conn_value))
            continue;
        if (cors && px_cors_owned_header(f->name))
            continue; /* ours replace the sandbox's: never two Allow-Origin headers */
        if (px_str_ieq(f->name, PX_STR("set-cookie")) && px_fwd_proxy_cookie(f->value))
            continue;
        if (c->ex.toolbox && rs->status / 100 == 3 && px_str_ieq(f->name, PX_STR("location"))) {
            /* [compat] keep redirects inside /toolbox/{id} */
            char pre[300], loc[PX_HBUF_CAP];
            int n = snprintf(pre, sizeof(pre), "/toolbox/%s", c->ex.sb->id);
            if ((f->value.len < (size_t)n || memcmp(f->value.p, pre, (size_t)n) != 0) &&
                (size_t)n + 1 + f->value.len < sizeof(loc)) { /* longer: left as it is */
                size_t k = px_cat(loc, sizeof(loc), 0, pre, (size_t)n);
                if (!(f->value.len && f->value.p[0] == '/'))
                    k = px_cat(loc, sizeof(loc), k, "/", 1);
                k = px_cat(loc, sizeof(loc), k, f->value.p, f->value.len);
                px_hw_field_copy(&w, PX_STR("Location"), px_str_make(loc, k));
                continue;
            }
        }
    copy:
        px_hw_field(&w, f->name, f->value);
    }
    if (c->ex.set_cookie != NULL)
        px_hw_lines(&w, c->ex.set_cookie, strlen(c->ex.set_cookie));
    if (cors)
        px_cors_headers(&w, &c->ex.req, PX_CORS_REQ(c->srv->cfg, c->ex.label, c->ex.sb));
    if (tunnel) {
        c->ex.resp_chunk_out = 0;
        return px_conn_head_end(c, &w, 1);
    }
    switch (c->ex.resp_body) {
    case BODY_LENGTH:
        px_hw_field_u64(&w, PX_STR("Content-Length"), (uint64_t)c->ex.resp_left);
        break;
    case BODY_CHUNKED:
        if (h2)
            c->ex.resp_ch.plain = 1; /* DATA frames delimit it */
        else if (minor == 1)
            px_hw_lit(&w, "Transfer-Encoding", "chunked");
        else
            c->ex.keepalive = 0; /* HTTP/1.0 client: de-chunk and close to delimit */
        break;
    case BODY_EOF:
        if (h2)
            break;
        if (minor == 1) {
            px_hw_lit(&w, "Transfer-Encoding", "chunked");
            c->ex.resp_chunk_out = 1;
        } else {
            c->ex.keepalive = 0;
        }
        break;
    case BODY_STREAM:
    case BODY_NONE:
        if (rs->content_length >= 0) /* HEAD, 304: keep the representation's length */
            px_hw_field_u64(&w, PX_STR("Content-Length"), (uint64_t)rs->content_length);
        else if (rs->status != 204 && rs->status != 304 && c->ex.req.m != HTTP_HEAD)
            px_hw_lit(&w, "Content-Length", "0");
        break;
    }
    if (!c->ex.req_done || c->srv->draining)
        c->ex.keepalive = 0;
    if (!h2 && !c->ex.keepalive)
        px_hw_lit(&w, "Connection", "close");
    else if (!h2 && minor == 0)
        px_hw_lit(&w, "Connection", "keep-alive");
    px_conn_head_end(c, &w, c->ex.resp_body != BODY_NONE);
}

/* Reads the response head. Returns 1 when the body phase may start. */
static int read_response_head(struct px_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->ex.up->bev);
    size_t head_len;
    int status;
    const char *why = "malformed response head";

    for (;;) {
        switch (px_h1_find_head(in, PX_MAX_RESP_HEAD, PX_MAX_RESP_HEAD, &head_len, &status)) {
        case PX_PARSE_AGAIN: return 0;
        case PX_PARSE_BAD: goto bad;
        case PX_PARSE_OK: break;
        }
        const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)head_len);
        px_head_free(&c->ex.resp);
        if (data == NULL || px_h1_parse_response(&c->ex.resp, data, head_len, 1000, &why) != 0)
            goto bad;
        evbuffer_drain(in, head_len);
        if (c->ex.resp.status == 101) {
            if (!c->ex.req.ws_upgrade)
                goto bad;
            return 1;
        }
        if (c->ex.resp.status / 100 != 1)
            break;
        /* 1xx: relay 100 Continue to a client that asked for it; drop the rest. */
        if (c->ex.resp.status == 100 && c->ex.req.expect_continue && c->ex.req.http_minor == 1 &&
            c->bev != NULL) {
            evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
            px_conn_wrote(c);
        }
    }
    c->ex.up_reusable = c->ex.resp.keepalive;
    if (!px_h1_response_has_body(&c->ex.resp, c->ex.req.m)) {
        c->ex.resp_body = BODY_NONE;
    } else if (c->ex.resp.chunked) {
        c->ex.resp_body = BODY_CHUNKED;
    } else if (c->ex.resp.content_length >= 0) {
        c->ex.resp_body = c->ex.resp.content_length > 0 ? BODY_LENGTH : BODY_NONE;
        c->ex.resp_left = c->ex.resp.content_length;
        if (c->ex.resp.content_length == 0)
            c->ex.resp.content_length = 0;
    } else {
        c->ex.resp_body = BODY_EOF;
        c->ex.up_reusable = 0;
    }
    return 1;
bad:
    clog(c, PX_WARN, "runner sent %s", why);
    px_conn_abort(c, 502, "the runner sent an invalid response");
    return -1;
}

static void response_done(struct px_conn *c)
{
    c->ex.up_st = PX_UP_DONE;
    if (c->ex.up != NULL) {
        /* A direct-mode app is sandbox code: one that sends a body after a
         * HEAD, 204 or 304 answer (a common framework bug, or on purpose) has
         * nothing to delimit it, and those bytes would be the next request's
         * answer. Such connections are not reused. */
        int direct = c->ex.sb->direct && !c->ex.toolbox;
        int reusable =
            c->ex.up_reusable && c->ex.req_done && !(direct && c->ex.resp_body == BODY_NONE);
        struct px_upstream *up = c->ex.up;
        c->ex.up = NULL;
        px_upstream_release(c->srv->pool, up, reusable);
    }
    px_conn_exchange_done(c);
}

/* Moves response body bytes to the client. */
static void pump_response(struct px_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->ex.up->bev);
    struct evbuffer *out = px_conn_out(c);

    switch (c->ex.resp_body) {
    case BODY_STREAM: /* a request body kind only */
    case BODY_NONE: return response_done(c);
    case BODY_LENGTH: {
        size_t avail = evbuffer_get_length(in);
        size_t n = (int64_t)avail < c->ex.resp_left ? avail : (size_t)c->ex.resp_left;
        evbuffer_remove_buffer(in, out, n);
        c->ex.resp_left -= (int64_t)n;
        c->ex.bytes_out += n;
        if (c->ex.resp_left == 0) {
            if (evbuffer_get_length(in) > 0)
                c->ex.up_reusable = 0; /* the runner sent more than it announced */
            return response_done(c);   /* exchange_done sends what is queued */
        }
        break;
    }
    case BODY_CHUNKED: {
        uint64_t t0 = c->ex.resp_ch.total;
        /* An HTTP/1.0 client gets plain bytes, delimited by close; HTTP/2
         * DATA frames delimit them too. */
        c->ex.resp_ch.plain = c->ex.req.http_minor == 0 || c->bev == NULL;
        enum px_parse r = px_chunked_feed(&c->ex.resp_ch, in, out);
        c->ex.bytes_out += c->ex.resp_ch.total - t0;
        if (r == PX_PARSE_BAD) {
            clog(c, PX_WARN, "runner sent a malformed chunked body");
            px_conn_upstream_drop(c);
            return px_conn_close(c);
        }
        if (r == PX_PARSE_OK)
            return response_done(c);
        break;
    }
    case BODY_EOF: {
        size_t n = evbuffer_get_length(in);
        if (n == 0)
            break;
        if (c->ex.resp_chunk_out)
            evbuffer_add_printf(out, "%zx\r\n", n);
        evbuffer_remove_buffer(in, out, n);
        if (c->ex.resp_chunk_out)
            evbuffer_add(out, "\r\n", 2);
        c->ex.bytes_out += n;
        break;
    }
    }
    if (evbuffer_get_length(out) > 0) /* the head too, for a body still to come (SSE) */
        px_conn_wrote(c);
    if (c->ex.up == NULL)
        return;
    if (c->h2s != NULL) { /* HTTP/2: px_conn_h2_drained() resumes */
        if (px_h2s_out_full(c->h2s))
            bufferevent_disable(c->ex.up->bev, EV_READ);
    } else if (evbuffer_get_length(out) >= PX_HIGH_WATER) {
        bufferevent_disable(c->ex.up->bev, EV_READ);
        bufferevent_setwatermark(c->bev, EV_WRITE, PX_HIGH_WATER / 2, 0);
    }
}

void px_fwd_on_response(struct px_conn *c)
{
    if (c->ex.up_st < PX_UP_BODY) {
        int r = read_response_head(c);
        if (r <= 0)
            return;
        px_metrics_upstream_head(&c->ex.t_upstream);
        if (c->ex.resp.status == 101)
            return start_tunnel(c);
        if (c->ex.resp.status == 503 && c->srv->cfg->api_url != NULL && c->ex.fwd_target == NULL) {
            /* Daytona's runner says a stopped sandbox this way: wake it (API mode) */
            const struct px_hdr *st = px_head_get(&c->ex.resp, PX_STR("x-daytona-sandbox-state"));
            if (st != NULL && px_str_ieq(st->value, PX_STR("stopped"))) {
                px_conn_upstream_drop(c);
                return px_wake_or_fail(c, 503, "the sandbox is stopped");
            }
        }
        add_response_head(c);
        c->ex.status = c->ex.resp.status;
        /* BODY, armed only if the body outlives this callback: most responses
         * end right here, and re-arming the runner's timeouts and the activity
         * timer for them is wasted (issue 13). */
        c->ex.up_st = PX_UP_BODY;
        pump_response(c);
        if (c->state == PX_CONN_STREAM && c->ex.up_st == PX_UP_BODY && c->ex.up != NULL) {
            /* Streaming bodies (SSE, downloads) may idle for long; bound them by
             * the long-lived connection timeout instead of the header timeout. */
            up_set_state(c, PX_UP_BODY);
            px_conn_arm_timer(c, PX_ACTIVITY_REFRESH(c->srv->cfg->activity_interval));
        }
        return;
    }
    if (c->ex.up_st == PX_UP_BODY)
        pump_response(c);
}

/* HTTP/2 (RFC 8441): the stream is the tunnel. The exchange stays: runner
 * bytes go out as DATA (a body delimited by the runner's close), DATA from
 * the client goes to the runner as it is, until either side ends. The
 * runner's read timeout is ws_idle_timeout (PX_UP_BODY). */
static void start_h2_tunnel(struct px_conn *c)
{
    c->ex.status = 101;
    c->ex.resp_body = BODY_EOF;
    c->ex.up_reusable = 0;
    add_response_head(c);
    px_conn_access_log(c);
    c->ex.tunnel = 1;
    c->ex.req_body = BODY_STREAM;
    c->ex.req_done = 0;
    up_set_state(c, PX_UP_BODY);
    px_conn_arm_timer(c, PX_ACTIVITY_REFRESH(c->srv->cfg->activity_interval));
    px_fwd_pump_request(c); /* DATA that came with or before the answer */
    if (c->state == PX_CONN_STREAM && c->ex.up != NULL &&
        evbuffer_get_length(bufferevent_get_input(c->ex.up->bev)) > 0)
        pump_response(c);
}

static void start_tunnel(struct px_conn *c)
{
    if (c->bev == NULL)
        return start_h2_tunnel(c);
    struct bufferevent *client = c->bev, *runner = c->ex.up->bev;
    const struct px_hdr *skip =
        px_head_get(&c->ex.req, PX_STR("x-daytona-skip-last-activity-update"));
    int activity = skip == NULL || !px_str_ieq(skip->value, PX_STR("true"));
    int raw = !c->tls && !c->ex.up->tls; /* two plain sockets */

    c->ex.status = 101;
    add_response_head(c);
    px_conn_access_log(c);
    /* Both sockets leave this connection, whose per-request state is freed:
     * an idle tunnel then costs only what ws/ keeps. */
    evtimer_del(c->timer);
    c->bev = NULL;
    c->ex.up->bev = NULL;
    px_conn_upstream_drop(c);
    px_splice_start(c->srv, client, runner, c->ex.sb->id, activity, raw, c->peer_slot);
    c->peer_slot = NULL;
    px_conn_close(c);
}

static void on_up_read(struct bufferevent *bev, void *arg)
{
    struct px_conn *c = arg;
    (void)bev;

    ENTER(c);
    c->ex.resp_seen = 1;
    if (c->ex.replay != NULL) { /* a byte came back: the request can no longer be retried */
        evbuffer_free(c->ex.replay);
        c->ex.replay = NULL;
    }
    /* A body streams faster in 64 KiB bites than in libevent's 4 KiB ones. */
    if (c->state == PX_CONN_STREAM && c->ex.up_st == PX_UP_BODY && !c->ex.up->tls &&
        c->bev != NULL && evbuffer_get_length(bufferevent_get_output(c->bev)) < PX_HIGH_WATER)
        px_bev_slurp(bev, PX_HIGH_WATER);
    if (c->state == PX_CONN_STREAM)
        px_fwd_on_response(c);
    LEAVE(c);
}

static void on_up_write(struct bufferevent *bev, void *arg)
{
    struct px_conn *c = arg;
    (void)bev;

    ENTER(c);
    /* Drained: back to writing at once (up_send()). */
    if (c->ex.up != NULL && c->ex.up->connected && !c->ex.up->tls &&
        evbuffer_get_length(bufferevent_get_output(c->ex.up->bev)) == 0)
        bufferevent_disable(c->ex.up->bev, EV_WRITE);
    if (c->state == PX_CONN_STREAM) {
        /* The runner drained below the low mark: resume reading the client. */
        bufferevent_setwatermark(c->ex.up->bev, EV_WRITE, 0, 0);
        if (c->bev != NULL)
            bufferevent_enable(c->bev, EV_READ);
        struct evbuffer *in = px_conn_in(c);
        if (in != NULL && evbuffer_get_length(in))
            px_fwd_pump_request(c);
    }
    LEAVE(c);
}

/* SPEC 10: a stopped sandbox that wants waking, or one already starting. */
static int sandbox_asleep(const struct px_conn *c)
{
    const char *st = c->ex.sb->state ? c->ex.sb->state : "started";

    return !strcmp(st, "starting") || (c->ex.sb->wake_http && !strcmp(st, "stopped"));
}

void px_fwd_starting(struct px_conn *c)
{
    struct evbuffer *b = evbuffer_new();

    if (b == NULL)
        return px_conn_close(c);
    if (!strcmp(c->ex.sb->state ? c->ex.sb->state : "", "stopped"))
        px_activity_wake(c->ex.sb->id);
    if (px_conn_wants_html(c)) {
        px_starting_page(b, c->ex.reqid);
        px_conn_respond(c, 503, "text/html; charset=utf-8", b, "Retry-After: 5\r\n");
    } else {
        struct px_error e = {503, "SANDBOX_STARTING", "the sandbox is starting; retry shortly"};
        const char *ct = px_error_body(c->srv->cfg, b, &e, c->ex.req.method,
                                       px_path_only(c->ex.path), c->ex.reqid, 0);
        px_conn_respond(c, 503, ct, b, "Retry-After: 5\r\n");
    }
    evbuffer_free(b);
}

static void on_up_event(struct bufferevent *bev, short what, void *arg)
{
    struct px_conn *c = arg;
    (void)bev;

    ENTER(c);
    if (what & BEV_EVENT_CONNECTED) {
        c->ex.up->connected = 1;
        px_upstream_nodelay(c->ex.up);
        up_request_progress(c);
        goto out;
    }
    if (c->state != PX_CONN_STREAM)
        goto out;
    if ((what & BEV_EVENT_EOF) && c->ex.up_st == PX_UP_BODY && c->ex.resp_body == BODY_EOF) {
        pump_response(c);
        if (c->ex.resp_chunk_out)
            evbuffer_add(px_conn_out(c), "0\r\n\r\n", 5);
        c->ex.up_reusable = 0;
        response_done(c);
        goto out;
    }
    if (c->ex.up_st < PX_UP_BODY) {
        int timeout = (what & BEV_EVENT_TIMEOUT) != 0;
        int connecting = c->ex.up_st == PX_UP_CONNECT;
        if (c->ex.up->tls && connecting && !timeout) {
            SSL *ssl = bufferevent_openssl_get_ssl(c->ex.up->bev);
            long vr = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
            if (vr != X509_V_OK) {
                clog(c, PX_WARN, "runner TLS certificate verification failed: %s",
                     X509_verify_cert_error_string(vr));
                px_conn_upstream_drop(c);
                px_conn_fail(c, 502, "RUNNER_TLS_ERROR",
                             "the runner's TLS certificate is not trusted");
                goto out;
            }
        }
        if (!timeout && c->ex.up->reused && retry(c) == 0)
            goto out;
        px_conn_upstream_drop(c);
        if (connecting && sandbox_asleep(c))
            px_fwd_starting(c);
        else if (timeout && connecting)
            px_wake_or_fail(c, 504, "timed out connecting to the runner");
        else if (timeout)
            px_conn_fail(c, 504, NULL, "the sandbox service did not answer in time");
        else if (connecting)
            px_wake_or_fail(c, 502, "the sandbox service (or its runner) refused the connection");
        else
            px_conn_fail(c, 502, NULL, "the runner closed the connection before answering");
        goto out;
    }
    /* Mid-body failure: the status line is out, so all we can do is close. */
    clog(c, PX_INFO, "runner connection ended mid-response");
    px_conn_abort(c, 0, NULL);
out:
    LEAVE(c);
}

/* metrics.c — Prometheus text metrics on their own listener (metrics_listen),
 * never on the proxy's listeners. Each worker answers with its own counters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "auth/lookup.h"
#include "proxy/metrics.h"
#include "proxy/peers.h"

struct px_metrics px_metrics;

static void render(struct px_server *srv, struct evbuffer *b)
{
    const struct px_lookup_stats *ls = px_lookup_stats();

    evbuffer_add_printf(b, "# TYPE preview_proxy_requests_total counter\n");
    for (int i = 1; i <= 5; i++)
        evbuffer_add_printf(b, "preview_proxy_requests_total{class=\"%dxx\"} %llu\n", i,
                            (unsigned long long)px_metrics.responses[i]);
    evbuffer_add_printf(b,
                        "# TYPE preview_proxy_response_bytes_total counter\n"
                        "preview_proxy_response_bytes_total %llu\n"
                        "# TYPE preview_proxy_connections_accepted_total counter\n"
                        "preview_proxy_connections_accepted_total %llu\n"
                        "# TYPE preview_proxy_open_connections gauge\n"
                        "preview_proxy_open_connections{kind=\"http\"} %lu\n"
                        "preview_proxy_open_connections{kind=\"websocket\"} %lu\n"
                        "preview_proxy_open_connections{kind=\"h2\"} %lu\n"
                        "# TYPE preview_proxy_h2_goaway_abuse_total counter\n"
                        "preview_proxy_h2_goaway_abuse_total %lu\n"
                        "# TYPE preview_proxy_lookups_total counter\n"
                        "preview_proxy_lookups_total{result=\"hit\"} %lu\n"
                        "preview_proxy_lookups_total{result=\"miss\"} %lu\n"
                        "preview_proxy_lookups_total{result=\"coalesced\"} %lu\n"
                        "preview_proxy_lookups_total{result=\"refused\"} %lu\n",
                        (unsigned long long)px_metrics.bytes_out,
                        (unsigned long long)px_metrics.accepted, srv->nconns, srv->nsplices,
                        srv->nh2, srv->h2_goaways, ls->hits, ls->misses, ls->coalesced,
                        ls->refused);
    /* main.c pauses accepting at max_connections and after accept() fails. */
    evbuffer_add_printf(b,
                        "# TYPE preview_proxy_accept_paused gauge\n"
                        "preview_proxy_accept_paused{reason=\"max_connections\"} %d\n"
                        "preview_proxy_accept_paused{reason=\"accept_error\"} %d\n"
                        "# TYPE preview_proxy_accept_pauses_total counter\n"
                        "preview_proxy_accept_pauses_total{reason=\"max_connections\"} %lu\n"
                        "preview_proxy_accept_pauses_total{reason=\"accept_error\"} %lu\n",
                        srv->accept_paused == PX_PAUSED_LIMIT,
                        srv->accept_paused == PX_PAUSED_ERROR, srv->pauses_limit,
                        srv->pauses_error);
    /* proxy/peers.c: max_connections_per_ip */
    evbuffer_add_printf(b,
                        "# TYPE preview_proxy_client_addresses gauge\n"
                        "preview_proxy_client_addresses %lu\n"
                        "# TYPE preview_proxy_refused_per_ip_total counter\n"
                        "preview_proxy_refused_per_ip_total %lu\n",
                        px_peer_addresses(), px_peer_refused());
}

static void on_done(struct bufferevent *bev, void *arg)
{
    (void)arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bufferevent_free(bev);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)what;
    (void)arg;
    bufferevent_free(bev);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct px_server *srv = arg;
    struct evbuffer *in = bufferevent_get_input(bev), *body;
    char line[16] = {0};

    if (evbuffer_search(in, "\r\n\r\n", 4, NULL).pos < 0) {
        if (evbuffer_get_length(in) > 8192)
            bufferevent_free(bev);
        return;
    }
    evbuffer_copyout(in, line, sizeof(line) - 1);
    evbuffer_drain(in, evbuffer_get_length(in));
    if ((body = evbuffer_new()) == NULL) {
        bufferevent_free(bev);
        return;
    }
    int ok = !strncmp(line, "GET /metrics ", 13);
    if (ok)
        render(srv, body);
    else
        evbuffer_add_printf(body, "not found\n");
    evbuffer_add_printf(bufferevent_get_output(bev),
                        "HTTP/1.1 %s\r\nContent-Type: text/plain; version=0.0.4\r\n"
                        "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                        ok ? "200 OK" : "404 Not Found", evbuffer_get_length(body));
    evbuffer_add_buffer(bufferevent_get_output(bev), body);
    evbuffer_free(body);
    bufferevent_disable(bev, EV_READ);
    bufferevent_setcb(bev, NULL, on_done, on_event, srv);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
    struct px_server *srv = arg;
    struct bufferevent *bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    struct timeval tv = {5, 0};
    (void)l;
    (void)sa;
    (void)len;

    if (bev == NULL) {
        evutil_closesocket(fd);
        return;
    }
    bufferevent_setcb(bev, on_read, NULL, on_event, srv);
    bufferevent_set_timeouts(bev, &tv, &tv);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

struct evconnlistener *px_metrics_listen(struct px_server *srv)
{
    const struct px_config *cfg = srv->cfg;

    if (cfg->metrics.addrlen == 0)
        return NULL;
    return evconnlistener_new_bind(
        srv->base, on_accept, srv,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT | LEV_OPT_CLOSE_ON_EXEC,
        128, (const struct sockaddr *)&cfg->metrics.addr, (int)cfg->metrics.addrlen);
}

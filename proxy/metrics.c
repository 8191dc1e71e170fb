/* metrics.c — Prometheus text metrics on their own listener (metrics_listen),
 * never on the proxy's listeners. Each worker answers with its own counters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "auth/auth.h"
#include "auth/lookup.h"
#include "auth/redis.h"
#include "proxy/conn_priv.h"
#include "proxy/metrics.h"
#include "proxy/peers.h"

struct px_metrics px_metrics;

static const char *const route_names[PX_RK_COUNT] = {
    [PX_RK_OTHER] = "other",           [PX_RK_PREVIEW] = "preview",   [PX_RK_TOOLBOX] = "toolbox",
    [PX_RK_PREFLIGHT] = "preflight",   [PX_RK_WARNING] = "warning",   [PX_RK_ACCEPT] = "accept",
    [PX_RK_LOGIN] = "login",           [PX_RK_CALLBACK] = "callback", [PX_RK_HEALTH] = "health",
    [PX_RK_BUILD_LOGS] = "build_logs",
};

static const char *const outcome_names[PX_AO_COUNT] = {
    [PX_AO_PUBLIC] = "public",
    [PX_AO_API_KEY] = "api_key",
    [PX_AO_TOKEN_HEADER] = "token_header",
    [PX_AO_TOKEN_QUERY] = "token_query",
    [PX_AO_COOKIE] = "cookie",
    [PX_AO_SIGNED_URL] = "signed_url",
    [PX_AO_FILE_URL] = "file_url",
    [PX_AO_OIDC] = "oidc",
    [PX_AO_REFUSED_400] = "refused_400",
    [PX_AO_REFUSED_401] = "refused_401",
    [PX_AO_REFUSED_403] = "refused_403",
    [PX_AO_REFUSED_404] = "refused_404",
    [PX_AO_BUSY_429] = "busy_429",
    [PX_AO_UNAVAILABLE_503] = "unavailable_503",
    [PX_AO_REFUSED_OTHER] = "refused_other",
};

/* Seconds; the usual web latency ladder, stretched to the 60 s a slow runner may take. */
static const double lat_le[PX_LAT_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                              0.25,  0.5,    1,     2.5,  5,     10,   60};
static const char *const lat_le_text[PX_LAT_BUCKETS] = {"0.001", "0.0025", "0.005", "0.01", "0.025",
                                                        "0.05",  "0.1",    "0.25",  "0.5",  "1",
                                                        "2.5",   "5",      "10",    "60"};

void px_metrics_request(int route_kind, int status)
{
    if (route_kind < 0 || route_kind >= PX_RK_COUNT)
        route_kind = PX_RK_OTHER;
    if (status >= 100 && status < 600)
        px_metrics.responses[route_kind][status / 100]++;
    if (status == 101)
        px_metrics.websockets++;
}

void px_metrics_upstream_head(const struct timeval *sent)
{
    struct timeval now;
    double s;
    int i;

    if (sent->tv_sec == 0)
        return;
    gettimeofday(&now, NULL);
    s = (double)(now.tv_sec - sent->tv_sec) + (double)(now.tv_usec - sent->tv_usec) / 1e6;
    if (s < 0) /* the wall clock stepped back */
        s = 0;
    for (i = 0; i < PX_LAT_BUCKETS && s > lat_le[i]; i++)
        ;
    px_metrics.lat[i]++;
    px_metrics.lat_sum += s;
}

static enum px_auth_outcome refused(int status)
{
    switch (status) {
    case 400: return PX_AO_REFUSED_400;
    case 401: return PX_AO_REFUSED_401;
    case 403: return PX_AO_REFUSED_403;
    case 404: return PX_AO_REFUSED_404;
    case 429: return PX_AO_BUSY_429;
    case 503: return PX_AO_UNAVAILABLE_503;
    default: return PX_AO_REFUSED_OTHER;
    }
}

void px_metrics_auth(int status, int via)
{
    static const enum px_auth_outcome by_via[] = {
        [PX_AUTH_VIA_NONE] = PX_AO_REFUSED_OTHER, /* admitted by no step: cannot happen */
        [PX_AUTH_VIA_PUBLIC] = PX_AO_PUBLIC,
        [PX_AUTH_VIA_API_KEY] = PX_AO_API_KEY,
        [PX_AUTH_VIA_TOKEN_HEADER] = PX_AO_TOKEN_HEADER,
        [PX_AUTH_VIA_TOKEN_QUERY] = PX_AO_TOKEN_QUERY,
        [PX_AUTH_VIA_COOKIE] = PX_AO_COOKIE,
        [PX_AUTH_VIA_SIGNED_URL] = PX_AO_SIGNED_URL,
        [PX_AUTH_VIA_FILE_URL] = PX_AO_FILE_URL,
    };

    if (status != 0)
        px_metrics.auth[refused(status)]++;
    else if (via >= 0 && via < (int)(sizeof(by_via) / sizeof(by_via[0])))
        px_metrics.auth[by_via[via]]++;
    else
        px_metrics.auth[PX_AO_REFUSED_OTHER]++;
}

void px_metrics_oidc(int ok, int status)
{
    px_metrics.auth[ok ? PX_AO_OIDC : refused(status)]++;
}

void px_metrics_redis_error(const char *err)
{
    px_metrics.redis_errors[err == px_err_timeout ? 0 : 1]++;
}

static unsigned long open_h2_streams(const struct px_server *srv)
{
    unsigned long n = 0;

    for (const struct px_conn *c = srv->conns; c != NULL; c = c->next)
        n += c->h2_stream;
    return n;
}

static void render_requests(struct evbuffer *b)
{
    evbuffer_add_printf(b, "# HELP preview_proxy_requests_total Requests answered, by route "
                           "kind and status class.\n"
                           "# TYPE preview_proxy_requests_total counter\n");
    for (int k = 0; k < PX_RK_COUNT; k++)
        for (int i = 1; i <= 5; i++)
            evbuffer_add_printf(b,
                                "preview_proxy_requests_total{route=\"%s\",class=\"%dxx\"} %llu\n",
                                route_names[k], i, (unsigned long long)px_metrics.responses[k][i]);
    evbuffer_add_printf(b, "# HELP preview_proxy_upstream_response_seconds Time from sending a "
                           "request to the runner until its response head arrived.\n"
                           "# TYPE preview_proxy_upstream_response_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < PX_LAT_BUCKETS; i++) {
        cum += px_metrics.lat[i];
        evbuffer_add_printf(b, "preview_proxy_upstream_response_seconds_bucket{le=\"%s\"} %llu\n",
                            lat_le_text[i], (unsigned long long)cum);
    }
    cum += px_metrics.lat[PX_LAT_BUCKETS];
    evbuffer_add_printf(b,
                        "preview_proxy_upstream_response_seconds_bucket{le=\"+Inf\"} %llu\n"
                        "preview_proxy_upstream_response_seconds_sum %.6f\n"
                        "preview_proxy_upstream_response_seconds_count %llu\n",
                        (unsigned long long)cum, px_metrics.lat_sum, (unsigned long long)cum);
    evbuffer_add_printf(b, "# HELP preview_proxy_auth_total Auth decisions, by the step that "
                           "admitted or the refusal.\n"
                           "# TYPE preview_proxy_auth_total counter\n");
    for (int i = 0; i < PX_AO_COUNT; i++)
        evbuffer_add_printf(b, "preview_proxy_auth_total{outcome=\"%s\"} %llu\n", outcome_names[i],
                            (unsigned long long)px_metrics.auth[i]);
}

static void render(struct px_server *srv, struct evbuffer *b)
{
    const struct px_lookup_stats *ls = px_lookup_stats();

    render_requests(b);
    evbuffer_add_printf(
        b,
        "# HELP preview_proxy_response_bytes_total Response body bytes sent to clients.\n"
        "# TYPE preview_proxy_response_bytes_total counter\n"
        "preview_proxy_response_bytes_total %llu\n"
        "# HELP preview_proxy_connections_accepted_total Client connections accepted (HTTP/2 "
        "streams included).\n"
        "# TYPE preview_proxy_connections_accepted_total counter\n"
        "preview_proxy_connections_accepted_total %llu\n"
        "# HELP preview_proxy_open_connections Open client connections by kind.\n"
        "# TYPE preview_proxy_open_connections gauge\n"
        "preview_proxy_open_connections{kind=\"http\"} %lu\n"
        "preview_proxy_open_connections{kind=\"websocket\"} %lu\n"
        "preview_proxy_open_connections{kind=\"h2\"} %lu\n"
        "# HELP preview_proxy_open_h2_streams HTTP/2 streams in progress.\n"
        "# TYPE preview_proxy_open_h2_streams gauge\n"
        "preview_proxy_open_h2_streams %lu\n"
        "# HELP preview_proxy_websockets_total WebSocket tunnels opened (101 answers).\n"
        "# TYPE preview_proxy_websockets_total counter\n"
        "preview_proxy_websockets_total %llu\n"
        "# HELP preview_proxy_h2_streams_total HTTP/2 streams opened.\n"
        "# TYPE preview_proxy_h2_streams_total counter\n"
        "preview_proxy_h2_streams_total %llu\n"
        "# HELP preview_proxy_h2_connections_total HTTP/2 connections opened.\n"
        "# TYPE preview_proxy_h2_connections_total counter\n"
        "preview_proxy_h2_connections_total %llu\n"
        "# HELP preview_proxy_h2_goaway_abuse_total HTTP/2 connections closed for abuse.\n"
        "# TYPE preview_proxy_h2_goaway_abuse_total counter\n"
        "preview_proxy_h2_goaway_abuse_total %lu\n",
        (unsigned long long)px_metrics.bytes_out, (unsigned long long)px_metrics.accepted,
        srv->nconns, srv->nsplices, srv->nh2, open_h2_streams(srv),
        (unsigned long long)px_metrics.websockets, (unsigned long long)px_metrics.h2_streams,
        (unsigned long long)px_metrics.h2_connections, srv->h2_goaways);
    evbuffer_add_printf(
        b,
        "# HELP preview_proxy_lookups_total Record lookups: hit and miss are the in-process "
        "cache's.\n"
        "# TYPE preview_proxy_lookups_total counter\n"
        "preview_proxy_lookups_total{result=\"hit\"} %lu\n"
        "preview_proxy_lookups_total{result=\"miss\"} %lu\n"
        "preview_proxy_lookups_total{result=\"coalesced\"} %lu\n"
        "preview_proxy_lookups_total{result=\"refused\"} %lu\n"
        "# HELP preview_proxy_redis_errors_total Redis commands that failed.\n"
        "# TYPE preview_proxy_redis_errors_total counter\n"
        "preview_proxy_redis_errors_total{reason=\"timeout\"} %llu\n"
        "preview_proxy_redis_errors_total{reason=\"error\"} %llu\n"
        "# HELP preview_proxy_redis_failovers_total Primary switches seen through Redis "
        "Sentinel.\n"
        "# TYPE preview_proxy_redis_failovers_total counter\n"
        "preview_proxy_redis_failovers_total %llu\n"
        "# HELP preview_proxy_api_errors_total Daytona API lookups that failed or answered "
        "5xx.\n"
        "# TYPE preview_proxy_api_errors_total counter\n"
        "preview_proxy_api_errors_total %llu\n",
        ls->hits, ls->misses, ls->coalesced, ls->refused,
        (unsigned long long)px_metrics.redis_errors[0],
        (unsigned long long)px_metrics.redis_errors[1], (unsigned long long)px_redis_failovers(),
        (unsigned long long)px_metrics.api_errors);
    /* main.c pauses accepting at max_connections and after accept() fails. */
    evbuffer_add_printf(b,
                        "# HELP preview_proxy_accept_paused Whether accepting is paused, by "
                        "reason.\n"
                        "# TYPE preview_proxy_accept_paused gauge\n"
                        "preview_proxy_accept_paused{reason=\"max_connections\"} %d\n"
                        "preview_proxy_accept_paused{reason=\"accept_error\"} %d\n"
                        "# HELP preview_proxy_accept_pauses_total Times accepting paused, by "
                        "reason.\n"
                        "# TYPE preview_proxy_accept_pauses_total counter\n"
                        "preview_proxy_accept_pauses_total{reason=\"max_connections\"} %lu\n"
                        "preview_proxy_accept_pauses_total{reason=\"accept_error\"} %lu\n",
                        srv->accept_paused == PX_PAUSED_LIMIT,
                        srv->accept_paused == PX_PAUSED_ERROR, srv->pauses_limit,
                        srv->pauses_error);
    /* proxy/peers.c: max_connections_per_ip */
    evbuffer_add_printf(b,
                        "# HELP preview_proxy_client_addresses Client addresses holding "
                        "connections.\n"
                        "# TYPE preview_proxy_client_addresses gauge\n"
                        "preview_proxy_client_addresses %lu\n"
                        "# HELP preview_proxy_refused_per_ip_total Connections refused by "
                        "max_connections_per_ip.\n"
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

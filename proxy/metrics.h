/* metrics.h — counters for the Prometheus endpoint (metrics_listen).
 *
 * Counters are bumped with one line where the event happens; every label value
 * comes from a fixed set below, never from a request (no hosts, no sandbox IDs:
 * cardinality and secrets). */
#ifndef PX_METRICS_H
#define PX_METRICS_H

#include <stdint.h>
#include <sys/time.h>

#include <event2/listener.h>

#include "proxy/server.h"

/* What kind of route answered a request; set by proxy/route.c, reset per exchange. */
enum px_route_kind {
    PX_RK_OTHER = 0,  /* never routed: malformed, no route, unknown host */
    PX_RK_PREVIEW,    /* {port}-{label}.{domain} or a custom domain, to the runner */
    PX_RK_TOOLBOX,    /* /toolbox/{id}/... */
    PX_RK_PREFLIGHT,  /* CORS preflight answered before auth */
    PX_RK_WARNING,    /* the preview warning page */
    PX_RK_ACCEPT,     /* POST /accept-daytona-preview-warning */
    PX_RK_LOGIN,      /* the redirect to the IdP */
    PX_RK_CALLBACK,   /* the OIDC callback */
    PX_RK_HEALTH,     /* /health */
    PX_RK_BUILD_LOGS, /* API mode's build logs */
    PX_RK_COUNT,
};

/* Outcomes of the auth chain and of the OIDC callback. */
enum px_auth_outcome {
    PX_AO_PUBLIC = 0,
    PX_AO_API_KEY,
    PX_AO_TOKEN_HEADER,
    PX_AO_TOKEN_QUERY,
    PX_AO_COOKIE,
    PX_AO_SIGNED_URL,
    PX_AO_FILE_URL,
    PX_AO_OIDC, /* a callback that completed a login (the cookie it sets admits later) */
    PX_AO_REFUSED_400,
    PX_AO_REFUSED_401,
    PX_AO_REFUSED_403,
    PX_AO_REFUSED_404,
    PX_AO_BUSY_429,
    PX_AO_UNAVAILABLE_503,
    PX_AO_REFUSED_OTHER,
    PX_AO_COUNT,
};

/* Upstream latency buckets, seconds (le), +Inf not included. */
#define PX_LAT_BUCKETS 14

struct px_metrics {
    uint64_t responses[PX_RK_COUNT][6]; /* by route kind, status class [1]..[5] ([0] unused) */
    uint64_t bytes_out;
    uint64_t accepted;
    uint64_t auth[PX_AO_COUNT];
    uint64_t lat[PX_LAT_BUCKETS + 1]; /* per bucket, not cumulative; last is +Inf */
    double lat_sum;                   /* seconds */
    uint64_t redis_errors[2];         /* [0] timeouts, [1] other errors (link down, ...) */
    uint64_t api_errors;              /* Daytona API calls that failed or answered 5xx */
    uint64_t websockets;              /* WebSocket tunnels opened */
    uint64_t h2_streams;              /* HTTP/2 streams opened */
    uint64_t h2_connections;          /* HTTP/2 connections opened */
};

extern struct px_metrics px_metrics; /* per process */

/* One answered request (the access log line). */
void px_metrics_request(int route_kind, int status);
/* The runner's response head arrived; sent is when the request went out. */
void px_metrics_upstream_head(const struct timeval *sent);
/* The auth chain decided (status 0: admitted via, an enum px_auth_via). */
void px_metrics_auth(int status, int via);
/* An OIDC callback answered: ok when it completed a login. */
void px_metrics_oidc(int ok, int status);
/* A Redis command failed (err from auth/redis.c). */
void px_metrics_redis_error(const char *err);

/* Opens the metrics listener if configured; NULL when not (or on failure, logged). */
struct evconnlistener *px_metrics_listen(struct px_server *srv);

#endif

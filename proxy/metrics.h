/* metrics.h — counters for the Prometheus endpoint (metrics_listen). */
#ifndef PX_METRICS_H
#define PX_METRICS_H

#include <event2/listener.h>

#include "proxy/server.h"

struct px_metrics {
    uint64_t responses[6]; /* by status class, [1]..[5] */
    uint64_t bytes_out;
    uint64_t accepted;
};

extern struct px_metrics px_metrics; /* per process */

/* Opens the metrics listener if configured; NULL when not (or on failure, logged). */
struct evconnlistener *px_metrics_listen(struct px_server *srv);

#endif

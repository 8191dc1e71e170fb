/* upstream.h — connections to runners, and the keep-alive pool that reuses them.
 *
 * A connection is either checked out (owned by one client connection, which
 * installs its own callbacks) or idle in the pool (owned by the pool, which
 * closes it on any event, on stray bytes, or after upstream_idle_timeout). */
#ifndef PX_UPSTREAM_H
#define PX_UPSTREAM_H

#include <event2/bufferevent.h>

#include "proxy/server.h"

struct px_upstream {
    struct bufferevent *bev; /* owned; frees the fd */
    char *key;               /* owned; "host:port", the pool bucket */
    unsigned reused : 1;     /* came out of the pool: may be stale (SPEC 9 retry) */
    unsigned connected : 1;
    unsigned tls : 1;         /* https runner: the bufferevent is an OpenSSL one */
    struct px_upstream *next; /* pool links, only while idle */
    struct px_upstream *prev;
    struct px_pool_bucket *bucket; /* borrowed, only while idle */
};

struct px_pool *px_pool_new(struct px_server *srv);
void px_pool_free(struct px_pool *pool);

/* Returns an idle pooled connection to host:port (reused = 1) or NULL.
 * The caller owns it and must set callbacks before returning to the loop. */
struct px_upstream *px_pool_take(struct px_pool *pool, const char *host, int port, int tls);

/* Starts a new non-blocking connection. Returns NULL on immediate failure.
 * Completion arrives as BEV_EVENT_CONNECTED on the callbacks the caller sets. */
struct px_upstream *px_upstream_connect(struct px_server *srv, const char *host, int port, int tls);

/* Gives a checked-out connection back: into the pool if reusable and the bucket
 * has room, else closed. The pointer is invalid afterwards. */
void px_upstream_release(struct px_pool *pool, struct px_upstream *up, int reusable);

/* Sets TCP_NODELAY once the connection is up. */
void px_upstream_nodelay(struct px_upstream *up);

#endif

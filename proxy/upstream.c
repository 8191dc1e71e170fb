/* upstream.c — runner connections and the keep-alive pool.
 *
 * Buckets are keyed by "host:port"; each keeps at most upstream_keepalive idle
 * connections, most recently used first (the freshest is least likely stale).
 * Idle connections close after upstream_idle_timeout, which defaults below the
 * runner's own 70 s so that we, not the runner, decide when one dies (LESSONS A13). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/buffer.h>
#include <event2/dns.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "proxy/upstream.h"

struct px_pool_bucket {
    char *key;                /* owned */
    struct px_upstream *idle; /* owned list of idle connections, MRU first */
    int nidle;
    struct px_pool_bucket *next;
};

struct px_pool {
    struct px_server *srv;          /* borrowed */
    struct px_pool_bucket *buckets; /* owned list */
};

struct px_pool *px_pool_new(struct px_server *srv)
{
    struct px_pool *p = calloc(1, sizeof(*p));

    if (p != NULL)
        p->srv = srv;
    return p;
}

static void upstream_free(struct px_upstream *up)
{
    if (up->bev != NULL)
        bufferevent_free(up->bev);
    free(up->key);
    free(up);
}

static void unlink_idle(struct px_upstream *up)
{
    struct px_pool_bucket *b = up->bucket;

    if (up->prev != NULL)
        up->prev->next = up->next;
    else
        b->idle = up->next;
    if (up->next != NULL)
        up->next->prev = up->prev;
    up->next = up->prev = NULL;
    up->bucket = NULL;
    b->nidle--;
}

void px_pool_free(struct px_pool *pool)
{
    if (pool == NULL)
        return;
    while (pool->buckets != NULL) {
        struct px_pool_bucket *b = pool->buckets;
        while (b->idle != NULL) {
            struct px_upstream *up = b->idle;
            unlink_idle(up);
            upstream_free(up);
        }
        pool->buckets = b->next;
        free(b->key);
        free(b);
    }
    free(pool);
}

static struct px_pool_bucket *bucket(struct px_pool *pool, const char *key, int create)
{
    struct px_pool_bucket *b;

    for (b = pool->buckets; b != NULL; b = b->next)
        if (!strcmp(b->key, key))
            return b;
    if (!create || (b = calloc(1, sizeof(*b))) == NULL)
        return NULL;
    if ((b->key = strdup(key)) == NULL) {
        free(b);
        return NULL;
    }
    b->next = pool->buckets;
    pool->buckets = b;
    return b;
}

static void make_key(char *buf, size_t len, const char *host, int port, int tls)
{
    size_t n = tls ? px_cat(buf, len, 0, "https://", 8) : px_cat(buf, len, 0, "", 0);

    n = px_cat(buf, len, n, host, strlen(host));
    n = px_cat(buf, len, n, ":", 1);
    px_cat_num(buf, len, n, (unsigned long long)port, 0);
}

/* An idle connection must have nothing to read: no unread bytes in its
 * buffer, in OpenSSL, or on the socket, and no EOF. One recv(MSG_PEEK) per
 * reuse; the idle callback catches what arrives while the loop runs, this
 * catches what arrived in the same loop pass. */
static int socket_quiet(struct px_upstream *up)
{
    evutil_socket_t fd = bufferevent_getfd(up->bev);
    char byte;

    if (evbuffer_get_length(bufferevent_get_input(up->bev)) != 0 || fd < 0)
        return 0;
    if (up->tls) {
        SSL *ssl = bufferevent_openssl_get_ssl(up->bev);
        if (ssl != NULL && SSL_pending(ssl) > 0)
            return 0;
    }
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

struct px_upstream *px_pool_take(struct px_pool *pool, const char *host, int port, int tls)
{
    char key[300];
    struct px_pool_bucket *b;
    struct px_upstream *up;

    make_key(key, sizeof(key), host, port, tls);
    if ((b = bucket(pool, key, 0)) == NULL)
        return NULL;
    while ((up = b->idle) != NULL) {
        unlink_idle(up);
        if (!socket_quiet(up)) {
            /* Bytes (or EOF) the loop has not delivered yet: the runner or a
             * direct-mode app said something between responses. Handing that
             * to the next request would make it its answer (issue 9). */
            upstream_free(up);
            continue;
        }
        up->reused = 1;
        /* The idle timeout is still set: every caller arms its own next
         * (forward.c up_set_state(), api.c attempt()). */
        return up;
    }
    return NULL;
}

/* Any event on an idle connection ends it: EOF, error, timeout, or bytes the
 * runner should not have sent between responses. */
static void idle_event(struct bufferevent *bev, short what, void *arg)
{
    struct px_upstream *up = arg;
    (void)bev;
    (void)what;
    unlink_idle(up);
    upstream_free(up);
}

static void idle_read(struct bufferevent *bev, void *arg)
{
    idle_event(bev, BEV_EVENT_READING, arg);
}

void px_upstream_release(struct px_pool *pool, struct px_upstream *up, int reusable)
{
    const struct px_config *cfg = pool->srv->cfg;
    struct px_pool_bucket *b;

    if (!reusable || pool->srv->draining || cfg->upstream_keepalive == 0 ||
        evbuffer_get_length(bufferevent_get_input(up->bev)) != 0 ||
        (b = bucket(pool, up->key, 1)) == NULL) {
        upstream_free(up);
        return;
    }
    if (b->nidle >= cfg->upstream_keepalive) { /* evict the oldest */
        struct px_upstream *last = b->idle;
        while (last->next != NULL)
            last = last->next;
        unlink_idle(last);
        upstream_free(last);
    }
    struct timeval tv = {cfg->upstream_idle_timeout, 0};
    bufferevent_setcb(up->bev, idle_read, NULL, idle_event, up);
    bufferevent_set_timeouts(up->bev, &tv, NULL);
    bufferevent_setwatermark(up->bev, EV_READ, 0, 0);
    bufferevent_setwatermark(up->bev, EV_WRITE, 0, 0);
    if (!(bufferevent_get_enabled(up->bev) & EV_READ)) /* paused by backpressure */
        bufferevent_enable(up->bev, EV_READ);
    up->bucket = b;
    up->prev = NULL;
    up->next = b->idle;
    if (b->idle != NULL)
        b->idle->prev = up;
    b->idle = up;
    b->nidle++;
}

struct px_upstream *px_upstream_connect(struct px_server *srv, const char *host, int port, int tls)
{
    struct px_upstream *up = calloc(1, sizeof(*up));
    char key[300];
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } addr;
    socklen_t alen = 0;

    if (up == NULL)
        return NULL;
    make_key(key, sizeof(key), host, port, tls);
    up->key = strdup(key);
    if (tls) {
        /* Verify the runner's certificate against upstream_ca and its name. */
        SSL *ssl = srv->up_tls != NULL ? SSL_new(srv->up_tls) : NULL;
        if (ssl == NULL)
            goto fail;
        SSL_set_tlsext_host_name(ssl, host);
        if (inet_pton(AF_INET, host, &addr) == 1 || inet_pton(AF_INET6, host, &addr) == 1)
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
        else
            SSL_set1_host(ssl, host);
        up->bev = bufferevent_openssl_socket_new(srv->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                 BEV_OPT_CLOSE_ON_FREE);
        if (up->bev == NULL)
            SSL_free(ssl);
        up->tls = 1;
    } else {
        up->bev = bufferevent_socket_new(srv->base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    if (up->key == NULL || up->bev == NULL)
        goto fail;
    memset(&addr, 0, sizeof(addr));
    if (inet_pton(AF_INET, host, &addr.in4.sin_addr) == 1) {
        addr.in4.sin_family = AF_INET;
        addr.in4.sin_port = htons((uint16_t)port);
        alen = sizeof(addr.in4);
    } else if (inet_pton(AF_INET6, host, &addr.in6.sin6_addr) == 1) {
        addr.in6.sin6_family = AF_INET6;
        addr.in6.sin6_port = htons((uint16_t)port);
        alen = sizeof(addr.in6);
    }
    if (alen != 0) {
        if (bufferevent_socket_connect(up->bev, &addr.sa, (int)alen) != 0)
            goto fail;
    } else if (bufferevent_socket_connect_hostname(up->bev, srv->dns, AF_UNSPEC, host, port) != 0) {
        goto fail;
    }
    return up;
fail:
    upstream_free(up);
    return NULL;
}

/* Called by conn.c once connected, for latency on small exchanges. */
void px_upstream_nodelay(struct px_upstream *up)
{
    int one = 1;
    evutil_socket_t fd = bufferevent_getfd(up->bev);

    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

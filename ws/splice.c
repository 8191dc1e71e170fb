/* splice.c — a bidirectional byte relay between a client and a runner.
 *
 * Backpressure: when one side's output passes HIGH_WATER, the other side stops
 * reading until the output drains to half (STYLE 5, libevent le-proxy.c).
 * Closing: when either side ends (FIN or RST), what it sent before is flushed to
 * the other side, then both close. Idle: a tunnel with no bytes in either
 * direction for ws_idle_timeout is closed, which also reaps half-open and dead
 * peers (libevent's per-direction read timeout alone would close a tunnel that
 * is busy in one direction only, so a timeout re-arms when the other direction
 * moved recently). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "auth/activity.h"
#include "ws/ws.h"

#define HIGH_WATER (256 * 1024)
#define FLUSH_TIMEOUT 10

struct px_splice {
    struct px_server *srv;      /* borrowed; outlives us */
    struct bufferevent *a;      /* owned: the client */
    struct bufferevent *b;      /* owned: the runner */
    struct event *tick;         /* owned; activity refresh, NULL when opted out */
    char *sandbox_id;           /* owned */
    time_t last_io;
    unsigned closing : 1;       /* one side ended: flushing the other, then destroy */
    struct px_splice *next, *prev; /* srv->splices */
};

static struct bufferevent *other(struct px_splice *s, struct bufferevent *bev)
{
    return bev == s->a ? s->b : s->a;
}

static void destroy(struct px_splice *s)
{
    struct px_server *srv = s->srv;

    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        srv->splices = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    srv->nsplices--;
    if (s->tick != NULL)
        event_free(s->tick);
    /* A bufferevent pair (an HTTP/2 stream) learns of the end only by a flush;
     * sockets ignore it. */
    bufferevent_flush(s->a, EV_READ | EV_WRITE, BEV_FINISHED);
    bufferevent_free(s->a);
    bufferevent_free(s->b);
    free(s->sandbox_id);
    free(s);
    if (srv->draining && srv->nconns == 0 && srv->nsplices == 0 && srv->nh2 == 0)
        event_base_loopexit(srv->base, NULL);
}

static void relay(struct px_splice *s, struct bufferevent *src)
{
    struct bufferevent *dst = other(s, src);
    struct evbuffer *out = bufferevent_get_output(dst);

    if (evbuffer_get_length(bufferevent_get_input(src)) == 0)
        return;
    s->last_io = time(NULL);
    evbuffer_add_buffer(out, bufferevent_get_input(src)); /* moves chains, no copy */
    if (!s->closing && evbuffer_get_length(out) >= HIGH_WATER) {
        bufferevent_disable(src, EV_READ);
        bufferevent_setwatermark(dst, EV_WRITE, HIGH_WATER / 2, 0);
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    relay(arg, bev);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct px_splice *s = arg;

    if (s->closing) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            destroy(s);
        return;
    }
    /* bev drained below the low mark: read its peer again. */
    bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    bufferevent_enable(other(s, bev), EV_READ);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct px_splice *s = arg;
    struct bufferevent *dst = other(s, bev);
    int idle = s->srv->cfg->ws_idle_timeout;

    if ((what & BEV_EVENT_TIMEOUT) && !s->closing) {
        if (time(NULL) - s->last_io < idle) {
            bufferevent_enable(bev, what & BEV_EVENT_READING ? EV_READ : EV_WRITE);
            return;
        }
        destroy(s); /* idle both ways: a dead or half-open peer */
        return;
    }
    if (s->closing) { /* the side we were flushing to failed too */
        destroy(s);
        return;
    }
    /* bev ended: deliver what it sent before, then close both. */
    relay(s, bev);
    s->closing = 1;
    bufferevent_disable(bev, EV_READ | EV_WRITE);
    bufferevent_disable(dst, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(dst)) == 0) {
        destroy(s);
        return;
    }
    struct timeval tv = {FLUSH_TIMEOUT, 0};
    bufferevent_setwatermark(dst, EV_WRITE, 0, 0);
    bufferevent_set_timeouts(dst, NULL, &tv);
    bufferevent_enable(dst, EV_WRITE);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct px_splice *s = arg;
    (void)fd;
    (void)what;
    /* SPEC 8: a long-lived connection keeps its sandbox awake while it lives. */
    px_activity_touch(s->sandbox_id);
}

int px_splice_start(struct px_server *srv, struct bufferevent *client, struct bufferevent *runner,
                    const char *sandbox_id, int activity)
{
    struct px_splice *s = calloc(1, sizeof(*s));
    struct timeval idle = {srv->cfg->ws_idle_timeout, 0};
    struct timeval tick = {PX_ACTIVITY_REFRESH, 0};

    if (s == NULL || (s->sandbox_id = strdup(sandbox_id)) == NULL) {
        free(s);
        bufferevent_free(client);
        bufferevent_free(runner);
        return -1;
    }
    s->srv = srv;
    s->a = client;
    s->b = runner;
    s->last_io = time(NULL);
    if (activity && (s->tick = event_new(srv->base, -1, EV_PERSIST, on_tick, s)) != NULL)
        evtimer_add(s->tick, &tick);
    s->next = srv->splices;
    if (srv->splices != NULL)
        srv->splices->prev = s;
    srv->splices = s;
    srv->nsplices++;
    for (int i = 0; i < 2; i++) {
        struct bufferevent *bev = i ? runner : client;
        bufferevent_setcb(bev, on_read, on_write, on_event, s);
        bufferevent_setwatermark(bev, EV_READ, 0, 0);
        bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
        bufferevent_set_timeouts(bev, &idle, NULL);
        bufferevent_enable(bev, EV_READ | EV_WRITE);
    }
    /* Bytes after the 101 head are already WebSocket frames. */
    relay(s, client);
    relay(s, runner);
    return 0;
}

void px_splice_close_all(struct px_server *srv)
{
    while (srv->splices != NULL)
        destroy(srv->splices);
}

/* splice.c — a bidirectional byte relay between a client and a runner.
 *
 * Two engines behind one interface:
 *  - raw: both ends are plain sockets. The bufferevents are dismantled and we
 *    drive the file descriptors ourselves: read up to 64 KiB straight into the
 *    other side's output buffer and write it out at once, so an echoed message
 *    costs about one read and one write per direction, and EV_WRITE is
 *    registered only while a peer is slow. (libevent's socket bufferevents read
 *    at most 4 KiB per call and re-arm EV_WRITE for every message.) A FIN is
 *    forwarded as shutdown(SHUT_WR): half-closed tunnels keep the other
 *    direction open until it ends too, or until the idle timeout.
 *  - bev: an end is TLS or an HTTP/2 stream's pair; bytes move between the
 *    bufferevents, and either side ending closes both after a flush.
 * Both apply backpressure (a side whose peer has HIGH_WATER unsent bytes stops
 * reading) and close tunnels idle in both directions for ws_idle_timeout,
 * which also reaps dead and half-open peers. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "auth/activity.h"
#include "proxy/peers.h"
#include "tls/tls.h"
#include "ws/ws.h"

#define HIGH_WATER (256 * 1024)
#define READ_CHUNK (64 * 1024)
#define FLUSH_TIMEOUT 10

struct side {
    evutil_socket_t fd;   /* raw engine: owned */
    struct event *rev;    /* raw engine: owned; EV_READ with the idle timeout */
    struct event *wev;    /* raw engine: owned; EV_WRITE while out is not empty */
    struct evbuffer *out; /* raw engine: owned; bytes waiting to be written to fd */
    unsigned rd_eof : 1;  /* fd sent FIN: nothing more to read */
    unsigned wr_shut : 1; /* we sent FIN to fd */
    unsigned paused : 1;  /* reading stopped because the peer's out is full */
};

struct px_splice {
    struct px_server *srv; /* borrowed; outlives us */
    int raw;
    struct side s[2];      /* raw: [0] client, [1] runner */
    struct bufferevent *a; /* bev engine: owned, the client */
    struct bufferevent *b; /* bev engine: owned, the runner */
    struct event *tick;    /* owned; activity refresh, NULL when opted out */
    char *sandbox_id;      /* owned */
    time_t last_io;
    unsigned closing : 1;          /* bev engine: one side ended, flushing the other */
    struct px_splice *next, *prev; /* srv->splices */
    struct px_peer *peer;          /* owned; the client socket's count (proxy/peers.c) */
};

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
    if (s->raw) {
        for (int i = 0; i < 2; i++) {
            if (s->s[i].rev != NULL)
                event_free(s->s[i].rev);
            if (s->s[i].wev != NULL)
                event_free(s->s[i].wev);
            if (s->s[i].out != NULL)
                evbuffer_free(s->s[i].out);
            if (s->s[i].fd >= 0)
                evutil_closesocket(s->s[i].fd);
        }
    } else {
        px_tls_close_notify(s->a);
        bufferevent_free(s->a);
        bufferevent_free(s->b);
    }
    free(s->sandbox_id);
    px_peer_release(s->peer);
    free(s);
    px_server_maybe_exit(srv);
}

/* ---- raw engine ---- */

static void raw_idle_arm(struct px_splice *s, struct side *d)
{
    struct timeval idle = {s->srv->cfg->ws_idle_timeout, 0};
    event_add(d->rev, &idle);
}

/* Writes what d->out holds. Returns -1 when the peer is gone. */
static int raw_flush(struct px_splice *s, int j)
{
    struct side *d = &s->s[j];
    struct side *src = &s->s[1 - j];

    while (evbuffer_get_length(d->out) > 0) {
        int n = evbuffer_write(d->out, d->fd);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            return -1;
        }
        s->last_io = time(NULL);
    }
    if (evbuffer_get_length(d->out) > 0) {
        event_add(d->wev, NULL);
        return 0;
    }
    event_del(d->wev);
    if (src->paused && !src->rd_eof) { /* the slow side caught up */
        src->paused = 0;
        raw_idle_arm(s, src);
    }
    if (src->rd_eof && !d->wr_shut) { /* forward the FIN once everything is out */
        shutdown(d->fd, SHUT_WR);
        d->wr_shut = 1;
    }
    return 0;
}

static int raw_done(const struct px_splice *s)
{
    return s->s[0].rd_eof && s->s[1].rd_eof && evbuffer_get_length(s->s[0].out) == 0 &&
           evbuffer_get_length(s->s[1].out) == 0;
}

static void raw_on_read(evutil_socket_t fd, short what, void *arg)
{
    struct px_splice *s = arg;
    int i = s->s[0].fd == fd ? 0 : 1; /* which side fired */
    struct side *src = &s->s[i];
    struct side *dst = &s->s[1 - i];

    if (what & EV_TIMEOUT) {
        if (time(NULL) - s->last_io < s->srv->cfg->ws_idle_timeout) {
            raw_idle_arm(s, src);
            return;
        }
        destroy(s); /* idle both ways: a dead or half-open peer */
        return;
    }
    /* One buffer for the whole process (the loop is single-threaded): an idle
     * or closing tunnel then holds no 64 KiB chain, and when the peer keeps up
     * the bytes go straight back out without touching an evbuffer. */
    static char iobuf[READ_CHUNK];
    for (int rounds = 0; rounds < 4; rounds++) {
        ssize_t n = read(fd, iobuf, sizeof(iobuf));
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            destroy(s); /* RST: nothing useful can follow */
            return;
        }
        if (n == 0) {
            src->rd_eof = 1;
            event_del(src->rev);
            break;
        }
        s->last_io = time(NULL);
        ssize_t w = 0;
        if (evbuffer_get_length(dst->out) == 0) { /* keep order: only when nothing waits */
            w = write(dst->fd, iobuf, (size_t)n);
            if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                destroy(s);
                return;
            }
            if (w < 0)
                w = 0;
        }
        if (w < n)
            evbuffer_add(dst->out, iobuf + w, (size_t)(n - w));
        if ((size_t)n < sizeof(iobuf))
            break; /* drained: skip the read that would say EAGAIN */
    }
    if (raw_flush(s, 1 - i) != 0) {
        destroy(s);
        return;
    }
    if (raw_done(s)) {
        destroy(s);
        return;
    }
    if (!src->rd_eof && evbuffer_get_length(dst->out) >= HIGH_WATER) {
        src->paused = 1; /* the peer is slow: stop reading until it drains */
        event_del(src->rev);
    }
}

static void raw_on_write(evutil_socket_t fd, short what, void *arg)
{
    struct px_splice *s = arg;
    int j = s->s[0].fd == fd ? 0 : 1;
    (void)what;

    if (raw_flush(s, j) != 0 || raw_done(s))
        destroy(s);
}

/* Moves src's bytes to the end of dst. A bufferevent may hold its buffers
 * frozen (moves and copies then fail); it is about to be freed, so thaw them. */
static void take(struct evbuffer *dst, struct evbuffer *src)
{
    evbuffer_unfreeze(src, 0);
    evbuffer_unfreeze(src, 1);
    evbuffer_add_buffer(dst, src);
}

/* Takes the sockets out of their bufferevents, with what they had buffered. */
static int raw_start(struct px_splice *s, struct bufferevent *client, struct bufferevent *runner)
{
    struct bufferevent *bev[2] = {client, runner};

    for (int i = 0; i < 2; i++) {
        struct side *d = &s->s[i];
        d->out = evbuffer_new();
        d->rev = event_new(s->srv->base, bufferevent_getfd(bev[i]), EV_READ | EV_PERSIST,
                           raw_on_read, s);
        d->wev = event_new(s->srv->base, bufferevent_getfd(bev[i]), EV_WRITE | EV_PERSIST,
                           raw_on_write, s);
        if (d->out == NULL || d->rev == NULL || d->wev == NULL) {
            bufferevent_free(client);
            bufferevent_free(runner);
            return -1;
        }
    }
    /* Unsent bytes stay in order: what each bev still had to write goes first
     * (the 101 head, for the client); then what each had read is for the other. */
    for (int i = 0; i < 2; i++)
        take(s->s[i].out, bufferevent_get_output(bev[i]));
    for (int i = 0; i < 2; i++)
        take(s->s[1 - i].out, bufferevent_get_input(bev[i]));
    for (int i = 0; i < 2; i++) {
        s->s[i].fd = bufferevent_getfd(bev[i]); /* ours from here */
        bufferevent_setfd(bev[i], -1);          /* detach: freeing it must not close the fd */
        bufferevent_free(bev[i]);
    }
    for (int i = 0; i < 2; i++) {
        raw_idle_arm(s, &s->s[i]);
        if (raw_flush(s, i) != 0)
            return -1;
    }
    return 0;
}

/* ---- bufferevent engine ---- */

static struct bufferevent *other(struct px_splice *s, struct bufferevent *bev)
{
    return bev == s->a ? s->b : s->a;
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
        destroy(s);
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

static void bev_start(struct px_splice *s)
{
    struct timeval idle = {s->srv->cfg->ws_idle_timeout, 0};

    for (int i = 0; i < 2; i++) {
        struct bufferevent *bev = i ? s->b : s->a;
        bufferevent_setcb(bev, on_read, on_write, on_event, s);
        bufferevent_setwatermark(bev, EV_READ, 0, 0);
        bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
        bufferevent_set_timeouts(bev, &idle, NULL);
        bufferevent_enable(bev, EV_READ | EV_WRITE);
    }
    /* Bytes after the 101 head are already WebSocket frames. */
    relay(s, s->a);
    relay(s, s->b);
}

/* ---- common ---- */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct px_splice *s = arg;
    (void)fd;
    (void)what;
    /* SPEC 8: a long-lived connection keeps its sandbox awake while it lives. */
    px_activity_touch(s->sandbox_id, s->srv->cfg->activity_interval);
}

int px_splice_start(struct px_server *srv, struct bufferevent *client, struct bufferevent *runner,
                    const char *sandbox_id, int activity, int raw, struct px_peer *peer)
{
    struct px_splice *s = calloc(1, sizeof(*s));
    struct timeval tick = {PX_ACTIVITY_REFRESH(srv->cfg->activity_interval), 0};

    if (s == NULL || (s->sandbox_id = strdup(sandbox_id)) == NULL) {
        free(s);
        bufferevent_free(client);
        bufferevent_free(runner);
        px_peer_release(peer);
        return -1;
    }
    s->srv = srv;
    s->peer = peer;
    s->last_io = time(NULL);
    s->next = srv->splices;
    if (srv->splices != NULL)
        srv->splices->prev = s;
    srv->splices = s;
    srv->nsplices++;
    if (activity && (s->tick = event_new(srv->base, -1, EV_PERSIST, on_tick, s)) != NULL)
        evtimer_add(s->tick, &tick);
    if (raw) {
        s->raw = 1;
        s->s[0].fd = s->s[1].fd = -1;
        if (raw_start(s, client, runner) != 0) {
            destroy(s);
            return -1;
        }
        return 0;
    }
    s->a = client;
    s->b = runner;
    bev_start(s);
    return 0;
}

void px_splice_close_all(struct px_server *srv)
{
    while (srv->splices != NULL)
        destroy(srv->splices);
}

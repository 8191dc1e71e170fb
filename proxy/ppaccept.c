/* ppaccept.c — see ppaccept.h. One small object per socket between accept()
 * and its PROXY header: a read event, a timer and a PX_PP_MAX buffer. Until
 * the header is whole, nothing else runs on the socket: no TLS, no HTTP. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/event.h>
#include <event2/util.h>

#include "proxy/peers.h"
#include "proxy/ppaccept.h"
#include "proxy/proxyproto.h"
#include "proxy/px.h"
#include "proxy/server.h"

struct pending {
    struct px_server *srv; /* borrowed; outlives us */
    evutil_socket_t fd;    /* owned until handed to px_conn_accept() */
    int tls;
    struct sockaddr_storage sa; /* the socket's peer: the balancer */
    int salen;
    struct event *rd;    /* owned; EV_READ|EV_PERSIST on fd */
    struct event *timer; /* owned; client_header_timeout from the accept */
    size_t have;         /* header bytes already taken from the socket */
    uint8_t buf[PX_PP_MAX];
    struct pending *next, **pprev; /* the list of sockets waiting */
};

static struct pending *waiting;
static unsigned long nwaiting;

/* Logged at most once per LOG_EVERY seconds per kind, with the number left
 * unlogged meanwhile: a peer can cause these at connection rate. */
#define LOG_EVERY 5
enum { LOG_UNTRUSTED = 0, LOG_BAD, LOG_TIMEOUT, LOG_PER_IP, LOG_KINDS };
static time_t logged[LOG_KINDS];
static unsigned long unlogged[LOG_KINDS];

static const char *ip_of(const struct sockaddr *sa, char *ip, size_t len)
{
    const void *a = sa->sa_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    if (inet_ntop(sa->sa_family, a, ip, (socklen_t)len) == NULL)
        snprintf(ip, len, "?");
    return ip;
}

/* The header carries addresses only, never a secret: they may be logged. */
static void log_limited(int kind, const struct sockaddr *sa, const char *what)
{
    time_t now = time(NULL);
    char ip[INET6_ADDRSTRLEN];

    if (now - logged[kind] < LOG_EVERY) {
        unlogged[kind]++;
        return;
    }
    if (unlogged[kind] > 0)
        px_log(PX_WARN, "proxy_protocol: closed a connection from %s: %s (%lu more not logged)",
               ip_of(sa, ip, sizeof(ip)), what, unlogged[kind]);
    else
        px_log(PX_WARN, "proxy_protocol: closed a connection from %s: %s",
               ip_of(sa, ip, sizeof(ip)), what);
    logged[kind] = now;
    unlogged[kind] = 0;
}

/* Frees p; closes its socket unless keep_fd (it went to px_conn_accept()). */
static void pending_free(struct pending *p, int keep_fd)
{
    *p->pprev = p->next;
    if (p->next != NULL)
        p->next->pprev = p->pprev;
    nwaiting--;
    if (p->rd != NULL)
        event_free(p->rd);
    if (p->timer != NULL)
        event_free(p->timer);
    if (!keep_fd)
        evutil_closesocket(p->fd);
    free(p);
}

/* max_connections_per_ip, as main.c's refuse_peer() answers it: a best-effort
 * 429 on plain listeners (nothing of the request has been read), a bare close
 * on TLS ones. */
static void refuse(struct pending *p, const struct sockaddr *client)
{
    static const char answer[] =
        "HTTP/1.1 429 Too Many Requests\r\nServer: preview-proxy\r\n"
        "Content-Type: text/plain\r\nContent-Length: 39\r\n"
        "Connection: close\r\n\r\ntoo many connections from your address\n";

    if (!p->tls) {
        ssize_t n = send(p->fd, answer, sizeof(answer) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)n;
        shutdown(p->fd, SHUT_WR);
    }
    log_limited(LOG_PER_IP, client, "it holds max_connections_per_ip");
    pending_free(p, 0);
}

/* The header is whole and taken off the socket: from here the connection is
 * an ordinary one whose peer is the client the header names. */
static void done(struct pending *p, const struct px_pp_result *r)
{
    const struct sockaddr *client =
        r->local ? (const struct sockaddr *)&p->sa : (const struct sockaddr *)&r->src;
    int clen = r->local ? p->salen : (int)r->srclen;
    struct px_peer *slot;

    if (px_peer_take(p->srv, client, &slot) != 0)
        return refuse(p, client);
    struct px_server *srv = p->srv;
    evutil_socket_t fd = p->fd;
    int tls = p->tls;
    struct sockaddr_storage ss;
    memcpy(&ss, client, (size_t)clen);
    pending_free(p, 1);
    px_conn_accept(srv, fd, (const struct sockaddr *)&ss, clen, tls, slot);
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct pending *p = arg;
    struct px_pp_result r;
    ssize_t n, got;
    (void)what;

    /* Peek: the bytes behind the header (a request, a ClientHello) must stay
     * in the socket. A prefix the parser calls AGAIN is header through and
     * through, so it is taken whole; on OK only the header's rest is taken. */
    n = recv(fd, p->buf + p->have, sizeof(p->buf) - p->have, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) /* closed or reset before the header was whole */
        return pending_free(p, 0);
    switch (px_pp_parse(p->buf, p->have + (size_t)n, &r)) {
    case PX_PARSE_AGAIN:
        /* (The parser says BAD before PX_PP_MAX bytes, so the buffer never fills.) */
        break;
    case PX_PARSE_OK: n = (ssize_t)(r.len - p->have); break;
    case PX_PARSE_BAD:
        log_limited(LOG_BAD, (const struct sockaddr *)&p->sa, r.why);
        return pending_free(p, 0);
    }
    /* Peeked bytes are in the socket's queue and only we read it: this read
     * returns exactly n. Anything else is a broken socket. */
    got = recv(fd, p->buf + p->have, (size_t)n, 0);
    if (got != n)
        return pending_free(p, 0);
    p->have += (size_t)got;
    if (p->have == r.len && r.len > 0)
        done(p, &r);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct pending *p = arg;
    (void)fd;
    (void)what;

    log_limited(LOG_TIMEOUT, (const struct sockaddr *)&p->sa,
                "no whole PROXY header within client_header_timeout");
    pending_free(p, 0);
}

void px_ppaccept_start(struct px_server *srv, int fd, const struct sockaddr *sa, int salen, int tls)
{
    struct pending *p;
    struct timeval tv = {srv->cfg->client_header_timeout, 0};

    if (!px_config_trusted(srv->cfg, sa)) {
        log_limited(LOG_UNTRUSTED, sa, "not in trusted_proxies");
        evutil_closesocket(fd);
        return;
    }
    if ((p = calloc(1, sizeof(*p))) == NULL) {
        evutil_closesocket(fd);
        return;
    }
    p->srv = srv;
    p->fd = fd;
    p->tls = tls;
    p->salen = salen < (int)sizeof(p->sa) ? salen : (int)sizeof(p->sa);
    memcpy(&p->sa, sa, (size_t)p->salen);
    p->next = waiting;
    if (p->next != NULL)
        p->next->pprev = &p->next;
    p->pprev = &waiting;
    waiting = p;
    nwaiting++;
    p->rd = event_new(srv->base, fd, EV_READ | EV_PERSIST, on_readable, p);
    p->timer = evtimer_new(srv->base, on_timeout, p);
    if (p->rd == NULL || p->timer == NULL || event_add(p->rd, NULL) != 0 ||
        evtimer_add(p->timer, &tv) != 0)
        pending_free(p, 0);
}

unsigned long px_ppaccept_pending(void)
{
    return nwaiting;
}

void px_ppaccept_close_all(void)
{
    while (waiting != NULL)
        pending_free(waiting, 0);
}

/* ws_load.c — load generator and echo server for bench/ws.sh (WebSockets).
 *
 *   ws_load server PORT                       WebSocket echo server on 127.0.0.1
 *   ws_load idle   PORT HOST N                open N WebSockets, print "READY n", hold
 *                                             them until stdin closes
 *   ws_load echo   PORT HOST CONNS SECS SIZE  CONNS WebSockets, each sending one
 *                                             masked SIZE-byte binary frame and
 *                                             waiting for its echo, for SECS s
 *
 * HOST is the Host header (a preview host through the proxy). The server
 * answers the upgrade with 101 and then echoes bytes as they come (frames are
 * not parsed: the proxy does not parse them either, so an echo of the client's
 * frame is the same load for it). One thread, epoll, non-blocking sockets;
 * the client keeps at most 256 handshakes in flight so the listen backlog
 * never overflows. C so that the load generator is not the bottleneck. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 65536
/* key "dGhlIHNhbXBsZSBub25jZQ==" (RFC 6455 example) -> this accept value */
#define ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static void die(const char *m) { perror(m); exit(1); }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* ---------------------------------------------------------------- server -- */

struct sconn {
    int fd;
    int upgraded;
    size_t hlen;          /* bytes of request head seen */
    char *pend;           /* unsent bytes */
    size_t plen, pcap;
    char head[4096];
};

static int sflush(struct sconn *c)
{
    while (c->plen > 0) {
        ssize_t n = write(c->fd, c->pend, c->plen);
        if (n < 0)
            return errno == EAGAIN ? 0 : -1;
        memmove(c->pend, c->pend + n, c->plen - (size_t)n);
        c->plen -= (size_t)n;
    }
    return 0;
}

static int ssend(struct sconn *c, const char *d, size_t n)
{
    if (c->plen == 0) {
        ssize_t w = write(c->fd, d, n);
        if (w < 0 && errno != EAGAIN)
            return -1;
        if (w > 0) {
            d += w;
            n -= (size_t)w;
        }
    }
    if (n == 0)
        return 0;
    if (c->plen + n > c->pcap) {
        c->pcap = (c->plen + n) * 2;
        c->pend = realloc(c->pend, c->pcap);
    }
    memcpy(c->pend + c->plen, d, n);
    c->plen += n;
    return 0;
}

static int run_server(int port)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(ls, (void *)&a, sizeof(a)) < 0 || listen(ls, 4096) < 0)
        die("server listen");
    nonblock(ls);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    static char buf[BUF];
    struct epoll_event evs[256];
    printf("PORT %d\n", port);
    fflush(stdout);
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct sconn *c = evs[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept(ls, NULL, NULL)) >= 0) {
                    nonblock(fd);
                    c = calloc(1, sizeof(*c));
                    c->fd = fd;
                    struct epoll_event e2 = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e2);
                }
                continue;
            }
            int dead = 0;
            if (evs[i].events & EPOLLOUT && sflush(c) < 0)
                dead = 1;
            while (!dead) {
                ssize_t r = read(c->fd, buf, sizeof(buf));
                if (r == 0 || (r < 0 && errno != EAGAIN)) {
                    dead = 1;
                    break;
                }
                if (r < 0)
                    break;
                size_t off = 0;
                if (!c->upgraded) {
                    size_t k = (size_t)r < sizeof(c->head) - 1 - c->hlen ? (size_t)r : sizeof(c->head) - 1 - c->hlen;
                    memcpy(c->head + c->hlen, buf, k);
                    c->hlen += k;
                    c->head[c->hlen] = 0;
                    char *e = strstr(c->head, "\r\n\r\n");
                    if (e == NULL)
                        continue;
                    off = (size_t)(e + 4 - c->head) - (c->hlen - k);
                    c->upgraded = 1;
                    const char *resp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                       "Connection: Upgrade\r\nSec-WebSocket-Accept: " ACCEPT "\r\n\r\n";
                    if (ssend(c, resp, strlen(resp)) < 0)
                        dead = 1;
                }
                if (!dead && (size_t)r > off && ssend(c, buf + off, (size_t)r - off) < 0)
                    dead = 1;
            }
            if (dead) {
                close(c->fd);
                free(c->pend);
                free(c);
            }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- client -- */

struct cconn {
    int fd;
    int state;            /* 0 connecting/handshake sent, 1 upgraded */
    size_t got, want;     /* echo bytes received / expected */
    size_t hlen;
    char head[1024];
};

static char req[1024];
static size_t reqlen;
static char *msg;
static size_t msglen;

static int open_one(int ep, int port, struct cconn *c)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        die("socket (raise ulimit -n)");
    nonblock(c->fd);
    if (connect(c->fd, (void *)&a, sizeof(a)) < 0 && errno != EINPROGRESS)
        die("connect");
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static int run_client(int port, const char *host, int nconns, double secs, size_t size, int idle)
{
    reqlen = (size_t)snprintf(req, sizeof(req),
                              "GET /echo HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n", host);
    /* one masked binary frame of `size` payload bytes */
    msg = malloc(size + 14);
    size_t h = 0;
    msg[h++] = (char)0x82;
    if (size < 126) {
        msg[h++] = (char)(0x80 | size);
    } else if (size < 65536) {
        msg[h++] = (char)(0x80 | 126);
        msg[h++] = (char)(size >> 8);
        msg[h++] = (char)size;
    } else {
        msg[h++] = (char)(0x80 | 127);
        for (int i = 7; i >= 0; i--)
            msg[h++] = (char)(size >> (8 * i));
    }
    memcpy(msg + h, "\x12\x34\x56\x78", 4);
    h += 4;
    for (size_t i = 0; i < size; i++)
        msg[h + i] = (char)(i ^ 0x5a);
    msglen = h + size;

    int ep = epoll_create1(0);
    struct cconn *cs = calloc((size_t)nconns, sizeof(*cs));
    int opened = 0, ready = 0, inflight = 0;
    static char buf[BUF];
    struct epoll_event evs[512];
    double t0 = now(), deadline = t0 + 120, tstart = 0;
    unsigned long long msgs = 0, bytes = 0;

    while (ready < nconns) {
        while (opened < nconns && inflight < 256) {
            open_one(ep, port, &cs[opened++]);
            inflight++;
        }
        int n = epoll_wait(ep, evs, 512, 1000);
        if (now() > deadline) {
            fprintf(stderr, "timeout: %d of %d WebSockets open\n", ready, nconns);
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct cconn *c = evs[i].data.ptr;
            if (c->state == 0 && c->hlen == 0 && (evs[i].events & EPOLLOUT)) {
                int err = 0;
                socklen_t el = sizeof(err);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) {
                    fprintf(stderr, "connect: %s\n", strerror(err));
                    return 1;
                }
                if (write(c->fd, req, reqlen) != (ssize_t)reqlen)
                    die("handshake write");
                c->hlen = 1; /* marker: sent; head collected from head[1] */
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                continue;
            }
            if (!(evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            ssize_t r = read(c->fd, c->head + c->hlen, sizeof(c->head) - 1 - c->hlen);
            if (r <= 0) {
                fprintf(stderr, "handshake: connection closed (%zd)\n", r);
                return 1;
            }
            c->hlen += (size_t)r;
            c->head[c->hlen] = 0;
            if (strstr(c->head + 1, "\r\n\r\n") != NULL) {
                if (strncmp(c->head + 1, "HTTP/1.1 101", 12) != 0) {
                    fprintf(stderr, "handshake refused: %.80s\n", c->head + 1);
                    return 1;
                }
                c->state = 1;
                ready++;
                inflight--;
            }
        }
    }
    if (idle) {
        printf("READY %d %.2f\n", ready, now() - t0);
        fflush(stdout);
        char b;
        while (read(0, &b, 1) > 0)
            ;
        return 0;
    }
    /* echo: every connection sends one frame and waits for it back */
    for (int i = 0; i < nconns; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_MOD, cs[i].fd, &ev);
    }
    tstart = now();
    double tend = tstart + secs;
    for (int i = 0; i < nconns; i++) {
        cs[i].want = msglen;
        cs[i].got = 0;
        if (write(cs[i].fd, msg, msglen) != (ssize_t)msglen)
            die("write (frame larger than the socket buffer?)");
    }
    while (now() < tend) {
        int n = epoll_wait(ep, evs, 512, 200);
        for (int i = 0; i < n; i++) {
            struct cconn *c = evs[i].data.ptr;
            ssize_t r;
            while ((r = read(c->fd, buf, sizeof(buf))) > 0)
                c->got += (size_t)r;
            if (r == 0) {
                fprintf(stderr, "echo: connection closed\n");
                return 1;
            }
            while (c->got >= c->want) {
                c->got -= c->want;
                msgs++;
                bytes += size;
                if (write(c->fd, msg, msglen) != (ssize_t)msglen)
                    die("write");
            }
        }
    }
    double el = now() - tstart;
    printf("msgs=%llu secs=%.2f msgs_per_s=%.0f MB_per_s=%.2f\n", msgs, el, msgs / el,
           bytes / el / 1e6);
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 3 && strcmp(argv[1], "server") == 0)
        return run_server(atoi(argv[2]));
    if (argc >= 5 && strcmp(argv[1], "idle") == 0)
        return run_client(atoi(argv[2]), argv[3], atoi(argv[4]), 0, 0, 1);
    if (argc >= 7 && strcmp(argv[1], "echo") == 0)
        return run_client(atoi(argv[2]), argv[3], atoi(argv[4]), atof(argv[5]),
                          (size_t)atol(argv[6]), 0);
    fprintf(stderr, "usage: ws_load server PORT | idle PORT HOST N | echo PORT HOST CONNS SECS SIZE\n");
    return 2;
}

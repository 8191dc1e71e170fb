/* server.h — per-process state shared by the connection code: the event base,
 * the live configuration, the upstream pool and the connection registry. */
#ifndef PX_SERVER_H
#define PX_SERVER_H

#include <stdio.h>

#include <event2/dns.h>
#include <event2/event.h>

#include "proxy/px.h"

struct px_pool;
struct px_conn;
struct px_splice;
struct px_tls;
struct px_h2;
struct bufferevent;
struct px_peer;

/* Whether main.c accepts new clients, and if not why. */
enum px_accept_state {
    PX_ACCEPTING = 0,
    PX_PAUSED_LIMIT, /* at max_connections; a 50 ms timer counts again */
    PX_PAUSED_ERROR, /* accept() failed (EMFILE...); retried after a backoff */
};

struct px_server {
    struct event_base *base;     /* owned by main.c */
    struct evdns_base *dns;      /* owned by main.c; non-blocking name lookups */
    const struct px_config *cfg; /* borrowed; swapped on SIGHUP */
    struct px_pool *pool;        /* owned by main.c */
    FILE *access;                /* owned by main.c; NULL when access_log off */
    struct px_conn *conns;       /* list of live client connections (conn.c) */
    unsigned long nconns;
    struct px_tls *tls;        /* owned by main.c; NULL without TLS listeners */
    struct ssl_ctx_st *up_tls; /* owned by main.c: SSL_CTX for https runners */
    struct px_h2 *h2s;         /* list of HTTP/2 connections (proxy/h2.c) */
    unsigned long nh2;
    unsigned long h2_goaways;  /* connections closed for abuse */
    struct px_splice *splices; /* list of WebSocket tunnels (ws/splice.c) */
    unsigned long nsplices;
    unsigned draining : 1; /* SIGTERM: finish in-flight work, then exit */
    /* Accepting: main.c alone writes these (see "accept pausing" there). */
    unsigned long fd_cap; /* most client sockets RLIMIT_NOFILE allows; 0 = no cap */
    enum px_accept_state accept_paused;
    unsigned long pauses_limit; /* times accepting paused at max_connections */
    unsigned long pauses_error; /* times accepting paused after accept() failed (EMFILE...) */
    uint64_t next_conn_id;
    uint64_t next_req_id;
    unsigned pid;
};

extern struct px_server *px_srv; /* the one per process; set by main.c */

/* Accepts a new client socket (owned from here on); tls starts a server handshake.
 * peer is the socket's slot in peers.c (may be NULL), owned from here on too. */
void px_conn_accept(struct px_server *srv, int fd, const struct sockaddr *sa, int salen, int tls,
                    struct px_peer *peer);

#define PX_CONN_TLS 1u /* the client reached us over TLS */

/* Runs the HTTP/1.1 pipeline over an existing bufferevent (owned from here on):
 * an accepted socket or a TLS connection.
 * sa is the client's address, for X-Forwarded-For. peer (owned from here on,
 * may be NULL) is released when the socket closes, wherever it has moved. */
void px_conn_attach(struct px_server *srv, struct bufferevent *bev, const struct sockaddr *sa,
                    unsigned flags, struct px_peer *peer);

/* HTTP/2 (proxy/h2.c): one stream's exchange. req (moved in; freed here)
 * is the request head, or with status != 0 a request to refuse with that
 * status and why. Runs the pipeline on it at once. */
struct px_h2s;
struct px_head;
void px_conn_h2_open(struct px_server *srv, struct px_h2s *s, struct px_head *req, int status,
                     const char *why, const struct sockaddr *peer, int tls);
/* Request DATA or END_STREAM arrived for the exchange's stream. */
void px_conn_h2_input(struct px_conn *c);
/* The stream's output drained (px_h2s_out_full()): read the runner again. */
void px_conn_h2_drained(struct px_conn *c);
/* The stream is gone (reset, timed out, its connection closed): the
 * exchange is aborted. */
void px_conn_h2_gone(struct px_conn *c);

/* Writes what a plain socket bufferevent's output holds at once, and arms its
 * write event (with its write timeout) only for what the kernel did not take
 * (issue 13: libevent alone arms EPOLLOUT, waits a loop pass and disarms it
 * for every response, four epoll_ctl and two epoll_wait per keep-alive
 * request). The bufferevent keeps EV_WRITE disabled while nothing waits, so
 * every writer calls this once it has queued its bytes; its write callback
 * disables EV_WRITE again once drained. Never for TLS or HTTP/2. */
void px_bev_send(struct bufferevent *bev);

/* Reads up to budget bytes straight from a plain socket bufferevent's fd into
 * its input buffer, in 64 KiB bites (libevent 2.1 reads at most 4 KiB per call).
 * Never for TLS or pair bufferevents. */
void px_bev_slurp(struct bufferevent *bev, size_t budget);

/* During a drain, once the last connection, tunnel and HTTP/2 session is
 * gone, the event loop ends (the one test of "nothing left", for every file
 * that frees one of them). */
void px_server_maybe_exit(struct px_server *srv);

/* Starts the drain: idle connections close now, busy ones after their response. */
void px_conn_drain_all(struct px_server *srv);

/* Closes every connection at once (shutdown deadline). */
void px_conn_close_all(struct px_server *srv);

#endif

/* h2.h — the HTTP/2 front end (nghttp2), over TLS (ALPN h2) or cleartext
 * (h2c with prior knowledge).
 *
 * One request pipeline, two front-end codecs: each stream's request becomes
 * the structured head an HTTP/1.1 request is parsed into and runs through the
 * same exchange (proxy/conn.c: px_conn_h2_open()), so routing,
 * authentication, the warning page, CORS and forwarding are the same code for
 * both protocols. Extended CONNECT (RFC 8441) becomes a WebSocket upgrade
 * towards the runner. */
#ifndef PX_H2_H
#define PX_H2_H

#include <event2/bufferevent.h>

#include "proxy/server.h"

struct px_h2s;
struct px_headw;

/* Takes ownership of bev (its input may already hold the client preface) and
 * of slot, the socket's count in proxy/peers.c (may be NULL). */
void px_h2_start(struct px_server *srv, struct bufferevent *bev, const struct sockaddr *peer,
                 int tls, struct px_peer *slot);

/* SIGTERM: GOAWAY to every HTTP/2 connection; each closes when its streams end. */
void px_h2_drain_all(struct px_server *srv);
void px_h2_close_all(struct px_server *srv);

/* The stream as its exchange sees it (proxy/conn.c, forward.c). s is valid
 * while the exchange holds it (c->h2s); each call below is safe from inside
 * and outside nghttp2's callbacks (sending is deferred to the session). */
/* Links the exchange to its stream (px_conn_h2_open()). */
void px_h2s_attach(struct px_h2s *s, struct px_conn *c);
/* Request body bytes (DATA payload); bytes drained from it are acknowledged
 * to the client. */
struct evbuffer *px_h2s_in(struct px_h2s *s);
/* Has the client ended its request (END_STREAM)? */
int px_h2s_in_ended(const struct px_h2s *s);
/* Response payload for DATA frames; after adding to it, px_h2s_wrote(). */
struct evbuffer *px_h2s_out(struct px_h2s *s);
void px_h2s_wrote(struct px_h2s *s);
/* Over BODY_HIGH bytes wait for the client's window: stop producing; the
 * exchange hears px_conn_h2_drained() once half of them left. */
int px_h2s_out_full(struct px_h2s *s);
/* Submits the response HEADERS (w->nv); with has_body DATA follows from out.
 * Returns 0 or an nghttp2 error. */
int px_h2s_head(struct px_h2s *s, const struct px_headw *w, int has_body);
/* The exchange lets go of the stream: complete ends it after `out`
 * (END_STREAM), otherwise it is reset. s is not the caller's any more. */
void px_h2s_finish(struct px_h2s *s, int complete);

#endif

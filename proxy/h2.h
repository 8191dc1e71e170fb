/* h2.h — the HTTP/2 front end (nghttp2), over TLS (ALPN h2) or cleartext
 * (h2c with prior knowledge).
 *
 * One request pipeline, two front-end codecs: each stream is bridged to the
 * HTTP/1.1 pipeline of proxy/conn.c through a bufferevent pair, so routing,
 * authentication, the warning page, CORS and forwarding are the same code for
 * both protocols. Extended CONNECT (RFC 8441) becomes a WebSocket upgrade
 * towards the runner. */
#ifndef PX_H2_H
#define PX_H2_H

#include <event2/bufferevent.h>

#include "proxy/server.h"

/* Takes ownership of bev (its input may already hold the client preface) and
 * of slot, the socket's count in proxy/peers.c (may be NULL). */
void px_h2_start(struct px_server *srv, struct bufferevent *bev, const struct sockaddr *peer,
                 int tls, struct px_peer *slot);

/* SIGTERM: GOAWAY to every HTTP/2 connection; each closes when its streams end. */
void px_h2_drain_all(struct px_server *srv);
void px_h2_close_all(struct px_server *srv);

#endif

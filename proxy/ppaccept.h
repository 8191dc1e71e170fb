/* ppaccept.h — the first step of a connection on a `proxy_protocol` listener:
 * read the PROXY protocol header (proxy/proxyproto.h) off the raw socket,
 * before any HTTP byte and before a TLS handshake, then hand the socket to
 * px_conn_accept() with the client address the header names.
 *
 * - Only peers in trusted_proxies may send a header (the header decides the
 *   client address; anyone else could pick one): others are closed at once.
 * - A header that is malformed, or not whole within client_header_timeout
 *   (from the accept, not re-armed by trickling bytes), closes the socket.
 * - Exactly the header's bytes are taken from the socket (peek, then read
 *   what the parser says is header): the request or ClientHello behind it
 *   stays in the kernel for the next reader.
 * - max_connections_per_ip charges the client the header names, here, once
 *   the header is read; the balancer itself is trusted, hence never counted. */
#ifndef PX_PPACCEPT_H
#define PX_PPACCEPT_H

#include <sys/socket.h>

struct px_server;

/* Takes the accepted socket fd (owned from here on: it is closed, or given to
 * px_conn_accept()). sa is the socket's peer (the balancer); tls starts a
 * server handshake once the header is read. */
void px_ppaccept_start(struct px_server *srv, int fd, const struct sockaddr *sa, int salen,
                       int tls);

/* Sockets still waiting for their header (counted against max_connections). */
unsigned long px_ppaccept_pending(void);

/* Closes every socket still waiting for its header (drain, exit). */
void px_ppaccept_close_all(void);

#endif

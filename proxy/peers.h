/* peers.h — client connections per address (max_connections_per_ip, issue 12).
 *
 * One client must not take every socket the process may hold. Each accepted
 * client socket takes a slot for its address; the owner of the socket
 * (conn.c, then proxy/h2.c or ws/splice.c when the socket moves there) gives it
 * back when the socket closes. IPv4 addresses count one by one, IPv6 ones by
 * /64 (one host usually owns a whole /64). Peers listed in trusted_proxies
 * (load balancers, whose connections carry many clients) are not counted. */
#ifndef PX_PEERS_H
#define PX_PEERS_H

#include <sys/socket.h>

struct px_server;
struct px_peer; /* owned by peers.c; holders keep a pointer until they release it */

/* Counts a new socket from sa. Returns 0 and sets *slot (NULL when nothing is
 * counted: the cap is off, the peer is trusted, or not IP), or -1 when the
 * address already holds max_connections_per_ip sockets: refuse it. */
int px_peer_take(struct px_server *srv, const struct sockaddr *sa, struct px_peer **slot);

/* The socket counted by slot closed (slot may be NULL). */
void px_peer_release(struct px_peer *slot);

/* Addresses currently counted, and sockets refused since start (metrics). */
unsigned long px_peer_addresses(void);
unsigned long px_peer_refused(void);

#endif

/* ws.h — WebSocket tunnels after the runner's 101 (SPEC 9).
 *
 * Once the upgrade is done, the client connection and the runner connection
 * leave conn.c (whose per-request state is freed) and become a splice: two
 * bufferevents and ~100 bytes of bookkeeping, so that tens of thousands of idle
 * WebSockets cost little memory. Bytes are moved between the two without
 * parsing frames and without copying (evbuffer chains change hands). */
#ifndef PX_WS_H
#define PX_WS_H

#include <event2/bufferevent.h>

#include "proxy/server.h"

/* Takes ownership of both bufferevents (callbacks are replaced) and of peer,
 * the client socket's slot in proxy/peers.c (NULL for an HTTP/2 stream).
 * Bytes already waiting in their buffers are relayed. sandbox_id (copied) gets
 * an activity update every 50 s while the tunnel lives, unless activity is 0.
 * raw: both are plain socket bufferevents, so the faster file-descriptor
 * engine may be used. */
int px_splice_start(struct px_server *srv, struct bufferevent *client, struct bufferevent *runner,
                    const char *sandbox_id, int activity, int raw, struct px_peer *peer);

/* Closes every tunnel now (shutdown deadline). */
void px_splice_close_all(struct px_server *srv);

#endif

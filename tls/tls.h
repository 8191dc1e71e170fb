/* tls.h — TLS at the edge (SNI, ALPN, reload) and towards https runners.
 *
 * Certificates come from `tls_cert FILE KEY [DOMAIN…]` entries: each DOMAIN
 * covers itself and *.DOMAIN; an entry without domains covers the names in its
 * certificate; the first entry is the default for unknown or absent SNI. */
#ifndef PX_TLS_H
#define PX_TLS_H

#include <openssl/ssl.h>

#include "proxy/px.h"

struct px_tls;

/* Loads every tls_cert entry of cfg. Returns NULL with a reason in err. Blocking
 * file reads: call before the loop runs, or on SIGHUP. */
struct px_tls *px_tls_load(const struct px_config *cfg, char *err, size_t errlen);
void px_tls_free(struct px_tls *t);

/* A new server-side SSL object for an accepted connection (SNI picks the
 * context during the handshake). The caller owns it. */
SSL *px_tls_new_ssl(struct px_tls *t);

struct bufferevent;

/* Sends TLS close_notify on an OpenSSL bufferevent before it is freed (no-op for
 * other kinds). */
void px_tls_close_notify(struct bufferevent *bev);

/* Did the handshake select ALPN "h2"? */
int px_tls_is_h2(SSL *ssl);

/* Client context for https runners: verification against upstream_ca (or the
 * system store). Returns NULL with err set. */
SSL_CTX *px_tls_client_ctx(const struct px_config *cfg, char *err, size_t errlen);

#endif

/* sentinel_parse.h — the pure parts of Redis Sentinel support: addresses in the
 * configuration and what sentinels answer, shared by the proxy and proxyctl.
 *
 * Sentinel replies are hostile bytes (a sentinel may be misconfigured, or
 * something else may listen on its port): every function checks types, bounds
 * lengths and accepts IP literals only, because redisAsyncConnect() would
 * resolve a name with a blocking call. */
#ifndef PX_SENTINEL_PARSE_H
#define PX_SENTINEL_PARSE_H

#include <stddef.h>

#include <hiredis/hiredis.h>

#include "proxy/px.h" /* struct px_sentinel_addr */

/* Longest master name (sentinel.conf has no limit; ours keeps logs sane). */
#define PX_SENTINEL_NAME_MAX 64

/* "IPv4:PORT", "[IPv6]:PORT" or "IPv6:PORT" (split at the last colon) of at
 * most len bytes (s need not be NUL-terminated). Returns 0 or -1. */
int px_sentinel_parse_addr(const char *s, size_t len, struct px_sentinel_addr *out);

/* 1..PX_SENTINEL_NAME_MAX bytes of [A-Za-z0-9._-]. Returns 1 if valid. */
int px_sentinel_valid_name(const char *s, size_t len);

/* The reply to SENTINEL get-master-addr-by-name: an array of two strings, an IP
 * literal and a port. Returns 0, or -1 (nil for an unknown master, an error, or
 * anything malformed). */
int px_sentinel_parse_master(const redisReply *rp, struct px_sentinel_addr *out);

/* The reply to ROLE: 1 when its first element is "master", else 0. */
int px_sentinel_is_master(const redisReply *rp);

/* The payload of +switch-master, "NAME OLD-IP OLD-PORT NEW-IP NEW-PORT" (len
 * bytes, not NUL-terminated). Returns 0 with the new address when it is about
 * master `name`, 1 when it is about another master, -1 when malformed. */
int px_sentinel_parse_switch(const char *p, size_t len, const char *name,
                             struct px_sentinel_addr *out);

#endif

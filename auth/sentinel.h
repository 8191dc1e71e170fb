/* sentinel.h — finding and following the Redis primary through Redis Sentinel.
 *
 * px_sentinel_ask() asks the configured sentinels in turn for the address of
 * the master name (SENTINEL get-master-addr-by-name), each with its own timer:
 * hiredis 0.14 has no async timeouts (STYLE 6). A px_sentinel also keeps one
 * subscription to +switch-master on some sentinel, and reports both announced
 * switches and, after each (re)subscription, what the sentinels say the primary
 * is now (a switch may have been missed while unsubscribed). Checking that an
 * address really is the primary (ROLE) is the caller's job: it is done on the
 * very link that will be used. */
#ifndef PX_SENTINEL_H
#define PX_SENTINEL_H

#include <event2/event.h>

#include "proxy/px.h"

struct px_sentinel;
struct px_sentinel_ask;

/* a is NULL when err is set (no sentinel gave a usable address); from is the
 * index of the sentinel that named a (for px_sentinel_failed()). */
typedef void (*px_sentinel_found_cb)(void *arg, const struct px_sentinel_addr *a, int from,
                                     const char *err);
/* The primary is (now) at a. announced: a +switch-master message said so; else
 * the sentinels were asked after a (re)subscription and it may be unchanged. */
typedef void (*px_sentinel_primary_cb)(void *arg, const struct px_sentinel_addr *a, int announced);

/* cfg (borrowed, outlives the result) has nsentinels > 0 and redis_master. */
struct px_sentinel *px_sentinel_new(struct event_base *base, const struct px_config *cfg,
                                    px_sentinel_primary_cb on_primary, void *arg);
void px_sentinel_free(struct px_sentinel *s);

/* Starts asking. cb runs exactly once, never inside this call, unless the ask
 * is cancelled first. Returns NULL when out of memory (cb will not run). */
struct px_sentinel_ask *px_sentinel_ask(struct px_sentinel *s, px_sentinel_found_cb cb, void *arg);
/* The address an ask reported did not work (refused, timed out, or ROLE is
 * not master): the next ask starts with another sentinel, so one that names a
 * wrong address cannot keep us from asking the others. */
void px_sentinel_failed(struct px_sentinel *s, int from);

/* Stops an ask whose cb has not run; cb never runs. NULL is fine. */
void px_sentinel_cancel(struct px_sentinel_ask *a);

#endif

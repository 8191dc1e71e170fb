/* redis.h — one asynchronous Redis link on the event loop, plus a subscriber.
 *
 * hiredis 0.14 has no command timeouts, so each command carries its own timer
 * (STYLE 6). While the link is down commands fail at once with
 * px_err_redis_down; the link reconnects with backoff by itself. With
 * redis_sentinel the primary is found and followed through the sentinels
 * (auth/sentinel.h). */
#ifndef PX_REDIS_H
#define PX_REDIS_H

#include <event2/event.h>
#include <hiredis/async.h>

#include "proxy/px.h"

struct px_redis;

/* reply is NULL when err is set; it is freed by hiredis after the callback. */
typedef void (*px_redis_cb)(void *arg, redisReply *reply, const char *err);
/* A message published on the subscribed channel (payload is not NUL-terminated). */
typedef void (*px_redis_msg_cb)(void *arg, struct px_str payload);
/* The subscriber (re)connected: messages may have been missed. */
typedef void (*px_redis_resync_cb)(void *arg);

struct px_redis *px_redis_new(struct event_base *base, const struct px_config *cfg,
                              const char *channel, px_redis_msg_cb on_msg,
                              px_redis_resync_cb on_resync, void *arg);
void px_redis_free(struct px_redis *r);

/* Sends a command. cb runs exactly once: with the reply, or with
 * px_err_redis_down / px_err_timeout. Returns 0, or -1 when cb already ran. */
int px_redis_cmd(struct px_redis *r, px_redis_cb cb, void *arg, int argc, const char **argv,
                 const size_t *argvlen);

/* Fire and forget. */
void px_redis_send(struct px_redis *r, int argc, const char **argv, const size_t *argvlen);

/* The command link is up (in sentinel mode: on a node whose ROLE is master). */
int px_redis_up(const struct px_redis *r);

/* +switch-master messages for our master name this process has seen (for the
 * metrics; 0 without redis_sentinel). */
unsigned long px_redis_failovers(void);

#endif

/* redis.c — the Redis link: command connection, subscriber, reconnects.
 *
 * Connections are made to an IP literal or a unix socket only, because
 * redisAsyncConnect() resolves names with a blocking call. Every pending
 * callback fires with a NULL reply when a link drops; each command's own state
 * (struct cmd) is freed in exactly one place, the reply callback. */
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/hiredis.h>

#include "auth/redis.h"

#define CMD_TIMEOUT_MS 1000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000

struct link {
    struct px_redis *r;    /* borrowed: the owner */
    redisAsyncContext *ac; /* owned by hiredis once connected; NULL while down */
    struct event *retry;   /* owned; reconnect timer */
    int backoff_ms;
    unsigned up : 1;
    unsigned sub : 1; /* the subscriber link */
};

struct px_redis {
    struct event_base *base;     /* borrowed */
    const struct px_config *cfg; /* borrowed */
    char *channel;               /* owned */
    px_redis_msg_cb on_msg;
    px_redis_resync_cb on_resync;
    void *arg;
    struct link cmd, sub;
    unsigned freeing : 1;
};

struct cmd {
    px_redis_cb cb; /* NULL once reported (timeout) */
    void *arg;
    struct event *timer; /* owned */
};

static void link_connect(struct link *l);

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    link_connect(arg);
}

static void schedule_retry(struct link *l)
{
    struct timeval tv = {l->backoff_ms / 1000, (l->backoff_ms % 1000) * 1000};

    if (l->r->freeing)
        return;
    evtimer_add(l->retry, &tv);
    l->backoff_ms = l->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : l->backoff_ms * 2;
}

static void on_sub_message(redisAsyncContext *ac, void *reply, void *arg)
{
    struct link *l = arg;
    redisReply *rp = reply;
    (void)ac;

    if (rp == NULL || rp->type != REDIS_REPLY_ARRAY || rp->elements != 3)
        return;
    if (rp->element[0]->type == REDIS_REPLY_STRING && !strcmp(rp->element[0]->str, "subscribe")) {
        /* Subscribed: anything published while we were away was missed. */
        if (l->r->on_resync != NULL)
            l->r->on_resync(l->r->arg);
        return;
    }
    if (rp->element[0]->type == REDIS_REPLY_STRING && !strcmp(rp->element[0]->str, "message") &&
        rp->element[2]->type == REDIS_REPLY_STRING)
        l->r->on_msg(l->r->arg, px_str_make(rp->element[2]->str, rp->element[2]->len));
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct link *l = ac->data;

    if (status != REDIS_OK) {
        px_log(PX_WARN, "redis: connect failed: %s", ac->errstr);
        l->ac = NULL; /* hiredis frees the context after this callback */
        schedule_retry(l);
        return;
    }
    l->up = 1;
    l->backoff_ms = BACKOFF_MIN_MS;
    px_log(PX_INFO, "redis: %s link up", l->sub ? "subscriber" : "command");
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct link *l = ac->data;

    l->ac = NULL;
    l->up = 0;
    if (l->r->freeing)
        return;
    px_log(PX_WARN, "redis: %s link down%s%s", l->sub ? "subscriber" : "command",
           status != REDIS_OK ? ": " : "", status != REDIS_OK ? ac->errstr : "");
    schedule_retry(l);
}

static void link_connect(struct link *l)
{
    const struct px_config *cfg = l->r->cfg;
    redisAsyncContext *ac;

    if (cfg->redis_host[0] == '/')
        ac = redisAsyncConnectUnix(cfg->redis_host);
    else
        ac = redisAsyncConnect(cfg->redis_host, cfg->redis_port);
    if (ac == NULL || ac->err) {
        px_log(PX_WARN, "redis: cannot start a connection: %s", ac ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        schedule_retry(l);
        return;
    }
    ac->data = l;
    l->ac = ac;
    redisLibeventAttach(ac, l->r->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Commands are queued until the connection is up; AUTH and SELECT go first. */
    if (cfg->redis_password != NULL) {
        if (cfg->redis_username != NULL)
            redisAsyncCommand(ac, NULL, NULL, "AUTH %s %s", cfg->redis_username,
                              cfg->redis_password);
        else
            redisAsyncCommand(ac, NULL, NULL, "AUTH %s", cfg->redis_password);
    }
    if (cfg->redis_db != 0 && !l->sub)
        redisAsyncCommand(ac, NULL, NULL, "SELECT %d", cfg->redis_db);
    if (l->sub)
        redisAsyncCommand(ac, on_sub_message, l, "SUBSCRIBE %s", l->r->channel);
}

struct px_redis *px_redis_new(struct event_base *base, const struct px_config *cfg,
                              const char *channel, px_redis_msg_cb on_msg,
                              px_redis_resync_cb on_resync, void *arg)
{
    struct px_redis *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return NULL;
    r->base = base;
    r->cfg = cfg;
    r->channel = strdup(channel);
    r->on_msg = on_msg;
    r->on_resync = on_resync;
    r->arg = arg;
    r->cmd.r = r->sub.r = r;
    r->sub.sub = 1;
    r->cmd.backoff_ms = r->sub.backoff_ms = BACKOFF_MIN_MS;
    r->cmd.retry = evtimer_new(base, on_retry, &r->cmd);
    r->sub.retry = evtimer_new(base, on_retry, &r->sub);
    if (r->channel == NULL || r->cmd.retry == NULL || r->sub.retry == NULL) {
        px_redis_free(r);
        return NULL;
    }
    link_connect(&r->cmd);
    link_connect(&r->sub);
    return r;
}

void px_redis_free(struct px_redis *r)
{
    if (r == NULL)
        return;
    r->freeing = 1;
    if (r->cmd.ac != NULL)
        redisAsyncFree(r->cmd.ac); /* pending callbacks fire with NULL */
    if (r->sub.ac != NULL)
        redisAsyncFree(r->sub.ac);
    if (r->cmd.retry != NULL)
        event_free(r->cmd.retry);
    if (r->sub.retry != NULL)
        event_free(r->sub.retry);
    free(r->channel);
    free(r);
}

int px_redis_up(const struct px_redis *r)
{
    return r->cmd.up;
}

static void on_cmd_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct cmd *c = arg;
    (void)fd;
    (void)what;

    if (c->cb != NULL) {
        px_redis_cb cb = c->cb;
        c->cb = NULL; /* the reply callback still frees us later */
        cb(c->arg, NULL, px_err_timeout);
    }
}

static void on_cmd_reply(redisAsyncContext *ac, void *reply, void *arg)
{
    struct cmd *c = arg;
    redisReply *rp = reply;
    (void)ac;

    if (c->cb != NULL) {
        if (rp == NULL)
            c->cb(c->arg, NULL, px_err_redis_down);
        else if (rp->type == REDIS_REPLY_ERROR)
            c->cb(c->arg, NULL, px_err_redis_down);
        else
            c->cb(c->arg, rp, NULL);
    }
    event_free(c->timer);
    free(c);
}

int px_redis_cmd(struct px_redis *r, px_redis_cb cb, void *arg, int argc, const char **argv,
                 const size_t *argvlen)
{
    struct cmd *c;
    struct timeval tv = {CMD_TIMEOUT_MS / 1000, (CMD_TIMEOUT_MS % 1000) * 1000};

    /* While connecting, hiredis queues the command; a failed connect reports it. */
    if (r->cmd.ac == NULL || (c = calloc(1, sizeof(*c))) == NULL) {
        cb(arg, NULL, px_err_redis_down);
        return -1;
    }
    c->cb = cb;
    c->arg = arg;
    if ((c->timer = evtimer_new(r->base, on_cmd_timeout, c)) == NULL) {
        free(c);
        cb(arg, NULL, px_err_nomem);
        return -1;
    }
    if (redisAsyncCommandArgv(r->cmd.ac, on_cmd_reply, c, argc, argv, argvlen) != REDIS_OK) {
        event_free(c->timer);
        free(c);
        cb(arg, NULL, px_err_redis_down);
        return -1;
    }
    evtimer_add(c->timer, &tv);
    return 0;
}

void px_redis_send(struct px_redis *r, int argc, const char **argv, const size_t *argvlen)
{
    if (r->cmd.up && r->cmd.ac != NULL)
        redisAsyncCommandArgv(r->cmd.ac, NULL, NULL, argc, argv, argvlen);
}

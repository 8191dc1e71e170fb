/* redis.c — the Redis link: command connection, subscriber, reconnects.
 *
 * With redis_sentinel, each (re)connect of a link first asks the sentinels for
 * the primary (auth/sentinel.c), and ROLE on the new link must say "master"
 * before it is used; a +switch-master moves both links at once.
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
#include "auth/sentinel.h"
#include "auth/sentinel_parse.h"

#define CMD_TIMEOUT_MS 1000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
/* Connecting (and in sentinel mode the ROLE check) must be done by then: an
 * address that swallows SYNs must not hold a link for the kernel's ~2 minutes. */
#define CONNECT_TIMEOUT_MS 2000

/* Failovers this process was told of (+switch-master for our master name). */
static unsigned long failovers;

/* A link's lifecycle. Down: ac and ask are NULL and retry is armed. Sentinel
 * mode only: ask is in flight. Connecting: ac is set, deadline is armed; in
 * sentinel mode ROLE is asked on the link, and only "master" makes it up (a
 * demoted primary must not be used). Up: ac is set, up is 1. */
struct link {
    struct px_redis *r;           /* borrowed: the owner */
    redisAsyncContext *ac;        /* owned by hiredis once connected; NULL while down */
    struct event *retry;          /* owned; reconnect timer */
    struct event *deadline;       /* owned; connect (+ ROLE) deadline */
    struct px_sentinel_ask *ask;  /* owned; sentinel mode: asking for the primary */
    struct px_sentinel_addr addr; /* sentinel mode: where ac goes */
    struct px_sentinel_addr next; /* sentinel mode: announced primary, used once */
    int from;                     /* sentinel mode: index of the sentinel that named addr, or -1 */
    int backoff_ms;
    unsigned up : 1;
    unsigned sub : 1;      /* the subscriber link */
    unsigned has_next : 1; /* next is set */
};

struct px_redis {
    struct event_base *base;     /* borrowed */
    const struct px_config *cfg; /* borrowed */
    char *channel;               /* owned */
    px_redis_msg_cb on_msg;
    px_redis_resync_cb on_resync;
    void *arg;
    struct link cmd, sub;
    struct px_sentinel *sentinel; /* owned; NULL unless redis_sentinel */
    unsigned freeing : 1;
};

struct cmd {
    px_redis_cb cb; /* NULL once reported (timeout) */
    void *arg;
    struct event *timer; /* owned */
};

static void link_connect(struct link *l);

static const char *link_name(const struct link *l)
{
    return l->sub ? "subscriber" : "command";
}

static void set_timer(struct event *ev, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    evtimer_add(ev, &tv);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    link_connect(arg);
}

static void schedule_retry(struct link *l)
{
    if (l->r->freeing)
        return;
    set_timer(l->retry, l->backoff_ms);
    l->backoff_ms = l->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : l->backoff_ms * 2;
}

/* Lets go of the link's context at once. ac->data is cleared first, so the
 * callbacks hiredis still runs for it (pending replies with NULL, maybe later
 * when this runs inside one of them) find no link and do nothing. */
static void link_drop(struct link *l)
{
    redisAsyncContext *ac = l->ac;

    evtimer_del(l->deadline);
    l->up = 0;
    if (ac == NULL)
        return;
    l->ac = NULL;
    ac->data = NULL;
    redisAsyncFree(ac); /* pending commands fail with px_err_redis_down */
}

/* Sentinel mode: the address a sentinel gave did not work out. */
static void link_failed(struct link *l)
{
    if (l->r->sentinel != NULL)
        px_sentinel_failed(l->r->sentinel, l->from);
}

static void link_ready(struct link *l)
{
    l->up = 1;
    l->backoff_ms = BACKOFF_MIN_MS;
    evtimer_del(l->deadline);
    if (l->r->sentinel != NULL)
        px_log(PX_INFO, "redis: %s link up (primary %s:%d)", link_name(l), l->addr.ip,
               l->addr.port);
    else
        px_log(PX_INFO, "redis: %s link up", link_name(l));
}

static void on_sub_message(redisAsyncContext *ac, void *reply, void *arg)
{
    struct link *l = arg;
    redisReply *rp = reply;

    if (rp == NULL || ac->data != l || rp->type != REDIS_REPLY_ARRAY || rp->elements != 3)
        return;
    if (rp->element[0]->type == REDIS_REPLY_STRING && !strcmp(rp->element[0]->str, "subscribe")) {
        /* Subscribed: anything published while we were away was missed. This
         * also runs on a new primary after a failover. */
        if (l->r->on_resync != NULL)
            l->r->on_resync(l->r->arg);
        return;
    }
    if (rp->element[0]->type == REDIS_REPLY_STRING && !strcmp(rp->element[0]->str, "message") &&
        rp->element[2]->type == REDIS_REPLY_STRING)
        l->r->on_msg(l->r->arg, px_str_make(rp->element[2]->str, rp->element[2]->len));
}

static void on_role(redisAsyncContext *ac, void *reply, void *arg)
{
    struct link *l = ac->data;
    (void)arg;

    if (l == NULL || reply == NULL) /* dropped, or lost: the disconnect retries */
        return;
    if (!px_sentinel_is_master(reply)) {
        px_log(PX_WARN, "redis: %s:%d is not the primary; asking the sentinels again", l->addr.ip,
               l->addr.port);
        link_drop(l); /* hiredis frees it when this callback returns */
        link_failed(l);
        schedule_retry(l);
        return;
    }
    link_ready(l);
    if (l->sub)
        redisAsyncCommand(ac, on_sub_message, l, "SUBSCRIBE %s", l->r->channel);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct link *l = ac->data;

    if (l == NULL)
        return;
    if (status != REDIS_OK) {
        px_log(PX_WARN, "redis: connect failed: %s", ac->errstr);
        /* hiredis frees the context after this callback (never free it here) */
        ((redisAsyncContext *)ac)->data = NULL;
        l->ac = NULL;
        evtimer_del(l->deadline);
        link_failed(l);
        schedule_retry(l);
        return;
    }
    if (l->r->sentinel == NULL)
        link_ready(l); /* in sentinel mode ROLE decides */
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct link *l = ac->data;

    if (l == NULL)
        return;
    l->ac = NULL;
    l->up = 0;
    evtimer_del(l->deadline);
    if (l->r->freeing)
        return;
    px_log(PX_WARN, "redis: %s link down%s%s", link_name(l), status != REDIS_OK ? ": " : "",
           status != REDIS_OK ? ac->errstr : "");
    schedule_retry(l);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct link *l = arg;
    (void)fd;
    (void)what;

    px_log(PX_WARN, "redis: %s link not ready within %d ms", link_name(l), CONNECT_TIMEOUT_MS);
    link_drop(l);
    link_failed(l);
    schedule_retry(l);
}

/* Opens the link to host:port (port 0: a unix socket path). */
static void link_open(struct link *l, const char *host, int port)
{
    const struct px_config *cfg = l->r->cfg;
    redisAsyncContext *ac;

    if (port == 0)
        ac = redisAsyncConnectUnix(host);
    else
        ac = redisAsyncConnect(host, port);
    if (ac == NULL || ac->err) {
        px_log(PX_WARN, "redis: cannot start a connection: %s", ac ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        link_failed(l);
        schedule_retry(l);
        return;
    }
    ac->data = l;
    l->ac = ac;
    redisLibeventAttach(ac, l->r->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    set_timer(l->deadline, CONNECT_TIMEOUT_MS);
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
    if (l->r->sentinel != NULL)
        redisAsyncCommand(ac, on_role, NULL, "ROLE"); /* SUBSCRIBE once it says master */
    else if (l->sub)
        redisAsyncCommand(ac, on_sub_message, l, "SUBSCRIBE %s", l->r->channel);
}

static void on_found(void *arg, const struct px_sentinel_addr *a, int from, const char *err)
{
    struct link *l = arg;

    l->ask = NULL;
    l->from = from;
    if (err != NULL) {
        schedule_retry(l);
        return;
    }
    l->addr = *a;
    link_open(l, l->addr.ip, l->addr.port);
}

static void link_connect(struct link *l)
{
    const struct px_config *cfg = l->r->cfg;

    if (l->r->sentinel == NULL) {
        link_open(l, cfg->redis_host, cfg->redis_host[0] == '/' ? 0 : cfg->redis_port);
    } else if (l->has_next) { /* announced by +switch-master: ROLE still checks it */
        l->has_next = 0;
        l->addr = l->next;
        l->from = -1;
        link_open(l, l->addr.ip, l->addr.port);
    } else if ((l->ask = px_sentinel_ask(l->r->sentinel, on_found, l)) == NULL) {
        schedule_retry(l);
    }
}

/* Sentinel mode: the primary is (now) at a. Links already there stay; the
 * others are moved at once. When the subscriber moves, its SUBSCRIBE on the new
 * primary calls on_resync, which drops the cache like any reconnect. */
static void link_move(struct link *l, const struct px_sentinel_addr *a, int announced)
{
    if (l->ac != NULL && l->addr.port == a->port && !strcmp(l->addr.ip, a->ip))
        return;
    if (!announced && l->ask != NULL)
        return; /* it is asking the sentinels itself */
    px_sentinel_cancel(l->ask);
    l->ask = NULL;
    if (l->ac != NULL)
        px_log(PX_INFO, "redis: moving the %s link from %s:%d to %s:%d", link_name(l), l->addr.ip,
               l->addr.port, a->ip, a->port);
    link_drop(l);
    evtimer_del(l->retry);
    l->next = *a;
    l->has_next = 1;
    l->backoff_ms = BACKOFF_MIN_MS;
    link_connect(l);
}

static void on_primary(void *arg, const struct px_sentinel_addr *a, int announced)
{
    struct px_redis *r = arg;

    if (announced) {
        failovers++;
        px_log(PX_WARN, "redis: sentinels switched master %s to %s:%d (failover %lu)",
               r->cfg->redis_master, a->ip, a->port, failovers);
    }
    link_move(&r->cmd, a, announced);
    link_move(&r->sub, a, announced);
}

unsigned long px_redis_failovers(void)
{
    return failovers;
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
    r->cmd.deadline = evtimer_new(base, on_deadline, &r->cmd);
    r->sub.deadline = evtimer_new(base, on_deadline, &r->sub);
    if (cfg->nsentinels > 0)
        r->sentinel = px_sentinel_new(base, cfg, on_primary, r);
    if (r->channel == NULL || r->cmd.retry == NULL || r->sub.retry == NULL ||
        r->cmd.deadline == NULL || r->sub.deadline == NULL ||
        (cfg->nsentinels > 0 && r->sentinel == NULL)) {
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
    px_sentinel_cancel(r->cmd.ask);
    px_sentinel_cancel(r->sub.ask);
    if (r->cmd.ac != NULL)
        redisAsyncFree(r->cmd.ac); /* pending callbacks fire with NULL */
    if (r->sub.ac != NULL)
        redisAsyncFree(r->sub.ac);
    px_sentinel_free(r->sentinel);
    struct event *timers[] = {r->cmd.retry, r->sub.retry, r->cmd.deadline, r->sub.deadline};
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++)
        if (timers[i] != NULL)
            event_free(timers[i]);
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

    /* While connecting, hiredis queues the command; a failed connect reports it.
     * In sentinel mode only once ROLE said master: never to a demoted node. */
    if (r->cmd.ac == NULL || (r->sentinel != NULL && !r->cmd.up) ||
        (c = calloc(1, sizeof(*c))) == NULL) {
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

/* sentinel.c — asking Redis Sentinels for the primary, and following
 * +switch-master. See sentinel.h.
 *
 * Lifetimes. Every hiredis context here has ac->data pointing at its owner (an
 * ask, or the px_sentinel for the subscription) until the owner lets go of it
 * in drop(), which sets ac->data to NULL before redisAsyncFree(). hiredis then
 * still runs the context's pending callbacks (with NULL replies) and its
 * disconnect callback, possibly later when freed from inside one of its own
 * callbacks; each of ours starts by checking that ac->data still names its
 * owner and that the owner still holds this very context. So an owner can be
 * freed right after drop(), in any callback. */
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>

#include "auth/sentinel.h"
#include "auth/sentinel_parse.h"

/* One sentinel's time to connect and answer; then the next is asked. */
#define ASK_TIMEOUT_MS 1000
/* Subscribing to +switch-master: time to subscribe, then retry backoff. */
#define SUB_TIMEOUT_MS 2000
#define SUB_BACKOFF_MIN_MS 100
#define SUB_BACKOFF_MAX_MS 2000

struct px_sentinel {
    struct event_base *base;     /* borrowed */
    const struct px_config *cfg; /* borrowed; sentinels and redis_master */
    px_sentinel_primary_cb on_primary;
    void *arg;
    int good; /* index of the sentinel that answered last: asked first */
    /* the +switch-master subscription, on one sentinel at a time */
    redisAsyncContext *sub;        /* owned by hiredis; NULL while down */
    struct event *sub_timer;       /* owned; subscribe deadline, or the retry */
    struct px_sentinel_ask *check; /* owned; the ask after a (re)subscription */
    int sub_idx;
    int sub_backoff_ms;
    unsigned sub_ok : 1; /* subscribed on sub */
};

struct px_sentinel_ask {
    struct px_sentinel *s; /* borrowed: the owner of the sentinel list */
    px_sentinel_found_cb cb;
    void *arg;
    redisAsyncContext *ac; /* owned by hiredis; the sentinel being asked, or NULL */
    struct event *timer;   /* owned; first a 0 s start, then each sentinel's deadline */
    int start, tried;      /* sentinels start+0 .. start+tried-1 were asked */
};

static void set_timer(struct event *ev, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    evtimer_add(ev, &tv);
}

/* Lets go of a context (see the top of the file). */
static void drop(redisAsyncContext **acp)
{
    redisAsyncContext *ac = *acp;

    if (ac == NULL)
        return;
    *acp = NULL;
    ac->data = NULL;
    redisAsyncFree(ac); /* from inside its own callback hiredis defers this */
}

/* Connects to sentinel i, attached to the loop; NULL when that failed at once. */
static redisAsyncContext *connect_to(struct px_sentinel *s, int i, void *data)
{
    const struct px_sentinel_addr *a = &s->cfg->sentinels[i];
    redisAsyncContext *ac = redisAsyncConnect(a->ip, a->port);

    if (ac == NULL || ac->err) {
        px_log(PX_WARN, "sentinel %s:%d: %s", a->ip, a->port, ac ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        return NULL;
    }
    ac->data = data;
    if (redisLibeventAttach(ac, s->base) != REDIS_OK) {
        ac->data = NULL;
        redisAsyncFree(ac);
        return NULL;
    }
    return ac;
}

/* ------------------------------------------------------------------- asks -- */

static void ask_next(struct px_sentinel_ask *a);

static void ask_finish(struct px_sentinel_ask *a, const struct px_sentinel_addr *addr, int from)
{
    px_sentinel_found_cb cb = a->cb;
    void *arg = a->arg;

    drop(&a->ac);
    px_sentinel_cancel(a); /* frees a; the callback may start another ask */
    cb(arg, addr, from, addr != NULL ? NULL : px_err_redis_down);
}

/* The sentinel being asked. */
static const struct px_sentinel_addr *asked(const struct px_sentinel_ask *a)
{
    return &a->s->cfg->sentinels[(a->start + a->tried - 1) % a->s->cfg->nsentinels];
}

static struct px_sentinel_ask *ask_of(const redisAsyncContext *ac)
{
    struct px_sentinel_ask *a = ac->data;

    return a != NULL && a->ac == ac ? a : NULL;
}

static void on_ask_connect(const redisAsyncContext *ac, int status)
{
    struct px_sentinel_ask *a = ask_of(ac);

    if (a == NULL || status == REDIS_OK)
        return;
    px_log(PX_WARN, "sentinel %s:%d: %s", asked(a)->ip, asked(a)->port, ac->errstr);
    /* hiredis frees it after this callback (never free it here) and runs the
     * pending reply callback, which must not find a: it may be gone by then. */
    ((redisAsyncContext *)ac)->data = NULL;
    a->ac = NULL;
    ask_next(a);
}

static void on_ask_disconnect(const redisAsyncContext *ac, int status)
{
    struct px_sentinel_ask *a = ask_of(ac);
    (void)status;

    if (a == NULL)
        return;
    a->ac = NULL; /* closed before it answered: the reply callback ran with NULL */
}

static void on_ask_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct px_sentinel_ask *a = ask_of(ac);
    struct px_sentinel_addr addr;
    (void)privdata;

    if (a == NULL)
        return;
    const struct px_sentinel_addr *sa = asked(a);
    if (px_sentinel_parse_master(reply, &addr) == 0) {
        a->s->good = (int)(sa - a->s->cfg->sentinels);
        px_log(PX_DEBUG, "sentinel %s:%d: master %s is at %s:%d", sa->ip, sa->port,
               a->s->cfg->redis_master, addr.ip, addr.port);
        ask_finish(a, &addr, a->s->good);
        return;
    }
    /* Names nothing usable (nil for an unknown master, an error, a hostname):
     * say so without echoing the bytes, and ask the next one. */
    px_log(PX_WARN, "sentinel %s:%d: no usable address for master %s%s", sa->ip, sa->port,
           a->s->cfg->redis_master, reply == NULL ? " (connection lost)" : "");
    drop(&a->ac);
    ask_next(a);
}

/* Asks the next sentinel not asked yet, or reports that none answered. */
static void ask_next(struct px_sentinel_ask *a)
{
    struct px_sentinel *s = a->s;

    evtimer_del(a->timer);
    while (a->tried < s->cfg->nsentinels) {
        int i = (a->start + a->tried++) % s->cfg->nsentinels;
        if ((a->ac = connect_to(s, i, a)) == NULL)
            continue;
        redisAsyncSetConnectCallback(a->ac, on_ask_connect);
        redisAsyncSetDisconnectCallback(a->ac, on_ask_disconnect);
        if (redisAsyncCommand(a->ac, on_ask_reply, NULL, "SENTINEL get-master-addr-by-name %s",
                              s->cfg->redis_master) != REDIS_OK) {
            drop(&a->ac);
            continue;
        }
        set_timer(a->timer, ASK_TIMEOUT_MS);
        return;
    }
    px_log(PX_WARN, "sentinel: none of %d sentinels named a primary for master %s",
           s->cfg->nsentinels, s->cfg->redis_master);
    ask_finish(a, NULL, -1);
}

static void on_ask_timer(evutil_socket_t fd, short what, void *arg)
{
    struct px_sentinel_ask *a = arg;
    (void)fd;
    (void)what;

    if (a->ac != NULL) {
        px_log(PX_WARN, "sentinel %s:%d: no answer within %d ms", asked(a)->ip, asked(a)->port,
               ASK_TIMEOUT_MS);
        drop(&a->ac);
    }
    ask_next(a);
}

struct px_sentinel_ask *px_sentinel_ask(struct px_sentinel *s, px_sentinel_found_cb cb, void *arg)
{
    struct px_sentinel_ask *a = calloc(1, sizeof(*a));

    if (a == NULL)
        return NULL;
    a->s = s;
    a->cb = cb;
    a->arg = arg;
    a->start = s->good;
    if ((a->timer = evtimer_new(s->base, on_ask_timer, a)) == NULL) {
        free(a);
        return NULL;
    }
    set_timer(a->timer, 0); /* cb never runs inside this call */
    return a;
}

void px_sentinel_failed(struct px_sentinel *s, int from)
{
    /* Relative to the sentinel that named the address, so that both links
     * failing at the same address move on by one, not two. */
    if (from >= 0 && s->good == from)
        s->good = (from + 1) % s->cfg->nsentinels;
}

void px_sentinel_cancel(struct px_sentinel_ask *a)
{
    if (a == NULL)
        return;
    drop(&a->ac);
    event_free(a->timer);
    free(a);
}

/* ---------------------------------------------------- the +switch-master feed -- */

static void sub_start(struct px_sentinel *s);

static void sub_retry(struct px_sentinel *s)
{
    drop(&s->sub);
    s->sub_ok = 0;
    s->sub_idx = (s->sub_idx + 1) % s->cfg->nsentinels;
    set_timer(s->sub_timer, s->sub_backoff_ms);
    /* Back off only once every sentinel has been tried. */
    if (s->sub_idx == 0)
        s->sub_backoff_ms =
            s->sub_backoff_ms * 2 > SUB_BACKOFF_MAX_MS ? SUB_BACKOFF_MAX_MS : s->sub_backoff_ms * 2;
}

static void on_check(void *arg, const struct px_sentinel_addr *a, int from, const char *err)
{
    struct px_sentinel *s = arg;
    (void)from;

    s->check = NULL;
    if (err == NULL)
        s->on_primary(s->arg, a, 0);
}

static void on_sub_message(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct px_sentinel *s = ac->data;
    redisReply *rp = reply;
    struct px_sentinel_addr addr;
    (void)privdata;

    if (s == NULL || s->sub != ac || rp == NULL || rp->type != REDIS_REPLY_ARRAY ||
        rp->elements != 3 || rp->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (!strcmp(rp->element[0]->str, "subscribe")) {
        const struct px_sentinel_addr *sa = &s->cfg->sentinels[s->sub_idx];
        px_log(PX_INFO, "sentinel %s:%d: following +switch-master", sa->ip, sa->port);
        s->sub_ok = 1;
        s->sub_backoff_ms = SUB_BACKOFF_MIN_MS;
        evtimer_del(s->sub_timer);
        /* A switch may have happened while we were not listening. */
        px_sentinel_cancel(s->check);
        s->check = px_sentinel_ask(s, on_check, s);
        return;
    }
    if (strcmp(rp->element[0]->str, "message") || rp->element[2]->type != REDIS_REPLY_STRING)
        return;
    switch (px_sentinel_parse_switch(rp->element[2]->str, rp->element[2]->len, s->cfg->redis_master,
                                     &addr)) {
    case 0: s->on_primary(s->arg, &addr, 1); break;
    case 1: break; /* another master */
    default: px_log(PX_WARN, "sentinel: ignoring a malformed +switch-master message"); break;
    }
}

/* Only a peer whose ROLE says "sentinel" is subscribed on: hiredis 0.14 aborts
 * the process (assert) on a malformed reply once a context is in pub/sub mode,
 * so something else listening on a sentinel's port must be turned away first. */
static void on_sub_role(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct px_sentinel *s = ac->data;
    const redisReply *rp = reply, *role;
    (void)privdata;

    if (s == NULL || s->sub != ac || rp == NULL) /* dropped, or lost: the disconnect retries */
        return;
    role = rp->type == REDIS_REPLY_ARRAY && rp->elements >= 1 ? rp->element[0] : NULL;
    if (role == NULL || role->type != REDIS_REPLY_STRING || role->len != 8 ||
        memcmp(role->str, "sentinel", 8) != 0) {
        px_log(PX_WARN, "sentinel %s:%d: not a sentinel (ROLE); trying the next one",
               s->cfg->sentinels[s->sub_idx].ip, s->cfg->sentinels[s->sub_idx].port);
        sub_retry(s); /* hiredis frees the context when this callback returns */
        return;
    }
    if (redisAsyncCommand(ac, on_sub_message, NULL, "SUBSCRIBE +switch-master") != REDIS_OK)
        sub_retry(s);
}

static void on_sub_connect(const redisAsyncContext *ac, int status)
{
    struct px_sentinel *s = ac->data;

    if (s == NULL || s->sub != ac || status == REDIS_OK)
        return;
    px_log(PX_WARN, "sentinel %s:%d: %s", s->cfg->sentinels[s->sub_idx].ip,
           s->cfg->sentinels[s->sub_idx].port, ac->errstr);
    ((redisAsyncContext *)ac)->data = NULL; /* hiredis frees it after this callback */
    s->sub = NULL;
    sub_retry(s);
}

static void on_sub_disconnect(const redisAsyncContext *ac, int status)
{
    struct px_sentinel *s = ac->data;
    (void)status;

    if (s == NULL || s->sub != ac)
        return;
    px_log(PX_WARN, "sentinel %s:%d: +switch-master subscription lost",
           s->cfg->sentinels[s->sub_idx].ip, s->cfg->sentinels[s->sub_idx].port);
    s->sub = NULL;
    sub_retry(s);
}

static void sub_start(struct px_sentinel *s)
{
    if ((s->sub = connect_to(s, s->sub_idx, s)) == NULL) {
        sub_retry(s);
        return;
    }
    redisAsyncSetConnectCallback(s->sub, on_sub_connect);
    redisAsyncSetDisconnectCallback(s->sub, on_sub_disconnect);
    if (redisAsyncCommand(s->sub, on_sub_role, NULL, "ROLE") != REDIS_OK) {
        sub_retry(s);
        return;
    }
    set_timer(s->sub_timer, SUB_TIMEOUT_MS);
}

static void on_sub_timer(evutil_socket_t fd, short what, void *arg)
{
    struct px_sentinel *s = arg;
    (void)fd;
    (void)what;

    if (s->sub != NULL) { /* not subscribed in time */
        px_log(PX_WARN, "sentinel %s:%d: no subscription within %d ms",
               s->cfg->sentinels[s->sub_idx].ip, s->cfg->sentinels[s->sub_idx].port,
               SUB_TIMEOUT_MS);
        sub_retry(s);
        return;
    }
    sub_start(s);
}

struct px_sentinel *px_sentinel_new(struct event_base *base, const struct px_config *cfg,
                                    px_sentinel_primary_cb on_primary, void *arg)
{
    struct px_sentinel *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->base = base;
    s->cfg = cfg;
    s->on_primary = on_primary;
    s->arg = arg;
    s->sub_backoff_ms = SUB_BACKOFF_MIN_MS;
    if ((s->sub_timer = evtimer_new(base, on_sub_timer, s)) == NULL) {
        free(s);
        return NULL;
    }
    set_timer(s->sub_timer, 0);
    return s;
}

void px_sentinel_free(struct px_sentinel *s)
{
    if (s == NULL)
        return;
    px_sentinel_cancel(s->check);
    drop(&s->sub);
    event_free(s->sub_timer);
    free(s);
}

/* lookup.c — the per-process record cache and its Redis / in-memory backends.
 *
 * A fixed-size hash table of entries. An entry is PENDING while its one fetch is
 * in flight (later askers wait on it: single flight) and READY with an expiry
 * afterwards. Invalidation removes READY entries and marks PENDING ones stale,
 * so a fetch that raced a change is delivered to its waiters but not kept.
 *
 * Unknown keys cost a Redis round trip each, so a flood of random tokens could
 * turn into a flood of Redis commands; a token bucket (lookup_rate per second)
 * bounds cache misses, and what it refuses gets px_err_busy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "auth/lookup.h"
#include "auth/redis.h"
#include "routing/store.h"

#define NBUCKETS 4096
#define MAX_ENTRIES 200000
#define NEG_TTL 5
#define SWEEP_SECONDS 10

const char px_err_busy[] = "too many lookups of unknown credentials";

struct waiter {
    px_lk_cb cb; /* NULL once cancelled */
    void *arg;
    struct waiter *next;
};

struct entry {
    char *key; /* owned; "{kind}:{key}" */
    uint64_t hash;
    enum px_lk_kind kind;
    unsigned pending : 1;
    unsigned stale : 1; /* invalidated while pending or delivering: deliver, do not keep */
    unsigned delivering : 1; /* deliver() is walking its waiters: nobody else may free it */
    time_t expires;
    struct px_lk_value v;   /* owned contents */
    struct waiter *waiters; /* owned list while pending */
    struct entry *next;     /* bucket chain */
};

static struct {
    struct event_base *base;
    const struct px_config *cfg;
    struct px_redis *redis; /* owned; NULL in memory mode */
    struct entry *buckets[NBUCKETS];
    unsigned long nentries;
    struct event *sweep; /* owned */
    double tokens;       /* miss budget */
    struct timespec refill;
    struct px_lookup_stats stats;
} L;

static uint64_t fnv(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    return h;
}

static void value_clear(struct px_lk_value *v)
{
    px_sandbox_free(v->sb);
    free(v->str);
    memset(v, 0, sizeof(*v));
}

static void entry_free(struct entry *e)
{
    value_clear(&e->v);
    free(e->key);
    free(e);
}

/* Unlinks e from its bucket. */
static void entry_unlink(struct entry *e)
{
    struct entry **pp = &L.buckets[e->hash % NBUCKETS];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    L.nentries--;
}

static struct entry *find(const char *key, size_t len, uint64_t h)
{
    struct entry **pp = &L.buckets[h % NBUCKETS];
    time_t now = time(NULL);

    while (*pp != NULL) {
        struct entry *e = *pp;
        if (e->delivering) { /* deliver() frees or keeps it when its callbacks are done */
            if (!e->stale && e->hash == h && strlen(e->key) == len && !memcmp(e->key, key, len))
                return e;
            pp = &e->next;
            continue;
        }
        if (!e->pending && e->expires <= now) { /* lazy expiry on the way */
            *pp = e->next;
            L.nentries--;
            entry_free(e);
            continue;
        }
        if (e->hash == h && strlen(e->key) == len && !memcmp(e->key, key, len))
            return e;
        pp = &e->next;
    }
    return NULL;
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    time_t now = time(NULL);
    (void)fd;
    (void)what;
    (void)arg;
    for (int i = 0; i < NBUCKETS; i++) {
        struct entry **pp = &L.buckets[i];
        while (*pp != NULL) {
            struct entry *e = *pp;
            if (!e->pending && !e->delivering && e->expires <= now) {
                *pp = e->next;
                L.nentries--;
                entry_free(e);
            } else {
                pp = &e->next;
            }
        }
    }
}

static void drop_matching(const char *prefix, size_t plen, int all)
{
    for (int i = 0; i < NBUCKETS; i++) {
        struct entry **pp = &L.buckets[i];
        while (*pp != NULL) {
            struct entry *e = *pp;
            if (!all && (strlen(e->key) != plen || memcmp(e->key, prefix, plen) != 0)) {
                pp = &e->next;
                continue;
            }
            if (e->pending || e->delivering) {
                e->stale = 1;
                pp = &e->next;
                continue;
            }
            *pp = e->next;
            L.nentries--;
            entry_free(e);
        }
    }
}

static void drop_key(const char *key, size_t len)
{
    uint64_t h = fnv(key, len);
    struct entry *e = find(key, len, h);

    if (e == NULL)
        return;
    if (e->pending || e->delivering) {
        e->stale = 1;
        return;
    }
    entry_unlink(e);
    entry_free(e);
}

void px_lookup_invalidate(struct px_str msg)
{
    char key[600];
    int n;

    if (msg.len == 1 && msg.p[0] == '*') {
        drop_matching(NULL, 0, 1);
        return;
    }
    if (msg.len > 8 && !memcmp(msg.p, "sandbox:", 8)) {
        n = snprintf(key, sizeof(key), "%d:%.*s", PX_LK_SANDBOX, (int)msg.len - 8, msg.p + 8);
        drop_key(key, (size_t)n);
    } else if (msg.len > 6 && !memcmp(msg.p, "token:", 6)) {
        struct px_str rest = px_str_make(msg.p + 6, msg.len - 6);
        const char *colon = memchr(rest.p, ':', rest.len);
        n = snprintf(key, sizeof(key), "%d:%.*s", PX_LK_SIGNED, (int)rest.len, rest.p);
        drop_key(key, (size_t)n);
        if (colon != NULL) {
            n = snprintf(key, sizeof(key), "%d:%.*s", PX_LK_REVOKED,
                         (int)(rest.len - (size_t)(colon + 1 - rest.p)), colon + 1);
            drop_key(key, (size_t)n);
        }
    } else if (msg.len > 7 && !memcmp(msg.p, "domain:", 7)) {
        n = snprintf(key, sizeof(key), "%d:%.*s", PX_LK_DOMAIN, (int)msg.len - 7, msg.p + 7);
        drop_key(key, (size_t)n);
    } else if (msg.len > 7 && !memcmp(msg.p, "apikey:", 7)) {
        n = snprintf(key, sizeof(key), "%d:%.*s", PX_LK_APIKEY, (int)msg.len - 7, msg.p + 7);
        drop_key(key, (size_t)n);
    } else {
        /* Unknown message: be safe rather than stale. */
        drop_matching(NULL, 0, 1);
    }
}

static void on_message(void *arg, struct px_str payload)
{
    (void)arg;
    px_lookup_invalidate(payload);
}

static void on_resync(void *arg)
{
    (void)arg;
    drop_matching(NULL, 0, 1); /* invalidations may have been missed while away */
}

int px_lookup_init(struct event_base *base, const struct px_config *cfg)
{
    struct timeval tv = {SWEEP_SECONDS, 0};

    L.base = base;
    L.cfg = cfg;
    L.tokens = cfg->lookup_burst;
    clock_gettime(CLOCK_MONOTONIC, &L.refill);
    if ((L.sweep = event_new(base, -1, EV_PERSIST, on_sweep, NULL)) == NULL)
        return -1;
    evtimer_add(L.sweep, &tv);
    if (cfg->redis_host == NULL)
        return 0;
    L.redis = px_redis_new(base, cfg, "proxy:invalidate", on_message, on_resync, NULL);
    return L.redis != NULL ? 0 : -1;
}

void px_lookup_set_config(const struct px_config *cfg)
{
    L.cfg = cfg;
}

void px_lookup_shutdown(void)
{
    px_redis_free(L.redis); /* pending fetches complete with errors first */
    L.redis = NULL;
    drop_matching(NULL, 0, 1);
    if (L.sweep != NULL)
        event_free(L.sweep);
    L.sweep = NULL;
}

struct px_redis *px_lookup_redis(void)
{
    return L.redis;
}

const struct px_lookup_stats *px_lookup_stats(void)
{
    return &L.stats;
}

/* ---- fetch ---- */

/* Hands the fetch's result to every waiter. A callback may start other lookups
 * (find() expires entries lazily on its way through a bucket) or see an
 * invalidation, so while the callbacks run the entry is marked delivering:
 * nobody else frees it, an invalidation only marks it stale, and its expiry is
 * set once they are done. Errors and stale results are unlinked first, so no
 * new asker can find them. */
static void deliver(struct entry *e, const char *err)
{
    struct waiter *w = e->waiters;
    int keep = err == NULL && !e->stale; /* errors are never cached (SPEC 4) */

    e->waiters = NULL;
    e->pending = 0;
    if (!keep)
        entry_unlink(e);
    e->delivering = 1;
    while (w != NULL) {
        struct waiter *next = w->next;
        if (w->cb != NULL)
            w->cb(w->arg, err ? NULL : &e->v, err);
        free(w);
        w = next;
    }
    e->delivering = 0;
    if (keep && e->stale) /* invalidated by a callback: deliver, do not keep */
        entry_unlink(e);
    if (!keep || e->stale) {
        entry_free(e);
        return;
    }
    e->expires = time(NULL) + (e->v.found ? L.cfg->cache_ttl : NEG_TTL);
}

static const char *hash_field(const redisReply *r, const char *name)
{
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && !strcmp(r->element[i]->str, name) &&
            r->element[i + 1]->type == REDIS_REPLY_STRING)
            return r->element[i + 1]->str;
    return NULL;
}

static void on_fetch(void *arg, redisReply *r, const char *err)
{
    struct entry *e = arg;
    const char *key = strchr(e->key, ':') + 1;
    const char *why;

    if (err != NULL)
        return deliver(e, err);
    switch (e->kind) {
    case PX_LK_SANDBOX:
        if (r->type != REDIS_REPLY_ARRAY || r->elements == 0)
            break;
        if ((e->v.sb = px_sandbox_new(key)) == NULL)
            return deliver(e, px_err_nomem);
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            if (r->element[i]->type != REDIS_REPLY_STRING ||
                r->element[i + 1]->type != REDIS_REPLY_STRING)
                continue;
            /* Unknown fields are someone else's business (forward compatible). */
            px_sandbox_set(e->v.sb, r->element[i]->str, r->element[i + 1]->str, &why);
        }
        if (px_sandbox_finish(e->v.sb, &why) != 0) {
            px_log(PX_WARN, "sandbox record %s is unusable: %s", key, why);
            px_sandbox_free(e->v.sb);
            e->v.sb = NULL;
            break;
        }
        e->v.found = 1;
        break;
    case PX_LK_SIGNED:
        if (r->type == REDIS_REPLY_STRING) {
            e->v.str = strdup(r->str);
            e->v.found = e->v.str != NULL;
        }
        break;
    case PX_LK_APIKEY:
    case PX_LK_DOMAIN: {
        const char *f1 = e->kind == PX_LK_APIKEY ? "org" : "sandbox";
        const char *f2 = e->kind == PX_LK_APIKEY ? "expires" : "port";
        const char *v1, *v2;
        if (r->type != REDIS_REPLY_ARRAY || (v1 = hash_field(r, f1)) == NULL)
            break;
        v2 = hash_field(r, f2);
        e->v.str = strdup(v1);
        e->v.num = 0;
        if (v2 != NULL) {
            /* Strict digits: "garbage" must not read as 0, which means "never expires". */
            size_t k = 0;
            long num = 0;
            for (; v2[k] >= '0' && v2[k] <= '9' && k < 12; k++)
                num = num * 10 + (v2[k] - '0');
            e->v.num = k > 0 && v2[k] == '\0' ? num : -1;
        }
        e->v.found = e->v.str != NULL;
        break;
    }
    case PX_LK_REVOKED: e->v.found = r->type == REDIS_REPLY_INTEGER && r->integer > 0; break;
    }
    deliver(e, NULL);
}

static int take_token(void)
{
    struct timespec now;
    double dt;

    clock_gettime(CLOCK_MONOTONIC, &now);
    dt = (double)(now.tv_sec - L.refill.tv_sec) + (double)(now.tv_nsec - L.refill.tv_nsec) / 1e9;
    L.refill = now;
    L.tokens += dt * L.cfg->lookup_rate;
    if (L.tokens > L.cfg->lookup_burst)
        L.tokens = L.cfg->lookup_burst;
    if (L.tokens < 1)
        return -1;
    L.tokens -= 1;
    return 0;
}

static void start_fetch(struct entry *e, struct px_str key)
{
    char rkey[700];
    const char *argv[2];
    size_t argvlen[2];
    int n;

    switch (e->kind) {
    case PX_LK_SANDBOX:
        argv[0] = "HGETALL";
        n = snprintf(rkey, sizeof(rkey), "sandbox:%.*s", (int)key.len, key.p);
        break;
    case PX_LK_SIGNED:
        argv[0] = "GET";
        n = snprintf(rkey, sizeof(rkey), "sandbox:signed-preview-url-token:%.*s", (int)key.len,
                     key.p);
        break;
    case PX_LK_APIKEY:
        argv[0] = "HGETALL";
        n = snprintf(rkey, sizeof(rkey), "proxy:api-key:%.*s", (int)key.len, key.p);
        break;
    case PX_LK_REVOKED:
        argv[0] = "EXISTS";
        n = snprintf(rkey, sizeof(rkey), "sandbox:signed-preview-url-revoked:%.*s", (int)key.len,
                     key.p);
        break;
    case PX_LK_DOMAIN:
    default:
        argv[0] = "HGETALL";
        n = snprintf(rkey, sizeof(rkey), "proxy:custom-domain:%.*s", (int)key.len, key.p);
        break;
    }
    argv[1] = rkey;
    argvlen[0] = strlen(argv[0]);
    argvlen[1] = (size_t)n;
    L.stats.fetches++;
    px_redis_cmd(L.redis, on_fetch, e, 2, argv, argvlen);
}

/* In-memory backend: answers at once from proxy.conf records. */
static void memory_lookup(enum px_lk_kind kind, struct px_str key, px_lk_cb cb, void *arg)
{
    struct px_lk_value v = {0};

    if (kind == PX_LK_SANDBOX) {
        const struct px_sandbox *sb = px_store_find(L.cfg, key);
        v.found = sb != NULL;
        v.sb = (struct px_sandbox *)sb;
    } else if (kind == PX_LK_DOMAIN) {
        for (const struct px_domain *d = L.cfg->custom_domains; d != NULL; d = d->next)
            if (strlen(d->host) == key.len && !memcmp(d->host, key.p, key.len)) {
                v.found = 1;
                v.str = d->sandbox;
                v.num = d->port;
                break;
            }
    }
    cb(arg, &v, NULL);
}

struct px_lk *px_lookup(enum px_lk_kind kind, struct px_str key, const char *client, px_lk_cb cb,
                        void *arg)
{
    char buf[600];
    int n;
    uint64_t h;
    struct entry *e;
    struct waiter *w;

    (void)client;
    if (L.redis == NULL) {
        memory_lookup(kind, key, cb, arg);
        return NULL;
    }
    if (key.len > 512) {
        struct px_lk_value v = {0};
        cb(arg, &v, NULL);
        return NULL;
    }
    n = snprintf(buf, sizeof(buf), "%d:%.*s", kind, (int)key.len, key.p);
    h = fnv(buf, (size_t)n);
    e = find(buf, (size_t)n, h);
    if (e != NULL && !e->pending) {
        L.stats.hits++;
        cb(arg, &e->v, NULL);
        return NULL;
    }
    if ((w = calloc(1, sizeof(*w))) == NULL) {
        cb(arg, NULL, px_err_nomem);
        return NULL;
    }
    w->cb = cb;
    w->arg = arg;
    if (e != NULL) { /* a fetch is in flight: wait for it */
        L.stats.coalesced++;
        w->next = e->waiters;
        e->waiters = w;
        return (struct px_lk *)w;
    }
    if (L.nentries >= MAX_ENTRIES || take_token() != 0) {
        L.stats.refused++;
        free(w);
        cb(arg, NULL, L.nentries >= MAX_ENTRIES ? px_err_nomem : px_err_busy);
        return NULL;
    }
    L.stats.misses++;
    if ((e = calloc(1, sizeof(*e))) == NULL || (e->key = strdup(buf)) == NULL) {
        free(e);
        free(w);
        cb(arg, NULL, px_err_nomem);
        return NULL;
    }
    e->hash = h;
    e->kind = kind;
    e->pending = 1;
    e->waiters = w;
    e->next = L.buckets[h % NBUCKETS];
    L.buckets[h % NBUCKETS] = e;
    L.nentries++;
    /* The fetch may fail at once (link down) and deliver synchronously, which
     * frees w: report "already done" in that case. */
    start_fetch(e, key);
    e = find(buf, (size_t)n, h);
    return e != NULL && e->pending ? (struct px_lk *)w : NULL;
}

void px_lookup_cancel(struct px_lk *lk)
{
    if (lk != NULL)
        ((struct waiter *)lk)->cb = NULL;
}

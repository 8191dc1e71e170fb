/* lookup.c — the per-process record cache and its Redis / in-memory backends.
 *
 * A fixed-size hash table of entries. An entry is PENDING while its one fetch is
 * in flight (later askers wait on it: single flight) and READY with an expiry
 * afterwards. Invalidation removes READY entries and marks PENDING ones stale,
 * so a fetch that raced a change is delivered to its waiters but not kept.
 *
 * Found records are kept for cache_ttl (default 300 s): a region's active set of
 * sandboxes stays warm and costs Redis one read per record per TTL. A long TTL is
 * safe because freshness comes from proxy:invalidate, not from expiry: every
 * change is published, and when the subscriber (re)subscribes, on_resync() drops
 * every entry and marks fetches in flight stale, so a message missed while the
 * link was down cannot leave stale data behind. While the command link is down
 * (SPEC 5: keep serving from the cache) an entry is served only up to
 * OUTAGE_MAX_AGE after it was fetched, which bounds what a partition can keep
 * stale. Negative results are kept NEG_TTL (5 s, SPEC 4).
 *
 * The miss budget. We cannot know before asking Redis whether a key exists, and
 * lookups of things that exist must never be refused, so the budget charges
 * outcomes, not attempts: a fetch that FINDS NOTHING costs its client one unit
 * (coalesced waiters cost nothing; found records and errors cost nothing; the
 * revocation check, whose normal answer is "absent", is exempt — it only runs for
 * a cookie with a valid MAC). Before a fetch is sent:
 *   1. its client address (IPv4 /32, IPv6 /64, IPv4-mapped as IPv4) must not be
 *      in debt: lookup_client_rate RATE [BURST] units per second, burst BURST.
 *      Units are charged after the reply, so a client can overshoot by what it
 *      has in flight; its debt is floored at -BURST, so it recovers within
 *      2 x BURST / RATE seconds;
 *   2. a global bucket, lookup_rate RATE [BURST], is charged by every
 *      find-nothing fetch of every client. While it is empty the proxy is under a
 *      distributed flood: clients that found nothing in the last PRESSURE_WINDOW
 *      seconds are refused outright, and every other client (one we have no miss
 *      from, or evicted from the table) draws a unit from a "newcomer" bucket of
 *      the same rate, taken before the fetch and given back when it finds
 *      something. So an attacker with many addresses gets at most about
 *      2 x lookup_rate find-nothing fetches per second, and honest clients keep
 *      working unless they arrive during such a flood while it saturates the
 *      newcomer bucket (then they may see 429 on an uncached lookup);
 *   3. at most MAX_INFLIGHT fetches are outstanding per process (Redis stalled or
 *      overloaded): beyond that px_err_saturated (503), whatever the client.
 * Refusals by 1 and 2 get px_err_busy (429). The per-client table is fixed-size
 * (CLIENT_SETS x CLIENT_WAYS slots, keyed by a salted hash): a slot whose bucket
 * is full and whose last miss is older than PRESSURE_WINDOW says nothing and is
 * reused; otherwise the slot with the oldest miss is evicted, and an evicted
 * client counts as a newcomer in 2.
 *
 * An unknown host label costs two fetches (the sandbox, then the signed preview
 * token); auth.c skips the second when the label cannot be a token (SPEC 4 step
 * 5: tokens are 1-128 of [A-Za-z0-9_-], see tools/proxyctl.c). Host labels are
 * already restricted to that alphabet, so in practice that only spares labels
 * longer than 128 characters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <event2/util.h>
#include <hiredis/hiredis.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "auth/keys.h"
#include "auth/lookup.h"
#include "auth/redis.h"
#include "proxy/api.h"
#include "proxy/browser.h"
#include "proxy/metrics.h"
#include "routing/host.h"
#include "routing/store.h"

#define NBUCKETS 4096
#define MAX_ENTRIES 200000
#define NEG_TTL 5
#define SWEEP_SECONDS 10
#define OUTAGE_MAX_AGE 60  /* seconds an entry is served while Redis is unreachable */
#define MAX_INFLIGHT 1024  /* Redis fetches outstanding per process */
#define PRESSURE_WINDOW 10 /* seconds a find-nothing fetch marks its client */
#define CLIENT_SETS 2048
#define CLIENT_WAYS 4

const char px_err_busy[] = "too many lookups of unknown credentials";
const char px_err_saturated[] = "too many lookups in flight";
const char px_err_api_down[] = "the Daytona API is unavailable";

#define API_PUBLIC_TTL 3600 /* DAYTONA-API.md §4, capped by cache_ttl */
#define API_VALID_TTL 120
/* C5 is never kept (Daytona does not cache it; the cookie stands in): concurrent
 * askers share one call, but a revoked signed URL must stop minting cookies at once. */
#define API_SIGNED_TTL 0
#define API_WARNING_TTL 60
#define API_SIGNING_TTL 30   /* §7: then a rotated-away key stops working */
#define SIGNING_KEY_MAX 1024 /* Daytona's are nanoid(32): a longer answer is no key */

static int api_kind(enum px_lk_kind k)
{
    return k == PX_LK_API_PUBLIC || k == PX_LK_API_TOKEN || k == PX_LK_API_SIGNED ||
           k == PX_LK_API_RUNNER || k == PX_LK_API_ACCESS || k == PX_LK_API_WARNING ||
           k == PX_LK_API_SIGNING;
}

/* A client address as the budget sees it: family, then IPv4 or an IPv6 /64. */
struct ckey {
    unsigned char b[9]; /* b[0]: 4, 6, or 0 for unknown (unix socket, unparsable) */
};

struct bucket {
    double tokens;
    double t; /* monotonic seconds of the last refill */
};

struct cslot {
    struct ckey k;
    unsigned used : 1;
    struct bucket b;
    double last_miss; /* monotonic seconds of its last find-nothing fetch */
};

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
    unsigned stale : 1;      /* invalidated while pending or delivering: deliver, do not keep */
    unsigned delivering : 1; /* deliver() is walking its waiters: nobody else may free it */
    unsigned newcomer : 1;   /* took a newcomer unit: given back if something is found */
    unsigned refresh : 1;    /* px_lookup_refresh(): past Daytona's cache; always charged */
    struct ckey client;      /* who started the fetch: charged if it finds nothing */
    time_t fetched;
    time_t expires;
    struct px_lk_value v;    /* owned contents */
    struct px_api_call *api; /* owned while an API fetch is out */
    char *xff;               /* owned; C3: the client address the API throttles on */
    char *api_path;          /* owned; the API call to make if Daytona's cache has nothing */
    char *bearer;            /* owned; C3: the user's token */
    unsigned api_flags;
    struct waiter *waiters; /* owned list while pending */
    struct entry *next;     /* bucket chain */
};

static struct {
    struct event_base *base;
    struct px_server *srv;     /* borrowed; API mode's calls */
    time_t key_refused_logged; /* the API refused our key: one line a minute */
    int closing;               /* px_lookup_shutdown(): no new API calls */
    const struct px_config *cfg;
    struct px_redis *redis; /* owned; NULL in memory mode */
    struct entry *buckets[NBUCKETS];
    unsigned long nentries;
    struct event *sweep;     /* owned */
    struct bucket global;    /* find-nothing fetches of the process (lookup_rate) */
    struct bucket newcomers; /* while global is empty: clients without recent misses */
    unsigned long inflight;  /* fetches sent, reply not yet handled */
    uint64_t salt;           /* of the client table's hash */
    struct cslot clients[CLIENT_SETS][CLIENT_WAYS];
    struct px_lookup_stats stats;
    struct entry *starting; /* lookup_start() is starting its fetch: did it deliver? */
    int starting_done;
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
    if (v->str != NULL) /* it may be a signing key */
        OPENSSL_cleanse(v->str, strlen(v->str));
    free(v->str);
    memset(v, 0, sizeof(*v));
}

static void entry_free(struct entry *e)
{
    free(e->xff);
    free(e->api_path);
    free(e->bearer);
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
    if (msg.len > 8 && !memcmp(msg.p, PX_KEY_SANDBOX, 8)) {
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
    L.global.tokens = L.newcomers.tokens = cfg->lookup_burst;
    evutil_secure_rng_get_bytes(&L.salt, sizeof(L.salt));
    if ((L.sweep = event_new(base, -1, EV_PERSIST, on_sweep, NULL)) == NULL)
        return -1;
    evtimer_add(L.sweep, &tv);
    if (cfg->redis_host == NULL && cfg->nsentinels == 0)
        return 0;
    L.redis = px_redis_new(base, cfg, PX_CHANNEL_INVALIDATE, on_message, on_resync, NULL);
    return L.redis != NULL ? 0 : -1;
}

void px_lookup_set_server(struct px_server *srv)
{
    L.srv = srv;
}

void px_lookup_set_config(const struct px_config *cfg)
{
    L.cfg = cfg;
}

static void deliver(struct entry *e, const char *err);

/* API fetches still out at exit: cancel the calls, end the entries (their
 * waiters were cancelled with their connections). */
static void cancel_api_fetches(void)
{
    for (int i = 0; i < NBUCKETS; i++) {
        struct entry *e = L.buckets[i];
        while (e != NULL) {
            if (e->pending && e->api != NULL) {
                px_api_cancel(e->api);
                e->api = NULL;
                deliver(e, px_err_api_down); /* unlinks and frees e */
                e = L.buckets[i];            /* the chain changed: rescan it */
                continue;
            }
            e = e->next;
        }
    }
}

void px_lookup_shutdown(void)
{
    L.closing = 1;
    cancel_api_fetches();
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

/* ---- the miss budget (see the top of the file) ---- */

static double mono(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void refill(struct bucket *b, double now, double rate, double burst)
{
    if (b->t == 0)
        b->tokens = burst; /* first use */
    else if (now > b->t)
        b->tokens += (now - b->t) * rate;
    if (b->tokens > burst)
        b->tokens = burst;
    b->t = now;
}

static void debit(struct bucket *b, double burst)
{
    b->tokens -= 1;
    if (b->tokens < -burst)
        b->tokens = -burst;
}

static void client_key(const char *text, struct ckey *k)
{
    unsigned char a[16];

    memset(k, 0, sizeof(*k));
    if (text == NULL)
        return;
    if (inet_pton(AF_INET, text, a) == 1) {
        k->b[0] = 4;
        memcpy(k->b + 1, a, 4);
    } else if (inet_pton(AF_INET6, text, a) == 1) {
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (!memcmp(a, mapped, 12)) {
            k->b[0] = 4;
            memcpy(k->b + 1, a + 12, 4);
        } else { /* one subscriber usually holds a whole /64 */
            k->b[0] = 6;
            memcpy(k->b + 1, a, 8);
        }
    }
}

static struct cslot *client_set(const struct ckey *k)
{
    uint64_t h = L.salt ^ 1469598103934665603ULL;

    for (size_t i = 0; i < sizeof(k->b); i++)
        h = (h ^ k->b[i]) * 1099511628211ULL;
    return L.clients[(h ^ (h >> 29)) % CLIENT_SETS];
}

static int slot_idle(struct cslot *s, double now)
{
    if (!s->used)
        return 1;
    refill(&s->b, now, L.cfg->lookup_client_rate, L.cfg->lookup_client_burst);
    return s->b.tokens >= L.cfg->lookup_client_burst && now - s->last_miss >= PRESSURE_WINDOW;
}

/* The client's slot; with create, one is made (reusing an idle slot, else
 * evicting the oldest miss of its set). NULL when absent and not created. */
static struct cslot *client_get(const struct ckey *k, int create, double now)
{
    struct cslot *set = client_set(k), *victim = NULL;

    for (int i = 0; i < CLIENT_WAYS; i++)
        if (set[i].used && !memcmp(&set[i].k, k, sizeof(*k)))
            return &set[i];
    if (!create)
        return NULL;
    for (int i = 0; i < CLIENT_WAYS && victim == NULL; i++)
        if (slot_idle(&set[i], now))
            victim = &set[i];
    if (victim == NULL) {
        victim = &set[0];
        for (int i = 1; i < CLIENT_WAYS; i++)
            if (set[i].last_miss < victim->last_miss)
                victim = &set[i];
        L.stats.evicted++;
    }
    memset(victim, 0, sizeof(*victim));
    victim->used = 1;
    victim->k = *k;
    return victim;
}

/* May a fetch for this client go to Redis now? NULL if yes, else the error.
 * Sets *newcomer when it took a newcomer unit. */
static const char *admit(enum px_lk_kind kind, const struct ckey *k, int *newcomer)
{
    const struct px_config *cfg = L.cfg;
    double now = mono();
    struct cslot *s;

    *newcomer = 0;
    if (L.inflight >= MAX_INFLIGHT)
        return px_err_saturated;
    if (kind == PX_LK_REVOKED)
        return NULL;
    if ((s = client_get(k, 0, now)) != NULL) {
        refill(&s->b, now, cfg->lookup_client_rate, cfg->lookup_client_burst);
        if (s->b.tokens < 1)
            return px_err_busy;
    }
    refill(&L.global, now, cfg->lookup_rate, cfg->lookup_burst);
    if (L.global.tokens >= 1)
        return NULL;
    /* The ceiling is spent: unknown keys are arriving from many addresses. */
    if (s != NULL && now - s->last_miss < PRESSURE_WINDOW)
        return px_err_busy;
    refill(&L.newcomers, now, cfg->lookup_rate, cfg->lookup_burst);
    if (L.newcomers.tokens < 1)
        return px_err_busy;
    L.newcomers.tokens -= 1;
    *newcomer = 1;
    return NULL;
}

/* Charges a finished fetch to its client and the ceiling (before its waiters run,
 * so a chain's next lookup already sees the charge). */
static void account(struct entry *e, const char *err)
{
    const struct px_config *cfg = L.cfg;
    double now = mono();
    struct cslot *s;

    if (!e->refresh && (err != NULL || e->v.found || e->kind == PX_LK_REVOKED)) {
        if (e->newcomer) { /* found something (or could not tell): give it back */
            L.newcomers.tokens += 1;
            if (L.newcomers.tokens > cfg->lookup_burst)
                L.newcomers.tokens = cfg->lookup_burst;
        }
        return;
    }
    L.stats.notfound++;
    refill(&L.global, now, cfg->lookup_rate, cfg->lookup_burst);
    debit(&L.global, cfg->lookup_burst);
    if ((s = client_get(&e->client, 1, now)) != NULL) {
        refill(&s->b, now, cfg->lookup_client_rate, cfg->lookup_client_burst);
        debit(&s->b, cfg->lookup_client_burst);
        s->last_miss = now;
    }
}

/* ---- fetch ---- */

static int min_ttl(int a, int b)
{
    return a < b ? a : b;
}

/* Seconds a result is kept (API kinds: Daytona's TTLs, DAYTONA-API.md §4). */
static int ttl(const struct entry *e)
{
    switch (e->kind) {
    case PX_LK_API_PUBLIC: return min_ttl(API_PUBLIC_TTL, L.cfg->cache_ttl);
    case PX_LK_API_TOKEN:
    case PX_LK_API_ACCESS:
    case PX_LK_API_RUNNER: return e->v.found ? min_ttl(API_VALID_TTL, L.cfg->cache_ttl) : NEG_TTL;
    case PX_LK_API_SIGNED: return e->v.found ? API_SIGNED_TTL : NEG_TTL;
    case PX_LK_API_WARNING: return min_ttl(API_WARNING_TTL, L.cfg->cache_ttl);
    case PX_LK_API_SIGNING: return min_ttl(API_SIGNING_TTL, L.cfg->cache_ttl);
    default: return e->v.found ? L.cfg->cache_ttl : NEG_TTL;
    }
}

/* Hands the fetch's result to every waiter. A callback may start other lookups
 * (find() expires entries lazily on its way through a bucket) or see an
 * invalidation, so while the callbacks run the entry is marked delivering:
 * nobody else frees it, an invalidation only marks it stale, and its expiry is
 * set once they are done. Errors and stale results are unlinked first, so no
 * new asker can find them. */
static void deliver(struct entry *e, const char *err)
{
    struct waiter *w = e->waiters;
    /* Errors are never cached (SPEC 4); nor is a missing signing key (§7: a
     * sandbox just given one must not wait for a negative entry to expire). */
    int keep = err == NULL && !e->stale && (e->kind != PX_LK_API_SIGNING || e->v.found);

    L.inflight--;
    if (e == L.starting)
        L.starting_done = 1;
    account(e, err);
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
    e->fetched = time(NULL);
    e->expires = e->fetched + ttl(e);
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

    if (err != NULL) {
        px_metrics_redis_error(err);
        return deliver(e, err);
    }
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
    case PX_LK_API_PUBLIC:
    case PX_LK_API_TOKEN:
    case PX_LK_API_SIGNED:
    case PX_LK_API_RUNNER:
    case PX_LK_API_ACCESS:
    case PX_LK_API_WARNING:
    case PX_LK_API_SIGNING: break; /* asked of the API, never of Redis (on_api) */
    }
    deliver(e, NULL);
}

/* ---- API mode ---- */

/* RunnerFull (C6, url_field "proxyUrl") or Daytona's cached runner info
 * ("apiUrl", §4) -> a record: where previews go, and the runner key. */
static int runner_record(struct entry *e, const char *id, json_t *j, const char *url_field)
{
    json_t *url, *key;
    const char *why;
    int rc = -1;

    if (!json_is_object(j))
        goto out;
    url = json_object_get(j, url_field);
    key = json_object_get(j, "apiKey");
    if (!json_is_string(url) || !json_is_string(key) || json_string_length(url) > 2048 ||
        json_string_length(key) > 2048 ||
        strlen(json_string_value(url)) != json_string_length(url) ||
        strlen(json_string_value(key)) != json_string_length(key))
        goto out; /* a null proxyUrl is an error (§2 C6) */
    for (const char *k = json_string_value(key); *k; k++)
        if ((unsigned char)*k < 0x20 || *k == 0x7f)
            goto out; /* it becomes a header value */
    if ((e->v.sb = px_sandbox_new(id)) == NULL ||
        px_sandbox_set(e->v.sb, "runner_url", json_string_value(url), &why) != 0 ||
        px_sandbox_set(e->v.sb, "runner_key", json_string_value(key), &why) != 0 ||
        px_sandbox_finish(e->v.sb, &why) != 0) {
        px_sandbox_free(e->v.sb);
        e->v.sb = NULL;
        goto out;
    }
    e->v.found = 1;
    rc = 0;
out:
    return rc;
}

/* A signing key as C12 answers it or Daytona's cache holds it: HMAC key text,
 * 1..SIGNING_KEY_MAX bytes without NUL. 0 when it filled e->v. */
static int signing_key(struct entry *e, const char *key, size_t len)
{
    if (key == NULL || len == 0 || len > SIGNING_KEY_MAX || strlen(key) != len)
        return -1;
    if ((e->v.str = strdup(key)) == NULL)
        return -1;
    e->v.found = 1;
    return 0;
}

/* ---- Daytona's Redis cache (DAYTONA-API.md §4): shared with its Go proxy ---- */

#define DAYTONA_MAX_VALUE 65536 /* a bigger cached value is someone else's mistake: a miss */

/* Daytona's key for an API kind's entry; 0 when the kind is never cached (C5). */
static int daytona_key(const struct entry *e, char *buf, size_t cap)
{
    const char *key = strchr(e->key, ':') + 1;
    const char *prefix;
    int n;

    switch (e->kind) {
    case PX_LK_API_PUBLIC: prefix = PX_KEY_API_PUBLIC; break;
    case PX_LK_API_TOKEN:
    case PX_LK_API_ACCESS: prefix = PX_KEY_API_ACCESS; break; /* "{label}:{cred}" */
    case PX_LK_API_RUNNER: prefix = PX_KEY_API_RUNNER; break;
    case PX_LK_API_SIGNING: prefix = PX_KEY_API_SIGNING; break;
    case PX_LK_API_WARNING: { /* ours is "{port}:{label}", Daytona's "{label}:{port}" */
        const char *colon = strchr(key, ':');
        if (colon == NULL)
            return 0;
        n = snprintf(buf, cap, PX_KEY_API_WARNING "%s:%.*s", colon + 1, (int)(colon - key), key);
        return n > 0 && (size_t)n < cap ? n : 0;
    }
    default: return 0;
    }
    n = snprintf(buf, cap, "%s%s", prefix, key);
    return n > 0 && (size_t)n < cap ? n : 0;
}

/* Writes the answer as the Go proxy would: SET key {"value": V} EX ttl. */
static void daytona_store(const struct entry *e)
{
    char key[800], val[5000], ex[16];
    int kn, vn, exn, seconds;

    if (L.redis == NULL || (kn = daytona_key(e, key, sizeof(key))) == 0)
        return;
    if (e->kind == PX_LK_API_RUNNER) {
        json_t *v;
        char *text;
        if (!e->v.found)
            return; /* only a C6 that succeeded is cached */
        v = json_pack("{s:{s:s,s:s}}", "value", "apiUrl", e->v.sb->runner_url, "apiKey",
                      e->v.sb->runner_key ? e->v.sb->runner_key : "");
        text = v != NULL ? json_dumps(v, JSON_COMPACT) : NULL;
        json_decref(v);
        if (text == NULL || (vn = snprintf(val, sizeof(val), "%s", text)) >= (int)sizeof(val)) {
            free(text);
            return;
        }
        free(text);
        seconds = API_VALID_TTL;
    } else if (e->kind == PX_LK_API_SIGNING) {
        json_t *v;
        char *text;
        if (!e->v.found)
            return;
        v = json_pack("{s:s}", "value", e->v.str);
        text = v != NULL ? json_dumps(v, JSON_COMPACT) : NULL;
        json_decref(v);
        if (text == NULL || (vn = snprintf(val, sizeof(val), "%s", text)) >= (int)sizeof(val)) {
            free(text);
            return;
        }
        OPENSSL_cleanse(text, strlen(text));
        free(text);
        seconds = API_SIGNING_TTL;
    } else {
        vn = snprintf(val, sizeof(val), "{\"value\":%s}", e->v.found ? "true" : "false");
        seconds = e->kind == PX_LK_API_PUBLIC    ? API_PUBLIC_TTL
                  : e->kind == PX_LK_API_WARNING ? API_WARNING_TTL
                  : e->v.found                   ? API_VALID_TTL
                                                 : NEG_TTL;
    }
    exn = snprintf(ex, sizeof(ex), "%d", seconds);
    const char *argv[5] = {"SET", key, val, "EX", ex};
    size_t len[5] = {3, (size_t)kn, (size_t)vn, 2, (size_t)exn};
    px_redis_send(L.redis, 5, argv, len); /* a write error is only logged by redis.c */
    OPENSSL_cleanse(val, sizeof(val));
}

/* Reads a cached {"value": V}; 0 when it filled e->v. */
static int daytona_load(struct entry *e, const char *text, size_t len)
{
    json_error_t je;
    json_t *j = json_loadb(text, len, 0, &je), *v;
    int rc = -1;

    if (!json_is_object(j) || (v = json_object_get(j, "value")) == NULL)
        goto out;
    if (e->kind == PX_LK_API_RUNNER) {
        rc = runner_record(e, strchr(e->key, ':') + 1, v, "apiUrl");
    } else if (e->kind == PX_LK_API_SIGNING) {
        if (signing_key(e, json_string_value(v), json_is_string(v) ? json_string_length(v) : 0) ==
            0)
            rc = 0;
    } else if (json_is_boolean(v)) {
        e->v.found = json_is_true(v);
        rc = 0;
    }
out:
    json_decref(j);
    return rc;
}

static void on_api(void *arg, const struct px_api_resp *r)
{
    struct entry *e = arg;
    const char *key = strchr(e->key, ':') + 1;
    int final4xx = r->status >= 400 && r->status <= 499 && r->status != 408 && r->status != 429;

    e->api = NULL;
    px_metrics.api_errors += r->err != NULL || r->status >= 500;
    if (r->err != NULL)
        return deliver(e, px_err_api_down);
    if (e->kind == PX_LK_API_ACCESS && r->status == 429)
        return deliver(e, px_err_busy); /* the API throttles this client: not cached */
    if (e->kind == PX_LK_API_WARNING) {
        /* §2 C13: the organisation's flag; a 4xx (an unknown label, or an API
         * without this endpoint, where the global switch that led here stands)
         * shows the page and is cached; only a readable 200 can hide it. */
        json_error_t je;
        json_t *j = r->status == 200 ? json_loadb(r->body, r->body_len, 0, &je) : NULL;
        json_t *en = json_is_object(j) ? json_object_get(j, "enabled") : NULL;
        if (r->status == 200 && !json_is_boolean(en)) {
            json_decref(j);
            return deliver(e, px_err_api_down); /* shown, not cached */
        }
        if (r->status != 200 && !final4xx && r->status != 401 && r->status != 403) {
            json_decref(j);
            return deliver(e, px_err_api_down);
        }
        e->v.found = r->status == 200 ? json_is_true(en) : 1;
        json_decref(j);
        daytona_store(e);
        return deliver(e, NULL);
    }
    if ((r->status == 401 || r->status == 403) && e->kind != PX_LK_API_SIGNED &&
        e->kind != PX_LK_API_ACCESS) {
        /* The proxy's own identity was refused: PROXY_API_KEY is wrong. Never
         * cached as "private" or "invalid" (Daytona caches it for an hour). */
        time_t now = time(NULL);
        if (now - L.key_refused_logged >= 60) {
            L.key_refused_logged = now;
            px_log(PX_ERR,
                   "api: the Daytona API refused the proxy's key (%d): check api_key / "
                   "PROXY_API_KEY",
                   r->status);
        }
        return deliver(e, px_err_api_down);
    }
    switch (e->kind) {
    case PX_LK_API_PUBLIC:
    case PX_LK_API_TOKEN:
    case PX_LK_API_ACCESS:
        /* §2 C2-C4: exactly 200 is yes; another 2xx or a final 4xx is no */
        if (r->status == 200)
            e->v.found = 1;
        else if (!(r->status / 100 == 2 || final4xx))
            return deliver(e, px_err_api_down);
        break;
    case PX_LK_API_SIGNED:
        if (r->status == 200) {
            /* a sandbox ID as the API answers it: nothing we would have to escape */
            if (!px_str_is_label(px_str_make(r->body, r->body_len), 255))
                return deliver(e, px_err_api_down);
            if ((e->v.str = strdup(r->body)) == NULL)
                return deliver(e, px_err_nomem);
            e->v.found = 1;
        } else if (!final4xx) {
            return deliver(e, px_err_api_down);
        }
        break;
    case PX_LK_API_SIGNING:
        /* §2 C12: the raw key; a final 4xx means none (not cached, see deliver()) */
        if (r->status == 200) {
            if (signing_key(e, r->body, r->body_len) != 0)
                return deliver(e, px_err_api_down);
        } else if (!final4xx) {
            return deliver(e, px_err_api_down);
        }
        break;
    case PX_LK_API_RUNNER:
        if (r->status == 200) {
            json_error_t je;
            json_t *j = json_loadb(r->body, r->body_len, 0, &je);
            int bad = runner_record(e, key, j, "proxyUrl") != 0;
            json_decref(j);
            if (bad) {
                px_log(PX_WARN, "api: runner info for a sandbox is unusable (no proxyUrl/apiKey)");
                return deliver(e, px_err_api_down);
            }
        } else if (r->status != 404) {
            return deliver(e, px_err_api_down);
        }
        break;
    default: break;
    }
    daytona_store(e);
    deliver(e, NULL);
}

static void ask_api(struct entry *e)
{
    if (L.closing || L.srv == NULL ||
        (e->api = px_api_request(L.srv, "GET", e->api_path, e->bearer, e->xff, e->api_flags, on_api,
                                 e)) == NULL)
        deliver(e, px_err_api_down);
}

/* A read error or an unreadable value is a miss: the API decides (§4). */
static void on_daytona_cache(void *arg, redisReply *r, const char *err)
{
    struct entry *e = arg;

    if (err != NULL)
        px_metrics_redis_error(err);
    if (err == NULL && r->type == REDIS_REPLY_STRING && r->len <= DAYTONA_MAX_VALUE &&
        daytona_load(e, r->str, r->len) == 0) {
        L.stats.hits_daytona++;
        return deliver(e, NULL);
    }
    value_clear(&e->v);
    ask_api(e);
}

static void start_api_fetch(struct entry *e, struct px_str key)
{
    const char *colon = memchr(key.p, ':', key.len);
    struct px_str k1 = key, k2 = PX_STR_NULL;
    unsigned flags = 0;
    int pair = e->kind == PX_LK_API_TOKEN || e->kind == PX_LK_API_SIGNED ||
               e->kind == PX_LK_API_ACCESS || e->kind == PX_LK_API_WARNING;
    int ok = !pair || colon != NULL;
    char bearer[600];
    struct evbuffer *path = evbuffer_new();

    L.stats.fetches++;
    L.inflight++; /* deliver() counts it back */
    if (path == NULL)
        return deliver(e, px_err_nomem);
    if (colon != NULL && pair) {
        k1 = px_str_make(key.p, (size_t)(colon - key.p));
        k2 = px_str_make(colon + 1, key.len - (size_t)(colon + 1 - key.p));
    }
    /* Labels and tokens come from the client: each is one escaped path segment. */
    switch (e->kind) {
    case PX_LK_API_PUBLIC:
        evbuffer_add_printf(path, "/preview/");
        px_url_encode(path, k1);
        evbuffer_add_printf(path, "/public");
        flags = PX_API_FINAL_4XX;
        break;
    case PX_LK_API_TOKEN:
        evbuffer_add_printf(path, "/preview/");
        px_url_encode(path, k1);
        evbuffer_add_printf(path, "/validate/");
        px_url_encode(path, k2);
        flags = PX_API_FINAL_4XX;
        break;
    case PX_LK_API_SIGNED: /* key is "{port}:{token}"; the call is /preview/{token}/{port} */
        evbuffer_add_printf(path, "/preview/");
        px_url_encode(path, k2);
        evbuffer_add_printf(path, "/");
        px_url_encode(path, k1);
        evbuffer_add_printf(path, "/sandbox-id");
        break;
    case PX_LK_API_WARNING: /* key is "{port}:{label}" */
        evbuffer_add_printf(path, "/preview/");
        px_url_encode(path, k2);
        evbuffer_add_printf(path, "/preview-warning?port=");
        px_url_encode(path, k1);
        flags = PX_API_FINAL_4XX;
        break;
    case PX_LK_API_ACCESS: /* the user's own bearer; it goes in a header, not the path */
        evbuffer_add_printf(path, "/preview/");
        px_url_encode(path, k1);
        evbuffer_add_printf(path, "/access");
        flags = PX_API_FINAL_4XX | PX_API_USER;
        ok = ok && k2.len > 0 && k2.len < sizeof(bearer);
        if (ok) {
            memcpy(bearer, k2.p, k2.len);
            bearer[k2.len] = '\0';
        }
        break;
    case PX_LK_API_SIGNING:
        evbuffer_add_printf(path, "/preview/");
        px_url_encode(path, k1);
        evbuffer_add_printf(path, "/signing-key");
        flags = PX_API_FINAL_4XX;
        break;
    default:
        evbuffer_add_printf(path, "/runners/by-sandbox/");
        px_url_encode(path, k1);
        break;
    }
    evbuffer_add(path, "", 1);
    if (evbuffer_get_length(path) > PX_API_MAX_PATH)
        ok = 0;
    e->api_flags = flags;
    e->api_path = ok ? strdup((const char *)evbuffer_pullup(path, -1)) : NULL;
    evbuffer_free(path);
    if (!ok)
        return deliver(e, NULL); /* a key that cannot be asked finds nothing */
    if (e->api_path == NULL ||
        (e->kind == PX_LK_API_ACCESS && (e->bearer = strdup(bearer)) == NULL))
        return deliver(e, px_err_nomem);
    char dkey[800];
    int dn = daytona_key(e, dkey, sizeof(dkey));
    if (L.redis != NULL && dn > 0 && !e->refresh) { /* what this proxy or a Go proxy cached */
        const char *argv[2] = {"GET", dkey};
        size_t len[2] = {3, (size_t)dn};
        px_redis_cmd(L.redis, on_daytona_cache, e, 2, argv, len);
        return;
    }
    ask_api(e);
}

static void start_fetch(struct entry *e, struct px_str key)
{
    char rkey[700];
    const char *argv[2];
    size_t argvlen[2];
    int n;

    if (api_kind(e->kind))
        return start_api_fetch(e, key);
    switch (e->kind) {
    case PX_LK_SANDBOX:
        argv[0] = "HGETALL";
        n = snprintf(rkey, sizeof(rkey), PX_KEY_SANDBOX "%.*s", (int)key.len, key.p);
        break;
    case PX_LK_SIGNED:
        argv[0] = "GET";
        n = snprintf(rkey, sizeof(rkey), PX_KEY_SIGNED_TOKEN "%.*s", (int)key.len, key.p);
        break;
    case PX_LK_APIKEY:
        argv[0] = "HGETALL";
        n = snprintf(rkey, sizeof(rkey), PX_KEY_API_KEY "%.*s", (int)key.len, key.p);
        break;
    case PX_LK_REVOKED:
        argv[0] = "EXISTS";
        n = snprintf(rkey, sizeof(rkey), PX_KEY_SIGNED_REVOKED "%.*s", (int)key.len, key.p);
        break;
    case PX_LK_DOMAIN:
    default:
        argv[0] = "HGETALL";
        n = snprintf(rkey, sizeof(rkey), PX_KEY_CUSTOM_DOMAIN "%.*s", (int)key.len, key.p);
        break;
    }
    argv[1] = rkey;
    argvlen[0] = strlen(argv[0]);
    argvlen[1] = (size_t)n;
    L.stats.fetches++;
    L.inflight++; /* deliver() counts it back, also when cmd fails at once */
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

static struct px_lk *lookup_start(enum px_lk_kind kind, struct px_str key, const char *client,
                                  px_lk_cb cb, void *arg, int refresh)
{
    char buf[600];
    int n;
    uint64_t h;
    struct entry *e;
    struct waiter *w;
    struct ckey ck;
    const char *why;
    int newcomer;

    if (L.redis == NULL && !api_kind(kind)) {
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
    if (e != NULL && !e->pending && !e->delivering && !api_kind(kind) && !px_redis_up(L.redis) &&
        time(NULL) - e->fetched > OUTAGE_MAX_AGE) {
        /* Invalidations cannot reach us now: do not serve old entries for long. */
        entry_unlink(e);
        entry_free(e);
        e = NULL;
    }
    /* A refresh doubts what is cached or on its way; it joins only another refresh. */
    struct entry *doubted = refresh && e != NULL && !(e->pending && e->refresh) ? e : NULL;
    if (doubted != NULL)
        e = NULL;
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
    client_key(client, &ck);
    why = L.nentries >= MAX_ENTRIES ? px_err_nomem : admit(kind, &ck, &newcomer);
    if (why != NULL) {
        L.stats.refused++; /* a refused refresh leaves the cache as it was */
        free(w);
        cb(arg, NULL, why);
        return NULL;
    }
    if (doubted != NULL) {
        /* A fetch in flight is delivered to its waiters but not kept; the new
         * entry goes to the head of the chain, where find() sees it first. */
        if (doubted->pending || doubted->delivering) {
            doubted->stale = 1;
        } else {
            entry_unlink(doubted);
            entry_free(doubted);
        }
    }
    L.stats.misses++;
    if ((e = calloc(1, sizeof(*e))) == NULL || (e->key = strdup(buf)) == NULL) {
        if (newcomer)
            L.newcomers.tokens += 1;
        free(e);
        free(w);
        cb(arg, NULL, px_err_nomem);
        return NULL;
    }
    e->hash = h;
    e->kind = kind;
    e->pending = 1;
    e->newcomer = newcomer;
    e->refresh = refresh != 0;
    e->client = ck;
    if (kind == PX_LK_API_ACCESS && client != NULL)
        e->xff = strdup(client); /* NULL on failure: the call goes without it */
    e->waiters = w;
    e->next = L.buckets[h % NBUCKETS];
    L.buckets[h % NBUCKETS] = e;
    L.nentries++;
    /* The fetch may fail at once (link down) and deliver synchronously, which
     * frees w: report "already done" in that case. Asked of deliver() itself,
     * not of find(): after a refresh another pending entry (the stale one it
     * replaced) may hold the same key. */
    struct entry *outer = L.starting;
    int outer_done = L.starting_done;
    L.starting = e;
    L.starting_done = 0;
    start_fetch(e, key);
    int done = L.starting_done;
    L.starting = outer;
    L.starting_done = outer_done;
    return done ? NULL : (struct px_lk *)w;
}

struct px_lk *px_lookup(enum px_lk_kind kind, struct px_str key, const char *client, px_lk_cb cb,
                        void *arg)
{
    return lookup_start(kind, key, client, cb, arg, 0);
}

struct px_lk *px_lookup_refresh(enum px_lk_kind kind, struct px_str key, const char *client,
                                px_lk_cb cb, void *arg)
{
    return lookup_start(kind, key, client, cb, arg, 1);
}

void px_lookup_cancel(struct px_lk *lk)
{
    if (lk != NULL)
        ((struct waiter *)lk)->cb = NULL;
}

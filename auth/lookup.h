/* lookup.h — typed record lookups behind a per-process cache.
 *
 * Backends: Redis (standalone mode, SPEC 5) or the in-memory store from
 * proxy.conf. Results are cached for cache_ttl seconds (negative ones for 5 s);
 * concurrent misses for one key share one Redis request; messages on
 * proxy:invalidate drop entries at once. Fetches that find nothing are budgeted
 * per client address, with a per-process ceiling (lookup.c). */
#ifndef PX_LOOKUP_H
#define PX_LOOKUP_H

#include <event2/event.h>

#include "proxy/px.h"

struct px_sandbox;

enum px_lk_kind {
    PX_LK_SANDBOX = 0, /* key: sandbox ID          -> sb */
    PX_LK_SIGNED,      /* key: "{port}:{token}"    -> str = sandbox ID */
    PX_LK_APIKEY,      /* key: sha256 hex          -> str = org, num = expires (0 none) */
    PX_LK_REVOKED,     /* key: token               -> found = revoked */
    PX_LK_DOMAIN,      /* key: host                -> str = sandbox ID, num = port */
    /* API mode (issue 10; DAYTONA-API.md §2). found = the answer was yes. */
    PX_LK_API_PUBLIC,  /* key: label (C2)                -> found = public */
    PX_LK_API_TOKEN,   /* key: "{label}:{token}" (C4)    -> found = valid */
    PX_LK_API_SIGNED,  /* key: "{port}:{token}" (C5)     -> str = sandbox ID */
    PX_LK_API_RUNNER,  /* key: sandbox ID (C6)           -> sb (runner_url, runner_key) */
    PX_LK_API_ACCESS,  /* key: "{label}:{bearer}" (C3, the user's token, X-Forwarded-For =
                          the lookup's client) -> found = allowed */
    PX_LK_API_WARNING, /* key: "{port}:{label}" (C13) -> found = show the warning page */
    PX_LK_API_SIGNING, /* key: sandbox ID (C12) -> str = its file-URL signing key (a
                          secret: never logged); kept 30 s, and only when found */
};

/* Borrowed by the callback for its duration only: copy what you keep. */
struct px_lk_value {
    int found;
    struct px_sandbox *sb;
    char *str;
    long num;
};

typedef void (*px_lk_cb)(void *arg, const struct px_lk_value *v, const char *err);

struct px_lk; /* a waiting lookup, cancellable */

extern const char px_err_busy[];      /* the miss budget is spent (flood of unknown keys): 429 */
extern const char px_err_saturated[]; /* too many Redis fetches in flight: 503 */

/* Process-wide setup on the worker's loop; NULL redis host means in-memory.
 * With api_url set (API mode) the API kinds are asked of the Daytona API and
 * cached in process whether or not Redis is configured. */
int px_lookup_init(struct event_base *base, const struct px_config *cfg);
struct px_server;
/* API mode needs the server (pool, resolver) for its calls. */
void px_lookup_set_server(struct px_server *srv);
void px_lookup_shutdown(void);
void px_lookup_set_config(const struct px_config *cfg);

/* Looks key up. client is the asking client's address as text (borrowed for the
 * call only; NULL or unparsable counts as one anonymous client): a fetch that
 * finds nothing is charged to it (see lookup.c). Returns NULL when cb already
 * ran, else a handle for px_lookup_cancel() (after which cb never runs). */
struct px_lk *px_lookup(enum px_lk_kind kind, struct px_str key, const char *client, px_lk_cb cb,
                        void *arg);
void px_lookup_cancel(struct px_lk *lk);

/* Like px_lookup(), but asks the backend again, bypassing both caches (the
 * process's and Daytona's Redis keys), and what it finds replaces the cached
 * entry. Joins a refresh already in flight for key. For a key that did not
 * match what was cached (API mode: a signing key rotated, DAYTONA-API.md §7).
 * Each one costs the client one unit of its miss budget, found or not, so a
 * flood of bad signatures cannot turn into a flood of API calls: a refused
 * refresh reports px_err_busy. */
struct px_lk *px_lookup_refresh(enum px_lk_kind kind, struct px_str key, const char *client,
                                px_lk_cb cb, void *arg);

/* Drops cache entries as a proxy:invalidate message says. */
void px_lookup_invalidate(struct px_str msg);

/* The Redis link, for fire-and-forget writes (activity, wake); NULL in memory mode. */
struct px_redis *px_lookup_redis(void);

/* Counters for tests and metrics. */
struct px_lookup_stats {
    unsigned long hits, misses, fetches, coalesced, refused;
    unsigned long hits_daytona; /* API mode: answers found in Daytona's Redis keys */
    unsigned long notfound;     /* fetches that found nothing (charged to the budget) */
    unsigned long evicted;      /* client-table slots reused while still informative */
};
const struct px_lookup_stats *px_lookup_stats(void);

#endif

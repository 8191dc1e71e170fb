/* activity.c — fire-and-forget activity updates.
 *
 * A direct-mapped table remembers when this process last sent an update for a
 * sandbox, so the warm path costs no Redis command at all; a collision only
 * costs one extra SET NX, which Redis deduplicates across processes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "proxy/api.h"
#include "proxy/server.h"
#include "routing/host.h"

#include "auth/keys.h"
#include "auth/activity.h"
#include "auth/lookup.h"
#include "auth/redis.h"

#define SLOTS 8192

static struct px_server *api_srv; /* API mode: where C7 calls go from */

void px_activity_set_server(struct px_server *srv)
{
    api_srv = srv;
}

static void on_c7(void *arg, const struct px_api_resp *r)
{
    (void)arg;
    if ((r->err != NULL || r->status / 100 != 2) && px_log_allow(1))
        px_log(PX_WARN, "api: last-activity update failed (%s)",
               r->err ? r->err : "the API answered an error");
}

/* C7: one attempt, nothing cached (DAYTONA-API.md §2). */
static void send_c7(const char *id)
{
    char path[320];

    snprintf(path, sizeof(path), "/sandbox/%s/last-activity", id);
    if (px_api_request(api_srv, "POST", path, NULL, NULL, PX_API_ONCE, on_c7, NULL) == NULL &&
        px_log_allow(1))
        px_log(PX_WARN, "api: cannot send a last-activity update");
}

static struct {
    uint64_t hash;
    time_t last;
} slots[SLOTS];

struct pending {
    char id[256];
    time_t now;
};

static uint64_t fnv(const char *p)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h;
}

static void on_guard(void *arg, redisReply *r, const char *err)
{
    struct pending *p = arg;
    struct px_redis *redis = px_lookup_redis();

    /* "OK" means we won the guard; nil means another process did. */
    if (api_srv != NULL && api_srv->cfg->api_url != NULL) {
        if (err == NULL && r->type == REDIS_REPLY_STATUS)
            send_c7(p->id);
    } else if (err == NULL && r->type == REDIS_REPLY_STATUS && redis != NULL) {
        char score[32];
        const char *argv[4] = {"ZADD", PX_KEY_LAST_ACTIVITY, score, p->id};
        size_t len[4] = {4, 19, 0, strlen(p->id)};
        len[2] = (size_t)snprintf(score, sizeof(score), "%lld", (long long)p->now);
        px_redis_send(redis, 4, argv, len);
    }
    free(p);
}

void px_activity_touch(const char *sandbox_id, int interval)
{
    struct px_redis *redis = px_lookup_redis();
    uint64_t h = fnv(sandbox_id);
    time_t now = time(NULL);
    struct pending *p;
    char key[320];

    int api = api_srv != NULL && api_srv->cfg->api_url != NULL;

    /* In API mode the ID goes into a URL path as it is: only what needs no escaping. */
    if ((redis == NULL && !api) || strlen(sandbox_id) >= sizeof(p->id) ||
        (api && !px_str_is_label(px_str_make(sandbox_id, strlen(sandbox_id)), sizeof(p->id) - 1)))
        return;
    if (slots[h % SLOTS].hash == h && now - slots[h % SLOTS].last < interval)
        return;
    slots[h % SLOTS].hash = h;
    slots[h % SLOTS].last = now;
    if (api && redis == NULL) /* no Redis: the process's own guard is all there is */
        return send_c7(sandbox_id);
    if ((p = malloc(sizeof(*p))) == NULL)
        return;
    strcpy(p->id, sandbox_id);
    p->now = now;
    int n = snprintf(key, sizeof(key), PX_KEY_ACTIVITY_UPDATE "%s", sandbox_id);
    char ex[16];
    int exn = snprintf(ex, sizeof(ex), "%d", interval);
    /* In API mode the value is Daytona's envelope: its proxies read the key too. */
    const char *val = api ? "{\"value\":true}" : "1";
    const char *argv[6] = {"SET", key, val, "NX", "EX", ex};
    size_t len[6] = {3, (size_t)n, strlen(val), 2, 2, (size_t)exn};
    px_redis_cmd(redis, on_guard, p, 6, argv, len);
}

/* ---- wake-on-request (SPEC 10, standalone) ---- */

#define WAKE_SLOTS 1024
#define WAKE_DEDUP 5

static struct {
    uint64_t hash;
    time_t last;
} wake_slots[WAKE_SLOTS];

void px_activity_wake(const char *sandbox_id)
{
    struct px_redis *redis = px_lookup_redis();
    uint64_t h = fnv(sandbox_id);
    time_t now = time(NULL);

    /* Many browsers refreshing the starting page must not flood the orchestrator. */
    if (wake_slots[h % WAKE_SLOTS].hash == h && now - wake_slots[h % WAKE_SLOTS].last < WAKE_DEDUP)
        return;
    wake_slots[h % WAKE_SLOTS].hash = h;
    wake_slots[h % WAKE_SLOTS].last = now;
    px_log(PX_INFO, "asking to start sandbox %s (wake-on-request)", sandbox_id);
    if (redis != NULL) {
        const char *argv[3] = {"PUBLISH", PX_CHANNEL_WAKE, sandbox_id};
        size_t len[3] = {7, 10, strlen(sandbox_id)};
        px_redis_send(redis, 3, argv, len);
    }
}

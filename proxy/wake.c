/* wake.c — API mode's wake-on-request (issue 10; SPEC 10, DAYTONA-API.md §5
 * step 12, §10 item 8): when the runner cannot be reached, ask the API what
 * state the sandbox is in (C8, the proxy's key). A stopped sandbox is started
 * (C11, at most once per WAKE_DEDUP seconds per sandbox and process) and the
 * client gets the "starting" answer at once (503, Retry-After), where Daytona
 * holds it up to a minute; a starting one gets that answer without a C11. Any
 * other state, or an API that cannot say, gets the failure that led here.
 * Triggers: the runner cannot be reached, or it answers 503 with
 * X-Daytona-Sandbox-State: stopped. Part of the connection module. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <jansson.h>

#include "proxy/api.h"
#include "proxy/conn_priv.h"
#include "routing/host.h"
#include "routing/store.h"

#define WAKE_DEDUP 5
#define WAKE_SLOTS 1024

static struct {
    uint64_t hash;
    time_t last;
} started[WAKE_SLOTS], awake[WAKE_SLOTS];
/* awake: C8 said the sandbox runs; for WAKE_DEDUP seconds its failures are
 * answered without asking again (an app that answers the runner's "stopped"
 * 503 itself must not turn every request into an API call). */

static uint64_t fnv(const char *p)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h;
}

/* Fire and forget: arg is NULL, no connection waits on it. */
static void on_start(void *arg, const struct px_api_resp *r)
{
    (void)arg;
    if ((r->err != NULL || r->status / 100 != 2) && px_log_allow(1))
        px_log(PX_WARN, "api: starting a stopped sandbox failed (%s%d)", r->err ? r->err : "HTTP ",
               r->err ? 0 : r->status);
}

static void on_state_run(void *arg, const struct px_api_resp *r)
{
    struct px_conn *c = arg;
    const char *state = NULL;
    json_error_t je;
    json_t *j = NULL;

    c->ex.api_call = NULL;
    if (r->err == NULL && r->status == 200) {
        j = json_loadb(r->body, r->body_len, 0, &je);
        json_t *s = json_is_object(j) ? json_object_get(j, "state") : NULL;
        state = json_is_string(s) ? json_string_value(s) : NULL;
    }
    if (state != NULL && !strcmp(state, "stopped")) {
        uint64_t h = fnv(c->ex.sb->id);
        time_t now = time(NULL);
        if (started[h % WAKE_SLOTS].hash != h || now - started[h % WAKE_SLOTS].last >= WAKE_DEDUP) {
            char path[320];
            started[h % WAKE_SLOTS].hash = h;
            started[h % WAKE_SLOTS].last = now;
            snprintf(path, sizeof(path), "/sandbox/%s/start", c->ex.sb->id);
            px_log(PX_INFO, "asking the API to start sandbox %s (wake-on-request)", c->ex.sb->id);
            if (px_api_request(c->srv, "POST", path, NULL, NULL, PX_API_ONCE, on_start, NULL) ==
                NULL)
                px_log(PX_WARN, "api: cannot ask to start sandbox %s", c->ex.sb->id);
        }
        json_decref(j);
        return px_fwd_starting(c);
    }
    if (state != NULL && !strcmp(state, "starting")) {
        json_decref(j);
        return px_fwd_starting(c);
    }
    json_decref(j);
    if (state != NULL) {
        uint64_t h = fnv(c->ex.sb->id);
        awake[h % WAKE_SLOTS].hash = h;
        awake[h % WAKE_SLOTS].last = time(NULL);
    }
    px_conn_fail(c, c->ex.wake_status, NULL, c->ex.wake_message);
}

/* An API answer arrives outside any callback of c: ENTER/LEAVE make a close
 * safe and start a pipelined request waiting behind this one. */
static void on_state(void *arg, const struct px_api_resp *r)
{
    struct px_conn *c = arg;

    ENTER(c);
    on_state_run(c, r);
    LEAVE(c);
}

/* The runner was not reachable: wake the sandbox if the API says it sleeps,
 * else answer status with message (static). */
void px_wake_or_fail(struct px_conn *c, int status, const char *message)
{
    const char *id = c->ex.sb != NULL ? c->ex.sb->id : NULL;
    char path[320];

    /* the ID goes into the path as it is: only what needs no escaping */
    if (id == NULL || c->srv->cfg->api_url == NULL || c->ex.fwd_target != NULL ||
        !px_str_is_label(px_str_make(id, strlen(id)), 255))
        return px_conn_fail(c, status, NULL, message); /* not API mode, or build logs */
    uint64_t h = fnv(id);
    time_t now = time(NULL);
    if (awake[h % WAKE_SLOTS].hash == h && now - awake[h % WAKE_SLOTS].last < WAKE_DEDUP)
        return px_conn_fail(c, status, NULL, message);
    /* Started a moment ago: say so without asking again (a page of browsers
     * refreshing a sleeping sandbox must not become a stream of C8 calls). */
    if (started[h % WAKE_SLOTS].hash == h && now - started[h % WAKE_SLOTS].last < WAKE_DEDUP)
        return px_fwd_starting(c);
    c->ex.wake_status = status;
    c->ex.wake_message = message;
    snprintf(path, sizeof(path), "/sandbox/%s", id);
    c->ex.api_call = px_api_request(c->srv, "GET", path, NULL, NULL, 0, on_state, c);
    if (c->ex.api_call == NULL)
        px_conn_fail(c, status, NULL, message);
}

/* buildlogs.c — API mode's build-log routes (issue 10; DAYTONA-API.md §8):
 *
 *   GET /sandboxes/{id}/build-logs  C8 (the user's bearer) -> buildInfo.snapshotRef,
 *                                   runnerId; C10 -> the runner's apiUrl and apiKey
 *   GET /snapshots/{id}/build-logs  C9 (the user's bearer) -> ref, initialRunnerId; C10
 *
 * then the request goes to {apiUrl}/snapshots/logs?{client query}&snapshotRef={ref}
 * with the runner's key, and the log streams back (follow=true keeps it open).
 * The proxy authenticates nothing itself here: the API authorises the user's
 * bearer on C8/C9. No activity is recorded. Part of the connection module. */
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "proxy/api.h"
#include "proxy/browser.h"
#include "proxy/conn_priv.h"
#include "routing/host.h"
#include "routing/store.h"

#define MAX_FIELD 512

static void on_runner(void *arg, const struct px_api_resp *r);

/* A JSON string field, bounded and free of bytes that cannot go into a URL
 * or header as they are; NULL otherwise. Points into j. */
static const char *field(json_t *j, const char *key)
{
    json_t *v = json_object_get(j, key);
    const char *s;

    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > MAX_FIELD)
        return NULL;
    s = json_string_value(v);
    if (strlen(s) != json_string_length(v))
        return NULL;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return NULL;
    return s;
}

/* An answer of the API that is not a 2xx: its own 4xx passes through (the
 * user's bearer was refused, or the sandbox is unknown), anything else is the
 * API failing: 503. The API's message is not echoed. */
static void api_failed(struct px_conn *c, const struct px_api_resp *r)
{
    int st = r->err == NULL && r->status >= 400 && r->status <= 499 ? r->status : 503;

    if (r->err == NULL && r->json_status >= 400 && r->json_status <= 499)
        st = r->json_status;
    px_conn_fail(c, st, st == 503 ? "API_UNAVAILABLE" : "API_REFUSED",
                 st == 503 ? "the Daytona API is unavailable; try again shortly"
                           : "the Daytona API refused this request");
}

static void on_build_info_run(void *arg, const struct px_api_resp *r)
{
    struct px_conn *c = arg;
    json_error_t je;
    json_t *j, *bi;
    const char *ref = NULL, *runner = NULL;
    char path[600];

    c->ex.api_call = NULL;
    if (r->err != NULL || r->status / 100 != 2)
        return api_failed(c, r);
    j = json_loadb(r->body, r->body_len, 0, &je);
    if (c->ex.build_kind == 's') { /* SandboxDto: buildInfo.snapshotRef, runnerId */
        bi = json_is_object(j) ? json_object_get(j, "buildInfo") : NULL;
        ref = json_is_object(bi) ? field(bi, "snapshotRef") : NULL;
        runner = json_is_object(j) ? field(j, "runnerId") : NULL;
    } else { /* SnapshotDto: ref, initialRunnerId */
        ref = json_is_object(j) ? field(j, "ref") : NULL;
        runner = json_is_object(j) ? field(j, "initialRunnerId") : NULL;
    }
    if (ref == NULL || runner == NULL || (c->ex.build_ref = strdup(ref)) == NULL) {
        json_decref(j);
        return px_conn_fail(c, 400, "NO_BUILD_INFO",
                            c->ex.build_kind == 's' ? "the sandbox has no build information"
                                                    : "the snapshot has no build information");
    }
    struct evbuffer *p = evbuffer_new();
    if (p == NULL) {
        json_decref(j);
        return px_conn_close(c);
    }
    evbuffer_add_printf(p, "/runners/");
    px_url_encode(p, px_str_make(runner, strlen(runner)));
    evbuffer_add(p, "/full", 6); /* with its NUL */
    snprintf(path, sizeof(path), "%s", (const char *)evbuffer_pullup(p, -1));
    evbuffer_free(p);
    json_decref(j);
    if ((c->ex.api_call = px_api_request(c->srv, "GET", path, NULL, NULL, 0, on_runner, c)) == NULL)
        px_conn_fail(c, 503, "API_UNAVAILABLE", "the Daytona API is unavailable");
}

/* A lookup or call answered outside any callback of c: ENTER/LEAVE make a
 * close safe and start a pipelined request waiting behind this one. */
static void on_build_info(void *arg, const struct px_api_resp *r)
{
    struct px_conn *c = arg;

    ENTER(c);
    on_build_info_run(c, r);
    LEAVE(c);
}

static void on_runner_run(void *arg, const struct px_api_resp *r)
{
    struct px_conn *c = arg;
    json_error_t je;
    json_t *j;
    const char *url, *key, *why;
    char host[256], prefix[512];
    int tls, port;

    c->ex.api_call = NULL;
    if (r->err != NULL || r->status / 100 != 2)
        return api_failed(c, r);
    j = json_loadb(r->body, r->body_len, 0, &je);
    url = json_is_object(j) ? field(j, "apiUrl") : NULL;
    key = json_is_object(j) ? field(j, "apiKey") : NULL;
    if (url == NULL || key == NULL ||
        px_api_parse_url(url, &tls, host, sizeof(host), &port, prefix, sizeof(prefix)) != 0 ||
        (c->ex.sb = px_sandbox_new("build-logs")) == NULL ||
        px_sandbox_set(c->ex.sb, "runner_url", url, &why) != 0 ||
        px_sandbox_set(c->ex.sb, "runner_key", key, &why) != 0 ||
        px_sandbox_finish(c->ex.sb, &why) != 0) {
        json_decref(j);
        return px_conn_fail(c, 503, "API_UNAVAILABLE",
                            "the Daytona API gave no usable runner for the build logs");
    }
    json_decref(j);
    /* {apiUrl}/snapshots/logs?{client query}&snapshotRef={ref} */
    struct evbuffer *t = evbuffer_new();
    const char *q = memchr(c->ex.path.p, '?', c->ex.path.len);
    if (t == NULL)
        return px_conn_close(c);
    evbuffer_add_printf(t, "%s/snapshots/logs?", prefix);
    if (q != NULL && (size_t)(q + 1 - c->ex.path.p) < c->ex.path.len) {
        evbuffer_add(t, q + 1, c->ex.path.len - (size_t)(q + 1 - c->ex.path.p));
        evbuffer_add(t, "&", 1);
    }
    evbuffer_add(t, "snapshotRef=", 12);
    px_url_encode(t, px_str_make(c->ex.build_ref, strlen(c->ex.build_ref)));
    evbuffer_add(t, "", 1);
    c->ex.fwd_target = strdup((const char *)evbuffer_pullup(t, -1));
    evbuffer_free(t);
    if (c->ex.fwd_target == NULL)
        return px_conn_close(c);
    c->ex.no_activity = 1; /* §8: these routes never record activity */
    px_fwd_start(c);
}

static void on_runner(void *arg, const struct px_api_resp *r)
{
    struct px_conn *c = arg;

    ENTER(c);
    on_runner_run(c, r);
    LEAVE(c);
}

/* Is this a build-log route? Starts it and returns 1; 0 otherwise. */
int px_build_logs(struct px_conn *c, struct px_str path)
{
    static const char suffix[] = "/build-logs";
    struct px_str p = path, id;
    const char *api_path;
    const struct px_hdr *auth;
    char call[400];

    if (c->srv->cfg->api_url == NULL)
        return 0;
    if (p.len > 11 && !memcmp(p.p, "/sandboxes/", 11)) {
        c->ex.build_kind = 's';
        id = px_str_make(p.p + 11, p.len - 11);
        api_path = "/sandbox/";
    } else if (p.len > 11 && !memcmp(p.p, "/snapshots/", 11)) {
        c->ex.build_kind = 'n';
        id = px_str_make(p.p + 11, p.len - 11);
        api_path = "/snapshots/";
    } else {
        return 0;
    }
    if (id.len <= sizeof(suffix) - 1 ||
        memcmp(id.p + id.len - (sizeof(suffix) - 1), suffix, sizeof(suffix) - 1) != 0)
        return 0;
    id.len -= sizeof(suffix) - 1;
    if (!px_str_is_label(id, 128)) /* Daytona's [\w-]+ */
        return 0;
    snprintf(c->ex.loghost, sizeof(c->ex.loghost), "build-logs");
    c->ex.route_kind = PX_RK_BUILD_LOGS;
    if (c->ex.req.m != HTTP_GET) {
        px_conn_fail(c, 405, NULL, "build logs are read with GET");
        return 1;
    }
    /* The user's own bearer goes to the API, which decides (C8/C9); without
     * one, "Bearer " with an empty token, as Daytona sends. */
    auth = px_head_get(&c->ex.req, PX_STR("authorization"));
    char bearer[1024] = "";
    if (auth != NULL && auth->value.len > 7 && !strncasecmp(auth->value.p, "bearer ", 7) &&
        auth->value.len - 7 < sizeof(bearer)) {
        memcpy(bearer, auth->value.p + 7, auth->value.len - 7);
        bearer[auth->value.len - 7] = '\0';
    }
    c->ex.drop_authorization = 1; /* the user's token is not the runner's business */
    snprintf(call, sizeof(call), "%s%.*s", api_path, (int)id.len, id.p);
    c->ex.api_call =
        px_api_request(c->srv, "GET", call, bearer, c->peer_ip, PX_API_USER, on_build_info, c);
    if (c->ex.api_call == NULL)
        px_conn_fail(c, 503, "API_UNAVAILABLE", "the Daytona API is unavailable");
    return 1;
}

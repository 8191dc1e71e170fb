/* api.c — the Daytona API client (see api.h).
 *
 * A call owns its request head (built once), one upstream connection during
 * an attempt, one timer (the attempt's deadline, or the back-off sleep before
 * the next attempt) and the body read so far. Attempts:
 *
 *   SLEEP ──timer──> SENT ──answer──> classify ──retry──> SLEEP
 *                      │                   └──final──> deliver, free
 *                      └──transport error / deadline──> classify (retryable)
 *
 * A pooled connection that fails before any byte came back was stale: the
 * attempt is redone at once on a fresh connection and not counted (SPEC 9's
 * rule for runners; API calls are GETs, or POSTs the API treats as idempotent).
 * Bytes from the API are hostile like any others: heads go through the strict
 * parser, bodies are capped at PX_API_MAX_BODY, nothing is logged from them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <jansson.h>

#include "proxy/api.h"
#include "proxy/h1.h"
#include "proxy/upstream.h"

#define MAX_HEAD (64 * 1024)
#define BACKOFF_MS 150 /* then doubled, capped at 1 s (§3) */

enum call_state { C_SLEEP = 0, C_SENT };
enum framing { FR_NONE = 0, FR_LENGTH, FR_CHUNKED, FR_EOF };

struct px_api_call {
    struct px_server *srv; /* borrowed */
    px_api_cb cb;
    void *arg;
    unsigned flags;
    enum call_state st;
    char *head; /* owned: the request head */
    size_t head_len;
    char host[256];
    int port, tls;
    struct px_upstream *up; /* owned while an attempt is out */
    struct event *timer;    /* owned */
    struct px_head resp;    /* owned */
    unsigned head_done : 1, got_bytes : 1, stale_retry_used : 1, complete : 1;
    enum framing framing;
    int64_t left;
    struct px_chunked ch;
    struct evbuffer *body; /* owned; bounded by PX_API_MAX_BODY */
    unsigned attempts;
    int timeout; /* seconds per attempt */
    int status;
    const char *err;
    struct px_api_call *next, *prev; /* live calls, for px_api_cancel_all() */
};

static struct px_api_call *live; /* every call not yet delivered or cancelled */

static void attempt(struct px_api_call *call);
static void finish_attempt(struct px_api_call *call, const char *err);

/* ---- url and request ---- */

int px_api_parse_url(const char *url, int *tls, char *host, size_t hostlen, int *port, char *prefix,
                     size_t prefixlen)
{
    const char *h, *end, *colon = NULL;
    size_t n;

    if (url == NULL)
        return -1;
    if (!strncmp(url, "http://", 7))
        *tls = 0, h = url + 7;
    else if (!strncmp(url, "https://", 8))
        *tls = 1, h = url + 8;
    else
        return -1;
    end = h + strcspn(h, "/?#");
    if (*h == '[') { /* IPv6 literal */
        const char *rb = memchr(h, ']', (size_t)(end - h));
        if (rb == NULL || (rb + 1 != end && rb[1] != ':'))
            return -1;
        n = (size_t)(rb - h - 1);
        if (n == 0 || n >= hostlen)
            return -1;
        memcpy(host, h + 1, n);
        colon = rb + 1 < end ? rb + 1 : NULL;
    } else {
        colon = memchr(h, ':', (size_t)(end - h));
        n = (size_t)((colon ? colon : end) - h);
        if (n == 0 || n >= hostlen)
            return -1;
        memcpy(host, h, n);
    }
    host[n] = '\0';
    *port = *tls ? 443 : 80;
    if (colon != NULL) {
        long p = 0;
        if (colon + 1 == end)
            return -1;
        for (const char *q = colon + 1; q < end; q++) {
            if (*q < '0' || *q > '9' || (p = p * 10 + (*q - '0')) > 65535)
                return -1;
        }
        if (p < 1)
            return -1;
        *port = (int)p;
    }
    if (*end != '\0' && *end != '/')
        return -1; /* a query or fragment in the base URL */
    n = strlen(end);
    if (strcspn(end, "?#") != n)
        return -1;                     /* a query or fragment after the prefix */
    while (n > 0 && end[n - 1] == '/') /* paths are appended: no double slash */
        n--;
    if (n >= prefixlen)
        return -1;
    memcpy(prefix, end, n);
    prefix[n] = '\0';
    return 0;
}

/* Bytes that may go into a request line or header value we build. */
static int clean(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 0;
    return 1;
}

/* Header lines we were given: "Name: value\r\n" each, no other CR or LF. */
static int clean_headers(const char *s)
{
    for (; *s; s++) {
        if (*s == '\r' && s[1] == '\n' && s[2] != '\r' && s[2] != ' ' && s[2] != '\t') {
            s++;
            continue;
        }
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 0;
    }
    return 1;
}

/* ---- lifetime ---- */

static void attempt_reset(struct px_api_call *call)
{
    px_head_free(&call->resp);
    px_chunked_reset(&call->ch);
    call->ch.plain = 1; /* the payload only, not re-framed */
    evbuffer_drain(call->body, evbuffer_get_length(call->body));
    call->head_done = call->got_bytes = call->complete = 0;
    call->framing = FR_NONE;
    call->left = 0;
    call->status = 0;
    call->err = NULL;
}

static void drop_upstream(struct px_api_call *call, int reusable)
{
    if (call->up != NULL) {
        px_upstream_release(call->srv->pool, call->up, reusable);
        call->up = NULL;
    }
}

static void call_free(struct px_api_call *call)
{
    if (call->prev != NULL)
        call->prev->next = call->next;
    else if (live == call)
        live = call->next;
    if (call->next != NULL)
        call->next->prev = call->prev;
    drop_upstream(call, 0);
    px_head_free(&call->resp);
    px_chunked_reset(&call->ch);
    if (call->body != NULL)
        evbuffer_free(call->body);
    if (call->timer != NULL)
        event_free(call->timer);
    free(call->head);
    free(call);
}

void px_api_cancel(struct px_api_call *call)
{
    if (call != NULL)
        call_free(call);
}

void px_api_cancel_all(void)
{
    while (live != NULL)
        call_free(live);
}

static void deliver(struct px_api_call *call)
{
    struct px_api_resp r = {.status = call->status,
                            .err = call->err,
                            .attempts = call->attempts,
                            .head = call->err == NULL ? &call->resp : NULL};

    evbuffer_add(call->body, "", 1); /* NUL-terminate for the receiver */
    r.body_len = evbuffer_get_length(call->body) - 1;
    r.body = (const char *)evbuffer_pullup(call->body, -1);
    if (r.body == NULL) {
        r.body = "";
        r.body_len = 0;
        r.err = r.err ? r.err : px_err_nomem;
    }
    if (r.err == NULL && (r.status < 200 || r.status > 299))
        px_api_retryable(r.status, r.body, r.body_len, call->flags, &r.json_status);
    call->cb(call->arg, &r);
    call_free(call);
}

/* ---- §3 ---- */

int px_api_retryable(int status, const char *body, size_t len, unsigned flags, int *json_status)
{
    json_error_t je;
    json_t *j, *sc;
    int retry;

    *json_status = 0;
    if (status >= 200 && status <= 299)
        return 0;
    if ((flags & PX_API_FINAL_4XX) && status >= 400 && status <= 499 && status != 408 &&
        status != 429)
        return 0; /* rule 4: a negative answer, checked before the body */
    /* rules 2 and 3: only a JSON object is judged by its statusCode */
    if ((j = json_loadb(body, len, 0, &je)) == NULL || !json_is_object(j)) {
        json_decref(j);
        return 1;
    }
    sc = json_object_get(j, "statusCode");
    if (sc == NULL) {
        retry = 0; /* "{}" counts as status 0: final */
    } else if (!json_is_integer(sc)) {
        retry = 1; /* mistyped: as the Go decoder, retryable */
    } else {
        json_int_t v = json_integer_value(sc);
        *json_status = v > 0 && v < 1000 ? (int)v : 0;
        retry = v == 502 || v == 503 || v == 504;
    }
    json_decref(j);
    return retry;
}

/* ---- an attempt ---- */

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct px_api_call *call = arg;
    (void)fd;
    (void)what;

    if (call->st == C_SLEEP)
        attempt(call);
    else
        finish_attempt(call, px_err_timeout);
}

/* Moves body bytes from the connection; returns 1 once the body is whole. */
static int read_body(struct px_api_call *call, struct evbuffer *in)
{
    switch (call->framing) {
    case FR_NONE: return 1;
    case FR_LENGTH: {
        size_t avail = evbuffer_get_length(in);
        size_t n = (int64_t)avail < call->left ? avail : (size_t)call->left;
        evbuffer_remove_buffer(in, call->body, n);
        call->left -= (int64_t)n;
        return call->left == 0;
    }
    case FR_CHUNKED:
        switch (px_chunked_feed(&call->ch, in, call->body)) {
        case PX_PARSE_OK: return 1;
        case PX_PARSE_AGAIN: return 0;
        case PX_PARSE_BAD: return -1;
        }
        return -1;
    case FR_EOF: evbuffer_add_buffer(call->body, in); return 0;
    }
    return -1;
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct px_api_call *call = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    const char *why;
    size_t head_len;
    int st, r;

    call->got_bytes = 1;
    while (!call->head_done) {
        switch (px_h1_find_head(in, MAX_HEAD, MAX_HEAD, &head_len, &st)) {
        case PX_PARSE_AGAIN: return;
        case PX_PARSE_BAD: return finish_attempt(call, px_err_bad_response);
        case PX_PARSE_OK: break;
        }
        const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)head_len);
        px_head_free(&call->resp);
        if (data == NULL || px_h1_parse_response(&call->resp, data, head_len, 200, &why) != 0)
            return finish_attempt(call, px_err_bad_response);
        evbuffer_drain(in, head_len);
        if (call->resp.status / 100 == 1) {
            if (call->resp.status == 101)
                return finish_attempt(call, px_err_bad_response);
            continue; /* 100 Continue and friends: the answer follows */
        }
        call->head_done = 1;
        call->status = call->resp.status;
        if (!px_h1_response_has_body(&call->resp, HTTP_GET))
            call->framing = FR_NONE;
        else if (call->resp.chunked)
            call->framing = FR_CHUNKED;
        else if (call->resp.content_length >= 0)
            call->framing = call->resp.content_length > 0 ? FR_LENGTH : FR_NONE;
        else
            call->framing = FR_EOF;
        call->left = call->resp.content_length;
        if (call->framing == FR_LENGTH && call->left > PX_API_MAX_BODY)
            return finish_attempt(call, px_err_bad_response);
    }
    r = read_body(call, in);
    if (r < 0 || evbuffer_get_length(call->body) > PX_API_MAX_BODY)
        return finish_attempt(call, px_err_bad_response);
    if (r == 1) {
        call->complete = 1;
        finish_attempt(call, NULL);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct px_api_call *call = arg;
    (void)bev;

    if (what & BEV_EVENT_CONNECTED) {
        call->up->connected = 1;
        px_upstream_nodelay(call->up);
        return;
    }
    if ((what & BEV_EVENT_EOF) && call->head_done && call->framing == FR_EOF) {
        call->complete = 1; /* the body ends with the connection */
        return finish_attempt(call, NULL);
    }
    if (call->up->reused && !call->got_bytes && !call->stale_retry_used) {
        call->stale_retry_used = 1; /* a stale pooled connection: once more, fresh */
        drop_upstream(call, 0);
        attempt_reset(call);
        call->st = C_SLEEP;
        event_active(call->timer, EV_TIMEOUT, 0);
        return;
    }
    finish_attempt(call, (what & BEV_EVENT_TIMEOUT) ? px_err_timeout
                         : call->up->connected      ? px_err_reset
                                                    : px_err_refused);
}

static void attempt(struct px_api_call *call)
{
    struct timeval tv = {call->timeout, 0};

    attempt_reset(call);
    call->st = C_SENT;
    evtimer_add(call->timer, &tv);
    call->up = px_pool_take(call->srv->pool, call->host, call->port, call->tls);
    if (call->up == NULL &&
        (call->up = px_upstream_connect(call->srv, call->host, call->port, call->tls)) == NULL)
        return finish_attempt(call, px_err_refused);
    bufferevent_setcb(call->up->bev, on_read, NULL, on_event, call);
    bufferevent_set_timeouts(call->up->bev, NULL, NULL); /* our timer bounds the attempt */
    if (call->up->connected && !call->up->tls) {         /* pooled plain socket: written at once */
        bufferevent_disable(call->up->bev, EV_WRITE);
        bufferevent_enable(call->up->bev, EV_READ);
        evbuffer_add(bufferevent_get_output(call->up->bev), call->head, call->head_len);
        px_bev_send(call->up->bev);
        return;
    }
    bufferevent_enable(call->up->bev, EV_READ | EV_WRITE);
    evbuffer_add(bufferevent_get_output(call->up->bev), call->head, call->head_len);
}

static void finish_attempt(struct px_api_call *call, const char *err)
{
    int retry, js;

    evtimer_del(call->timer);
    drop_upstream(call,
                  err == NULL && call->complete && call->resp.keepalive && call->framing != FR_EOF);
    call->attempts++;
    call->err = err;
    if (err != NULL) {
        call->status = 0;
        retry = 1; /* rule 1: transport errors, timeouts, garbage */
        if (err == px_err_bad_response && call->head_done)
            retry = 0; /* an over-long or mis-framed body will not improve */
    } else {
        retry = px_api_retryable(call->status, (const char *)evbuffer_pullup(call->body, -1),
                                 evbuffer_get_length(call->body), call->flags, &js);
    }
    if (retry && !(call->flags & PX_API_ONCE) && call->attempts < PX_API_ATTEMPTS) {
        int ms = BACKOFF_MS << (call->attempts - 1);
        struct timeval tv = {0, (ms > 1000 ? 1000 : ms) * 1000};
        call->st = C_SLEEP;
        call->stale_retry_used = 0;
        evtimer_add(call->timer, &tv);
        return;
    }
    deliver(call);
}

struct px_api_call *px_http_request(struct px_server *srv, const char *method, const char *url,
                                    const char *headers, const char *body, size_t body_len,
                                    unsigned flags, int timeout, px_api_cb cb, void *arg)
{
    char origin[600], prefix[8], authority[300];
    const char *rest;
    struct px_api_call *call;
    struct evbuffer *h;
    size_t olen;
    int n;

    if (url == NULL || !clean(method) || !clean(url) || strlen(url) > PX_API_MAX_PATH + 512 ||
        (headers != NULL && !clean_headers(headers)))
        return NULL;
    /* Split "scheme://authority" from the target: px_api_parse_url reads the former. */
    rest = strstr(url, "://");
    if (rest == NULL)
        return NULL;
    rest += 3;
    rest += strcspn(rest, "/?#");
    olen = (size_t)(rest - url);
    if (olen >= sizeof(origin) || strchr(rest, '#') != NULL)
        return NULL;
    memcpy(origin, url, olen);
    origin[olen] = '\0';
    if ((call = calloc(1, sizeof(*call))) == NULL)
        return NULL;
    call->srv = srv;
    call->cb = cb;
    call->arg = arg;
    call->flags = flags;
    call->timeout = timeout > 0 ? timeout : 60;
    if (px_api_parse_url(origin, &call->tls, call->host, sizeof(call->host), &call->port, prefix,
                         sizeof(prefix)) != 0 ||
        (call->body = evbuffer_new()) == NULL || (h = evbuffer_new()) == NULL) {
        call_free(call);
        return NULL;
    }
    n = snprintf(authority, sizeof(authority), strchr(call->host, ':') ? "[%s]:%d" : "%s:%d",
                 call->host, call->port);
    evbuffer_add_printf(h,
                        "%s %s%s HTTP/1.1\r\nHost: %.*s\r\nUser-Agent: preview-proxy/" PX_VERSION
                        "\r\nAccept: application/json\r\n",
                        method, rest[0] == '/' ? "" : "/", rest, n, authority);
    if (headers != NULL)
        evbuffer_add(h, headers, strlen(headers));
    if (body != NULL || !strcmp(method, "POST") || !strcmp(method, "PUT"))
        evbuffer_add_printf(h, "Content-Length: %zu\r\n", body != NULL ? body_len : 0);
    evbuffer_add(h, "\r\n", 2);
    if (body != NULL)
        evbuffer_add(h, body, body_len);
    call->head_len = evbuffer_get_length(h);
    call->head = malloc(call->head_len);
    if (call->head != NULL)
        evbuffer_remove(h, call->head, call->head_len);
    evbuffer_free(h);
    if (call->head == NULL || (call->timer = evtimer_new(srv->base, on_timer, call)) == NULL) {
        call_free(call);
        return NULL;
    }
    call->next = live;
    if (live != NULL)
        live->prev = call;
    live = call;
    call->st = C_SLEEP; /* the first attempt starts from the loop: cb never runs before we return */
    event_active(call->timer, EV_TIMEOUT, 0);
    return call;
}

struct px_api_call *px_api_request(struct px_server *srv, const char *method, const char *path,
                                   const char *bearer, const char *xff, unsigned flags,
                                   px_api_cb cb, void *arg)
{
    const struct px_config *cfg = srv->cfg;
    /* a user's bearer may be a JWT of several KiB (OIDC access tokens) */
    char url[PX_API_MAX_PATH + 600], hdrs[PX_API_MAX_BEARER + 128], prefix[512], host[256];
    int tls, port, n;

    if (bearer == NULL)
        bearer = cfg->api_key != NULL ? cfg->api_key : "";
    if (!clean(path) || path[0] != '/' || strlen(path) > PX_API_MAX_PATH || !clean(bearer) ||
        (xff != NULL && !clean(xff)) || strlen(bearer) > PX_API_MAX_BEARER ||
        px_api_parse_url(cfg->api_url, &tls, host, sizeof(host), &port, prefix, sizeof(prefix)) !=
            0)
        return NULL;
    /* api_url without its trailing slashes, then the path (§1: appended verbatim) */
    size_t blen = strlen(cfg->api_url);
    while (blen > 0 && cfg->api_url[blen - 1] == '/')
        blen--;
    n = snprintf(url, sizeof(url), "%.*s%s", (int)blen, cfg->api_url, path);
    if (n < 0 || (size_t)n >= sizeof(url))
        return NULL;
    int with_xff = (flags & PX_API_USER) && xff != NULL && xff[0] != '\0';
    n = snprintf(hdrs, sizeof(hdrs), "Authorization: Bearer %s\r\n%s%s%s", bearer,
                 with_xff ? "X-Forwarded-For: " : "", with_xff ? xff : "", with_xff ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(hdrs))
        return NULL;
    return px_http_request(srv, method, url, hdrs, NULL, 0, flags, cfg->api_timeout, cb, arg);
}

/* ---- C1 ---- */

#define CONFIG_MAX_STRING 2048

static struct {
    struct px_server *srv;
    struct px_api_call *call;
    struct event *retry; /* owned */
    int delay;           /* seconds before the next round */
    struct px_api_info info;
} C1;

void px_api_info_clear(struct px_api_info *info)
{
    free(info->version);
    free(info->oidc_issuer);
    free(info->oidc_client_id);
    free(info->oidc_audience);
    memset(info, 0, sizeof(*info));
}

static int take_string(json_t *obj, const char *key, char **out)
{
    json_t *v = json_object_get(obj, key);
    const char *s;

    if (!json_is_string(v) || json_string_length(v) > CONFIG_MAX_STRING ||
        strlen(s = json_string_value(v)) != json_string_length(v) || !clean(s))
        return -1; /* absent, mistyped, over-long, or with NULs / controls */
    return (*out = strdup(s)) != NULL ? 0 : -1;
}

int px_api_parse_config(const char *body, size_t len, struct px_api_info *info, const char **why)
{
    struct px_api_info n = {0};
    json_error_t je;
    json_t *j = json_loadb(body, len, 0, &je), *oidc;

    *why = "not a JSON object";
    if (!json_is_object(j))
        goto bad;
    *why = "version missing or not a string";
    if (take_string(j, "version", &n.version) != 0)
        goto bad;
    *why = "oidc.issuer, oidc.clientId or oidc.audience missing or not a string";
    oidc = json_object_get(j, "oidc");
    if (!json_is_object(oidc) || take_string(oidc, "issuer", &n.oidc_issuer) != 0 ||
        take_string(oidc, "clientId", &n.oidc_client_id) != 0 ||
        take_string(oidc, "audience", &n.oidc_audience) != 0)
        goto bad;
    json_decref(j);
    px_api_info_clear(info);
    *info = n;
    info->ready = 1;
    return 0;
bad:
    json_decref(j);
    px_api_info_clear(&n);
    return -1;
}

static void config_round(evutil_socket_t fd, short what, void *arg);

static void config_later(void)
{
    struct timeval tv = {C1.delay, 0};

    evtimer_add(C1.retry, &tv);
    C1.delay = C1.delay >= 30 ? 60 : C1.delay * 2;
}

static void on_config(void *arg, const struct px_api_resp *r)
{
    const char *why;
    (void)arg;

    C1.call = NULL;
    if (r->err == NULL && r->status == 200 &&
        px_api_parse_config(r->body, r->body_len, &C1.info, &why) == 0) {
        px_log(PX_INFO, "api: configuration read (API %s, %u attempt%s)", C1.info.version,
               r->attempts, r->attempts == 1 ? "" : "s");
        return;
    }
    if (r->err == NULL && r->status == 200)
        px_log(PX_WARN, "api: GET /config answered an unusable body (%s); again in %d s", why,
               C1.delay);
    else if (r->err != NULL)
        px_log(PX_WARN, "api: GET /config failed (%s, %u attempts); again in %d s", r->err,
               r->attempts, C1.delay);
    else
        px_log(PX_WARN, "api: GET /config answered %d (%u attempts); again in %d s", r->status,
               r->attempts, C1.delay);
    config_later();
}

static void config_round(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    C1.call = px_api_request(C1.srv, "GET", "/config", NULL, NULL, 0, on_config, NULL);
    if (C1.call == NULL) {
        px_log(PX_WARN, "api: cannot call GET /config; again in %d s", C1.delay);
        config_later();
    }
}

int px_api_start(struct px_server *srv)
{
    char host[256], prefix[512];
    int tls, port;

    if (srv->cfg->api_url == NULL)
        return 0;
    if (px_api_parse_url(srv->cfg->api_url, &tls, host, sizeof(host), &port, prefix,
                         sizeof(prefix)) != 0) {
        px_log(PX_ERR, "api_url is not http(s)://host[:port][/prefix]");
        return -1;
    }
    C1.srv = srv;
    C1.delay = 1;
    if ((C1.retry = evtimer_new(srv->base, config_round, NULL)) == NULL)
        return -1;
    config_round(-1, 0, NULL);
    return 0;
}

void px_api_stop(void)
{
    px_api_cancel(C1.call);
    C1.call = NULL;
    if (C1.retry != NULL)
        event_free(C1.retry);
    C1.retry = NULL;
    px_api_info_clear(&C1.info);
}

const struct px_api_info *px_api_info(void)
{
    return &C1.info;
}

/* route.c — the request's way through the proxy after its head is read:
 * the route decision of SPEC 2, the preview flow of SPEC 3 (CORS preflight,
 * authentication, the warning page), custom domains and the accept endpoint.
 * Part of the connection module: it shares struct px_conn (conn_priv.h). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "auth/activity.h"
#include "auth/auth.h"
#include "auth/lookup.h"
#include "auth/oidc.h"
#include "proxy/browser.h"
#include "proxy/conn_priv.h"
#include "proxy/errors.h"
#include "routing/host.h"
#include "routing/path.h"
#include "routing/store.h"

static void start_auth(struct px_conn *c, struct px_str label);
static void preview_flow(struct px_conn *c, unsigned port, struct px_str label);
static void base_routes(struct px_conn *c);
static void accept_warning(struct px_conn *c);
static void on_domain(void *arg, const struct px_lk_value *v, const char *err);
static void make_set_cookie(struct px_conn *c, const char *value);
static int warning_applies(const struct px_conn *c);
static void show_warning(struct px_conn *c);
static void warning_step(struct px_conn *c);
static void start_login(struct px_conn *c);
static void on_oidc(void *arg, const struct px_oidc_answer *a);

void px_route_request(struct px_conn *c)
{
    struct px_head *r = &c->ex.req;
    const struct px_config *cfg = c->srv->cfg;
    struct px_str hostval = r->host;
    struct http_parser_url u;
    char *hostbuf = c->ex.host;
    struct px_host h;
    enum px_host_kind kind;

    c->ex.path = r->target;
    if (r->target.len > 0 && r->target.p[0] != '/') {
        /* absolute-form: its authority wins over Host (RFC 9112 3.2.2) */
        http_parser_url_init(&u);
        if (r->target.len == 1 && r->target.p[0] == '*') {
            if (r->m != HTTP_OPTIONS)
                return px_conn_fail_close(c, 400, "bad request target");
            c->ex.path = PX_STR("*");
        } else if (http_parser_parse_url(r->target.p, r->target.len, 0, &u) != 0 ||
                   !(u.field_set & (1 << UF_HOST)) || (u.field_set & (1 << UF_USERINFO)) ||
                   (r->http_minor == 1 && r->host.len == 0)) {
            /* Userinfo in an http(s) target is an error (RFC 9110 4.2.4), and
             * so is an empty Host beside an authority (RFC 9112 3.2): nginx and
             * HAProxy refuse both (tests/DIFFERENTIAL.md). */
            return px_conn_fail_close(c, 400, "bad request target");
        } else {
            size_t hs = u.field_data[UF_HOST].off, hl = u.field_data[UF_HOST].len;
            if (u.field_set & (1 << UF_PORT))
                hl = u.field_data[UF_PORT].off + u.field_data[UF_PORT].len - hs;
            hostval = px_str_make(r->target.p + hs, hl);
            if (u.field_set & (1 << UF_PATH)) {
                size_t ps = u.field_data[UF_PATH].off;
                c->ex.path = px_str_make(r->target.p + ps, r->target.len - ps);
            } else if (u.field_set & (1 << UF_QUERY)) {
                return px_conn_fail_close(c, 400, "bad request target");
            } else {
                c->ex.path = PX_STR("/");
            }
        }
    }
    if (hostval.len == 0 && r->http_minor == 0) {
        /* HTTP/1.0 needs no Host (RFC 9112 3.2): health probes send none. With
         * no host it cannot name a sandbox, so only the base routes apply. */
        c->ex.host[0] = '\0';
        c->ex.authority = PX_STR_NULL;
        snprintf(c->ex.loghost, sizeof(c->ex.loghost), "-");
        return base_routes(c);
    }
    if (hostval.len == 0 || hostval.len >= sizeof(c->ex.host))
        return px_conn_fail(c, 400, "BAD_HOST", "missing or oversized Host header");
    memcpy(hostbuf, hostval.p, hostval.len);
    hostbuf[hostval.len] = '\0'; /* the cookie Domain and the warning URL read it as a string */
    c->ex.authority = hostval;
    kind = px_host_parse(hostbuf, hostval.len, cfg->domains, cfg->ndomains, &h);
    if (kind == PX_HOST_BAD)
        return px_conn_fail(c, 400, "BAD_HOST", h.why);

    c->ex.hinfo = h;
    if (px_str_eq(px_path_only(c->ex.path), PX_STR("/accept-daytona-preview-warning")) &&
        r->m == HTTP_POST)
        return accept_warning(c);
    if (kind == PX_HOST_PREVIEW)
        return preview_flow(c, h.port, h.label);
    px_conn_loghost(c, &h, 0);
    if (cfg->ndomains > 0 && px_host_is_base(&h, cfg->domains, cfg->ndomains))
        return base_routes(c);
    /* Not one of our base domains: maybe a custom domain (SPEC 2, 5). */
    c->ex.dom_lk = px_lookup(PX_LK_DOMAIN, h.name, c->peer_ip, on_domain, c);
}

static void on_domain_run(void *arg, const struct px_lk_value *v, const char *err)
{
    struct px_conn *c = arg;
    const struct px_config *cfg = c->srv->cfg;

    c->ex.dom_lk = NULL;
    if (err != NULL) {
        if (px_str_eq(px_path_only(c->ex.path), PX_STR("/health")))
            return base_routes(c);
        return px_conn_fail(c, err == px_err_busy ? 429 : 503, NULL,
                            "cannot look up the custom domain right now; try again shortly");
    }
    if (v->found && strlen(v->str) < sizeof(c->ex.dom_sandbox) && v->num > 0 && v->num <= 65535) {
        strcpy(c->ex.dom_sandbox, v->str);
        for (char *p = c->ex.dom_sandbox; *p; p++)
            *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
        return preview_flow(c, (unsigned)v->num,
                            px_str_make(c->ex.dom_sandbox, strlen(c->ex.dom_sandbox)));
    }
    if (cfg->ndomains > 0)
        return px_conn_fail(c, 404, NULL, "unknown host");
    base_routes(c);
}

/* A lookup or call answered outside any callback of c: ENTER/LEAVE make a
 * close safe and start a pipelined request waiting behind this one. */
static void on_domain(void *arg, const struct px_lk_value *v, const char *err)
{
    struct px_conn *c = arg;

    ENTER(c);
    on_domain_run(c, v, err);
    LEAVE(c);
}

static void preview_flow(struct px_conn *c, unsigned port, struct px_str label)
{
    const struct px_config *cfg = c->srv->cfg;
    struct px_host lh = {.port = port, .label = label};

    c->ex.port = port;
    c->ex.route_kind = PX_RK_PREVIEW;
    px_conn_loghost(c, &lh, 0);
    if (cfg->toolbox_only && port != 2280)
        return px_conn_fail(c, 404, NULL, "only the toolbox port is served here");
    if (c->ex.path.len == 0 || c->ex.path.p[0] != '/')
        return px_conn_fail(c, 400, NULL, "bad request target");
    if (px_path_has_dot_segment(c->ex.path))
        return px_conn_fail(c, 400, "BAD_PATH", "dot segments are not allowed in the path");
    /* SPEC 3, 7: preflights carry no credentials, so they are answered before auth. */
    if (px_cors_is_preflight(&c->ex.req) && !px_cors_disabled(&c->ex.req)) {
        c->ex.route_kind = PX_RK_PREFLIGHT;
        c->ex.label = label;
        return px_conn_respond_preflight(c);
    }
    start_auth(c, label);
}

static void base_routes(struct px_conn *c)
{
    struct px_head *r = &c->ex.req;
    struct px_str p = c->ex.path, id;
    struct px_str po = px_path_only(p);

    c->ex.port = 0;
    if (px_str_eq(po, PX_STR("/health")) && (r->m == HTTP_GET || r->m == HTTP_HEAD)) {
        struct evbuffer *b = evbuffer_new();
        c->ex.route_kind = PX_RK_HEALTH;
        if (b == NULL)
            return px_conn_close(c);
        evbuffer_add_printf(b, "{\"status\":\"ok\",\"version\":\"%s\"}", PX_VERSION);
        px_conn_respond(c, 200, "application/json", b, NULL);
        evbuffer_free(b);
        return;
    }
    if (px_str_eq(po, PX_STR("/callback")) && (r->m == HTTP_GET || r->m == HTTP_HEAD)) {
        struct px_oidc_settings os; /* SPEC 2, 4.6: the OIDC callback */
        if (px_oidc_settings(c->srv->cfg, &os)) {
            struct px_oidc_req in = {c->srv->cfg, r,
                                     c->ex.host,  c->ex.path,
                                     PX_STR_NULL, c->srv->cfg->external_https || c->tls,
                                     c->peer_ip};
            c->ex.route_kind = PX_RK_CALLBACK;
            c->ex.oidc = px_oidc_callback(c->srv, &in, on_oidc, c);
            return;
        }
    }
    if (px_build_logs(c, po))
        return;
    if (px_path_toolbox(po, &id, &c->ex.toolbox_rest) == 0) {
        c->ex.toolbox = 1;
        c->ex.route_kind = PX_RK_TOOLBOX;
        c->ex.port = 2280;
        c->ex.toolbox_rest =
            px_str_make(c->ex.toolbox_rest.p, p.len - (size_t)(c->ex.toolbox_rest.p - p.p));
        px_conn_loghost(c, NULL, 0);
        if (px_path_has_dot_segment(p))
            return px_conn_fail(c, 400, "BAD_PATH", "dot segments are not allowed in the path");
        if (id.len >= 256)
            return px_conn_fail(c, 400, NULL, "sandbox ID too long");
        /* IDs are case-insensitive like the host label they usually come from. */
        for (size_t i = 0; i < id.len; i++)
            ((char *)id.p)[i] = (char)(id.p[i] >= 'A' && id.p[i] <= 'Z' ? id.p[i] + 32 : id.p[i]);
        return start_auth(c, id);
    }
    return px_conn_fail(c, 404, NULL, "no route for this path");
}

/* SPEC 6: POST /accept-daytona-preview-warning?redirect=URL on any host.
 * Issue 10 item 6 (DAYTONA-API §10): the answer is 200 with a meta refresh,
 * not a 302. CSP form-action 'self' covers every redirect that follows the
 * form POST, so a 302 into a preview whose next hop leaves the origin (an
 * app's redirect, a login at the IdP) is blocked by Chromium; a navigation
 * started by a meta refresh is a new one and is not. */
static void accept_warning(struct px_conn *c)
{
    const struct px_config *cfg = c->srv->cfg;
    struct px_str redirect = PX_STR_NULL;
    char target[2048], hdrs[512];

    c->ex.route_kind = PX_RK_ACCEPT;
    px_query_get(px_target_query(c->ex.path), PX_STR("redirect"), &redirect);
    size_t tl = px_safe_redirect(redirect, c->ex.authority, target, sizeof(target));
    size_t hl = strcspn(c->ex.host, ":");
    snprintf(hdrs, sizeof(hdrs),
             PX_WARNING_HEADERS
             "Set-Cookie: daytona-preview-page-accepted=true; Max-Age=86400; Path=/; HttpOnly; "
             "Domain=%.*s; %s\r\n",
             (int)hl, c->ex.host,
             cfg->external_https || c->tls ? "Secure; SameSite=None" : "SameSite=Lax");
    struct evbuffer *body = evbuffer_new();
    if (body == NULL)
        return px_conn_close(c);
    px_accept_page(body, px_str_make(target, tl));
    px_conn_respond(c, 200, "text/html; charset=utf-8", body, hdrs);
    evbuffer_free(body);
}

/* SPEC 6: all must hold for the warning page. */
static int warning_applies(const struct px_conn *c)
{
    const struct px_config *cfg = c->srv->cfg;
    const struct px_hdr *skip = px_head_get(&c->ex.req, PX_STR("x-daytona-skip-preview-warning"));
    const struct px_hdr *ua = px_head_get(&c->ex.req, PX_STR("user-agent"));
    /* no sandbox yet: the login redirect (SPEC 4 step 6) follows the global switch */
    int on = c->ex.sb != NULL && c->ex.sb->warning >= 0 ? c->ex.sb->warning : cfg->preview_warning;

    return on && !c->ex.toolbox && !px_port_reserved(c->ex.port) && !c->ex.req.ws_upgrade &&
           (skip == NULL || !px_str_ieq(skip->value, PX_STR("true"))) && ua != NULL &&
           px_ua_is_browser(ua->value) && !px_warning_accepted(&c->ex.req);
}

static void show_warning(struct px_conn *c)
{
    struct evbuffer *b = evbuffer_new(), *url = evbuffer_new();

    if (b == NULL || url == NULL) {
        if (b)
            evbuffer_free(b);
        if (url)
            evbuffer_free(url);
        return px_conn_close(c);
    }
    c->ex.route_kind = PX_RK_WARNING;
    evbuffer_add_printf(url, "%s://%.*s", c->srv->cfg->external_https || c->tls ? "https" : "http",
                        (int)c->ex.authority.len, c->ex.authority.p);
    evbuffer_add(url, c->ex.path.p, c->ex.path.len);
    size_t n = evbuffer_get_length(url);
    px_warning_page(b, px_str_make((const char *)evbuffer_pullup(url, -1), n));
    px_conn_respond(c, 200, "text/html; charset=utf-8", b, PX_WARNING_HEADERS);
    evbuffer_free(b);
    evbuffer_free(url);
}

static int cfg_api_mode(const struct px_conn *c)
{
    return c->srv->cfg->api_url != NULL;
}

/* API mode: C13 came back. Only a readable "enabled": false hides the page;
 * an API that cannot say shows it (DAYTONA-API.md §2 C13, fail open). */
static void on_warning_run(void *arg, const struct px_lk_value *v, const char *err)
{
    struct px_conn *c = arg;

    c->ex.warn_lk = NULL;
    if (err != NULL || v->found)
        return show_warning(c);
    if (c->ex.sb == NULL) /* before the login redirect */
        return start_login(c);
    px_fwd_start(c);
}

static void on_warning(void *arg, const struct px_lk_value *v, const char *err)
{
    struct px_conn *c = arg;

    ENTER(c);
    on_warning_run(c, v, err);
    LEAVE(c);
}

static void on_auth_run(void *arg, struct px_auth_out *out)
{
    struct px_conn *c = arg;

    c->ex.auth = NULL;
    px_metrics_auth(out->status, out->via);
    if (out->status != 0) {
        struct px_oidc_settings os;
        px_sandbox_free(out->sb);
        free(out->cookie_value);
        /* SPEC 4 step 6, LESSONS A3: only a browser's page load on a preview host
         * goes to the IdP; XHR, fetch, WebSocket, toolbox and API clients get 401.
         * With the warning on, the page comes first (DAYTONA-API §5 step 3). */
        if (out->status == 401 && out->label_known && !c->ex.toolbox && c->ex.hinfo.label.len > 0 &&
            px_oidc_is_navigation(&c->ex.req) && px_oidc_settings(c->srv->cfg, &os)) {
            if (warning_applies(c))
                return warning_step(c);
            return start_login(c);
        }
        return px_conn_fail(c, out->status, out->code, out->message);
    }
    c->ex.sb = out->sb;
    c->ex.drop_authorization = out->used_authorization;
    if (out->cookie_value != NULL) {
        make_set_cookie(c, out->cookie_value);
        free(out->cookie_value);
    }
    /* SPEC 8: activity, unless the caller opted out; never on the critical path. */
    const struct px_hdr *skip =
        px_head_get(&c->ex.req, PX_STR("x-daytona-skip-last-activity-update"));
    c->ex.no_activity = skip != NULL && px_str_ieq(skip->value, PX_STR("true"));
    if (!c->ex.no_activity)
        px_activity_touch(c->ex.sb->id, c->srv->cfg->activity_interval);
    if (out->label_is_sandbox && !c->ex.toolbox) {
        struct px_host h = {.port = c->ex.port,
                            .label = px_str_make(c->ex.sb->id, strlen(c->ex.sb->id))};
        px_conn_loghost(c, &h, 1);
    }
    /* The warning needs the sandbox's own override, so it comes after auth; the
     * page carries the auth cookie so the click-through needs no new lookup. */
    if (warning_applies(c))
        return warning_step(c);
    px_fwd_start(c);
}

static void on_auth(void *arg, struct px_auth_out *out)
{
    struct px_conn *c = arg;

    ENTER(c);
    on_auth_run(c, out);
    LEAVE(c);
}

/* The warning page applies: in API mode the organisation decides (C13). */
static void warning_step(struct px_conn *c)
{
    if (cfg_api_mode(c)) {
        char key[300];
        int n =
            snprintf(key, sizeof(key), "%u:%.*s", c->ex.port, (int)c->ex.label.len, c->ex.label.p);
        if (n > 0 && (size_t)n < sizeof(key)) {
            c->ex.warn_lk = px_lookup(PX_LK_API_WARNING, px_str_make(key, (size_t)n), c->peer_ip,
                                      on_warning, c);
            return;
        }
    }
    show_warning(c);
}

/* SPEC 4.6: the 307 to the IdP. */
static void start_login(struct px_conn *c)
{
    struct px_oidc_req in = {c->srv->cfg, &c->ex.req,  c->ex.host,
                             c->ex.path,  c->ex.label, c->srv->cfg->external_https || c->tls,
                             c->peer_ip};

    c->ex.route_kind = PX_RK_LOGIN;
    c->ex.oidc = px_oidc_login(c->srv, &in, on_oidc, c);
}

/* The login redirect or the callback has its answer. */
static void on_oidc_run(void *arg, const struct px_oidc_answer *a)
{
    struct px_conn *c = arg;
    struct evbuffer *h, *body;

    c->ex.oidc = NULL;
    if (c->ex.route_kind == PX_RK_CALLBACK)
        px_metrics_oidc(a->location != NULL, a->status);
    if (a->set_cookie != NULL) {
        free(c->ex.set_cookie);
        c->ex.set_cookie = strdup(a->set_cookie);
    }
    if (a->location == NULL)
        return px_conn_fail(c, a->status, a->code, a->message);
    if ((h = evbuffer_new()) == NULL || (body = evbuffer_new()) == NULL) {
        if (h != NULL)
            evbuffer_free(h);
        return px_conn_close(c);
    }
    evbuffer_add_printf(h, "Location: %s\r\nCache-Control: no-store\r\n", a->location);
    evbuffer_add(h, "", 1);
    px_conn_respond(c, a->status, NULL, body, (const char *)evbuffer_pullup(h, -1));
    evbuffer_free(h);
    evbuffer_free(body);
}

static void on_oidc(void *arg, const struct px_oidc_answer *a)
{
    struct px_conn *c = arg;

    ENTER(c);
    on_oidc_run(c, a);
    LEAVE(c);
}

/* SPEC 4.5: Secure and SameSite follow the external scheme. */
static void make_set_cookie(struct px_conn *c, const char *value)
{
    const struct px_config *cfg = c->srv->cfg;
    struct px_str dom =
        c->ex.toolbox ? PX_STR_NULL : px_str_make(c->ex.host, strcspn(c->ex.host, ":"));
    char buf[1200];
    int n;

    if (cfg->cookie_domain != NULL)
        dom = px_str_make(cfg->cookie_domain, strlen(cfg->cookie_domain));
    n = snprintf(
        buf, sizeof(buf),
        "Set-Cookie: daytona-sandbox-auth-%.*s=%s; Max-Age=3600; Path=/; HttpOnly; %s%s%.*s\r\n",
        (int)c->ex.label.len, c->ex.label.p, value,
        cfg->external_https || c->tls ? "Secure; SameSite=None" : "SameSite=Lax",
        dom.len ? "; Domain=" : "", (int)dom.len, dom.p);
    if (n > 0 && (size_t)n < sizeof(buf))
        c->ex.set_cookie = strdup(buf);
}

static void start_auth(struct px_conn *c, struct px_str label)
{
    struct px_auth_in in = {0};
    /* Only to find the value; the rewrite happens when the target is built. */
    c->ex.has_query_token = px_query_get(px_target_query(c->ex.path),
                                         PX_STR("DAYTONA_SANDBOX_AUTH_KEY"), &c->ex.query_token);
    c->ex.label = label;
    in.cfg = c->srv->cfg;
    in.now = time(NULL);
    in.req = &c->ex.req;
    in.label = label;
    in.port = c->ex.port;
    in.toolbox = c->ex.toolbox;
    in.query_token = c->ex.query_token;
    in.has_query_token = c->ex.has_query_token;
    in.file_url = c->ex.file_url =
        c->ex.toolbox && px_fileurl_match(c->ex.req.method, c->ex.toolbox_rest, &in.file);
    in.client = c->peer_ip;
    {
        struct px_oidc_settings os; /* could a refusal go to the IdP? (on_auth) */
        in.check_label = !c->ex.toolbox && px_oidc_is_navigation(&c->ex.req) &&
                         px_oidc_settings(c->srv->cfg, &os);
    }
    c->ex.auth = px_auth_start(&in, on_auth, c);
}

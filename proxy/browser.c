/* browser.c — warning page, accept redirect rules and CORS. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "proxy/browser.h"
#include "proxy/headw.h"
#include "proxy/errors.h"
#include "routing/host.h"

static int contains(struct px_str hay, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= hay.len; i++)
        if (!strncasecmp(hay.p + i, needle, n))
            return 1;
    return 0;
}

int px_ua_is_browser(struct px_str ua)
{
    static const char *const families[] = {
        "Chrome/", "Chromium/", "Firefox/",        "Safari/",  "Edg/",   "Edge/",
        "OPR/",    "Opera",     "SamsungBrowser/", "Vivaldi/", "Brave/",
    };
    static const char *const bots[] = {"bot", "crawl", "spider", "slurp", "preview-proxy"};

    if (ua.len < 8 || strncmp(ua.p, "Mozilla/", 8) != 0)
        return 0;
    for (size_t i = 0; i < sizeof(bots) / sizeof(bots[0]); i++)
        if (contains(ua, bots[i]))
            return 0;
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++)
        if (contains(ua, families[i]))
            return 1;
    return 0;
}

int px_warning_accepted(const struct px_head *req)
{
    for (int i = 0; i < req->nhdrs; i++) {
        struct px_str v = req->hdrs[i].value;
        if (!px_str_ieq(req->hdrs[i].name, PX_STR("cookie")))
            continue;
        for (size_t k = 0; k < v.len;) {
            size_t s = k;
            while (k < v.len && v.p[k] != ';')
                k++;
            struct px_str ck = px_str_make(v.p + s, k - s);
            while (ck.len && (ck.p[0] == ' ' || ck.p[0] == '\t'))
                ck.p++, ck.len--;
            while (ck.len && (ck.p[ck.len - 1] == ' ' || ck.p[ck.len - 1] == '\t'))
                ck.len--;
            if (px_str_eq(ck, PX_STR("daytona-preview-page-accepted=true")))
                return 1;
            k++;
        }
    }
    return 0;
}

void px_url_encode(struct evbuffer *out, struct px_str s)
{
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~')
            evbuffer_add(out, &c, 1);
        else
            evbuffer_add_printf(out, "%%%02X", c);
    }
}

void px_warning_page(struct evbuffer *out, struct px_str target)
{
    struct evbuffer *enc = evbuffer_new();

    evbuffer_add_printf(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        "<title>Preview warning</title><style>"
        "body{font-family:system-ui,-apple-system,sans-serif;background:#f6f7f9;color:#1d2330;"
        "margin:0;padding:2rem 1rem}main{max-width:34rem;margin:auto;background:#fff;"
        "border-radius:12px;padding:2rem;box-shadow:0 1px 4px rgba(0,0,0,.12)}"
        "h1{font-size:1.35rem;margin-top:0}.url{word-break:break-all;background:#eef0f3;"
        "padding:.6rem .8rem;border-radius:6px;font-family:ui-monospace,monospace;font-size:.9rem}"
        "button{margin-top:1.2rem;width:100%%;padding:.8rem;font-size:1rem;border:0;"
        "border-radius:8px;background:#1f6feb;color:#fff;cursor:pointer}"
        "p.small{color:#6b7280;font-size:.85rem}</style></head><body><main>"
        "<h1>You are about to open a sandbox preview</h1>"
        "<p>This page is served from a development sandbox run by someone else, not by this "
        "site's operator. Only continue if you trust whoever sent you the link, and never "
        "enter passwords or personal data you would not give them.</p>"
        "<p class=\"url\">");
    px_html_escape(out, target);
    evbuffer_add_printf(
        out, "</p><form method=\"POST\" action=\"/accept-daytona-preview-warning?redirect=");
    if (enc != NULL) {
        px_url_encode(enc, target);
        size_t n = evbuffer_get_length(enc);
        const char *p = (const char *)evbuffer_pullup(enc, -1);
        px_html_escape(out, px_str_make(p, n));
        evbuffer_free(enc);
    }
    evbuffer_add_printf(out, "\"><button type=\"submit\">Continue to the preview</button></form>"
                             "<p class=\"small\">You will not see this page again on this site "
                             "for 24 hours.</p></main></body></html>\n");
}

void px_accept_page(struct evbuffer *out, struct px_str target)
{
    evbuffer_add_printf(out, "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                             "<meta http-equiv=\"refresh\" content=\"0;url=");
    px_html_escape(out, target);
    evbuffer_add_printf(out, "\"><title>Opening the preview</title></head><body>"
                             "<p>Opening the preview&hellip; <a href=\"");
    px_html_escape(out, target);
    evbuffer_add_printf(out, "\">Continue</a></p></body></html>\n");
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

size_t px_safe_redirect(struct px_str raw, struct px_str host, char *out, size_t outlen)
{
    size_t n = 0;

    /* Decode once (form/query encoding: '+' is a space). */
    for (size_t i = 0; i < raw.len; i++) {
        int c = (unsigned char)raw.p[i];
        if (c == '%' && i + 2 < raw.len && hexval(raw.p[i + 1]) >= 0 && hexval(raw.p[i + 2]) >= 0) {
            c = hexval(raw.p[i + 1]) * 16 + hexval(raw.p[i + 2]);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (c < 0x21 || c == 0x7f || n + 1 >= outlen) /* controls, spaces: header injection */
            goto unsafe;
        out[n++] = (char)c;
    }
    out[n] = '\0';
    if (n == 0)
        goto unsafe;
    /* Judge a copy in which backslashes are slashes, as browsers read them. */
    char norm[2048];
    if (n >= sizeof(norm))
        goto unsafe;
    for (size_t i = 0; i <= n; i++)
        norm[i] = out[i] == '\\' ? '/' : out[i];
    if (norm[0] == '/')
        return norm[1] == '/' ? (size_t)(strcpy(out, "/"), 1) : n;
    size_t skip = 0;
    if (!strncasecmp(norm, "http://", 7))
        skip = 7;
    else if (!strncasecmp(norm, "https://", 8))
        skip = 8;
    else
        goto unsafe;
    const char *auth = norm + skip;
    size_t alen = strcspn(auth, "/?#");
    if (alen == 0 || memchr(auth, '@', alen) != NULL) /* userinfo tricks */
        goto unsafe;
    if (!px_str_ieq(px_str_make(auth, alen), host))
        goto unsafe;
    return n;
unsafe:
    if (outlen >= 2)
        strcpy(out, "/");
    return 1;
}

int px_cors_disabled(const struct px_head *req)
{
    const struct px_hdr *h = px_head_get(req, PX_STR("x-daytona-disable-cors"));
    return h != NULL && px_str_ieq(h->value, PX_STR("true"));
}

int px_cors_is_preflight(const struct px_head *req)
{
    return req->m == HTTP_OPTIONS && px_head_get(req, PX_STR("origin")) != NULL &&
           px_head_get(req, PX_STR("access-control-request-method")) != NULL;
}

/* Is name base itself or a host under it? */
static int under(struct px_str name, struct px_str base)
{
    if (base.len == 0)
        return 0;
    if (px_str_eq(name, base))
        return 1;
    return name.len > base.len && name.p[name.len - base.len - 1] == '.' &&
           !memcmp(name.p + name.len - base.len, base.p, base.len);
}

/* The base domain req's Host is under: one of cfg->domains, or with none
 * configured the part of a preview host after its label. Empty if none (a
 * custom domain, an IP, no Host). */
static struct px_str request_base(const struct px_head *req, const struct px_config *cfg, char *buf,
                                  size_t buflen)
{
    struct px_host h;

    if (req->host.len == 0 || req->host.len >= buflen)
        return PX_STR_NULL;
    memcpy(buf, req->host.p, req->host.len);
    enum px_host_kind k = px_host_parse(buf, req->host.len, cfg->domains, cfg->ndomains, &h);
    if (k == PX_HOST_BAD)
        return PX_STR_NULL;
    for (int i = 0; i < cfg->ndomains; i++) {
        struct px_str d = px_str_make(cfg->domains[i], strlen(cfg->domains[i]));
        if (under(h.name, d))
            return d;
    }
    if (cfg->ndomains == 0 && k == PX_HOST_PREVIEW) {
        const char *dot = memchr(h.name.p, '.', h.name.len);
        if (dot != NULL) /* always: a preview host has one */
            return px_str_make(dot + 1, h.name.len - (size_t)(dot + 1 - h.name.p));
    }
    return PX_STR_NULL;
}

static int listed(struct px_str o, const struct px_config *cfg)
{
    if (o.len > 0 && o.p[o.len - 1] == '/') /* cors_origins are stored without it */
        o.len--;
    for (int i = 0; i < cfg->ncors_origins; i++)
        if (px_str_ieq(o, px_str_make(cfg->cors_origins[i], strlen(cfg->cors_origins[i]))))
            return 1;
    return 0;
}

int px_cors_credentials_allowed(struct px_str o, const struct px_head *req,
                                const struct px_cors_req *r)
{
    const struct px_config *cfg = r->cfg;
    char obuf[256], rbuf[256];
    struct px_host oh;
    size_t skip;

    if (cfg->cors_credentials == PX_CORS_ANY) /* [compat] Daytona: every origin */
        return 1;
    if (listed(o, cfg))
        return 1;
    /* RFC 6454 7: scheme "://" host [ ":" port ], nothing else. "null" and
     * anything that is not an http(s) origin get no credentials. */
    if (o.len > 7 && !strncasecmp(o.p, "http://", 7))
        skip = 7;
    else if (o.len > 8 && !strncasecmp(o.p, "https://", 8))
        skip = 8;
    else
        return 0;
    if (o.len - skip >= sizeof(obuf) || memchr(o.p + skip, '/', o.len - skip) != NULL ||
        memchr(o.p + skip, '@', o.len - skip) != NULL)
        return 0;
    memcpy(obuf, o.p + skip, o.len - skip);
    enum px_host_kind k = px_host_parse(obuf, o.len - skip, cfg->domains, cfg->ndomains, &oh);
    if (k == PX_HOST_BAD)
        return 0;
    struct px_str base = request_base(req, cfg, rbuf, sizeof(rbuf));
    if (cfg->cors_credentials == PX_CORS_SAME_DOMAIN && under(oh.name, base))
        return 1;
    if (k != PX_HOST_PREVIEW)
        return 0;
    /* Without configured domains px_host_parse takes "3000-abc.evil.example" for a
     * preview host: the origin must then sit under the request's own base. */
    if (cfg->ndomains == 0) {
        const char *dot = memchr(oh.name.p, '.', oh.name.len);
        if (dot == NULL || base.len == 0 ||
            !px_str_eq(px_str_make(dot + 1, oh.name.len - (size_t)(dot + 1 - oh.name.p)), base))
            return 0;
    }
    /* Same sandbox: the request's label (a signed-token host is its own label),
     * or once resolved the sandbox's ID. */
    if (r->label.len > 0 && px_str_ieq(oh.label, r->label))
        return 1;
    return r->sandbox != NULL && px_str_ieq(oh.label, px_str_make(r->sandbox, strlen(r->sandbox)));
}

void px_cors_preflight_headers(struct px_headw *w, const struct px_head *req,
                               const struct px_cors_req *r)
{
    const struct px_hdr *rh = px_head_get(req, PX_STR("access-control-request-headers"));

    px_cors_headers(w, req, r);
    px_hw_lit(w, "Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS");
    px_hw_lit(w, "Access-Control-Max-Age", "86400");
    if (rh != NULL)
        px_hw_field(w, PX_STR("Access-Control-Allow-Headers"), rh->value);
}

void px_cors_headers(struct px_headw *w, const struct px_head *req, const struct px_cors_req *r)
{
    const struct px_hdr *o = px_head_get(req, PX_STR("origin"));

    if (o == NULL || px_cors_disabled(req))
        return;
    /* Reflect the origin: '*' is not allowed together with credentials, and the
     * answer differs per Origin, so caches must key on it. */
    px_hw_field(w, PX_STR("Access-Control-Allow-Origin"), o->value);
    px_hw_lit(w, "Vary", "Origin");
    if (px_cors_credentials_allowed(o->value, req, r))
        px_hw_lit(w, "Access-Control-Allow-Credentials", "true");
}

int px_cors_owned_header(struct px_str name)
{
    return px_str_ieq(name, PX_STR("access-control-allow-origin")) ||
           px_str_ieq(name, PX_STR("access-control-allow-credentials"));
}

/* errors.c — error responses: JSON for API clients, HTML for browsers. */
#include <stdio.h>
#include <time.h>

#include "proxy/errors.h"

const char *px_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 204: return "No Content";
    case 302: return "Found";
    case 307: return "Temporary Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

const char *px_status_code(int status)
{
    switch (status) {
    case 400: return "BAD_REQUEST";
    case 401: return "UNAUTHORIZED";
    case 403: return "FORBIDDEN";
    case 404: return "NOT_FOUND";
    case 405: return "METHOD_NOT_ALLOWED";
    case 408: return "REQUEST_TIMEOUT";
    case 413: return "PAYLOAD_TOO_LARGE";
    case 414: return "URI_TOO_LONG";
    case 431: return "HEADERS_TOO_LARGE";
    case 502: return "BAD_GATEWAY";
    case 503: return "SERVICE_UNAVAILABLE";
    case 504: return "GATEWAY_TIMEOUT";
    case 505: return "HTTP_VERSION_NOT_SUPPORTED";
    default: return "INTERNAL_ERROR";
    }
}

void px_json_escape(struct evbuffer *out, struct px_str s)
{
    size_t start = 0;

    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != 0x7f)
            continue;
        evbuffer_add(out, s.p + start, i - start);
        evbuffer_add_printf(out, "\\u%04x", c);
        start = i + 1;
    }
    /* A refused head leaves path and method PX_STR_NULL: NULL + 0 is undefined
     * (clang's UBSan aborts; fuzz_h2 found it through a malformed stream head). */
    if (start < s.len)
        evbuffer_add(out, s.p + start, s.len - start);
}

void px_html_escape(struct evbuffer *out, struct px_str s)
{
    size_t start = 0;

    for (size_t i = 0; i < s.len; i++) {
        const char *rep;
        switch (s.p[i]) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&#39;"; break;
        default: continue;
        }
        evbuffer_add(out, s.p + start, i - start);
        evbuffer_add(out, rep, strlen(rep));
        start = i + 1;
    }
    if (start < s.len) /* as in px_json_escape(): s may be PX_STR_NULL */
        evbuffer_add(out, s.p + start, s.len - start);
}

static const char *advice(int status)
{
    switch (status) {
    case 400: return "The request was malformed. Check the URL and try again.";
    case 401:
        return "This sandbox preview is private. Open it with a signed preview URL, or send "
               "the sandbox's preview token in the X-Daytona-Preview-Token header.";
    case 403: return "You do not have access to this sandbox.";
    case 404: return "No sandbox or route matches this address. Check the port and sandbox ID.";
    case 408: return "The request took too long to arrive.";
    case 413:
    case 414:
    case 431: return "The request was too large.";
    case 502:
        return "The sandbox service on this port is not answering. Make sure a server is "
               "listening on that port inside the sandbox.";
    case 503: return "The preview service is temporarily unavailable. Try again in a few seconds.";
    case 504: return "The sandbox service on this port took too long to answer.";
    default: return "Something went wrong.";
    }
}

/* Operator templates (`error_page`): {{status}}, {{title}}, {{message}},
 * {{advice}}, {{code}}, {{request_id}}, {{timestamp}} are replaced, escaped. */
static void render_template(struct evbuffer *out, const char *tpl, const struct px_error *e,
                            const char *msg, const char *code, const char *reqid, const char *ts)
{
    const char *p = tpl, *open;
    char num[8];

    snprintf(num, sizeof(num), "%d", e->status);
    while ((open = strstr(p, "{{")) != NULL) {
        const char *close = strstr(open, "}}");
        if (close == NULL)
            break;
        evbuffer_add(out, p, (size_t)(open - p));
        struct px_str name = px_str_make(open + 2, (size_t)(close - open - 2));
        const char *val = NULL;
        if (px_str_eq(name, PX_STR("status")))
            val = num;
        else if (px_str_eq(name, PX_STR("title")))
            val = px_status_text(e->status);
        else if (px_str_eq(name, PX_STR("message")))
            val = msg;
        else if (px_str_eq(name, PX_STR("advice")))
            val = advice(e->status);
        else if (px_str_eq(name, PX_STR("code")))
            val = code;
        else if (px_str_eq(name, PX_STR("request_id")))
            val = reqid;
        else if (px_str_eq(name, PX_STR("timestamp")))
            val = ts;
        if (val != NULL)
            px_html_escape(out, px_str_make(val, strlen(val)));
        else
            evbuffer_add(out, open, (size_t)(close + 2 - open));
        p = close + 2;
    }
    evbuffer_add(out, p, strlen(p));
}

void px_starting_page(struct evbuffer *out, const char *request_id)
{
    evbuffer_add_printf(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"refresh\" content=\"5\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        "<title>Starting the sandbox</title><style>body{font-family:system-ui,sans-serif;"
        "background:#f6f7f9;color:#1d2330;margin:0;padding:2rem 1rem}main{max-width:36rem;"
        "margin:auto;background:#fff;border-radius:12px;padding:2rem;box-shadow:0 1px 4px "
        "rgba(0,0,0,.1)}.c{color:#6b7280;font-size:.85rem}</style></head><body><main>"
        "<h1>Starting the sandbox&hellip;</h1><p>The sandbox was stopped and is starting now. "
        "This page reloads by itself every few seconds.</p><p class=\"c\">request ID %s</p>"
        "</main></body></html>\n",
        request_id);
}

const char *px_error_body(const struct px_config *cfg, struct evbuffer *out,
                          const struct px_error *e, struct px_str method, struct px_str path,
                          const char *request_id, int html)
{
    char ts[40];
    time_t now = time(NULL);
    struct tm tm;
    const char *msg = e->message ? e->message : px_status_text(e->status);
    const char *code = e->code ? e->code : px_status_code(e->status);

    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (!html) {
        evbuffer_add_printf(out, "{\"statusCode\":%d,\"message\":\"", e->status);
        px_json_escape(out, px_str_make(msg, strlen(msg)));
        evbuffer_add_printf(out, "\",\"code\":\"%s\",\"timestamp\":\"%s\",\"path\":\"", code, ts);
        px_json_escape(out, path);
        evbuffer_add_printf(out, "\",\"method\":\"");
        px_json_escape(out, method);
        evbuffer_add_printf(out, "\",\"requestId\":\"%s\"}\n", request_id);
        return "application/json";
    }
    const char *tpl = NULL;
    if (cfg != NULL && e->status >= 400 && e->status < 600)
        tpl = cfg->error_page[e->status - 400] ? cfg->error_page[e->status - 400]
                                               : cfg->error_family[e->status / 100 - 4];
    if (tpl != NULL) {
        render_template(out, tpl, e, msg, code, request_id, ts);
        return "text/html; charset=utf-8";
    }
    evbuffer_add_printf(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        "<title>%d %s</title><style>body{font-family:system-ui,sans-serif;background:#f6f7f9;"
        "color:#1d2330;margin:0;padding:2rem 1rem}main{max-width:36rem;margin:auto;background:#fff;"
        "border-radius:12px;padding:2rem;box-shadow:0 1px 4px rgba(0,0,0,.1)}h1{font-size:1.4rem;"
        "margin-top:0}.c{color:#6b7280;font-size:.85rem}code{background:#eef0f3;padding:0 .25rem;"
        "border-radius:4px}</style></head><body><main><h1>%d %s</h1><p>",
        e->status, px_status_text(e->status), e->status, px_status_text(e->status));
    /* Messages are written for logs and JSON ("the runner ..."): a sentence on a page. */
    char first[2] = {msg[0] >= 'a' && msg[0] <= 'z' ? (char)(msg[0] - 32) : msg[0], 0};
    px_html_escape(out, px_str_make(first, msg[0] ? 1 : 0));
    px_html_escape(out, px_str_make(msg + (msg[0] ? 1 : 0), strlen(msg) - (msg[0] ? 1 : 0)));
    evbuffer_add_printf(out,
                        ".</p><p>%s</p><p class=\"c\">Code <code>%s</code> &middot; "
                        "request ID <code>%s</code> &middot; %s</p></main></body></html>\n",
                        advice(e->status), code, request_id, ts);
    return "text/html; charset=utf-8";
}

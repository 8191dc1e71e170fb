/* host.c — Host header grammar of SPEC 1: {port}-{label}.{base-domain}.
 *
 * A byte loop in the style of nginx's ngx_http_validate_host: reject what no
 * browser sends (empty labels, "..", slashes, controls), strip the :port and a
 * trailing dot, lowercase, then split the left-most label at its first '-'. */
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>

#include "routing/host.h"

static int label_char(unsigned char ch)
{
    return isalnum(ch) || ch == '-' || ch == '_';
}

int px_str_is_label(struct px_str s, size_t max)
{
    if (s.len == 0 || s.len > max)
        return 0;
    for (size_t i = 0; i < s.len; i++)
        if (!label_char((unsigned char)s.p[i]))
            return 0;
    return 1;
}

enum px_host_kind px_host_parse(char *buf, size_t len, char *const *domains, int ndomains,
                                struct px_host *out)
{
    enum { S_START = 0, S_NAME, S_DOT, S_PORT } st = S_START;
    size_t end = len, dot = 0;
    int trailing_dot = 0;

    memset(out, 0, sizeof(*out));
    out->why = "bad Host header";
    if (len == 0)
        return PX_HOST_BAD;
    if (buf[0] == '[') { /* IPv6 literal: always a base host */
        char *rb = memchr(buf, ']', len);
        if (rb == NULL || rb == buf + 1)
            return PX_HOST_BAD;
        end = (size_t)(rb - buf) + 1;
        char lit[INET6_ADDRSTRLEN];
        struct in6_addr a6;
        if (end - 2 >= sizeof(lit))
            return PX_HOST_BAD;
        memcpy(lit, buf + 1, end - 2);
        lit[end - 2] = '\0';
        if (inet_pton(AF_INET6, lit, &a6) != 1)
            return PX_HOST_BAD;
        if (end < len) {
            if (buf[end] != ':' || end + 1 == len)
                return PX_HOST_BAD;
            for (size_t i = end + 1; i < len; i++)
                if (!isdigit((unsigned char)buf[i]))
                    return PX_HOST_BAD;
        }
        for (size_t i = 0; i < end; i++)
            buf[i] = (char)tolower((unsigned char)buf[i]);
        out->name = px_str_make(buf, end);
        return PX_HOST_BASE;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)buf[i];
        switch (st) {
        case S_DOT:
            if (ch == ':') { /* "name.:port": a trailing dot, then the port */
                end = i - 1;
                trailing_dot = 1;
                st = S_PORT;
                break;
            }
            /* fall through */
        case S_START:
            if (ch == '.' || ch == ':' || ch == '-')
                return PX_HOST_BAD; /* empty label, "..", leading '-' is fine in no host */
            if (!label_char(ch))
                return PX_HOST_BAD;
            st = S_NAME;
            break;
        case S_NAME:
            if (ch == '.') {
                if (dot == 0)
                    dot = i;
                st = S_DOT;
            } else if (ch == ':') {
                end = i;
                st = S_PORT;
            } else if (!label_char(ch)) {
                return PX_HOST_BAD;
            }
            break;
        case S_PORT:
            if (!isdigit(ch))
                return PX_HOST_BAD;
            break;
        }
    }
    if (st == S_START)
        return PX_HOST_BAD;
    if (st == S_DOT) { /* trailing dot: "a.example.com." */
        /* Counted like "name.:port" below: "3000-abc." is "3000-abc", a base
         * host, not a preview with an empty base domain (found by fuzz_host). */
        end = len - 1;
        trailing_dot = 1;
    }
    if (st == S_PORT && end + 1 == len)
        return PX_HOST_BAD; /* "host:" */
    for (size_t i = 0; i < end; i++)
        buf[i] = (char)tolower((unsigned char)buf[i]);
    out->name = px_str_make(buf, end);
    if (trailing_dot && dot == end)
        dot = 0; /* the only dot was the trailing one */
    if (dot == 0)
        return PX_HOST_BASE;

    /* Left-most label: digits, '-', then the label. Anything else is a base host
     * (e.g. "my-proxy.example.com"). */
    size_t i = 0;
    while (i < dot && isdigit((unsigned char)buf[i]))
        i++;
    if (i == 0 || i == dot || buf[i] != '-')
        return PX_HOST_BASE;
    if (ndomains > 0) {
        struct px_host tmp = {.name = px_str_make(buf + dot + 1, end - dot - 1)};
        if (!px_host_is_base(&tmp, domains, ndomains))
            return PX_HOST_BASE; /* not under our domains: maybe a custom domain */
    }
    if (buf[0] == '0' || i > 5) {
        out->why = "bad port in preview host (1-65535, no leading zeros)";
        return PX_HOST_BAD;
    }
    unsigned port = 0;
    for (size_t k = 0; k < i; k++)
        port = port * 10 + (unsigned)(buf[k] - '0');
    if (port < 1 || port > 65535) {
        out->why = "bad port in preview host (1-65535, no leading zeros)";
        return PX_HOST_BAD;
    }
    if (i + 1 == dot) {
        out->why = "empty sandbox ID in preview host";
        return PX_HOST_BAD;
    }
    out->port = port;
    out->label = px_str_make(buf + i + 1, dot - i - 1);
    return PX_HOST_PREVIEW;
}

int px_host_is_base(const struct px_host *h, char *const *domains, int ndomains)
{
    if (ndomains == 0)
        return 1;
    for (int i = 0; i < ndomains; i++)
        if (px_str_eq(h->name, px_str_make(domains[i], strlen(domains[i]))))
            return 1;
    return 0;
}

/* store.c — sandbox records: parsing `key=value` fields and the in-memory
 * store built from proxy.conf. */
#include <stdlib.h>
#include <string.h>

#include "routing/store.h"

struct px_sandbox *px_sandbox_new(const char *id)
{
    struct px_sandbox *sb = calloc(1, sizeof(*sb));

    if (sb == NULL)
        return NULL;
    sb->warning = -1;
    sb->id = strdup(id);
    if (sb->id == NULL) {
        free(sb);
        return NULL;
    }
    return sb;
}

void px_sandbox_free(struct px_sandbox *sb)
{
    if (sb == NULL)
        return;
    if (sb->packed) { /* px_sandbox_dup(): strings live in the same block */
        free(sb);
        return;
    }
    free(sb->id);
    free(sb->runner_url);
    free(sb->runner_key);
    free(sb->auth_token);
    free(sb->org);
    free(sb->state);
    free(sb->signing_key);
    free(sb->runner_host);
    free(sb->runner_authority);
    free(sb->addr);
    free(sb);
}

/* One allocation for the record and all its strings: the warm path copies a
 * record per request, so this is one malloc instead of ten. */
struct px_sandbox *px_sandbox_dup(const struct px_sandbox *sb)
{
    const char *const src[] = {
        sb->id,    sb->runner_url,  sb->runner_key,  sb->auth_token,       sb->org,
        sb->state, sb->signing_key, sb->runner_host, sb->runner_authority, sb->addr};
    size_t total = sizeof(*sb);
    struct px_sandbox *d;
    char *p;

    for (size_t i = 0; i < sizeof(src) / sizeof(src[0]); i++)
        total += src[i] != NULL ? strlen(src[i]) + 1 : 0;
    if ((d = malloc(total)) == NULL)
        return NULL;
    *d = *sb;
    d->next = NULL;
    d->packed = 1;
    p = (char *)(d + 1);
    char **const dst[] = {
        &d->id,    &d->runner_url,  &d->runner_key,  &d->auth_token,       &d->org,
        &d->state, &d->signing_key, &d->runner_host, &d->runner_authority, &d->addr};
    for (size_t i = 0; i < sizeof(src) / sizeof(src[0]); i++) {
        if (src[i] == NULL) {
            *dst[i] = NULL;
            continue;
        }
        size_t n = strlen(src[i]) + 1;
        memcpy(p, src[i], n);
        *dst[i] = p;
        p += n;
    }
    return d;
}

static int parse_bool(const char *v, int *out)
{
    if (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "on") || !strcasecmp(v, "yes"))
        *out = 1;
    else if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "off") ||
             !strcasecmp(v, "no"))
        *out = 0;
    else
        return -1;
    return 0;
}

static int set_str(char **dst, const char *val)
{
    char *s = strdup(val);

    if (s == NULL)
        return -1;
    free(*dst);
    *dst = s;
    return 0;
}

/* "3000,8000-8099": up to PX_SANDBOX_MAX_PORT_RANGES ports or ranges. */
static int parse_ports(struct px_sandbox *sb, const char *val, const char **why)
{
    const char *p = val;
    int n = 0;

    *why = "ports expects PORT or LO-HI, comma separated (1-65535)";
    if (*p == '\0')
        return -1;
    while (*p != '\0') {
        long lo = 0, hi;
        int digits = 0;
        while (*p >= '0' && *p <= '9' && digits < 6)
            lo = lo * 10 + (*p++ - '0'), digits++;
        if (digits == 0)
            return -1;
        hi = lo;
        if (*p == '-') {
            p++;
            hi = 0;
            digits = 0;
            while (*p >= '0' && *p <= '9' && digits < 6)
                hi = hi * 10 + (*p++ - '0'), digits++;
            if (digits == 0)
                return -1;
        }
        if (lo < 1 || hi > 65535 || lo > hi || (*p != ',' && *p != '\0'))
            return -1;
        if (n == PX_SANDBOX_MAX_PORT_RANGES) {
            *why = "ports has too many entries";
            return -1;
        }
        sb->ports[n].lo = (uint16_t)lo;
        sb->ports[n].hi = (uint16_t)hi;
        n++;
        if (*p == ',' && *++p == '\0')
            return -1; /* "3000," */
    }
    sb->nports = n;
    return 0;
}

int px_sandbox_direct_port_ok(const struct px_sandbox *sb, unsigned port)
{
    if (port == 0 || port > 65535 || (int)port == sb->runner_port || sb->nports < 0 ||
        (sb->addr != NULL && sb->addr[0] == '\0'))
        return 0;
    if (sb->nports == 0)
        return 1;
    for (int i = 0; i < sb->nports; i++)
        if (port >= sb->ports[i].lo && port <= sb->ports[i].hi)
            return 1;
    return 0;
}

int px_sandbox_set(struct px_sandbox *sb, const char *key, const char *val, const char **why)
{
    int b;

    *why = "out of memory";
    if (!strcmp(key, "runner_url"))
        return set_str(&sb->runner_url, val);
    if (!strcmp(key, "runner_key"))
        return set_str(&sb->runner_key, val);
    if (!strcmp(key, "auth_token"))
        return set_str(&sb->auth_token, val);
    if (!strcmp(key, "org"))
        return set_str(&sb->org, val);
    if (!strcmp(key, "state"))
        return set_str(&sb->state, val);
    if (!strcmp(key, "signing_key"))
        return set_str(&sb->signing_key, val);
    if (!strcmp(key, "ports")) {
        /* A list we cannot read opens nothing (Redis records ignore field
         * errors): fail closed. */
        sb->nports = -1;
        return parse_ports(sb, val, why);
    }
    if (!strcmp(key, "addr")) {
        size_t n = strlen(val);
        if (n >= 2 && val[0] == '[' && val[n - 1] == ']') /* [::1] */
            val++, n -= 2;
        if (n == 0 || n > 253 || strcspn(val, " \t/?#@[]") < n) {
            *why = "addr must be a host name or an IP address";
            free(sb->addr); /* fail closed: "" reaches nothing (see direct_port_ok) */
            sb->addr = strdup("");
            return -1;
        }
        char *a = strndup(val, n);
        if (a == NULL)
            return -1;
        free(sb->addr);
        sb->addr = a;
        return 0;
    }
    if (!strcmp(key, "wake")) {
        if (strcmp(val, "http") && strcmp(val, "none")) {
            *why = "wake must be none or http";
            return -1;
        }
        sb->wake_http = !strcmp(val, "http");
        return 0;
    }
    *why = "expected 0 or 1";
    if (!strcmp(key, "public"))
        return parse_bool(val, &b) == 0 ? (sb->is_public = b, 0) : -1;
    if (!strcmp(key, "direct"))
        return parse_bool(val, &b) == 0 ? (sb->direct = b, 0) : -1;
    if (!strcmp(key, "warning"))
        return parse_bool(val, &b) == 0 ? (sb->warning = b, 0) : -1;
    *why = "unknown sandbox field";
    return -1;
}

int px_sandbox_finish(struct px_sandbox *sb, const char **why)
{
    const char *u = sb->runner_url, *h, *end, *colon;
    char *endp;
    long port;

    if (u == NULL) {
        *why = "runner_url is required";
        return -1;
    }
    if (!strncmp(u, "http://", 7)) {
        sb->runner_tls = 0;
        h = u + 7;
    } else if (!strncmp(u, "https://", 8)) {
        sb->runner_tls = 1;
        h = u + 8;
    } else {
        *why = "runner_url must start with http:// or https://";
        return -1;
    }
    end = h + strcspn(h, "/?#");
    if (end == h) {
        *why = "runner_url has no host";
        return -1;
    }
    free(sb->runner_authority);
    sb->runner_authority = strndup(h, (size_t)(end - h));
    if (*h == '[') { /* IPv6 literal */
        const char *rb = memchr(h, ']', (size_t)(end - h));
        if (rb == NULL) {
            *why = "runner_url has a bad IPv6 literal";
            return -1;
        }
        free(sb->runner_host);
        sb->runner_host = strndup(h + 1, (size_t)(rb - h - 1));
        if (rb + 1 != end && rb[1] != ':') {
            *why = "runner_url has a bad IPv6 literal";
            return -1;
        }
        colon = rb + 1 < end ? rb + 1 : NULL;
    } else {
        colon = memchr(h, ':', (size_t)(end - h));
        free(sb->runner_host);
        sb->runner_host = strndup(h, (size_t)((colon ? colon : end) - h));
    }
    if (colon != NULL) {
        for (const char *q = colon + 1; q < end; q++)
            if (*q < '0' || *q > '9') {
                *why = "runner_url has a bad port";
                return -1;
            }
        port = strtol(colon + 1, &endp, 10);
        if (endp != end || port < 1 || port > 65535) {
            *why = "runner_url has a bad port";
            return -1;
        }
    } else {
        port = sb->runner_tls ? 443 : 80;
    }
    sb->runner_port = (int)port;
    if (sb->runner_host == NULL || sb->runner_authority == NULL) {
        *why = "out of memory";
        return -1;
    }
    return 0;
}

const struct px_sandbox *px_store_find(const struct px_config *cfg, struct px_str id)
{
    for (const struct px_sandbox *sb = cfg->sandboxes; sb != NULL; sb = sb->next)
        if (strlen(sb->id) == id.len && memcmp(sb->id, id.p, id.len) == 0)
            return sb;
    return NULL;
}

/* config.c — proxy.conf parser and the environment overrides of SPEC 12.
 *
 * One directive per line, `#` starts a comment, words split on blanks.
 * Unknown directives and bad values are errors naming file, line and reason. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/sentinel_parse.h"
#include "proxy/api.h"
#include "proxy/px.h"
#include "routing/store.h"

#define MAX_WORDS 64

int px_config_parse_size(const char *s, size_t *out)
{
    char *end;
    unsigned long long v;

    if (!isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    if (v > (1ULL << 32))
        return -1; /* checked before scaling, so the multiply cannot wrap */
    if (*end == 'k' || *end == 'K')
        v *= 1024, end++;
    else if (*end == 'm' || *end == 'M')
        v *= 1024 * 1024, end++;
    if (*end != '\0' || v == 0 || v > (1ULL << 32))
        return -1;
    *out = (size_t)v;
    return 0;
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v;

    if (!isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_onoff(const char *s, int *out)
{
    if (!strcmp(s, "on") || !strcmp(s, "true") || !strcmp(s, "1"))
        *out = 1;
    else if (!strcmp(s, "off") || !strcmp(s, "false") || !strcmp(s, "0"))
        *out = 0;
    else
        return -1;
    return 0;
}

/* "127.0.0.1:4000", "[::1]:4000", "4000" or "*:4000". */
static int parse_addr(const char *s, struct px_listen_cfg *l)
{
    char host[64];
    const char *colon;
    int port;

    memset(l, 0, sizeof(*l));
    if (*s == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb[1] != ':' || (size_t)(rb - s - 1) >= sizeof(host))
            return -1;
        memcpy(host, s + 1, (size_t)(rb - s - 1));
        host[rb - s - 1] = '\0';
        colon = rb + 1;
    } else if ((colon = strrchr(s, ':')) != NULL) {
        if ((size_t)(colon - s) >= sizeof(host))
            return -1;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
    } else {
        strcpy(host, "0.0.0.0");
        colon = s - 1;
    }
    if (parse_int(colon + 1, 1, 65535, &port) != 0)
        return -1;
    if (!strcmp(host, "*") || host[0] == '\0')
        strcpy(host, "0.0.0.0");
    struct sockaddr_in *a4 = (struct sockaddr_in *)&l->addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&l->addr;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        l->addrlen = sizeof(*a4);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        l->addrlen = sizeof(*a6);
    } else {
        return -1;
    }
    return 0;
}

static int parse_cidr(const char *s, struct px_cidr *c)
{
    char buf[64];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    int bits;

    if (n >= sizeof(buf))
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    memset(c, 0, sizeof(*c));
    if (inet_pton(AF_INET, buf, c->addr) == 1)
        c->family = AF_INET;
    else if (inet_pton(AF_INET6, buf, c->addr) == 1)
        c->family = AF_INET6;
    else
        return -1;
    bits = c->family == AF_INET ? 32 : 128;
    if (slash && parse_int(slash + 1, 0, bits, &bits) != 0)
        return -1;
    c->bits = (unsigned)bits;
    return 0;
}

int px_config_trusted(const struct px_config *cfg, const struct sockaddr *sa)
{
    const uint8_t *a;
    int fam = sa->sa_family;

    if (fam == AF_INET)
        a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
    else if (fam == AF_INET6)
        a = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    else
        return 0;
    for (int i = 0; i < cfg->ntrusted; i++) {
        const struct px_cidr *c = &cfg->trusted[i];
        unsigned full = c->bits / 8, rest = c->bits % 8;
        if (c->family != fam)
            continue;
        if (memcmp(a, c->addr, full) != 0)
            continue;
        if (rest && ((a[full] ^ c->addr[full]) & (0xff << (8 - rest))) != 0)
            continue;
        return 1;
    }
    return 0;
}

static void set_defaults(struct px_config *c)
{
    c->log_level = PX_INFO;
    c->workers = 1;
    c->connect_timeout = 10;
    c->response_header_timeout = 60;
    c->keepalive_timeout = 70;
    c->client_header_timeout = 10;
    c->ws_idle_timeout = 3600;
    c->upstream_idle_timeout = 30;
    c->shutdown_timeout = 3600;
    c->client_body_timeout = 60;
    c->activity_interval = 45;
    c->api_timeout = 60;
    c->send_timeout = 60;
    c->max_connections = 10000;
    /* 128, not nginx's customary 32: one runner serves many browsers, and an
     * HTTP/2 client alone can have 100 requests in flight; with 32, most of the
     * connections they return are closed and reopened at once. */
    c->upstream_keepalive = 128;
    c->max_request_line = 8192;
    c->max_header_size = 65536;
    c->max_headers = 100;
    c->redis_port = 6379;
    /* Long: freshness comes from proxy:invalidate (and the resync on reconnect),
     * expiry only bounds memory; see auth/lookup.c. */
    c->cache_ttl = 300;
    c->lookup_rate = 200;
    c->lookup_burst = 200;
    c->lookup_client_rate = 20;
    c->lookup_client_burst = 40;
    c->cors_credentials = PX_CORS_SAME_SANDBOX;
}

void px_config_free(struct px_config *c)
{
    if (c == NULL)
        return;
    free(c->path);
    for (int i = 0; i < c->ndomains; i++)
        free(c->domains[i]);
    free(c->access_log);
    free(c->error_log);
    free(c->redis_host);
    free(c->redis_username);
    free(c->redis_password);
    free(c->redis_master);
    free(c->cookie_secret);
    free(c->cookie_domain);
    free(c->api_url);
    free(c->api_key);
    free(c->oidc_issuer);
    free(c->oidc_client_id);
    free(c->oidc_client_secret);
    free(c->oidc_audience);
    free(c->oidc_public_issuer);
    free(c->oidc_org_claim);
    for (int i = 0; i < c->ntls; i++) {
        free(c->tls[i].cert);
        free(c->tls[i].key);
        for (int k = 0; k < c->tls[i].ndomains; k++)
            free(c->tls[i].domains[k]);
    }
    free(c->upstream_ca);
    for (int i = 0; i < c->ncors_origins; i++)
        free(c->cors_origins[i]);
    for (int i = 0; i < 200; i++)
        free(c->error_page[i]);
    free(c->error_family[0]);
    free(c->error_family[1]);
    while (c->custom_domains != NULL) {
        struct px_domain *n = c->custom_domains->next;
        free(c->custom_domains->host);
        free(c->custom_domains->sandbox);
        free(c->custom_domains);
        c->custom_domains = n;
    }
    while (c->sandboxes != NULL) {
        struct px_sandbox *n = c->sandboxes->next;
        px_sandbox_free(c->sandboxes);
        c->sandboxes = n;
    }
    free(c);
}

static int set_string(char **dst, const char *v)
{
    free(*dst);
    *dst = strdup(v);
    return *dst != NULL ? 0 : -1;
}

/* "RATE [BURST]" (per second); BURST defaults to RATE x burst_factor. */
static const char *parse_rate(char **w, int n, int burst_factor, double *rate_out,
                              double *burst_out)
{
    int rate, burst;

    if (n < 2 || n > 3 || parse_int(w[1], 1, 1000000, &rate) != 0)
        return "expects RATE [BURST] (lookups per second)";
    burst = rate * burst_factor;
    if (n == 3 && parse_int(w[2], 1, 10000000, &burst) != 0)
        return "bad burst";
    *rate_out = rate;
    *burst_out = burst;
    return NULL;
}

/* Applies one directive. Returns NULL on success, else the reason. */
/* redis_sentinel ADDR:PORT... NAME, and REDIS_SENTINELS: replaces the list. */
static const char *set_sentinels(struct px_config *c, char **addrs, int naddrs)
{
    if (naddrs > PX_MAX_SENTINELS)
        return "too many sentinels (at most 8)";
    for (int i = 0; i < naddrs; i++)
        if (px_sentinel_parse_addr(addrs[i], strlen(addrs[i]), &c->sentinels[i]) != 0)
            return "a sentinel address must be IP:PORT or [IPv6]:PORT (IP literals only: name "
                   "lookups would block)";
    c->nsentinels = naddrs;
    return NULL;
}

static const char *set_master(struct px_config *c, const char *name)
{
    struct px_sentinel_addr tmp;

    if (px_sentinel_parse_addr(name, strlen(name), &tmp) == 0)
        return "the last word must be the master name (as in sentinel.conf), after the addresses";
    if (!px_sentinel_valid_name(name, strlen(name)))
        return "bad master name: 1 to 64 of A-Z a-z 0-9 . _ -";
    return set_string(&c->redis_master, name) ? "out of memory" : NULL;
}

static const char *apply(struct px_config *c, char **w, int n)
{
    const char *d = w[0], *why;
    size_t sz;
    static char reason[128];

#define NEED(k)                                                                                    \
    do {                                                                                           \
        if (n != (k) + 1)                                                                          \
            return (k) == 1 ? "expects one value" : "wrong number of values";                      \
    } while (0)
#define INT_DIRECTIVE(name, field, lo, hi)                                                         \
    if (!strcmp(d, name)) {                                                                        \
        NEED(1);                                                                                   \
        return parse_int(w[1], lo, hi, &c->field) == 0 ? NULL : "bad number";                      \
    }
    INT_DIRECTIVE("connect_timeout", connect_timeout, 1, 86400)
    INT_DIRECTIVE("response_header_timeout", response_header_timeout, 1, 86400)
    INT_DIRECTIVE("keepalive_timeout", keepalive_timeout, 1, 86400)
    INT_DIRECTIVE("client_header_timeout", client_header_timeout, 1, 86400)
    INT_DIRECTIVE("ws_idle_timeout", ws_idle_timeout, 1, 7 * 86400)
    INT_DIRECTIVE("upstream_idle_timeout", upstream_idle_timeout, 1, 86400)
    INT_DIRECTIVE("shutdown_timeout", shutdown_timeout, 0, 86400)
    INT_DIRECTIVE("client_body_timeout", client_body_timeout, 1, 86400)
    INT_DIRECTIVE("send_timeout", send_timeout, 1, 86400)
    INT_DIRECTIVE("activity_interval", activity_interval, 1, 3600)
    INT_DIRECTIVE("api_timeout", api_timeout, 1, 3600)
    if (!strcmp(d, "max_connections"))
        c->max_connections_set = 1;
    INT_DIRECTIVE("max_connections", max_connections, 1, 1000000)
    INT_DIRECTIVE("max_connections_per_ip", max_connections_per_ip, 0, 1000000)
    INT_DIRECTIVE("upstream_keepalive", upstream_keepalive, 0, 10000)
    INT_DIRECTIVE("max_headers", max_headers, 1, 10000)
    INT_DIRECTIVE("workers", workers, 1, 256)
    INT_DIRECTIVE("redis_db", redis_db, 0, 1000)
    INT_DIRECTIVE("cache_ttl", cache_ttl, 1, 3600)
#undef INT_DIRECTIVE
    if (!strcmp(d, "max_body_size")) {
        NEED(1);
        if (!strcmp(w[1], "0")) {
            c->max_body_size = 0;
            return NULL;
        }
        return px_config_parse_size(w[1], &c->max_body_size)
                   ? "bad size (bytes, k, m; 0 = no limit)"
                   : NULL;
    }
    if (!strcmp(d, "max_request_line") || !strcmp(d, "max_header_size")) {
        NEED(1);
        if (px_config_parse_size(w[1], &sz) != 0 || sz < 64)
            return "bad size (bytes, or with k/m suffix)";
        if (d[4] == 'r')
            c->max_request_line = sz;
        else
            c->max_header_size = sz;
        return NULL;
    }
    if (!strcmp(d, "listen")) {
        int tls = 0, pp = 0;
        if (n < 2 || n > 4)
            return "expects ADDR:PORT [tls] [proxy_protocol]";
        for (int i = 2; i < n; i++) {
            int *flag = !strcmp(w[i], "tls") ? &tls : !strcmp(w[i], "proxy_protocol") ? &pp : NULL;
            if (flag == NULL || *flag)
                return "expects ADDR:PORT [tls] [proxy_protocol]";
            *flag = 1;
        }
        if (c->nlisten == PX_MAX_LISTEN)
            return "too many listen directives";
        if (parse_addr(w[1], &c->listen[c->nlisten]) != 0)
            return "bad address (expected IP:PORT)";
        c->listen[c->nlisten].tls = tls;
        c->listen[c->nlisten++].proxy_protocol = pp;
        return NULL;
    }
    if (!strcmp(d, "metrics_listen")) {
        NEED(1);
        return parse_addr(w[1], &c->metrics) ? "bad address (expected IP:PORT)" : NULL;
    }
    if (!strcmp(d, "domains")) {
        if (n < 2)
            return "expects at least one domain";
        for (int i = 1; i < n; i++) {
            if (c->ndomains == PX_MAX_DOMAINS)
                return "too many domains";
            char *s = w[i];
            while (*s == '.' || *s == '*')
                s++;
            if (*s == '\0')
                return "empty domain";
            char *dup = strdup(s);
            if (dup == NULL)
                return "out of memory";
            for (char *p = dup; *p; p++)
                *p = (char)tolower((unsigned char)*p);
            c->domains[c->ndomains++] = dup;
        }
        return NULL;
    }
    if (!strcmp(d, "access_log")) {
        NEED(1);
        return set_string(&c->access_log, w[1]) ? "out of memory" : NULL;
    }
    if (!strcmp(d, "error_log")) {
        NEED(1);
        if (!strcmp(w[1], "off"))
            return "expects stderr or a file (errors are never dropped)";
        return set_string(&c->error_log, w[1]) ? "out of memory" : NULL;
    }
    if (!strcmp(d, "log_level")) {
        NEED(1);
        static const char *const names[] = {"err", "warn", "info", "debug"};
        for (int i = 0; i < 4; i++)
            if (!strcmp(w[1], names[i])) {
                c->log_level = (enum px_level)i;
                return NULL;
            }
        return "expects err, warn, info or debug";
    }
    if (!strcmp(d, "preview_warning") || !strcmp(d, "toolbox_only")) {
        NEED(1);
        int *f = d[0] == 'p' ? &c->preview_warning : &c->toolbox_only;
        return parse_onoff(w[1], f) ? "expects on or off" : NULL;
    }
    if (!strcmp(d, "trusted_proxies")) {
        if (n < 2)
            return "expects at least one CIDR";
        for (int i = 1; i < n; i++) {
            if (c->ntrusted == PX_MAX_TRUSTED)
                return "too many trusted proxies";
            if (parse_cidr(w[i], &c->trusted[c->ntrusted++]) != 0)
                return "bad CIDR";
        }
        return NULL;
    }
    if (!strcmp(d, "redis")) {
        NEED(1);
        char *colon = strrchr(w[1], ':');
        if (w[1][0] == '/') /* unix socket */
            return set_string(&c->redis_host, w[1]) ? "out of memory" : NULL;
        if (colon == NULL || parse_int(colon + 1, 1, 65535, &c->redis_port) != 0)
            return "expects IP:PORT or a unix socket path";
        *colon = '\0';
        struct in6_addr tmp;
        if (inet_pton(AF_INET, w[1], &tmp) != 1 && inet_pton(AF_INET6, w[1], &tmp) != 1)
            return "redis host must be an IP literal (name lookups would block)";
        return set_string(&c->redis_host, w[1]) ? "out of memory" : NULL;
    }
    if (!strcmp(d, "redis_sentinel")) {
        if (n < 3)
            return "expects ADDR:PORT [ADDR:PORT...] MASTER_NAME";
        const char *bad = set_master(c, w[n - 1]);
        return bad != NULL ? bad : set_sentinels(c, w + 1, n - 2);
    }
#define STR_DIRECTIVE(name, field)                                                                 \
    if (!strcmp(d, name)) {                                                                        \
        NEED(1);                                                                                   \
        return set_string(&c->field, w[1]) ? "out of memory" : NULL;                               \
    }
    STR_DIRECTIVE("redis_password", redis_password)
    STR_DIRECTIVE("redis_username", redis_username)
    STR_DIRECTIVE("cookie_secret", cookie_secret)
    STR_DIRECTIVE("cookie_domain", cookie_domain)
    if (!strcmp(d, "api_url")) {
        char host[256], prefix[512];
        int tls, port;
        if (n != 2)
            return "expects one value";
        if (px_api_parse_url(w[1], &tls, host, sizeof(host), &port, prefix, sizeof(prefix)) != 0)
            return "expects http(s)://host[:port][/prefix], without query or fragment";
        return set_string(&c->api_url, w[1]) ? "out of memory" : NULL;
    }
    STR_DIRECTIVE("api_key", api_key)
    /* OIDC (SPEC 4.6) */
    if (!strcmp(d, "oidc_issuer") || !strcmp(d, "oidc_public_issuer")) {
        char host[256], prefix[512];
        int tls, port;
        if (n != 2)
            return "expects one value";
        if (px_api_parse_url(w[1], &tls, host, sizeof(host), &port, prefix, sizeof(prefix)) != 0)
            return "expects http(s)://host[:port][/path], without query or fragment";
        return set_string(!strcmp(d, "oidc_issuer") ? &c->oidc_issuer : &c->oidc_public_issuer,
                          w[1])
                   ? "out of memory"
                   : NULL;
    }
    STR_DIRECTIVE("oidc_client_id", oidc_client_id)
    STR_DIRECTIVE("oidc_client_secret", oidc_client_secret)
    STR_DIRECTIVE("oidc_audience", oidc_audience)
    STR_DIRECTIVE("oidc_org_claim", oidc_org_claim)
#undef STR_DIRECTIVE
    if (!strcmp(d, "tls_cert")) {
        struct px_tls_cfg *t;
        if (n < 3)
            return "expects CERT_FILE KEY_FILE [DOMAIN...]";
        if (c->ntls == PX_MAX_TLS || n - 3 > PX_MAX_DOMAINS)
            return "too many certificates or domains";
        t = &c->tls[c->ntls++];
        t->cert = strdup(w[1]);
        t->key = strdup(w[2]);
        for (int i = 3; i < n; i++) {
            char *s = w[i];
            while (*s == '*' || *s == '.')
                s++;
            for (char *q = s; *q; q++)
                *q = (char)tolower((unsigned char)*q);
            t->domains[t->ndomains++] = strdup(s);
        }
        return t->cert && t->key ? NULL : "out of memory";
    }
    if (!strcmp(d, "upstream_ca")) {
        NEED(1);
        return set_string(&c->upstream_ca, w[1]) ? "out of memory" : NULL;
    }
    if (!strcmp(d, "error_page")) {
        int code = 0;
        char **slot;
        NEED(2);
        if (!strcmp(w[1], "4xx") || !strcmp(w[1], "5xx"))
            slot = &c->error_family[w[1][0] - '4'];
        else if (parse_int(w[1], 400, 599, &code) == 0)
            slot = &c->error_page[code - 400];
        else
            return "expects 4xx, 5xx or a status 400-599, then a file";
        FILE *f = fopen(w[2], "r");
        if (f == NULL)
            return "cannot open the template file";
        char *text = malloc(256 * 1024 + 1);
        size_t got = text ? fread(text, 1, 256 * 1024, f) : 0;
        int more = fgetc(f) != EOF;
        fclose(f);
        if (text == NULL)
            return "out of memory";
        if (more) {
            free(text);
            return "template larger than 256 KiB";
        }
        text[got] = '\0';
        free(*slot);
        *slot = text;
        return NULL;
    }
    if (!strcmp(d, "lookup_rate"))
        return parse_rate(w, n, 1, &c->lookup_rate, &c->lookup_burst);
    if (!strcmp(d, "lookup_client_rate"))
        return parse_rate(w, n, 2, &c->lookup_client_rate, &c->lookup_client_burst);
    if (!strcmp(d, "cookie_format")) {
        if (n != 2)
            return "expects daytona or v1";
        if (!strcmp(w[1], "daytona"))
            c->cookie_format = PX_COOKIE_FMT_DAYTONA;
        else if (!strcmp(w[1], "v1"))
            c->cookie_format = PX_COOKIE_FMT_V1;
        else
            return "expects daytona or v1";
        return NULL;
    }
    if (!strcmp(d, "cors_credentials")) {
        static const char *const names[] = {"same-sandbox", "same-domain", "any"};
        if (n != 2)
            return "expects same-sandbox, same-domain or any";
        for (int i = 0; i < 3; i++)
            if (!strcmp(w[1], names[i])) {
                c->cors_credentials = i;
                return NULL;
            }
        return "expects same-sandbox, same-domain or any";
    }
    if (!strcmp(d, "cors_origins")) {
        if (n < 2)
            return "expects at least one origin (scheme://host[:port])";
        for (int i = 1; i < n; i++) {
            if (c->ncors_origins >= PX_MAX_DOMAINS)
                return "too many cors_origins";
            if (strncmp(w[i], "http://", 7) && strncmp(w[i], "https://", 8))
                return "an origin is scheme://host[:port]";
            char *o = strdup(w[i]);
            if (o == NULL)
                return "out of memory";
            for (char *p = o; *p; p++)
                *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
            size_t l = strlen(o);
            if (l > 0 && o[l - 1] == '/')
                o[l - 1] = '\0';
            c->cors_origins[c->ncors_origins++] = o;
        }
        return NULL;
    }
    if (!strcmp(d, "domain")) {
        struct px_domain *dm;
        int port;
        NEED(3);
        if (parse_int(w[3], 1, 65535, &port) != 0)
            return "expects HOST SANDBOX PORT";
        if ((dm = calloc(1, sizeof(*dm))) == NULL)
            return "out of memory";
        for (char *p = w[1]; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        dm->host = strdup(w[1]);
        dm->sandbox = strdup(w[2]);
        dm->port = port;
        dm->next = c->custom_domains;
        c->custom_domains = dm;
        return dm->host && dm->sandbox ? NULL : "out of memory";
    }
    if (!strcmp(d, "sandbox")) {
        struct px_sandbox *sb;
        if (n < 3)
            return "expects ID key=value...";
        for (char *p = w[1]; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        if ((sb = px_sandbox_new(w[1])) == NULL)
            return "out of memory";
        for (int i = 2; i < n; i++) {
            char *eq = strchr(w[i], '=');
            if (eq == NULL) {
                px_sandbox_free(sb);
                return "sandbox fields are key=value";
            }
            *eq = '\0';
            if (px_sandbox_set(sb, w[i], eq + 1, &why) != 0) {
                snprintf(reason, sizeof(reason), "%s: %s", w[i], why);
                px_sandbox_free(sb);
                return reason;
            }
        }
        if (px_sandbox_finish(sb, &why) != 0) {
            px_sandbox_free(sb);
            return why;
        }
        sb->next = c->sandboxes;
        c->sandboxes = sb;
        return NULL;
    }
    return "unknown directive";
#undef NEED
}

/* Environment overrides: Daytona's variable names win over the file. */
static const char *apply_env(struct px_config *c)
{
    const char *v;
    char buf[600];
    char *w[3];

#define ENV(name, directive)                                                                       \
    if ((v = getenv(name)) != NULL && *v != '\0') {                                                \
        const char *why;                                                                           \
        snprintf(buf, sizeof(buf), "%s", v);                                                       \
        w[0] = (char *)directive;                                                                  \
        w[1] = buf;                                                                                \
        if ((why = apply(c, w, 2)) != NULL)                                                        \
            return name;                                                                           \
    }
    ENV("TOOLBOX_ONLY_MODE", "toolbox_only")
    ENV("PREVIEW_WARNING_ENABLED", "preview_warning")
    ENV("SHUTDOWN_TIMEOUT_SEC", "shutdown_timeout")
    ENV("COOKIE_DOMAIN", "cookie_domain")
    ENV("DAYTONA_API_URL", "api_url")
    /* Daytona: 0 or less also means the default */
    if ((v = getenv("API_CLIENT_TIMEOUT_SEC")) != NULL && *v != '\0') {
        char *end;
        long t = strtol(v, &end, 10);
        if (*end != '\0' || t > 3600)
            return "API_CLIENT_TIMEOUT_SEC";
        c->api_timeout = t > 0 ? (int)t : 60;
    }
    ENV("REDIS_USERNAME", "redis_username")
    ENV("REDIS_PASSWORD", "redis_password")
    ENV("OIDC_DOMAIN", "oidc_issuer")
    ENV("OIDC_CLIENT_ID", "oidc_client_id")
    ENV("OIDC_CLIENT_SECRET", "oidc_client_secret")
    ENV("OIDC_AUDIENCE", "oidc_audience")
    ENV("OIDC_PUBLIC_DOMAIN", "oidc_public_issuer")
#undef ENV
    if ((v = getenv("PROXY_API_KEY")) != NULL && *v != '\0') {
        if (set_string(&c->api_key, v))
            return "PROXY_API_KEY";
        if (c->cookie_secret == NULL && set_string(&c->cookie_secret, v))
            return "PROXY_API_KEY";
    }
    if ((v = getenv("PROXY_PROTOCOL")) != NULL && *v != '\0') {
        if (strcmp(v, "http") && strcmp(v, "https"))
            return "PROXY_PROTOCOL";
        c->external_https = !strcmp(v, "https");
    }
    if ((v = getenv("REDIS_HOST")) != NULL && *v != '\0') {
        const char *port = getenv("REDIS_PORT");
        snprintf(buf, sizeof(buf), "%s:%s", v, port && *port ? port : "6379");
        w[0] = "redis";
        w[1] = buf;
        if (apply(c, w, 2) != NULL)
            return "REDIS_HOST/REDIS_PORT";
        c->nsentinels = 0; /* the environment's Redis replaces the file's */
        free(c->redis_master);
        c->redis_master = NULL;
    }
    if ((v = getenv("REDIS_SENTINELS")) != NULL && *v != '\0') {
        char *addrs[PX_MAX_SENTINELS + 1];
        int n = 0;
        if (strlen(v) >= sizeof(buf))
            return "REDIS_SENTINELS";
        snprintf(buf, sizeof(buf), "%s", v);
        for (char *save = NULL, *t = strtok_r(buf, ",", &save); t != NULL;
             t = strtok_r(NULL, ",", &save)) {
            if (n == PX_MAX_SENTINELS + 1)
                return "REDIS_SENTINELS";
            addrs[n++] = t;
        }
        if (n == 0 || set_sentinels(c, addrs, n) != NULL)
            return "REDIS_SENTINELS";
        free(c->redis_host); /* the environment's Redis replaces the file's */
        c->redis_host = NULL;
    }
    if ((v = getenv("REDIS_MASTER_NAME")) != NULL && *v != '\0') {
        if (set_master(c, v) != NULL)
            return "REDIS_MASTER_NAME";
    }
    if ((v = getenv("TLS_CERT_FILE")) != NULL && *v != '\0') {
        const char *key = getenv("TLS_KEY_FILE");
        if (key == NULL || *key == '\0')
            return "TLS_KEY_FILE";
        if (c->ntls == PX_MAX_TLS)
            return "TLS_CERT_FILE";
        /* Daytona's single certificate becomes the default (first) entry. */
        memmove(&c->tls[1], &c->tls[0], sizeof(c->tls[0]) * (size_t)c->ntls);
        memset(&c->tls[0], 0, sizeof(c->tls[0]));
        c->tls[0].cert = strdup(v);
        c->tls[0].key = strdup(key);
        c->ntls++;
    }
    if ((v = getenv("PROXY_PORT")) != NULL && *v != '\0') {
        /* Daytona's proxy listens on all interfaces at PROXY_PORT; it replaces the
         * file's plaintext listeners. */
        int port;
        if (parse_int(v, 1, 65535, &port) != 0)
            return "PROXY_PORT";
        int k = 0;
        for (int i = 0; i < c->nlisten; i++) /* keep the file's TLS listeners */
            if (c->listen[i].tls)
                c->listen[k++] = c->listen[i];
        c->nlisten = k;
        if (c->nlisten == PX_MAX_LISTEN)
            return "PROXY_PORT";
        snprintf(buf, sizeof(buf), "0.0.0.0:%d", port);
        parse_addr(buf, &c->listen[c->nlisten]);
        if ((v = getenv("ENABLE_TLS")) != NULL && !strcmp(v, "true"))
            c->listen[c->nlisten].tls = 1;
        c->nlisten++;
    }
    return NULL;
}

struct px_config *px_config_load(const char *path, char *err, size_t errlen)
{
    struct px_config *c = calloc(1, sizeof(*c));
    FILE *f;
    char line[8192];
    int lineno = 0;
    const char *why, *v;

    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    set_defaults(c);
    c->path = strdup(path);
    if ((f = fopen(path, "r")) == NULL) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        px_config_free(c);
        return NULL;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        char *w[MAX_WORDS], *p = line;
        int n = 0;

        lineno++;
        if (strchr(line, '\n') == NULL && !feof(f)) {
            snprintf(err, errlen, "%s:%d: line too long", path, lineno);
            goto fail;
        }
        char *hash = strchr(line, '#');
        if (hash != NULL)
            *hash = '\0';
        while (n < MAX_WORDS) {
            p += strspn(p, " \t\r\n");
            if (*p == '\0')
                break;
            w[n++] = p;
            p += strcspn(p, " \t\r\n");
            if (*p != '\0')
                *p++ = '\0';
        }
        if (n == 0)
            continue;
        if (n == MAX_WORDS) {
            snprintf(err, errlen, "%s:%d: too many words", path, lineno);
            goto fail;
        }
        if ((why = apply(c, w, n)) != NULL) {
            snprintf(err, errlen, "%s:%d: %s: %s", path, lineno, w[0], why);
            goto fail;
        }
    }
    fclose(f);
    f = NULL;
    /* Two ways to one Redis in one place is a mistake to point out, not to
     * settle by a rule the operator has to know. (The environment replaces the
     * file's choice, as for every other setting.) */
    if (c->redis_host != NULL && c->nsentinels > 0) {
        snprintf(err, errlen, "%s: redis and redis_sentinel exclude each other: keep one", path);
        goto fail;
    }
    if ((v = getenv("REDIS_SENTINELS")) != NULL && *v != '\0' &&
        (v = getenv("REDIS_HOST")) != NULL && *v != '\0') {
        snprintf(err, errlen,
                 "environment: REDIS_SENTINELS and REDIS_HOST exclude each other: "
                 "unset one");
        goto fail;
    }
    if ((why = apply_env(c)) != NULL) {
        snprintf(err, errlen, "environment variable %s has a bad value", why);
        goto fail;
    }
    if (c->nsentinels > 0 && c->redis_master == NULL) {
        snprintf(err, errlen,
                 "REDIS_SENTINELS needs REDIS_MASTER_NAME (the sentinels' name for "
                 "the primary)");
        goto fail;
    }
    if (c->nsentinels == 0 && c->redis_master != NULL) {
        snprintf(err, errlen,
                 "REDIS_MASTER_NAME is set but no sentinels are (REDIS_SENTINELS or "
                 "redis_sentinel)");
        goto fail;
    }
    if (c->nlisten == 0) { /* SPEC 12: PROXY_PORT defaults to 4000 */
        parse_addr("0.0.0.0:4000", &c->listen[0]);
        c->nlisten = 1;
    }
    for (int i = 0; i < c->nlisten; i++)
        if (c->listen[i].proxy_protocol && c->ntrusted == 0) {
            /* The header names the client; only trusted_proxies may send one
             * (issue 14). Without any, the listener could take no connection
             * at all: say so now rather than close every client later. */
            snprintf(err, errlen,
                     "%s: a proxy_protocol listener needs trusted_proxies (the balancers "
                     "allowed to send the PROXY header)",
                     path);
            goto fail;
        }
    for (int i = 0; i < c->nlisten; i++)
        if (c->listen[i].tls) {
            /* (Secure cookies and X-Forwarded-Proto follow each connection's own
             * scheme; external_https is only for TLS ended in front of us.) */
            if (c->ntls == 0) {
                snprintf(err, errlen, "%s: a TLS listener needs a tls_cert", path);
                goto fail;
            }
        }
    if (c->cookie_format == PX_COOKIE_FMT_AUTO) /* SPEC 4.5: Daytona's in API mode */
        c->cookie_format = c->api_url != NULL ? PX_COOKIE_FMT_DAYTONA : PX_COOKIE_FMT_V1;
    if ((c->access_log == NULL && set_string(&c->access_log, "stderr")) ||
        (c->error_log == NULL && set_string(&c->error_log, "stderr"))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    return c;
fail:
    if (f != NULL)
        fclose(f);
    px_config_free(c);
    return NULL;
}

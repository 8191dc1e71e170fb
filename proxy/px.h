/* px.h — the shared vocabulary of the proxy: byte slices, error constants,
 * logging, and the configuration every module reads.
 *
 * Every other module includes this file; it includes nothing of ours. */
#ifndef PX_H
#define PX_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#define PX_VERSION "0.1.0"

/* A borrowed byte slice: never NUL-terminated unless said so. */
struct px_str {
    const char *p;
    size_t len;
};

#define PX_STR(s) ((struct px_str){(s), sizeof(s) - 1})
#define PX_STR_NULL ((struct px_str){NULL, 0})

static inline struct px_str px_str_make(const char *p, size_t len)
{
    return (struct px_str){p, len};
}

static inline int px_str_eq(struct px_str a, struct px_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

/* ASCII case-insensitive equality (the C locale's strncasecmp), inline: it
 * runs for every header name against every name we look for (issue 13). */
static inline int px_str_ieq(struct px_str a, struct px_str b)
{
    if (a.len != b.len)
        return 0;
    for (size_t i = 0; i < a.len; i++) {
        unsigned char x = (unsigned char)a.p[i], y = (unsigned char)b.p[i];
        if (x != y && ((x | 0x20) != (y | 0x20) || (unsigned)((x | 0x20) - 'a') > 25))
            return 0;
    }
    return 1;
}

/* Bounded appends to a fixed char buffer, for the few strings built per
 * request (request ID, log host, pool key): snprintf cost ~1k instructions a
 * call there (issue 13). Each returns the new length; out[] stays
 * NUL-terminated and never takes more than cap - 1 bytes (what does not fit
 * is cut, as snprintf would). */
static inline size_t px_cat(char *out, size_t cap, size_t at, const char *s, size_t n)
{
    if (at >= cap)
        return at;
    if (n > cap - 1 - at)
        n = cap - 1 - at;
    if (n)
        memcpy(out + at, s, n);
    out[at + n] = '\0';
    return at + n;
}

/* v in base 10 or 16 (lowercase), like "%llu" / "%llx" */
static inline size_t px_cat_num(char *out, size_t cap, size_t at, unsigned long long v, int hex)
{
    char d[24];
    int i = sizeof(d);

    do {
        d[--i] = "0123456789abcdef"[hex ? v & 15 : v % 10];
        v = hex ? v >> 4 : v / 10;
    } while (v != 0);
    return px_cat(out, cap, at, d + i, sizeof(d) - (size_t)i);
}

/* SPEC 1: ports that always need authentication and never show the warning. */
static inline int px_port_reserved(unsigned port)
{
    return port == 22222 || port == 2280 || port == 33333;
}

/* Errors are constants compared by address (STYLE 7); they print as-is. */
extern const char px_err_timeout[], px_err_refused[], px_err_reset[], px_err_redis_down[],
    px_err_nomem[], px_err_bad_response[], px_err_closed[];

/* ---- logging (proxy/log.c) ---- */
enum px_level { PX_ERR = 0, PX_WARN, PX_INFO, PX_DEBUG };

extern enum px_level px_log_level;

/* Writes "TIME LEVEL [conn=N] msg" to stderr. ctx is a free-form prefix such as
 * "conn=42 st=HEAD host=3000-<signed>", built by the caller; NULL for none. */
void px_logf(enum px_level lvl, const char *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Like px_logf() but at most `per_second` lines per second per call site family;
 * the rest are counted and reported in the next line that gets through. For
 * messages a misbehaving peer can trigger at request rate (502s, 504s). */
int px_log_allow(int per_second);
/* Points descriptor 2 at path (appended to, created 0640 if missing), so log
 * lines and anything else written to stderr go there; "stderr" leaves it as it
 * is. Called at start and on SIGUSR1, after logrotate has renamed the file.
 * Returns 0, or -1 with errno set and stderr unchanged. */
int px_log_open_error(const char *path);

#define px_log(lvl, ...)                                                                           \
    do {                                                                                           \
        if ((lvl) <= px_log_level)                                                                 \
            px_logf((lvl), NULL, __VA_ARGS__);                                                     \
    } while (0)

/* ---- configuration (proxy/config.c) ---- */

#define PX_MAX_LISTEN 8
#define PX_MAX_DOMAINS 16
#define PX_MAX_TRUSTED 16

enum { PX_CORS_SAME_SANDBOX = 0, PX_CORS_SAME_DOMAIN, PX_CORS_ANY };
/* cookie_format: which auth cookie is written (both are always read);
 * AUTO is resolved at load: DAYTONA with api_url, else V1. */
enum { PX_COOKIE_FMT_AUTO = 0, PX_COOKIE_FMT_V1, PX_COOKIE_FMT_DAYTONA };

struct px_listen_cfg {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    unsigned tls : 1;
    unsigned proxy_protocol : 1; /* each connection opens with a PROXY header (ppaccept.h) */
};

struct px_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned bits;
};

struct px_sandbox; /* routing/store.h */

/* A Redis Sentinel's or a primary's address: an IP literal (never a name:
 * redisAsyncConnect() would resolve it with a blocking call). */
#define PX_SENTINEL_IP_MAX 46 /* INET6_ADDRSTRLEN */
#define PX_MAX_SENTINELS 8
struct px_sentinel_addr {
    char ip[PX_SENTINEL_IP_MAX]; /* IPv4 or IPv6 literal, no brackets, NUL-terminated */
    int port;
};

/* A custom domain record: `domain HOST SANDBOX PORT` (SPEC 2, 5). */
struct px_domain {
    char *host;    /* owned, lowercased */
    char *sandbox; /* owned */
    int port;
    struct px_domain *next; /* owned list link */
};

#define PX_MAX_TLS 16

/* One `tls_cert FILE KEY [DOMAIN…]` entry. */
struct px_tls_cfg {
    char *cert, *key;              /* owned paths */
    char *domains[PX_MAX_DOMAINS]; /* owned, lowercased */
    int ndomains;
};

/* Immutable after px_config_load(); borrowed by everyone for the process lifetime
 * (a SIGHUP reload builds a new one and swaps the pointer). */
struct px_config {
    char *path; /* owned */
    struct px_listen_cfg listen[PX_MAX_LISTEN];
    int nlisten;
    char *domains[PX_MAX_DOMAINS]; /* owned, lowercased, no leading dot */
    int ndomains;
    char *access_log; /* owned; "stderr", "off" or a path */
    char *error_log;  /* owned; "stderr" or a path (px_log_open_error) */
    enum px_level log_level;
    int workers;
    int preview_warning;
    int toolbox_only;
    int external_https; /* PROXY_PROTOCOL=https or a TLS listener */
    /* timeouts, seconds */
    int connect_timeout, response_header_timeout, keepalive_timeout, client_header_timeout,
        ws_idle_timeout, upstream_idle_timeout, shutdown_timeout;
    /* nginx's meaning: the longest pause between two reads of the request body,
     * and between two writes the client accepts, once forwarding has started */
    int client_body_timeout, send_timeout;
    int activity_interval;            /* SPEC 8: seconds between activity updates of one sandbox */
    int max_connections;              /* client connections per process; then accepting pauses */
    unsigned max_connections_set : 1; /* written in the file, not the default */
    int max_connections_per_ip;       /* client sockets one address may hold; 0 = no cap */
    int upstream_keepalive;           /* idle connections kept per upstream */
    size_t max_request_line, max_header_size;
    size_t max_body_size; /* 0: no limit (Daytona has none; uploads can be GBs) */
    int max_headers;
    struct px_cidr trusted[PX_MAX_TRUSTED];
    int ntrusted;
    /* redis / secrets (issue 3) */
    char *redis_host; /* owned; IP literal or unix socket path; NULL = in-memory store */
    int redis_port;
    char *redis_username, *redis_password;
    int redis_db;
    /* redis_sentinel (auth/sentinel.c): when nsentinels > 0 the primary of
     * redis_master is discovered through these, and redis_host is NULL. */
    struct px_sentinel_addr sentinels[PX_MAX_SENTINELS];
    int nsentinels;
    char *redis_master; /* owned; the sentinels' master name */
    char *cookie_secret;
    char *cookie_domain;
    int cookie_format; /* PX_COOKIE_FMT_V1 or _DAYTONA after load */
    char *api_url, *api_key;
    int api_timeout; /* seconds per attempt of an API call (API_CLIENT_TIMEOUT_SEC) */
    /* OIDC login (SPEC 4.6; auth/oidc.c). All owned, NULL when unset; in API
     * mode unset issuer, client ID and audience come from C1 at request time. */
    char *oidc_issuer, *oidc_client_id, *oidc_client_secret, *oidc_audience;
    char *oidc_public_issuer;         /* OIDC_PUBLIC_DOMAIN: the issuer as browsers reach it */
    char *oidc_org_claim;             /* the ID-token claim compared with the sandbox's org */
    struct px_sandbox *sandboxes;     /* owned list, from `sandbox` records */
    struct px_domain *custom_domains; /* owned list, from `domain` records */
    int cache_ttl;                    /* seconds a positive lookup is served from memory */
    double lookup_rate;               /* cache misses per second allowed (flood bound) */
    double lookup_burst;
    double lookup_client_rate; /* misses per second one client address may cause */
    double lookup_client_burst;
    int cors_credentials; /* PX_CORS_SAME_SANDBOX, PX_CORS_SAME_DOMAIN or PX_CORS_ANY */
    char *cors_origins[PX_MAX_DOMAINS]; /* owned; origins always given credentials */
    int ncors_origins;
    struct px_listen_cfg metrics; /* metrics_listen; addrlen 0 when off */
    struct px_tls_cfg tls[PX_MAX_TLS];
    int ntls;
    char *upstream_ca;                 /* owned; CA file for https runners, NULL = system store */
    char *error_page[200];             /* owned template text for 400..599, or NULL */
    char *error_family[2];             /* owned templates for 4xx, 5xx */
    unsigned cookie_secret_random : 1; /* generated at start: warn, single process only */
};

/* Reads path (and then the environment overrides of SPEC 12). Returns NULL and
 * writes "file:line: reason" into err on failure. The result is owned by the
 * caller and freed with px_config_free(). */
struct px_config *px_config_load(const char *path, char *err, size_t errlen);
void px_config_free(struct px_config *cfg);

/* Parses "8k", "64K", "1m" or plain digits. Returns 0 or -1. */
int px_config_parse_size(const char *s, size_t *out);

/* Is the peer address inside one of the trusted_proxies ranges? */
int px_config_trusted(const struct px_config *cfg, const struct sockaddr *sa);

#endif

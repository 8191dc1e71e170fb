/* test_proxy_config.c — proxy.conf parsing and environment overrides (SPEC 12). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "proxy/px.h"
#include "routing/store.h"

static const char *const env_vars[] = {
    "PROXY_PORT",           "PROXY_PROTOCOL",
    "PROXY_API_KEY",        "COOKIE_DOMAIN",
    "ENABLE_TLS",           "TLS_CERT_FILE",
    "TLS_KEY_FILE",         "DAYTONA_API_URL",
    "REDIS_HOST",           "REDIS_PORT",
    "REDIS_USERNAME",       "REDIS_PASSWORD",
    "TOOLBOX_ONLY_MODE",    "PREVIEW_WARNING_ENABLED",
    "SHUTDOWN_TIMEOUT_SEC", "API_CLIENT_TIMEOUT_SEC",
    "OIDC_CLIENT_ID",       "OIDC_CLIENT_SECRET",
    "OIDC_DOMAIN",          "OIDC_AUDIENCE",
    "REDIS_SENTINELS",      "REDIS_MASTER_NAME",
};

static char conf_path[64];

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof(env_vars) / sizeof(env_vars[0]); i++)
        unsetenv(env_vars[i]);
}

static int setup(void **state)
{
    (void)state;
    clear_env();
    snprintf(conf_path, sizeof(conf_path), "/tmp/px-unit-conf-XXXXXX");
    int fd = mkstemp(conf_path);
    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    clear_env();
    unlink(conf_path);
    return 0;
}

static void write_conf(const char *text)
{
    FILE *f = fopen(conf_path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static struct px_config *load(const char *text, char *err, size_t errlen)
{
    write_conf(text);
    err[0] = '\0';
    return px_config_load(conf_path, err, errlen);
}

static struct px_config *load_ok(const char *text)
{
    char err[512];
    struct px_config *c = load(text, err, sizeof(err));
    if (c == NULL)
        fail_msg("config rejected: %s\n--- config ---\n%s", err, text);
    return c;
}

/* The config is rejected and err starts with "file:LINE:". */
static void load_bad(const char *text, int line)
{
    char err[512], want[128];
    struct px_config *c = load(text, err, sizeof(err));
    if (c != NULL) {
        px_config_free(c);
        fail_msg("config accepted, expected an error at line %d:\n%s", line, text);
    }
    snprintf(want, sizeof(want), "%s:%d:", conf_path, line);
    if (strncmp(err, want, strlen(want)) != 0)
        fail_msg("error \"%s\" does not start with \"%s\"", err, want);
    assert_true(strlen(err) > strlen(want) + 1); /* and says why */
}

static unsigned listen_port(const struct px_listen_cfg *l)
{
    if (l->addr.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&l->addr)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)&l->addr)->sin6_port);
}

static const char *listen_host(const struct px_listen_cfg *l, char *buf, size_t len)
{
    if (l->addr.ss_family == AF_INET)
        return inet_ntop(AF_INET, &((const struct sockaddr_in *)&l->addr)->sin_addr, buf,
                         (socklen_t)len);
    return inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&l->addr)->sin6_addr, buf,
                     (socklen_t)len);
}

static void test_defaults(void **state)
{
    (void)state;
    struct px_config *c = load_ok("# nothing but a comment\n\n   \n");
    char h[64];

    assert_int_equal(c->nlisten, 1); /* PROXY_PORT default 4000 */
    assert_int_equal(listen_port(&c->listen[0]), 4000);
    assert_string_equal(listen_host(&c->listen[0], h, sizeof(h)), "0.0.0.0");
    assert_false(c->listen[0].tls);
    assert_int_equal(c->connect_timeout, 10);
    assert_int_equal(c->response_header_timeout, 60);
    assert_int_equal(c->keepalive_timeout, 70);
    assert_int_equal(c->client_header_timeout, 10);
    assert_int_equal(c->ws_idle_timeout, 3600);
    assert_int_equal(c->upstream_keepalive, 128);
    assert_int_equal(c->max_request_line, 8192);
    assert_int_equal(c->max_header_size, 65536);
    assert_int_equal(c->max_headers, 100);
    assert_int_equal(c->ndomains, 0);
    assert_int_equal(c->ntrusted, 0);
    assert_false(c->toolbox_only);
    assert_null(c->sandboxes);
    assert_non_null(c->path);
    assert_string_equal(c->path, conf_path);
    px_config_free(c);
}

/* cookie_format: Daytona's by default in API mode (api_url, from the file or
 * DAYTONA_API_URL), ours in standalone mode; an explicit value wins. */
static void test_cookie_format(void **state)
{
    (void)state;
    struct px_config *c = load_ok("");
    assert_int_equal(c->cookie_format, PX_COOKIE_FMT_V1);
    px_config_free(c);
    c = load_ok("api_url http://127.0.0.1:3000\n");
    assert_int_equal(c->cookie_format, PX_COOKIE_FMT_DAYTONA);
    px_config_free(c);
    c = load_ok("api_url http://127.0.0.1:3000\ncookie_format v1\n");
    assert_int_equal(c->cookie_format, PX_COOKIE_FMT_V1);
    px_config_free(c);
    c = load_ok("cookie_format daytona\n");
    assert_int_equal(c->cookie_format, PX_COOKIE_FMT_DAYTONA);
    px_config_free(c);
    setenv("DAYTONA_API_URL", "http://127.0.0.1:3000", 1);
    c = load_ok("");
    assert_int_equal(c->cookie_format, PX_COOKIE_FMT_DAYTONA);
    px_config_free(c);
    unsetenv("DAYTONA_API_URL");
    load_bad("cookie_format gorilla\n", 1);
    load_bad("\ncookie_format\n", 2);
    load_bad("cookie_format v1 daytona\n", 1);
    load_bad("cookie_format V1\n", 1);
}

static void test_good_values(void **state)
{
    (void)state;
    struct px_config *c = load_ok("listen 127.0.0.1:8080\n"
                                  "listen [::1]:8443 tls   # comment after a directive\n"
                                  "tls_cert /x/cert.pem /x/key.pem proxy.test\n"
                                  "\tdomains proxy.test .EU.Example.com *.wild.test\n"
                                  "connect_timeout 5\r\n"
                                  "response_header_timeout 30\n"
                                  "keepalive_timeout 75\n"
                                  "client_header_timeout 7\n"
                                  "ws_idle_timeout 600\n"
                                  "shutdown_timeout 0\n"
                                  "max_request_line 4k\n"
                                  "max_header_size 32K\n"
                                  "max_headers 50\n"
                                  "workers 4\n"
                                  "toolbox_only on\n"
                                  "preview_warning off\n"
                                  "log_level debug\n"
                                  "access_log off\n"
                                  "redis 127.0.0.1:6380\n"
                                  "redis_password s3cret\n"
                                  "cookie_secret abc\n"
                                  "cookie_domain .proxy.test\n"
                                  "api_url http://api.local:3000\n"
                                  "api_key key1\n");
    char h[64];

    assert_int_equal(c->nlisten, 2);
    assert_string_equal(listen_host(&c->listen[0], h, sizeof(h)), "127.0.0.1");
    assert_int_equal(listen_port(&c->listen[0]), 8080);
    assert_false(c->listen[0].tls);
    assert_int_equal(c->listen[0].addrlen, sizeof(struct sockaddr_in));
    assert_string_equal(listen_host(&c->listen[1], h, sizeof(h)), "::1");
    assert_int_equal(listen_port(&c->listen[1]), 8443);
    assert_true(c->listen[1].tls);
    assert_int_equal(c->listen[1].addrlen, sizeof(struct sockaddr_in6));
    assert_int_equal(c->ndomains, 3);
    assert_string_equal(c->domains[0], "proxy.test");
    assert_string_equal(c->domains[1], "eu.example.com"); /* lowercased, no leading dot */
    assert_string_equal(c->domains[2], "wild.test");
    assert_int_equal(c->connect_timeout, 5);
    assert_int_equal(c->response_header_timeout, 30);
    assert_int_equal(c->keepalive_timeout, 75);
    assert_int_equal(c->client_header_timeout, 7);
    assert_int_equal(c->ws_idle_timeout, 600);
    assert_int_equal(c->shutdown_timeout, 0);
    assert_int_equal(c->max_request_line, 4096);
    assert_int_equal(c->max_header_size, 32768);
    assert_int_equal(c->max_headers, 50);
    assert_int_equal(c->workers, 4);
    assert_true(c->toolbox_only);
    assert_false(c->preview_warning);
    assert_int_equal(c->log_level, PX_DEBUG);
    assert_string_equal(c->access_log, "off");
    assert_string_equal(c->redis_host, "127.0.0.1");
    assert_int_equal(c->redis_port, 6380);
    assert_string_equal(c->redis_password, "s3cret");
    assert_string_equal(c->cookie_secret, "abc");
    assert_string_equal(c->cookie_domain, ".proxy.test");
    assert_string_equal(c->api_url, "http://api.local:3000");
    assert_string_equal(c->api_key, "key1");
    px_config_free(c);
}

static void test_listen_forms(void **state)
{
    (void)state;
    struct px_config *c = load_ok("listen 4001\n"
                                  "listen *:4002\n"
                                  "listen :4003\n"
                                  "listen 0.0.0.0:4004 tls\n"
                                  "tls_cert /x/cert.pem /x/key.pem\n"
                                  "listen [::]:4005\n");
    char h[64];

    assert_int_equal(c->nlisten, 5);
    for (int i = 0; i < 4; i++) {
        assert_string_equal(listen_host(&c->listen[i], h, sizeof(h)), "0.0.0.0");
        assert_int_equal(listen_port(&c->listen[i]), 4001 + i);
    }
    assert_true(c->listen[3].tls);
    assert_string_equal(listen_host(&c->listen[4], h, sizeof(h)), "::");
    assert_int_equal(listen_port(&c->listen[4]), 4005);
    px_config_free(c);
}

/* `listen ADDR:PORT [tls] [proxy_protocol]` (issue 14): flags in either order,
 * each once; a proxy_protocol listener needs trusted_proxies. */
static void test_listen_proxy_protocol(void **state)
{
    (void)state;
    char err[512];
    struct px_config *c = load_ok("trusted_proxies 127.0.0.0/8\n"
                                  "listen 4001 proxy_protocol\n"
                                  "listen 4002 tls proxy_protocol\n"
                                  "listen 4003 proxy_protocol tls\n"
                                  "listen 4004\n"
                                  "tls_cert /x/cert.pem /x/key.pem\n");
    assert_int_equal(c->nlisten, 4);
    assert_true(c->listen[0].proxy_protocol && !c->listen[0].tls);
    assert_true(c->listen[1].proxy_protocol && c->listen[1].tls);
    assert_true(c->listen[2].proxy_protocol && c->listen[2].tls);
    assert_true(!c->listen[3].proxy_protocol && !c->listen[3].tls);
    px_config_free(c);

    load_bad("trusted_proxies 127.0.0.1\nlisten 4001 proxy_protocol proxy_protocol\n", 2);
    load_bad("trusted_proxies 127.0.0.1\nlisten 4001 tls tls\n", 2);
    load_bad("trusted_proxies 127.0.0.1\nlisten 4001 proxy\n", 2);
    load_bad("trusted_proxies 127.0.0.1\nlisten 4001 tls proxy_protocol x\n", 2);
    /* no trusted_proxies: refused as a whole, saying what is missing */
    assert_null(load("listen 4001 proxy_protocol\n", err, sizeof(err)));
    assert_non_null(strstr(err, "trusted_proxies"));
}

static void test_listen_bad(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "listen\n",
        "listen 127.0.0.1:0\n",
        "listen 127.0.0.1:65536\n",
        "listen 127.0.0.1:\n",
        "listen 127.0.0.1\n",
        "listen localhost:80\n", /* IP literals only */
        "listen 127.0.0.1:80 ssl\n",
        "listen 127.0.0.1:80 tls x\n",
        "listen [::1]\n",
        "listen [::1:80\n",
        "listen 300.0.0.1:80\n",
        "listen 127.0.0.1:+80\n",
        "listen 127.0.0.1:80x\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        load_bad(bad[i], 1);

    /* too many listeners */
    char buf[1024];
    size_t n = 0;
    for (int i = 0; i <= PX_MAX_LISTEN; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "listen 127.0.0.1:%d\n", 5000 + i);
    load_bad(buf, PX_MAX_LISTEN + 1);
}

static void test_unknown_and_bad_lines(void **state)
{
    (void)state;
    load_bad("listen 127.0.0.1:8080\nfrobnicate 1\n", 2);
    load_bad("# c\n\nlisten 127.0.0.1:8080\n\n  bogus_directive\n", 5);
    load_bad("Listen 127.0.0.1:8080\n", 1); /* directives are case-sensitive */

    char err[512];
    struct px_config *c = load("workers 2\nfrobnicate 1\n", err, sizeof(err));
    assert_null(c);
    assert_non_null(strstr(err, ":2:"));
    assert_non_null(strstr(err, "frobnicate"));
    assert_non_null(strstr(err, "unknown directive"));

    c = px_config_load("/nonexistent/px-unit.conf", err, sizeof(err));
    assert_null(c);
    assert_non_null(strstr(err, "/nonexistent/px-unit.conf"));
}

static void test_bad_numbers(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "connect_timeout 0\n",
        "connect_timeout -1\n",
        "connect_timeout +5\n",
        "connect_timeout abc\n",
        "connect_timeout 10s\n",
        "connect_timeout 1.5\n",
        "connect_timeout 99999999999999999999\n",
        "connect_timeout\n",
        "connect_timeout 1 2\n",
        "keepalive_timeout 86401\n",
        "workers 0\n",
        "workers 257\n",
        "max_headers 0\n",
        "shutdown_timeout -1\n",
        "max_request_line 0\n",
        "max_request_line 63\n",
        "max_request_line 8x\n",
        "max_request_line k\n",
        "max_header_size -1k\n",
        "max_header_size 1g\n",
        "toolbox_only maybe\n",
        "preview_warning yes please\n",
        "log_level verbose\n",
        "redis localhost:6379\n",
        "redis 127.0.0.1\n",
        "redis 127.0.0.1:0\n",
        "domains\n",
        "domains .\n",
        "trusted_proxies\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        load_bad(bad[i], 1);
}

static void test_parse_size(void **state)
{
    (void)state;
    struct {
        const char *in;
        int rc;
        size_t v;
    } t[] = {
        {"8k", 0, 8192},
        {"64K", 0, 65536},
        {"1m", 0, 1048576},
        {"1M", 0, 1048576},
        {"100", 0, 100},
        {"4096", 0, 4096},
        {"4194304k", 0, 4294967296ULL},
        {"0", -1, 0},
        {"0k", -1, 0},
        {"", -1, 0},
        {"k", -1, 0},
        {"-1", -1, 0},
        {"+1", -1, 0},
        {" 1", -1, 0},
        {"1 ", -1, 0},
        {"1kk", -1, 0},
        {"1g", -1, 0},
        {"1.5k", -1, 0},
        {"0x10", -1, 0},
        {"4194305k", -1, 0},
        {"4097m", -1, 0},
        {"99999999999999999999", -1, 0},
    };
    int failed = 0;
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        size_t v = 12345;
        int rc = px_config_parse_size(t[i].in, &v);
        if (rc != t[i].rc || (rc == 0 && v != t[i].v)) {
            print_error("parse_size(\"%s\"): rc %d v %zu, expected rc %d v %zu\n", t[i].in, rc, v,
                        t[i].rc, t[i].v);
            failed++;
        }
    }
    if (failed)
        fail_msg("%d size cases failed", failed);
}

/* A huge value times the k/m multiplier must not wrap around into a small size:
 * 18014398509481985 * 1024 = 2^64 + 1024. */
static void test_parse_size_overflow(void **state)
{
    (void)state;
    static const char *const t[] = {
        "18014398509481985k", /* wraps to 1024 */
        "17592186044417m",    /* 2^44+1 MiB: wraps to 1 MiB */
        "18014398509481984k", /* wraps to 0 */
    };
    int failed = 0;
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        size_t v = 0;
        if (px_config_parse_size(t[i], &v) != -1) {
            print_error("parse_size(\"%s\") accepted as %zu\n", t[i], v);
            failed++;
        }
    }
    if (failed)
        fail_msg("%d overflowing sizes accepted", failed);
}

static void test_sandbox_records(void **state)
{
    (void)state;
    struct px_config *c = load_ok(
        "sandbox SB1 runner_url=http://10.0.0.5:3003 runner_key=rk1 auth_token=a=b public=1\n"
        "sandbox sb2 runner_url=https://[fd00::5]:8443/base runner_key=rk2 direct=1 "
        "warning=0 org=o1 state=stopped wake=http\n"
        "sandbox sb3 runner_url=https://runner.example runner_key=rk3\n");

    const struct px_sandbox *a = px_store_find(c, PX_STR("sb1"));
    assert_non_null(a);
    assert_string_equal(a->id, "sb1"); /* lowercased like the Host */
    assert_string_equal(a->runner_url, "http://10.0.0.5:3003");
    assert_string_equal(a->runner_key, "rk1");
    assert_string_equal(a->auth_token, "a=b"); /* split at the first '=' */
    assert_true(a->is_public);
    assert_false(a->direct);
    assert_int_equal(a->warning, -1);
    assert_false(a->runner_tls);
    assert_string_equal(a->runner_host, "10.0.0.5");
    assert_int_equal(a->runner_port, 3003);
    assert_string_equal(a->runner_authority, "10.0.0.5:3003");

    const struct px_sandbox *b = px_store_find(c, PX_STR("sb2"));
    assert_non_null(b);
    assert_true(b->runner_tls);
    assert_string_equal(b->runner_host, "fd00::5");
    assert_int_equal(b->runner_port, 8443);
    assert_string_equal(b->runner_authority, "[fd00::5]:8443");
    assert_true(b->direct);
    assert_int_equal(b->warning, 0);
    assert_string_equal(b->org, "o1");
    assert_string_equal(b->state, "stopped");
    assert_true(b->wake_http);

    const struct px_sandbox *d = px_store_find(c, PX_STR("sb3"));
    assert_non_null(d);
    assert_string_equal(d->runner_host, "runner.example");
    assert_int_equal(d->runner_port, 443);
    assert_string_equal(d->runner_authority, "runner.example");

    assert_null(px_store_find(c, PX_STR("sb")));
    assert_null(px_store_find(c, PX_STR("sb10")));
    assert_null(px_store_find(c, PX_STR("SB1"))); /* lookups take the lowercased label */
    px_config_free(c);
}

static void test_sandbox_bad(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "sandbox sb1\n",
        "sandbox sb1 runner_key=rk\n", /* no runner_url */
        "sandbox sb1 runner_url=ftp://10.0.0.5 runner_key=rk\n",
        "sandbox sb1 runner_url=10.0.0.5:3003 runner_key=rk\n",
        "sandbox sb1 runner_url=http:// runner_key=rk\n",
        "sandbox sb1 runner_url=http://h:0 runner_key=rk\n",
        "sandbox sb1 runner_url=http://h:65536 runner_key=rk\n",
        "sandbox sb1 runner_url=http://h:80x runner_key=rk\n",
        "sandbox sb1 runner_url=http://h: runner_key=rk\n",
        "sandbox sb1 runner_url=http://[::1:80 runner_key=rk\n",
        "sandbox sb1 runner_url=http://h:80 runner_key\n",  /* not key=value */
        "sandbox sb1 runner_url=http://h:80 colour=blue\n", /* unknown field */
        "sandbox sb1 runner_url=http://h:80 public=2\n",
        "sandbox sb1 runner_url=http://h:80 wake=sometimes\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        load_bad(bad[i], 1);

    char err[512];
    struct px_config *c =
        load("workers 1\nsandbox sb1 runner_url=ftp://x runner_key=rk\n", err, sizeof(err));
    assert_null(c);
    assert_non_null(strstr(err, ":2:"));
    assert_non_null(strstr(err, "runner_url"));
}

static void test_env_overrides(void **state)
{
    (void)state;
    const char *conf = "listen 127.0.0.1:8080\n"
                       "toolbox_only off\n"
                       "preview_warning off\n"
                       "shutdown_timeout 10\n"
                       "cookie_domain file.test\n"
                       "api_url http://file\n";

    setenv("TOOLBOX_ONLY_MODE", "true", 1);
    setenv("PREVIEW_WARNING_ENABLED", "true", 1);
    setenv("PROXY_PORT", "5005", 1);
    setenv("SHUTDOWN_TIMEOUT_SEC", "42", 1);
    setenv("COOKIE_DOMAIN", "env.test", 1);
    setenv("DAYTONA_API_URL", "http://env", 1);
    setenv("PROXY_API_KEY", "envkey", 1);
    setenv("REDIS_HOST", "127.0.0.2", 1);
    setenv("REDIS_PORT", "6390", 1);
    setenv("REDIS_PASSWORD", "rp", 1);
    setenv("PROXY_PROTOCOL", "https", 1);

    struct px_config *c = load_ok(conf);
    char h[64];
    assert_true(c->toolbox_only);
    assert_true(c->preview_warning);
    assert_int_equal(c->nlisten, 1);
    assert_int_equal(listen_port(&c->listen[0]), 5005);
    assert_string_equal(listen_host(&c->listen[0], h, sizeof(h)), "0.0.0.0");
    assert_int_equal(c->shutdown_timeout, 42);
    assert_string_equal(c->cookie_domain, "env.test");
    assert_string_equal(c->api_url, "http://env");
    assert_string_equal(c->api_key, "envkey");
    assert_string_equal(c->redis_host, "127.0.0.2");
    assert_int_equal(c->redis_port, 6390);
    assert_string_equal(c->redis_password, "rp");
    assert_true(c->external_https);
    px_config_free(c);

    /* empty variables are ignored */
    clear_env();
    setenv("PROXY_PORT", "", 1);
    setenv("TOOLBOX_ONLY_MODE", "", 1);
    c = load_ok(conf);
    assert_int_equal(listen_port(&c->listen[0]), 8080);
    assert_false(c->toolbox_only);
    px_config_free(c);

    /* "false" turns a file's "on" off */
    clear_env();
    setenv("TOOLBOX_ONLY_MODE", "false", 1);
    c = load_ok("toolbox_only on\n");
    assert_false(c->toolbox_only);
    px_config_free(c);

    /* ENABLE_TLS applies to the PROXY_PORT listener */
    clear_env();
    setenv("PROXY_PORT", "5006", 1);
    setenv("ENABLE_TLS", "true", 1);
    c = load_ok("tls_cert /x/cert.pem /x/key.pem\n");
    assert_int_equal(c->nlisten, 1);
    assert_int_equal(listen_port(&c->listen[0]), 5006);
    assert_true(c->listen[0].tls);
    px_config_free(c);
}

static void test_env_bad_values(void **state)
{
    (void)state;
    static const struct {
        const char *name, *value;
    } t[] = {
        {"TOOLBOX_ONLY_MODE", "sometimes"},
        {"PROXY_PORT", "0"},
        {"PROXY_PORT", "65536"},
        {"PROXY_PORT", "http"},
        {"SHUTDOWN_TIMEOUT_SEC", "-1"},
        {"SHUTDOWN_TIMEOUT_SEC", "abc"},
        {"PROXY_PROTOCOL", "ftp"},
        {"REDIS_PORT", "x"}, /* with REDIS_HOST below */
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        char err[512];
        clear_env();
        setenv(t[i].name, t[i].value, 1);
        if (!strcmp(t[i].name, "REDIS_PORT"))
            setenv("REDIS_HOST", "127.0.0.1", 1);
        struct px_config *c = load("workers 1\n", err, sizeof(err));
        if (c != NULL) {
            px_config_free(c);
            fail_msg("%s=%s accepted", t[i].name, t[i].value);
        }
        if (strstr(err, t[i].name) == NULL)
            fail_msg("%s=%s: error \"%s\" does not name the variable", t[i].name, t[i].value, err);
    }
}

/* The PROXY_PORT override "replaces the file's plaintext listeners" (config.c):
 * a TLS listener from the file stays. */
static void test_env_proxy_port_keeps_tls(void **state)
{
    (void)state;
    setenv("PROXY_PORT", "5007", 1);
    struct px_config *c = load_ok("listen 127.0.0.1:8080\nlisten 127.0.0.1:8443 tls\n"
                                  "tls_cert /x/c.pem /x/k.pem\n");
    int plain5007 = 0, tls8443 = 0, plain8080 = 0;

    for (int i = 0; i < c->nlisten; i++) {
        unsigned p = listen_port(&c->listen[i]);
        if (p == 5007 && !c->listen[i].tls)
            plain5007++;
        if (p == 8443 && c->listen[i].tls)
            tls8443++;
        if (p == 8080)
            plain8080++;
    }
    px_config_free(c);
    assert_int_equal(plain5007, 1);
    assert_int_equal(plain8080, 0);
    assert_int_equal(tls8443, 1);
}

static struct sockaddr_storage addr(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1)
        a4->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1)
        a6->sin6_family = AF_INET6;
    else
        fail_msg("bad test address %s", ip);
    return ss;
}

static int trusted(const struct px_config *c, const char *ip)
{
    struct sockaddr_storage ss = addr(ip);
    return px_config_trusted(c, (const struct sockaddr *)&ss);
}

static void test_trusted_proxies(void **state)
{
    (void)state;
    struct px_config *c = load_ok("trusted_proxies 10.0.0.0/8 192.168.1.7 172.16.0.0/12\n"
                                  "trusted_proxies fd00::/8 2001:db8::1/128 100.64.1.0/23\n");
    static const struct {
        const char *ip;
        int expect;
    } t[] = {
        {"10.0.0.1", 1},      {"10.255.255.255", 1}, {"11.0.0.1", 0},
        {"9.255.255.255", 0}, {"192.168.1.7", 1},    {"192.168.1.8", 0},
        {"192.168.1.6", 0},   {"172.16.0.1", 1},     {"172.31.255.254", 1},
        {"172.32.0.1", 0},    {"172.15.255.255", 0}, {"100.64.0.1", 1},
        {"100.64.1.255", 1},  {"100.64.2.0", 0},     {"100.65.0.0", 0},
        {"fd12:3456::1", 1},  {"fe80::1", 0},        {"2001:db8::1", 1},
        {"2001:db8::2", 0},   {"127.0.0.1", 0},      {"::1", 0},
    };
    int failed = 0;

    assert_int_equal(c->ntrusted, 6);
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        int got = trusted(c, t[i].ip);
        if (got != t[i].expect) {
            print_error("trusted(%s) = %d, expected %d\n", t[i].ip, got, t[i].expect);
            failed++;
        }
    }
    px_config_free(c);
    if (failed)
        fail_msg("%d trusted_proxies cases failed", failed);

    /* /0 trusts every address of its family */
    c = load_ok("trusted_proxies 0.0.0.0/0\n");
    assert_true(trusted(c, "1.2.3.4"));
    assert_false(trusted(c, "::1"));
    px_config_free(c);

    /* none configured: nobody is trusted */
    c = load_ok("");
    assert_false(trusted(c, "10.0.0.1"));
    px_config_free(c);

    static const char *const bad[] = {
        "trusted_proxies 10.0.0.0/33\n", "trusted_proxies 10.0.0.0/\n",
        "trusted_proxies 10.0.0/8\n",    "trusted_proxies fd00::/129\n",
        "trusted_proxies 10.0.0.0/-1\n", "trusted_proxies example.com\n",
        "trusted_proxies 10.0.0.0/8x\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        load_bad(bad[i], 1);
}

/* redis_sentinel (issue 14): the list, the master name, and which source wins. */
static void test_redis_sentinel(void **state)
{
    (void)state;
    struct px_config *c =
        load_ok("redis_sentinel 10.0.0.1:26379 [fd00::1]:26380 10.0.0.3:1 mymaster\n");
    assert_int_equal(c->nsentinels, 3);
    assert_string_equal(c->sentinels[0].ip, "10.0.0.1");
    assert_int_equal(c->sentinels[0].port, 26379);
    assert_string_equal(c->sentinels[1].ip, "fd00::1");
    assert_string_equal(c->redis_master, "mymaster");
    assert_null(c->redis_host);
    px_config_free(c);

    load_bad("redis_sentinel 10.0.0.1:26379\n", 1);
    load_bad("redis_sentinel 10.0.0.1:26379 10.0.0.2:26379\n", 1);
    load_bad("redis_sentinel s1.example:26379 m\n", 1);
    load_bad("redis_sentinel 1.1.1.1:1 1.1.1.2:1 1.1.1.3:1 1.1.1.4:1 1.1.1.5:1 1.1.1.6:1 "
             "1.1.1.7:1 1.1.1.8:1 1.1.1.9:1 m\n",
             1);

    char err[512];
    c = load("redis 127.0.0.1:6379\nredis_sentinel 10.0.0.1:26379 m\n", err, sizeof(err));
    assert_null(c);
    assert_non_null(strstr(err, "exclude each other"));

    /* the environment replaces the file's Redis, whichever kind */
    setenv("REDIS_SENTINELS", "10.0.0.9:5000,10.0.0.8:5001", 1);
    setenv("REDIS_MASTER_NAME", "envmaster", 1);
    c = load_ok("redis 127.0.0.1:6379\n");
    assert_null(c->redis_host);
    assert_int_equal(c->nsentinels, 2);
    assert_int_equal(c->sentinels[1].port, 5001);
    assert_string_equal(c->redis_master, "envmaster");
    px_config_free(c);
    clear_env();
    setenv("REDIS_HOST", "127.0.0.5", 1);
    c = load_ok("redis_sentinel 10.0.0.1:26379 m\n");
    assert_string_equal(c->redis_host, "127.0.0.5");
    assert_int_equal(c->nsentinels, 0);
    assert_null(c->redis_master);
    px_config_free(c);
    clear_env();
    setenv("REDIS_MASTER_NAME", "other", 1); /* renames the file's master */
    c = load_ok("redis_sentinel 10.0.0.1:26379 m\n");
    assert_string_equal(c->redis_master, "other");
    px_config_free(c);
    clear_env();
    static const char *const bad_env[][2] = {
        {"REDIS_SENTINELS", "10.0.0.1:1"},     /* no master name */
        {"REDIS_MASTER_NAME", "m"},            /* no sentinels */
        {"REDIS_SENTINELS", ","},              /* empty list */
        {"REDIS_SENTINELS", "10.0.0.1:1,bad"}, /* not an IP */
    };
    for (size_t i = 0; i < sizeof(bad_env) / sizeof(bad_env[0]); i++) {
        clear_env();
        setenv(bad_env[i][0], bad_env[i][1], 1);
        if (strcmp(bad_env[i][0], "REDIS_MASTER_NAME") != 0 && i != 0)
            setenv("REDIS_MASTER_NAME", "m", 1);
        c = load("listen 127.0.0.1:1\n", err, sizeof(err));
        if (c != NULL)
            fail_msg("accepted %s=%s", bad_env[i][0], bad_env[i][1]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_good_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listen_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listen_bad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listen_proxy_protocol, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_and_bad_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_numbers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_size_overflow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_bad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_overrides, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_bad_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_proxy_port_keeps_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trusted_proxies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cookie_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_sentinel, setup, teardown),
    };
    return cmocka_run_group_tests_name("proxy/config", tests, NULL, NULL);
}

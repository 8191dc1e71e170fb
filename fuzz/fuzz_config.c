/* fuzz_config.c — px_config_load() (proxy/config.c): the proxy.conf parser,
 * its directives and the sandbox records of routing/store.c, given the input
 * as a file (a memfd, so nothing touches the disk).
 *
 * Oracles: a refused file names line and reason; a loaded one has every
 * counter inside its array and a listener; px_config_free() releases all of it
 * (LeakSanitizer). The environment overrides are not fuzzed: the variables are
 * cleared once. `error_page` may name any file; the Makefile runs the fuzzers
 * with stdin on /dev/null so that "/dev/stdin" cannot block. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "proxy/px.h"
#include "routing/store.h"
#include "fuzz/check.h"

static int fd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char *const env[] = {
        "TOOLBOX_ONLY_MODE",    "PREVIEW_WARNING_ENABLED",
        "SHUTDOWN_TIMEOUT_SEC", "COOKIE_DOMAIN",
        "DAYTONA_API_URL",      "API_CLIENT_TIMEOUT_SEC",
        "REDIS_USERNAME",       "REDIS_PASSWORD",
        "PROXY_API_KEY",        "PROXY_PROTOCOL",
        "REDIS_HOST",           "REDIS_PORT",
        "TLS_CERT_FILE",        "TLS_KEY_FILE",
        "PROXY_PORT",           "ENABLE_TLS",
    };
    (void)argc;
    (void)argv;
    for (size_t i = 0; i < sizeof(env) / sizeof(env[0]); i++)
        unsetenv(env[i]);
    fd = memfd_create("fuzz-proxy.conf", 0);
    CHECK(fd >= 0);
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    struct px_config *c;

    if (size > 64 * 1024)
        return 0;
    CHECK(ftruncate(fd, 0) == 0 && pwrite(fd, data, size, 0) == (ssize_t)size);
    err[0] = '\0';
    c = px_config_load(path, err, sizeof(err));
    if (c == NULL) {
        CHECK(err[0] != '\0');
        return 0;
    }
    CHECK(c->nlisten >= 1 && c->nlisten <= PX_MAX_LISTEN);
    CHECK(c->ndomains >= 0 && c->ndomains <= PX_MAX_DOMAINS);
    CHECK(c->ntrusted >= 0 && c->ntrusted <= PX_MAX_TRUSTED);
    CHECK(c->ntls >= 0 && c->ntls <= PX_MAX_TLS);
    CHECK(c->ncors_origins >= 0 && c->ncors_origins <= PX_MAX_DOMAINS);
    CHECK(c->cookie_format == PX_COOKIE_FMT_V1 || c->cookie_format == PX_COOKIE_FMT_DAYTONA);
    CHECK(c->access_log != NULL);
    for (int i = 0; i < c->ndomains; i++)
        CHECK(c->domains[i] != NULL && c->domains[i][0] != '\0');
    for (const struct px_sandbox *sb = c->sandboxes; sb != NULL; sb = sb->next) {
        CHECK(sb->id != NULL && sb->runner_url != NULL && sb->runner_host != NULL);
        CHECK(px_store_find(c, px_str_make(sb->id, strlen(sb->id))) != NULL);
        (void)px_sandbox_direct_port_ok(sb, 3000);
        struct px_sandbox *d = px_sandbox_dup(sb);
        px_sandbox_free(d);
    }
    px_config_free(c);
    return 0;
}

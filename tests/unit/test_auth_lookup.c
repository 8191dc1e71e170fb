/* test_auth_lookup.c — auth/lookup.c against a real redis-server (spawned on a unix socket).
 *
 * delivery_survives_expiry_in_callback: coalesced waiters of one fetch are called in turn; a
 * waiter's callback that starts another lookup runs find(), whose lazy expiry walks the whole
 * bucket. With cache_ttl 0 the entry being delivered is already "expired" when the first waiter
 * runs, which reproduces deterministically what cache_ttl 1 does when the callbacks straddle a
 * second boundary: before the fix find() freed the entry and the next waiter read freed memory
 * (found == 0 after value_clear(), or an ASan report).
 *
 * The budget tests check the per-client miss budget: what finds nothing is charged to the
 * client that asked, what exists never is. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "auth/lookup.h"
#include "auth/redis.h"
#include "routing/store.h"

#define NBUCKETS 4096 /* as in lookup.c */

static pid_t redis_pid;
static char sock[128], conf_path[128];
static struct event_base *base;
static struct px_config *cfg;

static uint64_t fnv(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    return h;
}

static redisContext *sync_redis(void)
{
    redisContext *rc = redisConnectUnix(sock);
    assert_non_null(rc);
    assert_int_equal(rc->err, 0);
    return rc;
}

static void redis_do(const char *fmt, ...)
{
    redisContext *rc = sync_redis();
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    freeReplyObject(r);
    redisFree(rc);
}

static int subscribed(void)
{
    redisContext *rc = redisConnectUnix(sock);
    int n = 0;
    if (rc != NULL && rc->err == 0) {
        redisReply *r = redisCommand(rc, "PUBSUB NUMSUB proxy:invalidate");
        if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2)
            n = (int)r->element[1]->integer;
        freeReplyObject(r);
    }
    if (rc != NULL)
        redisFree(rc);
    return n;
}

/* Runs the loop until pred() or 5 s pass. */
static int loop_until(int (*pred)(void))
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (pred())
            return 1;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 5)
            return 0;
        struct timeval tv = {0, 10000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
}

static int link_ready(void)
{
    return px_lookup_redis() != NULL && px_redis_up(px_lookup_redis()) && subscribed() >= 1;
}

static int setup(void **state)
{
    char err[256];
    FILE *f;
    (void)state;

    snprintf(sock, sizeof(sock), "/tmp/px-lookup-test-%d.sock", (int)getpid());
    snprintf(conf_path, sizeof(conf_path), "/tmp/px-lookup-test-%d.conf", (int)getpid());
    unlink(sock);
    if ((redis_pid = fork()) == 0) {
        execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
               "--appendonly", "no", "--loglevel", "warning", "--logfile", "/dev/null",
               (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) { /* up to 5 s */
        redisContext *rc = redisConnectUnix(sock);
        int ok = rc != NULL && rc->err == 0;
        if (rc != NULL)
            redisFree(rc);
        if (ok)
            break;
        usleep(10000);
    }
    f = fopen(conf_path, "w");
    assert_non_null(f);
    fprintf(f, "redis %s\ncache_ttl 60\nlookup_rate 100 100\nlookup_client_rate 5 5\n", sock);
    fclose(f);
    cfg = px_config_load(conf_path, err, sizeof(err));
    assert_non_null(cfg);
    base = event_base_new();
    assert_non_null(base);
    assert_int_equal(px_lookup_init(base, cfg), 0);
    assert_true(loop_until(link_ready));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    px_lookup_shutdown();
    event_base_free(base);
    px_config_free(cfg);
    kill(redis_pid, SIGTERM);
    waitpid(redis_pid, NULL, 0);
    unlink(sock);
    unlink(conf_path);
    return 0;
}

/* ---- delivery with lazy expiry in a waiter's callback ---- */

struct rec {
    int calls, found;
    char id[64];
    const char *err;
};

static struct rec first, second, other;
static char other_key[32];

static void on_other(void *arg, const struct px_lk_value *v, const char *err)
{
    struct rec *r = arg;
    r->calls++;
    r->err = err;
    r->found = err == NULL && v->found;
}

static void on_waiter(void *arg, const struct px_lk_value *v, const char *err)
{
    struct rec *r = arg;
    r->calls++;
    r->err = err;
    r->found = err == NULL && v->found;
    if (r->found && v->sb != NULL)
        snprintf(r->id, sizeof(r->id), "%s", v->sb->id);
    if (r == &first || (first.calls == 0 && r == &second)) {
        /* The first waiter called starts a lookup that lands in the same bucket. */
        px_lookup(PX_LK_SANDBOX, px_str_make(other_key, strlen(other_key)), "192.0.2.9", on_other,
                  &other);
    }
}

static int both_called(void)
{
    return first.calls == 1 && second.calls == 1 && other.calls == 1;
}

static void delivery_survives_expiry_in_callback(void **state)
{
    char k1[64];
    uint64_t want;
    (void)state;

    redis_do("HSET sandbox:sbdel runner_url http://127.0.0.1:9 runner_key rk public 1");
    /* A key of the same bucket: "{kind}:{key}" hashed as lookup.c does. */
    want = fnv("0:sbdel", 7) % NBUCKETS;
    for (unsigned i = 0;; i++) {
        int n = snprintf(other_key, sizeof(other_key), "x%u", i);
        snprintf(k1, sizeof(k1), "0:%s", other_key);
        if (fnv(k1, (size_t)n + 2) % NBUCKETS == want)
            break;
    }
    cfg->cache_ttl = 0; /* an entry expires the second it is stored */
    memset(&first, 0, sizeof(first));
    memset(&second, 0, sizeof(second));
    memset(&other, 0, sizeof(other));
    /* Two askers before the reply: one fetch, two waiters. */
    assert_non_null(px_lookup(PX_LK_SANDBOX, PX_STR("sbdel"), "192.0.2.1", on_waiter, &second));
    assert_non_null(px_lookup(PX_LK_SANDBOX, PX_STR("sbdel"), "192.0.2.2", on_waiter, &first));
    assert_true(loop_until(both_called));
    assert_null(first.err);
    assert_null(second.err);
    assert_int_equal(first.found, 1);
    assert_int_equal(second.found, 1); /* was 0: the entry had been freed under deliver() */
    assert_string_equal(first.id, "sbdel");
    assert_string_equal(second.id, "sbdel");
    cfg->cache_ttl = 60;
}

/* ---- invalidation while the waiters are being called ---- */

static struct rec inv1, inv2;

static void on_inv_waiter(void *arg, const struct px_lk_value *v, const char *err)
{
    struct rec *r = arg;
    r->calls++;
    r->err = err;
    r->found = err == NULL && v->found;
    if (r->found && v->sb != NULL)
        snprintf(r->id, sizeof(r->id), "%s", v->sb->id);
    if (inv1.calls + inv2.calls == 1) /* the first one called */
        px_lookup_invalidate(PX_STR("sandbox:sbinv"));
}

static int inv_called(void)
{
    return inv1.calls == 1 && inv2.calls == 1;
}

static int inv_refetched;
static void on_refetch(void *arg, const struct px_lk_value *v, const char *err)
{
    (void)arg;
    inv_refetched = err == NULL && v->found ? 1 : -1;
}
static int refetch_done(void)
{
    return inv_refetched != 0;
}

static void invalidation_during_delivery(void **state)
{
    unsigned long fetches;
    (void)state;

    redis_do("HSET sandbox:sbinv runner_url http://127.0.0.1:9 runner_key rk public 1");
    memset(&inv1, 0, sizeof(inv1));
    memset(&inv2, 0, sizeof(inv2));
    assert_non_null(px_lookup(PX_LK_SANDBOX, PX_STR("sbinv"), "192.0.2.1", on_inv_waiter, &inv1));
    assert_non_null(px_lookup(PX_LK_SANDBOX, PX_STR("sbinv"), "192.0.2.2", on_inv_waiter, &inv2));
    assert_true(loop_until(inv_called));
    assert_int_equal(inv1.found, 1);
    assert_int_equal(inv2.found, 1); /* both get the fetched record */
    assert_string_equal(inv2.id, "sbinv");
    assert_string_equal(inv1.id, "sbinv");
    /* ... but it is not kept: the message arrived after it was read. */
    fetches = px_lookup_stats()->fetches;
    inv_refetched = 0;
    px_lookup(PX_LK_SANDBOX, PX_STR("sbinv"), "192.0.2.1", on_refetch, NULL);
    assert_true(loop_until(refetch_done));
    assert_int_equal(inv_refetched, 1);
    assert_int_equal(px_lookup_stats()->fetches, fetches + 1);
}

/* ---- the miss budget (config: lookup_rate 100 100, lookup_client_rate 5 5) ---- */

static int one_called;
static const char *one_err;
static int one_found;
static void on_one(void *arg, const struct px_lk_value *v, const char *err)
{
    (void)arg;
    one_called = 1;
    one_err = err;
    one_found = err == NULL && v->found;
}
/* One lookup, run to completion; returns its error (NULL: answered). */
static const char *lookup_one(enum px_lk_kind kind, const char *key, const char *client)
{
    one_called = 0;
    px_lookup(kind, px_str_make(key, strlen(key)), client, on_one, NULL);
    while (!one_called)
        event_base_loop(base, EVLOOP_ONCE);
    return one_err;
}

static void budget_charges_what_finds_nothing_per_client(void **state)
{
    char key[64];
    int refused = 0;
    (void)state;

    /* 30 existing sandboxes from one client: never refused (burst is 5). */
    for (int i = 0; i < 30; i++) {
        snprintf(key, sizeof(key), "sbok%d", i);
        redis_do("HSET sandbox:%s runner_url http://127.0.0.1:9 runner_key rk public 1", key);
        assert_null(lookup_one(PX_LK_SANDBOX, key, "198.51.100.1"));
        assert_int_equal(one_found, 1);
    }
    /* Unknown keys from another client: refused after its burst of 5. */
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "nope-a-%d", i);
        if (lookup_one(PX_LK_SANDBOX, key, "198.51.100.2") == px_err_busy)
            refused++;
    }
    assert_in_range(refused, 13, 15); /* 15, less what refills (5/s) on a slow machine */
    /* ... that client now also waits for uncached existing keys; the first does not. */
    assert_ptr_equal(lookup_one(PX_LK_SANDBOX, "sbok-late", "198.51.100.2"), px_err_busy);
    redis_do("HSET sandbox:sbok-late runner_url http://127.0.0.1:9 runner_key rk public 1");
    assert_null(lookup_one(PX_LK_SANDBOX, "sbok-late", "198.51.100.1"));
    assert_int_equal(one_found, 1);
    /* The same IPv6 /64 is one client; another /64 is not. */
    refused = 0;
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "nope-6-%d", i);
        char addr[64];
        snprintf(addr, sizeof(addr), "2001:db8:1:2::%x", i + 1);
        if (lookup_one(PX_LK_SANDBOX, key, addr) == px_err_busy)
            refused++;
    }
    assert_in_range(refused, 3, 5);
    assert_null(lookup_one(PX_LK_SANDBOX, "nope-6-other", "2001:db8:1:3::1"));
}

static void ceiling_bounds_a_flood_from_many_addresses(void **state)
{
    char key[64], addr[64];
    unsigned long nf0 = px_lookup_stats()->notfound;
    int refused = 0;
    (void)state;

    /* 600 addresses, 3 unknown keys each, within well under a second: the process
     * ceiling (100 + newcomer allowance 100, plus refill) bounds what reaches Redis. */
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 600; i++) {
            snprintf(key, sizeof(key), "flood-%d-%d", round, i);
            snprintf(addr, sizeof(addr), "10.%d.%d.1", i / 250, i % 250);
            if (lookup_one(PX_LK_SANDBOX, key, addr) == px_err_busy)
                refused++;
        }
    printf("flood: %lu find-nothing fetches, %d refused\n", px_lookup_stats()->notfound - nf0,
           refused);
    assert_true(refused > 0);
    assert_true(px_lookup_stats()->notfound - nf0 <= 200 + 200 * 2); /* ~2 x rate x (<2 s) */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(delivery_survives_expiry_in_callback),
        cmocka_unit_test(invalidation_during_delivery),
        cmocka_unit_test(budget_charges_what_finds_nothing_per_client),
        cmocka_unit_test(ceiling_bounds_a_flood_from_many_addresses),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* test_auth_sentinel.c — the pure parts of Redis Sentinel support
 * (auth/sentinel_parse.c): configured addresses, master names, and the hostile
 * bytes a sentinel may answer (get-master-addr-by-name, ROLE, +switch-master). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "auth/sentinel_parse.h"

static int addr(const char *s, struct px_sentinel_addr *a)
{
    return px_sentinel_parse_addr(s, strlen(s), a);
}

static void test_addr(void **state)
{
    struct px_sentinel_addr a;
    (void)state;

    assert_int_equal(addr("127.0.0.1:26379", &a), 0);
    assert_string_equal(a.ip, "127.0.0.1");
    assert_int_equal(a.port, 26379);
    assert_int_equal(addr("[::1]:5000", &a), 0);
    assert_string_equal(a.ip, "::1");
    assert_int_equal(a.port, 5000);
    assert_int_equal(addr("fd00::2:1", &a), 0); /* split at the last colon */
    assert_string_equal(a.ip, "fd00::2");
    assert_int_equal(a.port, 1);
    /* a slice: only len bytes count (REDIS_SENTINELS / --sentinel lists) */
    assert_int_equal(px_sentinel_parse_addr("10.0.0.1:7,10.0.0.2:8", 10, &a), 0);
    assert_int_equal(a.port, 7);

    static const char *const bad[] = {
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        ":26379",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:2637x",
        "localhost:1",
        "sentinel-1:26379",
        "[::1]",
        "[]:1",
        "127.0.0.1:000001",
        "1.2.3:1",
        "[127.0.0.1]x:1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (addr(bad[i], &a) == 0)
            fail_msg("accepted \"%s\"", bad[i]);
    char longs[200];
    memset(longs, '1', sizeof(longs));
    memcpy(longs + sizeof(longs) - 3, ":1", 3);
    assert_int_equal(addr(longs, &a), -1);
}

static void test_name(void **state)
{
    (void)state;
    assert_true(px_sentinel_valid_name("mymaster", 8));
    assert_true(px_sentinel_valid_name("a.b_c-D9", 8));
    assert_false(px_sentinel_valid_name("", 0));
    assert_false(px_sentinel_valid_name("my master", 9));
    assert_false(px_sentinel_valid_name("my/master", 9));
    assert_false(px_sentinel_valid_name("m\n", 2));
    char long_name[PX_SENTINEL_NAME_MAX + 1];
    memset(long_name, 'a', sizeof(long_name));
    assert_true(px_sentinel_valid_name(long_name, PX_SENTINEL_NAME_MAX));
    assert_false(px_sentinel_valid_name(long_name, PX_SENTINEL_NAME_MAX + 1));
}

/* Builds replies by hand, as hiredis would hand them over. */
static redisReply str_reply(const char *s, size_t len)
{
    redisReply r = {0};
    r.type = REDIS_REPLY_STRING;
    r.str = (char *)s;
    r.len = len;
    return r;
}

static void test_master_reply(void **state)
{
    struct px_sentinel_addr a;
    redisReply ip = str_reply("10.1.2.3", 8), port = str_reply("6380", 4);
    redisReply *els[3] = {&ip, &port, &port};
    redisReply arr = {0};
    (void)state;

    arr.type = REDIS_REPLY_ARRAY;
    arr.element = els;
    arr.elements = 2;
    assert_int_equal(px_sentinel_parse_master(&arr, &a), 0);
    assert_string_equal(a.ip, "10.1.2.3");
    assert_int_equal(a.port, 6380);

    assert_int_equal(px_sentinel_parse_master(NULL, &a), -1);
    arr.elements = 3;
    assert_int_equal(px_sentinel_parse_master(&arr, &a), -1);
    arr.elements = 1;
    assert_int_equal(px_sentinel_parse_master(&arr, &a), -1);
    arr.elements = 2;
    redisReply nil = {0};
    nil.type = REDIS_REPLY_NIL;
    assert_int_equal(px_sentinel_parse_master(&nil, &a), -1);
    ip = str_reply("localhost", 9); /* a name would block the loop */
    assert_int_equal(px_sentinel_parse_master(&arr, &a), -1);
    ip = str_reply("10.1.2.3\0x", 10); /* NUL inside */
    assert_int_equal(px_sentinel_parse_master(&arr, &a), -1);
    ip = str_reply("10.1.2.3", 8);
    port = str_reply("99999", 5);
    assert_int_equal(px_sentinel_parse_master(&arr, &a), -1);
    port.type = REDIS_REPLY_INTEGER;
    port.integer = 6379;
    assert_int_equal(px_sentinel_parse_master(&arr, &a), -1);
    static char big[4096];
    memset(big, '1', sizeof(big));
    ip = str_reply(big, sizeof(big));
    port = str_reply("6379", 4);
    assert_int_equal(px_sentinel_parse_master(&arr, &a), -1);
}

static void test_role(void **state)
{
    redisReply role = str_reply("master", 6);
    redisReply *els[1] = {&role};
    redisReply arr = {0};
    (void)state;

    arr.type = REDIS_REPLY_ARRAY;
    arr.element = els;
    arr.elements = 1;
    assert_true(px_sentinel_is_master(&arr));
    role = str_reply("slave", 5);
    assert_false(px_sentinel_is_master(&arr));
    role = str_reply("masterx", 7);
    assert_false(px_sentinel_is_master(&arr));
    arr.elements = 0;
    assert_false(px_sentinel_is_master(&arr));
    assert_false(px_sentinel_is_master(NULL));
    role.type = REDIS_REPLY_ERROR;
    arr.elements = 1;
    assert_false(px_sentinel_is_master(&arr));
}

static int sw(const char *s, struct px_sentinel_addr *a)
{
    return px_sentinel_parse_switch(s, strlen(s), "mymaster", a);
}

static void test_switch(void **state)
{
    struct px_sentinel_addr a;
    (void)state;

    assert_int_equal(sw("mymaster 127.0.0.1 6379 127.0.0.2 6380", &a), 0);
    assert_string_equal(a.ip, "127.0.0.2");
    assert_int_equal(a.port, 6380);
    assert_int_equal(sw("other 127.0.0.1 6379 127.0.0.2 6380", &a), 1);
    assert_int_equal(sw("mymaster2 127.0.0.1 6379 127.0.0.2 6380", &a), 1);
    assert_int_equal(sw("mymaster 127.0.0.1 6379 localhost 6380", &a), -1);
    assert_int_equal(sw("mymaster 127.0.0.1 6379 127.0.0.2", &a), -1);
    assert_int_equal(sw("mymaster 127.0.0.1 6379 127.0.0.2 6380 x", &a), -1);
    assert_int_equal(sw("mymaster 127.0.0.1 6379 127.0.0.2 0", &a), -1);
    assert_int_equal(sw("", &a), -1);
    static char big[2000];
    memset(big, 'a', sizeof(big) - 1);
    assert_int_equal(sw(big, &a), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_addr),         cmocka_unit_test(test_name),
        cmocka_unit_test(test_master_reply), cmocka_unit_test(test_role),
        cmocka_unit_test(test_switch),
    };
    return cmocka_run_group_tests_name("auth/sentinel", tests, NULL, NULL);
}

/* test_auth_cookie.c — SHA-256 / HMAC-SHA256 (known vectors, key changes) and
 * the auth cookie of SPEC 4.5 (round trip, tampering, expiry, port binding). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "auth/cookie.h"
#include "auth/digest.h"

static void hex(const unsigned char *md, char out[65])
{
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
}

static void test_sha256_vector(void **state)
{
    (void)state;
    unsigned char md[32];
    char h[65];

    assert_int_equal(px_sha256("abc", 3, md), 0);
    hex(md, h);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* the hex form API keys are stored under */
    assert_int_equal(px_sha256_hex("abc", 3, h), 0);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(px_sha256_hex("", 0, h), 0);
    assert_string_equal(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

/* RFC 4231 test case 2, then another key, then the first again: the kept
 * keyed context must follow the key it is given. */
static void test_hmac_vectors_and_rekey(void **state)
{
    (void)state;
    static const char *jefe = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    unsigned char md[32];
    char h[65];
    const char *msg = "what do ya want for nothing?";

    for (int round = 0; round < 2; round++) {
        assert_int_equal(px_hmac_sha256("Jefe", msg, strlen(msg), md), 0);
        hex(md, h);
        assert_string_equal(h, jefe);
        assert_int_equal(px_hmac_sha256("Jefe", msg, strlen(msg), md), 0); /* reused context */
        hex(md, h);
        assert_string_equal(h, jefe);
        assert_int_equal(px_hmac_sha256("other key", msg, strlen(msg), md), 0);
        hex(md, h);
        assert_string_not_equal(h, jefe);
    }
    /* an empty message and an empty key are still MACs */
    assert_int_equal(px_hmac_sha256("", "", 0, md), 0);
    hex(md, h);
    assert_string_equal(h, "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

static void test_cookie_round_trip(void **state)
{
    (void)state;
    char v[600];
    struct px_str id = PX_STR("sb-1");
    char got[256];
    int n = px_cookie_mint("s3cret", id, 3000, id, 2000, v, sizeof(v));

    assert_true(n > 0);
    assert_memory_equal(v, "v1.sb-1.2000.", 13);
    assert_int_equal(
        px_cookie_verify("s3cret", id, 3000, px_str_make(v, (size_t)n), 1999, got, sizeof(got)), 0);
    assert_string_equal(got, "sb-1");
    /* a sandbox-ID label is not port-bound: the same cookie opens another port */
    assert_int_equal(
        px_cookie_verify("s3cret", id, 8080, px_str_make(v, (size_t)n), 1999, got, sizeof(got)), 0);
    /* expired, other secret, other label */
    assert_int_equal(
        px_cookie_verify("s3cret", id, 3000, px_str_make(v, (size_t)n), 2000, got, sizeof(got)),
        -1);
    assert_int_equal(
        px_cookie_verify("other", id, 3000, px_str_make(v, (size_t)n), 1999, got, sizeof(got)), -1);
    assert_int_equal(px_cookie_verify("s3cret", PX_STR("sb-2"), 3000, px_str_make(v, (size_t)n),
                                      1999, got, sizeof(got)),
                     -1);
}

static void test_cookie_tampered(void **state)
{
    (void)state;
    char v[600], t[600];
    struct px_str id = PX_STR("sb-1");
    char got[256];
    int n = px_cookie_mint("s3cret", id, 3000, id, 2000, v, sizeof(v));

    assert_true(n > 0);
    for (int i = 0; i < n; i++) { /* every single-byte change is refused */
        memcpy(t, v, (size_t)n);
        t[i] = t[i] == 'A' ? 'B' : 'A';
        assert_int_equal(
            px_cookie_verify("s3cret", id, 3000, px_str_make(t, (size_t)n), 1000, got, sizeof(got)),
            -1);
    }
    /* a longer expiry with the old mac */
    snprintf(t, sizeof(t), "v1.sb-1.9999%s", v + strlen("v1.sb-1.2000"));
    assert_int_equal(
        px_cookie_verify("s3cret", id, 3000, px_str_make(t, strlen(t)), 1000, got, sizeof(got)),
        -1);
    assert_int_equal(px_cookie_verify("s3cret", id, 3000, PX_STR("v1..."), 1000, got, sizeof(got)),
                     -1);
    assert_int_equal(px_cookie_verify("s3cret", id, 3000, PX_STR(""), 1000, got, sizeof(got)), -1);
}

/* A cookie minted for a signed-token label opens only the token's port. */
static void test_cookie_token_label_port_bound(void **state)
{
    (void)state;
    char v[600];
    struct px_str label = PX_STR("abcdefgh12345678"), id = PX_STR("sb-1");
    char got[256];
    int n = px_cookie_mint("s3cret", label, 3000, id, 2000, v, sizeof(v));

    assert_true(n > 0);
    assert_int_equal(
        px_cookie_verify("s3cret", label, 3000, px_str_make(v, (size_t)n), 1000, got, sizeof(got)),
        0);
    assert_string_equal(got, "sb-1");
    assert_int_equal(
        px_cookie_verify("s3cret", label, 22222, px_str_make(v, (size_t)n), 1000, got, sizeof(got)),
        -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_vector),
        cmocka_unit_test(test_hmac_vectors_and_rekey),
        cmocka_unit_test(test_cookie_round_trip),
        cmocka_unit_test(test_cookie_tampered),
        cmocka_unit_test(test_cookie_token_label_port_bound),
    };
    return cmocka_run_group_tests_name("auth/cookie", tests, NULL, NULL);
}

/* test_auth_fileurl.c — signed toolbox file URLs (SPEC 4.7, DAYTONA-API.md §7):
 * the four test vectors, which requests qualify, the checks before the key,
 * and verification (tampering, wrong method, escapes, constant-time compare). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "auth/fileurl.h"

#define KEY "testsigningkey1234567890abcdefgh"
#define NOW 1781234000L

static const struct {
    const char *method, *path, *expires, *signature;
} vectors[] = {
    {"GET", "/home/user/report.pdf", "1781234567",
     "v1_QXoy36mypac2FAv33L7jnN44GEUx8KrdwT0vuKgKiQg"},
    {"GET", "/home/user/report.pdf", "0", "v1_lpj67Q-1iHxBviass5MZhGs36X80uk3DgCaRjjmyPrk"},
    {"POST", "/tmp/incoming/data.bin", "1781234567",
     "v1_CziiRdFkC9asB7q1mi0-fDvvwkpTxcI7yR8N35ht9Vw"},
    {"GET", "/path with spaces/f.txt", "1900000000",
     "v1_GynMaKcifGfdmrBJHusa_ucAXowjZ_g4KP6lcMJ4WXE"},
};

static struct px_str str(const char *s)
{
    return px_str_make(s, strlen(s));
}

static void test_vectors_sign(void **state)
{
    (void)state;
    char out[PX_FILEURL_SIG_MAX];

    for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
        size_t n = px_fileurl_sign(str(KEY), vectors[i].method, str(vectors[i].path),
                                   str(vectors[i].expires), out);
        assert_int_equal(n, strlen(vectors[i].signature));
        assert_string_equal(out, vectors[i].signature);
    }
}

/* Matches and checks the request "METHOD rest" at NOW; returns the verdict of
 * check, then verify with key. -1 when it is not a signed file URL. */
static int decide(const char *method, const char *rest, const char *key)
{
    struct px_fileurl f;
    enum px_fileurl_verdict v;

    if (!px_fileurl_match(str(method), str(rest), &f))
        return -1;
    if ((v = px_fileurl_check(&f, NOW)) != PX_FILEURL_OK)
        return (int)v;
    return (int)px_fileurl_verify(&f, str(key));
}

static void test_vectors_verify_as_urls(void **state)
{
    (void)state;
    /* the SDK's encoding: quote_plus, so '/' as %2F and spaces as '+' */
    assert_int_equal(decide("GET",
                            "/files/download?path=%2Fhome%2Fuser%2Freport.pdf&expires=1781234567"
                            "&signature=v1_QXoy36mypac2FAv33L7jnN44GEUx8KrdwT0vuKgKiQg",
                            KEY),
                     PX_FILEURL_OK);
    assert_int_equal(
        decide("HEAD",
               "/files/download?signature=v1_lpj67Q-1iHxBviass5MZhGs36X80uk3DgCaRjjmyPrk"
               "&expires=0&path=/home/user/report.pdf",
               KEY),
        PX_FILEURL_OK);
    assert_int_equal(decide("POST",
                            "/files/upload-v2?path=/tmp/incoming/data.bin&expires=1781234567"
                            "&signature=v1_CziiRdFkC9asB7q1mi0-fDvvwkpTxcI7yR8N35ht9Vw&x=1",
                            KEY),
                     PX_FILEURL_OK);
    assert_int_equal(decide("GET",
                            "/files/download?path=%2Fpath+with+spaces%2Ff.txt&expires=1900000000"
                            "&signature=v1_GynMaKcifGfdmrBJHusa_ucAXowjZ_g4KP6lcMJ4WXE",
                            KEY),
                     PX_FILEURL_OK);
    assert_int_equal(decide("GET",
                            "/files/download?path=/path%20with%20spaces/f.txt&expires=1900000000"
                            "&signature=v1_GynMaKcifGfdmrBJHusa_ucAXowjZ_g4KP6lcMJ4WXE",
                            KEY),
                     PX_FILEURL_OK);
    /* a percent-encoded signature is decoded too */
    assert_int_equal(decide("GET",
                            "/files/download?path=/home/user/report.pdf&expires=0"
                            "&signature=v1%5Flpj67Q-1iHxBviass5MZhGs36X80uk3DgCaRjjmyPrk",
                            KEY),
                     PX_FILEURL_OK);
}

static void test_which_requests(void **state)
{
    (void)state;
    struct px_fileurl f;
    const char *q = "?path=/a&expires=0&signature=v1_x";
    char buf[200];

#define MATCH(m, p)                                                                                \
    (snprintf(buf, sizeof(buf), "%s%s", (p), q), px_fileurl_match(str(m), str(buf), &f))
    assert_true(MATCH("GET", "/files/download"));
    assert_string_equal(f.method, "GET");
    assert_true(MATCH("HEAD", "/files/download"));
    assert_string_equal(f.method, "GET");
    assert_true(MATCH("POST", "/files/upload-v2"));
    assert_string_equal(f.method, "POST");
    assert_false(MATCH("POST", "/files/download"));
    assert_false(MATCH("GET", "/files/upload-v2"));
    assert_false(MATCH("PUT", "/files/upload-v2"));
    assert_false(MATCH("get", "/files/download"));
    assert_false(MATCH("GET", "/files/download/"));  /* no trailing slash */
    assert_false(MATCH("GET", "/files/%64ownload")); /* escaped form compared */
    assert_false(MATCH("GET", "/files/download/x"));
    assert_false(MATCH("GET", "/files/upload"));
    assert_false(MATCH("GET", "/Files/download"));
#undef MATCH
    /* only with a non-empty signature */
    assert_false(px_fileurl_match(str("GET"), str("/files/download?path=/a&expires=0"), &f));
    assert_false(px_fileurl_match(str("GET"), str("/files/download?path=/a&signature="), &f));
    assert_false(px_fileurl_match(str("GET"), str("/files/download?path=/a&signature"), &f));
    assert_false(px_fileurl_match(str("GET"), str("/files/download"), &f));
    assert_false(px_fileurl_match(str("GET"), str("/files/download?xsignature=v1_a"), &f));
    assert_true(px_fileurl_match(str("GET"), str("/files/download?signature=v1_a"), &f));
    assert_false(f.has_path);
    assert_false(f.has_expires);
}

static void test_checks_before_the_key(void **state)
{
    (void)state;
    const char *sig = "&signature=v1_QXoy36mypac2FAv33L7jnN44GEUx8KrdwT0vuKgKiQg";
    char buf[300];

#define D(m, q)                                                                                    \
    (snprintf(buf, sizeof(buf), "/files/download?%s%s", (q), sig), decide((m), buf, KEY))
    assert_int_equal(D("GET", "path=/home/user/report.pdf&expires=1781234567"), PX_FILEURL_OK);
    assert_int_equal(D("GET", "expires=1781234567"), PX_FILEURL_NO_PATH);
    assert_int_equal(D("GET", "path=&expires=1781234567"), PX_FILEURL_NO_PATH);
    assert_int_equal(D("GET", "path=%zz&expires=1781234567"), PX_FILEURL_NO_PATH);
    assert_int_equal(D("GET", "path=/home/user/report.pdf"), PX_FILEURL_BAD_EXPIRES);
    assert_int_equal(D("GET", "path=/home/user/report.pdf&expires="), PX_FILEURL_BAD_EXPIRES);
    assert_int_equal(D("GET", "path=/home/user/report.pdf&expires=abc"), PX_FILEURL_BAD_EXPIRES);
    assert_int_equal(D("GET", "path=/home/user/report.pdf&expires=1.5"), PX_FILEURL_BAD_EXPIRES);
    assert_int_equal(D("GET", "path=/home/user/report.pdf&expires=-1"), PX_FILEURL_BAD_EXPIRES);
    assert_int_equal(D("GET", "path=/home/user/report.pdf&expires=+1781234567"),
                     PX_FILEURL_BAD_EXPIRES);
    assert_int_equal(D("GET", "path=/home/user/report.pdf&expires=99999999999999999999"),
                     PX_FILEURL_BAD_EXPIRES);
    assert_int_equal(D("GET", "path=/home/user/report.pdf&expires=1781233999"), PX_FILEURL_EXPIRED);
    /* at NOW exactly it still works */
    struct px_fileurl f;
    assert_true(px_fileurl_match(
        str("GET"), str("/files/download?path=/a&expires=1781234000&signature=v1_a"), &f));
    assert_int_equal(px_fileurl_check(&f, NOW), PX_FILEURL_OK);
    assert_int_equal(px_fileurl_check(&f, NOW + 1), PX_FILEURL_EXPIRED);
#undef D
    assert_int_equal(
        decide("GET", "/files/download?path=/a&expires=0&signature=QXoy36mypac2FAv33L7jnN44", KEY),
        PX_FILEURL_SCHEME);
    assert_int_equal(decide("GET", "/files/download?path=/a&expires=0&signature=v2_abc", KEY),
                     PX_FILEURL_SCHEME);
}

static void test_tampering(void **state)
{
    (void)state;
#define GOOD "v1_QXoy36mypac2FAv33L7jnN44GEUx8KrdwT0vuKgKiQg"
    const char *cases[] = {
        "GET /files/download?path=/home/user/report.pdx&expires=1781234567&signature=" GOOD,
        "GET /files/download?path=/home/user/report.pdf&expires=1781234568&signature=" GOOD,
        "GET /files/download?path=/home/user/report.pdf&expires=01781234567&signature=" GOOD,
        "POST /files/upload-v2?path=/home/user/report.pdf&expires=1781234567&signature=" GOOD,
        "GET /files/download?path=/home/user/report.pdf&expires=1781234567&signature="
        "v1_QXoy36mypac2FAv33L7jnN44GEUx8KrdwT0vuKgKiQh",
        "GET /files/download?path=/home/user/report.pdf&expires=1781234567&signature="
        "v1_QXoy36mypac2FAv33L7jnN44GEUx8KrdwT0vuKgKiQ",
        "GET /files/download?path=/home/user/report.pdf&expires=1781234567&signature="
        "v1_QXoy36mypac2FAv33L7jnN44GEUx8KrdwT0vuKgKiQg=",
        "GET /files/download?path=/home/user/report.pdf&expires=1781234567&signature="
        "v1_QXoy36mypac2FAv33L7jnN44GEUx8KrdwT0vuKgKiQg%3D",
        "GET /files/download?path=/home/user/report.pdf&expires=1781234567&signature="
        "v1_QXoy36mypac2FAv33L7jnN44GEUx8KrdwT0vuKgKiQg%zz",
        "GET /files/download?path=/home/user/report.pdf&expires=1781234567&signature=v1_!!!",
        "GET /files/download?path=/home/user/report.pdf&expires=1781234567&signature=v1_",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *sp = strchr(cases[i], ' ');
        char m[8];
        snprintf(m, sizeof(m), "%.*s", (int)(sp - cases[i]), cases[i]);
        assert_int_equal(decide(m, sp + 1, KEY), PX_FILEURL_MISMATCH);
    }
    /* another key */
    assert_int_equal(decide("GET",
                            "/files/download?path=/home/user/report.pdf&expires=1781234567"
                            "&signature=" GOOD,
                            "testsigningkey1234567890abcdefgX"),
                     PX_FILEURL_MISMATCH);
    /* the same URL with the right key still works */
    assert_int_equal(decide("GET",
                            "/files/download?path=/home/user/report.pdf&expires=1781234567"
                            "&signature=" GOOD,
                            KEY),
                     PX_FILEURL_OK);
#undef GOOD
}

static void test_unescape(void **state)
{
    (void)state;
    char out[64];

    assert_int_equal(px_fileurl_unescape(str("a%2Fb+c%20d"), out), 7);
    assert_memory_equal(out, "a/b c d", 7);
    assert_int_equal(px_fileurl_unescape(str("%41%6a"), out), 2);
    assert_memory_equal(out, "Aj", 2);
    assert_int_equal(px_fileurl_unescape(str("%"), out), -1);
    assert_int_equal(px_fileurl_unescape(str("%4"), out), -1);
    assert_int_equal(px_fileurl_unescape(str("x%4g"), out), -1);
    assert_int_equal(px_fileurl_unescape(str(""), out), 0);
    assert_int_equal(px_fileurl_unescape(str("%00"), out), 1);
    assert_int_equal(out[0], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors_sign),   cmocka_unit_test(test_vectors_verify_as_urls),
        cmocka_unit_test(test_which_requests), cmocka_unit_test(test_checks_before_the_key),
        cmocka_unit_test(test_tampering),      cmocka_unit_test(test_unescape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

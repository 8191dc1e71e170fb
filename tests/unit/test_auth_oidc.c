/* test_auth_oidc.c — the pure parts of the OIDC login (auth/oidc.c): the PKCE
 * challenge (RFC 7636 appendix B), Daytona's state encoding (padded and
 * unpadded read), returnTo safety, which requests are navigations, the
 * Cache-Control TTL, the ID-token claim checks, and JWS verification with
 * tokens signed here by libcjose (RS256, ES256; none, HS256, unknown kids,
 * key/alg mismatches and tampering refused). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjose/cjose.h>
#include <cmocka.h>

#include "auth/oidc.h"
#include "proxy/h1.h"

static void test_challenge_rfc7636(void **state)
{
    char out[44];
    (void)state;
    /* RFC 7636 appendix B: the verifier is base64url of the octets listed
     * there (it ends in "FWFOEjXk"; copies of it often carry a typo) */
    assert_int_equal(px_oidc_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", out), 0);
    assert_string_equal(out, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
}

static void test_state_roundtrip(void **state)
{
    char *rt, *sb, *in;
    char *s = px_oidc_state_encode("http://3000-sb1.proxy.test/a?b=c", "sb1",
                                   "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=");
    (void)state;
    assert_non_null(s);
    assert_int_equal(strlen(s) % 4, 0); /* padded */
    assert_int_equal(px_oidc_state_decode(px_str_make(s, strlen(s)), &rt, &sb, &in), 0);
    assert_string_equal(rt, "http://3000-sb1.proxy.test/a?b=c");
    assert_string_equal(sb, "sb1");
    assert_string_equal(in, "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=");
    free(rt), free(sb), free(in);
    /* the same without its padding */
    size_t n = strlen(s);
    while (s[n - 1] == '=')
        n--;
    assert_int_equal(px_oidc_state_decode(px_str_make(s, n), &rt, &sb, &in), 0);
    assert_string_equal(sb, "sb1");
    free(rt), free(sb), free(in);
    free(s);
}

static void test_state_bad(void **state)
{
    char *rt, *sb, *in;
    /* {"returnTo":"x","sandboxId":"","state":"s"}: an empty sandboxId */
    const char *empty = "eyJyZXR1cm5UbyI6IngiLCJzYW5kYm94SWQiOiIiLCJzdGF0ZSI6InMifQ==";
    /* {"returnTo":"x","state":"s"}: no sandboxId */
    const char *missing = "eyJyZXR1cm5UbyI6IngiLCJzdGF0ZSI6InMifQ==";
    const char *bad[] = {
        "",    "!!!!", "e30=",  "bm90IGpzb24=",
        "eyJ", empty,  missing, "eyJyZXR1cm5UbyI6IngiLCJzYW5kYm94SWQiOjEsInN0YXRlIjoicyJ9"};
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(px_oidc_state_decode(px_str_make(bad[i], strlen(bad[i])), &rt, &sb, &in),
                         -1);
        assert_null(rt);
    }
}

static void test_return_safe(void **state)
{
    struct px_config cfg;
    struct px_domain custom = {.host = "app.example.com", .sandbox = "sb1", .port = 3000};
    struct {
        const char *url;
        int safe;
    } cases[] = {
        {"http://3000-sb1.proxy.test/", 1},
        {"https://3000-sb1.proxy.test/a?b=c#f", 1},
        {"http://8080-other.proxy.test:4000/x", 1},
        {"http://app.example.com/", 1},
        {"http://APP.example.com:8443/", 1},
        {"http://evil.example/", 0},
        {"//evil.example/", 0},
        {"/relative", 0},
        {"http://3000-sb1.proxy.test\\@evil.example/", 0},
        {"http://3000-sb1.proxy.test.evil.example/", 0},
        {"http://user@3000-sb1.proxy.test/", 0},
        {"http://proxy.test/callback", 0},
        {"javascript:alert(1)", 0},
        {"http://3000-sb1.proxy.test/\r\nX: y", 0},
        {"ftp://3000-sb1.proxy.test/", 0},
        {"http://3000-sb1.other.test/", 0},
    };
    (void)state;
    memset(&cfg, 0, sizeof(cfg));
    cfg.domains[0] = "proxy.test";
    cfg.ndomains = 1;
    cfg.custom_domains = &custom;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (px_oidc_return_safe(&cfg, cases[i].url, "proxy.test:4000") != cases[i].safe)
            fail_msg("returnTo %s: expected %s", cases[i].url, cases[i].safe ? "safe" : "unsafe");
    }
    /* without configured domains the callback's own host is the base */
    cfg.ndomains = 0;
    assert_int_equal(px_oidc_return_safe(&cfg, "http://3000-sb1.proxy.test/", "proxy.test"), 1);
    assert_int_equal(px_oidc_return_safe(&cfg, "http://3000-sb1.evil.test/", "proxy.test"), 0);
}

static int nav(const char *head)
{
    struct px_head h = {0};
    int status, r;
    const char *why;

    assert_int_equal(px_h1_parse_request(&h, head, strlen(head), 100, &status, &why), 0);
    r = px_oidc_is_navigation(&h);
    px_head_free(&h);
    return r;
}

static void test_navigation(void **state)
{
    (void)state;
    assert_true(nav("GET / HTTP/1.1\r\nHost: a\r\nSec-Fetch-Mode: navigate\r\n\r\n"));
    assert_true(nav("HEAD / HTTP/1.1\r\nHost: a\r\nAccept: text/html,*/*\r\n\r\n"));
    assert_true(
        nav("GET / HTTP/1.1\r\nHost: a\r\nAccept: application/xhtml+xml, TEXT/HTML\r\n\r\n"));
    assert_false(
        nav("GET / HTTP/1.1\r\nHost: a\r\nSec-Fetch-Mode: cors\r\nAccept: text/html\r\n\r\n"));
    assert_false(nav("GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"));
    assert_false(nav("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert_false(
        nav("POST / HTTP/1.1\r\nHost: a\r\nSec-Fetch-Mode: navigate\r\nContent-Length: 0\r\n\r\n"));
    assert_false(nav("GET / HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nConnection: Upgrade\r\n"
                     "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n"));
}

static int ttl(const char *cc)
{
    struct px_head h = {0};
    char buf[256];
    const char *why;
    int r;

    snprintf(buf, sizeof(buf), "HTTP/1.1 200 OK\r\n%s%s%sContent-Length: 0\r\n\r\n",
             cc ? "Cache-Control: " : "", cc ? cc : "", cc ? "\r\n" : "");
    assert_int_equal(px_h1_parse_response(&h, buf, strlen(buf), 100, &why), 0);
    r = px_oidc_ttl(&h);
    px_head_free(&h);
    return r;
}

static void test_ttl(void **state)
{
    (void)state;
    assert_int_equal(ttl(NULL), PX_OIDC_TTL_DEFAULT);
    assert_int_equal(ttl("public, max-age=600"), 600);
    assert_int_equal(ttl("max-age=5"), PX_OIDC_TTL_MIN);
    assert_int_equal(ttl("max-age=99999999999999"), PX_OIDC_TTL_MAX);
    assert_int_equal(ttl("no-store"), PX_OIDC_TTL_MIN);
    assert_int_equal(ttl("max-age=abc"), PX_OIDC_TTL_DEFAULT);
    assert_int_equal(px_oidc_ttl(NULL), PX_OIDC_TTL_DEFAULT);
}

#define ISS "https://idp.test"
#define CID "proxy-test"
#define NOW 1800000000L

static json_t *claims(void)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:s}", "iss", ISS, "sub", "alice", "aud", CID,
                     "exp", (json_int_t)(NOW + 300), "iat", (json_int_t)NOW, "nonce", "n-1", "org",
                     "o1");
}

static void test_claims(void **state)
{
    const char *why;
    json_t *c;
    (void)state;

    c = claims();
    assert_int_equal(px_oidc_check_claims(c, ISS, CID, "n-1", NOW, &why), 0);
    assert_int_equal(px_oidc_check_claims(c, ISS "/", CID, "n-1", NOW, &why), -1); /* iss exact */
    assert_int_equal(px_oidc_check_claims(c, ISS, "other-client", "n-1", NOW, &why), -1);
    assert_int_equal(px_oidc_check_claims(c, ISS, CID, "n-2", NOW, &why), -1);
    assert_int_equal(px_oidc_check_claims(c, ISS, CID, NULL, NOW, &why), -1);
    /* exp with 60 s of leeway */
    assert_int_equal(px_oidc_check_claims(c, ISS, CID, "n-1", NOW + 300 + 59, &why), 0);
    assert_int_equal(px_oidc_check_claims(c, ISS, CID, "n-1", NOW + 300 + 60, &why), -1);
    assert_string_equal(why, "the ID token has expired");
    /* nbf with 60 s of leeway */
    json_object_set_new(c, "nbf", json_integer(NOW + 100));
    assert_int_equal(px_oidc_check_claims(c, ISS, CID, "n-1", NOW, &why), -1);
    assert_int_equal(px_oidc_check_claims(c, ISS, CID, "n-1", NOW + 40, &why), 0);
    json_object_del(c, "nbf");
    /* aud as an array: must hold the client; several need azp = client */
    json_object_set_new(c, "aud", json_pack("[s]", CID));
    assert_int_equal(px_oidc_check_claims(c, ISS, CID, "n-1", NOW, &why), 0);
    json_object_set_new(c, "aud", json_pack("[s,s]", "api", CID));
    assert_int_equal(px_oidc_check_claims(c, ISS, CID, "n-1", NOW, &why), -1);
    json_object_set_new(c, "azp", json_string(CID));
    assert_int_equal(px_oidc_check_claims(c, ISS, CID, "n-1", NOW, &why), 0);
    json_object_set_new(c, "aud", json_pack("[s,s]", "api", "other"));
    assert_int_equal(px_oidc_check_claims(c, ISS, CID, "n-1", NOW, &why), -1);
    json_object_set_new(c, "aud", json_integer(1));
    assert_int_equal(px_oidc_check_claims(c, ISS, CID, "n-1", NOW, &why), -1);
    json_object_set_new(c, "aud", json_string(CID));
    json_object_del(c, "exp"); /* exp is required */
    assert_int_equal(px_oidc_check_claims(c, ISS, CID, "n-1", NOW, &why), -1);
    json_decref(c);
}

/* A compact JWS over claims with header {alg, kid}, signed by key. */
static char *sign(cjose_jwk_t *key, const char *alg, const char *kid, json_t *c)
{
    cjose_err err;
    cjose_header_t *hdr = cjose_header_new(&err);
    char *payload = json_dumps(c, JSON_COMPACT), *out;
    const char *ser;
    cjose_jws_t *jws;

    cjose_header_set(hdr, CJOSE_HDR_ALG, alg, &err);
    if (kid != NULL)
        cjose_header_set(hdr, CJOSE_HDR_KID, kid, &err);
    jws = cjose_jws_sign(key, hdr, (const uint8_t *)payload, strlen(payload), &err);
    assert_non_null(jws);
    assert_true(cjose_jws_export(jws, &ser, &err));
    out = strdup(ser);
    cjose_jws_release(jws);
    cjose_header_release(hdr);
    free(payload);
    return out;
}

/* {"keys":[public parts of the given keys]} */
static char *jwks_of(cjose_jwk_t **keys, int n)
{
    cjose_err err;
    json_t *arr = json_array(), *doc;
    char *out;

    for (int i = 0; i < n; i++) {
        char *pub = cjose_jwk_to_json(keys[i], false, &err);
        json_array_append_new(arr, json_loads(pub, 0, NULL));
        free(pub);
    }
    doc = json_pack("{s:o}", "keys", arr);
    out = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return out;
}

static void test_verify_jwt(void **state)
{
    cjose_err err;
    static const uint8_t e[] = {1, 0, 1};
    cjose_jwk_t *rsa = cjose_jwk_create_RSA_random(2048, e, sizeof(e), &err);
    cjose_jwk_t *ec = cjose_jwk_create_EC_random(CJOSE_JWK_EC_P_256, &err);
    cjose_jwk_t *rsa2 = cjose_jwk_create_RSA_random(2048, e, sizeof(e), &err);
    cjose_jwk_t *oct = cjose_jwk_create_oct_random(32, &err);
    cjose_jwk_t *both[2] = {rsa, ec};
    struct px_oidc_keyset ks;
    json_t *c = claims(), *got;
    const char *why;
    int unknown;
    char *jwks, *t;
    (void)state;

    assert_non_null(rsa);
    assert_non_null(ec);
    cjose_jwk_set_kid(rsa, "rsa-1", 5, &err);
    cjose_jwk_set_kid(ec, "ec-1", 4, &err);
    cjose_jwk_set_kid(rsa2, "rsa-2", 5, &err);
    jwks = jwks_of(both, 2);
    assert_int_equal(px_oidc_jwks_parse(jwks, strlen(jwks), &ks), 0);
    assert_int_equal(ks.n, 2);
    free(jwks);

    /* RS256 and ES256 verify, and give the claims */
    t = sign(rsa, "RS256", "rsa-1", c);
    got = px_oidc_verify_jwt(t, strlen(t), &ks, &why, &unknown);
    assert_non_null(got);
    assert_string_equal(json_string_value(json_object_get(got, "org")), "o1");
    assert_int_equal(px_oidc_check_claims(got, ISS, CID, "n-1", NOW, &why), 0);
    json_decref(got);
    /* one flipped byte in the signature */
    t[strlen(t) - 5] = t[strlen(t) - 5] == 'A' ? 'B' : 'A';
    assert_null(px_oidc_verify_jwt(t, strlen(t), &ks, &why, &unknown));
    assert_int_equal(unknown, 0);
    free(t);
    t = sign(ec, "ES256", "ec-1", c);
    got = px_oidc_verify_jwt(t, strlen(t), &ks, &why, &unknown);
    assert_non_null(got);
    json_decref(got);
    free(t);

    /* a kid not in the set: refused, and said so (the caller may refetch) */
    t = sign(rsa2, "RS256", "rsa-2", c);
    assert_null(px_oidc_verify_jwt(t, strlen(t), &ks, &why, &unknown));
    assert_int_equal(unknown, 1);
    free(t);
    /* a known kid, another key's signature */
    t = sign(rsa2, "RS256", "rsa-1", c);
    assert_null(px_oidc_verify_jwt(t, strlen(t), &ks, &why, &unknown));
    assert_int_equal(unknown, 0);
    free(t);
    /* RS256 claimed for the EC key's kid: the alg does not fit the key */
    t = sign(rsa, "RS256", "ec-1", c);
    assert_null(px_oidc_verify_jwt(t, strlen(t), &ks, &why, &unknown));
    assert_string_equal(why, "the ID token's algorithm does not fit its key");
    free(t);
    /* HS256 (even keyed with something the attacker knows) and other algs */
    t = sign(oct, "HS256", "rsa-1", c);
    assert_null(px_oidc_verify_jwt(t, strlen(t), &ks, &why, &unknown));
    assert_string_equal(why, "the ID token's algorithm is not RS256 or ES256");
    free(t);
    t = sign(rsa, "PS256", "rsa-1", c);
    assert_null(px_oidc_verify_jwt(t, strlen(t), &ks, &why, &unknown));
    free(t);
    /* alg none, hand-made: header {"alg":"none","kid":"rsa-1"}, empty signature */
    {
        char *payload = json_dumps(c, JSON_COMPACT), *b64;
        size_t n;
        char none[2048];
        cjose_base64url_encode((const uint8_t *)payload, strlen(payload), &b64, &n, &err);
        snprintf(none, sizeof(none), "eyJhbGciOiJub25lIiwia2lkIjoicnNhLTEifQ.%s.", b64);
        assert_null(px_oidc_verify_jwt(none, strlen(none), &ks, &why, &unknown));
        free(b64);
        free(payload);
    }
    /* garbage */
    assert_null(px_oidc_verify_jwt("a.b.c", 5, &ks, &why, &unknown));
    assert_null(px_oidc_verify_jwt("", 0, &ks, &why, &unknown));

    /* no kid in the token: only with a single key in the set */
    t = sign(rsa, "RS256", NULL, c);
    assert_null(px_oidc_verify_jwt(t, strlen(t), &ks, &why, &unknown));
    px_oidc_keyset_clear(&ks);
    jwks = jwks_of(both, 1);
    assert_int_equal(px_oidc_jwks_parse(jwks, strlen(jwks), &ks), 0);
    got = px_oidc_verify_jwt(t, strlen(t), &ks, &why, &unknown);
    assert_non_null(got);
    json_decref(got);
    free(jwks);
    free(t);
    px_oidc_keyset_clear(&ks);

    /* a JWKS with a private key or an oct key keeps neither */
    {
        char *priv = cjose_jwk_to_json(rsa, true, &err), *octj = cjose_jwk_to_json(oct, true, &err);
        char doc[8192];
        snprintf(doc, sizeof(doc), "{\"keys\":[%s,%s]}", priv, octj);
        assert_int_equal(px_oidc_jwks_parse(doc, strlen(doc), &ks), 0);
        assert_int_equal(ks.n, 0);
        free(priv);
        free(octj);
    }
    assert_int_equal(px_oidc_jwks_parse("{}", 2, &ks), -1);
    assert_int_equal(px_oidc_jwks_parse("nope", 4, &ks), -1);

    json_decref(c);
    cjose_jwk_release(rsa);
    cjose_jwk_release(ec);
    cjose_jwk_release(rsa2);
    cjose_jwk_release(oct);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_challenge_rfc7636),
        cmocka_unit_test(test_state_roundtrip),
        cmocka_unit_test(test_state_bad),
        cmocka_unit_test(test_return_safe),
        cmocka_unit_test(test_navigation),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_claims),
        cmocka_unit_test(test_verify_jwt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

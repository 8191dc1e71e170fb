"""The authentication chain of SPEC 4 in standalone Redis mode (SPEC 3, 4.1-4.5, 5):
API keys, preview tokens, the query key, auth cookies, signed preview hosts,
reserved ports, the toolbox route, unknown sandboxes and the 401 body."""
import time

import pytest

from helpers import RUNNER_KEY, host, raw_exchange, request_bytes, runner_prefix
from redisfix import *  # noqa: F401,F403
from redisfix import (COOKIE_SECRET, add_api_key, add_sandbox, add_signed_token,
                      cookie_mac, json_error, mint_cookie)

PRIV = "sbx-priv-a1"
PUB = "sbx-pub-b2"
OTHER = "sbx-other-c3"          # private, another org
PRIV_TOKEN = "tok-priv-S3CRET-a1a1"
PUB_TOKEN = "tok-pub-S3CRET-b2b2"
OTHER_TOKEN = "tok-other-S3CRET-c3c3"
KEY_OK = "apikey-ok-S3CRET-0001"
KEY_FUTURE = "apikey-future-S3CRET-0002"
KEY_EXPIRED = "apikey-expired-S3CRET-0003"
KEY_OTHER_ORG = "apikey-otherorg-S3CRET-0004"
SIGNED = "sgn7q2w9e4r1t6y3u8i5o0p"   # a signed preview token (a host label)


def hdrs(rec, name):
    name = name.lower()
    return [v for k, v in rec["headers"] if k.lower() == name]


@pytest.fixture
def world(rdb, runner):
    add_sandbox(rdb, PRIV, runner.url, auth_token=PRIV_TOKEN)
    add_sandbox(rdb, PUB, runner.url, auth_token=PUB_TOKEN, public=1)
    add_sandbox(rdb, OTHER, runner.url, auth_token=OTHER_TOKEN, org="org-beta")
    add_api_key(rdb, KEY_OK)
    add_api_key(rdb, KEY_FUTURE, expires=int(time.time()) + 3600)
    add_api_key(rdb, KEY_EXPIRED, expires=int(time.time()) - 10)
    add_api_key(rdb, KEY_OTHER_ORG, org="org-beta")
    return rdb


@pytest.fixture
def px(rproxy, world):
    return rproxy()


def only_request(runner):
    recs = runner.requests()
    assert len(recs) == 1, recs
    return recs[0]


# ------------------------------------------------------------------ 4.1 bearer --

def test_bearer_api_key_of_sandbox_org(px, runner):
    r = px.get("/bearer?x=1", host=host(3000, PRIV), headers={"Authorization": f"Bearer {KEY_OK}"})
    assert r.status_code == 200, r.text
    rec = only_request(runner)
    assert rec["target"] == runner_prefix(PRIV, 3000) + "/bearer?x=1"
    assert rec["auth_ok"] is True
    assert hdrs(rec, "Authorization") == [], "a consumed API key must not reach the runner"


def test_bearer_api_key_with_future_expiry(px, runner):
    r = px.get("/f", host=host(3000, PRIV), headers={"Authorization": f"Bearer {KEY_FUTURE}"})
    assert r.status_code == 200, r.text
    assert hdrs(only_request(runner), "Authorization") == []


def test_bearer_expired_api_key_refused(px, runner):
    r = px.get("/e", host=host(3000, PRIV), headers={"Authorization": f"Bearer {KEY_EXPIRED}"})
    assert r.status_code == 401, r.text
    assert runner.requests() == []


def test_bearer_api_key_of_other_org_refused(px, runner):
    r = px.get("/o", host=host(3000, PRIV), headers={"Authorization": f"Bearer {KEY_OTHER_ORG}"})
    assert r.status_code == 401, r.text
    assert runner.requests() == []
    # ... while it is good for its own org's sandbox
    r = px.get("/o", host=host(3000, OTHER), headers={"Authorization": f"Bearer {KEY_OTHER_ORG}"})
    assert r.status_code == 200, r.text


def test_bearer_unknown_key_refused(px, runner):
    r = px.get("/u", host=host(3000, PRIV), headers={"Authorization": "Bearer not-a-key-S3CRET"})
    assert r.status_code == 401
    assert runner.requests() == []


def test_bearer_is_checked_first(px, runner):
    """A valid API key wins even when a wrong preview token is sent as well."""
    r = px.get("/order", host=host(3000, PRIV), headers={
        "Authorization": f"Bearer {KEY_OK}", "X-Daytona-Preview-Token": "wrong-token"})
    assert r.status_code == 200, r.text
    rec = only_request(runner)
    assert hdrs(rec, "Authorization") == []
    assert hdrs(rec, "X-Daytona-Preview-Token") == []


def test_failed_bearer_falls_through_to_preview_token(px, runner):
    r = px.get("/fall", host=host(3000, PRIV), headers={
        "Authorization": f"Bearer {KEY_OTHER_ORG}", "X-Daytona-Preview-Token": PRIV_TOKEN})
    assert r.status_code == 200, r.text


def test_public_sandbox_forwards_app_authorization(px, runner):
    r = px.get("/app", host=host(3000, PUB), headers={"Authorization": "Bearer app-own-jwt.x.y"})
    assert r.status_code == 200, r.text
    assert hdrs(only_request(runner), "Authorization") == ["Bearer app-own-jwt.x.y"]


def test_public_sandbox_needs_no_credentials(px, runner):
    r = px.get("/pub", host=host(8080, PUB))
    assert r.status_code == 200, r.text
    assert only_request(runner)["target"] == runner_prefix(PUB, 8080) + "/pub"


# ------------------------------------------------------------- 4.2 preview token --

def test_preview_token_header(px, runner):
    r = px.get("/t", host=host(3000, PRIV), headers={"X-Daytona-Preview-Token": PRIV_TOKEN})
    assert r.status_code == 200, r.text
    rec = only_request(runner)
    assert rec["target"] == runner_prefix(PRIV, 3000) + "/t"
    assert hdrs(rec, "X-Daytona-Preview-Token") == []


def test_preview_token_wrong_or_foreign_refused(px, runner):
    for tok in ("wrong", PRIV_TOKEN + "x", PRIV_TOKEN[:-1], OTHER_TOKEN, PRIV_TOKEN.upper()):
        r = px.get("/t", host=host(3000, PRIV), headers={"X-Daytona-Preview-Token": tok})
        assert r.status_code == 401, (tok, r.status_code, r.text)
    assert runner.requests() == []


def test_preview_token_never_forwarded_on_public_sandbox(px, runner):
    r = px.get("/t", host=host(3000, PUB), headers={"X-Daytona-Preview-Token": "anything"})
    assert r.status_code == 200
    assert hdrs(only_request(runner), "X-Daytona-Preview-Token") == []


# ---------------------------------------------------------------- 4.3 query key --

@pytest.mark.parametrize("query,forwarded", [
    ("a=1&DAYTONA_SANDBOX_AUTH_KEY={T}&b=%2F%20x&c", "a=1&b=%2F%20x&c"),
    ("DAYTONA_SANDBOX_AUTH_KEY={T}&z=%7e+1", "z=%7e+1"),
    ("q=a%26b&DAYTONA_SANDBOX_AUTH_KEY={T}", "q=a%26b"),
])
def test_query_key_removed_rest_byte_for_byte(px, runner, query, forwarded):
    target = "/p/a%20b;m=1?" + query.format(T=PRIV_TOKEN)
    r = raw_exchange(px.port, request_bytes("GET", target, host(3000, PRIV)))
    assert r is not None and r.status == 200, r
    rec = only_request(runner)
    assert rec["target"] == runner_prefix(PRIV, 3000) + "/p/a%20b;m=1?" + forwarded
    assert PRIV_TOKEN not in repr(rec)


def test_query_key_alone_leaves_no_auth_in_target(px, runner):
    r = raw_exchange(px.port, request_bytes("GET", f"/only?DAYTONA_SANDBOX_AUTH_KEY={PRIV_TOKEN}",
                                            host(3000, PRIV)))
    assert r is not None and r.status == 200, r
    assert only_request(runner)["target"] in (runner_prefix(PRIV, 3000) + "/only",
                                              runner_prefix(PRIV, 3000) + "/only?")


def test_query_key_sets_sandbox_cookie_that_then_works_alone(px, runner):
    t0 = int(time.time())
    r = raw_exchange(px.port, request_bytes("GET", f"/q?DAYTONA_SANDBOX_AUTH_KEY={PRIV_TOKEN}",
                                            host(3000, PRIV)))
    assert r is not None and r.status == 200, r
    cookies = [v for v in r.header_all("Set-Cookie") if v.startswith(f"daytona-sandbox-auth-{PRIV}=")]
    assert len(cookies) == 1, r.headers
    value = cookies[0].split(";")[0].split("=", 1)[1]
    v1, sid, exp, mac = value.split(".")
    assert (v1, sid) == ("v1", PRIV)
    assert t0 + 3600 - 2 <= int(exp) <= int(time.time()) + 3600 + 2
    assert mac == cookie_mac(PRIV, PRIV, exp)
    r = px.get("/again", host=host(3000, PRIV),
               headers={"Cookie": f"daytona-sandbox-auth-{PRIV}={value}"})
    assert r.status_code == 200, r.text


def test_query_key_wrong_refused(px, runner):
    r = raw_exchange(px.port, request_bytes("GET", "/q?DAYTONA_SANDBOX_AUTH_KEY=nope",
                                            host(3000, PRIV)))
    assert r is not None and r.status == 401, r
    assert r.header_all("Set-Cookie") == []
    assert runner.requests() == []


# -------------------------------------------------------------------- 4.4 cookie --

def test_minted_cookie_for_sandbox_label_accepted_and_not_forwarded(px, runner):
    cookie = mint_cookie(PRIV, PRIV)
    r = px.get("/c", host=host(3000, PRIV), headers={
        "Cookie": f"app=1; daytona-sandbox-auth-{PRIV}={cookie}; daytona-preview-page-accepted=true; theme=dark"})
    assert r.status_code == 200, r.text
    rec = only_request(runner)
    assert rec["target"] == runner_prefix(PRIV, 3000) + "/c"
    cookie_hdr = "; ".join(hdrs(rec, "Cookie"))
    assert "daytona-sandbox-auth" not in cookie_hdr
    assert "daytona-preview-page-accepted" not in cookie_hdr
    assert "app=1" in cookie_hdr and "theme=dark" in cookie_hdr


def test_proxy_cookies_not_forwarded_on_public_sandbox(px, runner):
    r = px.get("/c", host=host(3000, PUB), headers={
        "Cookie": f"daytona-sandbox-auth-{PUB}=junk; daytona-sandbox-auth-other=x; keep=yes"})
    assert r.status_code == 200
    assert "; ".join(hdrs(only_request(runner), "Cookie")) == "keep=yes"


def test_cookie_minted_with_other_secret_refused(px, runner):
    cookie = mint_cookie(PRIV, PRIV, secret="some-other-secret")
    r = px.get("/c", host=host(3000, PRIV), headers={"Cookie": f"daytona-sandbox-auth-{PRIV}={cookie}"})
    assert r.status_code == 401


def test_cookie_for_other_sandbox_label_refused(px, runner):
    """A cookie issued for OTHER's host, renamed for PRIV's host, does not verify."""
    cookie = mint_cookie(OTHER, OTHER)
    r = px.get("/c", host=host(3000, PRIV), headers={"Cookie": f"daytona-sandbox-auth-{PRIV}={cookie}"})
    assert r.status_code == 401
    # nor under its own name on the wrong host
    r = px.get("/c", host=host(3000, PRIV), headers={"Cookie": f"daytona-sandbox-auth-{OTHER}={cookie}"})
    assert r.status_code == 401
    assert runner.requests() == []


# ---------------------------------------------------------- 4.5 signed preview --

def test_signed_preview_host(px, runner, world):
    add_signed_token(world, 3000, SIGNED, PRIV, ttl=120)
    t0 = int(time.time())
    r = px.get("/signed/page?x=1", host=host(3000, SIGNED))
    assert r.status_code == 200, r.text
    rec = only_request(runner)
    assert rec["target"] == runner_prefix(PRIV, 3000) + "/signed/page?x=1"
    assert rec["auth_ok"] is True
    sc = [v for v in r.raw.headers.getlist("Set-Cookie")
          if v.startswith(f"daytona-sandbox-auth-{SIGNED}=")]
    assert len(sc) == 1, r.headers
    parts = [p.strip() for p in sc[0].split(";")]
    value = parts[0].split("=", 1)[1]
    attrs = {p.split("=", 1)[0].lower(): (p.split("=", 1)[1] if "=" in p else True) for p in parts[1:]}
    assert attrs.get("max-age") == "3600", sc
    assert attrs.get("path") == "/", sc
    assert attrs.get("httponly") is True, sc
    assert attrs.get("samesite", "").lower() == "lax", sc
    assert "secure" not in attrs, sc
    assert attrs.get("domain", "").lower().lstrip(".") == host(3000, SIGNED), sc
    v1, sid, exp, mac = value.split(".")
    assert (v1, sid) == ("v1", PRIV)
    assert t0 + 3600 - 2 <= int(exp) <= int(time.time()) + 3600 + 2
    assert mac == cookie_mac(SIGNED, PRIV, exp)


def test_signed_token_bound_to_its_port(px, runner, world):
    add_signed_token(world, 3000, SIGNED, PRIV)
    for port in (3001, 30000, 2280, 22222):
        r = px.get("/p", host=host(port, SIGNED))
        assert r.status_code == 401, (port, r.status_code, r.text)
    assert runner.requests() == []
    assert px.get("/p", host=host(3000, SIGNED)).status_code == 200


def test_signed_token_for_unknown_sandbox_refused(px, runner, world):
    add_signed_token(world, 3000, SIGNED, "sbx-does-not-exist")
    r = px.get("/p", host=host(3000, SIGNED))
    assert r.status_code == 401, r.text
    assert r.headers.get("Set-Cookie") is None


def test_signed_cookie_does_not_open_other_ports(px, runner, world):
    """The cookie minted from a token issued for port 3000 is not a key to the
    sandbox's other ports (least of all the reserved terminal/toolbox ports):
    the token itself is refused there (SPEC 4.5: valid only for its port)."""
    add_signed_token(world, 3000, SIGNED, PRIV)
    r = px.get("/p", host=host(3000, SIGNED))
    assert r.status_code == 200
    value = r.cookies.get(f"daytona-sandbox-auth-{SIGNED}")
    assert value
    runner.reset()
    got = {}
    for port in (22222, 2280, 33333, 3001):
        got[port] = px.get("/p", host=host(port, SIGNED),
                           headers={"Cookie": f"daytona-sandbox-auth-{SIGNED}={value}"}).status_code
    assert got == {22222: 401, 2280: 401, 33333: 401, 3001: 401}, (
        f"cookie from a port-3000 signed token accepted on other ports: {got}; "
        f"runner saw {[x['target'] for x in runner.requests()]}")


# ------------------------------------------------------------- reserved ports --

@pytest.mark.parametrize("port", [22222, 2280, 33333])
def test_reserved_ports_need_auth_on_public_sandbox(px, runner, port):
    r = px.get("/r", host=host(port, PUB))
    assert r.status_code == 401, r.text
    assert runner.requests() == []
    r = px.get("/r", host=host(port, PUB), headers={"X-Daytona-Preview-Token": PUB_TOKEN})
    assert r.status_code == 200, r.text
    assert only_request(runner)["target"] == runner_prefix(PUB, port) + "/r"
    runner.reset()
    r = px.get("/r", host=host(port, PUB), headers={"Authorization": f"Bearer {KEY_OK}"})
    assert r.status_code == 200, r.text
    assert hdrs(only_request(runner), "Authorization") == []


# -------------------------------------------------------------------- toolbox --

def test_toolbox_needs_auth_even_when_public(px, runner):
    for sid in (PRIV, PUB):
        r = px.get(f"/toolbox/{sid}/files?path=/x")
        assert r.status_code == 401, (sid, r.text)
    assert runner.requests() == []


def test_toolbox_with_preview_token_and_api_key(px, runner):
    r = px.get(f"/toolbox/{PRIV}/files?path=/x", headers={"X-Daytona-Preview-Token": PRIV_TOKEN})
    assert r.status_code == 200, r.text
    rec = only_request(runner)
    assert rec["target"] == f"/sandboxes/{PRIV}/toolbox/files?path=/x"
    assert hdrs(rec, "X-Daytona-Authorization") == [f"Bearer {RUNNER_KEY}"]
    runner.reset()
    r = px.get(f"/toolbox/{PUB}/process", headers={"Authorization": f"Bearer {KEY_OK}"})
    assert r.status_code == 200, r.text
    assert hdrs(only_request(runner), "Authorization") == []


def test_toolbox_rejects_signed_tokens(px, runner, world):
    for port in (2280, 3000):
        add_signed_token(world, port, SIGNED, PRIV)
    r = px.get(f"/toolbox/{SIGNED}/files")
    assert r.status_code == 401, r.text
    assert runner.requests() == []
    # the signed port-2280 token works as a preview host, not as a toolbox ID
    assert px.get("/x", host=host(2280, SIGNED)).status_code == 200


def test_toolbox_wrong_org_key_refused(px, runner):
    r = px.get(f"/toolbox/{PRIV}/files", headers={"Authorization": f"Bearer {KEY_OTHER_ORG}"})
    assert r.status_code == 401


# -------------------------------------------------------- unknown sandbox, 401 --

@pytest.mark.parametrize("headers", [
    {},
    {"X-Daytona-Preview-Token": "random-token"},
    {"Authorization": f"Bearer {KEY_OK}"},
    {"Cookie": "daytona-sandbox-auth-sbx-nope=v1.sbx-nope.9999999999.AAAA"},
])
def test_unknown_sandbox_is_401_never_404(px, runner, headers):
    r = px.get("/x", host=host(3000, "sbx-nope"), headers=headers)
    assert r.status_code == 401, (headers, r.status_code, r.text)
    r = px.get("/toolbox/sbx-nope/files", headers=headers)
    assert r.status_code == 401, (headers, r.status_code, r.text)
    assert runner.requests() == []


def test_unknown_vs_known_private_indistinguishable(px, runner):
    a = px.get("/x", host=host(3000, "sbx-nope"), headers={"X-Daytona-Preview-Token": "t"})
    b = px.get("/x", host=host(3000, PRIV), headers={"X-Daytona-Preview-Token": "t"})
    assert a.status_code == b.status_code == 401
    ja, jb = json_error(a), json_error(b)
    assert (ja["code"], ja["message"]) == (jb["code"], jb["message"])


def test_401_body_is_json_naming_what_was_tried(px, runner):
    r = px.get("/nothing", host=host(3000, PRIV), headers={"Accept": "application/json"})
    assert r.status_code == 401
    j = json_error(r)
    assert j["statusCode"] == 401
    assert j["code"]
    assert j["path"].startswith("/nothing") and j["method"] == "GET"
    for what in ("X-Daytona-Preview-Token", "DAYTONA_SANDBOX_AUTH_KEY", "Bearer"):
        assert what in j["message"], j
    r = px.get("/bad", host=host(3000, PRIV), headers={
        "Accept": "application/json", "X-Daytona-Preview-Token": "bad-S3CRET-x"})
    j = json_error(r)
    assert r.status_code == 401 and j["code"]
    for what in ("X-Daytona-Preview-Token", "DAYTONA_SANDBOX_AUTH_KEY", "Authorization",
                 "cookie", "signed"):
        assert what.lower() in j["message"].lower(), j
    assert "bad-S3CRET-x" not in r.text


def test_no_secret_in_proxy_answers(px, runner, world):
    """Neither the cookie secret nor the runner key appear in what the proxy
    itself sends (the runner stand-in's echo bodies are excluded)."""
    add_signed_token(world, 3000, SIGNED, PRIV)
    answers = [px.get("/x", host=host(3000, SIGNED)),
               px.get("/x", host=host(3000, PRIV)),
               px.get("/x", host=host(3000, PRIV), headers={"X-Daytona-Preview-Token": "bad"}),
               px.get("/toolbox/sbx-nope/x")]
    for r in answers:
        blob = repr(dict(r.headers)) + (r.text if r.status_code != 200 else "")
        assert COOKIE_SECRET not in blob
        assert RUNNER_KEY not in blob

"""CORS credentials (SPEC 7 after the security review, issue 9): every Origin is
reflected in Access-Control-Allow-Origin with Vary: Origin, but
Access-Control-Allow-Credentials: true goes only to origins that pass
`cors_credentials` (same-sandbox by default, same-domain, any) or are listed in
`cors_origins`. Otherwise a page on any site could read a private preview with
the visitor's auth cookie. The same decision applies to preflights, to the
proxy's own answers (errors) and to forwarded responses.
"""
import pytest

from helpers import (BASE_DOMAIN, DEAD, DIRECT, PRIV, PUB, UUID_SBX, host, request_bytes,
                     runner_prefix)
from servers.site import Site

EVIL = "https://evil.example"


def raw(px, method, target, host_header, headers=()):
    with px.raw() as c:
        c.send(request_bytes(method, target, host_header, [*headers, ("Connection", "close")]))
        return c.read_response(head_request=(method == "HEAD"))


def get(px, host_header, origin, target="/x", extra=()):
    return raw(px, "GET", target, host_header, [("Origin", origin), *extra])


def preflight(px, host_header, origin, extra=()):
    return raw(px, "OPTIONS", "/api/data", host_header,
               [("Origin", origin), ("Access-Control-Request-Method", "PUT"),
                ("Access-Control-Request-Headers", "content-type"), *extra])


def vary_has_origin(resp):
    tokens = [t.strip().lower() for v in resp.header_all("Vary") for t in v.split(",")]
    return "origin" in tokens


def credentialed(resp, origin):
    """The Origin is reflected exactly once, with Vary: Origin; returns whether
    Access-Control-Allow-Credentials: true came with it (never anything else)."""
    assert resp.header_all("Access-Control-Allow-Origin") == [origin], resp.headers
    assert vary_has_origin(resp), resp.headers
    acac = resp.header_all("Access-Control-Allow-Credentials")
    assert acac in ([], ["true"]), resp.headers
    return acac == ["true"]


@pytest.fixture(scope="module")
def site():
    s = Site({"app": 0})
    yield s
    s.stop()


# ------------------------------------------------------- same-sandbox --

@pytest.mark.parametrize("origin", [
    f"http://3001-{PUB}.{BASE_DOMAIN}",              # another port of the same sandbox
    f"http://3000-{PUB}.{BASE_DOMAIN}",              # the same host (e.g. a same-origin POST)
    f"https://8080-{PUB}.{BASE_DOMAIN}:4443",        # any scheme, any listener port
    f"http://3001-{PUB.upper()}.{BASE_DOMAIN.upper()}",  # hosts are case-insensitive
])
def test_same_sandbox_origin_gets_credentials(px, runner, origin):
    resp = get(px, host(3000, PUB), origin)
    assert resp.status == 200, resp
    assert credentialed(resp, origin)


def test_same_sandbox_with_dashes_in_id(px, runner):
    origin = f"http://5173-{UUID_SBX}.{BASE_DOMAIN}"
    resp = get(px, host(3000, UUID_SBX), origin)
    assert resp.status == 200
    assert credentialed(resp, origin)


def test_foreign_origin_reflected_without_credentials(px, runner):
    """The review's probe: a page on another site must not read a preview with the
    visitor's cookies. Before the fix this answer carried Allow-Credentials."""
    resp = get(px, host(3000, PUB), EVIL)
    assert resp.status == 200
    assert not credentialed(resp, EVIL)
    assert resp.header("Access-Control-Allow-Credentials") is None


@pytest.mark.parametrize("origin", [
    f"http://3000-{PRIV}.{BASE_DOMAIN}",             # another sandbox under our domain
    f"http://{BASE_DOMAIN}",                         # the base domain itself
    f"http://3001-{PUB}.evil.example",               # right label, someone else's domain
    f"http://3001-{PUB}.{BASE_DOMAIN}.evil.example",
    f"http://3001-x{PUB}.{BASE_DOMAIN}",
    "null",                                          # sandboxed iframes, file:, data:
])
def test_other_origins_get_no_credentials(px, runner, origin):
    resp = get(px, host(3000, PUB), origin)
    assert resp.status == 200
    assert not credentialed(resp, origin)


@pytest.mark.parametrize("origin", [
    "http://", "https://", "http:", "x", "", " ", "*",
    f"ftp://3001-{PUB}.{BASE_DOMAIN}",
    f"//3001-{PUB}.{BASE_DOMAIN}",
    f"3001-{PUB}.{BASE_DOMAIN}",
    f"http://3001-{PUB}.{BASE_DOMAIN}/",
    f"http://3001-{PUB}.{BASE_DOMAIN}/path",
    f"http://evil.example@3001-{PUB}.{BASE_DOMAIN}",
    f"http://3001-{PUB}.{BASE_DOMAIN}@evil.example",
    f"http://evil.example#3001-{PUB}.{BASE_DOMAIN}",
    f"http://evil.example?3001-{PUB}.{BASE_DOMAIN}",
    f"http://3001-{PUB}.{BASE_DOMAIN}:",
    f"http://3001-{PUB}.{BASE_DOMAIN}:x",
    f"http://3001-{PUB}..{BASE_DOMAIN}",
    f"http://-{PUB}.{BASE_DOMAIN}",
    f"http://3001-.{BASE_DOMAIN}",
    f"http://3001-{PUB}",
    "http://[::1]:3000", "http://[", "http://[]", "http://[::1",
    pytest.param("http://" + "a" * 300 + f".{BASE_DOMAIN}", id="long-300"),
    pytest.param(f"http://3001-{PUB}." + "b" * 4000, id="long-4000"),
])
def test_malformed_origins_get_no_credentials(px, runner, origin):
    resp = get(px, host(3000, PUB), origin)
    assert resp.status == 200, resp
    assert resp.header("Access-Control-Allow-Credentials") is None, resp.headers
    assert len(resp.header_all("Access-Control-Allow-Origin")) <= 1
    assert px.health_ok()


def test_without_domains_origin_must_share_the_request_base(proxy, runner):
    """With no `domains`, any {port}-{label}.{anything} parses as a preview host,
    so the origin's base must be the request's own."""
    px = proxy(settings={"domains": None})
    ok = f"http://3001-{PUB}.{BASE_DOMAIN}"
    bad = f"http://3001-{PUB}.evil.example"
    assert credentialed(get(px, host(3000, PUB), ok), ok)
    assert not credentialed(get(px, host(3000, PUB), bad), bad)


def test_keepalive_decides_per_request(px, runner):
    same = f"http://3001-{PUB}.{BASE_DOMAIN}"
    with px.raw() as c:
        for origin, creds in ((same, True), (EVIL, False), (same, True), ("null", False)):
            c.send(request_bytes("GET", "/x", host(3000, PUB), [("Origin", origin)]))
            resp = c.read_response()
            assert resp.status == 200
            assert credentialed(resp, origin) is creds, (origin, resp.headers)


# -------------------------------------------------------- error answers --

def test_error_answers_same_decision(px, runner):
    """The proxy's own answers carry CORS so fetch() can read them; only a
    same-sandbox origin gets credentials."""
    same_priv = f"http://3001-{PRIV}.{BASE_DOMAIN}"
    resp = get(px, host(3000, PRIV), same_priv)
    assert resp.status == 401
    assert credentialed(resp, same_priv)
    resp = get(px, host(3000, PRIV), EVIL)
    assert resp.status == 401
    assert not credentialed(resp, EVIL)

    same_dead = f"http://3001-{DEAD}.{BASE_DOMAIN}"
    resp = get(px, host(3000, DEAD), same_dead)
    assert resp.status == 502
    assert credentialed(resp, same_dead)
    resp = get(px, host(3000, DEAD), EVIL)
    assert resp.status == 502
    assert not credentialed(resp, EVIL)

    resp = get(px, host(3000, PUB), EVIL, target="/a/%2e%2e/b")
    assert resp.status == 400
    assert not credentialed(resp, EVIL)
    resp = get(px, BASE_DOMAIN, EVIL, target="/no-such-route")
    assert resp.status == 404
    assert not credentialed(resp, EVIL)


# ----------------------------------------------------------- preflight --

def test_preflight_same_sandbox_gets_credentials(px, runner):
    origin = f"http://3001-{PRIV}.{BASE_DOMAIN}"
    resp = preflight(px, host(3000, PRIV), origin)
    assert resp.status == 204, resp
    assert credentialed(resp, origin)
    assert resp.header("Access-Control-Allow-Methods")
    assert runner.find(runner_prefix(PRIV, 3000)) == []


def test_preflight_foreign_origin_without_credentials(px, runner):
    resp = preflight(px, host(3000, PRIV), EVIL)
    assert resp.status == 204, resp
    assert not credentialed(resp, EVIL)
    assert "content-type" in resp.header("Access-Control-Allow-Headers", "").lower()
    assert runner.find(runner_prefix(PRIV, 3000)) == []


def test_preflight_listed_origin(proxy, runner):
    px = proxy(extra=["cors_origins https://app.example.com"])
    resp = preflight(px, host(3000, PRIV), "https://app.example.com")
    assert resp.status == 204
    assert credentialed(resp, "https://app.example.com")


# ------------------------------------------------ forwarded responses --

@pytest.fixture
def sp(proxy, site):
    site.reset()
    return proxy()


def test_sandbox_headers_replaced_same_sandbox(sp, site):
    """The app sends `Allow-Origin: *` and `Allow-Credentials: false`: ours replace
    them, never two Allow-Origin headers."""
    origin = f"http://3001-{DIRECT}.{BASE_DOMAIN}"
    resp = get(sp, host(site.ports["app"], DIRECT), origin, target="/api/data?own_cors=1")
    assert resp.status == 200
    assert credentialed(resp, origin)


def test_sandbox_headers_replaced_foreign(sp, site):
    """A foreign origin: the app's Allow-Credentials is dropped too, so nothing
    grants credentials, and there is one Allow-Origin (the reflected Origin)."""
    resp = get(sp, host(site.ports["app"], DIRECT), EVIL, target="/api/data?own_cors=1")
    assert resp.status == 200
    assert not credentialed(resp, EVIL)
    assert resp.header_all("Access-Control-Allow-Credentials") == []


def test_custom_domain_same_sandbox(proxy, runner):
    """A custom domain's sandbox is the request's label: its preview hosts are
    the same sandbox."""
    px = proxy(extra=[f"domain app.example.test {PUB} 3000"])
    origin = f"http://3001-{PUB}.{BASE_DOMAIN}"
    resp = get(px, "app.example.test", origin)
    assert resp.status == 200
    assert credentialed(resp, origin)
    resp = get(px, "app.example.test", EVIL)
    assert resp.status == 200
    assert not credentialed(resp, EVIL)


def test_toolbox_path_same_sandbox(px, runner):
    origin = f"http://2280-{PUB}.{BASE_DOMAIN}"
    resp = get(px, BASE_DOMAIN, origin, target=f"/toolbox/{PUB}/files",
               extra=[("X-Daytona-Preview-Token", "tok-pub-S3CRET-41aa")])
    assert resp.header_all("Access-Control-Allow-Origin") == [origin], resp
    assert credentialed(resp, origin), resp.status
    resp = get(px, BASE_DOMAIN, EVIL, target=f"/toolbox/{PUB}/files")
    assert not credentialed(resp, EVIL)


# --------------------------------------------------------- same-domain --

@pytest.mark.parametrize("origin,creds", [
    (f"http://3000-{PRIV}.{BASE_DOMAIN}", True),
    (f"http://3001-{PUB}.{BASE_DOMAIN}", True),
    (f"https://{BASE_DOMAIN}", True),
    (f"https://dashboard.{BASE_DOMAIN}:8443", True),
    (f"https://a.b.{BASE_DOMAIN}", True),
    (EVIL, False),
    (f"http://{BASE_DOMAIN}.evil.example", False),
    (f"http://evil{BASE_DOMAIN}", False),
    ("null", False),
    (f"http://{BASE_DOMAIN}/", False),
])
def test_same_domain_mode(proxy, runner, origin, creds):
    px = proxy(settings={"cors_credentials": "same-domain"})
    resp = get(px, host(3000, PUB), origin)
    assert resp.status == 200
    assert credentialed(resp, origin) is creds
    resp = preflight(px, host(3000, PRIV), origin)
    assert resp.status == 204
    assert credentialed(resp, origin) is creds
    resp = get(px, host(3000, PRIV), origin)
    assert resp.status == 401
    assert credentialed(resp, origin) is creds


def test_same_domain_uses_the_requests_base(proxy, runner):
    """Two base domains: an origin under the other one is not the same domain."""
    px = proxy(settings={"cors_credentials": "same-domain",
                         "domains": f"{BASE_DOMAIN} other.test"})
    assert credentialed(get(px, host(3000, PUB), f"https://x.{BASE_DOMAIN}"),
                        f"https://x.{BASE_DOMAIN}")
    assert not credentialed(get(px, host(3000, PUB), "https://x.other.test"),
                            "https://x.other.test")
    # a preview host of the same sandbox under the other domain is still the same sandbox
    o = f"http://3001-{PUB}.other.test"
    assert credentialed(get(px, host(3000, PUB), o), o)


# ----------------------------------------------------------------- any --

@pytest.mark.parametrize("origin", [EVIL, "null", f"http://3000-{PRIV}.{BASE_DOMAIN}"])
def test_any_mode_is_daytona_behaviour(proxy, runner, origin):
    px = proxy(settings={"cors_credentials": "any"})
    assert credentialed(get(px, host(3000, PUB), origin), origin)
    resp = preflight(px, host(3000, PRIV), origin)
    assert resp.status == 204
    assert credentialed(resp, origin)
    resp = get(px, host(3000, PRIV), origin)
    assert resp.status == 401
    assert credentialed(resp, origin)


# ---------------------------------------------------------- cors_origins --

@pytest.mark.parametrize("origin,creds", [
    ("https://app.example.com", True),
    ("HTTPS://APP.EXAMPLE.COM", True),
    ("http://localhost:5173", True),         # listed with a trailing slash
    ("http://app.example.com", False),       # other scheme
    ("https://app.example.com:444", False),  # other port
    ("https://sub.app.example.com", False),
    ("https://app.example.co", False),
    ("http://localhost:517", False),
    (EVIL, False),
])
def test_cors_origins_listed(proxy, runner, origin, creds):
    px = proxy(extra=["cors_origins https://App.Example.com http://localhost:5173/"])
    resp = get(px, host(3000, PUB), origin)
    assert resp.status == 200
    assert credentialed(resp, origin) is creds
    resp = get(px, host(3000, PRIV), origin)
    assert resp.status == 401
    assert credentialed(resp, origin) is creds


def test_cors_origins_with_same_domain(proxy, runner):
    px = proxy(settings={"cors_credentials": "same-domain"},
               extra=["cors_origins https://app.example.com"])
    assert credentialed(get(px, host(3000, PUB), "https://app.example.com"),
                        "https://app.example.com")
    assert not credentialed(get(px, host(3000, PUB), EVIL), EVIL)


def test_bad_cors_credentials_value_refused(proxy, runner):
    px = proxy(settings={"cors_credentials": "everyone"}, wait=False)
    assert px.proc.wait(timeout=10) != 0
    assert "cors_credentials" in px.log() or "same-sandbox" in px.log()


# ------------------------------------------------------------ disabled --

def test_disable_cors_still_leaves_it_to_the_sandbox(sp, site):
    resp = get(sp, host(site.ports["app"], DIRECT), EVIL, target="/api/data?own_cors=1",
               extra=[("X-Daytona-Disable-CORS", "true")])
    assert resp.status == 200
    assert resp.header_all("Access-Control-Allow-Origin") == ["*"]
    assert resp.header_all("Access-Control-Allow-Credentials") == ["false"]

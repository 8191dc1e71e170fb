"""Custom domains (SPEC 2, 5; LESSONS A24): a Host found as a domain record is
served as that sandbox and port, with the same auth, warning and CORS rules.
In-memory records come from `domain HOST SANDBOX PORT`; in Redis mode from the
hash proxy:custom-domain:{host}.
"""
import pytest

from helpers import accept_target, PRIV, PRIV_TOKEN, PUB, request_bytes, runner_prefix, wait_until
from servers.site import RedisServer

CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/126.0.0.0 Safari/537.36")
ORIGIN = "https://app.other.test"
ACCEPT_PATH = "/accept-daytona-preview-warning"


def raw(px, method, target, host_header, headers=()):
    with px.raw() as c:
        c.send(request_bytes(method, target, host_header, [*headers, ("Connection", "close")]))
        return c.read_response()


@pytest.fixture
def dp(proxy, runner):
    return proxy(settings={"preview_warning": "on"}, extra=[
        f"domain app.example.test {PUB} 3000",
        f"domain secret.example.test {PRIV} 8080",
        # looks like a preview host, but is not under our base domains
        f"domain 5173-shop.customer.test {PUB} 4444",
    ])


def test_custom_domain_routes_to_sandbox_port(dp, runner):
    resp = raw(dp, "GET", "/p/q?x=1", "app.example.test", [("User-Agent", "curl/8")])
    assert resp.status == 200, resp
    (rec,) = runner.find(runner_prefix(PUB, 3000))
    assert rec["target"] == runner_prefix(PUB, 3000) + "/p/q?x=1"


@pytest.mark.parametrize("h", ["APP.Example.Test", "app.example.test:8443", "app.example.test."])
def test_custom_domain_host_forms(dp, runner, h):
    resp = raw(dp, "GET", "/", h)
    assert resp.status == 200, resp
    assert len(runner.find(runner_prefix(PUB, 3000))) == 1


def test_custom_domain_that_looks_like_preview_host(dp, runner):
    resp = raw(dp, "GET", "/", "5173-shop.customer.test")
    assert resp.status == 200, resp
    assert len(runner.find(runner_prefix(PUB, 4444))) == 1


def test_unknown_host_404(dp, runner):
    resp = raw(dp, "GET", "/", "nobody.example.test")
    assert resp.status == 404


def test_custom_domain_private_needs_auth(dp, runner):
    assert raw(dp, "GET", "/", "secret.example.test").status == 401
    resp = raw(dp, "GET", "/", "secret.example.test", [("X-Daytona-Preview-Token", PRIV_TOKEN)])
    assert resp.status == 200
    (rec,) = runner.find(runner_prefix(PRIV, 8080))
    assert "x-daytona-preview-token" not in [k.lower() for k, _ in rec["headers"]]


def test_custom_domain_private_wrong_token(dp, runner):
    resp = raw(dp, "GET", "/", "secret.example.test", [("X-Daytona-Preview-Token", "nope")])
    assert resp.status == 401
    assert runner.find(runner_prefix(PRIV, 8080)) == []


def test_custom_domain_warning_and_accept(dp, runner):
    resp = raw(dp, "GET", "/dash", "app.example.test", [("User-Agent", CHROME)])
    assert resp.status == 200 and ACCEPT_PATH.encode() in resp.body
    assert b"http://app.example.test/dash" in resp.body
    assert runner.find(runner_prefix(PUB, 3000)) == []
    acc = raw(dp, "POST", ACCEPT_PATH + "?redirect=http%3A%2F%2Fapp.example.test%2Fdash",
              "app.example.test", [("Content-Length", "0")])
    assert accept_target(acc.status, acc.body) == "http://app.example.test/dash"
    assert "Domain=app.example.test" in acc.header("Set-Cookie")
    resp = raw(dp, "GET", "/dash", "app.example.test",
               [("User-Agent", CHROME), ("Cookie", "daytona-preview-page-accepted=true")])
    assert resp.status == 200 and ACCEPT_PATH.encode() not in resp.body
    assert len(runner.find(runner_prefix(PUB, 3000))) == 1


def test_custom_domain_private_warning_after_auth(dp, runner):
    assert raw(dp, "GET", "/", "secret.example.test", [("User-Agent", CHROME)]).status == 401
    resp = raw(dp, "GET", "/", "secret.example.test",
               [("User-Agent", CHROME), ("X-Daytona-Preview-Token", PRIV_TOKEN)])
    assert resp.status == 200 and ACCEPT_PATH.encode() in resp.body


def test_custom_domain_cors(dp, runner):
    resp = raw(dp, "OPTIONS", "/api", "secret.example.test",
               [("Origin", ORIGIN), ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type")])
    assert resp.status == 204
    assert resp.header_all("Access-Control-Allow-Origin") == [ORIGIN]
    assert runner.find(runner_prefix(PRIV, 8080)) == []
    # SPEC 7 same-sandbox: app.example.test serves PUB, so PUB's preview hosts get
    # credentials (test_cors_credentials.py: other origins do not)
    same = f"http://3001-{PUB}.proxy.test"
    resp = raw(dp, "GET", "/api", "app.example.test", [("Origin", same)])
    assert resp.header_all("Access-Control-Allow-Origin") == [same]
    assert resp.header_all("Access-Control-Allow-Credentials") == ["true"]


def test_custom_domain_x_forwarded_host(dp, runner):
    resp = raw(dp, "GET", "/", "app.example.test")
    assert resp.status == 200
    (rec,) = runner.find(runner_prefix(PUB, 3000))
    xfh = [v for k, v in rec["headers"] if k.lower() == "x-forwarded-host"]
    assert xfh == ["app.example.test"]


# ----------------------------------------------------------------- Redis --

@pytest.fixture(scope="module")
def redis_srv():
    srv = RedisServer()
    yield srv
    srv.stop()


def test_custom_domain_from_redis(proxy, runner, redis_srv):
    db = redis_srv.client()
    db("FLUSHALL")
    r = f"http://127.0.0.1:{runner.port}"
    db("HSET", "sandbox:sbxred", "runner_url", r, "runner_key", "runner-key-7f3a9c",
       "public", "0", "org", "org1", "state", "started", "auth_token", "tok-red")
    db("HSET", "proxy:custom-domain:shop.example.test", "sandbox", "sbxred", "port", "5000")
    px = proxy(extra=[f"redis 127.0.0.1:{redis_srv.port}"], default_sandboxes_too=False)
    try:
        assert raw(px, "GET", "/", "shop.example.test").status == 401
        resp = raw(px, "GET", "/x", "shop.example.test", [("X-Daytona-Preview-Token", "tok-red")])
        assert resp.status == 200, resp
        (rec,) = runner.find(runner_prefix("sbxred", 5000))
        assert rec["target"] == runner_prefix("sbxred", 5000) + "/x"
        assert raw(px, "GET", "/", "unknown.example.test").status == 404
        # a new record takes effect once invalidated
        db("HSET", "proxy:custom-domain:shop.example.test", "port", "5001")
        db("PUBLISH", "proxy:invalidate", "domain:shop.example.test")

        def moved():
            raw(px, "GET", "/y", "shop.example.test", [("X-Daytona-Preview-Token", "tok-red")])
            return runner.find(runner_prefix("sbxred", 5001) + "/y")
        wait_until(moved, timeout=5, what="the custom domain to move to port 5001")
    finally:
        db.close()

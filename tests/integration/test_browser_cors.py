"""CORS (SPEC 7; LESSONS A10): the proxy reflects Origin (with credentials for
the same sandbox's origins under the default `cors_credentials same-sandbox`;
test_cors_credentials.py covers the other origins and modes), replaces the
sandbox's own Access-Control-Allow-* headers, and answers preflights itself
before authentication. The sandbox app is servers/site.py in direct mode, so
the app can send its own CORS headers.
"""
import pytest

from helpers import DIRECT, PRIV, PUB, host, request_bytes, runner_prefix
from servers.site import Site

ORIGIN = "http://3001-other.proxy.test"


def same_sandbox_origin(sandbox):
    """A page on another port of the sandbox being called: it gets credentials
    (SPEC 7, same-sandbox); ORIGIN, another sandbox's page, does not."""
    return f"http://3001-{sandbox}.proxy.test"

PRIVATE_DIRECT = "sbxprivdirect"
PRIVATE_DIRECT_TOKEN = "tok-privdirect-S3CRET"


@pytest.fixture(scope="module")
def site():
    s = Site({"app": 0})
    yield s
    s.stop()


@pytest.fixture
def cp(proxy, site, dead_port):
    site.reset()
    return proxy(sandboxes=[
        f"sandbox {PRIVATE_DIRECT} runner_url=http://127.0.0.1:{dead_port} runner_key=k "
        f"org=org1 state=started public=0 direct=1 auth_token={PRIVATE_DIRECT_TOKEN}",
    ])


def app_host(site, sandbox=DIRECT):
    return host(site.ports["app"], sandbox)


def raw(px, method, target, host_header, headers=()):
    with px.raw() as c:
        c.send(request_bytes(method, target, host_header, [*headers, ("Connection", "close")]))
        return c.read_response(head_request=(method == "HEAD"))


def vary_has_origin(resp):
    tokens = [t.strip().lower() for v in resp.header_all("Vary") for t in v.split(",")]
    return "origin" in tokens


# ------------------------------------------------------------- simple --

def test_origin_reflected_with_credentials(cp, site):
    origin = same_sandbox_origin(DIRECT)
    resp = raw(cp, "GET", "/api/data", app_host(site), [("Origin", origin)])
    assert resp.status == 200
    assert resp.header_all("Access-Control-Allow-Origin") == [origin]
    assert resp.header_all("Access-Control-Allow-Credentials") == ["true"]
    assert vary_has_origin(resp)


def test_no_origin_no_cors_headers(cp, site):
    resp = raw(cp, "GET", "/api/data", app_host(site))
    assert resp.status == 200
    assert resp.header("Access-Control-Allow-Origin") is None
    assert resp.header("Access-Control-Allow-Credentials") is None


def test_sandbox_cors_headers_replaced_not_duplicated(cp, site):
    """LESSONS A10 / daytona#1972: never two Access-Control-Allow-Origin headers."""
    origin = same_sandbox_origin(DIRECT)
    resp = raw(cp, "GET", "/api/data?own_cors=1", app_host(site), [("Origin", origin)])
    assert resp.status == 200
    assert resp.header_all("Access-Control-Allow-Origin") == [origin], resp.headers
    assert resp.header_all("Access-Control-Allow-Credentials") == ["true"], resp.headers


def test_sandbox_cors_headers_pass_without_origin(cp, site):
    resp = raw(cp, "GET", "/api/data?own_cors=1", app_host(site))
    assert resp.header_all("Access-Control-Allow-Origin") == ["*"]
    assert resp.header_all("Access-Control-Allow-Credentials") == ["false"]


def test_disable_cors_leaves_sandbox_headers_and_is_stripped(cp, site):
    resp = raw(cp, "GET", "/api/data?own_cors=1", app_host(site),
               [("Origin", ORIGIN), ("X-Daytona-Disable-CORS", "true")])
    assert resp.status == 200
    assert resp.header_all("Access-Control-Allow-Origin") == ["*"], resp.headers
    assert resp.header_all("Access-Control-Allow-Credentials") == ["false"], resp.headers
    rec = resp.json()
    names = [k.lower() for k, _ in rec["headers"]]
    assert "x-daytona-disable-cors" not in names
    assert ("origin" in names), "the Origin header itself is the app's to see"


def test_error_responses_carry_cors(cp, site):
    """fetch() from another origin can read the proxy's own errors (e.g. 401)."""
    origin = same_sandbox_origin(PRIVATE_DIRECT)
    resp = raw(cp, "GET", "/api/data", app_host(site, PRIVATE_DIRECT), [("Origin", origin)])
    assert resp.status == 401
    assert resp.header_all("Access-Control-Allow-Origin") == [origin]
    assert resp.header_all("Access-Control-Allow-Credentials") == ["true"]


def test_runner_path_mode_also_reflects(cp, runner):
    resp = raw(cp, "GET", "/x", host(3000, PUB), [("Origin", ORIGIN)])
    assert resp.status == 200
    assert resp.header_all("Access-Control-Allow-Origin") == [ORIGIN]


# ---------------------------------------------------------- preflight --

def preflight(px, host_header, method="PUT", req_headers="content-type, x-custom, cache-control",
              extra=(), origin=ORIGIN):
    h = [("Origin", origin), ("Access-Control-Request-Method", method)]
    if req_headers is not None:
        h.append(("Access-Control-Request-Headers", req_headers))
    return raw(px, "OPTIONS", "/api/data", host_header, [*h, *extra])


def test_preflight_answered_by_proxy(cp, site):
    origin = same_sandbox_origin(DIRECT)
    resp = preflight(cp, app_host(site), origin=origin)
    assert resp.status == 204, resp
    assert resp.header_all("Access-Control-Allow-Origin") == [origin]
    assert resp.header_all("Access-Control-Allow-Credentials") == ["true"]
    methods = {m.strip().upper() for m in resp.header("Access-Control-Allow-Methods", "").split(",")}
    assert {"GET", "POST", "PUT", "PATCH", "DELETE"} <= methods, methods
    allowed = {h.strip().lower() for h in resp.header("Access-Control-Allow-Headers", "").split(",")}
    assert {"content-type", "x-custom", "cache-control"} <= allowed
    assert int(resp.header("Access-Control-Max-Age")) > 0
    assert resp.body == b""
    assert site.requests() == [], "the preflight reached the sandbox app"


def test_preflight_private_needs_no_credentials(cp, site):
    resp = preflight(cp, app_host(site, PRIVATE_DIRECT))
    assert resp.status == 204
    assert resp.header_all("Access-Control-Allow-Origin") == [ORIGIN]
    assert site.requests() == []


def test_preflight_runner_path_never_reaches_runner(cp, runner):
    resp = preflight(cp, host(3000, PRIV))
    assert resp.status == 204
    assert runner.find(runner_prefix(PRIV, 3000)) == []


def test_preflight_unknown_sandbox(cp, runner):
    resp = preflight(cp, host(3000, "doesnotexist"))
    assert resp.status == 204


def test_preflight_echoes_odd_header_list(cp, site):
    resp = preflight(cp, app_host(site), method="DELETE", req_headers="authorization,x-a,x-b")
    allowed = {h.strip().lower() for h in resp.header("Access-Control-Allow-Headers", "").split(",")}
    assert {"authorization", "x-a", "x-b"} <= allowed


def test_preflight_with_disable_cors_goes_to_app(cp, site):
    resp = preflight(cp, app_host(site), extra=[("X-Daytona-Disable-CORS", "true")])
    assert resp.status == 200 and resp.header("X-Site-Saw") == "OPTIONS"
    (rec,) = site.requests()
    assert "x-daytona-disable-cors" not in [k.lower() for k, _ in rec["headers"]]


def test_options_without_request_method_is_forwarded(cp, site):
    resp = raw(cp, "OPTIONS", "/api/data", app_host(site), [("Origin", ORIGIN)])
    assert resp.status == 200 and resp.header("X-Site-Saw") == "OPTIONS"
    assert resp.header_all("Access-Control-Allow-Origin") == [ORIGIN]


def test_options_without_origin_is_forwarded(cp, site):
    resp = raw(cp, "OPTIONS", "/api/data", app_host(site),
               [("Access-Control-Request-Method", "PUT")])
    assert resp.status == 200 and resp.header("X-Site-Saw") == "OPTIONS"


def test_private_actual_request_after_preflight_needs_credentials(cp, site):
    resp = raw(cp, "PUT", "/api/data", app_host(site, PRIVATE_DIRECT),
               [("Origin", ORIGIN), ("Content-Length", "0")])
    assert resp.status == 401
    resp = raw(cp, "PUT", "/api/data", app_host(site, PRIVATE_DIRECT),
               [("Origin", ORIGIN), ("Content-Length", "0"),
                ("X-Daytona-Preview-Token", PRIVATE_DIRECT_TOKEN)])
    assert resp.status == 200
    assert resp.header_all("Access-Control-Allow-Origin") == [ORIGIN]
    assert resp.json()["method"] == "PUT"


def test_cors_on_keepalive_connection_per_request(cp, site):
    """Each request on one connection gets its own Origin reflected."""
    with cp.raw() as c:
        for origin in ("http://a.example", "http://b.example", None):
            hdrs = [("Origin", origin)] if origin else []
            c.send(request_bytes("GET", "/api/data", app_host(site), hdrs))
            resp = c.read_response()
            assert resp.status == 200
            assert resp.header_all("Access-Control-Allow-Origin") == ([origin] if origin else [])

"""Error answers for people and programs, operator error templates, and
wake-on-request (SPEC 10; LESSONS A17, A27).
"""
import re
import socket

import pytest

from helpers import (BASE_DOMAIN, DEAD, PRIV, PUB, free_port, host, request_bytes,
                     wait_until)
from servers.site import RedisServer, Site

CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/126.0.0.0 Safari/537.36")
NAV_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
JSON_FIELDS = {"statusCode", "message", "code", "timestamp", "path", "method", "requestId"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def raw(px, method, target, host_header, headers=()):
    with px.raw() as c:
        c.send(request_bytes(method, target, host_header, [*headers, ("Connection", "close")]))
        return c.read_response(head_request=(method == "HEAD"))


# ---------------------------------------------------------------- JSON --

@pytest.mark.parametrize("case", ["401-private", "404-route", "502-refused", "400-dot"])
def test_json_error_shape(px, case):
    method, target, h, status = {
        "401-private": ("GET", "/some/path?q=1", host(3000, PRIV), 401),
        "404-route": ("GET", "/nope?x=1", BASE_DOMAIN, 404),
        "502-refused": ("POST", "/api/x?y=2", host(3000, DEAD), 502),
        "400-dot": ("GET", "/a/%2e%2e/b", host(3000, PUB), 400),
    }[case]
    hdrs = [("Accept", "application/json")]
    if method == "POST":
        hdrs.append(("Content-Length", "0"))
    resp = raw(px, method, target, h, hdrs)
    assert resp.status == status, resp
    assert resp.header("Content-Type").startswith("application/json")
    body = resp.json()
    assert set(body) == JSON_FIELDS, body
    assert body["statusCode"] == status
    assert body["method"] == method
    assert body["path"] == target.split("?")[0]
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["code"], str) and re.fullmatch(r"[A-Z_]+", body["code"])
    assert ISO.match(body["timestamp"]), body["timestamp"]
    assert isinstance(body["requestId"], str) and body["requestId"]


def test_json_for_clients_without_accept(px):
    resp = raw(px, "GET", "/", host(3000, PRIV), [("User-Agent", "curl/8.5.0")])
    assert resp.status == 401 and resp.header("Content-Type").startswith("application/json")


def test_request_ids_differ(px):
    a = raw(px, "GET", "/", host(3000, PRIV)).json()["requestId"]
    b = raw(px, "GET", "/", host(3000, PRIV)).json()["requestId"]
    assert a != b


# ---------------------------------------------------------------- HTML --

def html_error(px, target, h, headers=()):
    resp = raw(px, "GET", target, h, [("Accept", NAV_ACCEPT), ("User-Agent", CHROME), *headers])
    assert resp.header("Content-Type").startswith("text/html"), resp
    return resp, resp.body.decode()


def test_html_401_explains_token_and_signed_url(px):
    resp, body = html_error(px, "/", host(3000, PRIV))
    assert resp.status == 401
    low = body.lower()
    assert "preview token" in low
    assert "signed" in low
    assert "401" in body
    # a request ID a user can quote
    json_id = raw(px, "GET", "/", host(3000, PRIV)).json()["requestId"]
    assert re.search(r"request id", low)
    assert re.fullmatch(r"[0-9a-zA-Z-]+", json_id)


def test_html_502_says_port_not_answering(px):
    resp, body = html_error(px, "/", host(3000, DEAD))
    assert resp.status == 502
    low = body.lower()
    assert "not answering" in low and "port" in low


def test_html_error_has_no_external_resources(px):
    _, body = html_error(px, "/", host(3000, DEAD))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", body, re.I), body
    assert "<script" not in body.lower()


def test_html_404_unknown_route(px):
    resp, body = html_error(px, "/nope", BASE_DOMAIN)
    assert resp.status == 404 and "404" in body


def test_html_error_does_not_reflect_path_unescaped(px):
    resp, body = html_error(px, "/<script>alert(1)</script>", BASE_DOMAIN)
    assert resp.status in (400, 404)
    assert "<script>alert(1)" not in body


# ------------------------------------------------------------ templates --

TEMPLATE = ("<html><body><h1>T{{status}} {{title}}</h1><p id=m>{{message}}</p><p id=a>{{advice}}</p>"
            "<p id=c>{{code}}</p><p id=r>{{request_id}}</p><p id=t>{{timestamp}}</p>"
            "<p id=u>{{unknown}}</p></body></html>\n")


@pytest.fixture
def templated(proxy, tmp_path):
    fam5 = tmp_path / "5xx.html"
    fam5.write_text(TEMPLATE.replace("<h1>", "<h1>FAMILY5 "))
    fam4 = tmp_path / "4xx.html"
    fam4.write_text(TEMPLATE.replace("<h1>", "<h1>FAMILY4 "))
    p401 = tmp_path / "401.html"
    p401.write_text(TEMPLATE.replace("<h1>", "<h1>ONLY401 "))
    return proxy(extra=[f"error_page 5xx {fam5}", f"error_page 4xx {fam4}",
                        f"error_page 401 {p401}"])


def test_template_5xx_family(templated):
    resp, body = html_error(templated, "/", host(3000, DEAD))
    assert resp.status == 502
    assert "FAMILY5 T502 Bad Gateway" in body
    assert "{{" not in body.replace("{{unknown}}", "")
    assert re.search(r"<p id=c>[A-Z_]+</p>", body)
    assert re.search(r"<p id=r>[^<]+</p>", body)
    assert re.search(r"<p id=t>\d{4}-\d\d-\d\dT", body)
    assert "not answering" in body  # advice
    assert "<p id=u>{{unknown}}</p>" in body, "unknown placeholders are left as they are"


def test_template_specific_status_wins_over_family(templated):
    resp, body = html_error(templated, "/", host(3000, PRIV))
    assert resp.status == 401 and "ONLY401 T401" in body and "FAMILY4" not in body
    resp, body = html_error(templated, "/nope", BASE_DOMAIN)
    assert resp.status == 404 and "FAMILY4 T404" in body


def test_template_values_are_html_escaped(templated):
    # The 401 message says "the sandbox's preview token": its apostrophe must
    # arrive as an entity.
    resp, body = html_error(templated, "/", host(3000, PRIV))
    m = re.search(r"<p id=m>(.*?)</p>", body, re.S).group(1)
    assert "'" not in m and '"' not in m and "<" not in m, m
    assert "&#39;" in m or "&#x27;" in m or "&apos;" in m, m


def test_template_not_used_for_json(templated):
    resp = raw(templated, "GET", "/", host(3000, DEAD), [("Accept", "application/json")])
    assert resp.status == 502 and resp.header("Content-Type").startswith("application/json")
    assert set(resp.json()) == JSON_FIELDS


def test_template_missing_file_refused(proxy_bin, tmp_path):
    import subprocess
    conf = tmp_path / "bad.conf"
    conf.write_text(f"listen 127.0.0.1:{free_port()}\nerror_page 502 {tmp_path}/nope.html\n")
    p = subprocess.run([proxy_bin, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=10)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "2" in (p.stdout + p.stderr)  # names the line


# ----------------------------------------------------------------- wake --

@pytest.fixture
def sleepy(proxy, dead_port):
    """In-memory store: a stopped sandbox with wake=http whose port refuses."""
    port = free_port()
    px = proxy(sandboxes=[
        f"sandbox sbxsleep runner_url=http://127.0.0.1:{dead_port} runner_key=k org=org1 "
        f"public=1 direct=1 state=stopped wake=http auth_token=tok-sleep",
        f"sandbox sbxstopped runner_url=http://127.0.0.1:{dead_port} runner_key=k org=org1 "
        f"public=1 direct=1 state=stopped auth_token=tok-stopped",
        f"sandbox sbxprivsleep runner_url=http://127.0.0.1:{dead_port} runner_key=k org=org1 "
        f"public=0 direct=1 state=stopped wake=http auth_token=tok-privsleep",
    ])
    px.sleep_port = port
    return px


def test_wake_json(sleepy):
    resp = raw(sleepy, "GET", "/api", host(sleepy.sleep_port, "sbxsleep"),
               [("Accept", "application/json")])
    assert resp.status == 503
    assert resp.header("Retry-After") == "5"
    body = resp.json()
    assert body["code"] == "SANDBOX_STARTING" and body["statusCode"] == 503
    assert set(body) == JSON_FIELDS


def test_wake_html_refreshes(sleepy):
    resp = raw(sleepy, "GET", "/", host(sleepy.sleep_port, "sbxsleep"),
               [("Accept", NAV_ACCEPT), ("User-Agent", CHROME)])
    assert resp.status == 503 and resp.header("Retry-After") == "5"
    body = resp.body.decode()
    assert re.search(r"""<meta\s+http-equiv=["']?refresh["']?\s+content=["']?5["']?""", body, re.I), body


def test_stopped_without_wake_is_502(sleepy):
    resp = raw(sleepy, "GET", "/", host(sleepy.sleep_port, "sbxstopped"))
    assert resp.status == 502


def test_wake_needs_authentication_first(sleepy):
    resp = raw(sleepy, "GET", "/", host(sleepy.sleep_port, "sbxprivsleep"))
    assert resp.status == 401
    resp = raw(sleepy, "GET", "/", host(sleepy.sleep_port, "sbxprivsleep"),
               [("X-Daytona-Preview-Token", "tok-privsleep")])
    assert resp.status == 503


# ------------------------------------------------------- wake via Redis --

@pytest.fixture(scope="module")
def redis_srv():
    srv = RedisServer()
    yield srv
    srv.stop()


class Subscriber:
    def __init__(self, redis, channel):
        self.c = redis.client()
        self.c.send("SUBSCRIBE", channel)
        assert self.c.read()[0] == "subscribe"

    def next(self, timeout=5.0):
        self.c.sock.settimeout(timeout)
        try:
            msg = self.c.read()
        except socket.timeout:
            return None
        assert msg[0] == "message", msg
        return msg[2]

    def close(self):
        self.c.close()


def hset(db, key, **fields):
    args = []
    for k, v in fields.items():
        args += [k, str(v)]
    db("DEL", key)
    db("HSET", key, *args)


def test_wake_publishes_and_recovers(proxy, redis_srv):
    db = redis_srv.client()
    db("FLUSHALL")
    port = free_port()
    hset(db, "sandbox:sbxwake", runner_url="http://127.0.0.1:1", runner_key="k", public=1,
         org="org1", state="stopped", wake="http", direct=1, warning=0, auth_token="tok-wake")
    hset(db, "sandbox:sbxwakepriv", runner_url="http://127.0.0.1:1", runner_key="k", public=0,
         org="org1", state="stopped", wake="http", direct=1, warning=0, auth_token="tok-wakepriv")
    sub = Subscriber(redis_srv, "proxy:wake")
    px = proxy(extra=[f"redis 127.0.0.1:{redis_srv.port}"], default_sandboxes_too=False)
    try:
        # Unauthenticated: no wake. A sentinel proves nothing was published before it.
        resp = raw(px, "GET", "/", host(port, "sbxwakepriv"))
        assert resp.status == 401
        db("PUBLISH", "proxy:wake", "sentinel")
        assert sub.next() == "sentinel", "an unauthenticated request asked for a wake"

        resp = raw(px, "GET", "/", host(port, "sbxwake"), [("Accept", "application/json")])
        assert resp.status == 503 and resp.header("Retry-After") == "5"
        assert resp.json()["code"] == "SANDBOX_STARTING"
        assert sub.next() == "sbxwake"

        # The control plane starts it: service up, state started, invalidation.
        with Site({"woken": port}) as site:
            assert site.ports["woken"] == port
            db("HSET", "sandbox:sbxwake", "state", "started")
            db("PUBLISH", "proxy:invalidate", "sandbox:sbxwake")

            def through():
                r = raw(px, "GET", "/api/data", host(port, "sbxwake"))
                return r if r.status == 200 else None
            r = wait_until(through, timeout=5, what="request through after the wake")
            assert r.json()["app"] == "woken"
    finally:
        sub.close()
        db.close()


def test_wake_html_in_redis_mode(proxy, redis_srv):
    db = redis_srv.client()
    db("FLUSHALL")
    port = free_port()
    hset(db, "sandbox:sbxwake2", runner_url="http://127.0.0.1:1", runner_key="k", public=1,
         org="org1", state="stopped", wake="http", direct=1, warning=0)
    px = proxy(extra=[f"redis 127.0.0.1:{redis_srv.port}"], default_sandboxes_too=False)
    resp = raw(px, "GET", "/", host(port, "sbxwake2"), [("Accept", NAV_ACCEPT),
                                                          ("User-Agent", CHROME)])
    assert resp.status == 503 and b'http-equiv="refresh"' in resp.body
    db.close()


def test_wake_deduplicated_and_not_for_starting(proxy, redis_srv):
    """LESSONS A17: repeated requests to a sleeping sandbox ask for one start;
    a sandbox already `starting` gets the 503 page without another request."""
    db = redis_srv.client()
    db("FLUSHALL")
    port = free_port()
    hset(db, "sandbox:sbxdedup", runner_url="http://127.0.0.1:1", runner_key="k", public=1,
         org="org1", state="stopped", wake="http", direct=1, warning=0)
    hset(db, "sandbox:sbxstarting", runner_url="http://127.0.0.1:1", runner_key="k", public=1,
         org="org1", state="starting", wake="http", direct=1, warning=0)
    sub = Subscriber(redis_srv, "proxy:wake")
    px = proxy(extra=[f"redis 127.0.0.1:{redis_srv.port}"], default_sandboxes_too=False)
    try:
        for _ in range(3):
            resp = raw(px, "GET", "/", host(port, "sbxdedup"))
            assert resp.status == 503 and resp.header("Retry-After") == "5"
        resp = raw(px, "GET", "/", host(port, "sbxstarting"))
        assert resp.status == 503 and resp.header("Retry-After") == "5"
        db("PUBLISH", "proxy:wake", "sentinel")
        got = []
        while True:
            m = sub.next()
            assert m is not None, f"sentinel never arrived; got {got}"
            if m == "sentinel":
                break
            got.append(m)
        assert got == ["sbxdedup"], got
    finally:
        sub.close()
        db.close()

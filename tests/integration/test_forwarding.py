"""What the runner receives: target, headers, direct mode, dot segments,
WebSocket upgrades (SPEC section 9)."""
import base64
import os

import pytest

from helpers import (BASE_DOMAIN, DIRECT, PRIV, PRIV_TOKEN, PUB, RUNNER_KEY, host,
                     raw_exchange, request_bytes, runner_prefix)


def hdrs(rec, name):
    name = name.lower()
    return [v for k, v in rec["headers"] if k.lower() == name]


def only(rec, name):
    vals = hdrs(rec, name)
    assert len(vals) == 1, f"{name}: {vals!r} in {rec['headers']!r}"
    return vals[0]


# ------------------------------------------------------- injected headers --

def test_runner_host_and_key(px, runner):
    r = px.get("/h", host=host(3000, PUB))
    assert r.status_code == 200
    rec = runner.requests()[0]
    assert only(rec, "Host") == f"127.0.0.1:{runner.port}"
    assert only(rec, "X-Daytona-Authorization") == f"Bearer {RUNNER_KEY}"


def test_client_x_daytona_authorization_replaced(px, runner):
    r = px.get("/h", host=host(3000, PUB),
               headers={"X-Daytona-Authorization": "Bearer attacker-supplied"})
    assert r.status_code == 200, r.text   # runner answers 403 on a wrong/duplicated key
    rec = runner.requests()[0]
    assert hdrs(rec, "X-Daytona-Authorization") == [f"Bearer {RUNNER_KEY}"]


def test_client_x_daytona_authorization_replaced_raw_duplicates(px, runner):
    req = request_bytes("GET", "/dup", host(3000, PUB), headers=[
        ("X-Daytona-Authorization", "Bearer one"), ("x-daytona-authorization", "Bearer two")])
    r = raw_exchange(px.port, req)
    assert r is not None and r.status == 200, r
    rec = runner.requests()[0]
    assert hdrs(rec, "X-Daytona-Authorization") == [f"Bearer {RUNNER_KEY}"]


def test_toolbox_client_x_daytona_authorization_replaced(px, runner):
    r = px.get(f"/toolbox/{PRIV}/x", headers={"X-Daytona-Preview-Token": PRIV_TOKEN,
                                               "X-Daytona-Authorization": "Bearer evil"})
    assert r.status_code == 200
    assert hdrs(runner.requests()[0], "X-Daytona-Authorization") == [f"Bearer {RUNNER_KEY}"]


def test_x_forwarded_host_defaults_to_client_host(px, runner):
    px.get("/h", host=host(3000, PUB))
    rec = runner.requests()[0]
    assert only(rec, "X-Forwarded-Host") == host(3000, PUB)


def test_x_forwarded_host_incoming_kept(px, runner):
    px.get("/h", host=host(3000, PUB), headers={"X-Forwarded-Host": "customer.example.com"})
    rec = runner.requests()[0]
    assert hdrs(rec, "X-Forwarded-Host") == ["customer.example.com"]


def test_x_forwarded_for_untrusted_peer_replaced(px, runner):
    px.get("/h", host=host(3000, PUB), headers={"X-Forwarded-For": "6.6.6.6"})
    rec = runner.requests()[0]
    assert hdrs(rec, "X-Forwarded-For") == ["127.0.0.1"]


def test_x_forwarded_for_set_without_incoming(px, runner):
    px.get("/h", host=host(3000, PUB))
    assert hdrs(runner.requests()[0], "X-Forwarded-For") == ["127.0.0.1"]


def test_x_forwarded_for_trusted_peer_appended(proxy, runner):
    p = proxy(settings={"trusted_proxies": "127.0.0.1/32"})
    p.get("/h", host=host(3000, PUB), headers={"X-Forwarded-For": "203.0.113.7"})
    vals = hdrs(runner.requests()[0], "X-Forwarded-For")
    assert len(vals) == 1, vals
    assert [v.strip() for v in vals[0].split(",")] == ["203.0.113.7", "127.0.0.1"]


def test_x_forwarded_for_other_trusted_range_replaced(proxy, runner):
    p = proxy(settings={"trusted_proxies": "10.0.0.0/8"})
    p.get("/h", host=host(3000, PUB), headers={"X-Forwarded-For": "203.0.113.7"})
    assert hdrs(runner.requests()[0], "X-Forwarded-For") == ["127.0.0.1"]


def test_x_forwarded_proto_http(px, runner):
    px.get("/h", host=host(3000, PUB), headers={"X-Forwarded-Proto": "https"})
    assert hdrs(runner.requests()[0], "X-Forwarded-Proto") == ["http"]


def test_hop_by_hop_and_consumed_headers_stripped(px, runner):
    req = request_bytes("GET", "/hop", host(3000, PUB), headers=[
        ("Connection", "keep-alive, X-Custom-Hop"),
        ("X-Custom-Hop", "must-go"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "gzip"),
        ("Trailer", "X-Foo"),
        ("Upgrade", "h2c"),
        ("X-Daytona-Skip-Last-Activity-Update", "true"),
        ("X-Daytona-Skip-Preview-Warning", "true"),
        ("X-Daytona-Disable-CORS", "true"),
        ("X-App-Header", "keep-me"),
        ("X-Multi", "a"),
        ("X-Multi", "b"),
    ])
    r = raw_exchange(px.port, req)
    assert r is not None and r.status == 200, r
    rec = runner.requests()[0]
    names = {k.lower() for k, _ in rec["headers"]}
    for gone in ("x-custom-hop", "keep-alive", "proxy-connection", "trailer", "upgrade",
                 "x-daytona-skip-last-activity-update", "x-daytona-skip-preview-warning",
                 "x-daytona-disable-cors"):
        assert gone not in names, (gone, rec["headers"])
    assert hdrs(rec, "TE") in ([], ["trailers"]), rec["headers"]
    for v in hdrs(rec, "Connection"):
        assert "x-custom-hop" not in v.lower()
    assert hdrs(rec, "X-App-Header") == ["keep-me"]
    multi = [x.strip() for v in hdrs(rec, "X-Multi") for x in v.split(",")]
    assert multi == ["a", "b"]


def test_end_to_end_headers_preserved(px, runner):
    px.get("/h", host=host(3000, PUB), headers={
        "Authorization": "Bearer app-own-token", "Cookie": "app=1; theme=dark",
        "User-Agent": "integration-test/1", "Accept-Encoding": "gzip"})
    rec = runner.requests()[0]
    # public sandbox: the proxy did not consume Authorization, so the app gets it
    assert hdrs(rec, "Authorization") == ["Bearer app-own-token"]
    assert "app=1" in ";".join(hdrs(rec, "Cookie"))
    assert hdrs(rec, "User-Agent") == ["integration-test/1"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
def test_methods_forwarded(px, runner, method):
    body = b"payload" if method in ("POST", "PUT", "PATCH") else b""
    req = request_bytes(method, "/m", host(3000, PUB), body=body)
    r = raw_exchange(px.port, req)
    assert r is not None and r.status == 200, r
    rec = runner.requests()[0]
    assert rec["method"] == method
    assert rec["body_len"] == len(body)


@pytest.mark.parametrize("code", [201, 404, 418, 500, 503])
def test_upstream_status_passed_through(px, runner, code):
    r = px.get(f"/status/{code}", host=host(3000, PUB))
    assert r.status_code == code
    assert r.json()["target"] == runner_prefix(PUB, 3000) + f"/status/{code}"


def test_response_headers_passed_through(px, runner):
    r = px.get("/h", host=host(3000, PUB))
    assert r.headers.get("X-Runner-Conn"), r.headers
    assert r.headers.get("X-Runner-Seq") == str(runner.requests()[0]["seq"])


def test_http10_client(px, runner):
    req = request_bytes("GET", "/ten", host(3000, PUB), version="HTTP/1.0")
    r = raw_exchange(px.port, req)
    assert r is not None and r.status == 200, r
    assert r.json()["target"] == runner_prefix(PUB, 3000) + "/ten"


# --------------------------------------------------- byte-exact targets --

EXACT_TARGETS = [
    "/_next/static/chunks/app/(local)/%40topbar/%5B%5B...slug%5D%5D/page.js",
    "/a%2Fb/c%2fd",
    "/a//b///c",
    "/%7Euser/x;param=1,2",
    "/a%25b%20c+d",
    "/.well-known/acme-challenge/x",
    "/..foo/bar../...",
    "/q?x=%2F%2e%2e&y=a+b&y=a%20b&&=&z",
    "/q?redirect=http://example.com/a/../b?c=d",
    "/q?path=../../etc/passwd",
    "/trailing/slash/",
    "/empty/query/?",
    "/",
]


@pytest.mark.parametrize("target", EXACT_TARGETS)
def test_target_forwarded_byte_for_byte(px, runner, target):
    r = raw_exchange(px.port, request_bytes("GET", target, host(3000, PUB)))
    assert r is not None and r.status == 200, r
    reqs = runner.requests()
    assert len(reqs) == 1
    assert reqs[0]["target"] == runner_prefix(PUB, 3000) + target


@pytest.mark.parametrize("target", EXACT_TARGETS[:5])
def test_toolbox_target_forwarded_byte_for_byte(px, runner, target):
    r = raw_exchange(px.port, request_bytes("GET", f"/toolbox/{PRIV}{target}", BASE_DOMAIN,
                                            headers=[("X-Daytona-Preview-Token", PRIV_TOKEN)]))
    assert r is not None and r.status == 200, r
    assert runner.requests()[0]["target"] == f"/sandboxes/{PRIV}/toolbox{target}"


DOT_TARGETS = [
    "/a/../b",
    "/..",
    "/a/..",
    "/./a",
    "/a/./b",
    "/a/.",
    "/a/%2e%2e/b",
    "/a/%2E%2e/b",
    "/a/.%2e/b",
    "/a/%2e./b",
    "/a/%2e/b",
    "/a%2f..%2fb",
    "/a%2F..%2Fb",
    "/a%2f%2e%2e%2fb",
    "/a/..?x=1",
]


@pytest.mark.parametrize("target", DOT_TARGETS)
def test_dot_segments_rejected(px, runner, target):
    r = raw_exchange(px.port, request_bytes("GET", target, host(3000, PUB)))
    assert r is not None, "expected a 400 response, got a closed connection"
    assert r.status == 400, r
    assert runner.requests() == []


@pytest.mark.parametrize("target", ["/../sbxpub/files", "/files/%2e%2e/%2e%2e/other",
                                    "/files%2f..%2f..%2fother"])
def test_toolbox_dot_segments_rejected(px, runner, target):
    r = raw_exchange(px.port, request_bytes("GET", f"/toolbox/{PRIV}{target}", BASE_DOMAIN,
                                            headers=[("X-Daytona-Preview-Token", PRIV_TOKEN)]))
    assert r is not None and r.status == 400, r
    assert runner.requests() == []


# ---------------------------------------------------------- direct mode --

def test_direct_mode_connects_to_host_port_path_unchanged(px, runner):
    target = "/direct/%40x/y?q=1&r=%2F"
    r = raw_exchange(px.port, request_bytes("GET", target, host(runner.port, DIRECT)))
    assert r is not None and r.status == 200, r
    reqs = runner.requests()
    assert len(reqs) == 1
    assert reqs[0]["target"] == target


def test_direct_mode_post_body(px, runner):
    body = os.urandom(100000)
    r = px.request("POST", "/direct/upload", host=host(runner.port, DIRECT), data=body)
    assert r.status_code == 200
    rec = runner.requests()[0]
    assert rec["target"] == "/direct/upload"
    import hashlib
    assert rec["body_sha256"] == hashlib.sha256(body).hexdigest()


# ------------------------------------------------------------- websocket --

def ws_request(hostname, extra=(), connection="Upgrade", path="/ws"):
    key = base64.b64encode(os.urandom(16)).decode()
    return request_bytes("GET", path, hostname, headers=[
        ("Upgrade", "websocket"), ("Connection", connection), ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"), *extra])


@pytest.mark.parametrize("connection", ["Upgrade", "keep-alive, Upgrade", "upgrade"])
def test_websocket_upgrade_spliced(px, runner, connection):
    with px.raw() as c:
        c.send(ws_request(host(3000, PUB), connection=connection))
        r = c.read_response()
        assert r.status == 101, r
        assert (r.header("Upgrade") or "").lower() == "websocket"
        payload = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58" + bytes(range(256)) * 4
        c.send(payload)
        got = b""
        while len(got) < len(payload):
            got += c.read_some()
        assert got == payload
    rec = runner.requests()[0]
    assert rec["target"] == runner_prefix(PUB, 3000) + "/ws"
    assert hdrs(rec, "Upgrade") == ["websocket"]
    assert any("upgrade" in v.lower() for v in hdrs(rec, "Connection"))
    assert hdrs(rec, "X-Daytona-Authorization") == [f"Bearer {RUNNER_KEY}"]


def test_websocket_private_requires_token(px, runner):
    r = raw_exchange(px.port, ws_request(host(3000, PRIV)))
    assert r is not None and r.status == 401, r
    assert runner.requests() == []
    with px.raw() as c:
        c.send(ws_request(host(3000, PRIV), extra=[("X-Daytona-Preview-Token", PRIV_TOKEN)]))
        r = c.read_response()
        assert r.status == 101
        c.send(b"ping-bytes")
        got = b""
        while len(got) < 10:
            got += c.read_some()
        assert got == b"ping-bytes"


def test_websocket_client_close_closes_upstream(px, runner):
    from helpers import wait_until
    c = px.raw()
    c.send(ws_request(host(3000, PUB)))
    assert c.read_response().status == 101
    conn_id = runner.requests()[0]["conn"]
    c.close()
    wait_until(lambda: not [x for x in runner.conns() if x["id"] == conn_id][0]["open"],
               timeout=5, what="runner-side websocket connection closed")


# ------------------------------------------------------ response headers --

def test_response_hop_by_hop_stripped(px, runner):
    r = raw_exchange(px.port, request_bytes("GET", "/hopresp", host(3000, PUB)))
    assert r is not None and r.status == 200, r
    names = [k.lower() for k, _ in r.headers]
    assert "x-resp-hop" not in names, r.headers
    assert "proxy-connection" not in names, r.headers
    for v in r.header_all("Connection"):
        assert "x-resp-hop" not in v.lower()
    assert r.header("X-Resp-Kept") == "yes"
    assert sorted(r.header_all("Set-Cookie")) == ["a=1; Path=/", "b=2; Path=/"]
    assert r.body == b"hop"


# ------------------------------------------------- query auth parameter --

@pytest.mark.parametrize("query,forwarded", [
    ("a=1&DAYTONA_SANDBOX_AUTH_KEY={t}&b=%2F+x", "a=1&b=%2F+x"),
    ("DAYTONA_SANDBOX_AUTH_KEY={t}&z=%41%42&y", "z=%41%42&y"),
    ("b=2&a=1&DAYTONA_SANDBOX_AUTH_KEY={t}", "b=2&a=1"),
])
def test_query_auth_key_consumed_rest_byte_exact(px, runner, query, forwarded):
    r = raw_exchange(px.port, request_bytes("GET", "/qk?" + query.format(t=PRIV_TOKEN),
                                            host(3000, PRIV)))
    assert r is not None and r.status == 200, r
    rec = runner.requests()[0]
    assert rec["target"] == runner_prefix(PRIV, 3000) + "/qk?" + forwarded
    assert PRIV_TOKEN not in str(rec)


def test_query_auth_key_only_param(px, runner):
    r = raw_exchange(px.port, request_bytes("GET", f"/qk?DAYTONA_SANDBOX_AUTH_KEY={PRIV_TOKEN}",
                                            host(3000, PRIV)))
    assert r is not None and r.status == 200, r
    assert runner.requests()[0]["target"] in (runner_prefix(PRIV, 3000) + "/qk",
                                              runner_prefix(PRIV, 3000) + "/qk?")


def test_query_auth_key_wrong_401(px, runner):
    r = px.get("/qk?DAYTONA_SANDBOX_AUTH_KEY=wrong", host=host(3000, PRIV))
    assert r.status_code == 401
    assert runner.requests() == []

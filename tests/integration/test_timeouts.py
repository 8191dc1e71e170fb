"""Upstream and client timeouts (SPEC sections 9, 10)."""
import time

from helpers import (DEAD, PRIV, PRIV_TOKEN, PUB, host, request_bytes, runner_prefix)


def test_runner_never_answers_504(proxy, runner):
    p = proxy(settings={"response_header_timeout": "1"})
    t0 = time.monotonic()
    r = p.get("/never", host=host(3000, PUB), headers={"Accept": "application/json"}, timeout=15)
    elapsed = time.monotonic() - t0
    assert r.status_code == 504, r.text
    assert 0.8 <= elapsed < 5, elapsed
    body = r.json()
    assert body["statusCode"] == 504
    assert len(runner.find("/never")) == 1   # reached the runner exactly once
    # the proxy is fine afterwards, on the same upstream
    r = p.get("/after", host=host(3000, PUB))
    assert r.status_code == 200


def test_toolbox_never_answers_504(proxy, runner):
    p = proxy(settings={"response_header_timeout": "1"})
    r = p.get(f"/toolbox/{PRIV}/never", headers={"X-Daytona-Preview-Token": PRIV_TOKEN},
              timeout=15)
    assert r.status_code == 504
    assert len(runner.find("/never")) == 1


def test_response_header_timeout_does_not_limit_body(proxy, runner):
    p = proxy(settings={"response_header_timeout": "1"})
    with p.raw(timeout=10) as c:
        c.send(request_bytes("GET", "/sse?name=longbody", host(3000, PUB)))
        status, _, _, _, _ = c.read_head()
        assert status == 200
        got = b""
        while b"data: first" not in got:
            got += c.read_some()
        # hold the body open for twice response_header_timeout: this sleep is
        # the condition under test, not synchronisation
        time.sleep(2)
        runner.signal("longbody")
        while b"data: second" not in got:
            got += c.read_some()


def test_runner_port_closed_502(px, runner):
    t0 = time.monotonic()
    r = px.get("/x", host=host(3000, DEAD), headers={"Accept": "application/json"})
    assert r.status_code == 502, r.text
    assert time.monotonic() - t0 < 3
    body = r.json()
    assert body["statusCode"] == 502
    assert body["method"] == "GET"
    assert px.health_ok()


def test_runner_port_closed_502_html_for_browser(px, runner):
    r = px.get("/x", host=host(3000, DEAD),
               headers={"Accept": "text/html", "User-Agent": "Mozilla/5.0 Firefox/121.0"})
    assert r.status_code == 502
    assert r.headers.get("Content-Type", "").startswith("text/html")
    assert "502" in r.text


def test_client_header_timeout_partial_head(proxy, runner):
    p = proxy(settings={"client_header_timeout": "1"})
    with p.raw(timeout=6) as c:
        c.send(f"GET /slowloris HTTP/1.1\r\nHost: {host(3000, PUB)}\r\nX-Partial: ab")
        t0 = time.monotonic()
        closed = c.is_closed(timeout=6)
        elapsed = time.monotonic() - t0
        assert closed, "proxy kept a stalled partial request head open"
        assert elapsed < 4, elapsed
        if c.buf:
            assert c.buf.startswith(b"HTTP/1.1 408") or c.buf.startswith(b"HTTP/1.1 400"), c.buf
    assert runner.requests() == []
    assert p.health_ok()


def test_client_header_timeout_no_bytes(proxy, runner):
    p = proxy(settings={"client_header_timeout": "1", "keepalive_timeout": "1"})
    with p.raw(timeout=6) as c:
        t0 = time.monotonic()
        assert c.is_closed(timeout=6)
        assert time.monotonic() - t0 < 4


def test_keepalive_timeout_closes_idle_client(proxy, runner):
    p = proxy(settings={"keepalive_timeout": "1"})
    with p.raw(timeout=6) as c:
        c.send(request_bytes("GET", "/one", host(3000, PUB)))
        assert c.read_response().status == 200
        t0 = time.monotonic()
        assert c.is_closed(timeout=6), "idle keep-alive connection not closed"
        assert time.monotonic() - t0 < 4


def test_keepalive_connection_survives_short_idle(proxy, runner):
    """With the default keepalive_timeout, a connection idle for a moment is
    still usable."""
    p = proxy()
    with p.raw(timeout=6) as c:
        for i in range(2):
            c.send(request_bytes("GET", f"/two/{i}", host(3000, PUB)))
            r = c.read_response()
            assert r.status == 200
            assert r.json()["target"] == runner_prefix(PUB, 3000) + f"/two/{i}"
            assert not c.is_closed(timeout=1.2)


def test_runner_garbage_response_502(px, runner):
    r = px.get("/garbage", host=host(3000, PUB))
    assert r.status_code == 502
    assert px.health_ok()


def test_ws_idle_timeout(proxy, runner):
    import base64
    import os
    p = proxy(settings={"ws_idle_timeout": "1"})
    with p.raw(timeout=8) as c:
        key = base64.b64encode(os.urandom(16)).decode()
        c.send(request_bytes("GET", "/ws", host(3000, PUB), headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13")]))
        assert c.read_response().status == 101
        c.send(b"active")
        got = b""
        while len(got) < 6:
            got += c.read_some()
        t0 = time.monotonic()
        assert c.is_closed(timeout=8), "idle WebSocket tunnel not closed"
        assert time.monotonic() - t0 < 5


def test_stopped_sandbox_with_wake_gets_503_retry_after(proxy, runner, dead_port):
    p = proxy(sandboxes=[
        f"sandbox sleepy runner_url=http://127.0.0.1:{dead_port} runner_key=k public=1 "
        "state=stopped wake=http",
        f"sandbox sleepy2 runner_url=http://127.0.0.1:{dead_port} runner_key=k public=1 "
        "state=stopped wake=none",
    ])
    r = p.get("/x", host=host(3000, "sleepy"))
    assert r.status_code == 503, r.text
    assert r.headers.get("Retry-After") == "5"
    r = p.get("/x", host=host(3000, "sleepy2"))
    assert r.status_code == 502, r.text

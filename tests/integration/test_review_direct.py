"""Outside review, issue 9 item 1: direct mode (SPEC 9, new text).

A direct sandbox talks to sandbox code itself: it targets `addr` (else the
runner's host), never sends the runner key, and refuses the runner's own port
and any port outside `ports` when set. On the reviewed commit a public direct
sandbox on the runner's host let anyone reach the runner's API (port of
runner_url) with the proxy's key: a private sandbox was served to a stranger.
"""
from helpers import accept_target, DIRECT, PRIV, RUNNER_KEY, host, raw_exchange, request_bytes


def _auth_headers(rec):
    return [v for k, v in rec["headers"] if k.lower() == "x-daytona-authorization"]


def test_direct_mode_never_sends_runner_key(px, runner):
    r = raw_exchange(px.port, request_bytes("GET", "/direct/app", host(runner.port, DIRECT),
                                            headers=[("X-Daytona-Authorization", "Bearer forged")]))
    assert r is not None and r.status == 200, r
    rec = runner.wait_for("/direct/app")[0]
    assert rec["target"] == "/direct/app"
    assert _auth_headers(rec) == []          # neither ours nor the client's
    assert RUNNER_KEY not in repr(rec["headers"])


def test_direct_mode_runner_port_is_refused(proxy, runner):
    """The reviewer's probe: Host {runner port}-dpub with a runner API path."""
    p = proxy(sandboxes=[f"sandbox dpub runner_url=http://127.0.0.1:{runner.port} "
                         f"runner_key={RUNNER_KEY} public=1 direct=1"])
    target = f"/sandboxes/{PRIV}/toolbox/proxy/3000/secret"
    r = raw_exchange(p.port, request_bytes("GET", target, host(runner.port, "dpub"),
                                           headers=[("Accept", "application/json")]))
    assert r is not None and r.status == 403, r
    assert r.json()["code"] == "PORT_NOT_ALLOWED"
    assert runner.requests() == []
    # WebSocket upgrades go the same way
    ws = request_bytes("GET", target, host(runner.port, "dpub"), headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])
    r = raw_exchange(p.port, ws)
    assert r is not None and r.status == 403, r
    assert runner.requests() == []


def test_direct_mode_ports_list(proxy, runner, dead_port):
    p = proxy(sandboxes=[
        f"sandbox dlist runner_url=http://127.0.0.1:{dead_port} runner_key={RUNNER_KEY} "
        f"public=1 direct=1 ports=3000,{runner.port}-{runner.port}",
        f"sandbox dother runner_url=http://127.0.0.1:{dead_port} runner_key={RUNNER_KEY} "
        f"public=1 direct=1 ports=3000-3010"])
    r = raw_exchange(p.port, request_bytes("GET", "/in-list", host(runner.port, "dlist")))
    assert r is not None and r.status == 200, r
    assert len(runner.find("/in-list")) == 1
    r = raw_exchange(p.port, request_bytes("GET", "/not-listed", host(runner.port, "dother"),
                                           headers=[("Accept", "application/json")]))
    assert r is not None and r.status == 403, r
    assert runner.find("/not-listed") == []


def test_direct_mode_targets_addr(proxy, runner, dead_port):
    """addr wins over the runner URL's host: the runner here is unreachable."""
    p = proxy(sandboxes=[
        f"sandbox daddr runner_url=http://127.0.0.2:{dead_port} runner_key={RUNNER_KEY} "
        f"public=1 direct=1 addr=127.0.0.1"])
    r = raw_exchange(p.port, request_bytes("GET", "/via-addr", host(runner.port, "daddr")))
    assert r is not None and r.status == 200, r
    rec = runner.wait_for("/via-addr")[0]
    assert _auth_headers(rec) == []


def test_direct_mode_toolbox_still_uses_the_runner(proxy, runner):
    """Toolbox requests of a direct sandbox go to the runner, with its key."""
    p = proxy(sandboxes=[f"sandbox dtool runner_url=http://127.0.0.1:{runner.port} "
                         f"runner_key={RUNNER_KEY} public=1 direct=1 auth_token=tt"])
    r = raw_exchange(p.port, request_bytes("GET", "/toolbox/dtool/files", "proxy.test",
                                           headers=[("X-Daytona-Preview-Token", "tt")]))
    assert r is not None and r.status == 200, r
    rec = runner.wait_for("/sandboxes/dtool/toolbox/files")[0]
    assert rec["auth_ok"] is True


def test_bad_direct_fields_rejected_by_config(proxy_bin, tmp_path):
    import subprocess
    for bad in ("ports=0", "ports=3000,", "ports=9-8", "addr=a/b"):
        conf = tmp_path / "bad.conf"
        conf.write_text("listen 127.0.0.1:1\n"
                        f"sandbox s runner_url=http://127.0.0.1:9 runner_key=k direct=1 {bad}\n")
        r = subprocess.run([proxy_bin, "-t", "-c", str(conf)], capture_output=True, text=True,
                           timeout=10)
        assert r.returncode == 1, (bad, r.stdout, r.stderr)


def test_sample_config_has_no_unsafe_direct_sandbox():
    """The bundled proxy.conf must not show a direct sandbox on the runner's port
    without a ports list (the shape the review exploited)."""
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    text = open(os.path.join(root, "proxy.conf")).read()
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        if not line.startswith("sandbox ") or " direct=1" not in line:
            continue
        assert re.search(r"\bports=\S+", line), line
        assert re.search(r"\baddr=\S+", line), line


# ------------------------------------------------ item 3: stale Host bytes --

def test_accept_cookie_domain_is_this_requests_host(px):
    """Keep-alive: a long signed-token host, then the accept endpoint with
    Host: a. The reviewed commit answered Domain=a000-secrettoken...: the label
    (a credential) of the previous request leaked into this cookie."""
    token = "secrettoken" + "x" * 40
    with px.raw() as c:
        c.send(request_bytes("GET", "/", host(3000, token), headers=[("Accept", "application/json")]))
        first = c.read_response()
        assert first.header("connection") != "close", first
        c.send(request_bytes("POST", "/accept-daytona-preview-warning?redirect=/", "a",
                             headers=[("Content-Length", "0")]))
        r = c.read_response()
    assert accept_target(r.status, r.body) == "/", r
    cookie = r.header("set-cookie")
    assert "Domain=a;" in cookie, cookie
    assert "secrettoken" not in r.raw_head.decode("latin-1")


def test_query_auth_cookie_domain_after_longer_host(px):
    from helpers import PRIV_TOKEN, UUID_SBX
    with px.raw() as c:
        c.send(request_bytes("GET", "/first", host(3000, UUID_SBX)))
        assert c.read_response().status == 200
        c.send(request_bytes("GET", f"/second?DAYTONA_SANDBOX_AUTH_KEY={PRIV_TOKEN}",
                             host(3000, PRIV)))
        r = c.read_response()
    assert r.status == 200, r
    cookie = r.header("set-cookie")
    assert cookie is not None and cookie.endswith(f"Domain={host(3000, PRIV)}"), cookie


# ------------------------- from reading: pooled connection with stray bytes --

class SloppyApp:
    """A direct-mode app that answers HEAD with its headers and then, a moment
    later, a body anyway -- shaped like a whole response, as an app bent on
    confusing the next request would. Every other request gets 'real:{path}'."""

    def __init__(self):
        import socket
        import threading
        from helpers import RESERVED_PORTS
        while True:  # its port is a preview port: not one that needs credentials
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
            if self.sock.getsockname()[1] not in RESERVED_PORTS:
                break
            self.sock.close()
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        import time
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                method, path = head.split(b" ")[:2]
                if method == b"HEAD":
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
                    time.sleep(0.05)
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!")
                    continue
                body = b"real:" + path
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            return
        finally:
            c.close()

    def close(self):
        self.sock.close()


def test_direct_app_bytes_after_head_never_answer_the_next_request(proxy, dead_port):
    app = SloppyApp()
    try:
        p = proxy(sandboxes=[f"sandbox dsloppy runner_url=http://127.0.0.1:{dead_port} "
                             f"runner_key={RUNNER_KEY} public=1 direct=1"])
        h = host(app.port, "dsloppy")
        for i in range(3):
            with p.raw(timeout=10) as c:
                # pipelined: the GET is taken up the moment the HEAD's answer is in
                c.send(request_bytes("HEAD", "/h", h) + request_bytes("GET", f"/g{i}", h))
                r1 = c.read_response(head_request=True)
                assert r1.status == 200
                r2 = c.read_response()
                assert r2.status == 200
                assert r2.body == f"real:/g{i}".encode(), r2.body
    finally:
        app.close()


# --------------------------------- from reading: the proxy's own cookies --

def test_sandbox_cannot_set_the_proxys_cookies(px, runner):
    from helpers import PUB
    r = raw_exchange(px.port, request_bytes("GET", "/setcookie", host(3000, PUB)))
    assert r is not None and r.status == 200, r
    cookies = r.header_all("set-cookie")
    assert cookies == ["app=kept; Path=/", "daytona-preview-page-accepted-not=kept"], cookies


# ------------------------------- also found: stale upstream_ms in the log --

def test_access_log_upstream_ms_is_per_exchange(px, runner):
    from helpers import PUB, wait_until
    with px.raw() as c:
        c.send(request_bytes("GET", "/forwarded-first", host(3000, PUB)))
        assert c.read_response().status == 200
        c.send(request_bytes("GET", "/local-404-after", "proxy.test"))
        assert c.read_response().status == 404
    line = wait_until(lambda: next((l for l in px.log_lines()
                                    if "ACCESS" in l and "path=/local-404-after" in l), None),
                      what="the access log line of the local answer")
    assert "upstream_ms=0.0 " in line, line
    fwd = next(l for l in px.log_lines() if "path=/forwarded-first" in l)
    assert "upstream_ms=0.0 " not in fwd, fwd


# ------------------- also found: test binaries of one machine's checkout --

def test_default_binaries_resolve_from_this_checkout():
    import os
    import conftest
    import test_proxyctl
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert conftest.DEFAULT_BIN == os.path.join(root, "build", "preview-proxy")
    assert test_proxyctl.DEFAULT_BIN == os.path.join(root, "build", "proxyctl")
    for mod in (conftest, test_proxyctl):
        src = open(mod.__file__).read()
        assert '"/work/' not in src, mod.__file__

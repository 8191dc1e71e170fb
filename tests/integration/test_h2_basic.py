"""HTTP/2 (TLS ALPN h2 and h2c prior knowledge): the same routing, auth and
forwarding as HTTP/1.1, multiplexing (h2load), SETTINGS, large bodies both ways
with flow control, and a stalled stream not blocking the others."""
import hashlib
import json
import re
import socket
import subprocess
import threading
import time

import pytest

from helpers import (accept_target, BASE_DOMAIN, DIRECT, PRIV, PRIV_TOKEN, PUB, RUNNER_KEY, host, pattern_bytes,
                     RESERVED_PORTS, raw_exchange, request_bytes, runner_prefix)
from tlsfix import *  # noqa: F401,F403
from tlsfix import H2Client, curl, sha256_file

MiB = 1024 * 1024


@pytest.fixture
def tp(tls_proxy):
    return tls_proxy()


def client(p, pki, tls, sni=BASE_DOMAIN, **kw):
    if tls:
        return H2Client(p.tls_port, tls=True, sni=sni, pki=pki, **kw)
    return H2Client(p.port, tls=False, **kw)


def scheme(tls):
    return "https" if tls else "http"


MODES = [pytest.param(True, id="tls"), pytest.param(False, id="h2c")]


# ----------------------------------------------------------- settings --

@pytest.mark.parametrize("tls", MODES)
def test_server_settings(tp, pki, tls):
    from h2.settings import SettingCodes as S
    with client(tp, pki, tls) as c:
        st = c.get("/health", BASE_DOMAIN, scheme=scheme(tls))
        assert st.status == 200
        assert json.loads(bytes(st.data))["status"] == "ok"
        rs = c.remote_settings
        assert rs.get(S.MAX_CONCURRENT_STREAMS) == 100, rs
        assert rs.get(S.INITIAL_WINDOW_SIZE) == 256 * 1024, rs
        assert rs.get(S.MAX_HEADER_LIST_SIZE) == 64 * 1024, rs
        assert rs.get(S.ENABLE_CONNECT_PROTOCOL) == 1, rs


# ------------------------------------------------------------ parity --

def h1_result(p, path, hostname, headers=None, method="GET"):
    """The HTTP/1.1 answer (byte-exact target: requests would normalise /a/../b)."""
    r = raw_exchange(p.port, request_bytes(method, path, hostname, list((headers or {}).items())),
                     head_request=method == "HEAD")
    if r is None:
        return 0, None
    code = None
    if (r.header("content-type") or "").startswith("application/json"):
        try:
            code = r.json().get("code")
        except ValueError:
            pass
    return r.status, code


@pytest.mark.parametrize("tls", MODES)
def test_same_answers_as_http11(tp, pki, runner, tls):
    cases = [
        ("GET", "/health", BASE_DOMAIN, {}),
        ("GET", "/no/such/route", BASE_DOMAIN, {}),
        ("GET", "/x", host(3000, PUB, "a.test"), {}),
        ("GET", "/x", host(3000, "nosuchsbx", "a.test"), {}),
        ("GET", "/secret", host(3000, PRIV, "b.test"), {}),
        ("GET", "/secret", host(3000, PRIV, "b.test"), {"x-daytona-preview-token": "wrong"}),
        ("GET", "/secret", host(3000, PRIV, "b.test"), {"x-daytona-preview-token": PRIV_TOKEN}),
        ("GET", f"/q?DAYTONA_SANDBOX_AUTH_KEY={PRIV_TOKEN}", host(3000, PRIV, "b.test"), {}),
        ("GET", "/status/404", host(3000, PUB), {}),
        ("GET", "/status/204", host(3000, PUB), {}),
        ("DELETE", "/status/503", host(3000, PUB), {}),
        ("GET", "/a/../b", host(3000, PUB), {}),
        ("GET", "/x", host(3000, "sbxdead"), {}),
        ("OPTIONS", "/cors", host(3000, PUB), {"origin": "https://example.com",
                                               "access-control-request-method": "PUT"}),
    ]
    with client(tp, pki, tls) as c:
        for method, path, hostname, hdrs in cases:
            want = h1_result(tp, path, hostname, hdrs, method)
            assert want[0] != 0, (method, path, hostname, "no HTTP/1.1 answer")
            st = c.response(c.request(method, path, hostname, list(hdrs.items()),
                                      scheme=scheme(tls)))
            code = None
            if (st.header("content-type") or "").startswith("application/json"):
                try:
                    code = json.loads(bytes(st.data)).get("code")
                except ValueError:
                    pass
            assert (st.status, code) == want, (method, path, hostname, hdrs)


@pytest.mark.parametrize("tls", MODES)
def test_forwarded_headers(tp, pki, runner, tls):
    h = host(3000, PRIV, "a.test")
    with client(tp, pki, tls, sni=h) as c:
        st = c.get("/fwd/p%20q?a=1&b=%2F", h, scheme=scheme(tls), headers=[
            ("x-daytona-preview-token", PRIV_TOKEN), ("cookie", "a=1"), ("cookie", "b=2"),
            ("x-daytona-authorization", "Bearer forged"), ("user-agent", "h2test/1")])
        assert st.status == 200, bytes(st.data)
    rec = runner.wait_for("/fwd/")[0]
    assert rec["target"] == runner_prefix(PRIV, 3000) + "/fwd/p%20q?a=1&b=%2F"
    assert rec["version"] == "HTTP/1.1"
    hdrs = {}
    for k, v in rec["headers"]:
        hdrs.setdefault(k.lower(), []).append(v)
    assert hdrs["x-daytona-authorization"] == [f"Bearer {RUNNER_KEY}"]
    # each connection reports its own scheme: h2c on the plaintext listener is http
    # even when the proxy also has a TLS listener
    assert hdrs["x-forwarded-proto"] == ["https" if tls else "http"]
    assert hdrs["x-forwarded-host"][0].split(":")[0] == h
    assert "x-daytona-preview-token" not in hdrs
    assert hdrs["cookie"] == ["a=1; b=2"]          # RFC 9113 8.2.3 crumbs joined
    assert hdrs["user-agent"] == ["h2test/1"]
    assert len(hdrs["host"]) == 1
    assert not any(k.startswith(":") for k in hdrs)


def test_h2c_plain_proxy_forwarded_proto(px, runner):
    """No TLS anywhere: h2c requests are forwarded with X-Forwarded-Proto: http
    and cookies without Secure."""
    h = host(3000, PUB)
    with H2Client(px.port, tls=False) as c:
        st = c.get("/proto", h, scheme="http")
        assert st.status == 200
        hdrs = {k.lower(): v for k, v in json.loads(bytes(st.data))["headers"]}
        assert hdrs["x-forwarded-proto"] == "http"
        st = c.response(c.request("POST", "/accept-daytona-preview-warning?redirect=/", h,
                                  scheme="http"))
        assert accept_target(st.status, bytes(st.data)) == "/"
        sc = st.header("set-cookie")
        assert "daytona-preview-page-accepted=true" in sc and "Secure" not in sc, sc


@pytest.mark.parametrize("tls", MODES)
def test_sse_streams_before_end(tp, pki, runner, tls):
    h = host(3000, PUB, "a.test")
    with client(tp, pki, tls, sni=h) as c:
        sid = c.request("GET", "/sse?name=h2sse", h, scheme=scheme(tls))
        c.pump_until(lambda: b"first" in c.streams[sid].data, what="first SSE event")
        assert not c.streams[sid].ended
        runner.signal("h2sse")
        st = c.response(sid)
        assert b"second" in st.data and st.status == 200


@pytest.mark.parametrize("tls", MODES)
def test_head_and_trailers(tp, pki, runner, tls):
    h = host(3000, PUB)
    with client(tp, pki, tls) as c:
        st = c.response(c.request("HEAD", "/download?n=12345", h, scheme=scheme(tls)))
        assert st.status == 200 and bytes(st.data) == b""
        assert st.header("content-length") in ("12345", None)
        st = c.get("/trailers", h, scheme=scheme(tls))
        assert st.status == 200 and bytes(st.data) == b"hello world"


# ---------------------------------------------------------- h2load --

def h2load(args, timeout=60):
    p = subprocess.run(["h2load"] + args, capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


def check_h2load(out, n):
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    assert m, out
    total, started, done, ok, failed, errored, tmo = map(int, m.groups())
    assert (done, ok, failed, errored, tmo) == (n, n, 0, 0, 0), out
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert m and int(m.group(1)) == n, out
    assert "h2" in out  # Application protocol: h2 / h2c


def test_h2load_tls(tp, pki, runner):
    h = host(3000, PUB, "a.test")
    rc, out = h2load(["-n", "2000", "-c", "4", "-m", "50", f"--connect-to=127.0.0.1:{tp.tls_port}",
                      f"https://{h}:{tp.tls_port}/load"])
    assert rc == 0, out
    check_h2load(out, 2000)
    assert "Application protocol: h2" in out
    assert tp.health_ok()


def test_h2load_h2c(tp, runner):
    h = host(3000, PUB)
    rc, out = h2load(["-n", "2000", "-c", "4", "-m", "50", f"--connect-to=127.0.0.1:{tp.port}",
                      f"http://{h}:{tp.port}/load"])
    assert rc == 0, out
    check_h2load(out, 2000)
    assert "Application protocol: h2c" in out


def test_h2load_private_with_token_header(tp, pki, runner):
    h = host(3000, PRIV, "b.test")
    rc, out = h2load(["-n", "500", "-c", "2", "-m", "100", f"--connect-to=127.0.0.1:{tp.tls_port}",
                      "-H", f"X-Daytona-Preview-Token: {PRIV_TOKEN}",
                      f"https://{h}:{tp.tls_port}/load"])
    assert rc == 0, out
    check_h2load(out, 500)


# ----------------------------------------------------- large bodies --

def test_curl_h2_download_20mib(tp, pki, runner, tmp_path):
    h = host(3000, PUB, "a.test")
    out = tmp_path / "dl.bin"
    n = 20 * MiB
    p = curl(["--http2", "--cacert", pki.ca_file, "--resolve", f"{h}:{tp.tls_port}:127.0.0.1",
              "-o", str(out), "-w", "%{http_version} %{http_code}",
              f"https://{h}:{tp.tls_port}/download?n={n}&seed=7"])
    assert p.stdout.split() == [b"2", b"200"], (p.stdout, p.stderr)
    assert out.stat().st_size == n
    assert sha256_file(out) == hashlib.sha256(pattern_bytes(n, seed=7)).hexdigest()


def test_curl_h2_upload_20mib(tp, pki, runner, tmp_path):
    h = host(3000, PUB, "a.test")
    n = 20 * MiB
    data = pattern_bytes(n, seed=9)
    src = tmp_path / "up.bin"
    src.write_bytes(data)
    p = curl(["--http2", "--cacert", pki.ca_file, "--resolve", f"{h}:{tp.tls_port}:127.0.0.1",
              "--data-binary", f"@{src}", "-H", "Content-Type: application/octet-stream",
              "-w", "\n%{http_version} %{http_code}", f"https://{h}:{tp.tls_port}/upload"])
    body, _, tail = p.stdout.rpartition(b"\n")
    assert tail.split() == [b"2", b"200"], (p.stdout[-300:], p.stderr)
    echo = json.loads(body)
    assert echo["body_len"] == n
    assert echo["body_sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("tls", MODES)
def test_python_h2_upload_and_download_20mib(tp, pki, runner, tls):
    h = host(3000, PUB)
    n = 20 * MiB
    up = pattern_bytes(n, seed=11)
    with client(tp, pki, tls, timeout=60) as c:
        # no content-length: the proxy must frame the body itself (chunked upstream)
        s_up = c.request("POST", "/upload?tag=h2up", h, [("content-type", "application/octet-stream")],
                         body=up, scheme=scheme(tls))
        s_dl = c.request("GET", f"/download?n={n}&seed=12", h, scheme=scheme(tls))
        st_up = c.response(s_up, timeout=60)
        st_dl = c.response(s_dl, timeout=60)
    assert st_up.status == 200 and st_dl.status == 200
    echo = json.loads(bytes(st_up.data))
    assert echo["body_len"] == n and echo["body_sha256"] == hashlib.sha256(up).hexdigest()
    assert hashlib.sha256(bytes(st_dl.data)).hexdigest() == hashlib.sha256(
        pattern_bytes(n, seed=12)).hexdigest()


def test_upload_with_content_length_and_many_streams(tp, pki, runner):
    h = host(3000, PUB)
    with client(tp, pki, True, timeout=60) as c:
        bodies = {}
        for i in range(30):
            b = pattern_bytes(100_000 + i * 1000, seed=100 + i)
            sid = c.request("PUT", f"/m{i}", h, [("content-length", str(len(b)))], body=b)
            bodies[sid] = b
        for sid, b in bodies.items():
            st = c.response(sid, timeout=30)
            assert st.status == 200
            e = json.loads(bytes(st.data))
            assert e["body_sha256"] == hashlib.sha256(b).hexdigest()
            assert e["method"] == "PUT"


# ----------------------------------------------- independence --

@pytest.mark.parametrize("tls", MODES)
def test_slow_upstream_does_not_block_other_streams(tp, pki, runner, tls):
    h = host(3000, PUB)
    with client(tp, pki, tls) as c:
        slow = c.request("GET", "/slow?name=h2slow", h, scheme=scheme(tls))
        t0 = time.monotonic()
        fast = [c.request("GET", f"/fast{i}", h, scheme=scheme(tls)) for i in range(10)]
        for sid in fast:
            assert c.response(sid, timeout=5).status == 200
        assert time.monotonic() - t0 < 5
        assert not c.streams[slow].ended
        runner.signal("h2slow")
        assert c.response(slow).status == 200


def test_unread_download_does_not_block_other_streams(tp, pki, runner):
    """The client stops acknowledging one stream (its window fills); the others
    on the same connection go on."""
    h = host(3000, PUB)
    with client(tp, pki, True) as c:
        big = c.request("GET", f"/download?n={30 * MiB}&seed=2", h)
        c.no_stream_ack.add(big)
        c.pump_until(lambda: len(c.streams[big].data) > 0, what="first bytes")
        for i in range(5):
            st = c.get(f"/other{i}", h, timeout=5)
            assert st.status == 200
        got = len(c.streams[big].data)
        assert got <= 1 * MiB, got    # stalled by the window (64 KiB), not buffered to us
        assert not c.streams[big].ended
        # now read it all
        c.no_stream_ack.discard(big)
        c.conn.acknowledge_received_data(got, big)
        c.flush()
        st = c.response(big, timeout=30)
        assert hashlib.sha256(bytes(st.data)).hexdigest() == hashlib.sha256(
            pattern_bytes(30 * MiB, seed=2)).hexdigest()


def test_upload_to_stalled_upstream_is_flow_controlled(tp, pki):
    """A direct-mode upstream that accepts but never reads: the upload stalls
    (the proxy does not acknowledge bytes it cannot pass on), the connection's
    other streams still work, and resetting the stalled stream frees it."""
    while True:  # a preview port: not one of the reserved ones, which need credentials
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        ls.bind(("127.0.0.1", 0))
        if ls.getsockname()[1] not in RESERVED_PORTS:
            break
        ls.close()
    ls.listen(8)
    port = ls.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def acceptor():
        ls.settimeout(0.2)
        while not stop.is_set():
            try:
                s, _ = ls.accept()
                accepted.append(s)
            except socket.timeout:
                pass
    t = threading.Thread(target=acceptor, daemon=True)
    t.start()
    try:
        h = host(port, DIRECT)
        n = 64 * MiB
        with client(tp, pki, True, timeout=30) as c:
            sid = c.request("POST", "/sink", h, [("content-length", str(n))], body=bytes(n))
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                c.pump_once(0.2)
            sent = n - len(c.streams[sid].pending)
            assert accepted, "the proxy never connected to the upstream"
            assert sent < n - 8 * MiB, f"{sent} of {n} bytes accepted by a proxy whose upstream reads nothing"
            st = c.get("/health", BASE_DOMAIN, timeout=5)
            assert st.status == 200
            c.reset(sid)
            st = c.get("/health", BASE_DOMAIN, timeout=5)
            assert st.status == 200
    finally:
        stop.set()
        t.join(2)
        for s in accepted:
            s.close()
        ls.close()
    assert tp.alive()


def test_many_connections_and_client_disconnects(tp, pki, runner):
    h = host(3000, PUB)
    for i in range(20):
        c = client(tp, pki, i % 2 == 0)
        c.request("GET", f"/download?n={4 * MiB}", h, scheme=scheme(i % 2 == 0))
        c.pump_once(0.5)
        c.close()        # drop mid-response
    assert tp.health_ok()
    with client(tp, pki, True) as c:
        assert c.get("/x", h).status == 200


def test_curl_h2c_prior_knowledge_and_upgrade_header(tp, runner):
    """curl --http2-prior-knowledge speaks h2c to the plaintext listener; plain
    --http2 on http:// sends `Upgrade: h2c`, which the proxy may ignore (answer
    HTTP/1.1) but must not pass to the runner."""
    h = host(3000, PUB)
    base = ["--resolve", f"{h}:{tp.port}:127.0.0.1", "-w", "\n%{http_version} %{http_code}"]
    p = curl(["--http2-prior-knowledge"] + base + [f"http://{h}:{tp.port}/pk"])
    body, _, tail = p.stdout.rpartition(b"\n")
    assert tail.split() == [b"2", b"200"], (p.stdout[-300:], p.stderr)
    assert json.loads(body)["target"].endswith("/pk")
    p = curl(["--http2"] + base + [f"http://{h}:{tp.port}/upg"])
    body, _, tail = p.stdout.rpartition(b"\n")
    assert tail.split()[1] == b"200", (p.stdout[-300:], p.stderr)
    rec = runner.wait_for("/upg")[0]
    names = [k.lower() for k, _ in rec["headers"]]
    assert "upgrade" not in names and "http2-settings" not in names, rec["headers"]

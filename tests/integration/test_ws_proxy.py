"""WebSocket tunnels through the proxy (SPEC 9 WebSocket bullet, 4, 8, 11 SIGTERM).

The WebSocket server is servers/ws_echo.py, reached in direct mode (sandbox
direct=1: the proxy connects to 127.0.0.1:{port of the preview host} and keeps
the path), except where a test uses runner.py in runner-path mode. Clients are
the Debian python3-websockets legacy client or a raw socket that speaks the
handshake and frames itself (when the test needs exact control of bytes or of
reading).

Resource checks read the proxy process: /proc/PID/fd (open descriptors must
come back to the baseline after a tunnel ends) and VmRSS in /proc/PID/status.
Waits are bounded polls; nothing sleeps to synchronise.
"""
import asyncio
import base64
import json
import os
import signal
import socket
import struct
import time

import pytest
import requests
import websockets

from helpers import (BASE_DOMAIN, PUB, PUB_TOKEN, RawConn, free_port, host, runner_prefix,
                     start_server, stop_proc, wait_until, ws_frame)
from redisfix import *  # noqa: F401,F403  (redis_server, rdb, rproxy, add_sandbox, ...)
from redisfix import ORG, add_api_key, add_sandbox, add_signed_token, mint_cookie
from measure import record


WSPUB = "wspub"
WSPUB_TOKEN = "tok-wspub-S3CRET-0a1"
WSPRIV = "wspriv"
WSPRIV_TOKEN = "tok-wspriv-S3CRET-7c2"


# ------------------------------------------------------------ ws server --

class WsServer:
    def __init__(self, proc, port):
        self.proc = proc
        self.port = port

    def ctl(self, what):
        r = requests.get(f"http://127.0.0.1:{self.port}/__ctl/{what}", timeout=5)
        r.raise_for_status()
        return r.json()

    def stats(self):
        return self.ctl("stats")

    def reset(self):
        self.ctl("reset")


def start_ws_server():
    return WsServer(*start_server("ws_echo.py"))


def running_ws_server():
    srv = start_ws_server()
    yield srv
    stop_proc(srv.proc)


@pytest.fixture(scope="module")
def ws_server_proc():
    yield from running_ws_server()


@pytest.fixture
def wss(ws_server_proc):
    assert ws_server_proc.proc.poll() is None, "ws_echo.py died"
    ws_server_proc.reset()
    return ws_server_proc


def ws_sandboxes(dead_port):
    common = f"runner_url=http://127.0.0.1:{dead_port} runner_key=rk org=org1 state=started direct=1"
    return [f"sandbox {WSPUB} {common} public=1 auth_token={WSPUB_TOKEN}",
            f"sandbox {WSPRIV} {common} public=0 auth_token={WSPRIV_TOKEN}"]


@pytest.fixture
def wsproxy(proxy, dead_port):
    """Factory: a proxy (in-memory store) with the default sandboxes plus
    WSPUB/WSPRIV in direct mode."""
    def make(settings=None, **kw):
        return proxy(settings=settings, sandboxes=ws_sandboxes(dead_port), **kw)
    return make


# ------------------------------------------------------------- helpers --

def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def ws_connect(port, hostname, path="/echo", headers=None, **kw):
    """The legacy client, connected to the proxy on 127.0.0.1:port with
    Host: hostname:port."""
    kw.setdefault("max_size", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("compression", None)
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    return await websockets.connect(f"ws://{hostname}:{port}{path}", host="127.0.0.1", port=port,
                                    extra_headers=headers or {}, **kw)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def fds(pid):
    out = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass
    return out


def settled_fds(pid, timeout=5.0):
    """The proxy's descriptor count once it stops changing (e.g. after the
    start-up /health connection is closed): three equal readings 0.1 s apart."""
    deadline = time.monotonic() + timeout
    seen = [fd_count(pid)]
    while time.monotonic() < deadline:
        time.sleep(0.1)  # poll interval only
        seen.append(fd_count(pid))
        if len(set(seen[-3:])) == 1 and len(seen) >= 3:
            break
    return seen[-1]


def wait_fds(pid, baseline, timeout=10.0, what="proxy fds back to baseline"):
    try:
        wait_until(lambda: fd_count(pid) <= baseline, timeout=timeout, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: baseline {baseline}, now {fd_count(pid)}: {sorted(fds(pid))}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade_request(hostname, path="/echo", headers=(), connection="Upgrade"):
    lines = [f"GET {path} HTTP/1.1", f"Host: {hostname}", "Upgrade: websocket",
             f"Connection: {connection}", f"Sec-WebSocket-Key: {WS_KEY}",
             "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def frame(payload, opcode=0x2, mask=True, fin=True):
    if isinstance(payload, str):
        payload = payload.encode()
    return ws_frame(opcode, payload, fin=fin, mask=mask)


class RawWS(RawConn):
    """A raw-socket WebSocket client (client frames masked, server frames parsed)."""

    def handshake(self, hostname, path="/echo", headers=(), connection="Upgrade", first=b""):
        self.send(upgrade_request(hostname, path, headers, connection) + first)
        return self.read_head()

    def send_msg(self, payload, opcode=0x2):
        self.send(frame(payload, opcode))

    def recv_frame(self):
        b0, b1 = self.read_exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.read_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.read_exact(8))[0]
        assert not b1 & 0x80, "server frame is masked"
        return b0 & 0x0F, self.read_exact(n)


# ---------------------------------------------------------------- echo --

def test_echo_public_sandbox(wss, wsproxy):
    p = wsproxy()

    async def go():
        ws = await ws_connect(p.port, host(wss.port, WSPUB, BASE_DOMAIN))
        await ws.send("hi there")
        assert await ws.recv() == "hi there"
        await ws.send(b"\x00\x01bin")
        assert await ws.recv() == b"\x00\x01bin"
        await ws.close()
    run(go())
    st = wss.stats()
    assert st["opened"] == 1 and st["path"] == "/echo"


def test_echo_preview_token_header_not_forwarded(wss, wsproxy):
    p = wsproxy()

    async def go():
        ws = await ws_connect(p.port, host(wss.port, WSPRIV), "/echo?a=1",
                              headers={"X-Daytona-Preview-Token": WSPRIV_TOKEN})
        await ws.send("tok")
        assert await ws.recv() == "tok"
        await ws.close()
    run(go())
    st = wss.stats()
    assert "x-daytona-preview-token" not in st["headers"], st["headers"]
    assert st["path"] == "/echo?a=1"
    assert st["headers"].get("upgrade", "").lower() == "websocket"
    assert "sec-websocket-key" in st["headers"]


def test_echo_query_param_auth_removed(wss, wsproxy):
    p = wsproxy()

    async def go():
        ws = await ws_connect(p.port, host(wss.port, WSPRIV),
                              f"/echo?x=1&DAYTONA_SANDBOX_AUTH_KEY={WSPRIV_TOKEN}&y=2")
        await ws.send("q")
        assert await ws.recv() == "q"
        await ws.close()
    run(go())
    st = wss.stats()
    assert WSPRIV_TOKEN not in st["path"], st["path"]
    assert st["path"] == "/echo?x=1&y=2", st["path"]


@pytest.mark.parametrize("method", ["header", "query", "cookie", "signed", "bearer"])
def test_echo_each_auth_method_redis(wss, rproxy, rdb, method):
    """Standalone Redis mode: every credential of SPEC 4 opens a tunnel, and
    the first activity update (ZADD proxy:last-activity) is written."""
    sid = f"wsred-{method}"
    add_sandbox(rdb, sid, "http://127.0.0.1:1", public=0, direct=1, auth_token=f"tok-{sid}-S3CRET")
    p = rproxy()
    label, path, headers = sid, "/echo", {}
    if method == "header":
        headers["X-Daytona-Preview-Token"] = f"tok-{sid}-S3CRET"
    elif method == "query":
        path = f"/echo?DAYTONA_SANDBOX_AUTH_KEY=tok-{sid}-S3CRET"
    elif method == "cookie":
        headers["Cookie"] = f"daytona-sandbox-auth-{sid}={mint_cookie(sid, sid)}"
    elif method == "signed":
        label = "sgn" + os.urandom(6).hex()
        add_signed_token(rdb, wss.port, label, sid)
    elif method == "bearer":
        key = "api-key-S3CRET-" + os.urandom(4).hex()
        add_api_key(rdb, key, org=ORG)
        headers["Authorization"] = f"Bearer {key}"
    assert rdb("ZSCORE", "proxy:last-activity", sid) is None

    async def go():
        ws = await ws_connect(p.port, host(wss.port, label), path, headers=headers)
        for i in range(3):
            await ws.send(f"m{i}")
            assert await ws.recv() == f"m{i}"
        # SPEC 8: the sandbox counts as active once the tunnel is open
        t0 = time.time()
        score = None
        while time.time() - t0 < 5 and score is None:
            score = rdb("ZSCORE", "proxy:last-activity", sid)
            await asyncio.sleep(0.05)
        await ws.close()
        return score
    score = run(go())
    assert score is not None, "no ZADD proxy:last-activity for the sandbox after the tunnel opened"
    assert abs(float(score) - time.time()) < 30
    st = wss.stats()
    assert st["opened"] == 1
    for h in ("x-daytona-preview-token", "authorization"):
        assert h not in st["headers"], (h, st["headers"])
    assert "daytona-sandbox-auth" not in st["headers"].get("cookie", "")
    assert "DAYTONA_SANDBOX_AUTH_KEY" not in st["path"]


def test_unauthenticated_upgrade_private_401_never_reaches_server(wss, wsproxy):
    p = wsproxy()
    before = wss.stats()["tcp"]
    for hdrs in ([], [("X-Daytona-Preview-Token", "wrong-token")],
                 [("Cookie", f"daytona-sandbox-auth-{WSPRIV}=v1.{WSPRIV}.9999999999.bad")]):
        with RawWS(p.port) as c:
            status, _, _, headers, raw = c.handshake(host(wss.port, WSPRIV), headers=hdrs)
            assert status == 401, raw
            assert not any(k.lower() == "upgrade" for k, _ in headers), raw
    # the legacy client sees the same refusal
    async def go():
        with pytest.raises(websockets.InvalidStatusCode) as ei:
            await ws_connect(p.port, host(wss.port, WSPRIV))
        return ei.value.status_code
    assert run(go()) == 401
    st = wss.stats()
    # only this stats request's own connection arrived since `before`
    assert st["tcp"] == before + 1, st
    assert st["upgrades"] == 0 and st["opened"] == 0, st


def test_reserved_port_needs_auth_on_public_sandbox(runner, px):
    """22222 (web terminal) on a public sandbox: 401 without credentials, 101
    with the preview token (runner-path mode, runner.py echoes raw bytes)."""
    h = host(22222, PUB)
    with RawWS(px.port) as c:
        status, _, _, _, raw = c.handshake(h, "/ws")
        assert status == 401, raw
    assert runner.find("/toolbox/proxy/22222") == []
    with RawWS(px.port) as c:
        status, _, _, headers, raw = c.handshake(h, "/ws?x=1", headers=[("X-Daytona-Preview-Token", PUB_TOKEN)])
        assert status == 101, raw
        f = frame(b"abc")
        c.send(f)
        assert c.read_exact(len(f)) == f  # runner.py echoes raw bytes
    rec = runner.wait_for(runner_prefix(PUB, 22222) + "/ws?x=1")
    assert rec[0]["auth_ok"]


def test_runner_path_mode_and_firefox_connection_header(runner, px):
    """Runner-path mode: the upgrade goes to /sandboxes/{id}/toolbox/proxy/{port}/...
    with the runner key; `Connection: keep-alive, Upgrade` (Firefox) is an upgrade."""
    h = host(3000, PUB)
    with RawWS(px.port) as c:
        status, _, _, headers, raw = c.handshake(h, "/sock", connection="keep-alive, Upgrade")
        assert status == 101, raw
        accept = dict((k.lower(), v) for k, v in headers).get("sec-websocket-accept")
        assert accept == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", raw
        data = os.urandom(5000)
        c.send(data)  # runner.py echoes raw bytes: check the splice byte for byte
        assert c.read_exact(len(data)) == data
    rec = runner.wait_for(runner_prefix(PUB, 3000) + "/sock")
    assert rec[0]["auth_ok"]


def test_no_warning_page_for_upgrade(wss, wsproxy):
    p = wsproxy(settings={"preview_warning": "on"})
    ua = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0 Safari/537.36")
    with RawWS(p.port) as c:
        status, _, _, _, raw = c.handshake(host(wss.port, WSPUB), headers=[("User-Agent", ua)])
        assert status == 101, raw
    # the same host without Upgrade does get the warning page (sanity check)
    r = p.get("/", host=host(wss.port, WSPUB), headers={"User-Agent": ua, "Accept": "text/html"})
    assert r.status_code == 200 and "accept-daytona-preview-warning" in r.text


# ------------------------------------------------------ payloads/order --

def test_one_mib_messages(wss, wsproxy):
    p = wsproxy()

    async def go():
        ws = await ws_connect(p.port, host(wss.port, WSPUB))
        for i in range(4):
            data = os.urandom(1 << 20)
            await ws.send(data)
            assert await ws.recv() == data
        text = ("é" * (1 << 19))  # 1 MiB of UTF-8
        await ws.send(text)
        assert await ws.recv() == text
        # two in flight at once
        a, b = os.urandom(1 << 20), os.urandom(1 << 20)
        await ws.send(a)
        await ws.send(b)
        assert await ws.recv() == a
        assert await ws.recv() == b
        await ws.close()
    run(go())


def test_thousand_small_messages_in_order(wss, wsproxy):
    p = wsproxy()

    async def go():
        ws = await ws_connect(p.port, host(wss.port, WSPUB))
        msgs = [f"msg-{i:04d}-" + "x" * (i % 37) for i in range(1000)]
        sender = asyncio.ensure_future(asyncio.gather(*[ws.send(m) for m in msgs]))
        got = [await ws.recv() for _ in range(1000)]
        await sender
        await ws.close()
        return msgs, got
    msgs, got = run(go())
    assert got == msgs


def test_binary_frames_every_byte_value(wss, wsproxy):
    p = wsproxy()

    async def go():
        ws = await ws_connect(p.port, host(wss.port, WSPUB))
        out = []
        for size in (0, 1, 125, 126, 127, 65535, 65536, 70000):
            data = (bytes(range(256)) * (size // 256 + 1))[:size]
            await ws.send(data)
            r = await ws.recv()
            out.append((size, isinstance(r, bytes), r == data))
        await ws.close()
        return out
    for size, is_bin, same in run(go()):
        assert is_bin and same, size


def test_raw_frames_pipelined_with_handshake(wss, wsproxy):
    """A first frame sent in the same packet as the upgrade request reaches the
    server after its 101; the server's first message (/hello) reaches the
    client even when it follows the 101 at once."""
    p = wsproxy()
    with RawWS(p.port) as c:
        status, _, _, _, raw = c.handshake(host(wss.port, WSPUB), "/hello",
                                           first=frame(b"early", 0x2))
        assert status == 101, raw
        assert c.recv_frame() == (0x1, b"hello")
        assert c.recv_frame() == (0x2, b"early")
        c.send_msg("ping-text", 0x1)
        assert c.recv_frame() == (0x1, b"ping-text")


def test_fifty_concurrent_tunnels(wss, wsproxy):
    p = wsproxy()

    async def one(i):
        ws = await ws_connect(p.port, host(wss.port, WSPUB), f"/echo?i={i}")
        for j in range(20):
            m = f"{i}:{j}:" + "y" * (i * 10)
            await ws.send(m)
            assert await ws.recv() == m
        await ws.close()

    async def go():
        await asyncio.gather(*[one(i) for i in range(50)])
    run(go())
    st = wss.stats()
    assert st["opened"] == 50


# ------------------------------------------------------------- closing --

def test_client_close_reaches_server_and_fds_return(wss, wsproxy):
    p = wsproxy()
    pid = p.proc.pid
    base = settled_fds(pid)

    async def go():
        ws = await ws_connect(p.port, host(wss.port, WSPUB))
        await ws.send("x")
        assert await ws.recv() == "x"
        assert fd_count(pid) >= base + 2, "an open tunnel holds two descriptors"
        await ws.close(4000, "client-bye")
        return ws.close_code
    assert run(go()) == 4000  # the server's close frame came back through the proxy
    wait_until(lambda: wss.stats()["closed"], timeout=5, what="server saw the close")
    closed = wss.stats()["closed"]
    assert closed[0]["code"] == 4000 and closed[0]["reason"] == "client-bye", closed
    wait_fds(pid, base)


def test_server_close_reaches_client_and_fds_return(wss, wsproxy):
    p = wsproxy()
    pid = p.proc.pid
    base = settled_fds(pid)

    async def go():
        ws = await ws_connect(p.port, host(wss.port, WSPUB), "/close?code=4001")
        await ws.send("bye please")
        with pytest.raises(websockets.ConnectionClosed) as ei:
            await ws.recv()
        return ei.value.code, ei.value.reason
    code, reason = run(go())
    assert (code, reason) == (4001, "server-bye")
    wait_fds(pid, base)


def test_client_tcp_abort_closes_server_side(wss, wsproxy):
    """The client vanishes without a close frame (RST): the server's socket is
    closed too (it sees 1006) and the proxy frees both descriptors."""
    p = wsproxy()
    pid = p.proc.pid
    base = settled_fds(pid)
    c = RawWS(p.port)
    status, *_ = c.handshake(host(wss.port, WSPUB))
    assert status == 101
    c.send_msg(b"x")
    assert c.recv_frame() == (0x2, b"x")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    wait_until(lambda: wss.stats()["closed"], timeout=5, what="server saw the connection end")
    assert wss.stats()["closed"][0]["code"] == 1006
    wait_fds(pid, base)


def test_server_tcp_close_after_data_is_flushed(wss, wsproxy):
    """The server writes 3 MiB and closes its TCP connection at once (no close
    frame): every byte still reaches the client, then the client connection is
    closed, and the proxy frees both descriptors."""
    p = wsproxy()
    pid = p.proc.pid
    base = settled_fds(pid)
    total = 3 << 20
    with RawWS(p.port, timeout=10) as c:
        status, *_ = c.handshake(host(wss.port, WSPUB), f"/burst?bytes={total}")
        assert status == 101
        got = c.read_to_close()
    n = total // 65536
    head = b"\x82\x7f" + struct.pack("!Q", 65536)
    size = len(head) + 65536
    assert len(got) == n * size, (len(got), n * size)
    for i in range(n):
        off = i * size
        assert got[off:off + len(head)] == head, i
        assert got[off + len(head):off + size] == bytes([i & 0xFF]) * 65536, i
    wait_fds(pid, base)


def test_client_half_close_still_gets_reply(runner, px):
    """The client sends 300 kB and shuts down its write side; runner.py echoes
    raw bytes and closes after EOF. Does the echo come back in full?"""
    with RawWS(px.port) as c:
        status, *_ = c.handshake(host(3000, PUB), "/x")
        assert status == 101
        data = os.urandom(300_000)
        c.send(data)
        c.sock.shutdown(socket.SHUT_WR)
        got = c.read_to_close()
        assert len(got) == len(data) and got == data


# ------------------------------------------------- non-101 answers --

@pytest.mark.parametrize("code", [200, 502, 403])
def test_non_101_answer_relayed_and_connection_reusable(wss, wsproxy, code):
    p = wsproxy()
    h = host(wss.port, WSPUB)
    with RawWS(p.port) as c:
        c.send(upgrade_request(h, f"/status/{code}"))
        r = c.read_response()
        assert r.status == code, r
        assert r.body == f"status {code}".encode(), r  # the server's answer, not the proxy's
        assert r.header("upgrade") is None
        # the same client connection still carries HTTP
        c.send(f"GET /__ctl/stats HTTP/1.1\r\nHost: {h}\r\n\r\n")
        r2 = c.read_response()
        assert r2.status == 200, r2
        assert json.loads(r2.body)["upgrades"] == 1
        # and another upgrade, this time a real one
        status, *_ = c.handshake(h, "/echo")
        assert status == 101
        c.send_msg(b"after")
        assert c.recv_frame() == (0x2, b"after")


# ---------------------------------------------------------- idle timeout --

def test_idle_timeout_closes_idle_tunnel(wss, wsproxy):
    p = wsproxy(settings={"ws_idle_timeout": "2"})
    pid = p.proc.pid
    base = settled_fds(pid)
    c = RawWS(p.port)
    status, *_ = c.handshake(host(wss.port, WSPUB))
    assert status == 101
    c.send_msg(b"once")
    assert c.recv_frame() == (0x2, b"once")
    t0 = time.monotonic()
    assert c.is_closed(timeout=10), "idle tunnel not closed within 10 s (ws_idle_timeout 2)"
    took = time.monotonic() - t0
    assert 1.5 <= took <= 6.5, f"closed after {took:.1f}s, expected about 2-4 s"
    c.close()
    wait_until(lambda: wss.stats()["open"] == 0, timeout=5, what="server side closed")
    wait_fds(pid, base)


def test_idle_timeout_keeps_busy_tunnel(wss, wsproxy):
    """Traffic in one direction only (client→server→client echo every 0.5 s)
    keeps the tunnel open past ws_idle_timeout."""
    p = wsproxy(settings={"ws_idle_timeout": "2"})

    async def go():
        ws = await ws_connect(p.port, host(wss.port, WSPUB))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5:
            await ws.send("tick")
            assert await ws.recv() == "tick"
            await asyncio.sleep(0.5)
        await ws.close()
    run(go())


def test_idle_timeout_closes_half_open_tunnel(wss, wsproxy):
    """A client that stops reading while the server floods: once every buffer
    is full nothing moves either way, and the tunnel is reaped after
    ws_idle_timeout; both proxy descriptors are freed and the server's
    connection closed."""
    p = wsproxy(settings={"ws_idle_timeout": "2"})
    pid = p.proc.pid
    base = settled_fds(pid)
    c = RawWS(p.port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    status, *_ = c.handshake(host(wss.port, WSPUB), f"/flood?bytes={200 << 20}")
    assert status == 101
    # never read again
    wait_until(lambda: wss.stats()["open"] == 0, timeout=20,
               what="server connection closed by the idle timeout")
    wait_fds(pid, base, timeout=10)
    sent = wss.stats()["flood_sent"]
    assert sent < (200 << 20), "the whole flood went through to a client that never read"
    c.close()


# ---------------------------------------------------------- slow reader --

@pytest.fixture
def own_wss():
    """A ws_echo server of the test's own: the shared one can be left busy by
    the floods and kills of earlier tests (the slow-reader test timed out when
    it ran right after the half-open one)."""
    yield from running_ws_server()


def test_slow_reader_memory_bounded(own_wss, wsproxy):
    """The server floods 200 MiB to a client that does not read: backpressure
    stops the server, the proxy's RSS stays within +64 MiB; when the client
    reads again, every byte arrives."""
    total, chunk = 200 << 20, 1 << 20
    p = wsproxy()
    pid = p.proc.pid
    rss0 = rss_kib(pid)
    c = RawWS(p.port, timeout=30)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    status, *_ = c.handshake(host(own_wss.port, WSPUB), f"/flood?bytes={total}&chunk={chunk}")
    assert status == 101

    # wait until the flood stalls (flood_sent unchanged for 1 s), at most 20 s
    last, since, deadline = -1, time.monotonic(), time.monotonic() + 20
    peak = rss0
    while time.monotonic() < deadline:
        sent = own_wss.stats()["flood_sent"]
        peak = max(peak, rss_kib(pid))
        if sent != last:
            last, since = sent, time.monotonic()
        elif time.monotonic() - since > 1.0:
            break
        time.sleep(0.1)  # poll interval only
    peak = max(peak, rss_kib(pid))
    assert last < total, f"server sent all {total} bytes to a client that never read"
    assert peak - rss0 < 64 * 1024, f"proxy RSS grew by {(peak - rss0) // 1024} MiB (sent {last >> 20} MiB)"

    # now read everything: 200 binary frames of 1 MiB (10-byte headers) + "done"
    expect = (total // chunk) * (chunk + 10) + 2 + 4
    # frame bytes that arrived with the 101 head are already in c.buf
    got = len(c.buf)
    tail = c.buf[-16:]
    c.buf = b""
    c.sock.settimeout(30)
    t0 = time.monotonic()
    while got < expect and time.monotonic() - t0 < 60:
        d = c.sock.recv(1 << 20)
        if not d:
            break
        got += len(d)
        tail = (tail + d)[-16:]
        if got % (16 << 20) < len(d):
            peak = max(peak, rss_kib(pid))
    assert got == expect, f"received {got} bytes, expected {expect}"
    assert tail.endswith(b"\x81\x04done")
    record("ws_slow_reader_200mib", stalled_after_mib=last >> 20,
           peak_rss_growth_mib=(peak - rss0) / 1024, bound_mib=64)
    assert peak - rss0 < 64 * 1024, f"proxy RSS grew by {(peak - rss0) // 1024} MiB while draining"
    c.close()


# -------------------------------------------------------------- SIGTERM --

def test_sigterm_keeps_tunnel_until_shutdown_timeout(wss, wsproxy):
    p = wsproxy(settings={"shutdown_timeout": "2"})

    async def go():
        ws = await ws_connect(p.port, host(wss.port, WSPUB))
        await ws.send("before")
        assert await ws.recv() == "before"
        t0 = time.monotonic()
        p.terminate()
        # the tunnel keeps working while draining
        works = []
        while time.monotonic() - t0 < 1.4:
            await ws.send("during")
            works.append(await ws.recv() == "during")
            await asyncio.sleep(0.2)
        # new connections are refused (listener closed)
        try:
            socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
            refused = False
        except OSError:
            refused = True
        # then the proxy closes it at shutdown_timeout
        closed_at = None
        try:
            while time.monotonic() - t0 < 8:
                await ws.send("late")
                await asyncio.wait_for(ws.recv(), 1)
                await asyncio.sleep(0.1)
        except (websockets.ConnectionClosed, asyncio.TimeoutError, ConnectionError):
            closed_at = time.monotonic() - t0
        return works, refused, closed_at

    works, refused, closed_at = run(go())
    assert works and all(works), works
    assert refused, "the proxy still accepted connections after SIGTERM"
    assert closed_at is not None, "tunnel still open 8 s after SIGTERM (shutdown_timeout 2)"
    assert 1.5 <= closed_at <= 4.5, f"tunnel closed {closed_at:.1f}s after SIGTERM"
    rc = p.proc.wait(5)
    assert rc == 0, f"proxy exited with {rc}"


def test_sigterm_exits_as_soon_as_tunnel_ends(wss, wsproxy):
    p = wsproxy(settings={"shutdown_timeout": "20"})

    async def go():
        ws = await ws_connect(p.port, host(wss.port, WSPUB))
        await ws.send("a")
        assert await ws.recv() == "a"
        p.terminate()
        await asyncio.sleep(0.3)
        await ws.send("b")
        assert await ws.recv() == "b"
        t0 = time.monotonic()
        await ws.close()
        return t0
    t0 = run(go())
    rc = p.proc.wait(10)
    took = time.monotonic() - t0
    assert rc == 0
    assert took < 3, f"proxy exited {took:.1f}s after its last tunnel closed"

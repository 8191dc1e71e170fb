"""WebSockets over HTTP/2 (RFC 8441 extended CONNECT, :protocol websocket),
translated by the proxy into an HTTP/1.1 upgrade towards the upstream. After
the upstream's 101 the stream answers :status 200 and DATA frames carry the raw
WebSocket frames both ways; the test builds and parses (masked) frames itself.

Upstreams: servers/ws_echo.py in direct mode (sandbox sbxdirect, preview host
{wsport}-sbxdirect.{domain}), and runner.py in runner-path mode (it echoes raw
bytes after its 101, and records the upgrade request it got)."""
import os
import struct

import pytest
import requests

from helpers import (BASE_DOMAIN, DIRECT, PRIV, PRIV_TOKEN, PUB, RUNNER_KEY, host, runner_prefix,
                     stop_proc, wait_until, ws_frame)
from tlsfix import *  # noqa: F401,F403
from tlsfix import H2Client, start_ws_echo, ws_echo_reset, ws_parse

TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10


@pytest.fixture(scope="module")
def ws_port():
    proc, port = start_ws_echo()
    yield port
    stop_proc(proc)


@pytest.fixture
def wsp(ws_port):
    ws_echo_reset(ws_port)
    return ws_port


@pytest.fixture
def tp(tls_proxy):
    return tls_proxy()


MODES = [pytest.param(True, id="tls"), pytest.param(False, id="h2c")]


class Tunnel:
    def __init__(self, c, sid):
        self.c = c
        self.sid = sid
        self.buf = b""
        self.seen = 0

    @property
    def st(self):
        return self.c.streams[self.sid]

    def send(self, opcode, payload, fin=True):
        self.c.send_body(self.sid, ws_frame(opcode, payload, fin=fin))

    def recv_frames(self, count=1, timeout=10):
        out = []

        def enough():
            st = self.st
            if len(st.data) > self.seen:
                self.buf += bytes(st.data[self.seen:])
                self.seen = len(st.data)
                frames, self.buf = ws_parse(self.buf)
                out.extend(frames)
            return len(out) >= count or st.ended or st.reset is not None
        self.c.pump_until(enough, timeout, f"{count} WebSocket frame(s)")
        return out


def open_tunnel(c, authority, path="/echo", scheme="https", headers=()):
    from h2.settings import SettingCodes as S
    c.pump_until(lambda: S.ENABLE_CONNECT_PROTOCOL in c.remote_settings, what="server SETTINGS")
    sid = c.request("CONNECT", path, authority,
                    [("sec-websocket-version", "13")] + list(headers), end=False, scheme=scheme,
                    extra_pseudo=[(":protocol", "websocket")])
    c.pump_until(lambda: c.streams[sid].headers is not None or c.streams[sid].reset is not None,
                 what="CONNECT response")
    return Tunnel(c, sid)


def client(p, pki, tls, sni=BASE_DOMAIN):
    return H2Client(p.tls_port, tls=True, sni=sni, pki=pki) if tls else H2Client(p.port, tls=False)


@pytest.mark.parametrize("tls", MODES)
def test_ws_echo_over_h2(tp, pki, wsp, tls):
    h = host(wsp, DIRECT)
    with client(tp, pki, tls) as c:
        t = open_tunnel(c, h, "/echo", "https" if tls else "http")
        assert t.st.status == 200, t.st.headers
        assert t.st.header("sec-websocket-accept") is None    # an h1 detail, not for h2
        for i in range(5):
            msg = f"hello {i}".encode()
            t.send(TEXT, msg)
            assert t.recv_frames(1) == [(True, TEXT, msg)]
        big = os.urandom(200_000)
        t.send(BINARY, big)
        assert t.recv_frames(1) == [(True, BINARY, big)]
        # fragmented message
        t.send(TEXT, b"frag-", fin=False)
        t.send(0, b"mented")
        assert t.recv_frames(1) == [(True, TEXT, b"frag-mented")]
        t.send(PING, b"pp")
        assert t.recv_frames(1) == [(True, PONG, b"pp")]
        # a normal request on the same connection meanwhile
        st = c.get("/health", BASE_DOMAIN, scheme="https" if tls else "http")
        assert st.status == 200
        # close handshake
        t.send(CLOSE, struct.pack("!H", 1000) + b"bye")
        frames = t.recv_frames(1)
        assert frames and frames[0][1] == CLOSE and frames[0][2][:2] == struct.pack("!H", 1000), frames
        c.pump_until(lambda: t.st.ended or t.st.reset is not None, 10, "tunnel end after close")
    stats = requests.get(f"http://127.0.0.1:{wsp}/__ctl/stats", timeout=5).json()
    assert stats["opened"] == 1
    assert wait_until(lambda: requests.get(f"http://127.0.0.1:{wsp}/__ctl/stats", timeout=5)
                      .json()["closed"], timeout=5, what="server saw the close")[0]["code"] == 1000


def test_ws_server_closes_first(tp, pki, wsp):
    h = host(wsp, DIRECT)
    with client(tp, pki, True) as c:
        t = open_tunnel(c, h, "/close?code=4001")
        assert t.st.status == 200
        t.send(TEXT, b"x")
        frames = t.recv_frames(1)
        assert frames[0][1] == CLOSE and struct.unpack("!H", frames[0][2][:2])[0] == 4001, frames
        t.send(CLOSE, struct.pack("!H", 4001))
        c.pump_until(lambda: t.st.ended or t.st.reset is not None, 10, "tunnel end")
        assert c.get("/health", BASE_DOMAIN).status == 200


def test_ws_upgrade_request_towards_runner(tp, pki, runner):
    """Runner-path mode: the runner sees an HTTP/1.1 upgrade with the runner key,
    and its raw echo comes back through the stream."""
    h = host(3000, PUB, "a.test")
    with client(tp, pki, True, sni=h) as c:
        t = open_tunnel(c, h, "/term/ws?x=1", headers=[("sec-websocket-protocol", "tty"),
                                                        ("origin", f"https://{h}")])
        assert t.st.status == 200, t.st.headers
        frame = ws_frame(TEXT, b"raw-echo")
        c.send_body(t.sid, frame)
        c.pump_until(lambda: bytes(t.st.data) == frame, what="raw echo")
    rec = runner.wait_for("/term/ws")[0]
    assert rec["method"] == "GET" and rec["version"] == "HTTP/1.1"
    assert rec["target"] == runner_prefix(PUB, 3000) + "/term/ws?x=1"
    hdrs = {}
    for k, v in rec["headers"]:
        hdrs.setdefault(k.lower(), []).append(v)
    assert hdrs["upgrade"][0].lower() == "websocket"
    assert "upgrade" in hdrs["connection"][0].lower()
    assert hdrs["sec-websocket-version"] == ["13"]
    assert len(hdrs["sec-websocket-key"]) == 1 and len(hdrs["sec-websocket-key"][0]) == 24
    assert hdrs["sec-websocket-protocol"] == ["tty"]
    assert hdrs["x-daytona-authorization"] == [f"Bearer {RUNNER_KEY}"]
    assert rec["auth_ok"] is True


def test_ws_private_needs_auth(tp, pki, runner):
    h = host(3000, PRIV, "a.test")
    with client(tp, pki, True, sni=h) as c:
        t = open_tunnel(c, h, "/ws")
        assert t.st.status == 401, t.st.headers
        t = open_tunnel(c, h, "/ws", headers=[("x-daytona-preview-token", PRIV_TOKEN)])
        assert t.st.status == 200, t.st.headers
        frame = ws_frame(BINARY, b"\x00\x01\x02")
        c.send_body(t.sid, frame)
        c.pump_until(lambda: bytes(t.st.data) == frame, what="raw echo")
    rec = runner.wait_for("/ws")
    assert all("x-daytona-preview-token" not in (k.lower() for k, _ in r["headers"]) for r in rec)


def test_ws_upstream_refuses_upgrade(tp, pki, wsp):
    h = host(wsp, DIRECT)
    with client(tp, pki, True) as c:
        t = open_tunnel(c, h, "/status/403")
        assert t.st.status == 403, t.st.headers
        c.pump_until(lambda: t.st.ended or t.st.reset is not None, 10, "stream end")
        assert b"status 403" in bytes(t.st.data)
        assert c.get("/health", BASE_DOMAIN).status == 200


def test_ws_many_tunnels_one_connection(tp, pki, wsp):
    h = host(wsp, DIRECT)
    with client(tp, pki, True) as c:
        tunnels = [open_tunnel(c, h, f"/echo?n={i}") for i in range(20)]
        assert all(t.st.status == 200 for t in tunnels)
        for i, t in enumerate(tunnels):
            t.send(TEXT, f"t{i}".encode())
        for i, t in enumerate(tunnels):
            assert t.recv_frames(1) == [(True, TEXT, f"t{i}".encode())]
        for t in tunnels:
            c.reset(t.sid)          # client abandons the tunnels
    wait_until(lambda: requests.get(f"http://127.0.0.1:{wsp}/__ctl/stats", timeout=5)
               .json()["open"] == 0, timeout=10, what="upstream WebSockets closed after RST_STREAM")
    assert tp.health_ok()


def test_ws_large_transfer_flow_controlled(tp, pki, wsp):
    """8 MiB each way through one tunnel, in 256 KiB messages."""
    h = host(wsp, DIRECT)
    with client(tp, pki, True) as c:
        t = open_tunnel(c, h)
        assert t.st.status == 200
        msgs = [os.urandom(256 * 1024) for _ in range(32)]
        for m in msgs:
            t.send(BINARY, m)
        got = []
        while len(got) < len(msgs):
            fr = t.recv_frames(1, timeout=30)
            assert fr, "tunnel ended early"
            got.extend(fr)
        assert [p for _, _, p in got] == msgs

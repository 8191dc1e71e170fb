"""HTTP/2 abuse limits (LESSONS B4): rapid reset, CONTINUATION flood, SETTINGS,
PING and empty-DATA floods, too many concurrent streams, an oversized header
list. Each must end in GOAWAY (ENHANCE_YOUR_CALM; a CONTINUATION flood may get
nghttp2's own PROTOCOL_ERROR) and the connection closed, with the proxy still
answering /health. Frames are built with hyperframe/hpack on a raw socket
(TLS with ALPN h2, or h2c prior knowledge)."""
import socket
import ssl
import time

import pytest
from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

from helpers import BASE_DOMAIN, PUB, host
from tlsfix import *  # noqa: F401,F403
from tlsfix import H2Client, client_ctx, tls_health

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NO_ERROR, PROTOCOL_ERROR, CANCEL, ENHANCE_YOUR_CALM = 0, 1, 8, 11
MODES = [pytest.param(True, id="tls"), pytest.param(False, id="h2c")]


@pytest.fixture
def tp(tls_proxy):
    return tls_proxy()


class RawH2:
    def __init__(self, p, pki, tls, timeout=10):
        s = socket.create_connection(("127.0.0.1", p.tls_port if tls else p.port), timeout=timeout)
        if tls:
            s = client_ctx(pki, alpn=["h2"]).wrap_socket(s, server_hostname=BASE_DOMAIN)
            assert s.selected_alpn_protocol() == "h2"
        self.sock = s
        self.tls = tls
        self.buf = b""
        self.frames = []
        self.closed = False
        self.enc = Encoder()
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())
        self.write_failed = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, *frames):
        if self.write_failed:
            return False
        try:
            self.sock.sendall(b"".join(f.serialize() for f in frames))
            return True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.write_failed = True
            return False

    def read(self, timeout):
        """Read what arrives within timeout; parse frames; ack SETTINGS."""
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(1 << 20)
        except socket.timeout:
            return
        except (ConnectionResetError, ssl.SSLError, OSError):
            d = b""
        if not d:
            self.closed = True
            return
        self.buf += d
        while len(self.buf) >= 9:
            f, n = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + n:
                break
            f.parse_body(memoryview(self.buf[9:9 + n]))
            self.buf = self.buf[9 + n:]
            self.frames.append(f)

    def goaway(self):
        for f in self.frames:
            if isinstance(f, GoAwayFrame):
                return f
        return None

    def drain(self, timeout=0.0):
        deadline = time.monotonic() + timeout
        while not self.closed:
            self.read(max(0.0, min(0.05, deadline - time.monotonic())) or 0.001)
            if time.monotonic() >= deadline:
                break

    def wait_goaway_and_close(self, timeout=5):
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.read(0.2)
        return self.goaway(), self.closed

    def handshake(self):
        """Read the server's SETTINGS and ack it."""
        deadline = time.monotonic() + 5
        while not any(isinstance(f, SettingsFrame) and "ACK" not in f.flags for f in self.frames):
            assert time.monotonic() < deadline, "no SETTINGS from the server"
            self.read(0.2)
        self.send(SettingsFrame(0, flags=["ACK"]))

    def headers(self, sid, authority, path="/", method="GET", end_stream=True, extra=()):
        block = self.enc.encode([(":method", method), (":scheme", "https" if self.tls else "http"),
                                 (":authority", authority), (":path", path)] + list(extra))
        flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
        return HeadersFrame(sid, data=block, flags=flags)


def still_serves(p, pki):
    assert p.alive(), "proxy died"
    assert p.health_ok()
    why = []
    # 10 s: the sanitizer build on a busy CI machine can take more than 2 s
    assert tls_health(p, pki, timeout=10, why=why), why
    with H2Client(p.tls_port, tls=True, pki=pki, timeout=5) as c:
        assert c.get("/health", BASE_DOMAIN).status == 200
    with H2Client(p.port, tls=False, timeout=5) as c:
        assert c.get("/health", BASE_DOMAIN, scheme="http").status == 200


def flood(r, make_batch, batches, batch_pause=0.0):
    for i in range(batches):
        if not r.send(*make_batch(i)):
            break
        r.drain(batch_pause)
        if r.goaway() is not None or r.closed:
            break


def expect_calm(p, pki, r, codes=(ENHANCE_YOUR_CALM,), log=True):
    ga, closed = r.wait_goaway_and_close(5)
    r.close()
    assert ga is not None, f"no GOAWAY; frames={[type(f).__name__ for f in r.frames][:20]} closed={closed}"
    assert ga.error_code in codes, f"GOAWAY error_code {ga.error_code}, want one of {codes}"
    assert closed, "connection not closed after GOAWAY"
    if log:
        assert "GOAWAY ENHANCE_YOUR_CALM" in p.log(), p.log()[-2000:]
    still_serves(p, pki)


# ---------------------------------------------------------------- floods --

def rapid_reset(r, batches=40):
    """Floods r (after its handshake) with HEADERS + RST_STREAM(CANCEL) pairs, 50 a batch."""
    h = host(3000, PUB)
    sid = [1]

    def batch(i):
        out = []
        for _ in range(50):
            out += [r.headers(sid[0], h, "/rr"), RstStreamFrame(sid[0], error_code=CANCEL)]
            sid[0] += 2
        return out
    flood(r, batch, batches)


@pytest.mark.parametrize("tls", MODES)
def test_rapid_reset(tp, pki, runner, tls):
    r = RawH2(tp, pki, tls)
    r.handshake()
    rapid_reset(r)
    expect_calm(tp, pki, r)
    assert "h2: " in tp.log()


@pytest.mark.parametrize("tls", MODES)
def test_continuation_flood(tp, pki, tls):
    r = RawH2(tp, pki, tls)
    r.handshake()
    block = r.enc.encode([(":method", "GET"), (":scheme", "https" if tls else "http"),
                          (":authority", BASE_DOMAIN), (":path", "/health")] +
                         [(f"x-filler-{i}", "v" * 20) for i in range(60)])
    pieces = [block[i:i + 40] for i in range(0, len(block), 40)]
    assert len(pieces) > 20
    frames = [HeadersFrame(1, data=pieces[0])]
    frames += [ContinuationFrame(1, data=pc) for pc in pieces[1:-1]]
    frames.append(ContinuationFrame(1, data=pieces[-1], flags=["END_HEADERS"]))
    r.send(*frames)
    expect_calm(tp, pki, r, codes=(ENHANCE_YOUR_CALM, PROTOCOL_ERROR), log=False)


def test_continuation_flood_endless(tp, pki):
    """HEADERS without END_HEADERS, then CONTINUATION frames that never end."""
    r = RawH2(tp, pki, False)
    r.handshake()
    r.send(HeadersFrame(1, data=r.enc.encode([(":method", "GET")])))
    flood(r, lambda i: [ContinuationFrame(1, data=b"\x00\x01a\x01b" * 50) for _ in range(20)], 50,
          batch_pause=0.01)
    expect_calm(tp, pki, r, codes=(ENHANCE_YOUR_CALM, PROTOCOL_ERROR), log=False)


@pytest.mark.parametrize("tls", MODES)
def test_settings_flood(tp, pki, tls):
    r = RawH2(tp, pki, tls)
    r.handshake()
    flood(r, lambda i: [SettingsFrame(0, settings={0x4: 65535}) for _ in range(50)], 20)
    expect_calm(tp, pki, r)


@pytest.mark.parametrize("tls", MODES)
def test_ping_flood(tp, pki, tls):
    r = RawH2(tp, pki, tls)
    r.handshake()
    flood(r, lambda i: [PingFrame(0, opaque_data=(i * 50 + k).to_bytes(8, "big")) for k in range(50)],
          20)
    expect_calm(tp, pki, r)


@pytest.mark.parametrize("tls", MODES)
def test_empty_data_flood(tp, pki, runner, tls):
    r = RawH2(tp, pki, tls)
    r.handshake()
    r.send(r.headers(1, host(3000, PUB), "/upload", "POST", end_stream=False))
    flood(r, lambda i: [DataFrame(1, data=b"") for _ in range(50)], 20)
    expect_calm(tp, pki, r)


@pytest.mark.parametrize("tls", MODES)
def test_too_many_concurrent_streams(tp, pki, runner, tls):
    """200 streams left open (HEADERS without END_STREAM) after acking the
    server's MAX_CONCURRENT_STREAMS 100. nghttp2 itself treats stream 101 as a
    connection PROTOCOL_ERROR once the SETTINGS are acked (before the proxy's own
    128-stream cap can fire), so either code is accepted here."""
    r = RawH2(tp, pki, tls)
    r.handshake()
    h = host(3000, PUB)
    frames = [r.headers(2 * i + 1, h, f"/open{i}", "POST", end_stream=False) for i in range(200)]
    for i in range(0, len(frames), 20):
        if not r.send(*frames[i:i + 20]):
            break
        r.drain(0.01)
    refused = [f for f in r.frames if isinstance(f, RstStreamFrame)]
    expect_calm(tp, pki, r, codes=(ENHANCE_YOUR_CALM, PROTOCOL_ERROR), log=False)
    assert all(f.error_code in (7, 1, 11) for f in refused), [f.error_code for f in refused]


def test_too_many_streams_without_settings_ack(tp, pki, runner):
    """A client that never acks the server's SETTINGS: streams past 100 are
    refused (REFUSED_STREAM) or the connection is told to calm down; it must
    not get 200 streams served concurrently."""
    r = RawH2(tp, pki, False)      # no handshake(): SETTINGS never acked
    h = host(3000, PUB)
    frames = [r.headers(2 * i + 1, h, f"/slow?name=never{i}", "GET", end_stream=True)
              for i in range(200)]
    for i in range(0, len(frames), 20):
        if not r.send(*frames[i:i + 20]):
            break
        r.drain(0.01)
    r.drain(1.0)
    refused = {f.stream_id for f in r.frames if isinstance(f, RstStreamFrame) and f.error_code == 7}
    ga = r.goaway()
    r.close()
    assert ga is not None or len(refused) >= 100 - 28, (ga, len(refused))
    if ga is not None:
        assert ga.error_code in (ENHANCE_YOUR_CALM, PROTOCOL_ERROR), ga.error_code
    still_serves(tp, pki)


def _header_block(tls, headers):
    return Encoder().encode([(":method", "GET"), (":scheme", "https" if tls else "http"),
                             (":authority", BASE_DOMAIN), (":path", "/health")] + headers,
                            huffman=False)


def _send_block(r, block):
    pieces = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    assert 2 <= len(pieces) <= 7
    frames = [HeadersFrame(1, data=pieces[0], flags=["END_STREAM"])]
    frames += [ContinuationFrame(1, data=pc) for pc in pieces[1:-1]]
    frames.append(ContinuationFrame(1, data=pieces[-1], flags=["END_HEADERS"]))
    r.send(*frames)


@pytest.mark.parametrize("tls", MODES)
def test_header_list_too_large(tp, pki, tls):
    """Four 20 KiB headers (80 KiB in all, each field small enough for HPACK):
    the proxy's own 64 KiB header-list limit."""
    r = RawH2(tp, pki, tls)
    r.handshake()
    _send_block(r, _header_block(tls, [(f"x-big-{i}", "a" * (20 * 1024)) for i in range(4)]))
    expect_calm(tp, pki, r)


def test_single_header_field_too_large(tp, pki):
    """One 70 KiB value: nghttp2's HPACK decoder refuses it itself
    (COMPRESSION_ERROR) or the proxy's limit fires (ENHANCE_YOUR_CALM)."""
    r = RawH2(tp, pki, False)
    r.handshake()
    _send_block(r, _header_block(False, [("x-huge", "a" * (70 * 1024))]))
    expect_calm(tp, pki, r, codes=(ENHANCE_YOUR_CALM, 9), log=False)


def test_header_list_just_under_limit_is_served(tp, pki, runner):
    with H2Client(tp.port, tls=False) as c:
        st = c.get("/under", host(3000, PUB), scheme="http",
                   headers=[(f"x-h-{i}", "b" * 5000) for i in range(10)])
        assert st.status == 200, bytes(st.data)[:300]


# --------------------------------------------------------- no false alarms --

def test_moderate_control_traffic_is_fine(tp, pki, runner):
    """Below the budgets: 40 PINGs, 10 SETTINGS, 40 reset streams and normal
    requests in one second get answers, not GOAWAY."""
    r = RawH2(tp, pki, True)
    r.handshake()
    h = host(3000, PUB)
    frames = [PingFrame(0, opaque_data=k.to_bytes(8, "big")) for k in range(40)]
    frames += [SettingsFrame(0, settings={0x4: 65535}) for _ in range(10)]
    sid = 1
    for _ in range(40):
        frames += [r.headers(sid, h, "/ok", end_stream=True), RstStreamFrame(sid, error_code=CANCEL)]
        sid += 2
    frames += [r.headers(sid, BASE_DOMAIN, "/health")]
    r.send(*frames)
    last = sid
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not r.closed:
        r.read(0.2)
        if any(isinstance(f, DataFrame) and f.stream_id == last and "END_STREAM" in f.flags
               for f in r.frames):
            break
    assert r.goaway() is None, r.goaway().error_code
    assert not r.closed
    assert sum(1 for f in r.frames if isinstance(f, PingFrame) and "ACK" in f.flags) == 40
    assert any(isinstance(f, HeadersFrame) and f.stream_id == last for f in r.frames)
    r.close()


def test_window_update_zero_and_overflow(tp, pki):
    """Protocol errors the peer can cause: WINDOW_UPDATE of 0 on the connection
    and a window overflow. GOAWAY (any code) and close; the proxy serves on."""
    for frame in (WindowUpdateFrame(0, window_increment=0),
                  WindowUpdateFrame(0, window_increment=2 ** 31 - 1)):
        r = RawH2(tp, pki, False)
        r.handshake()
        r.send(frame, WindowUpdateFrame(0, window_increment=2 ** 31 - 1))
        ga, closed = r.wait_goaway_and_close(5)
        r.close()
        assert ga is not None and ga.error_code in (PROTOCOL_ERROR, 3), ga  # 3 = FLOW_CONTROL_ERROR
        assert closed
    still_serves(tp, pki)


def test_garbage_preface_on_h2c_and_tls(tp, pki):
    """A client that starts like h2 but sends junk: closed, proxy fine."""
    for tls in (True, False):
        s = socket.create_connection(("127.0.0.1", tp.tls_port if tls else tp.port), timeout=5)
        if tls:
            s = client_ctx(pki, alpn=["h2"]).wrap_socket(s, server_hostname=BASE_DOMAIN)
        try:
            s.sendall(PREFACE + b"\x00\x00\x04\x99\x00\x00\x00\x00\x00junkjunkjunk" * 10)
            s.settimeout(5)
            try:
                while s.recv(65536):
                    pass
            except (ConnectionResetError, ssl.SSLError, OSError):
                pass
        finally:
            s.close()
    still_serves(tp, pki)

"""HTTP/2 items of the outside review (issue 9): no re-entry into nghttp2's send
from its own callbacks (item 7), and per-stream time bounds (item 4: the
HTTP/2 side of client_body_timeout and send_timeout).

The client here is a small raw HTTP/2 client (hyperframe + hpack over h2c with
prior knowledge) that keeps its own flow-control books, so a test can leave
one stream's window shut while the others flow, and so that any damage to the
server's frame stream (a split or repeated frame) shows up as a parse error, an
unexpected stream id or a corrupted download, instead of being smoothed over
by a client library.

The item-2 fix (stream_start() leaking one end of the bufferevent pair when
evbuffer_new() fails) has no test here: an allocation failure cannot be caused
from outside the process.
"""
import hashlib
import socket
import threading
import time

import pytest
from hpack import Decoder, Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

from helpers import BASE_DOMAIN, PUB, RUNNER_KEY, host, pattern_bytes, wait_until

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PROTOCOL_ERROR, CANCEL = 1, 8
HOLE = "sbxhole"  # a sandbox whose runner accepts connections and never reads them
TIMEOUTS = {"client_body_timeout": "2", "send_timeout": "2"}


class BrokenStream(Exception):
    pass


class Stream:
    def __init__(self, sid):
        self.sid = sid
        self.status = None
        self.headers = []
        self.data = bytearray()
        self.ended = False
        self.resets = []  # error codes of every RST_STREAM received


class H2C:
    """HTTP/2 over cleartext (prior knowledge), frame by frame.

    window: our SETTINGS_INITIAL_WINDOW_SIZE (what the server may send per stream
    before we say more). Streams listed in self.shut never get a WINDOW_UPDATE;
    every other stream, and the connection, is credited as its DATA arrives."""

    def __init__(self, port, window=1 << 24, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.enc, self.dec = Encoder(), Decoder()
        self.buf = b""
        self.streams = {}
        self.shut = set()
        self.goaway = None
        self.closed = False
        self.server_settings = False
        self.peer_initial = 65535  # the server's stream window for our DATA
        self.conn_window = 65535
        self.windows = {}
        self.cont = None  # (sid, block, end_stream) while CONTINUATIONs are due
        self._send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: window,
                                              SettingsFrame.ENABLE_PUSH: 0}),
                   WindowUpdateFrame(0, window_increment=1 << 30), preface=True)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _send(self, *frames, preface=False):
        self.sock.sendall((PREFACE if preface else b"") + b"".join(f.serialize() for f in frames))

    # -- requests

    def request(self, sid, path, authority, method="GET", end_stream=True, extra=()):
        self.streams[sid] = Stream(sid)
        self.windows[sid] = self.peer_initial
        block = self.enc.encode([(":method", method), (":scheme", "http"),
                                 (":authority", authority), (":path", path)] + list(extra))
        self._send(HeadersFrame(sid, data=block,
                                flags=["END_HEADERS"] + (["END_STREAM"] if end_stream else [])))

    def trailers(self, sid, fields):
        self._send(HeadersFrame(sid, data=self.enc.encode(fields),
                                flags=["END_HEADERS", "END_STREAM"]))

    def send_data(self, sid, data, end_stream=False):
        """Sends what the server's windows allow of data; returns the count."""
        n = min(len(data), self.windows[sid], self.conn_window, 16384)
        if n <= 0 and not (end_stream and not data):
            return 0
        self._send(DataFrame(sid, data=data[:n], flags=["END_STREAM"] if end_stream and
                             n == len(data) else []))
        self.windows[sid] -= n
        self.conn_window -= n
        return n

    # -- reading

    def pump(self, timeout):
        """Reads for at most timeout seconds (returns early once something came)."""
        if self.closed:
            return
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(1 << 20)
        except socket.timeout:
            return
        except OSError:
            d = b""
        if not d:
            self.closed = True
            return
        self.buf += d
        out = []
        while len(self.buf) >= 9:
            try:
                f, n = Frame.parse_frame_header(memoryview(self.buf[:9]))
            except Exception as e:  # an unknown frame type: the frame stream broke
                raise BrokenStream(f"bad frame header {self.buf[:9].hex()}: {e!r}")
            if n > 16384:
                raise BrokenStream(f"frame of {n} bytes > SETTINGS_MAX_FRAME_SIZE: "
                                   f"{self.buf[:9].hex()}")
            if len(self.buf) < 9 + n:
                break
            f.parse_body(memoryview(self.buf[9:9 + n]))
            self.buf = self.buf[9 + n:]
            out += self._on_frame(f)
        if out:
            self._send(*out)

    def _stream(self, f):
        s = self.streams.get(f.stream_id)
        if s is None:
            raise BrokenStream(f"{type(f).__name__} on stream {f.stream_id}, never opened")
        return s

    def _on_frame(self, f):
        if self.cont is not None and not isinstance(f, ContinuationFrame):
            raise BrokenStream(f"{type(f).__name__} while a header block is open")
        if isinstance(f, SettingsFrame):
            if "ACK" in f.flags:
                return []
            self.server_settings = True
            new = f.settings.get(SettingsFrame.INITIAL_WINDOW_SIZE)
            if new is not None:
                for sid in self.windows:
                    self.windows[sid] += new - self.peer_initial
                self.peer_initial = new
            return [SettingsFrame(0, flags=["ACK"])]
        if isinstance(f, WindowUpdateFrame):
            if f.stream_id == 0:
                self.conn_window += f.window_increment
            elif f.stream_id in self.windows:
                self.windows[f.stream_id] += f.window_increment
            return []
        if isinstance(f, PingFrame):
            return [] if "ACK" in f.flags else [PingFrame(0, opaque_data=f.opaque_data,
                                                          flags=["ACK"])]
        if isinstance(f, GoAwayFrame):
            self.goaway = f
            return []
        if isinstance(f, RstStreamFrame):
            self._stream(f).resets.append(f.error_code)
            return []
        if isinstance(f, (HeadersFrame, ContinuationFrame)):
            if isinstance(f, HeadersFrame):
                self._stream(f)
                self.cont = (f.stream_id, b"", "END_STREAM" in f.flags)
            elif self.cont is None or self.cont[0] != f.stream_id:
                raise BrokenStream(f"stray CONTINUATION on stream {f.stream_id}")
            sid, block, end = self.cont
            self.cont = (sid, block + bytes(f.data), end)
            if "END_HEADERS" in f.flags:
                s = self.streams[sid]
                fields = self.dec.decode(self.cont[1], raw=False)
                self.cont = None
                if s.status is None:
                    s.status = int(dict(fields)[":status"])
                    s.headers = fields
                s.ended = s.ended or end
            return []
        if isinstance(f, DataFrame):
            s = self._stream(f)
            if s.status is None or s.ended:
                raise BrokenStream(f"DATA on stream {f.stream_id} before HEADERS or after its end")
            s.data += f.data
            s.ended = "END_STREAM" in f.flags
            n = f.flow_controlled_length
            out = [WindowUpdateFrame(0, window_increment=n)] if n else []
            if n and not s.ended and f.stream_id not in self.shut:
                out.append(WindowUpdateFrame(f.stream_id, window_increment=n))
            return out
        return []

    def pump_until(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while not pred():
            if self.closed or self.goaway is not None:
                raise AssertionError(f"connection ended waiting for {what} "
                                     f"(goaway={self.goaway!r}, closed={self.closed})")
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            self.pump(0.05)

    def handshake(self):
        self.pump_until(lambda: self.server_settings, 5, "the server's SETTINGS")

    def get(self, sid, path, authority, timeout=10):
        self.request(sid, path, authority)
        self.pump_until(lambda: self.streams[sid].ended or self.streams[sid].resets, timeout,
                        f"the answer on stream {sid}")
        return self.streams[sid]


class BlackHole:
    """A runner stand-in that accepts connections and never reads a byte."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by accepts
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.conns = []
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.ls.settimeout(0.2)
        while not self.stop:
            try:
                self.conns.append(self.ls.accept()[0])
            except OSError:
                pass

    def close(self):
        self.stop = True
        for s in self.conns + [self.ls]:
            s.close()


@pytest.fixture
def hole():
    h = BlackHole()
    yield h
    h.close()


def hole_sandbox(port):
    return [f"sandbox {HOLE} runner_url=http://127.0.0.1:{port} runner_key={RUNNER_KEY} "
            f"org=org1 state=started public=1 auth_token=tok-hole-S3CRET-5"]


def fill_until_stalled(c, sid, quiet=1.0, cap=64 << 20):
    """Uploads on sid as fast as the server's windows allow until they stay shut
    for `quiet` seconds: then request bytes wait inside the proxy, none of them
    acknowledged. Returns the number of bytes sent."""
    chunk = b"u" * 16384
    sent, last = 0, time.monotonic()
    while time.monotonic() - last < quiet:
        assert sent < cap, f"stream {sid} never stalled after {sent} bytes"
        n = c.send_data(sid, chunk)
        if n:
            sent, last = sent + n, time.monotonic()
        else:
            c.pump(0.05)
        assert not c.closed and c.goaway is None and not c.streams[sid].resets
    return sent


def runner_conn_closed(runner, needle):
    """The runner connection that carried the request matching needle has closed."""
    recs = runner.find(needle)
    if not recs:
        return False
    conn = [x for x in runner.conns() if x["id"] == recs[0]["conn"]]
    return not conn or not conn[0]["open"]


# ------------------------------------------------------------- item 7 ----

def test_reset_with_request_bytes_in_the_bridge_keeps_frames_whole(proxy, runner, hole):
    """Reviewer's probe: two uploads stalled on a runner that never reads, then a
    trailer block carrying :path on each, so nghttp2 itself resets those streams
    while their bytes wait in the bridge, during a download on the same
    connection. The old code ran a nested nghttp2_session_mem_send() from
    on_stream_close() and wrote frames over the outer call's buffer: the RST_STREAM
    went missing or twice, or the download's DATA broke apart."""
    p = proxy(sandboxes=hole_sandbox(hole.port))
    n = 16 << 20
    with H2C(p.port) as c:
        c.handshake()
        for sid in (1, 3):
            c.request(sid, f"/upload{sid}", host(3000, HOLE), "POST", end_stream=False,
                      extra=[("content-length", str(1 << 30))])
        for sid in (1, 3):
            assert fill_until_stalled(c, sid) > 0
        c.request(5, f"/download?n={n}&seed=7", host(3000, PUB))
        for sid, at in ((1, 1 << 20), (3, 6 << 20)):
            c.pump_until(lambda: len(c.streams[5].data) >= at, 20, f"{at} bytes of the download")
            c.trailers(sid, [(":path", "/smuggled"), ("x-after", "1")])
        c.pump_until(lambda: c.streams[5].ended, 30, "the end of the download")
        c.pump_until(lambda: c.streams[1].resets and c.streams[3].resets, 5, "both resets")
        c.pump(0.2)  # a duplicated RST_STREAM would follow right behind
        assert c.streams[1].resets == [PROTOCOL_ERROR], c.streams[1].resets
        assert c.streams[3].resets == [PROTOCOL_ERROR], c.streams[3].resets
        s5 = c.streams[5]
        assert s5.status == 200 and not s5.resets
        assert hashlib.sha256(s5.data).hexdigest() == hashlib.sha256(
            pattern_bytes(n, 7)).hexdigest(), f"download corrupted ({len(s5.data)} bytes)"
        assert c.get(7, "/health", BASE_DOMAIN).status == 200
        assert c.goaway is None and not c.closed
    assert p.alive()


# ------------------------------------------------------------- item 4 ----

def test_stalled_request_body_resets_only_that_stream(proxy, runner):
    """Content-Length 1000, 10 bytes of DATA, then silence with the windows open:
    after client_body_timeout that stream is reset and its runner connection
    closes; a response streaming on another stream of the same connection, and
    new streams, carry on."""
    p = proxy(settings=TIMEOUTS)
    with H2C(p.port) as c:
        c.handshake()
        c.request(1, "/sse?name=h2rbody", host(3000, PUB))
        c.pump_until(lambda: b"first" in c.streams[1].data, 10, "the first SSE event")
        c.request(3, "/stall?tag=h2rbody", host(3000, PUB), "POST", end_stream=False,
                  extra=[("content-length", "1000")])
        assert c.send_data(3, b"0123456789") == 10
        wait_until(lambda: runner.progress("h2rbody") == 10, timeout=10,
                   what="the runner to read the 10 bytes")
        t0 = time.monotonic()
        c.pump_until(lambda: c.streams[3].resets, 10, "RST_STREAM for the stalled body")
        assert time.monotonic() - t0 >= 1.0, "reset before client_body_timeout"
        assert c.streams[3].resets == [CANCEL], c.streams[3].resets
        wait_until(lambda: runner_conn_closed(runner, "tag=h2rbody"), timeout=10,
                   what="the stalled body's runner connection to close")
        # The rest of the connection is untouched.
        runner.signal("h2rbody")
        c.pump_until(lambda: c.streams[1].ended, 10, "the end of the SSE stream")
        assert b"second" in c.streams[1].data and not c.streams[1].resets
        assert c.get(5, "/health", BASE_DOMAIN).status == 200
        st = c.get(7, "/after", host(3000, PUB))
        assert st.status == 200 and not st.resets
        assert c.goaway is None and not c.closed
    assert "client_body_timeout" in p.log()


def test_response_the_client_never_takes_resets_only_that_stream(proxy, runner):
    """A client with a 1000-byte initial window that never credits stream 1: its
    download cannot leave, and after send_timeout the stream is reset and its
    runner connection freed. Stream 3, credited as usual, downloads in full on
    the same connection, before and after."""
    p = proxy(settings=TIMEOUTS)
    n = 1 << 20
    with H2C(p.port, window=1000) as c:
        c.shut.add(1)
        c.handshake()
        c.request(1, f"/download?n={64 << 20}&seed=3&tag=h2rsend", host(3000, PUB))
        c.pump_until(lambda: len(c.streams[1].data) == 1000, 10, "the first 1000 bytes")
        c.request(3, f"/download?n={n}&seed=4", host(3000, PUB))
        c.pump_until(lambda: c.streams[3].ended, 20, "the download on stream 3")
        assert bytes(c.streams[3].data) == pattern_bytes(n, 4)
        c.pump_until(lambda: c.streams[1].resets, 10, "RST_STREAM for the stuck download")
        assert c.streams[1].resets == [CANCEL], c.streams[1].resets
        assert len(c.streams[1].data) == 1000 and not c.streams[1].ended
        wait_until(lambda: runner_conn_closed(runner, "tag=h2rsend"), timeout=10,
                   what="the stuck download's runner connection to close")
        st = c.get(5, f"/download?n={n}&seed=5", host(3000, PUB), timeout=20)
        assert st.status == 200 and bytes(st.data) == pattern_bytes(n, 5)
        assert c.goaway is None and not c.closed
    assert "send_timeout" in p.log()


def test_upload_held_back_by_the_runner_is_not_a_client_timeout(proxy, runner, hole):
    """No false alarm: an upload stalled because the runner does not read (our
    windows towards the client are shut) is not the client's fault, so
    client_body_timeout does not reset it. (A runner that never reads is bounded
    by send_timeout on the runner side, then 504: test_review_limits.py; here it
    is long so that only client_body_timeout is in play.)"""
    p = proxy(settings={"client_body_timeout": "2", "send_timeout": "30"},
              sandboxes=hole_sandbox(hole.port))
    with H2C(p.port) as c:
        c.handshake()
        c.request(1, "/held", host(3000, HOLE), "POST", end_stream=False,
                  extra=[("content-length", str(1 << 30))])
        fill_until_stalled(c, 1)
        deadline = time.monotonic() + 2 * float(TIMEOUTS["client_body_timeout"]) + 1.5
        while time.monotonic() < deadline:  # a negative check needs its full span
            c.pump(0.1)
            assert not c.streams[1].resets, c.streams[1].resets
        assert c.get(3, "/health", BASE_DOMAIN).status == 200
        assert c.goaway is None and not c.closed


def test_client_that_reads_nothing_is_closed_after_send_timeout(proxy, runner):
    """A client that takes no byte at all (TCP window full) stalls every stream
    of its connection: after send_timeout the proxy closes the connection and
    the runner connection is freed, instead of holding both forever."""
    p = proxy(settings=TIMEOUTS)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", p.port))
    try:
        block = Encoder().encode([(":method", "GET"), (":scheme", "http"),
                                  (":authority", host(3000, PUB)),
                                  (":path", f"/download?n={64 << 20}&tag=h2rdead")])
        s.sendall(PREFACE + SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE:
                                                       (1 << 31) - 1}).serialize()
                  + WindowUpdateFrame(0, window_increment=1 << 30).serialize()
                  + HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        runner.wait_for("tag=h2rdead")
        wait_until(lambda: runner_conn_closed(runner, "tag=h2rdead"), timeout=15,
                   what="the runner connection of a client that reads nothing to close")
        # What the proxy had queued still arrives, then the end of the connection.
        deadline, got = time.monotonic() + 15, 0
        while True:
            assert time.monotonic() < deadline, f"connection still open after {got} bytes"
            try:
                d = s.recv(1 << 20)
            except ConnectionResetError:
                break
            if not d:
                break
            got += len(d)
            assert got < 64 << 20, "the whole download arrived: nothing was bounded"
    finally:
        s.close()
    assert "send_timeout" in p.log()
    assert p.health_ok()

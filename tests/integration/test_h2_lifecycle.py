"""HTTP/2 stream and connection teardown frees the per-stream pipeline: after
clients reset streams (one RST_STREAM, or a rapid-reset flood that ends in
GOAWAY) or drop the connection mid-response, and every client is gone, SIGTERM
must find nothing left to drain and the proxy exits at once instead of waiting
for shutdown_timeout.

Black box: shutdown_timeout is 4 s; with no client connections left the proxy
must exit within 2.5 s of SIGTERM (it exits in milliseconds when nothing leaked). The drain log line ("draining N connections")
is quoted in the failure message."""
import time

import pytest

from helpers import PUB, host
from tlsfix import *  # noqa: F401,F403
from tlsfix import H2Client
from test_h2_abuse import RawH2, rapid_reset

MiB = 1024 * 1024


@pytest.fixture
def lp(tls_proxy):
    return tls_proxy(settings={"shutdown_timeout": "4"})


def assert_exits_promptly(p, limit=2.5):
    time.sleep(0.5)   # let the proxy notice the closed sockets (not a sync point for results)
    t0 = time.monotonic()
    p.terminate()
    try:
        p.proc.wait(limit)
    except Exception:
        pass
    took = time.monotonic() - t0
    drain = [ln for ln in p.log().splitlines() if "draining" in ln or "shutdown_timeout" in ln]
    assert took < limit, f"exit took {took:.1f}s after SIGTERM with no clients connected: {drain}"


def test_control_completed_requests(lp, pki, runner):
    with H2Client(lp.tls_port, pki=pki) as c:
        for i in range(20):
            assert c.get(f"/ok{i}", host(3000, PUB)).status == 200
    assert_exits_promptly(lp)


def test_rapid_reset_leaves_nothing_behind(lp, pki, runner):
    r = RawH2(lp, pki, False)
    r.handshake()
    rapid_reset(r)
    r.wait_goaway_and_close(5)
    r.close()
    assert lp.health_ok()
    assert_exits_promptly(lp)


def test_single_reset_of_in_flight_request(lp, pki, runner):
    h = host(3000, PUB)
    with H2Client(lp.tls_port, pki=pki) as c:
        sid = c.request("GET", "/slow?name=lc-slow", h)
        runner.wait_for("/slow?name=lc-slow")
        c.reset(sid)
        assert c.get("/after", h).status == 200
    runner.signal("lc-slow")
    assert_exits_promptly(lp)


def test_client_drops_connection_mid_download(lp, pki, runner):
    h = host(3000, PUB)
    for i in range(4):
        c = H2Client(lp.tls_port, tls=i % 2 == 0, pki=pki) if i % 2 == 0 else H2Client(lp.port, tls=False)
        sid = c.request("GET", f"/download?n={8 * MiB}", h, scheme="https" if i % 2 == 0 else "http")
        c.pump_until(lambda: len(c.streams[sid].data) > 0, what="first bytes")
        c.close()
    assert lp.health_ok()
    assert_exits_promptly(lp)


def test_reset_mid_download_keeps_connection_usable(lp, pki, runner):
    h = host(3000, PUB)
    with H2Client(lp.tls_port, pki=pki) as c:
        for i in range(10):
            sid = c.request("GET", f"/download?n={4 * MiB}&seed={i}", h)
            c.pump_until(lambda: len(c.streams[sid].data) > 0, what="first bytes")
            c.reset(sid)
        st = c.get("/still-fine", h)
        assert st.status == 200
    assert_exits_promptly(lp)


def test_control_http11_drop_mid_download(lp, pki, runner):
    """Control: the same drop over HTTP/1.1 (TLS and plain) leaves nothing behind,
    so a failure above is specific to the HTTP/2 bridge."""
    from tlsfix import tls_raw
    from helpers import RawConn
    h = host(3000, PUB)
    for tls in (True, False):
        c = tls_raw(lp.tls_port, h, pki) if tls else RawConn(lp.port)
        c.send(f"GET /download?n={8 * MiB} HTTP/1.1\r\nHost: {h}\r\n\r\n")
        c.read_head()
        c.read_exact(65536)
        c.close()
    assert lp.health_ok()
    assert_exits_promptly(lp)

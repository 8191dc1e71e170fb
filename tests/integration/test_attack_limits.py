"""Resource limits under attack (issue 12 item 3), measured.

Each test runs one attack for a few seconds from 127.0.0.2 (another client
address: Linux routes all of 127/8 to lo) while legitimate requests from
127.0.0.1 keep going (measure.LegitLoad: every one must succeed, carry its
own id, and stay under LEGIT_LATENCY). A sampler thread reads the proxy's
VmRSS and /proc/PID/fd every 50 ms; the peaks must stay under the bounds
below, and each test appends its numbers to tests/artifacts/limits.txt.

Attacks covered elsewhere (cited, and recording into limits.txt too):
  slowloris from one address with a per-IP cap   test_peer_limits.py
  pipelined answers never read (per-connection output cap)
                                                  test_review_limits.py
  one stalled body / one client never reading / runner never reading
                                                  test_review_limits.py
  WebSocket slow reader (200 MiB flood)            test_ws_proxy.py
  HTTP/2 rapid reset, CONTINUATION, SETTINGS, PING, empty DATA floods, too
  many streams, oversized header lists (GOAWAY)    test_h2_abuse.py
  fd exhaustion (ulimit -n 32; lowered at run time): accept backs off, no
  busy loop, recovers; max_connections pauses accept
                                                  test_accept_limits.py

Bounds are derived from the limits, with room for the ASan build (redzones
around every allocation, a 16 MiB quarantine under make test-san) and a
machine shared with other builds; see the constants below.
"""
import socket
import threading
import time
import uuid

from helpers import BASE_DOMAIN, DIRECT, PUB, RawConn, free_port, host, request_bytes, wait_until
from measure import LegitLoad, Sampler, fd_count, legit_echo, record

# Every legitimate request during an attack answers within this (seconds). An
# unloaded proxy answers in ~1 ms; the slack is for the ASan build on a
# shared 2-core machine, while the test process itself runs the attack.
LEGIT_LATENCY = 2.0

# Per held connection, what the proxy keeps besides socket buffers (which are
# the kernel's, not in RSS): the connection object, its bufferevent and
# evbuffers, a parsed head. Measured ~10-20 KiB in the plain build; ASan's
# redzones and shadow roughly double it: 64 KiB is a generous ceiling.
PER_CONN_KIB = 64
# Allocator and ASan slack independent of the attack: malloc arenas growing
# in steps, ASan's quarantine (quarantine_size_mb=8 in make test-san).
SLACK_MIB = 24
# Descriptors the proxy may open beside the ones the attack explains:
# legitimate requests in flight, pooled upstream connections, logs.
FD_SLACK = 24

# Output buffer cap per connection (proxy/conn_priv.h PX_HIGH_WATER): a
# response stops being read from the runner once this much waits for the
# client, and one read of the runner (px_bev_slurp) adds at most as much.
PX_HIGH_WATER_KIB = 256


def attacker_socket(port, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.bind(("127.0.0.2", 0))
    s.connect(("127.0.0.1", port))
    return s


def trickle(socks, byte=b"a"):
    """One byte to each socket, never blocking; a closed one is skipped."""
    for s in socks:
        try:
            s.send(byte, socket.MSG_DONTWAIT)
        except OSError:
            pass


def what_each_got(socks):
    """For each socket closed by the proxy: the status of its answer (0 when
    none). Reads without blocking long: everything is expected to be closed."""
    out = []
    for s in socks:
        s.settimeout(2)
        data = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
        except (socket.timeout, OSError):
            pass
        out.append(int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else 0)
    return out


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def fds_back(p, fds0, timeout, what):
    t0 = time.monotonic()
    wait_until(lambda: fd_count(p.proc.pid) <= fds0 + 4, timeout=timeout, interval=0.05, what=what)
    return time.monotonic() - t0


# -------------------------------------------------------------- slowloris --

SLOWLORIS_CONNS = 1000
SLOWLORIS_PER_IP = 200          # max_connections_per_ip
SLOWLORIS_HEADER_TIMEOUT = 3    # client_header_timeout: a deadline for the whole head
# After its 408 a connection lingers (proxy/conn.c) so the answer is not lost
# to an RST: at most LINGER_AFTER_HEAD_TIMEOUT after a head timeout, however
# the client trickles (LINGER_TIMEOUT of silence ends any other linger).
LINGER_TIMEOUT = 5
LINGER_AFTER_HEAD_TIMEOUT = 2
# Held: at most the per-IP cap; each holds a head of a few bytes.
SLOWLORIS_MAX_FDS = SLOWLORIS_PER_IP + FD_SLACK
SLOWLORIS_MAX_RSS_MIB = SLOWLORIS_PER_IP * PER_CONN_KIB / 1024 + SLACK_MIB


def test_slowloris_many_connections_trickling(proxy, runner):
    """1000 connections from one address each trickle a request head, a byte
    per connection every 0.25 s. max_connections_per_ip caps what the proxy
    holds (the rest get 429 at once); client_header_timeout is a deadline for
    the whole head, not reset by each byte, so every held one gets its 408
    within it, trickling or not, and its socket closes after a short linger.
    127.0.0.1 is served throughout."""
    p = proxy(settings={"max_connections_per_ip": str(SLOWLORIS_PER_IP),
                        "client_header_timeout": str(SLOWLORIS_HEADER_TIMEOUT),
                        "keepalive_timeout": "60"})
    head = b"GET / HTTP/1.1\r\nHost: " + host(3000, PUB).encode() + b"\r\nX-a: "
    socks = []

    try:
        with Sampler(p.proc.pid) as smp, LegitLoad(p.port) as legit:
            t_start = time.monotonic()
            for _ in range(SLOWLORIS_CONNS):
                s = attacker_socket(p.port)
                socks.append(s)
                trickle([s], head)
            t_opened = time.monotonic()
            held = fd_count(p.proc.pid) - smp.fds0
            # trickle until the proxy let go of every attacker (at most 15 s)
            while fd_count(p.proc.pid) > smp.fds0 + 4:
                assert time.monotonic() - t_opened < 15, "the trickling heads were never let go"
                trickle(socks)
                time.sleep(0.25)  # the trickle's pace
            released = time.monotonic() - t_start
        statuses = what_each_got(socks)
    finally:
        close_all(socks)
    n408, n429 = statuses.count(408), statuses.count(429)
    record("slowloris", conns=SLOWLORIS_CONNS, per_ip_cap=SLOWLORIS_PER_IP,
           header_timeout_s=SLOWLORIS_HEADER_TIMEOUT, fds0=smp.fds0, held_fds=held,
           peak_fd_growth=smp.fd_growth, rss0_mib=smp.rss0 / 1024,
           peak_rss_growth_mib=smp.rss_growth_mib, got_408=n408, got_429=n429,
           open_s=t_opened - t_start, all_released_after_s=released,
           legit_requests=len(legit.latencies), legit_worst_s=legit.worst)
    legit.check(LEGIT_LATENCY)
    assert smp.fd_growth <= SLOWLORIS_MAX_FDS, (smp.fds0, smp.peak_fds)
    assert smp.rss_growth_mib <= SLOWLORIS_MAX_RSS_MIB, smp.rss_growth_mib
    assert n408 + n429 >= SLOWLORIS_CONNS * 0.95, (n408, n429)   # clean answers, not resets
    assert n408 <= SLOWLORIS_PER_IP, n408
    # the head deadline counts from the first byte, whatever the client
    # trickles; then the short linger; 2 s of slack
    assert released < (t_opened - t_start) + SLOWLORIS_HEADER_TIMEOUT + \
        LINGER_AFTER_HEAD_TIMEOUT + 2, released
    assert "client_header_timeout" in p.log()
    assert p.health_ok()


MAXCONN = 150                   # max_connections, no per-IP cap (the default)
MAXCONN_ATTACKERS = 300
MAXCONN_HEADER_TIMEOUT = 2
# Slots free up a round at a time: a client queued behind the attackers in
# the listen backlog waits for ceil(attackers / max_connections) rounds of
# client_header_timeout plus that short linger, then one more for slack.
MAXCONN_LEGIT_BOUND = (-(-MAXCONN_ATTACKERS // MAXCONN) + 1) * \
    (MAXCONN_HEADER_TIMEOUT + LINGER_AFTER_HEAD_TIMEOUT) + 2


def test_slowloris_against_max_connections_only(proxy, runner):
    """Without a per-IP cap, 300 trickling connections take every one of 150
    slots, and the rest wait in the listen backlog with the legitimate client
    queued behind them. The process never holds more than max_connections;
    every round of attackers is cut off at client_header_timeout and may
    linger only briefly however it trickles (before, a trickling attacker
    kept each slot up to LINGER_TIME 30 s after its 408), so the legitimate
    client is served within a few rounds."""
    p = proxy(settings={"max_connections": str(MAXCONN),
                        "client_header_timeout": str(MAXCONN_HEADER_TIMEOUT),
                        "keepalive_timeout": "60"})
    head = b"GET / HTTP/1.1\r\nHost: " + host(3000, PUB).encode() + b"\r\nX-a: "
    socks = []
    stop = threading.Event()
    result = {}

    def legit():
        t0 = time.monotonic()
        try:
            result["latency"] = legit_echo(p.port, timeout=MAXCONN_LEGIT_BOUND + 10)
        except Exception as e:  # noqa: BLE001 -- reported below
            result["error"] = repr(e)
        result["waited"] = time.monotonic() - t0
    try:
        with Sampler(p.proc.pid) as smp:
            for _ in range(MAXCONN_ATTACKERS):
                s = attacker_socket(p.port)   # the kernel completes it: backlog
                socks.append(s)
                trickle([s], head)
            t = threading.Thread(target=legit)
            t.start()
            while t.is_alive() and not stop.is_set():
                trickle(socks)
                t.join(0.25)   # the trickle's pace
            t.join(MAXCONN_LEGIT_BOUND + 15)
    finally:
        stop.set()
        close_all(socks)
    record("slowloris_max_connections", conns=MAXCONN_ATTACKERS, max_connections=MAXCONN,
           header_timeout_s=MAXCONN_HEADER_TIMEOUT, fds0=smp.fds0, peak_fd_growth=smp.fd_growth,
           peak_rss_growth_mib=smp.rss_growth_mib, legit_waited_s=result.get("waited", -1.0),
           legit_bound_s=MAXCONN_LEGIT_BOUND)
    assert "error" not in result, result
    assert result["waited"] < MAXCONN_LEGIT_BOUND, result
    assert smp.fd_growth <= MAXCONN + FD_SLACK, (smp.fds0, smp.peak_fds)
    assert smp.rss_growth_mib <= MAXCONN * PER_CONN_KIB / 1024 + SLACK_MIB, smp.rss_growth_mib
    assert p.health_ok()


# -------------------------------------------------------------- slow body --

SLOWBODY_CONNS = 300
SLOWBODY_PER_IP = 100           # max_connections_per_ip
SLOWBODY_BODY_TIMEOUT = 2       # client_body_timeout: the longest pause between two reads
# Each held upload is a client socket and an upstream socket.
SLOWBODY_MAX_FDS = 2 * SLOWBODY_PER_IP + FD_SLACK
SLOWBODY_MAX_RSS_MIB = 2 * SLOWBODY_PER_IP * PER_CONN_KIB / 1024 + SLACK_MIB


def test_slow_body_many_connections(proxy, runner):
    """300 uploads from one address (Content-Length 1 MiB) trickle a byte each
    every 0.3 s for 3 s, then stall. A trickle faster than client_body_timeout
    is not a stall (nginx's meaning): what bounds it is the per-IP cap (the
    rest get 429). Once they stall, each gets 408 within client_body_timeout,
    and both of its sockets close."""
    p = proxy(settings={"max_connections_per_ip": str(SLOWBODY_PER_IP),
                        "client_body_timeout": str(SLOWBODY_BODY_TIMEOUT),
                        "keepalive_timeout": "60"})
    socks = []
    try:
        with Sampler(p.proc.pid) as smp, LegitLoad(p.port) as legit:
            for i in range(SLOWBODY_CONNS):
                s = attacker_socket(p.port)
                socks.append(s)
                trickle([s], request_bytes("POST", f"/slowbody/{i}", host(3000, PUB),
                                           [("Content-Length", str(1 << 20))]) + b"x")
            runner.wait_for("/slowbody/", count=SLOWBODY_PER_IP, timeout=15)
            t_end = time.monotonic() + 3
            while time.monotonic() < t_end:
                trickle(socks, b"y")
                time.sleep(0.3)   # the trickle's pace, under client_body_timeout
            held = fd_count(p.proc.pid) - smp.fds0
            released = fds_back(p, smp.fds0, SLOWBODY_BODY_TIMEOUT + 8,
                                "every stalled upload (and its runner socket) closed")
        statuses = what_each_got(socks)
    finally:
        close_all(socks)
    n408, n429 = statuses.count(408), statuses.count(429)
    forwarded = len(runner.find("/slowbody/"))
    record("slow_body", conns=SLOWBODY_CONNS, per_ip_cap=SLOWBODY_PER_IP,
           body_timeout_s=SLOWBODY_BODY_TIMEOUT, fds0=smp.fds0, held_fds_while_trickling=held,
           peak_fd_growth=smp.fd_growth, rss0_mib=smp.rss0 / 1024,
           peak_rss_growth_mib=smp.rss_growth_mib, forwarded=forwarded, got_408=n408,
           got_429=n429, stall_to_release_s=released, legit_requests=len(legit.latencies),
           legit_worst_s=legit.worst)
    legit.check(LEGIT_LATENCY)
    assert forwarded <= SLOWBODY_PER_IP, forwarded
    assert smp.fd_growth <= SLOWBODY_MAX_FDS, (smp.fds0, smp.peak_fds)
    assert smp.rss_growth_mib <= SLOWBODY_MAX_RSS_MIB, smp.rss_growth_mib
    assert n408 == forwarded, (n408, forwarded)
    # a refused socket whose bytes the proxy never read may end in an RST that
    # loses the 429 on the way: still a clean close, but count the answers
    assert n408 + n429 >= SLOWBODY_CONNS * 0.95, (n408, n429)
    # the 408 comes after client_body_timeout; its socket may then linger
    assert released < SLOWBODY_BODY_TIMEOUT + LINGER_TIMEOUT + 2, released
    assert p.health_ok()


# ------------------------------------------------------------ slow readers --

class StreamServer:
    """A direct-mode 'sandbox port' that answers every request with a 1 GiB
    Content-Length body and writes 64 KiB blocks for as long as the proxy
    takes them; counts the bytes. Thread per connection."""

    BLOCK = b"z" * 65536

    def __init__(self):
        self.port = free_port()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(1024)
        self.sent = 0
        self.lock = threading.Lock()
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(60)
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                      b"Content-Length: 1073741824\r\n\r\n")
            while True:
                c.sendall(self.BLOCK)
                with self.lock:
                    self.sent += len(self.BLOCK)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.lsock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


SLOWREAD_CONNS = 40
SLOWREAD_SEND_TIMEOUT = 6       # send_timeout: a client taking no byte this long is dropped
# Each stalled download holds its output buffer (PX_HIGH_WATER) plus at most
# one read from the runner (PX_HIGH_WATER) and the connection itself.
SLOWREAD_MAX_RSS_MIB = SLOWREAD_CONNS * (2 * PX_HIGH_WATER_KIB + PER_CONN_KIB) / 1024 + SLACK_MIB
SLOWREAD_MAX_FDS = 2 * SLOWREAD_CONNS + FD_SLACK


def test_slow_readers_on_large_responses(proxy, runner):
    """40 clients ask for a 1 GiB body and never read (4 KiB receive buffer).
    Backpressure stops the proxy reading the sandbox once a connection's
    output buffer is full, so RSS grows by at most the per-connection caps;
    send_timeout then drops them all, with their upstream sockets."""
    srv = StreamServer()
    p = proxy(settings={"send_timeout": str(SLOWREAD_SEND_TIMEOUT), "keepalive_timeout": "60"})
    socks = []
    try:
        with Sampler(p.proc.pid) as smp, LegitLoad(p.port) as legit:
            for i in range(SLOWREAD_CONNS):
                s = attacker_socket(p.port, rcvbuf=4096)
                socks.append(s)
                s.sendall(request_bytes("GET", f"/big/{i}", host(srv.port, DIRECT)))
            # until the sandbox can write no more: unchanged for 1 s (at most 20 s)
            last = [-1, time.monotonic()]

            def stalled():
                with srv.lock:
                    n = srv.sent
                if n != last[0]:
                    last[0], last[1] = n, time.monotonic()
                    return False
                return time.monotonic() - last[1] > 1.0
            wait_until(stalled, timeout=20, interval=0.1, what="the sandbox's writes to stall")
            stalled_mib = last[0] / (1 << 20)
            # a legitimate download of 4 MiB goes through meanwhile
            t0 = time.monotonic()
            with RawConn(p.port, timeout=10) as c:
                c.send(request_bytes("GET", "/download?n=4194304&seed=5", host(3000, PUB)))
                r = c.read_response()
            dl = time.monotonic() - t0
            assert r.status == 200 and len(r.body) == 4194304
            released = fds_back(p, smp.fds0, SLOWREAD_SEND_TIMEOUT + 10,
                                "send_timeout to drop every slow reader and its upstream")
    finally:
        close_all(socks)
        srv.close()
    record("slow_reader", conns=SLOWREAD_CONNS, send_timeout_s=SLOWREAD_SEND_TIMEOUT,
           sandbox_sent_mib=stalled_mib, fds0=smp.fds0, peak_fd_growth=smp.fd_growth,
           rss0_mib=smp.rss0 / 1024, peak_rss_growth_mib=smp.rss_growth_mib,
           released_after_stall_s=released, legit_download_4mib_s=dl,
           legit_requests=len(legit.latencies), legit_worst_s=legit.worst)
    legit.check(LEGIT_LATENCY)
    assert dl < 3 * LEGIT_LATENCY, dl
    assert smp.fd_growth <= SLOWREAD_MAX_FDS, (smp.fds0, smp.peak_fds)
    assert smp.rss_growth_mib <= SLOWREAD_MAX_RSS_MIB, smp.rss_growth_mib
    assert "send_timeout" in p.log()
    assert p.health_ok()


# ------------------------------------------------------ idle keep-alive --

IDLE_CONNS = 1500
IDLE_KEEPALIVE = 4              # keepalive_timeout
IDLE_MAX_FDS = IDLE_CONNS + FD_SLACK
IDLE_MAX_RSS_MIB = IDLE_CONNS * PER_CONN_KIB / 1024 + SLACK_MIB


def test_many_idle_keepalive_connections(proxy, runner):
    """1500 connections from one address make one request each and stay idle
    (max_connections 10000 by default, no per-IP cap): each costs one fd and a
    bounded amount of memory; keepalive_timeout closes them all; others are
    served meanwhile."""
    p = proxy(settings={"keepalive_timeout": str(IDLE_KEEPALIVE)})
    conns = []
    try:
        with Sampler(p.proc.pid) as smp, LegitLoad(p.port) as legit:
            t0 = time.monotonic()
            for _ in range(IDLE_CONNS):
                c = RawConn(p.port, timeout=10, source="127.0.0.2")
                conns.append(c)
                c.send(request_bytes("GET", "/health", BASE_DOMAIN))
            for c in conns:
                assert c.read_response().status == 200
            opened = time.monotonic() - t0
            held = fd_count(p.proc.pid) - smp.fds0
            released = fds_back(p, smp.fds0, IDLE_KEEPALIVE + opened + 10,
                                "keepalive_timeout to close every idle connection")
        closed = sum(1 for c in conns if c.is_closed(timeout=2))
    finally:
        for c in conns:
            c.close()
    record("idle_keepalive", conns=IDLE_CONNS, keepalive_timeout_s=IDLE_KEEPALIVE, fds0=smp.fds0,
           held_fds=held, peak_fd_growth=smp.fd_growth, rss0_mib=smp.rss0 / 1024,
           peak_rss_growth_mib=smp.rss_growth_mib,
           rss_per_conn_kib=(smp.peak_rss - smp.rss0) / IDLE_CONNS, open_s=opened,
           released_after_s=released, closed_cleanly=closed, legit_requests=len(legit.latencies),
           legit_worst_s=legit.worst)
    legit.check(LEGIT_LATENCY)
    assert held >= IDLE_CONNS * 0.9, held      # they really were held meanwhile
    assert smp.fd_growth <= IDLE_MAX_FDS, (smp.fds0, smp.peak_fds)
    assert smp.rss_growth_mib <= IDLE_MAX_RSS_MIB, smp.rss_growth_mib
    assert closed == IDLE_CONNS
    assert p.health_ok()


# ------------------------------------------------- HTTP/2 streams, headers --

H2_CONNS = 4
H2_STREAMS = 100                # the proxy's SETTINGS_MAX_CONCURRENT_STREAMS
H2_HEADER_KIB = 16              # per stream, fresh values (HPACK cannot index them)
# Each open stream is an upstream socket; it holds its decoded header list
# (at most max_header_size, here H2_HEADER_KIB) once in the proxy and once
# in the request it forwards.
H2_MAX_FDS = H2_CONNS * (1 + H2_STREAMS) + FD_SLACK
H2_MAX_RSS_MIB = H2_CONNS * H2_STREAMS * (2 * H2_HEADER_KIB + PER_CONN_KIB) / 1024 + SLACK_MIB


def test_h2_streams_with_large_headers_held_open(proxy, runner):
    """4 h2c connections each open 100 streams (the concurrency limit) with
    16 KiB of unindexable headers, to a runner path that never answers. The
    floods that break the protocol's budgets are test_h2_abuse.py's (GOAWAY);
    this measures what the legal maximum costs: bounded fds and memory, and
    127.0.0.1 served over HTTP/1 and HTTP/2 meanwhile."""
    from test_h2_abuse import RawH2
    from tlsfix import H2Client
    p = proxy(settings={"keepalive_timeout": "60"})
    h = host(3000, PUB)
    conns = []
    try:
        with Sampler(p.proc.pid) as smp, LegitLoad(p.port) as legit:
            for k in range(H2_CONNS):
                r = RawH2(p, None, False)
                conns.append(r)
                r.handshake()
                for i in range(H2_STREAMS):
                    pad = [(f"x-pad-{j}", uuid.uuid4().hex * 32) for j in range(H2_HEADER_KIB)]
                    r.send(r.headers(2 * i + 1, h, f"/never?c={k}&s={i}", extra=pad))
                r.drain(0.05)
            runner.wait_for("/never?c=", count=H2_CONNS * H2_STREAMS, timeout=30)
            held = fd_count(p.proc.pid) - smp.fds0
            t0 = time.monotonic()
            with H2Client(p.port, tls=False, timeout=10) as c:
                assert c.get("/h2legit", h, scheme="http").status == 200
            h2_legit = time.monotonic() - t0
            for r in conns:
                r.drain(0.01)
                assert r.goaway() is None and not r.closed
                r.close()
            released = fds_back(p, smp.fds0, 15, "the streams' upstream sockets closed")
    finally:
        for r in conns:
            r.close()
    record("h2_streams_headers", conns=H2_CONNS, streams_each=H2_STREAMS,
           header_kib_each=H2_HEADER_KIB, fds0=smp.fds0, held_fds=held,
           peak_fd_growth=smp.fd_growth, rss0_mib=smp.rss0 / 1024,
           peak_rss_growth_mib=smp.rss_growth_mib, released_after_close_s=released,
           h2_legit_s=h2_legit, legit_requests=len(legit.latencies), legit_worst_s=legit.worst)
    legit.check(LEGIT_LATENCY)
    assert h2_legit < LEGIT_LATENCY, h2_legit
    assert smp.fd_growth <= H2_MAX_FDS, (smp.fds0, smp.peak_fds)
    assert smp.rss_growth_mib <= H2_MAX_RSS_MIB, smp.rss_growth_mib
    assert p.health_ok()

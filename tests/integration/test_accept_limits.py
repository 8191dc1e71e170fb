"""Accepting under limits (issue 9, item 5): running out of file descriptors
must not spin the event loop, and max_connections pauses accepting (clients
wait in the listen backlog) until a connection closes."""
import os
import re
import resource
import socket
import subprocess
import time

import pytest
import requests

from conftest import CRASH_MARKERS, DEFAULT_SETTINGS, Proxy, default_sandboxes
from helpers import BASE_DOMAIN, PUB, RawConn, free_port, host, request_bytes, wait_until
from measure import fd_count, record, rss_kib

IDLE_CONNS = 40
WINDOW = 2.0       # seconds of measurement
MAX_CPU = 0.2      # share of WINDOW the proxy may spend on CPU meanwhile
MAX_LOG_LINES = 50  # lines it may write meanwhile


class LimitedProxy(Proxy):
    """A proxy started with RLIMIT_NOFILE lowered to nofile (soft and hard)."""

    def __init__(self, *args, nofile, **kw):
        super().__init__(*args, **kw)
        self.nofile = nofile

    def start(self, wait=True):
        n = self.nofile

        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([self.binary, "-c", self.conf_path], stdin=subprocess.DEVNULL,
                                     stdout=self._stderr, stderr=self._stderr, env=self.env,
                                     preexec_fn=limit)
        if wait:
            self.wait_ready()
        return self


@pytest.fixture
def limited_proxy(proxy_bin, runner, tmp_path, dead_port):
    """Factory like conftest's proxy, plus nofile=N for the starting limit."""
    started = []

    def make(nofile, settings=None):
        port = free_port()
        s = dict(DEFAULT_SETTINGS)
        s.update(settings or {})
        lines = [f"listen 127.0.0.1:{port}"] + [f"{k} {v}" for k, v in s.items() if v is not None]
        lines += default_sandboxes(runner.port, dead_port)
        conf = tmp_path / f"limited{len(started)}.conf"
        conf.write_text("\n".join(lines) + "\n")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        p = LimitedProxy(proxy_bin, str(conf), str(tmp_path / f"limited{len(started)}.stderr"),
                         port, env, nofile=nofile)
        started.append(p)
        return p.start()

    yield make

    problems = []
    for p in started:
        crashed = p.stop()
        text = p.log()
        if crashed is not None and crashed < 0:
            problems.append(f"proxy died from signal {-crashed} during the test")
        for marker in CRASH_MARKERS:
            if marker in text:
                i = text.index(marker)
                problems.append(f"proxy stderr contains {marker!r}:\n{text[max(0, i - 200):i + 3000]}")
                break
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def cpu_seconds(pid):
    """utime + stime of pid, from /proc/PID/stat (fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_idle(port, n):
    """n TCP connections that never send a byte. They all connect: the kernel
    completes the handshake for the listen backlog whether or not we accept."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def assert_quiet_while_exhausted(p, socks, attack="fd_exhaustion"):
    """Over WINDOW seconds with socks open, the proxy neither spins nor floods its log."""
    lines0, cpu0 = len(p.log_lines()), cpu_seconds(p.proc.pid)
    time.sleep(WINDOW)  # the measurement window, not a readiness wait
    cpu, lines = cpu_seconds(p.proc.pid) - cpu0, len(p.log_lines()) - lines0
    record(attack, idle_conns=len(socks), window_s=WINDOW, cpu_s=cpu, cpu_bound_s=MAX_CPU * WINDOW,
           log_lines=lines, fds=fd_count(p.proc.pid), rss_mib=rss_kib(p.proc.pid) / 1024)
    assert p.alive(), p.log()[-3000:]
    assert cpu < MAX_CPU * WINDOW, f"proxy used {cpu:.2f}s of CPU in {WINDOW}s with {len(socks)} idle conns"
    assert lines < MAX_LOG_LINES, f"proxy wrote {lines} log lines in {WINDOW}s:\n" + \
        "\n".join(p.log_lines()[-10:])


def close_all(socks):
    for s in socks:
        s.close()


def health_within(p, timeout):
    def ok():
        try:
            return p.health_ok()
        except Exception:  # noqa: BLE001 -- refused, timed out or reset: not yet
            return False
    wait_until(ok, timeout=timeout, what="GET /health answered after the idle connections closed")


def test_low_fd_limit_at_start_no_spin(limited_proxy):
    """`ulimit -n 32` from the start, then 40 idle connections (issue 9, item 5).
    ASan keeps a few descriptors of its own: 32 still leaves the proxy room."""
    p = limited_proxy(nofile=32)
    socks = open_idle(p.port, IDLE_CONNS)
    try:
        assert_quiet_while_exhausted(p, socks, "fd_exhaustion_nofile32_at_start")
    finally:
        close_all(socks)
    health_within(p, 10)   # accepting resumed


def test_fd_limit_lowered_while_running_no_spin(proxy):
    """The limit drops under a running proxy (so max_connections was sized for
    more): accept() itself fails with EMFILE, and must back off, not spin."""
    p = proxy()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.prlimit(p.proc.pid, resource.RLIMIT_NOFILE, (32, hard))
    socks = open_idle(p.port, IDLE_CONNS)
    try:
        assert_quiet_while_exhausted(p, socks, "fd_exhaustion_nofile32_at_run_time")
        assert re.search(r"accept.*(Too many open files|EMFILE)", p.log()), p.log()[-3000:]
    finally:
        close_all(socks)
    health_within(p, 10)


def health_request():
    return request_bytes("GET", "/health", BASE_DOMAIN)


def test_max_connections_pauses_accepting(proxy):
    mport = free_port()
    p = proxy(settings={"max_connections": "5", "keepalive_timeout": "60"},
              extra=[f"metrics_listen 127.0.0.1:{mport}"])
    held = []
    try:
        for _ in range(5):
            c = RawConn(p.port, timeout=5)
            held.append(c)
            c.send(health_request())
            assert c.read_response().status == 200   # keep-alive: the connection stays open
        extra = RawConn(p.port, timeout=5)           # connects: the kernel's backlog holds it
        held.append(extra)
        extra.send(health_request())
        extra.sock.settimeout(1.5)
        try:
            got = extra.sock.recv(65536)
        except socket.timeout:
            got = None      # expected: not accepted, so nobody answers
        except ConnectionResetError:
            pytest.fail("the connection over max_connections was reset")
        assert got is None, f"the 6th connection got {got!r} while 5 were open"
        # the metrics listener keeps answering, and says why the proxy waits
        m = requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
        assert 'preview_proxy_accept_paused{reason="max_connections"} 1' in m, m

        held.pop(0).close()       # one of the five goes away
        extra.sock.settimeout(5)
        t0 = time.monotonic()
        assert extra.read_response().status == 200
        assert time.monotonic() - t0 < 3
    finally:
        for c in held:
            c.close()
    pauses = [l for l in p.log_lines() if "max_connections" in l]
    assert 1 <= len(pauses) <= 3, pauses


def test_max_connections_counts_h2_connection_not_streams(proxy, runner):
    """An HTTP/2 connection is one client socket however many streams it
    carries (inside the proxy each stream is a connection object too)."""
    from tlsfix import H2Client
    p = proxy(settings={"max_connections": "3", "keepalive_timeout": "60"})
    held = []
    with H2Client(p.port, tls=False) as h2c:
        for _ in range(3):  # three streams the runner never answers: all stay open
            h2c.request("GET", "/never", host(3000, PUB), scheme="http")
        runner.wait_for("/never", count=3)
        try:
            for _ in range(2):   # with the h2 connection, 2 then 3 sockets: both accepted
                c = RawConn(p.port, timeout=5)
                held.append(c)
                c.send(health_request())
                assert c.read_response().status == 200
            fourth = RawConn(p.port, timeout=5)    # a 4th socket waits in the backlog
            held.append(fourth)
            fourth.send(health_request())
            fourth.sock.settimeout(1.0)
            with pytest.raises(socket.timeout):
                fourth.sock.recv(65536)
        finally:
            for c in held:
                c.close()


def run_check(proxy_bin, tmp_path, line):
    conf = tmp_path / "mc.conf"
    conf.write_text(f"listen 127.0.0.1:{free_port()}\n{line}\n")
    return subprocess.run([proxy_bin, "-t", "-c", str(conf)], capture_output=True, text=True,
                          timeout=10, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "1000001", ""])
def test_max_connections_bad_value_rejected(proxy_bin, tmp_path, bad):
    good = run_check(proxy_bin, tmp_path, "max_connections 5")
    assert good.returncode == 0, good.stderr
    res = run_check(proxy_bin, tmp_path, f"max_connections {bad}".rstrip())
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert re.search(r"mc\.conf:2\b", res.stderr), res.stderr

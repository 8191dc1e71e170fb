"""Zero-downtime upgrade (issue 14 item 3): instance A serves ~200 requests/s
(half on keep-alive connections, half on a new connection each) and holds 50
WebSockets; SIGUSR2 starts instance B with A's listening sockets (README
"Zero-downtime upgrades"); once B serves, A gets SIGTERM and drains. No
request may fail, and no WebSocket may close before A's drain deadline
(shutdown_timeout).

Retries: a request sent on a keep-alive connection that the server closed
while it was idle (EOF or reset before any byte of the answer) is retried once
on a new connection, as HTTP clients do (RFC 9112 9.3.1); such retries are
counted and reported. Anything else is a failure: an error on a new
connection, a non-200 answer, a retry that fails too.

UPGRADE_MEASURE_REUSEPORT=1 adds the measurement without the hand-over: B is
started on its own and binds the port with SO_REUSEPORT (it reports its
counts, asserts nothing about failures).

Waits are bounded polls; the load generator paces itself with sleeps, which
are its request rate, not synchronisation."""
import asyncio
import http.client
import os
import re
import signal
import socket
import threading
import time

import pytest
import websockets

from helpers import PUB, host, start_server, stop_proc, wait_until
from conftest import Proxy
from measure import record

WSUP = "wsupgrade"
NWS = 50
RATE = 100          # per generator thread: 2 threads, ~200 requests/s
DRAIN = 4           # shutdown_timeout, seconds
MODES = ["handover"] + (["reuseport"] if os.environ.get("UPGRADE_MEASURE_REUSEPORT") else [])

RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
             ConnectionAbortedError, http.client.BadStatusLine)


class Load:
    """Two paced generator threads against 127.0.0.1:port."""

    def __init__(self, port):
        self.port = port
        self.hostname = host(3000, PUB)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent = self.ok = self.retried = 0
        self.failed = []
        self.threads = [threading.Thread(target=self.keepalive, daemon=True),
                        threading.Thread(target=self.fresh, daemon=True)]

    def _count(self, ok=False, retried=False, failure=None):
        with self.lock:
            self.sent += 1
            self.ok += ok
            self.retried += retried
            if failure is not None:
                self.failed.append(failure)

    def _new_conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def _get(self, conn, i, close=False):
        hdrs = {"Host": self.hostname}
        if close:
            hdrs["Connection"] = "close"
        conn.request("GET", f"/upgrade/{i}", headers=hdrs)
        r = conn.getresponse()
        r.read()
        return r

    def _paced(self, body):
        i, t = 0, time.monotonic()
        while not self.stop.is_set():
            body(i)
            i += 1
            t += 1.0 / RATE
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)       # the request rate, not a readiness wait
            else:
                t = time.monotonic()    # fell behind: no burst to catch up

    def keepalive(self):
        conn, used = None, False

        def one(i):
            nonlocal conn, used
            if conn is None:
                conn, used = self._new_conn(), False
            try:
                r = self._get(conn, i)
            except RETRYABLE as e:
                conn.close()
                conn = None
                if not used:            # a new connection failed: no excuse
                    return self._count(failure=f"keep-alive, new connection: {e!r}")
                try:                    # the idle connection was closed: retry once
                    c2 = self._new_conn()
                    r = self._get(c2, i, close=True)
                    c2.close()
                except Exception as e2:  # noqa: BLE001 - any error is a failure
                    return self._count(failure=f"retry after {e!r}: {e2!r}")
                return self._count(ok=r.status == 200, retried=True,
                                   failure=None if r.status == 200 else f"retry: {r.status}")
            except Exception as e:      # noqa: BLE001
                conn.close()
                conn = None
                return self._count(failure=f"keep-alive: {e!r}")
            used = True
            if r.will_close:
                conn.close()
                conn = None
            self._count(ok=r.status == 200, failure=None if r.status == 200 else f"{r.status}")

        self._paced(one)
        if conn is not None:
            conn.close()

    def fresh(self):
        def one(i):
            c = self._new_conn()
            try:
                r = self._get(c, i, close=True)
                self._count(ok=r.status == 200,
                            failure=None if r.status == 200 else f"fresh: {r.status}")
            except Exception as e:      # noqa: BLE001
                self._count(failure=f"fresh: {e!r}")
            finally:
                c.close()
        self._paced(one)

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(15)
            assert not t.is_alive(), "a load generator thread hung"


class Sockets:
    """NWS WebSockets through the proxy, each echoing a message every 0.5 s,
    in an asyncio loop of its own thread; records when each one closed."""

    def __init__(self, port, hostname):
        self.port, self.hostname = port, hostname
        self.opened = 0
        self.closed_at = {}
        self.errors = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.main()), daemon=True)

    async def one(self, k):
        try:
            ws = await websockets.connect(f"ws://{self.hostname}:{self.port}/echo",
                                          host="127.0.0.1", port=self.port, open_timeout=10,
                                          close_timeout=2, ping_interval=None, compression=None)
        except Exception as e:          # noqa: BLE001
            self.errors.append(f"ws {k} open: {e!r}")
            return
        self.opened += 1
        n = 0
        try:
            while not self.stop.is_set():
                msg = f"ws{k}-{n}"
                await ws.send(msg)
                got = await asyncio.wait_for(ws.recv(), 5)
                if got != msg:
                    self.errors.append(f"ws {k}: echoed {got!r} for {msg!r}")
                n += 1
                await asyncio.sleep(0.5)    # message pacing
        except websockets.ConnectionClosed:
            self.closed_at[k] = time.monotonic()
        except Exception as e:          # noqa: BLE001
            self.closed_at[k] = time.monotonic()
            self.errors.append(f"ws {k}: {e!r}")
        finally:
            await ws.close()

    async def main(self):
        await asyncio.gather(*(self.one(k) for k in range(NWS)))

    def start(self):
        self.thread.start()
        wait_until(lambda: self.opened + len(self.errors) >= NWS, timeout=30,
                   what=f"{NWS} WebSockets open")
        assert not self.errors, self.errors[:5]

    def finish(self):
        self.stop.set()
        self.thread.join(20)


def pid_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] == "Z"    # exited, not reaped by init
    except OSError:
        return True


@pytest.fixture(scope="module")
def ws_echo():
    proc, port = start_server("ws_echo.py")
    yield port
    stop_proc(proc)


@pytest.mark.parametrize("mode", MODES)
def test_upgrade_under_load_loses_nothing(proxy, runner, ws_echo, dead_port, mode):
    common = f"runner_url=http://127.0.0.1:{dead_port} runner_key=rk org=org1 state=started direct=1"
    a = proxy(settings={"shutdown_timeout": str(DRAIN), "keepalive_timeout": "60",
                        "max_connections": "4096"},
              sandboxes=[f"sandbox {WSUP} {common} public=1 auth_token=tok-wsup-1"])
    b_pid = None
    b = None
    load = Load(a.port)
    socks = Sockets(a.port, host(ws_echo, WSUP))
    try:
        socks.start()                              # all 50 on A
        load.start()
        wait_until(lambda: load.sent >= RATE, timeout=10, what="load running")
        if mode == "handover":
            os.kill(a.proc.pid, signal.SIGUSR2)

            def started():
                m = re.search(r"SIGUSR2: started \S+ as pid (\d+)", a.log())
                return int(m.group(1)) if m else None
            wait_until(started, timeout=10, what="A starting B")
            b_pid = started()
            wait_until(lambda: f"worker {b_pid} serving" in a.log(), timeout=20,
                       what="B serving")
            assert "binary upgrade: 1 of 1 listening sockets taken over" in a.log()
        else:
            b = Proxy(a.binary, a.conf_path, a.stderr_path + ".b", a.port, a.env).start()
            b_pid = b.proc.pid
        sent_at_b = load.sent
        wait_until(lambda: load.sent >= sent_at_b + RATE, timeout=10, what="load on A and B")
        t_term = time.monotonic()
        os.kill(a.proc.pid, signal.SIGTERM)
        a.proc.wait(DRAIN + 5)
        t_exit = time.monotonic()
        sent_at_exit = load.sent
        wait_until(lambda: load.sent >= sent_at_exit + RATE, timeout=10, what="load on B alone")
        load.finish()
        socks.finish()
    finally:
        load.stop.set()
        socks.stop.set()
        if b_pid is not None and b is None:
            os.kill(b_pid, signal.SIGTERM)
            wait_until(lambda: pid_gone(b_pid), timeout=15, what="B exited")
        elif b is not None:
            b.stop()

    early = sorted(t - t_term for t in socks.closed_at.values() if t < t_term + DRAIN - 0.25)
    kept = NWS - len(early)
    record("upgrade", mode=mode, requests_sent=load.sent, requests_ok=load.ok,
           requests_failed=len(load.failed), idle_keepalive_retries=load.retried,
           websockets=NWS, websockets_kept_to_deadline=kept, websockets_dropped_early=len(early),
           a_drain_seconds=round(t_exit - t_term, 2))
    print(f"\nupgrade[{mode}]: {load.sent} requests, {len(load.failed)} failed, "
          f"{load.retried} retried after an idle close; {NWS} WebSockets, {len(early)} dropped "
          f"before the drain deadline; A exited {t_exit - t_term:.2f} s after SIGTERM")
    if mode == "reuseport":
        return                          # measurement only (see the module docstring)
    assert a.proc.returncode == 0, a.log()[-3000:]
    assert load.failed == [], (len(load.failed), load.failed[:10])
    assert early == [], early
    assert DRAIN - 0.25 <= t_exit - t_term <= DRAIN + 2, t_exit - t_term
    assert load.sent >= 3 * RATE and load.ok == load.sent
    assert not [e for e in socks.errors if "open" in e], socks.errors[:5]



def test_backlog_at_sigterm_is_not_reset(proxy, runner, mode_b):
    """The accept queue: A holds max_connections (2 used keep-alive
    connections), so new clients wait in the listen backlog, as they do when
    a busy A falls behind. 20 clients connect and send a request, then A gets
    SIGTERM and closes its listener. With the hand-over the queue is B's as
    well and every client is answered; with a separate SO_REUSEPORT socket
    (UPGRADE_MEASURE_REUSEPORT=1) the kernel resets what waited in A's queue."""
    mode = mode_b
    a = proxy(settings={"shutdown_timeout": str(DRAIN), "max_connections": "2"})
    hostname = host(3000, PUB)
    held = []
    for _ in range(2):
        c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
        c.request("GET", "/held", headers={"Host": hostname})
        assert c.getresponse().read() is not None
        held.append(c)
    b_pid, b, results = None, None, {}
    try:
        if mode == "handover":
            os.kill(a.proc.pid, signal.SIGUSR2)
            wait_until(lambda: re.search(r"SIGUSR2: started \S+ as pid (\d+)", a.log()),
                       timeout=10, what="A starting B")
            b_pid = int(re.search(r"SIGUSR2: started \S+ as pid (\d+)", a.log()).group(1))
            wait_until(lambda: f"worker {b_pid} serving" in a.log(), timeout=20, what="B serving")
        else:
            b = Proxy(a.binary, a.conf_path, a.stderr_path + ".b", a.port, a.env).start()
        socks = []
        for i in range(20):
            s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
            s.sendall(f"GET /q{i} HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n"
                      .encode())
            socks.append(s)
        os.kill(a.proc.pid, signal.SIGTERM)
        for c in held:
            c.close()
        a.proc.wait(DRAIN + 5)
        for i, s in enumerate(socks):
            try:
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                key = "ok" if data.startswith(b"HTTP/1.1 200") else "closed without an answer"
            except OSError as e:
                key = type(e).__name__
            results[key] = results.get(key, 0) + 1
            s.close()
    finally:
        for c in held:
            c.close()
        if b_pid is not None:
            os.kill(b_pid, signal.SIGTERM)
            wait_until(lambda: pid_gone(b_pid), timeout=15, what="B exited")
        elif b is not None:
            b.stop()
    failed = sum(v for k, v in results.items() if k != "ok")
    record("upgrade_backlog", mode=mode, connections=20, failed=failed)
    print(f"\nbacklog[{mode}]: {results}")
    if mode == "handover":
        assert results == {"ok": 20}, results


@pytest.fixture(params=MODES)
def mode_b(request):
    return request.param


def test_drain_answers_a_connection_accepted_before_its_request(proxy, runner):
    """A client that connected just before SIGTERM and sends its request after
    it is answered (with Connection: close), not closed: for it the connection
    was never idle, and a new connection's request is not retried by clients."""
    from helpers import free_port, RawConn, request_bytes
    import requests
    mport = free_port()
    a = proxy(settings={"shutdown_timeout": str(DRAIN)}, extra=[f"metrics_listen 127.0.0.1:{mport}"])

    def open_http():
        t = requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
        return int(float(re.search(r'open_connections\{kind="http"\} (\S+)', t).group(1)))
    wait_until(lambda: open_http() == 0, timeout=5, what="start-up connection gone")
    with RawConn(a.port, timeout=10) as c:
        wait_until(lambda: open_http() == 1, timeout=5, what="the connection accepted")
        os.kill(a.proc.pid, signal.SIGTERM)
        wait_until(lambda: "draining" in a.log(), timeout=5, what="A draining")
        c.send(request_bytes("GET", "/late", host(3000, PUB)))
        r = c.read_response()
        assert r.status == 200 and r.header("connection") == "close", r
    a.proc.wait(DRAIN + 5)
    assert a.proc.returncode == 0

"""Chaos (issue 12 item 4): runners killed mid-response and mid-upload, a
runner that accepts and never answers, Redis killed and restarted mid-request
and under load, SIGHUP every 100 ms under load, SIGTERM during uploads and
WebSockets. Throughout: no crash (conftest's proxy fixture fails the test on a
sanitizer report or a death by signal), no hang past a stated timeout, every
client gets a response or a clean close, and no request is answered with
another request's data: every request carries a unique id in its target,
which runner.py echoes back (JSON "target"), and the client checks it.
Measured numbers go to tests/artifacts/limits.txt (measure.record).
"""
import os
import random
import signal
import socket
import threading
import time
import uuid

import pytest

from conftest import RunnerClient
from helpers import (PUB, RUNNER_KEY, ConnectionClosed, RawConn, free_port, host,
                     port_is_listening, request_bytes, sha256, start_server, stop_proc,
                     wait_until)
from measure import LegitLoad, Sampler, legit_echo, record
from redisfix import *  # noqa: F401,F403
from redisfix import add_sandbox

# A request that has nothing left to wait for is answered (or closed) within
# this many seconds, on a loaded machine and in the ASan build.
PROMPT = 5.0


def own_id():
    return uuid.uuid4().hex


def echo_ok(r, rid):
    """r is a 200 whose echoed target carries rid (this request's own id)."""
    assert r.status == 200, r
    target = r.json()["target"]
    assert rid in target, f"request {rid} answered with the data of {target!r}"


def start_own_runner(port=None):
    args = ["--key", RUNNER_KEY] + (["--port", str(port)] if port else [])
    proc, p = start_server("runner.py", *args)
    client = RunnerClient(p)
    wait_until(lambda: client.ctl("ping"), timeout=10, what="own runner ping")
    return proc, client


def sandbox_line(sid, runner_port, public=1):
    return (f"sandbox {sid} runner_url=http://127.0.0.1:{runner_port} runner_key={RUNNER_KEY} "
            f"org=org1 state=started public={public} auth_token=tok-{sid}")


def read_or_closed(c, timeout=PROMPT):
    """The next response on c, or None when the proxy closed the connection
    cleanly (FIN or RST) before a complete response. Times out otherwise."""
    c.sock.settimeout(timeout)
    try:
        return c.read_response()
    except ConnectionClosed:
        return None


# ------------------------------------------------------- runner killed --

def test_runner_killed_mid_response_and_mid_upload(proxy, runner):
    """SIGKILL the runner while it is half-way through a response, reading an
    upload, and holding a request it has not answered: the download ends in a
    close (never a complete-looking body), the others get 502 or a clean close,
    promptly; other sandboxes are served meanwhile; once a runner is back on
    the same port its sandbox is served again with the right answers."""
    proc, own = start_own_runner()
    p = proxy(extra=[sandbox_line("sbxkill", own.port)])
    h = host(3000, "sbxkill")
    down = RawConn(p.port, timeout=10)
    up = RawConn(p.port, timeout=10)
    slow = RawConn(p.port, timeout=10)
    try:
        down.send(request_bytes("GET", "/partial?n=2000000&name=never", h))
        r = down.read_head()
        assert r[0] == 200
        down.read_exact(1000000)                  # the first half arrived
        up.send(request_bytes("POST", "/upload?tag=kill", h,
                              [("Content-Length", str(8 << 20))]) + b"u" * (1 << 20))
        wait_until(lambda: own.progress("kill") > 0, timeout=10, what="upload reaching the runner")
        slow.send(request_bytes("GET", "/slow?name=never", h))
        wait_until(lambda: own.find("/slow?name=never"), timeout=10, what="slow request forwarded")

        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        # the download: the rest never comes, the proxy closes
        with pytest.raises(ConnectionClosed):
            down.sock.settimeout(PROMPT)
            down.read_exact(1000000)
        down_closed = time.monotonic() - t0
        got_up = read_or_closed(up)
        got_slow = read_or_closed(slow)
        took = time.monotonic() - t0
        assert got_up is None or got_up.status == 502, got_up
        assert got_slow is not None and got_slow.status == 502, got_slow
        assert took < PROMPT
        echo_ok_pub = legit_echo(p.port)          # another runner's sandbox: served
    finally:
        for c in (down, up, slow):
            c.close()
        stop_proc(proc)

    # a runner back on the same port: fresh answers, each its own
    proc2, own2 = start_own_runner(own.port)
    try:
        for _ in range(5):
            rid = own_id()
            echo_ok(p_get(p, f"/after/{rid}", h), rid)
    finally:
        stop_proc(proc2)
    record("chaos_runner_killed", download_closed_s=down_closed, all_answered_s=took,
           upload_got=got_up.status if got_up else "close", pending_got=got_slow.status,
           other_sandbox_s=echo_ok_pub)
    assert p.health_ok()


def p_get(p, path, h, timeout=PROMPT):
    with RawConn(p.port, timeout=timeout) as c:
        c.send(request_bytes("GET", path, h, [("Connection", "close")]))
        return c.read_response()


# --------------------------------------------- runner that never answers --

class Blackhole:
    """Accepts every connection, reads and discards, never answers."""

    def __init__(self):
        self.port = free_port()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(512)
        self.accepted = 0
        self.open = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.open += 1
            threading.Thread(target=self._hold, args=(c,), daemon=True).start()

    def _hold(self, c):
        c.settimeout(60)
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass
        finally:
            c.close()
            with self.lock:
                self.open -= 1

    def close(self):
        self.lsock.close()


BLACKHOLE_REQUESTS = 40
BLACKHOLE_HEADER_TIMEOUT = 2     # response_header_timeout


def test_runner_that_accepts_and_never_answers(proxy, runner):
    """40 concurrent requests to a runner that accepts and never answers: each
    gets 504 after response_header_timeout (not later), the runner's sockets
    are closed, and other sandboxes are served meanwhile."""
    bh = Blackhole()
    p = proxy(settings={"response_header_timeout": str(BLACKHOLE_HEADER_TIMEOUT)},
              extra=[sandbox_line("sbxhole", bh.port)])
    results = [None] * BLACKHOLE_REQUESTS

    def one(i):
        t0 = time.monotonic()
        try:
            with RawConn(p.port, timeout=BLACKHOLE_HEADER_TIMEOUT + 10) as c:
                c.send(request_bytes("GET", f"/hole/{i}", host(3000, "sbxhole")))
                results[i] = (c.read_response().status, time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 -- reported below
            results[i] = (repr(e), time.monotonic() - t0)
    try:
        with Sampler(p.proc.pid) as smp, LegitLoad(p.port) as legit:
            threads = [threading.Thread(target=one, args=(i,)) for i in range(BLACKHOLE_REQUESTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(BLACKHOLE_HEADER_TIMEOUT + 15)
        wait_until(lambda: bh.open == 0, timeout=PROMPT, what="the proxy to close its runner sockets")
    finally:
        bh.close()
    statuses = [r[0] for r in results]
    worst = max(r[1] for r in results)
    record("chaos_runner_never_answers", requests=BLACKHOLE_REQUESTS,
           response_header_timeout_s=BLACKHOLE_HEADER_TIMEOUT, accepted=bh.accepted,
           worst_504_s=worst, peak_fd_growth=smp.fd_growth, legit_requests=len(legit.latencies),
           legit_worst_s=legit.worst)
    assert statuses == [504] * BLACKHOLE_REQUESTS, statuses
    assert worst < BLACKHOLE_HEADER_TIMEOUT + 3, worst
    assert min(r[1] for r in results) >= BLACKHOLE_HEADER_TIMEOUT - 0.2
    legit.check(2.0)
    assert p.health_ok()


# ---------------------------------------------- no crossed answers, churn --

CHURN_SECONDS = 3.0
CHURN_THREADS = 6


def test_no_request_answered_with_another_requests_data(px, runner):
    """Six clients for 3 s mix keep-alive and fresh connections, pipelining,
    uploads (the runner echoes the body's sha256), seeded downloads, runner
    connections that close after the answer or abort, and pooled runner
    connections dropped under a reused request. Every 200 carries its own id
    (and its own body hash or bytes); the rest are 502s on /abort or a clean
    close, never another request's answer."""
    h = host(3000, PUB)
    stop = time.monotonic() + CHURN_SECONDS
    counts = {"ok": 0, "abort_502": 0, "get_502": 0, "post_502": 0, "closed": 0}
    lock = threading.Lock()
    errors = []

    def count(k):
        with lock:
            counts[k] += 1

    def check(r, rid, kind, body=None, seed=None):
        if r is None:
            count("closed")
            return
        if kind == "abort":
            assert r.status == 502, r
            count("abort_502")
            return
        if r.status == 502 and kind in ("get", "post"):
            count(f"{kind}_502")   # a dropped pooled connection: no retry for a POST
            return
        if kind == "download":
            assert r.status == 200, r
            assert r.body == random.Random(seed).randbytes(len(r.body)) and len(r.body) == 20000
            count("ok")
            return
        echo_ok(r, rid)
        if body is not None:
            assert r.json()["body_sha256"] == sha256(body), "another request's body"
        count("ok")

    def client(k):
        rnd = random.Random(k)
        conn = None
        try:
            while time.monotonic() < stop:
                if conn is None or rnd.random() < 0.3:
                    if conn:
                        conn.close()
                    conn = RawConn(px.port, timeout=PROMPT * 2)
                batch = []
                for _ in range(rnd.randint(1, 4)):
                    rid = own_id()
                    kind = rnd.choice(["get", "get", "post", "download", "close-after", "abort"])
                    if kind == "post":
                        body = os.urandom(rnd.randint(1, 200000))
                        batch.append((request_bytes("POST", f"/p/{rid}", h, body=body), rid, kind, body, None))
                    elif kind == "download":
                        seed = rnd.randint(1, 1 << 30)
                        batch.append((request_bytes("GET", f"/download?n=20000&seed={seed}&id={rid}", h),
                                      rid, kind, None, seed))
                    elif kind == "close-after":
                        batch.append((request_bytes("GET", f"/close-after?id={rid}", h), rid, "get", None, None))
                    elif kind == "abort":
                        batch.append((request_bytes("GET", f"/abort?id={rid}", h), rid, kind, None, None))
                    else:
                        batch.append((request_bytes("GET", f"/g/{rid}", h), rid, kind, None, None))
                if rnd.random() < 0.1:
                    runner.arm_drop_reused()
                try:
                    conn.send(b"".join(b[0] for b in batch))
                except OSError:
                    conn.close()
                    conn = None
                    count("closed")
                    continue
                for data, rid, kind, body, seed in batch:
                    r = read_or_closed(conn, PROMPT * 2)
                    check(r, rid, kind, body, seed)
                    if r is None or (r.header("connection") or "").lower() == "close":
                        conn.close()
                        conn = None
                        break
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(f"client {k}: {e!r}")
        finally:
            if conn:
                conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CHURN_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CHURN_SECONDS + 30)
    record("chaos_no_crossed_answers", seconds=CHURN_SECONDS, clients=CHURN_THREADS, **counts)
    assert not errors, errors
    assert counts["ok"] > 50, counts
    assert px.health_ok()


# ------------------------------------------------- Redis killed, restarted --

REDIS_SANDBOXES = 5000
REDIS_CMD_TIMEOUT = 1.0          # auth/redis.c CMD_TIMEOUT_MS
# Any request while Redis is stopped or dead is answered within the command
# timeout; slack for a loaded machine and ASan.
REDIS_503_BOUND = REDIS_CMD_TIMEOUT + 3.0


def redis_unread_bytes(port):
    """Bytes queued unread on the server side of connections to 127.0.0.1:port
    (/proc/net/tcp: local address, then tx_queue:rx_queue)."""
    total = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "01":   # ESTABLISHED
                total += int(fields[4].split(":")[1], 16)
    return total


def test_redis_killed_and_restarted_mid_request_and_under_load(rproxy, redis_server, rdb, runner):
    """Every request names a sandbox not looked up before (so no cache can
    answer): requests in flight when Redis is stopped and then SIGKILLed, and
    requests while it is dead, get 503 within the command timeout - never 401
    (a guess that it does not exist) and never 200; a restart (same data, from
    the dump it saved) brings 200s back by itself; answers carry their own id."""
    for i in range(REDIS_SANDBOXES):
        add_sandbox(rdb, f"sbx-ch-{i}", runner.url, public=1)
    rdb("SAVE")                               # the restarted server loads this dump
    p = rproxy(cache_ttl=60)
    nxt = [0]
    lock = threading.Lock()

    def fresh():
        with lock:
            nxt[0] += 1
            assert nxt[0] < REDIS_SANDBOXES, "ran out of fresh sandboxes"
            return f"sbx-ch-{nxt[0]}"

    def one():
        rid, sid = own_id(), fresh()
        t0 = time.monotonic()
        try:
            with RawConn(p.port, timeout=REDIS_503_BOUND + 10) as c:
                c.send(request_bytes("GET", f"/r/{rid}", host(3000, sid), [("Connection", "close")]))
                r = c.read_response()
        except Exception as e:  # noqa: BLE001 -- a failure we report
            return (t0, time.monotonic(), repr(e))
        if r.status == 200:
            echo_ok(r, rid)
        return (t0, time.monotonic(), r.status)

    assert one()[2] == 200
    # mid-request: Redis stops answering, requests wait on their lookups, then it dies
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    inflight = []
    threads = [threading.Thread(target=lambda: inflight.append(one())) for _ in range(5)]
    for t in threads:
        t.start()
    # the lookups are sent: bytes wait unread in the stopped server's socket
    wait_until(lambda: redis_unread_bytes(redis_server.port) > 0, timeout=REDIS_CMD_TIMEOUT / 2,
               interval=0.01, what="lookups waiting in the stopped Redis")
    assert not any(x for x in inflight), inflight
    t_kill = time.monotonic()
    redis_server.kill()
    rdb.close()
    for t in threads:
        t.join(REDIS_503_BOUND + 10)
    assert [x[2] for x in inflight] == [503] * 5, inflight
    assert max(x[1] - x[0] for x in inflight) < REDIS_503_BOUND, inflight

    # under load: 4 clients; Redis dead 1.5 s, then restarted
    results = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            results.append(one())
            stop.wait(0.02)   # the load's pace: ~50 requests a second per client
    load = [threading.Thread(target=loop) for _ in range(4)]
    for t in load:
        t.start()
    try:
        time.sleep(1.5)   # the outage's length
        t_restart = time.monotonic()
        redis_server.start()
        wait_until(lambda: any(x[2] == 200 and x[0] > t_restart for x in list(results)),
                   timeout=15, what="a 200 after Redis came back")
        t_back = min(x[1] for x in list(results) if x[2] == 200 and x[0] > t_restart)
        time.sleep(1.0)   # load keeps running after recovery
    finally:
        stop.set()
        for t in load:
            t.join(REDIS_503_BOUND + 10)
    during = [x for x in results if x[1] < t_restart]
    after = [x for x in results if x[0] > t_back + 0.5]
    bad = [x for x in results if x[2] not in (200, 503)]
    record("chaos_redis_killed", inflight_503_worst_s=max(x[1] - x[0] for x in inflight),
           requests=len(results), during_outage=len(during),
           during_worst_s=max((x[1] - x[0] for x in during), default=0.0),
           recovered_after_restart_s=t_back - t_restart, after_recovery=len(after),
           kill_to_restart_s=t_restart - t_kill)
    assert not bad, bad[:5]
    assert during and all(x[2] == 503 for x in during), [x[2] for x in during][:20]
    assert all(x[1] - x[0] < REDIS_503_BOUND for x in results), \
        max(x[1] - x[0] for x in results)
    assert after and all(x[2] == 200 for x in after), [x[2] for x in after][:20]
    assert t_back - t_restart < 10
    assert p.health_ok()


# ------------------------------------------------------- SIGHUP storm --

HUP_INTERVAL = 0.1
HUP_SECONDS = 3.0
HUP_CLIENTS = 4


def test_sighup_every_100ms_under_load(proxy, runner):
    """SIGHUP every 100 ms for 3 s, each reload adding a sandbox, while four
    clients run requests (keep-alive and fresh connections, with uploads).
    Every request gets its own 200 or a clean close; the proxy serves the last
    sandbox added afterwards. Each process keeps every configuration it loaded
    (connections may borrow them): past 64 reloads SIGHUP is refused with a
    warning, and the proxy keeps serving with the last one it loaded."""
    p = proxy()
    h = host(3000, PUB)
    stop = threading.Event()
    counts = {"ok": 0, "closed": 0}
    errors = []
    lock = threading.Lock()

    def client(k):
        conn = None
        n = 0
        try:
            while not stop.is_set():
                keep = k % 2 == 0
                if conn is None:
                    conn = RawConn(p.port, timeout=PROMPT * 2)
                rid = own_id()
                body = os.urandom(50000) if n % 3 == 0 else b""
                n += 1
                hdrs = [] if keep else [("Connection", "close")]
                conn.send(request_bytes("POST" if body else "GET", f"/hup/{rid}", h, hdrs, body))
                r = read_or_closed(conn, PROMPT * 2)
                with lock:
                    counts["ok" if r is not None else "closed"] += 1
                if r is not None:
                    echo_ok(r, rid)
                    if body:
                        assert r.json()["body_sha256"] == sha256(body)
                if r is None or not keep:
                    conn.close()
                    conn = None
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(f"client {k}: {e!r}")
        finally:
            if conn:
                conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(HUP_CLIENTS)]
    for t in threads:
        t.start()
    sent = 0
    try:
        t_end = time.monotonic() + HUP_SECONDS
        while time.monotonic() < t_end:
            with open(p.conf_path, "a") as f:
                f.write(sandbox_line(f"hup{sent}", runner.port) + "\n")
            os.kill(p.proc.pid, signal.SIGHUP)
            sent += 1
            time.sleep(HUP_INTERVAL)   # the storm's pace
    finally:
        stop.set()
        for t in threads:
            t.join(PROMPT * 3)
    reloaded = wait_until(lambda: (lambda n: n if n >= sent * 0.8 else None)(
        sum(1 for ln in p.log_lines() if "SIGHUP: configuration" in ln)),
        timeout=PROMPT, what="the reloads logged")
    assert not errors, errors
    assert counts["ok"] > 20, counts
    # the last sandbox added is served (its reload may be the one coalesced)
    last = f"hup{sent - 1}"
    wait_until(lambda: p_get(p, "/x", host(3000, last)).status == 200, timeout=PROMPT,
               what=f"{last} served after the storm")
    rid = own_id()
    echo_ok(p_get(p, f"/after/{rid}", h), rid)

    # past the process's reload cap: refused with a warning, still serving
    def hup_until_capped():
        os.kill(p.proc.pid, signal.SIGHUP)     # signals sent in a burst coalesce: repeat
        return "too many reloads" in p.log()
    wait_until(hup_until_capped, timeout=PROMPT * 2, interval=0.03, what="the reload cap warning")
    assert p.alive()
    rid = own_id()
    echo_ok(p_get(p, f"/capped/{rid}", h), rid)
    record("chaos_sighup_storm", sighups=sent, reloads_logged=reloaded, **counts)


# ---------------------------------------- SIGTERM, uploads and WebSockets --

SHUTDOWN_TIMEOUT = 3


def ws_open(port, h, path):
    c = RawConn(port, timeout=PROMPT)
    c.send(request_bytes("GET", path, h, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                          ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                          ("Sec-WebSocket-Version", "13")]))
    assert c.read_response().status == 101
    return c


def ws_echoes(c, payload):
    """The runner echoes tunnel bytes raw; True if payload comes back."""
    try:
        c.send(payload)
        return c.read_exact(len(payload)) == payload
    except (OSError, ConnectionClosed):
        return False


def test_sigterm_during_uploads_and_websockets(proxy, runner):
    """SIGTERM with two uploads and three WebSocket tunnels open. The upload
    that keeps sending completes with its own 200; the one that stalled is
    closed at shutdown_timeout; the tunnels keep echoing until then and are
    closed at shutdown_timeout; new connections are refused; exit 0 within it."""
    p = proxy(settings={"shutdown_timeout": str(SHUTDOWN_TIMEOUT)})
    h = host(3000, PUB)
    size = 4 << 20
    body = os.urandom(size)
    rid_a, rid_b = own_id(), own_id()
    a = RawConn(p.port, timeout=PROMPT * 3)
    b = RawConn(p.port, timeout=PROMPT * 3)
    tunnels = [ws_open(p.port, h, f"/ws/{i}") for i in range(3)]
    try:
        a.send(request_bytes("POST", f"/up/{rid_a}?tag=a", h, [("Content-Length", str(size))]) +
               body[:1 << 20])
        b.send(request_bytes("POST", f"/up/{rid_b}?tag=b", h, [("Content-Length", str(size))]) +
               body[:1 << 20])
        wait_until(lambda: runner.progress("a") > 0 and runner.progress("b") > 0, timeout=10,
                   what="both uploads reaching the runner")
        for i, c in enumerate(tunnels):
            assert ws_echoes(c, f"before-{i}".encode())

        t0 = time.monotonic()
        p.terminate()
        wait_until(lambda: not port_is_listening(p.port), timeout=PROMPT,
                   what="the listener closed after SIGTERM")
        # upload A goes on and completes with its own answer
        for off in range(1 << 20, size, 1 << 20):
            a.send(body[off:off + (1 << 20)])
        ra = read_or_closed(a, SHUTDOWN_TIMEOUT + PROMPT)
        a_done = time.monotonic() - t0
        assert ra is not None, "the upload that kept sending was cut off"
        echo_ok(ra, rid_a)
        assert ra.json()["body_sha256"] == sha256(body)
        # the tunnels still work while draining
        assert all(ws_echoes(c, b"during") for c in tunnels)
        # then everything left is closed at shutdown_timeout, and the process exits 0
        closes = []
        for c in tunnels + [b]:
            c.sock.settimeout(SHUTDOWN_TIMEOUT + PROMPT)
            try:
                rest = c.read_to_close()
            except socket.timeout:
                pytest.fail("a connection was still open long after shutdown_timeout")
            closes.append(time.monotonic() - t0)
            if c is b:
                assert rest == b"" or rest.startswith(b"HTTP/1.1 5"), rest[:200]
        rc = p.proc.wait(PROMPT)
        exited = time.monotonic() - t0
    finally:
        for c in tunnels + [a, b]:
            c.close()
    record("chaos_sigterm_uploads_ws", shutdown_timeout_s=SHUTDOWN_TIMEOUT,
           upload_completed_s=a_done, last_close_s=max(closes), first_close_s=min(closes),
           exit_s=exited, exit_code=rc)
    assert rc == 0
    assert a_done < SHUTDOWN_TIMEOUT
    assert SHUTDOWN_TIMEOUT - 0.5 <= min(closes) and max(closes) < SHUTDOWN_TIMEOUT + 2.5, closes
    assert exited < SHUTDOWN_TIMEOUT + 3

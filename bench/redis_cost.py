#!/usr/bin/python3
"""bench/redis_cost.py — what the proxy asks of Redis (docs/SCALING.md's inputs).

Counts, not timings: everything here is read from Redis's INFO commandstats
(calls per command, before and after), from /proc (CPU ticks of each process)
and, with --callgrind, from valgrind (instructions). Loopback only; every wait
is a bounded poll; a run takes about 10-40 s.

Parts (all by default; pick with --parts):

  cmds    Redis commands per request, cold and warm, by authentication kind.
          One redis-server, one upstream (a small HTTP/1.1 server in this
          process), the proxy in standalone Redis mode with `workers 1`. For each
          kind, N distinct sandboxes, so each request of the first pass is cold
          (nothing about it in the process's cache) and the next passes are warm.
          Lookup commands (HGETALL, GET, EXISTS) are round trips on the request's
          path, one after another; SET (NX EX) and ZADD are the activity update
          (SPEC 8), sent after the request is forwarded, off its path.
  steady  The same for requests spread over --steady-secs (11 s): what a browser
          that stays on one page costs per 5 s (the negative-result TTL).
  fanout  proxy:invalidate fan-out: the proxy with `workers K` (K in --workers),
          M (--messages) invalidations published for sandboxes not in any cache;
          PUBLISH's receiver count, the CPU each worker and redis-server spent,
          the time until every subscriber socket was drained. Also: one sandbox
          requested over many new connections, to count activity SETs (one per
          process that served it) against ZADDs (one per sandbox).
  rediscpu  redis-server's own CPU per command of each kind the proxy sends,
          unpipelined from 50 clients (redis-benchmark; CPU ticks / commands).
  budget  (not in the default set) --budget-n browsers with an auth cookie on
          signed-URL hosts against a proxy with lookup_rate --budget-rate: the
          statuses they get (each costs one find-nothing lookup per 5 s).
  callgrind  Instructions per invalidation message in one process (valgrind):
          (Ir after M2 messages - Ir after M1) / (M2 - M1).

Usage: bench/redis_cost.py [--n 100] [--parts cmds,rediscpu,steady,fanout,callgrind]
       [--workers 1,2,4] [--messages 500000] [--steady-secs 11]
Needs redis-server, build/preview-proxy (make), valgrind for callgrind.
"""
import argparse
import base64
import hashlib
import hmac
import http.server
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from helpers import Resp, free_port, redis_ping  # noqa: E402

PROXY = os.environ.get("BENCH_PROXY", os.path.join(ROOT, "build", "preview-proxy"))
SECRET = "bench-cookie-secret"
ORG = "bench-org"
DOMAIN = "proxy.localhost"
TICK = os.sysconf("SC_CLK_TCK")
LOOKUPS = ("hgetall", "get", "exists")
ACTIVITY = ("set", "zadd")


def die(msg):
    print(f"[redis-cost] FATAL: {msg}", file=sys.stderr)
    sys.exit(1)


def poll(pred, timeout, what, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            die(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)  # poll interval; readiness is what pred() checks


# ------------------------------------------------------------------ processes --

class Procs:
    def __init__(self):
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix="redis-cost.")

    def start(self, args, name):
        log = open(os.path.join(self.dir, name + ".log"), "ab")
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=30):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def log(self, name):
        try:
            with open(os.path.join(self.dir, name + ".log"), "rb") as f:
                return f.read().decode("utf-8", "replace")[-3000:]
        except OSError:
            return ""

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        subprocess.run(["rm", "-rf", self.dir], check=False)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return sorted(out)


# --------------------------------------------------------------------- redis --

def start_redis(procs):
    port = free_port()
    p = procs.start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", procs.dir], "redis")
    poll(lambda: redis_ping(port), 10, "redis-server")
    return port, p


def cmdstats(db):
    out = {}
    for line in db("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_"):].partition(":")
            kv = dict(part.partition("=")[::2] for part in rest.split(","))
            out[name] = (int(kv["calls"]), float(kv["usec"]))
    return out


def delta(before, after):
    ignore = {"info", "ping", "client", "pubsub", "hset", "del", "config", "flushall"}
    d = {}
    for k, (calls, _) in after.items():
        n = calls - before.get(k, (0, 0))[0]
        if n and k not in ignore:
            d[k] = n
    return d


def settled_stats(db):
    """commandstats once two reads 150 ms apart agree (activity updates are sent
    after the response, so the last ones may still be on their way)."""
    last = cmdstats(db)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.15)  # the gap that defines "settled"
        now = cmdstats(db)
        if delta(last, now) == {}:
            return now
        last = now
    die("Redis command counts did not settle within 5 s")


# ------------------------------------------------------------------ upstream --

class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are two writes: no 40 ms delayed-ACK stall

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


def start_upstream():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


# --------------------------------------------------------------------- proxy --

def proxy_conf(procs, port, redis_port, workers, metrics_port=None, budget="100000"):
    path = os.path.join(procs.dir, f"proxy.{port}.conf")
    with open(path, "w") as f:
        f.write(f"""listen 127.0.0.1:{port}
domains {DOMAIN}
redis 127.0.0.1:{redis_port}
cookie_secret {SECRET}
access_log off
log_level warn
workers {workers}
# counting, not defending: the miss budget must not refuse the cold passes
lookup_rate {budget}
lookup_client_rate 100000
""")
        if metrics_port:
            f.write(f"metrics_listen 127.0.0.1:{metrics_port}\n")
    return path


def start_proxy(procs, redis_port, workers=1, wrap=(), metrics=False, name="proxy",
                budget="100000"):
    port = free_port()
    mport = free_port() if metrics else None
    conf = proxy_conf(procs, port, redis_port, workers, mport, budget)
    p = procs.start(list(wrap) + [PROXY, "-c", conf], name)

    def up():
        if p.poll() is not None:
            die(f"proxy exited: {procs.log(name)}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return True
        except OSError:
            return False
    poll(up, 60, "the proxy's listener")
    return port, mport, p


# ---------------------------------------------------------------- HTTP client --

class Client:
    """Keep-alive HTTP/1.1 over one socket; answers must carry Content-Length."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), 10)
        self.buf = b""

    def get(self, host, headers=(), path="/"):
        req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: redis-cost\r\n"
        req += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        self.sock.sendall(req.encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("proxy closed the connection")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs.setdefault(k.strip().lower(), []).append(v.strip())
        n = int(hdrs.get("content-length", ["0"])[0])
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("proxy closed the connection mid-body")
            self.buf += chunk
        self.buf = self.buf[n:]
        return status, hdrs

    def close(self):
        self.sock.close()


def cookie(label, sid, port=None):
    exp = int(time.time()) + 3600
    msg = f"v1|daytona-sandbox-auth-{label}|{sid}|{exp}"
    if port is not None:  # minted from a signed token: bound to its port
        msg += f"|port={port}"
    mac = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), msg.encode(),
                                            hashlib.sha256).digest()).rstrip(b"=").decode()
    return f"daytona-sandbox-auth-{label}=v1.{sid}.{exp}.{mac}"


# --------------------------------------------------------------------- cases --

def add_sandbox(db, sid, up_port, public):
    db("HSET", f"sandbox:{sid}", "runner_url", "http://127.0.0.1:9", "runner_key", "rk",
       "public", "1" if public else "0", "auth_token", f"tok-{sid}", "org", ORG,
       "state", "started", "direct", "1", "addr", "127.0.0.1", "ports", str(up_port))


def make_cases(db, up_port, n):
    """[(kind, [(host, headers, want_status)])], records written to Redis."""
    cases = []

    def host(label):
        return f"{up_port}-{label}.{DOMAIN}"
    reqs = []
    for i in range(n):
        add_sandbox(db, f"pub{i}", up_port, True)
        reqs.append((host(f"pub{i}"), (), 200))
    cases.append(("public", reqs))
    reqs = []
    for i in range(n):
        add_sandbox(db, f"tokh{i}", up_port, False)
        reqs.append((host(f"tokh{i}"), (("X-Daytona-Preview-Token", f"tok-tokh{i}"),), 200))
    cases.append(("token header", reqs))
    reqs = []
    for i in range(n):
        add_sandbox(db, f"key{i}", up_port, False)
        key = f"api-key-{i}"
        db("HSET", f"proxy:api-key:{hashlib.sha256(key.encode()).hexdigest()}", "org", ORG)
        reqs.append((host(f"key{i}"), (("Authorization", f"Bearer {key}"),), 200))
    cases.append(("api key (Bearer)", reqs))
    reqs = []
    for i in range(n):
        add_sandbox(db, f"ck{i}", up_port, False)
        reqs.append((host(f"ck{i}"), (("Cookie", cookie(f"ck{i}", f"ck{i}")),), 200))
    cases.append(("cookie, sandbox-ID host", reqs))
    reqs = []
    for i in range(n):
        add_sandbox(db, f"sg{i}", up_port, False)
        db("SET", f"sandbox:signed-preview-url-token:{up_port}:sgtok{i}", f"sg{i}", "EX", "3600")
        reqs.append((host(f"sgtok{i}"), (), 200))
    cases.append(("signed URL, first visit", reqs))
    reqs = []
    for i in range(n):
        add_sandbox(db, f"sc{i}", up_port, False)
        db("SET", f"sandbox:signed-preview-url-token:{up_port}:sctok{i}", f"sc{i}", "EX", "3600")
        reqs.append((host(f"sctok{i}"),
                     (("Cookie", cookie(f"sctok{i}", f"sc{i}", up_port)),), 200))
    cases.append(("cookie, signed-URL host", reqs))
    reqs = []
    for i in range(n):
        add_sandbox(db, f"dm{i}", up_port, True)
        db("HSET", f"proxy:custom-domain:app{i}.example.test", "sandbox", f"dm{i}",
           "port", str(up_port))
        reqs.append((f"app{i}.example.test", (), 200))
    cases.append(("custom domain, public", reqs))
    return cases


def run_pass(client, reqs, kind):
    for host, headers, want in reqs:
        status, _ = client.get(host, headers)
        if status != want:
            die(f"{kind}: {host} answered {status}, expected {want}")


def fmt(d, per):
    lk = sum(d.get(c, 0) for c in LOOKUPS)
    act = sum(d.get(c, 0) for c in ACTIVITY)
    other = {k: v for k, v in d.items() if k not in LOOKUPS + ACTIVITY}
    by = " ".join(f"{k.upper()}={v / per:.2f}" for k, v in sorted(d.items()))
    return lk / per, act / per, by or "-", other


def part_cmds(procs, args, redis_port, db, up):
    port, _, proxy = start_proxy(procs, redis_port)
    cases = make_cases(db, up.server_address[1], args.n)
    print(f"\n== Redis commands per request (N={args.n} sandboxes per kind, workers 1, "
          f"{args.warm_passes} warm passes) ==")
    print(f"{'kind':26} {'pass':5} {'lookups/req':>11} {'activity/req':>12}  by command")
    client = Client(port)
    for kind, reqs in cases:
        a = settled_stats(db)
        run_pass(client, reqs, kind)
        b = settled_stats(db)
        for _ in range(args.warm_passes):
            run_pass(client, reqs, kind)
        c = settled_stats(db)
        for label, d, per in (("cold", delta(a, b), len(reqs)),
                              ("warm", delta(b, c), len(reqs) * args.warm_passes)):
            lk, act, by, other = fmt(d, per)
            print(f"{kind:26} {label:5} {lk:11.2f} {act:12.2f}  {by}")
            if other:
                print(f"   unexpected commands: {other}")
    client.close()
    procs.stop(proxy)
    print("\nRedis memory (MEMORY USAGE, bytes): " + ", ".join(
        f"{k} {db('MEMORY', 'USAGE', k)}" for k in (
            "sandbox:pub0", f"sandbox:signed-preview-url-token:{up.server_address[1]}:sgtok0",
            "proxy:sandbox-last-activity-update:pub0")) +
        f"; proxy:last-activity {db('MEMORY', 'USAGE', 'proxy:last-activity')} for "
        f"{db('ZCARD', 'proxy:last-activity')} members")


def part_rediscpu(procs, args, redis_port, db, redis_proc):
    """redis-server CPU per command of the kinds the proxy sends, unpipelined,
    50 clients (redis-benchmark): CPU ticks of redis-server / commands."""
    db("HSET", "sandbox:bench", "runner_url", "http://127.0.0.1:9", "runner_key", "rk",
       "public", "1", "auth_token", "tok", "org", ORG, "state", "started", "direct", "1",
       "addr", "127.0.0.1", "ports", "3000")
    n = args.rediscpu_n
    print(f"\n== redis-server CPU per command (redis-benchmark -c 50 -n {n}, no pipelining) ==")
    print(f"{'command':40} {'us CPU/command':>14} {'commands/s per core':>20}")
    for cmd in (["HGETALL", "sandbox:bench"], ["EXISTS", "sandbox:signed-preview-url-revoked:x"],
                ["SET", "proxy:sandbox-last-activity-update:__rand_int__", "1", "NX", "EX", "45"],
                ["ZADD", "proxy:last-activity", "1764900000", "sb__rand_int__"],
                ["PUBLISH", "proxy:nobody", "sandbox:x"]):
        t0 = cpu_ticks(redis_proc.pid)
        subprocess.run(["redis-benchmark", "-p", str(redis_port), "-c", "50", "-n", str(n),
                        "-r", "1000000", "-q"] + cmd, check=True, capture_output=True,
                       timeout=120)
        us = (cpu_ticks(redis_proc.pid) - t0) * 1e6 / TICK / n
        print(f"{' '.join(cmd)[:40]:40} {us:14.2f} {1e6 / us:20.0f}")


def part_steady(procs, args, redis_port, db, up):
    """Browsers that stay: R requests per second per sandbox for --steady-secs."""
    port, _, proxy = start_proxy(procs, redis_port)
    upp = up.server_address[1]
    cases = [c for c in make_cases(db, upp, args.steady_n)
             if c[0] in ("public", "cookie, sandbox-ID host", "cookie, signed-URL host")]
    secs = args.steady_secs
    print(f"\n== steady: {args.steady_n} sandboxes per kind, each requested every 0.25 s "
          f"for {secs} s after a cold pass ==")
    print(f"{'kind':26} {'requests':>8} {'commands':>8}  {'per sandbox per 5 s':>20}  by command")
    client = Client(port)
    for kind, reqs in cases:
        run_pass(client, reqs, kind)
        a = settled_stats(db)
        t0 = time.monotonic()
        sent = 0
        while time.monotonic() - t0 < secs:
            run_pass(client, reqs, kind)
            sent += len(reqs)
            time.sleep(0.25)  # the request rate being modelled, not a readiness wait
        b = settled_stats(db)
        d = delta(a, b)
        total = sum(d.values())
        by = " ".join(f"{k.upper()}={v}" for k, v in sorted(d.items())) or "-"
        print(f"{kind:26} {sent:8d} {total:8d}  {total / len(reqs) / secs * 5:20.2f}  {by}")
    client.close()
    procs.stop(proxy)


def part_budget(procs, args, redis_port, db, up):
    """Browsers on signed-URL hosts against the per-process miss budget: each one
    costs a find-nothing lookup (HGETALL sandbox:{token}) per 5 s. With
    lookup_rate R, more than 5 x R such browsers per process exceed it."""
    rate = args.budget_rate
    port, _, proxy = start_proxy(procs, redis_port, budget=f"{rate} {rate}", name="budget")
    upp = up.server_address[1]
    n = args.budget_n
    reqs = []
    for i in range(n):
        add_sandbox(db, f"bu{i}", upp, False)
        db("SET", f"sandbox:signed-preview-url-token:{upp}:butok{i}", f"bu{i}", "EX", "3600")
        reqs.append(f"{upp}-butok{i}.{DOMAIN}")
    print(f"\n== miss budget: {n} browsers with a cookie on signed-URL hosts, one request "
          f"each per 0.25 s for {args.steady_secs} s, lookup_rate {rate} {rate} "
          f"(all from 127.0.0.1) ==")
    client = Client(port)
    counts = {}
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.steady_secs:
        for i, host in enumerate(reqs):
            status, _ = client.get(host, (("Cookie", cookie(f"butok{i}", f"bu{i}", upp)),))
            counts[status] = counts.get(status, 0) + 1
        time.sleep(0.25)  # the request rate being modelled
    client.close()
    procs.stop(proxy)
    total = sum(counts.values())
    print("statuses: " + ", ".join(f"{k}: {v} ({v / total:.1%})" for k, v in sorted(counts.items())))


# -------------------------------------------------------------------- fan-out --

def subscribers(db):
    """[(client addr port, omem)] of the proxy:invalidate subscribers."""
    out = []
    for line in db("CLIENT", "LIST").splitlines():
        kv = dict(p.partition("=")[::2] for p in line.split())
        if kv.get("sub") == "1":
            out.append((int(kv["addr"].rsplit(":", 1)[1]), int(kv["omem"]), int(kv["obl"])))
    return out


def rx_queue(local_port):
    """Bytes waiting in the receive queue of the socket bound to local_port."""
    want = f"{local_port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[1].rsplit(":", 1)[1] == want:
                return int(parts[4].split(":")[1], 16)
    return 0


def drained(db):
    subs = subscribers(db)
    return all(om == 0 and obl == 0 and rx_queue(p) == 0 for p, om, obl in subs)


def publish(redis_port, m, expect):
    """Pipelines m PUBLISHes; checks every reply is the receiver count `expect`."""
    r = Resp(redis_port, timeout=60)
    blob = b"".join(b"*3\r\n$7\r\nPUBLISH\r\n$16\r\nproxy:invalidate\r\n$%d\r\n%s\r\n"
                    % (len(p), p) for p in (b"sandbox:gone%07d" % j for j in range(m)))
    t = threading.Thread(target=r.sock.sendall, args=(blob,), daemon=True)
    t.start()
    bad = 0
    for _ in range(m):
        if r.read() != expect:
            bad += 1
    t.join(60)
    r.close()
    if bad:
        die(f"{bad} of {m} PUBLISHes reached a number of subscribers other than {expect}")


def part_fanout(procs, args, redis_port, db, up, redis_proc):
    upp = up.server_address[1]
    add_sandbox(db, "fan", upp, True)
    m = args.messages
    print(f"\n== proxy:invalidate fan-out: {m} messages for sandboxes in no cache ==")
    print(f"{'workers':>7} {'receivers':>9} {'worker CPU us/msg (each)':>30} "
          f"{'redis us/PUBLISH':>16} {'redis CPU us/msg':>16} {'drain s':>8}  activity: "
          f"SET  ZADD (one sandbox, 400 new connections)")
    for k in args.workers:
        port, _, proxy = start_proxy(procs, redis_port, workers=k, name=f"proxy-w{k}")
        poll(lambda: db("PUBSUB", "NUMSUB", "proxy:invalidate")[1] == k, 20,
             f"{k} subscribers")
        pids = children(proxy.pid) if k > 1 else [proxy.pid]
        if len(pids) != k:
            die(f"expected {k} worker processes, found {pids}")
        before = [cpu_ticks(p) for p in pids]
        rbefore = cpu_ticks(redis_proc.pid)
        sa = cmdstats(db)
        t0 = time.monotonic()
        publish(redis_port, m, k)
        poll(lambda: drained(db), 60, "the subscribers to read every message", 0.005)
        wall = time.monotonic() - t0
        after = [cpu_ticks(p) for p in pids]
        rafter = cpu_ticks(redis_proc.pid)
        sb = cmdstats(db)
        pub_calls = sb["publish"][0] - sa.get("publish", (0, 0))[0]
        pub_usec = sb["publish"][1] - sa.get("publish", (0, 0))[1]
        each = " ".join(f"{(x - y) * 1e6 / TICK / m:.2f}" for x, y in zip(after, before))
        # activity: one sandbox over new connections (SO_REUSEPORT spreads them)
        a = settled_stats(db)
        for _ in range(400):
            c = Client(port)
            status, _ = c.get(f"{upp}-fan.{DOMAIN}", (("Connection", "close"),))
            c.close()
            if status != 200:
                die(f"fan: {status}")
        b = settled_stats(db)
        d = delta(a, b)
        print(f"{k:7d} {k:9d} {each:>30} {pub_usec / pub_calls:16.2f} "
              f"{(rafter - rbefore) * 1e6 / TICK / m:16.2f} {wall:8.2f}  "
              f"{d.get('set', 0):13d} {d.get('zadd', 0):5d}  (lookups {sum(d.get(c, 0) for c in LOOKUPS)})")
        procs.stop(proxy)
        db("DEL", "proxy:sandbox-last-activity-update:fan")


def part_callgrind(procs, args, redis_port, db):
    m1, m2 = args.cg_messages
    print(f"\n== instructions per invalidation message (callgrind, workers 1, "
          f"messages for sandboxes in no cache; {m1} vs {m2}) ==")
    totals = []
    for m in (m1, m2):
        out = os.path.join(procs.dir, f"cg.{m}")
        _, _, proxy = start_proxy(procs, redis_port, 1, name=f"cg{m}",
                                  wrap=("valgrind", "--tool=callgrind",
                                        f"--callgrind-out-file={out}"))
        poll(lambda: db("PUBSUB", "NUMSUB", "proxy:invalidate")[1] == 1, 60, "subscriber")
        publish(redis_port, m, 1)
        poll(lambda: drained(db), 120, "the subscriber to read every message", 0.01)
        procs.stop(proxy, timeout=60)
        with open(out) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    totals.append(int(line.split()[1]))
                    break
    print(f"Ir({m1}) = {totals[0]}, Ir({m2}) = {totals[1]}, "
          f"Ir per message = {(totals[1] - totals[0]) // (m2 - m1)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="sandboxes per kind (cmds)")
    ap.add_argument("--warm-passes", type=int, default=3)
    ap.add_argument("--steady-n", type=int, default=20)
    ap.add_argument("--steady-secs", type=float, default=11)
    ap.add_argument("--parts", default="cmds,rediscpu,steady,fanout,callgrind")
    ap.add_argument("--rediscpu-n", type=int, default=200000)
    ap.add_argument("--budget-rate", type=int, default=5)
    ap.add_argument("--budget-n", type=int, default=50)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--messages", type=int, default=500000)
    ap.add_argument("--cg-messages", default="2000,20000")
    args = ap.parse_args()
    args.workers = [int(x) for x in args.workers.split(",")]
    args.cg_messages = [int(x) for x in args.cg_messages.split(",")]
    parts = args.parts.split(",")
    if not os.access(PROXY, os.X_OK):
        die(f"{PROXY} missing (make)")
    procs = Procs()
    try:
        redis_port, redis_proc = start_redis(procs)
        db = Resp(redis_port, timeout=30)
        up = start_upstream()
        print(f"redis-server {db('INFO', 'server').split('redis_version:')[1].split()[0]}, "
              f"proxy {PROXY}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        if "cmds" in parts:
            part_cmds(procs, args, redis_port, db, up)
        if "rediscpu" in parts:
            part_rediscpu(procs, args, redis_port, db, redis_proc)
        if "steady" in parts:
            part_steady(procs, args, redis_port, db, up)
        if "budget" in parts:
            part_budget(procs, args, redis_port, db, up)
        if "fanout" in parts:
            part_fanout(procs, args, redis_port, db, up, redis_proc)
        if "callgrind" in parts:
            part_callgrind(procs, args, redis_port, db)
    finally:
        procs.cleanup()


if __name__ == "__main__":
    main()

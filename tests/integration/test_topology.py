"""The fleet topology of issue 14 ("Tests", first bullet), all real components
on loopback: a redis-server primary and replica with three redis-sentinels
(sentinelfix.py), two preview-proxy instances that find Redis only through the
sentinels, each with a `proxy_protocol` listener that trusts 127.0.0.1, and
Debian's haproxy in TCP mode balancing round-robin across them with
send-proxy-v2. Clients connect to haproxy from 127.0.0.2 and 127.0.0.3, so
their real address is told apart from haproxy's 127.0.0.1.

  1. requests through the balancer reach both instances, each of which logs
     and forwards the client's real address;
  2. a revocation written once (proxyctl through the sentinels) is effective on
     both instances within a second (measured, printed);
  3. the primary is SIGKILLed (or frozen with SIGSTOP, so that the lookups
     and link attempts run into their timeouts instead of a refused connect),
     the sentinels promote the replica, and both instances serve every
     uncached sandbox again within a bound (the gap is measured per instance
     and printed); during the gap nothing unauthenticated gets a 200 and no
     request hangs past its timeout.

Every wait is a bounded poll; haproxy runs under `timeout` so it cannot
outlive a killed test run by more than HAPROXY_LIFETIME_S."""
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from helpers import (BASE_DOMAIN, RUNNER_KEY, ConnectionClosed, RawConn, Resp, free_port, host,
                     port_is_listening, request_bytes, stop_proc, wait_until)
from redisfix import COOKIE_SECRET, ORG, add_sandbox
from sentinelfix import MASTER, Cluster

HERE = os.path.dirname(os.path.abspath(__file__))
PROXYCTL = os.environ.get("PROXYCTL_BIN",
                          os.path.join(os.path.dirname(os.path.dirname(HERE)), "build", "proxyctl"))
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
HAPROXY_LIFETIME_S = 300   # haproxy is killed by `timeout` even if teardown never runs
CLIENTS = ("127.0.0.2", "127.0.0.3")
REVOCATION_BOUND_S = 1.0
FAILOVER_BOUND_S = 15.0    # generous; the measured gap is printed
REQUEST_BOUND_S = 5.0      # a lookup waits at most 1 s and a Redis link attempt 2 s; the rest
                           # is slack for a loaded CI machine
N_COLD = 20                # uncached sandboxes for the failover case
PROBE_INTERVAL_S = 0.02    # between two probes of one instance during the gap: the gap is
                           # measured to within this plus one request's time


# ------------------------------------------------------------------- helpers --

def v2(src, sport=40000):
    """A PROXY v2 header for a TCP/IPv4 client at src (what haproxy sends)."""
    body = (socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", sport, 80))
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def ctl(cluster, *args):
    """proxyctl through the sentinels (no REDIS_* from the environment)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    cmd = [PROXYCTL, "--sentinel", ",".join(cluster.addrs()), "--master", MASTER, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=e)
    assert p.returncode == 0, (args, p.stderr)
    return p


def fetch(port, label, token=None, path="/topo", source=None, pp_src=None,
          timeout=REQUEST_BOUND_S + 2):
    """One GET on a new connection to 127.0.0.1:port, from `source` (a local
    address) and, when pp_src is set, behind a hand-made PROXY v2 header naming
    pp_src (for an instance's own proxy_protocol listener). Returns (status,
    seconds); status is a string when no response came (closed, timeout)."""
    h = [("X-Daytona-Preview-Token", token)] if token is not None else []
    h.append(("Connection", "close"))
    t0 = time.monotonic()
    try:
        with RawConn(port, timeout=timeout, source=source) as c:
            c.send((v2(pp_src) if pp_src else b"") + request_bytes("GET", path, host(3000, label),
                                                                     headers=h))
            status = c.read_response().status
    except (OSError, ConnectionClosed) as e:
        status = f"error: {e!r}"
    return status, time.monotonic() - t0


def direct(inst, label, token=None, path="/topo", src=CLIENTS[0]):
    """A request straight to one instance's proxy_protocol listener (from
    127.0.0.1, which it trusts), as haproxy would send it."""
    return fetch(inst.pp_port, label, token, path=path, pp_src=src)


ACCESS = re.compile(r" ACCESS .* peer=(\S+) .* path=(\S+) status=(\d+) ")


def access(inst, prefix):
    """(peer, path, status) of the instance's access log lines whose path starts with prefix."""
    out = []
    for line in inst.log_lines():
        m = ACCESS.search(line)
        if m and m.group(2).startswith(prefix):
            out.append((m.group(1), m.group(2), int(m.group(3))))
    return out


def failovers_metric(inst):
    text = fetch_metrics(inst.mport)
    m = re.search(r"^preview_proxy_redis_failovers_total (\d+)$", text, re.M)
    assert m, text[:2000]
    return int(m.group(1))


def fetch_metrics(mport):
    with RawConn(mport, timeout=5) as c:
        c.send(request_bytes("GET", "/metrics", "127.0.0.1", headers=[("Connection", "close")]))
        r = c.read_response()
    assert r.status == 200, r
    return r.body.decode()


def start_haproxy(tmp_path, front, backends):
    cfg = tmp_path / "haproxy-topology.cfg"
    servers = "".join(f"    server px{i} 127.0.0.1:{port} send-proxy-v2\n"
                      for i, port in enumerate(backends, 1))
    cfg.write_text(f"""global
    maxconn 256
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:{front}
    default_backend be
backend be
    balance roundrobin
{servers}""")
    logpath = tmp_path / "haproxy-topology.log"
    with open(logpath, "ab") as log:
        # `timeout` passes our SIGTERM on to haproxy, and kills it by itself
        # if the test run dies before teardown.
        proc = subprocess.Popen(["timeout", "-s", "KILL", str(HAPROXY_LIFETIME_S), HAPROXY,
                                 "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log)

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"haproxy exited: {logpath.read_text()}")
        return port_is_listening(front)
    try:
        wait_until(ready, timeout=10, what="haproxy listening")
    except BaseException:
        stop_proc(proc)
        raise
    return proc


class Fleet:
    def __init__(self, cluster, instances, front):
        self.cluster, self.instances, self.front = cluster, instances, front

    def via_balancer(self, label, token=None, path="/topo", src=CLIENTS[0]):
        return fetch(self.front, label, token, path=path, source=src)


@pytest.fixture
def cluster():
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def fleet(proxy, cluster, tmp_path):
    instances = []
    for _ in range(2):
        pp, mport = free_port(), free_port()
        s = {"cookie_secret": COOKIE_SECRET, "cache_ttl": "60", "preview_warning": "off",
             "domains": BASE_DOMAIN, "trusted_proxies": "127.0.0.1/32",
             "redis_sentinel": " ".join(cluster.addrs() + [MASTER])}
        inst = proxy(settings=s, default_sandboxes_too=False,
                     extra=[f"listen 127.0.0.1:{pp} proxy_protocol",
                            f"metrics_listen 127.0.0.1:{mport}"])
        inst.pp_port, inst.mport = pp, mport
        instances.append(inst)
    # both subscribers on the primary: a revocation from now on reaches both
    wait_until(lambda: cluster.numsub(cluster.primary.port) >= 2, timeout=10,
               what="both instances subscribed to proxy:invalidate on the primary")
    front = free_port()
    hp = start_haproxy(tmp_path, front, [i.pp_port for i in instances])
    try:
        yield Fleet(cluster, instances, front)
    finally:
        stop_proc(hp)


def add(cluster, sid, token, runner):
    ctl(cluster, "sandbox", "add", sid, "--runner-url", runner.url, "--runner-key", RUNNER_KEY,
        "--auth-token", token, "--org", ORG)


# --------------------------------------------------------------------- cases --

def test_balancer_reaches_both_with_real_client_address(fleet, runner):
    sid, token = "sbx-topo-bal", "tok-topo-bal-S3CRET"
    add(fleet.cluster, sid, token, runner)
    n = 8
    for i in range(n):
        src = CLIENTS[i % 2]
        status, took = fleet.via_balancer(sid, token, path=f"/bal-{i}-{src}", src=src)
        assert status == 200, (i, status)
    a, b = fleet.instances
    wait_until(lambda: len(access(a, "/bal-")) + len(access(b, "/bal-")) == n, timeout=5,
               what="an access log line per request")
    lines_a, lines_b = access(a, "/bal-"), access(b, "/bal-")
    print(f"\nTOPOLOGY balance: instance 1 served {len(lines_a)}, instance 2 {len(lines_b)} "
          f"of {n} requests through haproxy")
    assert len(lines_a) > 0 and len(lines_b) > 0, (lines_a, lines_b)
    # each instance's peer is haproxy (127.0.0.1); it logs the client named by
    # the PROXY v2 header instead
    for peer, path, status in lines_a + lines_b:
        assert status == 200
        assert peer == path.rsplit("-", 1)[1], (peer, path)
    # and the runner sees that address in X-Forwarded-For
    recs = [r for r in runner.requests() if "/bal-" in r["target"]]
    assert len(recs) == n
    for r in recs:
        xff = [v for k, v in r["headers"] if k.lower() == "x-forwarded-for"]
        assert xff == [r["target"].rsplit("-", 1)[1]], (r["target"], xff)


def _poll_refused(fleet, probe, bound):
    """Polls both instances (alternately, so neither waits on the other) with
    probe(inst) until each gives something other than 200; returns the seconds
    since now per instance and the status that ended the wait."""
    t0 = time.monotonic()
    done = {}
    while len(done) < 2 and time.monotonic() - t0 < bound + 4:
        for k, inst in enumerate(fleet.instances):
            if k in done:
                continue
            status, _ = probe(inst)
            if status != 200:
                done[k] = (time.monotonic() - t0, status)
    return [done.get(k, (None, None)) for k in range(2)]


def test_revocation_reaches_both_within_a_second(fleet, runner):
    sid, old, new = "sbx-topo-rev", "tok-topo-old-S3CRET", "tok-topo-new-S3CRET"
    cluster = fleet.cluster
    add(cluster, sid, old, runner)
    p = ctl(cluster, "signed-url", "create", sid, "3000", "--expires", "600")
    signed = p.stdout.split("token: ")[1].strip()
    # warm both caches: each instance answers the old token and the signed one
    for inst in fleet.instances:
        assert direct(inst, sid, old)[0] == 200
        assert direct(inst, signed)[0] == 200
        assert direct(inst, sid, new)[0] == 401
    results = {}
    for what, args, probe in [
            ("auth_token change", ("sandbox", "set", sid, f"auth_token={new}"),
             lambda inst: direct(inst, sid, old)),
            ("signed token revoke", ("signed-url", "revoke", "3000", signed),
             lambda inst: direct(inst, signed))]:
        t_write = time.monotonic()
        ctl(cluster, *args)   # written once, through the sentinels
        t_written = time.monotonic() - t_write
        seen = _poll_refused(fleet, probe, REVOCATION_BOUND_S)
        # measured from the start of proxyctl (an upper bound on the latency)
        lat = [None if s is None else s + t_written for s, _ in seen]
        results[what] = lat
        print(f"\nTOPOLOGY revocation ({what}): refused on instance 1 after "
              f"{_ms(lat[0])} ms, on instance 2 after {_ms(lat[1])} ms "
              f"(from the start of proxyctl, which took {_ms(t_written)} ms)")
        assert [st for _, st in seen] == [401, 401], (what, seen)
        assert all(x is not None and x < REVOCATION_BOUND_S for x in lat), (what, lat)
    for inst in fleet.instances:
        assert direct(inst, sid, new)[0] == 200
        assert direct(inst, sid, old)[0] == 401
        assert direct(inst, signed)[0] == 401


def _ms(s):
    return None if s is None else round(s * 1000, 1)


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_primary_lost_both_instances_recover(fleet, runner, how):
    """kill: SIGKILL, the links see a reset and a refused reconnect at once.
    freeze: SIGSTOP, the primary's sockets stay open and silent, so the
    lookups, the link attempts and proxyctl wait on their own timeouts."""
    cluster = fleet.cluster
    warm, warm_tok = "sbx-topo-warm", "tok-topo-warm-S3CRET"
    add(cluster, warm, warm_tok, runner)
    # Uncached sandboxes: `good` ones are asked with their own token, each at
    # most once per instance before the gap ends; `bad` ones only ever with no
    # or a wrong token (so they never warm a `good` one).
    good = [f"sbx-topo-g{i}" for i in range(N_COLD)]
    bad = [f"sbx-topo-b{i}" for i in range(8)]
    with Resp(cluster.primary.port) as r:
        for sid in good + bad:
            add_sandbox(r, sid, runner.url)
    wait_until(lambda: _exists(cluster.replica.port, f"sandbox:{bad[-1]}"), timeout=10,
               what="replica caught up")
    for inst in fleet.instances:
        assert failovers_metric(inst) == 0
        assert direct(inst, warm, warm_tok)[0] == 200          # now cached on both
        assert direct(inst, bad[0], "wrong")[0] == 401

    if how == "kill":
        t_kill = cluster.failover_by_kill()
    else:
        t_kill = time.monotonic()
        os.kill(cluster.primary.proc.pid, signal.SIGSTOP)   # Cluster.stop SIGKILLs it
    stop = threading.Event()
    first_ok = [None, None]
    gap = [[], []]          # statuses before the first 200, per instance
    slow, let_through = [], []

    counts = {"unauthenticated": 0, "max_s": 0.0, "slowest": None}

    def note(what, status, took):
        if took > counts["max_s"]:
            counts["max_s"], counts["slowest"] = took, (what, status)
        if took > REQUEST_BOUND_S or isinstance(status, str):
            slow.append((what, status, round(took, 2)))

    def recover(k):
        # A refused lookup caches nothing, so a sandbox stays uncached until
        # its first 200; the probes cycle through them at PROBE_INTERVAL_S.
        inst = fleet.instances[k]
        i = 0
        while time.monotonic() - t_kill < FAILOVER_BOUND_S + 5:
            sid = good[i % len(good)]
            i += 1
            status, took = direct(inst, sid, f"tok-{sid}-S3CRET", src=CLIENTS[k])
            note(f"instance {k + 1} {sid}", status, took)
            if status == 200:
                first_ok[k] = time.monotonic() - t_kill
                return
            gap[k].append(status)
            time.sleep(PROBE_INTERVAL_S)  # poll interval only

    def unauthenticated():
        i = 0
        while not stop.is_set():
            sid = bad[i % len(bad)]
            token = None if i % 2 else "wrong-S3CRET"
            src = CLIENTS[i % 2]
            targets = [("haproxy", lambda: fleet.via_balancer(sid, token, src=src))]
            targets += [(f"instance {k + 1}", lambda inst=inst: direct(inst, sid, token, src=src))
                        for k, inst in enumerate(fleet.instances)]
            for name, call in targets:
                status, took = call()
                note(f"{name} unauthenticated {sid}", status, took)
                counts["unauthenticated"] += 1
                if status not in (401, 503):
                    let_through.append((name, sid, token is not None, status))
            # the cached sandbox keeps serving through the gap (SPEC 5)
            for k, inst in enumerate(fleet.instances):
                status, took = direct(inst, warm, warm_tok)
                note(f"instance {k + 1} warm", status, took)
                if status != 200:
                    let_through.append((f"instance {k + 1}", warm, "warm not served", status))
            i += 1
            time.sleep(PROBE_INTERVAL_S)  # poll interval only

    threads = [threading.Thread(target=recover, args=(k,), daemon=True) for k in range(2)]
    bad_thread = threading.Thread(target=unauthenticated, daemon=True)
    for t in threads + [bad_thread]:
        t.start()
    for t in threads:
        t.join(FAILOVER_BOUND_S + 5 + 2 * REQUEST_BOUND_S)
    stop.set()
    bad_thread.join(4 * (REQUEST_BOUND_S + 2))
    assert not any(t.is_alive() for t in threads + [bad_thread]), "a probe hung"

    sig = "SIGKILL" if how == "kill" else "SIGSTOP"
    print(f"\nTOPOLOGY failover gap ({sig} of the primary to the first 200 for an uncached "
          f"sandbox): instance 1 {_r(first_ok[0])} s after {len(gap[0])} refused probes "
          f"({sorted(set(gap[0]), key=str)}), instance 2 {_r(first_ok[1])} s after "
          f"{len(gap[1])} ({sorted(set(gap[1]), key=str)}); {counts['unauthenticated']} "
          f"requests with no or a wrong token meanwhile (through haproxy and direct), none "
          f"let through; slowest request {round(counts['max_s'], 3)} s "
          f"{counts['slowest']}")
    assert not let_through, let_through
    assert not slow, f"requests without an answer within {REQUEST_BOUND_S} s: {slow}"
    assert all(x is not None and x < FAILOVER_BOUND_S for x in first_ok), (first_ok, gap)
    assert set(gap[0] + gap[1]) <= {503}, gap

    # The replica was promoted, both instances followed it and count it.
    new_port = cluster.replica.port
    assert cluster.master_port() == new_port and cluster.role(new_port) == "master"
    for inst in fleet.instances:
        wait_until(lambda: "(failover 1)" in inst.log(), timeout=5, what="failover logged")
        assert failovers_metric(inst) == 1
    # Both serve every sandbox again: each uncached one answers 200 on each
    # instance, first try, and the unauthenticated ones still do not.
    for k, inst in enumerate(fleet.instances):
        codes = [direct(inst, sid, f"tok-{sid}-S3CRET")[0] for sid in good]
        assert codes == [200] * len(good), (k, codes)
        assert direct(inst, bad[1])[0] == 401
    # ... and a revocation written now (through the sentinels, to the new
    # primary) still reaches both subscribers within a second.
    wait_until(lambda: cluster.numsub(new_port) >= 2, timeout=10,
               what="both subscribers on the new primary")
    t_write = time.monotonic()
    ctl(cluster, "sandbox", "set", warm, "auth_token=tok-topo-warm2-S3CRET")
    t_written = time.monotonic() - t_write
    seen = _poll_refused(fleet, lambda inst: direct(inst, warm, warm_tok), REVOCATION_BOUND_S)
    lat = [None if s is None else s + t_written for s, _ in seen]
    print(f"TOPOLOGY revocation after the failover: instance 1 {_ms(lat[0])} ms, "
          f"instance 2 {_ms(lat[1])} ms")
    assert [st for _, st in seen] == [401, 401], seen
    assert all(x is not None and x < REVOCATION_BOUND_S for x in lat), lat


def _r(x):
    return None if x is None else round(x, 2)


def _exists(port, key):
    try:
        with Resp(port, timeout=2) as r:
            return r("EXISTS", key) == 1
    except (OSError, ConnectionError):
        return False

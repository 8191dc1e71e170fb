"""Redis Sentinel (issue 14 item 1): the proxy and proxyctl find the primary
through the sentinels, follow +switch-master, and keep SPEC 5's rules while no
primary is reachable (cached entries serve, everything else 503, nothing
unauthenticated gets through). Real redis-server and redis-sentinel processes on
loopback (sentinelfix.py); every wait is a bounded poll."""
import os
import re
import socket
import subprocess
import threading
import time

import pytest
import requests

from helpers import BASE_DOMAIN, RUNNER_KEY, free_port, host, wait_until
from redisfix import COOKIE_SECRET, ORG, poll_latency
from sentinelfix import MASTER, Cluster

HERE = os.path.dirname(os.path.abspath(__file__))
PROXYCTL = os.environ.get("PROXYCTL_BIN",
                          os.path.join(os.path.dirname(os.path.dirname(HERE)), "build", "proxyctl"))
FAILOVER_BOUND_S = 15.0   # generous; the measured gap is printed
REQUEST_BOUND_S = 5.0     # a request during the gap answers within this: a lookup waits at most
                          # 1 s and a link attempt 2 s; the rest is slack for a loaded CI machine


@pytest.fixture
def cluster():
    c = Cluster().start()
    yield c
    c.stop()


def ctl(cluster_or_addrs, *args, env=None, master=MASTER):
    addrs = (cluster_or_addrs if isinstance(cluster_or_addrs, str)
             else ",".join(cluster_or_addrs.addrs()))
    e = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    e.update(env or {})
    cmd = [PROXYCTL] + (["--sentinel", addrs, "--master", master] if addrs else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=e)


def add(cluster, sid, token, runner):
    p = ctl(cluster, "sandbox", "add", sid, "--runner-url", runner.url, "--runner-key",
            RUNNER_KEY, "--auth-token", token, "--org", ORG)
    assert p.returncode == 0, p.stderr


def sproxy(proxy, cluster, sentinels=None, cache_ttl=60, env=None, metrics_port=None):
    """A proxy whose only Redis configuration is redis_sentinel (or env)."""
    s = {"cookie_secret": COOKIE_SECRET, "cache_ttl": str(cache_ttl), "preview_warning": "off",
         "domains": BASE_DOMAIN}
    if env is None:
        s["redis_sentinel"] = " ".join((sentinels or cluster.addrs()) + [MASTER])
    extra = [f"metrics_listen 127.0.0.1:{metrics_port}"] if metrics_port else []
    return proxy(settings=s, env=env, default_sandboxes_too=False, extra=extra)


def failovers_metric(port):
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    m = re.search(r"^preview_proxy_redis_failovers_total (\d+)$", text, re.M)
    assert m, text
    return int(m.group(1))


def status(px, sid, token=None, timeout=10):
    h = {"X-Daytona-Preview-Token": token} if token is not None else {}
    try:
        return px.get("/r", host=host(3000, sid), headers=h, timeout=timeout).status_code
    except Exception as e:  # noqa: BLE001 - a hang or reset is a failure we report
        return f"error: {e!r}"


def subscribed_on(cluster, port):
    return wait_until(lambda: cluster.numsub(port) >= 1, timeout=10,
                      what=f"proxy subscribed to proxy:invalidate on :{port}")


# ------------------------------------------------------------------ discovery --

def test_finds_primary_through_sentinels(proxy, cluster, runner):
    add(cluster, "sbx-sen-a", "tok-sen-a-S3CRET", runner)
    px = sproxy(proxy, cluster)
    subscribed_on(cluster, cluster.primary.port)
    assert cluster.numsub(cluster.replica.port) == 0   # the subscriber is on the primary
    assert status(px, "sbx-sen-a", "tok-sen-a-S3CRET") == 200
    assert status(px, "sbx-sen-a", "wrong") == 401
    assert status(px, "sbx-sen-nope") == 401   # unknown: no existence oracle
    # the command link is on the primary too: its lookups were counted there
    stats = subprocess.run(["redis-cli", "-p", str(cluster.primary.port), "INFO",
                            "commandstats"], capture_output=True, text=True, timeout=10).stdout
    assert "cmdstat_hgetall" in stats
    assert "redis: command link up (primary 127.0.0.1:%d)" % cluster.primary.port in px.log()


def test_env_variables_and_proxyctl_env(proxy, cluster, runner):
    env = {"REDIS_SENTINELS": ",".join(cluster.addrs()), "REDIS_MASTER_NAME": MASTER}
    p = ctl("", "sandbox", "add", "sbx-sen-env", "--runner-url", runner.url, "--runner-key",
            RUNNER_KEY, "--auth-token", "tok-env-S3CRET", "--org", ORG, env=env)
    assert p.returncode == 0, p.stderr
    px = sproxy(proxy, cluster, env=env)
    subscribed_on(cluster, cluster.primary.port)
    assert status(px, "sbx-sen-env", "tok-env-S3CRET") == 200


# ------------------------------------------------------------------- failover --

def test_failover_gap_503s_and_invalidation(proxy, cluster, runner):
    warm, cold = "sbx-sen-warm", [f"sbx-sen-cold{i}" for i in range(40)]
    add(cluster, warm, "tok-warm-S3CRET", runner)
    for sid in cold:
        add(cluster, sid, f"tok-{sid}-S3CRET", runner)
    # wait until the replica has every record, so the failover loses none
    wait_until(lambda: subprocess.run(
        ["redis-cli", "-p", str(cluster.replica.port), "EXISTS", f"sandbox:{cold[-1]}"],
        capture_output=True, text=True, timeout=5).stdout.strip() == "1", timeout=10,
        what="replica caught up")
    mport = free_port()
    px = sproxy(proxy, cluster, metrics_port=mport)
    assert failovers_metric(mport) == 0
    subscribed_on(cluster, cluster.primary.port)
    assert status(px, warm, "tok-warm-S3CRET") == 200       # now cached

    t_kill = cluster.failover_by_kill()
    gap_codes, slow, first_ok = [], [], None
    i = 0
    while time.monotonic() - t_kill < FAILOVER_BOUND_S + 5:
        sid = cold[i % len(cold)]
        i += 1
        t0 = time.monotonic()
        code = status(px, sid, f"tok-{sid}-S3CRET", timeout=REQUEST_BOUND_S + 2)
        took = time.monotonic() - t0
        if took > REQUEST_BOUND_S:
            slow.append((sid, code, round(took, 2)))
        # never let through without authentication, whatever the link state
        assert status(px, sid, "wrong-token") in (401, 503)
        assert status(px, sid) in (401, 503)
        if code == 200:
            first_ok = time.monotonic() - t_kill
            break
        gap_codes.append(code)
        # the cached sandbox keeps serving through the gap (SPEC 5)
        assert status(px, warm, "tok-warm-S3CRET") == 200
        assert status(px, warm, "wrong") in (401, 503)
    print(f"\nSENTINEL FAILOVER GAP: first 200 for an uncached sandbox {first_ok} s after "
          f"SIGKILL of the primary; {len(gap_codes)} requests during the gap")
    assert first_ok is not None and first_ok < FAILOVER_BOUND_S, (first_ok, gap_codes[-5:])
    assert set(gap_codes) <= {503}, gap_codes
    assert not slow, f"requests slower than {REQUEST_BOUND_S} s during the gap: {slow}"

    new_port = cluster.replica.port
    # the sentinel asked here may learn of the switch a moment after the one
    # the proxy followed
    wait_until(lambda: cluster.master_port() == new_port, timeout=5, what="sentinels agree")
    assert cluster.role(new_port) == "master"
    wait_until(lambda: "(failover 1)" in px.log(), timeout=5, what="failover counted")
    assert failovers_metric(mport) == 1  # preview_proxy_redis_failovers_total
    assert "redis: sentinels switched master %s to 127.0.0.1:%d (failover 1)" % (
        MASTER, new_port) in px.log()
    subscribed_on(cluster, new_port)

    # A revocation written after the failover (through the sentinels) reaches the
    # proxy's subscriber on the new primary: the cached old token stops at once.
    assert status(px, warm, "tok-warm-S3CRET") == 200
    p = ctl(cluster, "sandbox", "set", warm, "auth_token=tok-warm-NEW-S3CRET")
    assert p.returncode == 0, p.stderr
    lat = poll_latency(lambda: status(px, warm, "tok-warm-S3CRET") == 401, timeout=5)
    assert lat is not None and lat < 1.0, lat
    assert status(px, warm, "tok-warm-NEW-S3CRET") == 200


def test_manual_failover_moves_both_links(proxy, cluster, runner):
    """SENTINEL FAILOVER demotes a live primary: +switch-master must move both
    links off it (the old node keeps running, as a replica)."""
    add(cluster, "sbx-sen-m", "tok-m-S3CRET", runner)
    px = sproxy(proxy, cluster)
    old, new = cluster.primary.port, cluster.replica.port
    subscribed_on(cluster, old)
    assert status(px, "sbx-sen-m", "tok-m-S3CRET") == 200
    p = subprocess.run(["redis-cli", "-p", str(cluster.sentinels[1].port), "SENTINEL",
                        "FAILOVER", MASTER], capture_output=True, text=True, timeout=10)
    assert p.stdout.strip() == "OK", p.stdout + p.stderr
    wait_until(lambda: "(failover 1)" in px.log(), timeout=15, what="+switch-master followed")
    wait_until(lambda: cluster.numsub(new) >= 1 and cluster.numsub(old) == 0, timeout=10,
               what="subscriber moved to the new primary")
    wait_until(lambda: "redis: command link up (primary 127.0.0.1:%d)" % new in px.log(),
               timeout=10, what="command link on the new primary")
    # a change written on the new primary is seen at once (not a stale replica read)
    p = ctl(cluster, "sandbox", "set", "sbx-sen-m", "auth_token=tok-m2-S3CRET")
    assert p.returncode == 0, p.stderr
    assert poll_latency(lambda: status(px, "sbx-sen-m", "tok-m2-S3CRET") == 200, timeout=5) < 1
    assert status(px, "sbx-sen-m", "tok-m-S3CRET") == 401


def test_follows_switch_after_losing_its_sentinel(proxy, cluster, runner):
    """The sentinel the proxy listens to dies; it listens on another one and
    still follows the failover."""
    add(cluster, "sbx-sen-l", "tok-l-S3CRET", runner)
    px = sproxy(proxy, cluster)
    subscribed_on(cluster, cluster.primary.port)
    s0, s1 = cluster.sentinels[0], cluster.sentinels[1]
    wait_until(lambda: f"sentinel 127.0.0.1:{s0.port}: following +switch-master" in px.log(),
               timeout=10, what="subscribed on the first sentinel")
    s0.kill()
    wait_until(lambda: f"sentinel 127.0.0.1:{s1.port}: following +switch-master" in px.log(),
               timeout=10, what="subscribed on the next sentinel")
    t_kill = cluster.failover_by_kill()
    lat = poll_latency(lambda: status(px, "sbx-sen-l", "tok-l-S3CRET") == 200, timeout=20,
                       interval=0.05)
    print(f"\nfailover with one sentinel down: first 200 after {lat} s")
    assert lat is not None and time.monotonic() - t_kill < FAILOVER_BOUND_S + 5
    wait_until(lambda: "(failover 1)" in px.log(), timeout=10, what="+switch-master followed")
    subscribed_on(cluster, cluster.replica.port)


# ------------------------------------------------------------ hostile sentinels --

class FakeSentinel:
    """Answers every command on a connection with one canned RESP reply (or
    never, with reply=None), on 127.0.0.1."""

    def __init__(self, reply):
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(0.5)
        while not self.stop:
            try:
                data = c.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            if self.reply is not None:
                try:
                    c.sendall(self.reply)
                except OSError:
                    return

    def close(self):
        self.stop = True
        self.sock.close()
        for c in self.conns:
            c.close()
        self.t.join(2)


def bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)


HOSTILE = {
    "hostname": b"*2\r\n" + bulk(b"localhost") + bulk(b"6379"),
    "integers": b"*2\r\n:1\r\n:6379\r\n",
    "bad port": b"*2\r\n" + bulk(b"127.0.0.1") + bulk(b"99999"),
    "nul in ip": b"*2\r\n" + bulk(b"127.0.0.1\x00x") + bulk(b"6379"),
    "long ip": b"*2\r\n" + bulk(b"1" * 5000) + bulk(b"6379"),
    "three elements": b"*3\r\n" + bulk(b"127.0.0.1") + bulk(b"6379") + bulk(b"x"),
    "error": b"-ERR no such master\r\n",
    "nil": b"*-1\r\n",
    "silent": None,
}


def test_hostile_and_unreachable_sentinels(proxy, cluster, runner):
    add(cluster, "sbx-sen-h", "tok-h-S3CRET", runner)
    fakes = [FakeSentinel(r) for r in HOSTILE.values()]
    # A sentinel that names an address where nothing listens.
    dead = free_port()
    fakes.append(FakeSentinel(b"*2\r\n" + bulk(b"127.0.0.1") + bulk(str(dead).encode())))
    # ... and one that names the replica, which ROLE must refuse.
    fakes.append(FakeSentinel(b"*2\r\n" + bulk(b"127.0.0.1") +
                              bulk(str(cluster.replica.port).encode())))
    try:
        closed = f"127.0.0.1:{free_port()}"
        # the real sentinels come last: each bad one is passed over in turn
        bad = [closed] + [f"127.0.0.1:{f.port}" for f in fakes]
        sentinels = bad[:5] + [cluster.addrs()[0]]
        t0 = time.monotonic()
        px = sproxy(proxy, cluster, sentinels=sentinels)
        assert px.health_ok()          # the loop was never blocked
        lat = poll_latency(lambda: status(px, "sbx-sen-h", "tok-h-S3CRET") == 200, timeout=15,
                           interval=0.05)
        print(f"\nfirst 200 through 5 bad sentinels + 1 good: {lat} s")
        assert lat is not None, px.log()[-3000:]
        subscribed_on(cluster, cluster.primary.port)
        assert "no usable address for master" in px.log()
        # the +switch-master feed is only opened on a peer whose ROLE is sentinel
        # (hiredis 0.14 aborts on a malformed pub/sub reply)
        wait_until(lambda: "not a sentinel (ROLE)" in px.log(), timeout=10,
                   what="garbage peer refused for the subscription")
        wait_until(lambda: "following +switch-master" in px.log(), timeout=20,
                   what="subscribed on the real sentinel")
        # the rest of the bad ones, in front of a good one
        sentinels = bad[5:] + [cluster.addrs()[1]]
        px2 = sproxy(proxy, cluster, sentinels=sentinels)
        lat = poll_latency(lambda: status(px2, "sbx-sen-h", "tok-h-S3CRET") == 200, timeout=15,
                           interval=0.05)
        assert lat is not None, px2.log()[-3000:]
        # the dead address was tried and given up, the replica refused by ROLE
        assert "redis: connect failed" in px2.log()
        assert "127.0.0.1:%d is not the primary" % cluster.replica.port in px2.log()
        wait_until(lambda: cluster.numsub(cluster.primary.port) >= 2, timeout=10,
                   what="both proxies subscribed on the primary")
        assert cluster.numsub(cluster.replica.port) == 0
        assert time.monotonic() - t0 < 40
        # No leaked echo of the hostile bytes into the log.
        assert "localhost" not in px.log() + px2.log()
    finally:
        for f in fakes:
            f.close()


def test_no_sentinel_reachable_gives_503_fast(proxy):
    sentinels = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    s = {"cookie_secret": COOKIE_SECRET, "preview_warning": "off", "domains": BASE_DOMAIN,
         "redis_sentinel": " ".join(sentinels + [MASTER])}
    px = proxy(settings=s, default_sandboxes_too=False)
    for _ in range(3):
        t0 = time.monotonic()
        assert status(px, "sbx-any", "tok") == 503
        assert time.monotonic() - t0 < REQUEST_BOUND_S
    assert px.health_ok()


# -------------------------------------------------------------- configuration --

@pytest.mark.parametrize("lines,env,message", [
    (["redis_sentinel 127.0.0.1:26379"], {}, "expects ADDR:PORT [ADDR:PORT...] MASTER_NAME"),
    (["redis_sentinel 127.0.0.1:26379 127.0.0.1:26380"], {}, "must be the master name"),
    (["redis_sentinel sentinel-1:26379 mymaster"], {}, "IP literals only"),
    (["redis_sentinel 127.0.0.1:26379 my/master"], {}, "bad master name"),
    (["redis 127.0.0.1:6379", "redis_sentinel 127.0.0.1:26379 mymaster"], {},
     "redis and redis_sentinel exclude each other"),
    ([], {"REDIS_SENTINELS": "127.0.0.1:26379"}, "REDIS_SENTINELS needs REDIS_MASTER_NAME"),
    ([], {"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_MASTER_NAME": "m",
          "REDIS_HOST": "127.0.0.1"}, "REDIS_SENTINELS and REDIS_HOST exclude each other"),
    ([], {"REDIS_SENTINELS": "sentinel:26379", "REDIS_MASTER_NAME": "m"},
     "REDIS_SENTINELS has a bad value"),
    ([], {"REDIS_MASTER_NAME": "m"}, "no sentinels are"),
], ids=["no-master", "address-last", "hostname", "bad-name", "both", "env-no-master",
        "env-both", "env-hostname", "env-master-only"])
def test_config_errors(proxy_bin, tmp_path, lines, env, message):
    conf = tmp_path / "p.conf"
    conf.write_text("listen 127.0.0.1:1\n" + "\n".join(lines) + "\n")
    e = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    e.update(env)
    p = subprocess.run([proxy_bin, "-t", "-c", str(conf)], capture_output=True, text=True,
                       timeout=10, env=e)
    assert p.returncode != 0
    assert message in p.stderr, p.stderr


def test_config_ok_and_env_replaces_file(proxy_bin, tmp_path):
    conf = tmp_path / "p.conf"
    conf.write_text("listen 127.0.0.1:1\nredis 127.0.0.1:6379\n")
    e = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    e.update({"REDIS_SENTINELS": "127.0.0.1:26379,[::1]:26380", "REDIS_MASTER_NAME": "m"})
    p = subprocess.run([proxy_bin, "-t", "-c", str(conf)], capture_output=True, text=True,
                       timeout=10, env=e)
    assert p.returncode == 0, p.stderr


def test_proxyctl_options(cluster):
    p = ctl(cluster, "--redis", "127.0.0.1:1", "invalidate", "all")
    assert p.returncode == 2 and "exclude each other" in p.stderr
    p = subprocess.run([PROXYCTL, "--sentinel", "127.0.0.1:1", "invalidate", "all"],
                       capture_output=True, text=True, timeout=10,
                       env={k: v for k, v in os.environ.items() if not k.startswith("REDIS_")})
    assert p.returncode == 2 and "--master" in p.stderr
    p = ctl(f"localhost:{cluster.sentinels[0].port}", "invalidate", "all")
    assert p.returncode == 2 and "IP literals only" in p.stderr
    t0 = time.monotonic()
    p = ctl(f"127.0.0.1:{free_port()}", "invalidate", "all")
    assert p.returncode == 1 and "no sentinel named a usable primary" in p.stderr, p.stderr
    assert time.monotonic() - t0 < 5
    p = ctl(cluster, "invalidate", "all")
    assert p.returncode == 0, p.stderr

"""A Redis Sentinel topology on loopback for tests/integration/test_sentinel.py:
a redis-server primary, one replica (replicaof) and three redis-sentinel
processes (quorum 2, down-after-milliseconds 1000), each on a free port in its
own temp dir. Readiness is polled (replication link up, every sentinel knows
the replica and the two other sentinels), never slept for."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

from helpers import Resp, free_port, redis_ping, wait_until

MASTER = "pxmaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def _query(port, *args, timeout=1.0):
    try:
        with Resp(port, timeout=timeout, errors="replace") as r:
            return r(*args)
    except (OSError, RuntimeError, ConnectionError, ValueError):
        return None


class Proc:
    """One redis-server or redis-sentinel, logging into dir/NAME.log."""

    def __init__(self, root, name, args, port):
        self.name, self.port, self.args = name, port, args
        self.logpath = os.path.join(root, f"{name}.log")
        self.proc = None

    def start(self):
        with open(self.logpath, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        return self

    def kill(self):
        """SIGKILL, as on a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class Cluster:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="px-sentinel-")
        self.nodes = []
        self.sentinels = []

    def _redis(self, name, extra=()):
        port = free_port()
        d = os.path.join(self.dir, name)
        os.mkdir(d)
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", d,
                # no 5 s wait for more replicas before a full sync
                "--repl-diskless-sync-delay", "0", *extra]
        return Proc(self.dir, name, args, port)

    def start(self, timeout=20.0):
        primary = self._redis("primary").start()
        self.nodes.append(primary)
        wait_until(lambda: self._check(primary) and redis_ping(primary.port), timeout=timeout,
                   what="primary PONG")
        replica = self._redis("replica", ["--replicaof", "127.0.0.1", str(primary.port)]).start()
        self.nodes.append(replica)
        wait_until(lambda: self._check(replica) and "master_link_status:up" in
                   (_query(replica.port, "INFO", "replication") or ""),
                   timeout=timeout, what="replica in sync")
        # Each sentinel is told its peers and the replica up front (as a
        # rewritten sentinel.conf would), instead of waiting seconds for hellos.
        ports = [free_port() for _ in range(3)]
        ids = [os.urandom(20).hex() for _ in range(3)]
        for i, port in enumerate(ports):
            conf = os.path.join(self.dir, f"sentinel{i}.conf")
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self.dir}\n"
                        f"sentinel myid {ids[i]}\n"
                        f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2\n"
                        f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                        f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                        f"sentinel parallel-syncs {MASTER} 1\n"
                        f"sentinel known-replica {MASTER} 127.0.0.1 {replica.port}\n")
                for j in range(3):
                    if j != i:
                        f.write(f"sentinel known-sentinel {MASTER} 127.0.0.1 {ports[j]} {ids[j]}\n")
            self.sentinels.append(Proc(self.dir, f"sentinel{i}", ["redis-sentinel", conf],
                                       port).start())
        # Each sentinel must know the replica (or it cannot fail over) and the
        # two others (or there is no quorum to elect a leader).
        wait_until(lambda: all(self._check(s) and self._ready(s) for s in self.sentinels),
                   timeout=timeout, what="sentinels see the replica and each other")
        return self

    def _check(self, p):
        if not p.alive():
            raise RuntimeError(f"{p.name} exited: {p.log()[-2000:]}")
        return True

    def _ready(self, s):
        info = _query(s.port, "SENTINEL", "MASTER", MASTER)
        if not isinstance(info, list):
            return False
        d = dict(zip(info[0::2], info[1::2]))
        return d.get("num-slaves") == "1" and d.get("num-other-sentinels") == "2"

    @property
    def primary(self):
        return self.nodes[0]

    @property
    def replica(self):
        return self.nodes[1]

    def addrs(self):
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def master_port(self):
        """Where the sentinels say the primary is (None if none answers)."""
        for s in self.sentinels:
            r = _query(s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
            if isinstance(r, list) and len(r) == 2:
                return int(r[1])
        return None

    def role(self, port):
        r = _query(port, "ROLE")
        return r[0] if isinstance(r, list) and r else None

    def numsub(self, port, channel="proxy:invalidate"):
        r = _query(port, "PUBSUB", "NUMSUB", channel)
        return int(r[1]) if isinstance(r, list) and len(r) == 2 else 0

    def failover_by_kill(self):
        """SIGKILL the primary; returns the time of the kill (monotonic)."""
        t0 = time.monotonic()
        self.primary.kill()
        return t0

    def stop(self):
        for p in self.sentinels + self.nodes:
            p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

"""Measuring the proxy under attack (issue 12 items 3 and 4): its RSS and
descriptor count from /proc, a background sampler for the peak during an
attack, legitimate probe requests with their latency, and one line per
measurement appended to tests/artifacts/limits.txt so the numbers can be
quoted (the file is not versioned; tests/artifacts is in .gitignore).

Standard library only. Nothing here sleeps to synchronise: the sampler's
sleep is its sampling interval.
"""
import os
import threading
import time
import uuid

from helpers import PUB, RawConn, host, request_bytes

HERE = os.path.dirname(os.path.abspath(__file__))
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests", "artifacts")
LIMITS_FILE = os.path.join(ARTIFACTS, "limits.txt")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Sampler:
    """Samples a pid's RSS and fd count every `interval` seconds in a thread;
    keeps the peaks. Use as a context manager around the attack."""

    def __init__(self, pid, interval=0.05):
        self.pid = pid
        self.interval = interval
        self.rss0 = rss_kib(pid)
        self.fds0 = fd_count(pid)
        self.peak_rss = self.rss0
        self.peak_fds = self.fds0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self):
        try:
            r, n = rss_kib(self.pid), fd_count(self.pid)
        except OSError:          # the process is gone (exit under test)
            return
        self.peak_rss = max(self.peak_rss, r)
        self.peak_fds = max(self.peak_fds, n)
        self.samples += 1

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join(5)
        self.sample()

    @property
    def rss_growth_mib(self):
        return (self.peak_rss - self.rss0) / 1024

    @property
    def fd_growth(self):
        return self.peak_fds - self.fds0


def build_name():
    b = os.environ.get("PROXY_BIN", "")
    return "asan" if "build-san" in b else "plain"


def record(attack, **numbers):
    """Appends one line `date build attack key=value...` to limits.txt."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    parts = [time.strftime("%Y-%m-%dT%H:%M:%S"), f"build={build_name()}", f"attack={attack}"]
    for k, v in numbers.items():
        parts.append(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}")
    with open(LIMITS_FILE, "a") as f:
        f.write(" ".join(parts) + "\n")


def legit_echo(port, source="127.0.0.1", timeout=10.0, sandbox=PUB):
    """One legitimate request on a fresh connection from `source`: the runner
    echoes the target, which carries a unique id; returns the latency in
    seconds. Asserts a 200 that carries this request's own id."""
    rid = uuid.uuid4().hex
    t0 = time.monotonic()
    with RawConn(port, timeout=timeout, source=source) as c:
        c.send(request_bytes("GET", f"/legit/{rid}", host(3000, sandbox),
                             [("Connection", "close")]))
        r = c.read_response()
    took = time.monotonic() - t0
    assert r.status == 200, r
    assert r.json()["target"].endswith(f"/legit/{rid}"), r.body[:300]
    return took


def legit_probe(port, n, source="127.0.0.1", timeout=10.0):
    """n legitimate requests in a row; returns the worst latency."""
    return max(legit_echo(port, source, timeout) for _ in range(n))


class LegitLoad:
    """Legitimate requests in a thread (from `source`, one fresh connection
    each, ~20 a second) for the duration of a with block; collects
    latencies and failures. check() asserts every one succeeded in time."""

    def __init__(self, port, source="127.0.0.1", interval=0.05, timeout=10.0):
        self.port, self.source, self.interval, self.timeout = port, source, interval, timeout
        self.latencies = []
        self.errors = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.latencies.append(legit_echo(self.port, self.source, self.timeout))
            except Exception as e:  # noqa: BLE001 -- every failure is reported by check()
                self.errors.append(repr(e))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join(self.timeout + 5)

    @property
    def worst(self):
        return max(self.latencies) if self.latencies else float("nan")

    def check(self, max_latency, min_count=3):
        assert not self.errors, f"legitimate requests failed: {self.errors[:5]}"
        assert len(self.latencies) >= min_count, f"only {len(self.latencies)} legitimate requests"
        assert self.worst < max_latency, \
            f"a legitimate request took {self.worst:.2f}s (bound {max_latency}s)"

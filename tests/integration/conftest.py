"""Fixtures for the preview-proxy integration suite.

Binary under test: --proxy-bin PATH, else env PROXY_BIN, else
build/preview-proxy of this checkout (the sanitizer build runs the same suite with
PROXY_BIN=build-san/preview-proxy).

Run with the Debian interpreter, which has requests/websockets/h2:
    /usr/bin/python3 -m pytest tests/integration
"""
import os
import signal
import subprocess
import sys

import pytest
import requests

sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from helpers import (BASE_DOMAIN, DEAD, DEAD_TOKEN, DIRECT, DIRECT_TOKEN, PRIV,  # noqa: E402
                     PRIV_TOKEN, PUB, PUB_TOKEN, RUNNER_KEY, UUID_SBX, UUID_TOKEN,
                     RawConn, free_port, start_server, stop_proc, wait_until)

REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_BIN = os.path.join(REPO_ROOT, "build", "preview-proxy")

# Things that mean the proxy (or its sanitizer) found a bug in itself.
CRASH_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                 "runtime error:", "ThreadSanitizer", "Segmentation fault")


def pytest_addoption(parser):
    parser.addoption("--proxy-bin", action="store", default=None,
                     help="proxy binary to test (default: $PROXY_BIN or build/preview-proxy)")


@pytest.fixture(scope="session")
def proxy_bin(request):
    path = (request.config.getoption("--proxy-bin") or os.environ.get("PROXY_BIN")
            or DEFAULT_BIN)
    if not os.path.isabs(path):
        path = os.path.join(os.path.dirname(os.path.dirname(HERE)), path)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"proxy binary not found or not executable: {path} (run make, or set PROXY_BIN)")
    return path


# ---------------------------------------------------------------- runner --

class RunnerClient:
    """Talks to runner.py's control endpoints (directly, not via the proxy)."""

    def __init__(self, port):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.url = self.base

    def ctl(self, path, **params):
        r = requests.get(f"{self.base}/__ctl/{path}", params=params, timeout=5)
        r.raise_for_status()
        return r.json()

    def reset(self):
        self.ctl("reset")

    def requests(self):
        return self.ctl("requests")

    def conns(self):
        return self.ctl("conns")

    def signal(self, name):
        self.ctl("signal", name=name)

    def arm_drop_reused(self):
        self.ctl("arm_drop_reused")

    def progress(self, tag):
        return self.ctl("progress", tag=tag)["bytes"]

    def find(self, needle):
        """Recorded requests whose raw target contains needle."""
        return [r for r in self.requests() if needle in r["target"]]

    def wait_for(self, needle, count=1, timeout=5.0):
        return wait_until(lambda: (lambda f: f if len(f) >= count else None)(self.find(needle)),
                          timeout=timeout, what=f"{count} runner request(s) matching {needle!r}")


def start_runner(key=RUNNER_KEY):
    proc, port = start_server("runner.py", "--key", key)
    client = RunnerClient(port)
    wait_until(lambda: _ping(client), timeout=10, what="runner ping")
    return proc, client


def _ping(client):
    try:
        client.ctl("ping")
        return True
    except requests.RequestException:
        return False


@pytest.fixture(scope="session")
def runner_server():
    proc, client = start_runner()
    yield client
    stop_proc(proc)


@pytest.fixture
def runner(runner_server):
    runner_server.reset()
    return runner_server


# ----------------------------------------------------------------- proxy --

def default_sandboxes(runner_port, dead_port):
    r = f"http://127.0.0.1:{runner_port}"
    common = f"runner_key={RUNNER_KEY} org=org1 state=started"
    return [
        f"sandbox {PRIV} runner_url={r} {common} public=0 auth_token={PRIV_TOKEN}",
        f"sandbox {PUB} runner_url={r} {common} public=1 auth_token={PUB_TOKEN}",
        f"sandbox {UUID_SBX} runner_url={r} {common} public=1 auth_token={UUID_TOKEN}",
        # direct mode: the port comes from the Host, so runner_url's port is unused
        f"sandbox {DIRECT} runner_url=http://127.0.0.1:{dead_port} {common} public=1 direct=1 auth_token={DIRECT_TOKEN}",
        f"sandbox {DEAD} runner_url=http://127.0.0.1:{dead_port} {common} public=1 auth_token={DEAD_TOKEN}",
    ]


DEFAULT_SETTINGS = {
    "domains": BASE_DOMAIN,
    "access_log": "stderr",
    "log_level": "info",
    "connect_timeout": "2",
    "response_header_timeout": "10",
    "keepalive_timeout": "70",
    "client_header_timeout": "10",
    "ws_idle_timeout": "3600",
    "upstream_idle_timeout": "30",
    "upstream_keepalive": "32",
    "max_request_line": "8k",
    "max_header_size": "64k",
    "max_headers": "100",
    "shutdown_timeout": "5",
    "toolbox_only": "off",
}


class Proxy:
    def __init__(self, binary, conf_path, stderr_path, port, env):
        self.binary = binary
        self.conf_path = conf_path
        self.stderr_path = stderr_path
        self.port = port
        self.env = env
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None
        self._stderr = None
        self.killed_by_us = False

    # lifecycle
    def start(self, wait=True):
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([self.binary, "-c", self.conf_path], stdin=subprocess.DEVNULL,
                                     stdout=self._stderr, stderr=self._stderr, env=self.env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=10.0, port=None):
        port = port or self.port

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"proxy exited with {self.proc.returncode} during startup:\n"
                                     f"{self.log()}")
            try:
                r = requests.get(f"http://127.0.0.1:{port}/health",
                                 headers={"Host": BASE_DOMAIN}, timeout=1)
                return r.status_code == 200
            except requests.RequestException:
                return False
        wait_until(ready, timeout=timeout, what=f"proxy /health on port {port}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def terminate(self):
        os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self):
        if self.proc is None:
            return None
        crashed = self.proc.poll()
        if crashed is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.killed_by_us = True
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._stderr:
            self._stderr.close()
        return crashed

    def log(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_lines(self):
        return self.log().splitlines()

    # requests
    def request(self, method, path, host=BASE_DOMAIN, headers=None, **kw):
        h = {"Host": host}
        if headers:
            h.update(headers)
        kw.setdefault("timeout", 10)
        kw.setdefault("allow_redirects", False)
        return requests.request(method, self.url + path, headers=h, **kw)

    def get(self, path, host=BASE_DOMAIN, **kw):
        return self.request("GET", path, host=host, **kw)

    def raw(self, timeout=5.0):
        return RawConn(self.port, timeout=timeout)

    def health_ok(self):
        r = self.get("/health")
        return r.status_code == 200 and r.json().get("status") == "ok"


@pytest.fixture(scope="session")
def dead_port():
    return free_port()


@pytest.fixture
def proxy(proxy_bin, runner, tmp_path, dead_port):
    """Factory: proxy(settings={...}, extra=[lines], sandboxes=[lines] | None,
    env={...}, wait=True) -> started Proxy. settings override DEFAULT_SETTINGS
    (value None drops the directive); sandboxes=None means the defaults."""
    started = []
    counter = [0]

    def make(settings=None, extra=(), sandboxes=None, env=None, wait=True, listen=None,
             default_sandboxes_too=True):
        counter[0] += 1
        n = counter[0]
        port = free_port()
        s = dict(DEFAULT_SETTINGS)
        s.update(settings or {})
        lines = ["# generated by tests/integration/conftest.py",
                 f"listen {listen or f'127.0.0.1:{port}'}"]
        for k, v in s.items():
            if v is not None:
                lines.append(f"{k} {v}")
        lines.extend(extra)
        sbx = list(default_sandboxes(runner.port, dead_port)) if default_sandboxes_too else []
        sbx.extend(sandboxes or [])
        lines.extend(sbx)
        conf = tmp_path / f"proxy{n}.conf"
        conf.write_text("\n".join(lines) + "\n")
        e = {k: v for k, v in os.environ.items()
             if k not in ("PROXY_PORT", "TOOLBOX_ONLY_MODE", "SHUTDOWN_TIMEOUT_SEC",
                          "REDIS_HOST", "REDIS_PORT", "DAYTONA_API_URL", "PROXY_API_KEY",
                          "PREVIEW_WARNING_ENABLED", "ENABLE_TLS", "OIDC_CLIENT_ID",
                          "OIDC_DOMAIN", "REDIS_SENTINELS", "REDIS_MASTER_NAME")}
        e.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        e.update(env or {})
        p = Proxy(proxy_bin, str(conf), str(tmp_path / f"proxy{n}.stderr"), port, e)
        started.append(p)
        p.start(wait=wait)
        return p

    yield make

    problems = []
    for p in started:
        crashed = p.stop()
        text = p.log() if os.path.exists(p.stderr_path) else ""
        if crashed is not None and crashed < 0:
            problems.append(f"proxy pid {p.proc.pid} died from signal {-crashed} during the test")
        for marker in CRASH_MARKERS:
            if marker in text:
                idx = text.index(marker)
                problems.append(f"proxy stderr contains {marker!r}:\n{text[max(0, idx - 200):idx + 3000]}")
                break
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def px(proxy):
    """A proxy with the default configuration."""
    return proxy()

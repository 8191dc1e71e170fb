"""Fixtures and helpers for the Redis-backed auth tests (tests/integration/test_auth_*.py).

Each test gets its own redis-server on a free port (no persistence), started by
`redis_server` and killed at teardown. helpers.Resp (a minimal RESP2 client)
talks to it. `rproxy` starts the proxy (through conftest's `proxy` factory) in
standalone Redis mode against that server, without the in-memory default
sandboxes.

Import the fixtures into a test module with
    from redisfix import *  # noqa: F401,F403
Nothing here sleeps to synchronise: waits are bounded polls.
"""
import base64
import hashlib
import hmac
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from helpers import BASE_DOMAIN, RUNNER_KEY, Resp, free_port, redis_ping, stop_proc, wait_until

__all__ = ["Resp", "RedisServer", "redis_server", "rdb", "rproxy", "second_runner",
           "COOKIE_SECRET", "ORG", "mint_cookie", "cookie_mac", "api_key_hash",
           "add_sandbox", "add_api_key", "add_signed_token", "lookup_calls", "cmdstats",
           "poll_latency", "json_error", "SECOND_RUNNER_KEY"]

COOKIE_SECRET = "cookie-secret-S3CRET-5b1d0c7e"
ORG = "org-alpha"
SECOND_RUNNER_KEY = "runner-key-second-S3CRET-e41"
LOOKUP_COMMANDS = ("hgetall", "get", "exists")


# ---------------------------------------------------------------- redis-server --

class RedisServer:
    """A throwaway redis-server; kill() and start() again on the same port."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="auth-redis-")
        self.proc = None
        self._log = None

    def start(self, timeout=10.0):
        self._log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", self.dir,
             "--enable-debug-command", "local"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not redis_ping(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: "
                                   f"{self.log()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("redis-server did not answer PING in time")
            time.sleep(0.02)  # poll interval only; readiness is proven by PONG
        return self

    def kill(self):
        """SIGKILL: the proxy sees its links drop, as on a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            with open(os.path.join(self.dir, "redis.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def client(self):
        return Resp(self.port, errors="replace")

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server():
    srv = RedisServer().start()
    yield srv
    srv.cleanup()


@pytest.fixture
def rdb(redis_server):
    """A RESP connection to the test's redis-server (reconnects if it was restarted)."""
    class Db:
        def __init__(self):
            self.conn = None

        def __call__(self, *args):
            for attempt in range(2):
                try:
                    if self.conn is None:
                        self.conn = redis_server.client()
                    return self.conn(*args)
                except (OSError, ConnectionError):
                    if self.conn is not None:
                        self.conn.close()
                    self.conn = None
                    if attempt:
                        raise

        def close(self):
            if self.conn is not None:
                self.conn.close()
                self.conn = None

    db = Db()
    yield db
    db.close()


# ------------------------------------------------------------------- records --

def api_key_hash(key):
    return hashlib.sha256(key.encode()).hexdigest()


def add_sandbox(db, sid, runner_url, **fields):
    rec = {"runner_url": runner_url, "runner_key": RUNNER_KEY, "public": "0",
           "auth_token": f"tok-{sid}-S3CRET", "org": ORG, "state": "started", "direct": "0"}
    rec.update({k: str(v) for k, v in fields.items()})
    args = []
    for k, v in rec.items():
        args += [k, v]
    db("DEL", f"sandbox:{sid}")
    db("HSET", f"sandbox:{sid}", *args)
    return rec


def add_api_key(db, key, org=ORG, expires=None):
    h = api_key_hash(key)
    args = ["org", org] + (["expires", str(expires)] if expires is not None else [])
    db("HSET", f"proxy:api-key:{h}", *args)
    return h


def add_signed_token(db, port, token, sid, ttl=600):
    db("SET", f"sandbox:signed-preview-url-token:{port}:{token}", sid, "EX", str(ttl))


def cookie_mac(label, sid, exp, secret=COOKIE_SECRET, port=None):
    """mac = base64url_nopad(HMAC-SHA256(secret, "v1|daytona-sandbox-auth-{label}|{id}|{exp}")).
    Since commit 9304fe7 a cookie whose label is not the sandbox ID (one minted
    from a signed preview token) is bound to the token's port: "|port={port}" is
    appended to the message. Pass port for such cookies (default 3000)."""
    msg = f"v1|daytona-sandbox-auth-{label}|{sid}|{exp}"
    if label != sid:
        msg += f"|port={3000 if port is None else port}"
    mac = hmac.new(secret.encode(), msg.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def mint_cookie(label, sid, exp=None, secret=COOKIE_SECRET, port=None):
    """The value of cookie daytona-sandbox-auth-{label} (SPEC 4.5)."""
    exp = int(time.time()) + 3600 if exp is None else exp
    return f"v1.{sid}.{exp}.{cookie_mac(label, sid, exp, secret, port)}"


# ---------------------------------------------------------------- statistics --

def cmdstats(db):
    """{command: calls} from INFO commandstats."""
    text = db("INFO", "commandstats")
    out = {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_"):].partition(":")
            for part in rest.split(","):
                k, _, v = part.partition("=")
                if k == "calls":
                    out[name] = int(v)
    return out


def lookup_calls(db):
    """Calls of the commands the proxy's lookups use (HGETALL, GET, EXISTS)."""
    s = cmdstats(db)
    return {c: s.get(c, 0) for c in LOOKUP_COMMANDS}


def poll_latency(pred, timeout, interval=0.005):
    """Seconds until pred() is first true (bounded); None if it never was."""
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)  # poll interval only


def json_error(resp):
    """The JSON error body of a requests.Response (asserts it is JSON)."""
    ctype = resp.headers.get("Content-Type", "")
    assert "json" in ctype, (resp.status_code, ctype, resp.text[:300])
    return resp.json()


# --------------------------------------------------------------------- proxy --

@pytest.fixture
def rproxy(proxy, redis_server):
    """Factory: rproxy(cache_ttl=3, lookup_rate=None, settings=None, extra=(), env=None)
    -> a started Proxy in standalone Redis mode (no in-memory sandboxes)."""
    def make(cache_ttl=3, lookup_rate=None, settings=None, extra=(), env=None, wait=True):
        s = {"redis": f"127.0.0.1:{redis_server.port}", "cookie_secret": COOKIE_SECRET,
             "cache_ttl": str(cache_ttl), "preview_warning": "off", "domains": BASE_DOMAIN}
        if lookup_rate is not None:
            s["lookup_rate"] = lookup_rate
        s.update(settings or {})
        p = proxy(settings=s, extra=extra, env=env, wait=wait, default_sandboxes_too=False)
        # /health does not need Redis; wait for the subscriber (its SUBSCRIBE
        # flushes the cache) so no test races the initial resync.
        wait_until(lambda: _subscribed(redis_server.port), timeout=10,
                   what="proxy subscribed to proxy:invalidate")
        return p
    return make


def _subscribed(port):
    try:
        with Resp(port, timeout=1) as r:
            res = r("PUBSUB", "NUMSUB", "proxy:invalidate")
            return int(res[1]) >= 1
    except (OSError, ConnectionError, RuntimeError):
        return False


@pytest.fixture
def second_runner():
    """A second runner stand-in, with its own runner key."""
    from conftest import start_runner
    proc, client = start_runner(key=SECOND_RUNNER_KEY)
    yield client
    stop_proc(proc)

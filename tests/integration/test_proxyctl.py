"""Black-box tests of build/proxyctl (SPEC.md sections 0 and 5) against a real redis-server.

Binary under test: env PROXYCTL_BIN, else build/proxyctl of this checkout. Each module run starts
its own redis-server on a free port (and a unix socket); published invalidations are read by
a raw-socket subscriber, and a sentinel message published after each command marks where that
command's messages end, so no test waits for time to pass.

Fixtures here are prefixed pc_ so they cannot collide with conftest.py's.
"""
import base64
import hashlib
import hmac
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from helpers import Resp, free_port, redis_ping

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BIN = os.path.join(REPO_ROOT, "build", "proxyctl")
BIN = os.environ.get("PROXYCTL_BIN", DEFAULT_BIN)
CHANNEL = "proxy:invalidate"


# ---------------------------------------------------------------- redis-server --

class RedisServer:
    def __init__(self, extra=()):
        self.dir = tempfile.mkdtemp(prefix="pc-redis-")
        self.port = free_port()
        self.sock = os.path.join(self.dir, "redis.sock")
        self.log = open(os.path.join(self.dir, "redis.log"), "wb")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--unixsocket", self.sock, "--unixsocketperm", "700", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", self.dir, *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.addr = ("127.0.0.1", self.port)

    def wait_ready(self, probe, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not probe():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING in time")
            time.sleep(0.02)  # poll interval only; readiness is proven by PONG

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# -------------------------------------------------------------------- fixtures --

@pytest.fixture(scope="module")
def pc_bin():
    if not (os.path.isfile(BIN) and os.access(BIN, os.X_OK)):
        pytest.fail(f"proxyctl not found or not executable: {BIN} (run make, or set PROXYCTL_BIN)")
    return BIN


@pytest.fixture(scope="module")
def pc_redis():
    srv = RedisServer()
    try:
        srv.wait_ready(lambda: redis_ping(srv.addr))
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def pc_redis_auth():
    """A second server that needs AUTH: a default password and an ACL user."""
    srv = RedisServer(extra=("--requirepass", "topsecret"))
    try:
        def probe():
            try:
                r = Resp(srv.addr, timeout=0.5)
            except OSError:
                return False
            try:
                return r("AUTH", "topsecret") == "OK"
            except (OSError, RuntimeError, ConnectionError):
                return False
            finally:
                r.close()
        srv.wait_ready(probe)
        r = Resp(srv.addr)
        r("AUTH", "topsecret")
        assert r("ACL", "SETUSER", "alice", "on", ">alicepw", "~*", "&*", "+@all") == "OK"
        r.close()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def pc_db(pc_redis):
    r = Resp(pc_redis.addr)
    yield r
    r.close()


class Subscriber:
    """SUBSCRIBEd to proxy:invalidate before the command runs, so nothing can be missed."""

    def __init__(self, addr):
        self.conn = Resp(addr)
        assert self.conn("SUBSCRIBE", CHANNEL) == ["subscribe", CHANNEL, 1]
        self.pub = Resp(addr)
        self.n = 0

    def messages(self):
        """Messages published since the last call, in order (ended by our own sentinel)."""
        self.n += 1
        sentinel = f"pc-sentinel-{self.n}"
        self.pub("PUBLISH", CHANNEL, sentinel)
        got = []
        while True:
            kind, chan, msg = self.conn.read()
            assert kind == "message" and chan == CHANNEL
            if msg == sentinel:
                return got
            got.append(msg)

    def close(self):
        self.conn.close()
        self.pub.close()


@pytest.fixture
def pc_sub(pc_redis):
    s = Subscriber(pc_redis.addr)
    yield s
    s.close()


@pytest.fixture
def pc_ctl(pc_bin, pc_redis):
    """Runs proxyctl against pc_redis; returns the CompletedProcess."""
    def run(*args, redis=None, env=None):
        target = redis or f"127.0.0.1:{pc_redis.port}"
        cmd = [pc_bin] + (["--redis", target] if target != "-" else []) + list(args)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
        full_env.update(env or {})
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=full_env)
    return run


_ids = iter(range(1, 1_000_000))


def new_id(prefix="pcsb"):
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


def add_sandbox(pc_ctl, sid, *extra):
    p = pc_ctl("sandbox", "add", sid, "--runner-url", "http://127.0.0.1:9/", "--runner-key",
               "rk-1", *extra)
    assert p.returncode == 0, p.stderr
    return p


def hgetall(db, key):
    flat = db("HGETALL", key)
    return dict(zip(flat[::2], flat[1::2]))


# -------------------------------------------------------------- help and usage --

VERBS = [("sandbox", "add"), ("sandbox", "set"), ("sandbox", "rm"), ("sandbox", "show"),
         ("token", "rotate"), ("signed-url", "create"), ("signed-url", "revoke"),
         ("file-url", "create"), ("signing-key", "rotate"),
         ("api-key", "create"), ("api-key", "rm"), ("domain", "add"), ("domain", "rm"),
         ("invalidate", "all")]


@pytest.mark.parametrize("args", [["--help"], ["sandbox", "--help"]] +
                         [[n, v, "--help"] for n, v in VERBS], ids=" ".join)
def test_help_exits_0_with_usage_on_stdout(pc_bin, args):
    # No Redis is needed (or contacted) for help: point at a closed port.
    p = subprocess.run([pc_bin, "--redis", "127.0.0.1:1", *args], capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: proxyctl")
    if len(args) == 3:
        assert f"{args[0]} {args[1]}" in p.stdout
    assert p.stderr == ""


BAD = [
    [],
    ["frobnicate", "x"],
    ["sandbox"],
    ["sandbox", "frob", "x"],
    ["--db", "x", "invalidate", "all"],
    ["--redis", "nohostport", "invalidate", "all"],
    ["--redis", "127.0.0.1:0", "invalidate", "all"],
    ["--user", "u", "invalidate", "all"],
    ["sandbox", "add"],
    ["sandbox", "add", "sb1"],
    ["sandbox", "add", "sb1", "--runner-url", "http://x"],
    ["sandbox", "add", "sb1", "--runner-key", "k"],
    ["sandbox", "add", "bad.id", "--runner-url", "http://x", "--runner-key", "k"],
    ["sandbox", "add", "x" * 129, "--runner-url", "http://x", "--runner-key", "k"],
    ["sandbox", "add", "sb1", "--runner-url", "ftp://x", "--runner-key", "k"],
    ["sandbox", "add", "sb1", "--runner-url", "http://x", "--runner-key", "k", "--wake", "ssh"],
    ["sandbox", "add", "sb1", "--runner-url", "http://x", "--runner-key", "k", "--warning", "2"],
    ["sandbox", "add", "sb1", "--runner-url", "http://x", "--runner-key", "k", "--bogus"],
    ["sandbox", "add", "sb1", "--runner-url", "http://x", "--runner-key", "k", "extra"],
    ["sandbox", "add", "sb1", "--runner-url", "http://x", "--runner-key", "k", "--auth-token",
     "has space"],
    ["sandbox", "add", "sb1", "--runner-url"],
    ["sandbox", "set", "sb1"],
    ["sandbox", "set", "sb1", "bogus=1"],
    ["sandbox", "set", "sb1", "public"],
    ["sandbox", "set", "sb1", "public=yes"],
    ["sandbox", "set", "sb1", "state="],
    ["sandbox", "rm"],
    ["sandbox", "rm", "a", "b"],
    ["sandbox", "show", "bad/id"],
    ["token", "rotate"],
    ["token", "rotate", "bad id"],
    ["signed-url", "create", "sb1", "3000"],
    ["signed-url", "create", "sb1", "--expires", "60"],
    ["signed-url", "create", "sb1", "0", "--expires", "60"],
    ["signed-url", "create", "sb1", "03000", "--expires", "60"],
    ["signed-url", "create", "sb1", "65536", "--expires", "60"],
    ["signed-url", "create", "sb1", "+3000", "--expires", "60"],
    ["signed-url", "create", "sb1", "3000", "--expires", "0"],
    ["signed-url", "create", "sb1", "3000", "--expires", "-5"],
    ["signed-url", "create", "sb1", "3000", "--expires", "1.5"],
    ["signed-url", "create", "sb1", "3000", "--expires", "60", "--scheme", "ftp"],
    ["signed-url", "create", "sb1", "3000", "--expires", "60", "--listen-port", "70000"],
    ["signed-url", "create", "sb1", "3000", "--expires", "60", "--domain", "a..b"],
    ["signed-url", "revoke", "3000"],
    ["signed-url", "revoke", "x", "tok"],
    ["signed-url", "revoke", "3000", "tok.en"],
    ["file-url", "create", "sb1", "/a"],
    ["file-url", "create", "sb1", "--expires", "60"],
    ["file-url", "create", "sb1", "", "--expires", "60"],
    ["file-url", "create", "bad.id", "/a", "--expires", "60"],
    ["file-url", "create", "sb1", "/a", "--expires", "-5"],
    ["file-url", "create", "sb1", "/a", "--expires", "1.5"],
    ["file-url", "create", "sb1", "/a", "--expires", "60", "--method", "HEAD"],
    ["file-url", "create", "sb1", "/a", "--expires", "60", "--method", "get"],
    ["file-url", "create", "sb1", "/a", "--expires", "60", "--scheme", "ftp"],
    ["file-url", "create", "sb1", "/a", "--expires", "60", "--domain", "a..b"],
    ["file-url", "create", "sb1", "/a", "b", "--expires", "60"],
    ["signing-key", "rotate"],
    ["signing-key", "rotate", "bad id"],
    ["api-key", "create"],
    ["api-key", "create", "--org", "o", "--expires", "soon"],
    ["api-key", "create", "--org", "o", "extra"],
    ["api-key", "rm"],
    ["domain", "add", "example.com", "sb1"],
    ["domain", "add", "bad_host.com", "sb1", "80"],
    ["domain", "add", "example.com", "sb1", "080"],
    ["domain", "rm"],
    ["invalidate", "all", "now"],
    ["invalidate", "some"],
]


@pytest.mark.parametrize("args", BAD, ids=lambda a: " ".join(a)[:60] or "(none)")
def test_bad_arguments_exit_2_with_usage_on_stderr(pc_bin, args):
    # Validation happens before connecting: a closed port still gives 2, not 1.
    p = subprocess.run([pc_bin, "--redis", "127.0.0.1:1", *args], capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "usage: proxyctl" in p.stderr
    assert p.stdout == ""


def test_bad_secret_is_not_echoed(pc_bin):
    p = subprocess.run([pc_bin, "sandbox", "add", "sb1", "--runner-url", "http://x",
                        "--runner-key", "my secret key"], capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 2
    assert "my secret key" not in p.stderr


def test_redis_unreachable_exits_1(pc_ctl):
    p = pc_ctl("invalidate", "all", redis=f"127.0.0.1:{free_port()}")
    assert p.returncode == 1
    assert p.stderr.startswith("proxyctl: ") and "usage" not in p.stderr


# --------------------------------------------------------------------- sandbox --

def test_sandbox_add_generates_token(pc_ctl, pc_db, pc_sub):
    sid = new_id()
    p = add_sandbox(pc_ctl, sid)
    m = re.fullmatch(r"auth_token: ([0-9a-f]{32})\n", p.stdout)
    assert m, p.stdout
    assert hgetall(pc_db, f"sandbox:{sid}") == {
        "runner_url": "http://127.0.0.1:9/", "runner_key": "rk-1", "public": "0",
        "direct": "0", "auth_token": m.group(1)}
    assert pc_db("TTL", f"sandbox:{sid}") == -1
    assert pc_sub.messages() == [f"sandbox:{sid}"]


def test_sandbox_add_all_fields(pc_ctl, pc_db, pc_sub):
    sid = new_id()
    p = add_sandbox(pc_ctl, sid, "--public", "--auth-token", "tok-123", "--org", "org1",
                    "--state", "stopped", "--wake", "http", "--direct", "--warning", "0",
                    "--signing-key", "sk-9")
    assert p.stdout == ""  # the admin chose the token; nothing secret to print
    assert hgetall(pc_db, f"sandbox:{sid}") == {
        "runner_url": "http://127.0.0.1:9/", "runner_key": "rk-1", "public": "1",
        "direct": "1", "auth_token": "tok-123", "org": "org1", "state": "stopped",
        "wake": "http", "warning": "0", "signing_key": "sk-9"}
    assert pc_sub.messages() == [f"sandbox:{sid}"]


def test_sandbox_add_again_replaces_the_record(pc_ctl, pc_db):
    sid = new_id()
    add_sandbox(pc_ctl, sid, "--public", "--org", "org1", "--auth-token", "t1")
    add_sandbox(pc_ctl, sid, "--auth-token", "t2")
    assert hgetall(pc_db, f"sandbox:{sid}") == {
        "runner_url": "http://127.0.0.1:9/", "runner_key": "rk-1", "public": "0",
        "direct": "0", "auth_token": "t2"}


def test_sandbox_generated_tokens_differ(pc_ctl):
    tokens = {add_sandbox(pc_ctl, new_id()).stdout for _ in range(5)}
    assert len(tokens) == 5


def test_sandbox_set(pc_ctl, pc_db, pc_sub):
    sid = new_id()
    add_sandbox(pc_ctl, sid, "--auth-token", "t1")
    pc_sub.messages()
    p = pc_ctl("sandbox", "set", sid, "state=stopped", "wake=http", "public=1",
               "runner_url=https://r.example/x=y")
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    h = hgetall(pc_db, f"sandbox:{sid}")
    assert (h["state"], h["wake"], h["public"], h["runner_url"], h["auth_token"]) == \
        ("stopped", "http", "1", "https://r.example/x=y", "t1")
    assert pc_sub.messages() == [f"sandbox:{sid}"]

    p = pc_ctl("sandbox", "set", sid, "state=started", "colour=blue")
    assert p.returncode == 2 and "colour" in p.stderr and "usage:" in p.stderr
    assert pc_db("HGET", f"sandbox:{sid}", "state") == "stopped"  # nothing half-applied
    assert pc_sub.messages() == []


def test_sandbox_set_missing_sandbox_creates_nothing(pc_ctl, pc_db, pc_sub):
    sid = new_id()
    p = pc_ctl("sandbox", "set", sid, "state=started")
    assert p.returncode == 1 and "no such sandbox" in p.stderr
    assert pc_db("EXISTS", f"sandbox:{sid}") == 0
    assert pc_sub.messages() == []


def test_sandbox_show(pc_ctl):
    sid = new_id()
    add_sandbox(pc_ctl, sid, "--auth-token", "t1", "--org", "o1", "--wake", "none")
    p = pc_ctl("sandbox", "show", sid)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert sorted(lines) == sorted(["runner_url: http://127.0.0.1:9/", "runner_key: rk-1",
                                    "public: 0", "direct: 0", "auth_token: t1", "org: o1",
                                    "wake: none"])

    p = pc_ctl("sandbox", "show", new_id())
    assert p.returncode == 1 and "no such sandbox" in p.stderr and p.stdout == ""


def test_sandbox_rm(pc_ctl, pc_db, pc_sub):
    sid = new_id()
    add_sandbox(pc_ctl, sid)
    pc_sub.messages()
    p = pc_ctl("sandbox", "rm", sid)
    assert p.returncode == 0, p.stderr
    assert pc_db("EXISTS", f"sandbox:{sid}") == 0
    assert pc_sub.messages() == [f"sandbox:{sid}"]
    p = pc_ctl("sandbox", "rm", sid)
    assert p.returncode == 1 and "no such sandbox" in p.stderr


def test_token_rotate(pc_ctl, pc_db, pc_sub):
    sid = new_id()
    add_sandbox(pc_ctl, sid, "--auth-token", "old-token", "--org", "o1")
    pc_sub.messages()
    p = pc_ctl("token", "rotate", sid)
    assert p.returncode == 0, p.stderr
    m = re.fullmatch(r"auth_token: ([0-9a-f]{32})\n", p.stdout)
    assert m, p.stdout
    h = hgetall(pc_db, f"sandbox:{sid}")
    assert h["auth_token"] == m.group(1) and h["org"] == "o1"
    assert pc_sub.messages() == [f"sandbox:{sid}"]


def test_token_rotate_missing_sandbox(pc_ctl, pc_db, pc_sub):
    sid = new_id()
    p = pc_ctl("token", "rotate", sid)
    assert p.returncode == 1 and "no such sandbox" in p.stderr and p.stdout == ""
    assert pc_db("EXISTS", f"sandbox:{sid}") == 0  # not resurrected as a bare token hash
    assert pc_sub.messages() == []


# -------------------------------------------------------------------- file URLs --

def file_sig(key, method, path, expires):
    mac = hmac.new(key.encode(), f"v1:files:{method}:{path}:{expires}".encode(),
                   hashlib.sha256).digest()
    return "v1_" + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def test_file_url_create_download_never_expires(pc_ctl, pc_sub):
    sid = new_id()
    add_sandbox(pc_ctl, sid, "--signing-key", "testsigningkey1234567890abcdefgh")
    pc_sub.messages()
    p = pc_ctl("file-url", "create", sid, "/home/user/report.pdf", "--expires", "0")
    assert p.returncode == 0, p.stderr
    # DAYTONA-API.md §7's second test vector; GET is the default method
    assert p.stdout == (f"url: http://proxy.localhost/toolbox/{sid}/files/download"
                        "?path=/home/user/report.pdf&expires=0"
                        "&signature=v1_lpj67Q-1iHxBviass5MZhGs36X80uk3DgCaRjjmyPrk\n"
                        "expires: 0\n")
    assert pc_sub.messages() == []                  # nothing was written


def test_file_url_create_upload_with_options(pc_ctl):
    sid = new_id()
    add_sandbox(pc_ctl, sid, "--signing-key", "sk-S3CRET-42")
    path = "/tmp/in coming/ä&b=c.bin"
    t0 = int(time.time())
    p = pc_ctl("file-url", "create", sid, path, "--method", "POST", "--expires", "600",
               "--domain", "Proxy.Example", "--scheme", "https", "--listen-port", "8443")
    t1 = int(time.time())
    assert p.returncode == 0, p.stderr
    m = re.fullmatch(r"url: https://proxy\.example:8443/toolbox/([^/]+)/files/upload-v2"
                     r"\?path=([^&]+)&expires=(\d+)&signature=(v1_[A-Za-z0-9_-]{43})\n"
                     r"expires: (\d+)\n", p.stdout)
    assert m, p.stdout
    assert m.group(1) == sid and m.group(3) == m.group(5)
    assert m.group(2) == "/tmp/in%20coming/%C3%A4%26b%3Dc.bin"
    exp = int(m.group(3))
    assert t0 + 600 <= exp <= t1 + 600
    assert m.group(4) == file_sig("sk-S3CRET-42", "POST", path, exp)
    assert "sk-S3CRET-42" not in p.stdout + p.stderr


def test_file_url_create_needs_a_signing_key(pc_ctl):
    sid = new_id()
    add_sandbox(pc_ctl, sid)
    p = pc_ctl("file-url", "create", sid, "/a", "--expires", "60")
    assert p.returncode == 1 and "no signing_key" in p.stderr and p.stdout == "", p.stderr
    p = pc_ctl("file-url", "create", new_id(), "/a", "--expires", "60")
    assert p.returncode == 1 and "no such sandbox" in p.stderr and p.stdout == "", p.stderr


def test_signing_key_rotate(pc_ctl, pc_db, pc_sub):
    sid = new_id()
    add_sandbox(pc_ctl, sid, "--signing-key", "old-key", "--org", "o1")
    pc_sub.messages()
    p = pc_ctl("signing-key", "rotate", sid)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""                           # file-url create reads it from Redis
    h = hgetall(pc_db, f"sandbox:{sid}")
    assert re.fullmatch(r"[a-z0-9]{32}", h["signing_key"]) and h["org"] == "o1"
    assert pc_sub.messages() == [f"sandbox:{sid}"]
    p = pc_ctl("signing-key", "rotate", new_id())
    assert p.returncode == 1 and "no such sandbox" in p.stderr


# ------------------------------------------------------------------ signed URLs --

def test_signed_url_create_defaults(pc_ctl, pc_db, pc_sub):
    sid = new_id()
    add_sandbox(pc_ctl, sid)
    pc_sub.messages()
    p = pc_ctl("signed-url", "create", sid, "3000", "--expires", "120")
    assert p.returncode == 0, p.stderr
    m = re.fullmatch(r"url: http://3000-([a-z0-9]{16})\.proxy\.localhost/\n"
                     r"token: ([a-z0-9]{16})\n", p.stdout)
    assert m and m.group(1) == m.group(2), p.stdout
    tok = m.group(1)
    key = f"sandbox:signed-preview-url-token:3000:{tok}"
    assert pc_db("GET", key) == sid
    assert 110 <= pc_db("TTL", key) <= 120
    assert pc_sub.messages() == [f"token:3000:{tok}"]


def test_signed_url_create_options(pc_ctl, pc_db):
    sid = new_id()
    add_sandbox(pc_ctl, sid)
    p = pc_ctl("signed-url", "create", sid, "8080", "--expires", "5", "--domain", "Preview.Test",
               "--scheme", "https", "--listen-port", "4443")
    assert p.returncode == 0, p.stderr
    m = re.fullmatch(r"url: https://8080-([a-z0-9]{16})\.preview\.test:4443/\ntoken: \1\n",
                     p.stdout)
    assert m, p.stdout
    key = f"sandbox:signed-preview-url-token:8080:{m.group(1)}"
    assert pc_db("GET", key) == sid and 1 <= pc_db("TTL", key) <= 5


def test_signed_url_tokens_are_random(pc_ctl):
    sid = new_id()
    add_sandbox(pc_ctl, sid)
    toks = []
    for _ in range(20):
        p = pc_ctl("signed-url", "create", sid, "1", "--expires", "60")
        assert p.returncode == 0, p.stderr
        toks.append(p.stdout.split("token: ")[1].strip())
    assert len(set(toks)) == len(toks)
    chars = "".join(toks)
    assert set(chars) <= set("abcdefghijklmnopqrstuvwxyz0123456789")
    # 320 draws over 36 symbols: both letters and digits show up unless the sampler is broken.
    assert any(ch.isdigit() for ch in chars) and any(ch.isalpha() for ch in chars)


def test_signed_url_create_missing_sandbox(pc_ctl, pc_db, pc_sub):
    sid = new_id()
    p = pc_ctl("signed-url", "create", sid, "3000", "--expires", "60")
    assert p.returncode == 1 and "no such sandbox" in p.stderr and p.stdout == ""
    assert pc_sub.messages() == []
    for key in pc_db("KEYS", "sandbox:signed-preview-url-token:*"):
        assert pc_db("GET", key) != sid


def test_signed_url_revoke(pc_ctl, pc_db, pc_sub):
    sid = new_id()
    add_sandbox(pc_ctl, sid)
    p = pc_ctl("signed-url", "create", sid, "3000", "--expires", "600")
    tok = p.stdout.split("token: ")[1].strip()
    pc_sub.messages()
    p = pc_ctl("signed-url", "revoke", "3000", tok)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    assert pc_db("EXISTS", f"sandbox:signed-preview-url-token:3000:{tok}") == 0
    assert pc_db("GET", f"sandbox:signed-preview-url-revoked:{tok}") == "1"
    assert 3590 <= pc_db("TTL", f"sandbox:signed-preview-url-revoked:{tok}") <= 3600
    assert pc_sub.messages() == [f"token:3000:{tok}"]


def test_signed_url_revoke_expired_token_still_marks_it(pc_ctl, pc_db, pc_sub):
    # Cookies minted from a token outlive it, so revoking a gone token still matters.
    p = pc_ctl("signed-url", "revoke", "5173", "gonetoken123")
    assert p.returncode == 0, p.stderr
    assert pc_db("GET", "sandbox:signed-preview-url-revoked:gonetoken123") == "1"
    assert pc_sub.messages() == ["token:5173:gonetoken123"]


# --------------------------------------------------------------------- API keys --

def test_api_key_create(pc_ctl, pc_db, pc_sub):
    p = pc_ctl("api-key", "create", "--org", "org-a")
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(r"pxk_[0-9a-f]{40}\n", p.stdout), p.stdout
    apikey = p.stdout.strip()
    key = "proxy:api-key:" + hashlib.sha256(apikey.encode()).hexdigest()
    assert hgetall(pc_db, key) == {"org": "org-a"}
    assert pc_db("TTL", key) == -1
    assert pc_sub.messages() == ["*"]
    # Only the hash is stored: the key itself appears in no key name and no value.
    for k in pc_db("KEYS", "*"):
        assert apikey not in k
        if pc_db("TYPE", k) == "hash":
            assert apikey not in pc_db("HGETALL", k)
        elif pc_db("TYPE", k) == "string":
            assert pc_db("GET", k) != apikey


def test_api_key_create_with_expiry(pc_ctl, pc_db):
    before = int(time.time())
    p = pc_ctl("api-key", "create", "--org", "org-b", "--expires", "3600")
    after = int(time.time())
    assert p.returncode == 0, p.stderr
    key = "proxy:api-key:" + hashlib.sha256(p.stdout.strip().encode()).hexdigest()
    h = hgetall(pc_db, key)
    assert h["org"] == "org-b"
    assert before + 3600 <= int(h["expires"]) <= after + 3600
    assert 0 < pc_db("TTL", key) <= 3600


def test_api_keys_differ(pc_ctl):
    keys = {pc_ctl("api-key", "create", "--org", "o").stdout for _ in range(5)}
    assert len(keys) == 5


def test_api_key_rm(pc_ctl, pc_db, pc_sub):
    apikey = pc_ctl("api-key", "create", "--org", "org-c").stdout.strip()
    key = "proxy:api-key:" + hashlib.sha256(apikey.encode()).hexdigest()
    assert pc_db("EXISTS", key) == 1
    pc_sub.messages()
    p = pc_ctl("api-key", "rm", apikey)
    assert p.returncode == 0, p.stderr
    assert pc_db("EXISTS", key) == 0
    assert pc_sub.messages() == ["*"]
    p = pc_ctl("api-key", "rm", apikey)
    assert p.returncode == 1 and apikey not in p.stderr


# ---------------------------------------------------------------------- domains --

def test_domain_add_and_rm(pc_ctl, pc_db, pc_sub):
    sid = new_id()
    host = f"App-{os.getpid()}.Example.COM"
    p = pc_ctl("domain", "add", host, sid, "3000")
    assert p.returncode == 0, p.stderr
    key = f"proxy:custom-domain:{host.lower()}"
    assert hgetall(pc_db, key) == {"sandbox": sid, "port": "3000"}
    assert pc_db("EXISTS", f"proxy:custom-domain:{host}") == 0
    assert pc_sub.messages() == [f"domain:{host.lower()}"]

    p = pc_ctl("domain", "add", host.lower(), sid, "8080")
    assert p.returncode == 0, p.stderr
    assert hgetall(pc_db, key) == {"sandbox": sid, "port": "8080"}
    pc_sub.messages()

    p = pc_ctl("domain", "rm", host.upper())
    assert p.returncode == 0, p.stderr
    assert pc_db("EXISTS", key) == 0
    assert pc_sub.messages() == [f"domain:{host.lower()}"]
    p = pc_ctl("domain", "rm", host)
    assert p.returncode == 1 and "no such domain" in p.stderr


def test_invalidate_all(pc_ctl, pc_sub):
    p = pc_ctl("invalidate", "all")
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    assert pc_sub.messages() == ["*"]


# ------------------------------------------------------- atomicity, connections --

def test_changes_are_one_transaction(pc_ctl, pc_redis):
    """MONITOR shows each change as MULTI ... PUBLISH ... EXEC."""
    sid = new_id()
    mon = Resp(pc_redis.addr)
    assert mon("MONITOR") == "OK"
    try:
        add_sandbox(pc_ctl, sid, "--auth-token", "t1")
        assert pc_ctl("signed-url", "revoke", "3000", "abc").returncode == 0
        ctl = Resp(pc_redis.addr)
        ctl("ECHO", "pc-monitor-end")
        ctl.close()
        cmds = []
        while True:
            line = mon.read()
            words = re.findall(r'"((?:[^"\\]|\\.)*)"', line)
            if words[:2] == ["ECHO", "pc-monitor-end"]:
                break
            cmds.append(words)
    finally:
        mon.close()
    names = [w[0].upper() for w in cmds if w[0].upper() not in ("AUTH", "SELECT", "PING")]
    assert names == ["MULTI", "DEL", "HSET", "PUBLISH", "EXEC",
                     "MULTI", "DEL", "SET", "PUBLISH", "EXEC"], cmds


def test_unix_socket_env_and_db(pc_ctl, pc_redis):
    sid = new_id()
    p = pc_ctl("--db", "3", "sandbox", "add", sid, "--runner-url", "http://r/",
               "--runner-key", "k", redis=pc_redis.sock)
    assert p.returncode == 0, p.stderr
    r = Resp(pc_redis.addr)
    try:
        assert r("EXISTS", f"sandbox:{sid}") == 0
        r("SELECT", "3")
        assert r("HGET", f"sandbox:{sid}", "runner_key") == "k"
    finally:
        r.close()
    # Defaults come from REDIS_HOST/REDIS_PORT when --redis is absent.
    p = pc_ctl("--db", "3", "sandbox", "show", sid, redis="-",
               env={"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(pc_redis.port)})
    assert p.returncode == 0, p.stderr
    assert "runner_key: k" in p.stdout


def test_auth_password_and_acl_user(pc_ctl, pc_redis_auth):
    target = f"127.0.0.1:{pc_redis_auth.port}"
    p = pc_ctl("invalidate", "all", redis=target)
    assert p.returncode == 1 and "NOAUTH" in p.stderr
    assert pc_ctl("--password", "topsecret", "invalidate", "all", redis=target).returncode == 0
    assert pc_ctl("--user", "alice", "--password", "alicepw", "invalidate", "all",
                  redis=target).returncode == 0
    p = pc_ctl("--user", "alice", "--password", "wrong", "invalidate", "all", redis=target)
    assert p.returncode == 1 and "wrong" not in p.stderr
    p = pc_ctl("invalidate", "all", redis="-",
               env={"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(pc_redis_auth.port),
                    "REDIS_USERNAME": "alice", "REDIS_PASSWORD": "alicepw"})
    assert p.returncode == 0, p.stderr

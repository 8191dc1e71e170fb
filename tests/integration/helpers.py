"""Shared helpers for the integration suite: constants for the default
sandboxes, a byte-exact raw HTTP/1.1 client, a minimal RESP2 (Redis) client,
polling utilities, and starting/stopping the helper servers in servers/.

Standard library only: servers/site.py imports it too.

Everything talks to 127.0.0.1 only. Nothing here sleeps to synchronise: waits
are polls with a bounded deadline.
"""
import hashlib
import json
import os
import random
import select
import socket
import struct
import subprocess
import tempfile
import time

BASE_DOMAIN = "proxy.test"
RUNNER_KEY = "runner-key-7f3a9c"

# Default in-memory store records (see conftest.default_sandboxes).
PRIV = "sbxpriv"              # public=0
PRIV_TOKEN = "tok-priv-S3CRET-9d2e"
PUB = "sbxpub"                # public=1
PUB_TOKEN = "tok-pub-S3CRET-41aa"
UUID_SBX = "4f1c0e2a-9c1d-4e55-b0a4-0c8d7e1f2a3b"   # public=1, id contains '-'
UUID_TOKEN = "tok-uuid-S3CRET-77"
DIRECT = "sbxdirect"          # public=1 direct=1
DIRECT_TOKEN = "tok-direct-S3CRET-1"
DEAD = "sbxdead"              # public=1, runner_url points at a closed port
DEAD_TOKEN = "tok-dead-S3CRET-2"

RESERVED_PORTS = (22222, 2280, 33333)

PYTHON = "/usr/bin/python3"
SERVERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "servers")


def host(port, label, domain=BASE_DOMAIN):
    return f"{port}-{label}.{domain}"


def runner_prefix(sandbox, port):
    return f"/sandboxes/{sandbox}/toolbox/proxy/{port}"


def pattern_bytes(n, seed=1):
    """The deterministic download pattern; runner.py uses the same function."""
    return random.Random(seed).randbytes(n)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def accept_target(status, body):
    """The URL the accept endpoint's answer moves on to: SPEC 6 as decided by
    issue 10 item 6 (200 with a meta refresh, never a 302, so CSP form-action
    does not cover the next hops). Asserts the shape; returns the URL."""
    import html
    import re
    text = body.decode() if isinstance(body, (bytes, bytearray)) else body
    assert status == 200, (status, text[:300])
    m = re.search(r'<meta http-equiv="refresh" content="0;url=([^"]*)">', text)
    assert m, text[:300]
    return html.unescape(m.group(1))


def wait_until(pred, timeout=5.0, interval=0.02, what="condition"):
    """Poll pred() until it returns a truthy value; return that value.
    Raises AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last={last!r})")
        time.sleep(interval)  # poll interval only, never used as proof of ordering


def port_is_listening(port, timeout=0.2):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


_HANDED_OUT = set()


def free_port():
    """A port nothing listens on now, and never one this process handed out
    before: two ports picked before either is bound (a listener and its metrics
    listener) must differ, or SO_REUSEPORT lets both bind it."""
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _HANDED_OUT and port not in RESERVED_PORTS:
            _HANDED_OUT.add(port)
            return port


class Response:
    def __init__(self, status, reason, version, headers, body, trailers, raw_head):
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers          # list of (name, value) in wire order
        self.body = body
        self.trailers = trailers        # list of (name, value)
        self.raw_head = raw_head

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers!r} body={self.body[:200]!r}>"


class ConnectionClosed(Exception):
    """The peer closed (or reset) the connection before a complete response."""


class SockConn:
    """Base of the socket clients: self.sock, closed by close() or a with block."""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


class RawConn(SockConn):
    """A byte-exact HTTP/1.1 client over one TCP connection."""

    def __init__(self, port, timeout=5.0, source=None):
        """source: a local address to connect from (127.0.0.2 is another client)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.settimeout(timeout)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _fill(self):
        try:
            chunk = self.sock.recv(262144)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise ConnectionClosed(f"connection closed; buffered={self.buf[:200]!r}")
        self.buf += chunk

    def read_until(self, sep):
        while sep not in self.buf:
            self._fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_some(self):
        """Whatever is buffered, or the next recv."""
        if not self.buf:
            self._fill()
        out, self.buf = self.buf, b""
        return out

    def read_to_close(self):
        out = self.buf
        self.buf = b""
        while True:
            try:
                chunk = self.sock.recv(262144)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out

    def read_head(self):
        head = self.read_until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
        return int(code), reason.decode("latin-1"), version.decode("latin-1"), headers, head

    def read_chunked(self):
        body = bytearray()
        while True:
            line = self.read_until(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            body += self.read_exact(size)
            if self.read_exact(2) != b"\r\n":
                raise AssertionError("bad chunk terminator from proxy")
        trailers = []
        while True:
            line = self.read_until(b"\r\n")
            if line == b"\r\n":
                break
            k, _, v = line[:-2].partition(b":")
            trailers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
        return bytes(body), trailers

    def read_response(self, head_request=False, keep_interim=False):
        """Read one response. 1xx interim responses are skipped (unless
        keep_interim) except 101."""
        while True:
            status, reason, version, headers, raw = self.read_head()
            if 100 <= status < 200 and status != 101 and not keep_interim:
                continue
            break
        r = Response(status, reason, version, headers, b"", [], raw)
        if head_request or status in (204, 304) or 100 <= status < 200:
            return r
        te = (r.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            r.body, r.trailers = self.read_chunked()
        elif r.header("content-length") is not None:
            r.body = self.read_exact(int(r.header("content-length")))
        else:
            r.body = self.read_to_close()
        return r

    def is_closed(self, timeout=5.0):
        """True if the peer closes the connection within timeout (any bytes
        that arrive first are kept in self.buf)."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        return False


def raw_exchange(port, data, timeout=5.0, head_request=False):
    """Send data on a fresh connection, return the first response or None if
    the proxy closed/reset the connection without a (complete) response."""
    with RawConn(port, timeout=timeout) as c:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            return c.read_response(head_request=head_request)
        except ConnectionClosed:
            return None


def request_bytes(method, target, host_header, headers=(), body=b"", version="HTTP/1.1"):
    lines = [f"{method} {target} {version}"]
    if host_header is not None:
        lines.append(f"Host: {host_header}")
    for k, v in headers:
        lines.append(f"{k}: {v}")
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body, size=4096, trailers=()):
    out = bytearray()
    for i in range(0, len(body), size):
        part = body[i:i + size]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    out += b"0\r\n"
    for k, v in trailers:
        out += f"{k}: {v}\r\n".encode()
    out += b"\r\n"
    return bytes(out)


def ws_frame(opcode, payload, fin=True, mask=True):
    """One WebSocket frame (RFC 6455), masked with a random key unless mask=False."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    # XOR via int arithmetic: fast enough for the sizes used here
    m = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big") if n else b""
    return head + key + masked


# ------------------------------------------------------------ RESP client --

class Resp(SockConn):
    """A minimal RESP2 client over one connection. addr: a TCP port on 127.0.0.1,
    a (host, port) pair, or the path of a unix socket. Bulk strings are decoded
    as UTF-8 with the given errors policy."""

    def __init__(self, addr, timeout=5.0, errors="strict"):
        if isinstance(addr, int):
            addr = ("127.0.0.1", addr)
        family = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(addr)
        except OSError:
            self.sock.close()
            raise
        self.errors = errors
        self.buf = b""

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode("utf-8", self.errors)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ValueError(f"bad RESP line {line!r}")

    def __call__(self, *args):
        self.send(*args)
        return self.read()


def redis_ping(addr, timeout=0.5):
    """True if a Redis server at addr (as for Resp) answers PING with PONG."""
    try:
        with Resp(addr, timeout=timeout) as r:
            return r("PING") == "PONG"
    except (OSError, RuntimeError, ConnectionError, ValueError):
        return False


# --------------------------------------------------------- helper servers --

def popen_with_log(args):
    """Starts a helper server: stdout is a pipe (for its PORT line), stderr goes
    to a file. A stderr pipe that nobody reads fills up after enough log lines and
    then blocks the server (that is how the ws_echo server stalled a test)."""
    log = tempfile.NamedTemporaryFile(prefix="helper-", suffix=".log", delete=False)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
    log.close()
    proc.log_path = log.name
    return proc


def helper_log(proc):
    try:
        with open(proc.log_path, "rb") as f:
            return f.read()[-4000:]
    except (AttributeError, OSError):
        return b""


def read_line(proc, timeout=10.0):
    """The first line proc writes on stdout (bounded by timeout; may be partial)."""
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            ch = os.read(proc.stdout.fileno(), 1)
            if not ch:
                break
            line += ch
    return line


def start_helper(script, *args, ready=b"PORT "):
    """Runs servers/{script} (or the path script) with args under PYTHON, logging
    its stderr to a file (popen_with_log), and waits for its first stdout line,
    which must start with ready. Returns (proc, line); RuntimeError if the line
    does not come."""
    proc = popen_with_log([PYTHON, os.path.join(SERVERS, script), *args])
    line = read_line(proc)
    if not line.startswith(ready):
        proc.kill()
        raise RuntimeError(f"{os.path.basename(script)} did not start: {line!r} "
                           f"{helper_log(proc)!r}")
    return proc, line


def start_server(script, *args):
    """start_helper for a server that prints "PORT <n>": returns (proc, n).
    A server that got one of the proxy's reserved ports (33333 is inside the
    kernel's ephemeral range) is restarted: a preview of it would need
    credentials, and a test of a public sandbox would see 401."""
    for _ in range(5):
        proc, line = start_helper(script, *args)
        port = int(line.split()[1])
        if port not in RESERVED_PORTS:
            return proc, port
        stop_proc(proc)
    raise AssertionError(f"{script} kept getting reserved ports")


def stop_proc(proc):
    """SIGTERM, then SIGKILL if proc has not exited within 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

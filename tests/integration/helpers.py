"""Shared helpers for the integration suite: constants for the default
sandboxes, a byte-exact raw HTTP/1.1 client, and polling utilities.

Everything talks to 127.0.0.1 only. Nothing here sleeps to synchronise: waits
are polls with a bounded deadline.
"""
import hashlib
import json
import random
import socket
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


def host(port, label, domain=BASE_DOMAIN):
    return f"{port}-{label}.{domain}"


def runner_prefix(sandbox, port):
    return f"/sandboxes/{sandbox}/toolbox/proxy/{port}"


def pattern_bytes(n, seed=1):
    """The deterministic download pattern; runner.py uses the same function."""
    return random.Random(seed).randbytes(n)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


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


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
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


class RawConn:
    """A byte-exact HTTP/1.1 client over one TCP connection."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

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


def popen_with_log(args):
    """Starts a helper server: stdout is a pipe (for its PORT line), stderr goes
    to a file. A stderr pipe that nobody reads fills up after enough log lines and
    then blocks the server (that is how the ws_echo server stalled a test)."""
    import subprocess
    import tempfile
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

"""Fixtures and helpers for the TLS and HTTP/2 tests (test_tls_*.py, test_h2_*.py).

- A throwaway PKI made with the openssl CLI in a session tmp dir: a trusted CA,
  server certificates for proxy.test, a.test, b.test, c.test (each name and its
  wildcard), a second a.test certificate (for the SIGHUP swap), a certificate
  for 127.0.0.1/localhost (https runner), and one signed by an untrusted CA.
- `tls_proxy(...)`: the conftest `proxy` factory plus a TLS listener
  (`listen 127.0.0.1:P tls` and `tls_cert` lines); the plaintext listener of
  the factory stays (readiness checks, h2c).
- Clients: ssl sockets (`tls_connect`, `peer_cert`), curl, and `H2Client`, a
  small blocking HTTP/2 client over python-h2 that honours flow control both
  ways; raw frames are built with hyperframe for the abuse tests.
- WebSocket frame parsing for RFC 8441 tunnels (building: helpers.ws_frame).
- `start_https_runner`: servers/https_runner.py (runner.py behind TLS).
"""
import hashlib
import os
import socket
import ssl
import struct
import subprocess
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import requests

from helpers import BASE_DOMAIN, RUNNER_KEY, SockConn, free_port, start_server, wait_until

DOMAINS = f"{BASE_DOMAIN} a.test b.test c.test"


# ------------------------------------------------------------------- PKI --

def _run(args, cwd):
    p = subprocess.run(args, cwd=cwd, capture_output=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {p.stderr.decode(errors='replace')}")
    return p


class CA:
    def __init__(self, directory, name):
        self.dir = str(directory)
        self.name = name
        os.makedirs(self.dir, exist_ok=True)
        self.cert = os.path.join(self.dir, f"{name}-ca.pem")
        self.key = os.path.join(self.dir, f"{name}-ca.key")
        _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "30",
              "-subj", f"/CN={name} Test CA",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], self.dir)
        self.serial = 1000

    def issue(self, label, cn, dns=(), ips=()):
        """A leaf certificate; returns (cert_path, key_path)."""
        self.serial += 1
        cert = os.path.join(self.dir, f"{label}.pem")
        key = os.path.join(self.dir, f"{label}.key")
        csr = os.path.join(self.dir, f"{label}.csr")
        ext = os.path.join(self.dir, f"{label}.ext")
        san = ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth\n")
            if san:
                f.write(f"subjectAltName={san}\n")
        _run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={cn}"], self.dir)
        _run(["openssl", "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
              "-set_serial", str(self.serial), "-out", cert, "-days", "30", "-extfile", ext],
             self.dir)
        return cert, key


class PKI:
    def __init__(self, directory):
        self.dir = str(directory)
        self.ca = CA(directory, "trusted")
        self.evil = CA(os.path.join(self.dir, "evil"), "untrusted")
        self.ca_file = self.ca.cert
        self.certs = {}
        for label, names in (("default", (BASE_DOMAIN,)), ("a", ("a.test",)),
                             ("b", ("b.test",)), ("c", ("c.test",))):
            dns = []
            for n in names:
                dns += [n, f"*.{n}"]
            self.certs[label] = self.ca.issue(label, f"{names[0]} cert {label}", dns=dns)
        self.certs["a2"] = self.ca.issue("a2", "a.test cert a2 (after reload)",
                                         dns=["a.test", "*.a.test"])
        self.certs["runner"] = self.ca.issue("runner", "runner 127.0.0.1",
                                             dns=["localhost"], ips=["127.0.0.1"])
        self.certs["runner_wrongname"] = self.ca.issue("runner_wrongname", "runner elsewhere",
                                                       dns=["elsewhere.test"])
        self.certs["runner_evil"] = self.evil.issue("runner_evil", "runner evil",
                                                    dns=["localhost"], ips=["127.0.0.1"])

    def cn(self, label):
        return {"default": f"{BASE_DOMAIN} cert default", "a": "a.test cert a",
                "b": "b.test cert b", "c": "c.test cert c",
                "a2": "a.test cert a2 (after reload)"}[label]


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


# ------------------------------------------------------------ TLS proxy --

def tls_lines(pki, port, certs=None):
    """listen + tls_cert lines. certs: list of (label_or_(cert,key), domains str)."""
    if certs is None:
        certs = [("default", BASE_DOMAIN), ("a", "a.test"), ("b", "b.test"), ("c", "")]
    lines = [f"listen 127.0.0.1:{port} tls"]
    for which, doms in certs:
        cert, key = pki.certs[which] if isinstance(which, str) else which
        lines.append(f"tls_cert {cert} {key} {doms}".rstrip())
    return lines


@pytest.fixture
def tls_proxy(proxy, pki):
    """Factory: tls_proxy(certs=None, settings=None, extra=(), **kw) -> Proxy
    with .tls_port. The plaintext listener of the factory stays as well."""
    def make(certs=None, settings=None, extra=(), **kw):
        port = free_port()
        # shutdown_timeout 2: a teardown that has to wait for it costs less
        s = {"domains": DOMAINS, "shutdown_timeout": "2"}
        s.update(settings or {})
        p = proxy(settings=s, extra=tls_lines(pki, port, certs) + list(extra), **kw)
        p.tls_port = port
        wait_until(lambda: tls_health(p, pki), timeout=10, what="proxy /health over TLS")
        return p
    return make


def client_ctx(pki=None, alpn=None, verify=True, cafile=None):
    ctx = ssl.create_default_context(cafile=cafile or (pki.ca_file if pki else None))
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.check_hostname = False   # names are checked by the tests themselves
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_connect(port, sni, pki=None, alpn=None, ctx=None, timeout=10.0, session=None):
    ctx = ctx or client_ctx(pki, alpn=alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s = ctx.wrap_socket(raw, server_hostname=sni, session=session)
    except Exception:
        raw.close()
        raise
    s.settimeout(timeout)
    return s


def cert_names(cert):
    """(CN, [SAN DNS names]) of a getpeercert() dict."""
    cn = None
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                cn = v
    sans = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    return cn, sans


def peer_cert(port, sni, pki):
    with tls_connect(port, sni, pki) as s:
        return cert_names(s.getpeercert())


def tls_health(p, pki, timeout=2.0, why=None):
    """True when GET /health over TLS answers 200 and the connection closes.
    On failure the reason is appended to the list `why`, when given."""
    data = b""
    try:
        with tls_connect(p.tls_port, BASE_DOMAIN, pki, timeout=timeout) as s:
            s.sendall(f"GET /health HTTP/1.1\r\nHost: {BASE_DOMAIN}\r\nConnection: close\r\n\r\n"
                      .encode())
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
    except (OSError, ssl.SSLError) as e:
        if why is not None:
            why.append(f"{e!r} after {len(data)} bytes: {data[:40]!r}")
        return False
    if not data.startswith(b"HTTP/1.1 200") and why is not None:
        why.append(f"answer {data[:40]!r}")
    return data.startswith(b"HTTP/1.1 200")


def curl(args, timeout=60):
    """Run curl; returns CompletedProcess (stdout bytes)."""
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout)] + list(args),
                          capture_output=True, timeout=timeout + 10)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- HTTP/2 --

class StreamState:
    def __init__(self, sid):
        self.id = sid
        self.headers = None       # final response headers (list of (bytes, bytes))
        self.interim = []
        self.trailers = None
        self.data = bytearray()
        self.ended = False
        self.reset = None         # error code if RST_STREAM
        self.pending = b""        # request body bytes still to send
        self.end_after = False    # send END_STREAM once pending is drained

    @property
    def status(self):
        if self.headers is None:
            return None
        return int(dict(self.headers)[b":status"])

    def header(self, name):
        if self.headers is None:
            return None
        name = name.encode() if isinstance(name, str) else name
        for k, v in self.headers:
            if k == name:
                return v.decode("latin-1")
        return None


class GoAway(Exception):
    pass


class H2Client(SockConn):
    """A blocking HTTP/2 client: python-h2 over a TLS (ALPN h2) or plain socket
    (h2c prior knowledge). Response DATA is acknowledged as it is read."""

    def __init__(self, port, tls=True, sni=BASE_DOMAIN, pki=None, timeout=15.0,
                 local_settings=None, window=None):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            ctx = client_ctx(pki, alpn=["h2"])
            self.sock = ctx.wrap_socket(raw, server_hostname=sni)
            assert self.sock.selected_alpn_protocol() == "h2", self.sock.selected_alpn_protocol()
        else:
            self.sock = raw
        self.sock.settimeout(timeout)
        self.timeout = timeout
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                        validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        if local_settings:
            self.conn.update_settings(local_settings)
        if window:
            self.conn.increment_flow_control_window(window)
        self.streams = {}
        self.remote_settings = {}
        self.goaway = None
        self.closed = False
        self.auto_ack = True
        self.no_stream_ack = set()   # streams whose DATA we do not acknowledge
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method, path, authority, headers=(), body=None, end=True, scheme="https",
                extra_pseudo=()):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", scheme), (":authority", authority),
                (":path", path)] + list(extra_pseudo) + list(headers)
        st = StreamState(sid)
        self.streams[sid] = st
        if body is None:
            self.conn.send_headers(sid, hdrs, end_stream=end)
        else:
            self.conn.send_headers(sid, hdrs, end_stream=False)
            st.pending = bytes(body)
            st.end_after = end
        self._send_pending()
        self.flush()
        return sid

    def send_body(self, sid, data, end=False):
        st = self.streams[sid]
        st.pending += data
        st.end_after = end
        self._send_pending()
        self.flush()

    def _send_pending(self):
        for st in self.streams.values():
            if st.reset is not None:
                st.pending, st.end_after = b"", False
                continue
            while st.pending:
                try:
                    win = self.conn.local_flow_control_window(st.id)
                except Exception:
                    st.pending = b""
                    break
                n = min(win, self.conn.max_outbound_frame_size, len(st.pending))
                if n <= 0:
                    break
                self.conn.send_data(st.id, st.pending[:n])
                st.pending = st.pending[n:]
            if not st.pending and st.end_after:
                st.end_after = False
                self.conn.end_stream(st.id)

    def reset(self, sid, code=8):
        """Send RST_STREAM (default CANCEL) for sid."""
        st = self.streams[sid]
        st.reset, st.pending, st.end_after = code, b"", False
        self.conn.reset_stream(sid, code)
        self.flush()

    def _handle(self, ev):
        if isinstance(ev, h2.events.ResponseReceived):
            self.streams[ev.stream_id].headers = ev.headers
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            self.streams[ev.stream_id].interim.append(ev.headers)
        elif isinstance(ev, h2.events.TrailersReceived):
            self.streams[ev.stream_id].trailers = ev.headers
        elif isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.data += ev.data
            if self.auto_ack and ev.flow_controlled_length:
                if ev.stream_id in self.no_stream_ack:
                    # open the connection window only: this stream stays stalled
                    self.conn.increment_flow_control_window(ev.flow_controlled_length)
                else:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            self.streams[ev.stream_id].ended = True
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.reset = ev.error_code
                st.pending = b""
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            for k, v in ev.changed_settings.items():
                self.remote_settings[k] = v.new_value
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev

    def pump_once(self, timeout=None):
        """Read once (blocking up to timeout); returns False on EOF."""
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return True
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        for ev in self.conn.receive_data(data):
            self._handle(ev)
        self._send_pending()
        self.flush()
        return True

    def pump_until(self, pred, timeout=None, what="condition"):
        deadline = time.monotonic() + (timeout or self.timeout)
        while not pred():
            if self.closed:
                raise GoAway(f"connection closed waiting for {what} (goaway={self.goaway})")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            self.pump_once(min(left, 1.0))
        return True

    def response(self, sid, timeout=None):
        st = self.streams[sid]
        self.pump_until(lambda: st.ended or st.reset is not None, timeout, f"stream {sid} end")
        return st

    def get(self, path, authority, headers=(), timeout=None, **kw):
        return self.response(self.request("GET", path, authority, headers, **kw), timeout)


def h2_health(port, tls=True, pki=None):
    with H2Client(port, tls=tls, pki=pki, timeout=5) as c:
        st = c.get("/health", BASE_DOMAIN, scheme="https" if tls else "http")
        return st.status


# ------------------------------------------------------- WebSocket frames --

def ws_parse(buf):
    """Parse complete frames from buf: returns ([(fin, opcode, payload)], rest)."""
    frames = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        n = b1 & 0x7F
        off = 2
        if n == 126:
            if len(buf) < 4:
                break
            n = struct.unpack("!H", buf[2:4])[0]
            off = 4
        elif n == 127:
            if len(buf) < 10:
                break
            n = struct.unpack("!Q", buf[2:10])[0]
            off = 10
        key = None
        if b1 & 0x80:
            if len(buf) < off + 4:
                break
            key = buf[off:off + 4]
            off += 4
        if len(buf) < off + n:
            break
        payload = bytes(buf[off:off + n])
        if key:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        frames.append((bool(b0 & 0x80), b0 & 0x0F, payload))
        buf = buf[off + n:]
    return frames, bytes(buf)


# ------------------------------------------------------------ servers --

def start_https_runner(cert, key, runner_key=RUNNER_KEY):
    return start_server("https_runner.py", "--cert", cert, "--key", key,
                        "--runner-key", runner_key)


def start_ws_echo():
    return start_server("ws_echo.py")


def ws_echo_reset(port):
    requests.get(f"http://127.0.0.1:{port}/__ctl/reset", timeout=5).raise_for_status()


def log_wait(p, needle, start=0, timeout=5.0):
    """Wait for a proxy log line containing needle after byte offset start."""
    return wait_until(lambda: needle in p.log()[start:], timeout=timeout,
                      what=f"proxy log line {needle!r}")


def tls_raw(port, sni, pki, alpn=None, timeout=10.0):
    """A helpers.RawConn (byte-exact HTTP/1.1 client) over a TLS socket."""
    from helpers import RawConn
    c = RawConn.__new__(RawConn)
    c.sock = tls_connect(port, sni, pki, alpn=alpn, timeout=timeout)
    c.buf = b""
    return c

"""PROXY protocol v1 and v2 on listeners (issue 14 item 2; proxy/ppaccept.c,
proxy/proxyproto.c): `listen ADDR:PORT [tls] proxy_protocol`.

The header is read off the raw socket before anything else (before the TLS
handshake on TLS listeners); only peers in trusted_proxies may send one; a
malformed header, or one not whole within client_header_timeout, closes the
connection with nothing forwarded. The client the header names is the
connection's peer everywhere: X-Forwarded-For, the access log, the per-IP cap.
The last tests put Debian's HAProxy (TCP mode, send-proxy / send-proxy-v2) in
front. The conftest proxy's own plaintext listener stays (readiness checks);
the PROXY listeners are extra ones. 127.0.0.x are distinct local clients."""
import shutil
import socket
import ssl
import struct
import subprocess
import time

import pytest

import tlsfix
from helpers import (PUB, RawConn, free_port, host, port_is_listening, request_bytes, stop_proc,
                     wait_until)
from measure import record
from redisfix import *  # noqa: F401,F403  (redis_server, rproxy)
from tlsfix import *  # noqa: F401,F403  (pki)
from tlsfix import H2Client, tls_lines

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src, sport=40000, dport=443):
    fam, dst = ("TCP6", "::1") if ":" in src else ("TCP4", "127.0.0.1")
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src=None, sport=40000, tlvs=b"", local=False):
    """A v2 header: PROXY over TCP/IPv4 or IPv6 from src, or LOCAL (src None)."""
    if local:
        return V2_SIG + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    if ":" in src:
        body = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, "::1")
                + struct.pack("!HH", sport, 443))
        fam = 0x21
    else:
        body = (socket.inet_aton(src) + socket.inet_aton("127.0.0.1")
                + struct.pack("!HH", sport, 443))
        fam = 0x11
    body += tlvs
    return V2_SIG + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


def hdrs(rec, name):
    return [v for k, v in rec["headers"] if k.lower() == name.lower()]


def get(path, extra=()):
    return request_bytes("GET", path, host(3000, PUB), headers=extra)


def pp_proxy(proxy, trusted="127.0.0.1/32", settings=None, extra=()):
    """A proxy with a `proxy_protocol` listener at .pp_port besides its plain one."""
    pp = free_port()
    s = {"trusted_proxies": trusted}
    s.update(settings or {})
    p = proxy(settings=s, extra=[f"listen 127.0.0.1:{pp} proxy_protocol"] + list(extra))
    p.pp_port = pp
    return p


def access_lines(p, path):
    return [l for l in p.log_lines() if " ACCESS " in l and f" path={path} " in l]


# ------------------------------------------------------------ HTTP/1.1 --

@pytest.mark.parametrize("version", ["v1", "v2", "v1-ipv6", "v2-ipv6"])
def test_header_address_is_the_client(proxy, runner, version):
    """The header and the request in one segment: the request behind the header
    is not lost; the runner's X-Forwarded-For and the access log name the
    header's client, and its own X-Forwarded-For is not trusted (the client,
    not the balancer, is the peer now)."""
    p = pp_proxy(proxy)
    src = "2001:db8::7" if version.endswith("ipv6") else "203.0.113.7"
    head = v1(src) if version.startswith("v1") else v2(src)
    path = f"/pp-{version}"
    with RawConn(p.pp_port) as c:
        c.send(head + get(path, [("X-Forwarded-For", "6.6.6.6")]))
        assert c.read_response().status == 200
        c.send(get(path + "-again"))              # keep-alive: the same client
        assert c.read_response().status == 200
    recs = runner.requests()
    assert [hdrs(r, "X-Forwarded-For") for r in recs] == [[src], [src]]
    wait_until(lambda: len(access_lines(p, path)) == 1, what="access log line")
    assert f"peer={src} " in access_lines(p, path)[0]


def test_v2_tlvs_skipped_and_local_keeps_socket_peer(proxy, runner):
    p = pp_proxy(proxy)
    tlvs = bytes([0x01, 0x00, 0x02]) + b"h2" + bytes([0xEA, 0x00, 0x04]) + b"vpce"
    with RawConn(p.pp_port) as c:
        c.send(v2("198.51.100.9", tlvs=tlvs) + get("/tlv"))
        assert c.read_response().status == 200
    # LOCAL (a balancer's health check): the socket's own peer stands
    with RawConn(p.pp_port) as c:
        c.send(v2(local=True) + get("/local"))
        assert c.read_response().status == 200
    with RawConn(p.pp_port) as c:
        c.send(b"PROXY UNKNOWN\r\n" + get("/unknown"))
        assert c.read_response().status == 200
    assert [hdrs(r, "X-Forwarded-For") for r in runner.requests()] == \
        [["198.51.100.9"], ["127.0.0.1"], ["127.0.0.1"]]


def test_header_split_across_segments(proxy, runner):
    """The header arrives in 3-byte pieces, the request after its last one."""
    p = pp_proxy(proxy)
    head = v2("192.0.2.44")
    with RawConn(p.pp_port) as c:
        for i in range(0, len(head), 3):
            c.send(head[i:i + 3])
            time.sleep(0.01)     # separate segments (not a readiness wait)
        c.send(get("/split"))
        assert c.read_response().status == 200
    assert [hdrs(r, "X-Forwarded-For") for r in runner.requests()] == [["192.0.2.44"]]


def test_untrusted_peer_closed_nothing_forwarded(proxy, runner):
    p = pp_proxy(proxy, trusted="127.0.0.2/32")
    with RawConn(p.pp_port, source="127.0.0.1") as c:
        try:
            c.send(v1("203.0.113.8") + get("/untrusted"))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert c.is_closed(timeout=5)
        assert c.buf == b""
    # the trusted peer is served on the same listener
    with RawConn(p.pp_port, source="127.0.0.2") as c:
        c.send(v1("203.0.113.9") + get("/trusted"))
        assert c.read_response().status == 200
    assert [r["target"].endswith("/trusted") for r in runner.requests()] == [True]
    wait_until(lambda: any("not in trusted_proxies" in l and "127.0.0.1" in l
                           for l in p.log_lines()), what="refusal logged")


@pytest.mark.parametrize("bad", [
    b"PROXY TCP4 203.0.113.7 127.0.0.1 040000 443\r\n",     # leading zero
    b"PROXY TCP4 203.0.113.7  127.0.0.1 1 443\r\n",          # double space
    b"PROXY TCP4 ::1 127.0.0.1 1 443\r\n",                   # wrong family
    b"PROXY TCP4 203.0.113.7 127.0.0.1 1 443\n",             # no CR
    b"GET / HTTP/1.1\r\n",                                   # no header at all
    b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n",                # over 107 bytes
    V2_SIG + bytes([0x21, 0x12, 0, 12]) + bytes(12),         # UDP
    V2_SIG + bytes([0x21, 0x11, 0, 11]) + bytes(11),         # short IPv4 block
    V2_SIG + bytes([0x21, 0x11, 0xff, 0xff]),                # longer than the bound
])
def test_malformed_header_closed(proxy, runner, bad):
    p = pp_proxy(proxy)
    with RawConn(p.pp_port) as c:
        try:
            c.send(bad + get("/after-bad"))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert c.is_closed(timeout=5)
        assert c.buf == b""
    assert runner.requests() == []
    wait_until(lambda: any("proxy_protocol: closed" in l for l in p.log_lines()),
               what="malformed header logged")


@pytest.mark.parametrize("how", ["trickled", "silent"])
def test_slow_header_dropped_within_client_header_timeout(proxy, runner, how):
    """client_header_timeout counts from the accept: bytes trickling in do not
    extend it."""
    p = pp_proxy(proxy, settings={"client_header_timeout": "1"})
    head = v1("203.0.113.10")
    t0 = time.monotonic()
    closed_at = None
    with RawConn(p.pp_port, timeout=5) as c:
        if how == "trickled":
            for i in range(len(head) - 1):        # never the last byte
                try:
                    c.send(head[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    break
                c.sock.settimeout(0.15)
                try:
                    if c.sock.recv(1) == b"":
                        break
                except socket.timeout:
                    pass
                except ConnectionResetError:
                    break
        assert c.is_closed(timeout=5)
        closed_at = time.monotonic() - t0
        assert c.buf == b""
    assert closed_at < 2.5, closed_at
    record("proxy_protocol_slow_header", **{f"{how}_closed_after_s": closed_at})
    assert runner.requests() == []


def test_per_ip_cap_counts_the_header_address(proxy, runner):
    """max_connections_per_ip charges the client the header names: two clients
    behind the same balancer each get their own budget."""
    cap = 2
    p = pp_proxy(proxy, settings={"max_connections_per_ip": str(cap), "keepalive_timeout": "60"})
    held = []
    try:
        for src in ("203.0.113.20", "203.0.113.21"):
            for _ in range(cap):
                c = RawConn(p.pp_port)
                held.append(c)
                c.send(v2(src) + get("/held"))
                assert c.read_response().status == 200
        for src in ("203.0.113.20", "203.0.113.21"):
            with RawConn(p.pp_port) as c:
                c.send(v2(src))
                r = c.read_response()
                assert r.status == 429, r
        with RawConn(p.pp_port) as c:                # a third client still has its budget
            c.send(v2("203.0.113.22") + get("/third"))
            assert c.read_response().status == 200
        held.pop().close()                           # 203.0.113.21 gets a slot back

        def one_more():
            with RawConn(p.pp_port) as c:
                c.send(v2("203.0.113.21") + get("/again"))
                return c.read_response().status == 200
        wait_until(one_more, timeout=5, what="a slot back after a close")
    finally:
        for c in held:
            c.close()
    assert any("max_connections_per_ip" in l and "203.0.113.2" in l for l in p.log_lines())


# ------------------------------------------------------ TLS and HTTP/2 --

@pytest.fixture
def pp_tls_proxy(proxy, pki):
    def make():
        pp = free_port()
        lines = tls_lines(pki, pp)
        lines[0] += " proxy_protocol"
        p = proxy(settings={"domains": tlsfix.DOMAINS, "trusted_proxies": "127.0.0.1/32",
                            "shutdown_timeout": "2"}, extra=lines)
        p.pp_port = pp
        return p
    return make


def test_tls_listener_header_then_handshake(pp_tls_proxy, pki, runner):
    p = pp_tls_proxy()
    raw = socket.create_connection(("127.0.0.1", p.pp_port), timeout=10)
    raw.sendall(v1("203.0.113.30"))
    s = tlsfix.client_ctx(pki, alpn=["http/1.1"]).wrap_socket(raw, server_hostname="proxy.test")
    try:
        s.sendall(get("/tls"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
    finally:
        s.close()
    recs = runner.requests()
    assert hdrs(recs[0], "X-Forwarded-For") == ["203.0.113.30"]
    assert hdrs(recs[0], "X-Forwarded-Proto") == ["https"]
    # A ClientHello without a header is a malformed header: closed.
    with pytest.raises((ssl.SSLError, OSError)):
        tlsfix.tls_connect(p.pp_port, "proxy.test", pki, timeout=5).close()


class _HeaderFirst:
    """Within the block, socket.create_connection (as H2Client calls it) sends
    a PROXY header on the new socket before returning it."""

    def __init__(self, monkeypatch, header):
        self.mp, self.header = monkeypatch, header

    def __enter__(self):
        real = socket.create_connection

        def connect(*a, **kw):
            s = real(*a, **kw)
            s.sendall(self.header)
            return s
        self.mp.setattr(socket, "create_connection", connect)

    def __exit__(self, *exc):
        self.mp.undo()


@pytest.mark.parametrize("tls", [True, False], ids=["h2-tls", "h2c"])
def test_h2_sees_header_address(proxy, pp_tls_proxy, pki, runner, monkeypatch, tls):
    p = pp_tls_proxy() if tls else pp_proxy(proxy)
    with _HeaderFirst(monkeypatch, v2("203.0.113.40")):
        c = H2Client(p.pp_port, tls=tls, pki=pki, timeout=10)
    with c:
        for i in range(2):
            st = c.get(f"/h2-{i}", host(3000, PUB), scheme="https" if tls else "http")
            assert st.status == 200
    assert [hdrs(r, "X-Forwarded-For") for r in runner.requests()] == [["203.0.113.40"]] * 2
    wait_until(lambda: len(access_lines(p, "/h2-1")) == 1, what="access log line")
    assert "peer=203.0.113.40 " in access_lines(p, "/h2-1")[0]


# ----------------------------------------------------- a real HAProxy --

def _haproxy(tmp_path, front, back, send):
    cfg = tmp_path / f"haproxy-{front}.cfg"
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
    server proxy 127.0.0.1:{back} {send}
""")
    log = open(tmp_path / f"haproxy-{front}.log", "ab")
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log)
    log.close()

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"haproxy exited: {(tmp_path / f'haproxy-{front}.log').read_text()}")
        return port_is_listening(front)
    wait_until(ready, timeout=10, what="haproxy listening")
    return proc


@pytest.mark.parametrize("send", ["send-proxy-v2", "send-proxy"])
def test_behind_haproxy(proxy, runner, tmp_path, send):
    """Clients at 127.0.0.3 and 127.0.0.4 reach the proxy through HAProxy (TCP
    mode): the proxy's peer is HAProxy at 127.0.0.1, the runner sees each
    client's own address, as does the access log."""
    p = pp_proxy(proxy)
    front = free_port()
    hp = _haproxy(tmp_path, front, p.pp_port, send)
    try:
        for src in ("127.0.0.3", "127.0.0.4"):
            with RawConn(front, source=src) as c:
                c.send(get(f"/via-haproxy-{src}"))
                assert c.read_response().status == 200
    finally:
        stop_proc(hp)
    assert [hdrs(r, "X-Forwarded-For") for r in runner.requests()] == \
        [["127.0.0.3"], ["127.0.0.4"]]
    wait_until(lambda: len(access_lines(p, "/via-haproxy-127.0.0.4")) == 1,
               what="access log line")
    assert "peer=127.0.0.4 " in access_lines(p, "/via-haproxy-127.0.0.4")[0]


# ------------------------------------------------- per-client miss budget --

def test_lookup_client_budget_is_per_header_address(rproxy, runner):
    """lookup_client_rate charges the client the header names: one client
    behind the balancer that spends its budget on unknown labels gets 429, the
    next client behind the same balancer still gets its own answer (401)."""
    pp = free_port()
    p = rproxy(settings={"trusted_proxies": "127.0.0.1/32", "lookup_client_rate": "1 4",
                         "lookup_rate": "1000 1000"},
               extra=[f"listen 127.0.0.1:{pp} proxy_protocol"])

    def status(src, label):
        with RawConn(pp) as c:
            c.send(v1(src) + request_bytes("GET", "/", host(3000, label)))
            return c.read_response().status
    seen = [status("203.0.113.50", f"nosuch{i}") for i in range(12)]
    assert seen[0] == 401 and 429 in seen, seen
    assert status("203.0.113.51", "nosuchother") == 401
    assert status("203.0.113.50", "nosuchlast") == 429

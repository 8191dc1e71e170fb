"""max_connections_per_ip (issue 12 item 3): one client address cannot take
every socket the process may hold. Each accepted socket counts for its
address until it closes, wherever it moved meanwhile (an HTTP/2 connection,
a WebSocket tunnel); the address over its share gets a 429 and a closed
connection, other addresses are served; trusted_proxies peers are not counted.
127.0.0.1 and 127.0.0.2 are two clients (Linux routes all of 127/8 to lo)."""
import os
import socket
import time

import pytest
import requests

from helpers import BASE_DOMAIN, PUB, RawConn, free_port, host, request_bytes, wait_until
from measure import record

CAP = 4


def health():
    return request_bytes("GET", "/health", BASE_DOMAIN)


def held_open(port, n, source="127.0.0.1"):
    """n keep-alive connections from source, each answered once (so accepted)."""
    conns = []
    for _ in range(n):
        c = RawConn(port, timeout=5, source=source)
        conns.append(c)
        c.send(health())
        assert c.read_response().status == 200
    return conns


def refused(port, source="127.0.0.1"):
    """Connects from source and returns the status of what the proxy says at once
    (429), or 0 when it closed without a word."""
    with RawConn(port, timeout=5, source=source) as c:
        try:
            return c.read_response().status
        except Exception:
            return 0


def close_all(conns):
    for c in conns:
        c.close()


def test_address_over_its_share_gets_429_others_are_served(proxy):
    mport = free_port()
    p = proxy(settings={"max_connections_per_ip": str(CAP), "keepalive_timeout": "60"},
              extra=[f"metrics_listen 127.0.0.1:{mport}"])
    held = held_open(p.port, CAP)
    try:
        with RawConn(p.port, timeout=5) as c:
            r = c.read_response()           # answered before sending anything
            assert r.status == 429 and b"too many connections" in r.body, r
            assert r.header("connection") == "close"
        other = held_open(p.port, 2, source="127.0.0.2")   # another client is served
        close_all(other)
        m = requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
        assert "preview_proxy_refused_per_ip_total 1" in m, m
        held.pop().close()                  # a slot comes back when its socket closes
        wait_until(lambda: len(held_open_or_none(p.port)) == 1, timeout=5,
                   what="a new connection accepted after one closed")
    finally:
        close_all(held)
    logs = [l for l in p.log_lines() if "max_connections_per_ip" in l]
    assert logs and "127.0.0.1" in logs[0], logs


def held_open_or_none(port):
    c = RawConn(port, timeout=5)
    c.send(health())
    try:
        ok = c.read_response().status == 200
    except Exception:
        ok = False
    c.close()
    return [c] if ok else []


def test_slots_come_back_after_many_connections(proxy):
    """A thousand short connections, sequential: nothing leaks (each close
    gives its slot back), so the address still has its whole share."""
    p = proxy(settings={"max_connections_per_ip": str(CAP), "keepalive_timeout": "60"})
    for _ in range(300):
        with RawConn(p.port, timeout=5) as c:
            c.send(request_bytes("GET", "/health", BASE_DOMAIN, [("Connection", "close")]))
            assert c.read_response().status == 200
    held = held_open(p.port, CAP)
    close_all(held)


def test_websocket_tunnel_keeps_its_slot(proxy, runner):
    """A tunnel is the same socket after the 101: it still counts, and gives its
    slot back when it ends."""
    p = proxy(settings={"max_connections_per_ip": "2", "keepalive_timeout": "60"})
    tunnels = []
    for _ in range(2):
        c = RawConn(p.port, timeout=5)
        c.send(request_bytes("GET", "/echo", host(3000, PUB),
                             [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                              ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                              ("Sec-WebSocket-Version", "13")]))
        assert c.read_response().status == 101
        tunnels.append(c)
    assert refused(p.port) == 429
    tunnels.pop().close()
    wait_until(lambda: len(held_open_or_none(p.port)) == 1, timeout=5,
               what="the closed tunnel's slot back")
    close_all(tunnels)


def test_h2_connection_is_one_slot_and_keeps_it(proxy, runner):
    from tlsfix import H2Client
    p = proxy(settings={"max_connections_per_ip": "1", "keepalive_timeout": "60"})
    with H2Client(p.port, tls=False) as h2c:
        for _ in range(3):
            assert h2c.get("/x", host(3000, PUB), scheme="http").status == 200
        assert refused(p.port) == 429        # the h2 connection holds the only slot
    wait_until(lambda: len(held_open_or_none(p.port)) == 1, timeout=5,
               what="the h2 connection's slot back")


def test_trusted_proxies_are_not_counted(proxy):
    p = proxy(settings={"max_connections_per_ip": "2", "keepalive_timeout": "60",
                        "trusted_proxies": "127.0.0.2/32"})
    held = held_open(p.port, 6, source="127.0.0.2")
    try:
        assert refused(p.port, "127.0.0.1") != 429     # 127.0.0.1 still has its own two
    finally:
        close_all(held)


def test_off_by_default(proxy):
    p = proxy(settings={"keepalive_timeout": "60"})
    close_all(held_open(p.port, 20))


@pytest.mark.parametrize("bad", ["-1", "x", "1000001"])
def test_bad_value_rejected(proxy, bad):
    p = proxy(settings={"max_connections_per_ip": bad}, wait=False)
    assert p.proc.wait(10) != 0
    assert "max_connections_per_ip" in p.log()


def test_slowloris_from_one_address_leaves_others_served(proxy):
    """Issue 12 item 3: 200 connections trickling a head from one address take
    at most their share of sockets; a client elsewhere keeps being served
    quickly, and the proxy's descriptors and memory stay bounded."""
    cap = 50
    p = proxy(settings={"max_connections_per_ip": str(cap), "client_header_timeout": "30",
                        "keepalive_timeout": "60"})
    pid = p.proc.pid
    fds0 = len(os.listdir(f"/proc/{pid}/fd"))
    attackers = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", p.port), timeout=5,
                                         source_address=("127.0.0.2", 0))
            try:
                s.sendall(b"GET / HTTP/1.1\r\nHost: " + host(3000, PUB).encode() + b"\r\nX-a: ")
            except OSError:
                pass
            attackers.append(s)
        wait_until(lambda: len(os.listdir(f"/proc/{pid}/fd")) <= fds0 + cap + 5, timeout=5,
                   what="the proxy holding at most its cap of the attacker's sockets")
        for _ in range(20):
            t0 = time.monotonic()
            r = requests.get(f"http://127.0.0.1:{p.port}/health", headers={"Host": BASE_DOMAIN},
                             timeout=5)
            assert r.status_code == 200 and time.monotonic() - t0 < 1.0
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        assert fds <= fds0 + cap + 5, (fds0, fds)
        with open(f"/proc/{pid}/status") as fh:
            rss_kb = int([l for l in fh if l.startswith("VmRSS:")][0].split()[1])
        record("slowloris_one_address_static", conns=200, per_ip_cap=cap, fds0=fds0,
               fds=fds, rss_mib=rss_kb / 1024, rss_bound_mib=200)
        assert rss_kb < 200 * 1024, rss_kb      # ASan build included
    finally:
        for s in attackers:
            s.close()

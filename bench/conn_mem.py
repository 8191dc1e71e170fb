#!/usr/bin/python3
"""bench/conn_mem.py — proxy memory per idle client connection (docs/SCALING.md).

bench/ws.sh measures an idle WebSocket; this measures the other thing a
browser leaves open between requests: a keep-alive connection, after one
request, for plain HTTP/1.1, HTTP/1.1 over TLS and HTTP/2 over TLS (ALPN h2).
For each kind it starts a fresh proxy (`workers 1`, `access_log off`, one
in-memory public sandbox in direct mode, a self-signed ECDSA P-256
certificate made with the openssl CLI), opens N connections, sends one
request on each and reads the whole answer, then reports
(VmRSS with N open - VmRSS before) / N. The upstream (a small HTTP/1.1 server
in this process) sees at most `upstream_keepalive` (128) pooled connections
whatever N is, so they are not per-client cost. Kernel socket memory is not
in VmRSS and not counted. Loopback only, every wait bounded; ~10-20 s.

Usage: bench/conn_mem.py [--n 2000] [--kinds h1,h1tls,h2tls]
"""
import argparse
import http.server
import os
import resource
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from helpers import free_port  # noqa: E402

PROXY = os.environ.get("BENCH_PROXY", os.path.join(ROOT, "build", "preview-proxy"))


def die(msg):
    print(f"[conn-mem] FATAL: {msg}", file=sys.stderr)
    sys.exit(1)


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    die("no VmRSS")


def read_http1(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            die("proxy closed the connection")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    status = int(head.split()[1])
    n = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            n = int(v)
    while len(body) < n:
        chunk = sock.recv(65536)
        if not chunk:
            die("proxy closed the connection mid-body")
        body += chunk
    return status


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


def h2_get(sock, authority):
    """Preface, SETTINGS, one GET on stream 1 (HPACK: static-table entries and
    one literal :authority); reads frames until stream 1 ends; returns :status."""
    a = authority.encode()
    block = bytes([0x82, 0x87, 0x84, 0x01, len(a)]) + a  # GET https / ; :authority literal
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, block))
    buf = b""
    status = None
    while True:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                die("proxy closed the h2 connection")
            buf += chunk
        n = int.from_bytes(buf[:3], "big")
        ftype, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff
        payload, buf = buf[9:9 + n], buf[9 + n:]
        if ftype == 4 and not flags & 1:
            sock.sendall(frame(4, 1, 0))  # SETTINGS ACK
        elif ftype == 1 and stream == 1:
            # :status 200 is static index 8 (0x88); anything else is a failure here
            status = 200 if payload[:1] == b"\x88" else -1
            if flags & 1:
                return status
        elif ftype == 0 and stream == 1 and flags & 1:
            return status
        elif ftype == 7:
            die("GOAWAY from the proxy")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--kinds", default="h1,h1tls,h2tls")
    args = ap.parse_args()
    if not os.access(PROXY, os.X_OK):
        die(f"{PROXY} missing (make)")
    need = args.n + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
        except (ValueError, OSError):
            pass
    n = min(args.n, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 256)
    if n < 100:
        die("ulimit -n too low")
    work = tempfile.mkdtemp(prefix="conn-mem.")
    up = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    up.daemon_threads = True
    threading.Thread(target=up.serve_forever, daemon=True).start()
    upp = up.server_address[1]
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=proxy.localhost", "-addext",
                    "subjectAltName=DNS:proxy.localhost,DNS:*.proxy.localhost"],
                   check=True, capture_output=True, timeout=30)
    print(f"{n} idle connections per kind, one request each; proxy {PROXY}")
    print(f"{'kind':8} {'RSS before':>11} {'RSS with N':>11} {'KiB per connection':>19}")
    for kind in args.kinds.split(","):
        port = free_port()
        tls = kind != "h1"
        conf = os.path.join(work, f"{kind}.conf")
        with open(conf, "w") as f:
            f.write(f"listen 127.0.0.1:{port}{' tls' if tls else ''}\n"
                    f"tls_cert {cert} {key} proxy.localhost\n"
                    "access_log off\nlog_level warn\nworkers 1\nkeepalive_timeout 600\n"
                    f"max_connections {n + 100}\n"
                    "sandbox demo runner_url=http://127.0.0.1:9 runner_key=rk public=1 "
                    f"direct=1 addr=127.0.0.1 ports={upp}\n")
        log = open(os.path.join(work, f"{kind}.log"), "wb")
        proxy = subprocess.Popen([PROXY, "-c", conf], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        conns = []
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if proxy.poll() is not None or time.monotonic() > deadline:
                        die(f"{kind}: proxy did not listen")
                    time.sleep(0.02)  # poll interval; readiness is the connect above
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"] if kind == "h2tls" else ["http/1.1"])
            authority = f"{upp}-demo.proxy.localhost"

            def one():
                s = socket.create_connection(("127.0.0.1", port), 10)
                if tls:
                    s = ctx.wrap_socket(s, server_hostname=authority)
                    want = "h2" if kind == "h2tls" else "http/1.1"
                    if s.selected_alpn_protocol() != want:
                        die(f"{kind}: ALPN {s.selected_alpn_protocol()}")
                if kind == "h2tls":
                    status = h2_get(s, authority)
                else:
                    s.sendall(f"GET / HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
                    status = read_http1(s)
                if status != 200:
                    die(f"{kind}: status {status}")
                return s
            # warm-up: the first connections allocate what every later one reuses
            for _ in range(50):
                conns.append(one())
            base = rss_kib(proxy.pid)
            for _ in range(n):
                conns.append(one())
            full = rss_kib(proxy.pid)
            print(f"{kind:8} {base / 1024:8.1f} MiB {full / 1024:8.1f} MiB "
                  f"{(full - base) / n:19.2f}")
        finally:
            for s in conns:
                s.close()
            proxy.terminate()
            try:
                proxy.wait(30)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait(5)
            log.close()
    subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()

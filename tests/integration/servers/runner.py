#!/usr/bin/python3
"""A stand-in for a Daytona runner, for the integration tests.

Raw-socket HTTP/1.1 server (stdlib only, one thread per connection) so that
tests see exactly the bytes the proxy sent: request target, header order and
duplicates, chunked framing and trailers, and which TCP connection carried
each request.

    /usr/bin/python3 runner.py [--port N] [--key RUNNER_KEY]

Prints "PORT <n>" on stdout once listening.

Forwarded requests
  /sandboxes/{id}/toolbox/proxy/{port}{app}   preview (runner path mode)
  /sandboxes/{id}/toolbox{app}                 toolbox route
  {app}                                        anything else (direct mode)
Under /sandboxes/ the request must carry exactly one
`X-Daytona-Authorization: Bearer {key}`, else 403.

App endpoints ({app}, query parameters in brackets)
  /download?n=N[&seed=S][&chunked=1]  N bytes of random.Random(S).randbytes(N)
  /sse?name=X                          event "first", wait for signal X, event "second"
  /partial?n=N&name=X                  Content-Length N; first half, wait X, rest
  /redirect?to=LOC[&status=302]        3xx with Location: LOC
  /status/N                            status N (204/304: no body)
  /never                               read the request, never answer
  /slow?name=X                         wait for signal X (max 30 s), then echo
  /close-after                         echo, then close (no Connection: close sent)
  /abort                               close without any response
  /garbage                             answer with bytes that are not HTTP, close
  /eof-body?n=N                        body delimited by connection close
  /bighdr?n=N                          response with an N-byte header value
  /hopresp                             response with hop-by-hop headers, 2 Set-Cookie
  /trailers                            chunked response with a trailer
  /setcookie                           Set-Cookie of the proxy's own cookie names, and others
  /stopped                             503 with X-Daytona-Sandbox-State: stopped
  Upgrade: websocket (any path)        101, then echo raw bytes back
  anything else                        echo: JSON of what was received
Every request body is read (Content-Length or chunked with trailers); with
`Expect: 100-continue` a 100 Continue is sent first. A `tag=T` query parameter
makes the bytes read so far visible at /__ctl/progress?tag=T.

Control endpoints (direct to the runner only; never recorded)
  GET /__ctl/ping, /__ctl/reset, /__ctl/requests, /__ctl/conns
  GET /__ctl/signal?name=X             set event X
  GET /__ctl/arm_drop_reused           the next request that arrives on an
                                       already-used connection is read (head
                                       only) and the connection closed, no answer
  GET /__ctl/progress?tag=T
"""
import argparse
import base64
import hashlib
import json
import random
import re
import socket
import threading
import time
from urllib.parse import parse_qs
from serving import serve_tcp

PREFIX_RE = re.compile(r"^/sandboxes/([^/?]+)/toolbox(?:/proxy/([^/?]+))?(.*)$", re.S)
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.records = []
        self.conns = {}
        self.next_conn = 0
        self.next_seq = 0
        self.signals = {}
        self.drop_reused = 0
        self.progress = {}

    def signal(self, name):
        with self.lock:
            ev = self.signals.setdefault(name, threading.Event())
        return ev


STATE = State()
KEY = "runner-key"


class Closed(Exception):
    pass


class Conn:
    def __init__(self, sock, addr):
        self.sock = sock
        self.buf = b""
        self.addr = addr
        with STATE.lock:
            STATE.next_conn += 1
            self.id = STATE.next_conn
            STATE.conns[self.id] = {"id": self.id, "peer_port": addr[1], "open": True,
                                    "requests": 0, "opened": time.time(), "closed": None}

    def recv(self, n=65536):
        """Up to n bytes straight from the socket; b"" at EOF or on an error."""
        try:
            return self.sock.recv(n)
        except OSError:
            return b""

    def fill(self):
        d = self.recv(262144)
        if not d:
            raise Closed()
        self.buf += d

    def readline(self):
        while b"\n" not in self.buf:
            if len(self.buf) > 1 << 20:
                raise Closed()
            self.fill()
        i = self.buf.index(b"\n") + 1
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_up_to(self, n):
        if not self.buf:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        with STATE.lock:
            c = STATE.conns[self.id]
            c["open"] = False
            c["closed"] = time.time()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def hdr(headers, name):
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def hdr_all(headers, name):
    name = name.lower()
    return [v for k, v in headers if k.lower() == name]


def status_line(code):
    reasons = {100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created",
               204: "No Content", 301: "Moved Permanently", 302: "Found", 303: "See Other",
               304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
               400: "Bad Request", 403: "Forbidden", 404: "Not Found", 418: "I'm a teapot",
               500: "Internal Server Error", 503: "Service Unavailable"}
    return f"HTTP/1.1 {code} {reasons.get(code, 'Status')}\r\n"


def send_response(conn, code, headers=(), body=b"", head=False, rec=None):
    out = status_line(code)
    hs = list(headers)
    if code not in (204, 304) and not (100 <= code < 200):
        if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hs):
            hs.append(("Content-Length", str(len(body))))
    hs.append(("X-Runner-Conn", str(conn.id)))
    if rec is not None:
        hs.append(("X-Runner-Seq", str(rec["seq"])))
    for k, v in hs:
        out += f"{k}: {v}\r\n"
    out += "\r\n"
    data = out.encode("latin-1")
    if not head and code not in (204, 304):
        data += body
    conn.send(data)


def read_body(conn, headers, rec, tag):
    """Read the request body; return (sha256 hex, length, trailers, chunked)."""
    h = hashlib.sha256()
    total = 0

    def consume(remaining):
        """Read, hash and count remaining bytes of the body (progress under tag)."""
        nonlocal total
        while remaining:
            part = conn.read_up_to(min(remaining, 262144))
            h.update(part)
            total += len(part)
            remaining -= len(part)
            if tag is not None:
                with STATE.lock:
                    STATE.progress[tag] = STATE.progress.get(tag, 0) + len(part)

    te = (hdr(headers, "transfer-encoding") or "").lower()
    trailers = []
    if "chunked" in te:
        while True:
            line = conn.readline()
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            consume(size)
            if conn.read(2) != b"\r\n":
                raise Closed()
        while True:
            line = conn.readline()
            if line in (b"\r\n", b"\n"):
                break
            k, _, v = line.rstrip(b"\r\n").partition(b":")
            trailers.append([k.decode("latin-1"), v.strip().decode("latin-1")])
        return h.hexdigest(), total, trailers, True
    cl = hdr(headers, "content-length")
    if cl is not None:
        consume(int(cl))
    return h.hexdigest(), total, trailers, False


def control(conn, target):
    path, _, query = target.partition("?")
    q = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    body = {"ok": True}
    if path == "/__ctl/ping":
        pass
    elif path == "/__ctl/reset":
        with STATE.lock:
            STATE.records = []
            STATE.signals = {}
            STATE.drop_reused = 0
            STATE.progress = {}
            for c in list(STATE.conns.values()):
                if not c["open"]:
                    del STATE.conns[c["id"]]
    elif path == "/__ctl/requests":
        with STATE.lock:
            body = json.loads(json.dumps(STATE.records))
    elif path == "/__ctl/conns":
        with STATE.lock:
            body = json.loads(json.dumps(list(STATE.conns.values())))
    elif path == "/__ctl/signal":
        STATE.signal(q["name"]).set()
    elif path == "/__ctl/arm_drop_reused":
        with STATE.lock:
            STATE.drop_reused += 1
    elif path == "/__ctl/progress":
        with STATE.lock:
            body = {"bytes": STATE.progress.get(q.get("tag"), 0)}
    else:
        send_response(conn, 404, [("Content-Type", "application/json"), ("Connection", "close")],
                      b'{"error":"unknown control"}')
        return
    send_response(conn, 200, [("Content-Type", "application/json"), ("Connection", "close")],
                  json.dumps(body).encode())


def echo_body(rec):
    return json.dumps({k: rec[k] for k in ("seq", "conn", "method", "target", "version",
                                           "headers", "body_sha256", "body_len", "trailers",
                                           "chunked")}).encode()


def handle_request(conn, nreq, method, target, version, headers):
    """Returns True to keep the connection open."""
    with STATE.lock:
        STATE.next_seq += 1
        rec = {"seq": STATE.next_seq, "conn": conn.id, "conn_request": nreq,
               "peer_port": conn.addr[1], "method": method, "target": target,
               "version": version, "headers": headers, "body_sha256": None, "body_len": None,
               "trailers": [], "chunked": False, "dropped": False, "auth_ok": None,
               "time": time.time()}
        drop = STATE.drop_reused > 0 and nreq > 1
        if drop:
            STATE.drop_reused -= 1
            rec["dropped"] = True
        STATE.records.append(rec)
        STATE.conns[conn.id]["requests"] += 1

    if drop:
        return False

    m = PREFIX_RE.match(target)
    if m:
        app = m.group(3) or "/"
        if not app.startswith("/"):
            app = "/" + app if not app.startswith("?") else "/" + app
        auth = hdr_all(headers, "x-daytona-authorization")
        rec["auth_ok"] = auth == [f"Bearer {KEY}"]
    else:
        app = target
    path, _, query = app.partition("?")
    q = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    tag = q.get("tag")

    upgrade = (hdr(headers, "upgrade") or "").lower()
    connection_tokens = [t.strip().lower() for t in ",".join(hdr_all(headers, "connection")).split(",")]
    if upgrade == "websocket" and "upgrade" in connection_tokens:
        if m and not rec["auth_ok"]:
            send_response(conn, 403, [("Content-Type", "text/plain")], b"bad runner key", rec=rec)
            return True
        key = hdr(headers, "sec-websocket-key") or ""
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        conn.send((status_line(101) + "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Accept: {accept}\r\nX-Runner-Conn: {conn.id}\r\n\r\n").encode())
        if conn.buf:
            conn.send(conn.buf)
            conn.buf = b""
        while True:
            d = conn.recv()
            if not d:
                return False
            conn.send(d)

    if path == "/no-read":
        # a runner that never reads the request body (until told to stop)
        STATE.signal(q.get("name", "no-read")).wait(60)
        return False

    if path == "/answer-first":
        # answers before reading the request body and leaves the answer
        # unfinished (10 bytes announced, 5 sent) until told to stop
        conn.send(status_line(200).encode() + b"Content-Length: 10\r\n\r\nhalf-")
        STATE.signal(q.get("name", "answer-first")).wait(30)
        return False

    expect = (hdr(headers, "expect") or "").lower()
    if expect == "100-continue":
        conn.send(status_line(100).encode() + b"\r\n")

    sha, n, trailers, was_chunked = read_body(conn, headers, rec, tag)
    with STATE.lock:
        rec["body_sha256"], rec["body_len"], rec["trailers"], rec["chunked"] = sha, n, trailers, was_chunked

    head = method == "HEAD"
    keep = version == "HTTP/1.1" and "close" not in connection_tokens
    ka = [] if keep else [("Connection", "close")]

    if m and not rec["auth_ok"]:
        send_response(conn, 403, [("Content-Type", "text/plain")] + ka, b"bad runner key",
                      head=head, rec=rec)
        return keep

    if path == "/download":
        nbytes = int(q.get("n", "0"))
        data = random.Random(int(q.get("seed", "1"))).randbytes(nbytes)
        if q.get("chunked") == "1":
            send_response(conn, 200, [("Content-Type", "application/octet-stream"),
                                      ("Transfer-Encoding", "chunked")] + ka, b"", head=True, rec=rec)
            if not head:
                for i in range(0, nbytes, 65536):
                    part = data[i:i + 65536]
                    conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                conn.send(b"0\r\n\r\n")
        else:
            send_response(conn, 200, [("Content-Type", "application/octet-stream")] + ka, data,
                          head=head, rec=rec)
        return keep

    if path == "/sse":
        ev = STATE.signal(q.get("name", "sse"))
        send_response(conn, 200, [("Content-Type", "text/event-stream"),
                                  ("Cache-Control", "no-cache"),
                                  ("Transfer-Encoding", "chunked")] + ka, b"", head=True, rec=rec)
        if head:
            return keep
        first = b"id: 1\ndata: first\n\n"
        conn.send(f"{len(first):x}\r\n".encode() + first + b"\r\n")
        ev.wait(30)
        second = b"id: 2\ndata: second\n\n"
        conn.send(f"{len(second):x}\r\n".encode() + second + b"\r\n0\r\n\r\n")
        return keep

    if path == "/partial":
        nbytes = int(q.get("n", "1000"))
        ev = STATE.signal(q.get("name", "partial"))
        data = random.Random(int(q.get("seed", "1"))).randbytes(nbytes)
        send_response(conn, 200, [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(nbytes))] + ka, b"", head=True, rec=rec)
        conn.send(data[:nbytes // 2])
        ev.wait(30)
        conn.send(data[nbytes // 2:])
        return keep

    if path == "/redirect":
        code = int(q.get("status", "302"))
        send_response(conn, code, [("Location", q.get("to", "/")), ("Content-Type", "text/plain")] + ka,
                      b"redirecting", head=head, rec=rec)
        return keep

    if path.startswith("/status/"):
        code = int(path.split("/")[2])
        extra = [("ETag", '"v1"')] if code == 304 else []
        body = b"" if code in (204, 304) else echo_body(rec)
        send_response(conn, code, [("Content-Type", "application/json")] + extra + ka, body,
                      head=head, rec=rec)
        return keep

    if path == "/never":
        while conn.recv():
            pass
        return False

    if path == "/slow":
        STATE.signal(q.get("name", "slow")).wait(30)
        send_response(conn, 200, [("Content-Type", "application/json")] + ka, echo_body(rec),
                      head=head, rec=rec)
        return keep

    if path == "/close-after":
        send_response(conn, 200, [("Content-Type", "application/json")], echo_body(rec),
                      head=head, rec=rec)
        return False

    if path == "/abort":
        return False

    if path == "/garbage":
        conn.send(b"THIS IS NOT HTTP\r\n\r\n")
        return False

    if path == "/eof-body":
        # no Content-Length, no chunking: the body ends when the connection does
        nbytes = int(q.get("n", "100000"))
        data = random.Random(int(q.get("seed", "1"))).randbytes(nbytes)
        conn.send(status_line(200).encode() + b"Content-Type: application/octet-stream\r\n"
                  b"Connection: close\r\n\r\n" + data)
        return False

    if path == "/bighdr":
        nbytes = int(q.get("n", "20000"))
        send_response(conn, 200, [("Content-Type", "text/plain"), ("X-Big", "v" * nbytes)] + ka,
                      b"big-header", head=head, rec=rec)
        return keep

    if path == "/hopresp":
        send_response(conn, 200, [("Content-Type", "text/plain"),
                                  ("Connection", "X-Resp-Hop"),
                                  ("X-Resp-Hop", "must-go"),
                                  ("Proxy-Connection", "keep-alive"),
                                  ("X-Resp-Kept", "yes"),
                                  ("Set-Cookie", "a=1; Path=/"),
                                  ("Set-Cookie", "b=2; Path=/")], b"hop", head=head, rec=rec)
        return keep

    if path == "/stopped":
        # what a runner answers for a stopped sandbox (Daytona's wake branch)
        send_response(conn, 503, [("Content-Type", "text/plain"),
                                  ("X-Daytona-Sandbox-State", "stopped")] + ka,
                      b"stopped", head=head, rec=rec)
        return keep

    if path == "/setcookie":
        # the sandbox tries to set the proxy's own cookies, beside one of its own
        send_response(conn, 200, [("Content-Type", "text/plain"),
                                  ("Set-Cookie", "daytona-preview-page-accepted=true; Path=/; "
                                                 "Domain=proxy.test; Max-Age=86400"),
                                  ("Set-Cookie", "daytona-sandbox-auth-other=forged; Path=/"),
                                  ("set-cookie", " DAYTONA-SANDBOX-AUTH-x=forged"),
                                  ("Set-Cookie", "pkce_verifier=forged; Path=/"),
                                  ("Set-Cookie", "app=kept; Path=/"),
                                  ("Set-Cookie", "daytona-preview-page-accepted-not=kept")] + ka,
                      b"cookies", head=head, rec=rec)
        return keep

    if path == "/trailers":
        send_response(conn, 200, [("Content-Type", "text/plain"), ("Trailer", "X-Runner-Trailer"),
                                  ("Transfer-Encoding", "chunked")] + ka, b"", head=True, rec=rec)
        if not head:
            conn.send(b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Runner-Trailer: done\r\n\r\n")
        return keep

    send_response(conn, 200, [("Content-Type", "application/json")] + ka, echo_body(rec),
                  head=head, rec=rec)
    return keep


def serve_conn(sock, addr):
    conn = Conn(sock, addr)
    nreq = 0
    try:
        while True:
            line = conn.readline()
            if line in (b"\r\n", b"\n"):
                continue
            parts = line.rstrip(b"\r\n").decode("latin-1").split(" ")
            if len(parts) != 3:
                send_response(conn, 400, [("Connection", "close")], b"bad request line")
                break
            method, target, version = parts
            headers = []
            while True:
                h = conn.readline()
                if h in (b"\r\n", b"\n"):
                    break
                k, _, v = h.rstrip(b"\r\n").partition(b":")
                headers.append([k.decode("latin-1"), v.strip().decode("latin-1")])
            if target.startswith("/__ctl/"):
                control(conn, target)
                break
            nreq += 1
            if not handle_request(conn, nreq, method, target, version, headers):
                break
    except (Closed, OSError, ValueError):
        pass
    finally:
        conn.close()


def main():
    global KEY
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--key", default="runner-key")
    args = ap.parse_args()
    KEY = args.key
    serve_tcp(args.port, serve_conn)


if __name__ == "__main__":
    main()

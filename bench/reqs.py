#!/usr/bin/env python3
"""bench/reqs.py — send exactly N HTTP/1.1 GETs and read every answer whole.

Used by bench/callgrind.sh, where only the server's instructions are counted,
so this client's own speed does not matter; what matters is that the count is
exact and that every answer is complete (status 200, the whole body).

    reqs.py HOST PORT HOSTHEADER PATH N keepalive|close

keepalive: one connection for all N requests; close: one connection per
request with `Connection: close` (wrk's "new connection per request").
Exits non-zero on any error, after printing it.
"""
import socket
import sys


def read_answer(sock, buf):
    """Reads one response (Content-Length framed) from sock; returns the rest."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed before the head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError("status %r" % lines[0])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        raise RuntimeError("no Content-Length in %r" % head)
    while len(rest) < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("connection closed in the body")
        rest += chunk
    return rest[length:]


def main():
    host, port, hosthdr, path, n, mode = sys.argv[1:7]
    port, n = int(port), int(n)
    close = mode == "close"
    req = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench\r\nAccept: */*\r\n%s\r\n" % (
        path, hosthdr, "Connection: close\r\n" if close else "")).encode()
    sock = None
    buf = b""
    for _ in range(n):
        if sock is None:
            sock = socket.create_connection((host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
        sock.sendall(req)
        buf = read_answer(sock, buf)
        if close:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line for the calling script
        print("reqs.py: %s" % e, file=sys.stderr)
        sys.exit(1)

#!/usr/bin/python3
"""runner.py behind TLS: an https runner for the upstream-TLS tests.

    /usr/bin/python3 https_runner.py --cert CERT --key KEY [--port N] [--runner-key K]

Imports servers/runner.py unchanged and serves its handlers over TLS (the
handshake runs in the per-connection thread). Prints "PORT <n>" once
listening on 127.0.0.1. GET /__ctl/tls (over TLS, straight to this server)
answers {"ok": handshakes completed, "failed": handshakes that failed, e.g.
a client that rejected our certificate}; the other /__ctl/ endpoints are
runner.py's.
"""
import argparse
import json
import os
import ssl
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runner  # noqa: E402
from serving import serve_tcp  # noqa: E402

FAILED = [0]
OK = [0]
LOCK = threading.Lock()


def handle(ctx, sock, addr):
    try:
        s = ctx.wrap_socket(sock, server_side=True)
    except (ssl.SSLError, OSError):
        with LOCK:
            FAILED[0] += 1
        try:
            sock.close()
        except OSError:
            pass
        return
    with LOCK:
        OK[0] += 1
    runner.serve_conn(s, addr)


_control = runner.control


def control(conn, target):
    if target.startswith("/__ctl/tls"):
        with LOCK:
            body = json.dumps({"ok": OK[0], "failed": FAILED[0]}).encode()
        runner.send_response(conn, 200, [("Content-Type", "application/json"),
                                         ("Connection", "close")], body)
        return
    _control(conn, target)


runner.control = control


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--runner-key", default="runner-key")
    args = ap.parse_args()
    runner.KEY = args.runner_key
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    serve_tcp(args.port, lambda sock, addr: handle(ctx, sock, addr))


if __name__ == "__main__":
    main()

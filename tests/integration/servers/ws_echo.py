#!/usr/bin/python3
"""A WebSocket server for the WebSocket tests (tests/integration/test_ws_*.py).

Debian python3-websockets (legacy asyncio API), nothing from PyPI.

    /usr/bin/python3 ws_echo.py [--port N]

Prints "PORT <n>" on stdout once listening on 127.0.0.1. The proxy reaches it
in direct mode (sandbox direct=1, preview host {n}-{sandbox}.{domain}), so the
request path arrives unchanged.

WebSocket endpoints (path; query parameters in brackets)
  /echo (or any other path)   echo every message with its type (text/binary)
  /hello                      send "hello" first, then echo
  /close[?code=C]             on the first message, close with code C (4001)
                              and reason "server-bye"
  /burst?bytes=N               send N bytes as binary messages of 64 KiB (the
                              i-th filled with byte i % 256), then close the
                              TCP connection without a close frame
  /flood?bytes=N[&chunk=M]    send N bytes as binary messages of M bytes
                              (1 MiB), then the text message "done"; the
                              bytes sent so far are visible in /__ctl/stats
HTTP answers to an upgrade (no 101)
  /status/NNN                 status NNN with body "status NNN" (text/plain)

Control (plain HTTP GET, straight to this server, never through the proxy)
  /__ctl/stats   JSON {"tcp": TCP connections accepted, "upgrades": upgrade
                 requests seen (control requests excluded), "open": open
                 WebSockets, "opened": WebSockets opened, "closed": [{"path",
                 "code", "reason"}], "flood_sent": bytes, "headers": headers
                 of the last upgrade request}
  /__ctl/reset   zero everything
"""
import argparse
import http
import json
from urllib.parse import parse_qs, urlsplit

import websockets
import websockets.legacy.server as wsserver

from serving import announce_and_serve, run


class Stats:
    def __init__(self):
        self.reset()

    def reset(self):
        self.tcp = 0
        self.upgrades = 0
        self.open = 0
        self.opened = 0
        self.closed = []
        self.flood_sent = 0
        self.headers = {}
        self.path = None

    def as_dict(self):
        return {"tcp": self.tcp, "upgrades": self.upgrades, "open": self.open,
                "opened": self.opened, "closed": self.closed, "flood_sent": self.flood_sent,
                "headers": self.headers, "path": self.path}


STATS = Stats()


class Protocol(wsserver.WebSocketServerProtocol):
    def connection_made(self, transport):
        STATS.tcp += 1
        super().connection_made(transport)


def _http(status, body, ctype="text/plain"):
    body = body.encode() if isinstance(body, str) else body
    return (http.HTTPStatus(status), [("Content-Type", ctype), ("Content-Length", str(len(body))),
                                      ("Connection", "close")], body)


async def process_request(path, headers):
    p = urlsplit(path).path
    if p == "/__ctl/stats":
        return _http(200, json.dumps(STATS.as_dict()), "application/json")
    if p == "/__ctl/reset":
        STATS.reset()
        return _http(200, "{}", "application/json")
    STATS.upgrades += 1
    STATS.headers = {k.lower(): v for k, v in headers.raw_items()}
    STATS.path = path
    if p.startswith("/status/"):
        code = int(p[len("/status/"):])
        return _http(code, f"status {code}")
    return None


async def handler(ws, path):
    parts = urlsplit(path)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    STATS.open += 1
    STATS.opened += 1
    try:
        if parts.path == "/hello":
            await ws.send("hello")
        if parts.path == "/burst":
            total = int(q.get("bytes", 1 << 20))
            sent, i = 0, 0
            while sent < total:
                n = min(65536, total - sent)
                await ws.send(bytes([i & 0xFF]) * n)
                sent, i = sent + n, i + 1
            ws.transport.close()  # TCP FIN after the buffered bytes, no close frame
            return
        if parts.path == "/flood":
            total = int(q.get("bytes", 200 << 20))
            chunk = int(q.get("chunk", 1 << 20))
            block = bytes(range(256)) * (chunk // 256) + bytes(chunk % 256)
            sent = 0
            while sent < total:
                n = min(chunk, total - sent)
                await ws.send(block[:n])
                sent += n
                STATS.flood_sent = sent
            await ws.send("done")
            await ws.wait_closed()
            return
        async for msg in ws:
            if parts.path == "/close":
                await ws.close(int(q.get("code", 4001)), "server-bye")
                return
            await ws.send(msg)
    except websockets.ConnectionClosed:
        pass
    finally:
        STATS.open -= 1
        STATS.closed.append({"path": parts.path, "code": ws.close_code, "reason": ws.close_reason})


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    server = await websockets.serve(handler, "127.0.0.1", args.port, create_protocol=Protocol,
                                    process_request=process_request, max_size=None,
                                    ping_interval=None, ping_timeout=None, close_timeout=2,
                                    compression=None)
    await announce_and_serve(server)


if __name__ == "__main__":
    run(main)

#!/usr/bin/python3
"""A test-only web terminal, the stand-in for a sandbox's port 22222
(tests/integration/test_ws_terminal.py). Debian python3 + python3-websockets +
pty; nothing from PyPI.

    /usr/bin/python3 terminal.py [--port N] [--key RUNNER_KEY] [--shell /bin/sh]

Prints "PORT <n>" on stdout once listening on 127.0.0.1.

Paths are accepted bare (direct mode) or under the runner prefix
/sandboxes/{id}/toolbox/proxy/{port} (runner-path mode, where the request must
carry `X-Daytona-Authorization: Bearer {key}` if --key is given, else 403):
  /            terminal.html (xterm.js page)
  /xterm.js    tests/terminal/node_modules/@xterm/xterm/lib/xterm.js
  /xterm.css   tests/terminal/node_modules/@xterm/xterm/css/xterm.css
  /ws          WebSocket attached to a new shell on a pty: text messages from
               the client are keystrokes, pty output goes back as text
               messages; a text message "\\x00resize:COLS:ROWS" resizes.
  /__ctl/stats JSON {"sessions": shells started, "requests": [paths seen]}
"""
import argparse
import asyncio
import fcntl
import http
import json
import os
import pty
import re
import signal
import struct
import termios

import websockets
import websockets.legacy.server as wsserver

from serving import announce_and_serve, run

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))  # tests/
XTERM = os.path.join(ROOT, "terminal", "node_modules", "@xterm", "xterm")
PREFIX_RE = re.compile(r"^/sandboxes/[^/?]+/toolbox/proxy/\d+(?=/|\?|$)")

STATIC = {
    "/": (os.path.join(HERE, "terminal.html"), "text/html; charset=utf-8"),
    "/xterm.js": (os.path.join(XTERM, "lib", "xterm.js"), "text/javascript"),
    "/xterm.css": (os.path.join(XTERM, "css", "xterm.css"), "text/css"),
}

ARGS = None
STATS = {"sessions": 0, "requests": []}


def strip_prefix(path):
    m = PREFIX_RE.match(path)
    return (path[m.end():] or "/") if m else path


def _resp(status, body, ctype="text/plain"):
    body = body.encode() if isinstance(body, str) else body
    return (http.HTTPStatus(status), [("Content-Type", ctype), ("Content-Length", str(len(body))),
                                      ("Cache-Control", "no-store"), ("Connection", "close")], body)


async def process_request(path, headers):
    prefixed = PREFIX_RE.match(path) is not None
    app = strip_prefix(path)
    STATS["requests"].append(app)
    if prefixed and ARGS.key and headers.get("X-Daytona-Authorization") != f"Bearer {ARGS.key}":
        return _resp(403, "bad runner key")
    p = app.split("?", 1)[0]
    if p == "/__ctl/stats":
        return _resp(200, json.dumps(STATS), "application/json")
    if p == "/ws":
        return None  # WebSocket handshake
    if p in STATIC:
        fname, ctype = STATIC[p]
        try:
            with open(fname, "rb") as f:
                return _resp(200, f.read(), ctype)
        except OSError as e:
            return _resp(500, f"cannot read {fname}: {e}")
    return _resp(404, "not found")


def set_size(fd, cols, rows):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def shell_session(ws, path):
    STATS["sessions"] += 1
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "TERM": "xterm-256color", "PS1": "$ ",
           "HOME": "/tmp", "LANG": "C.UTF-8", "ENV": ""}
    pid, fd = pty.fork()
    if pid == 0:  # child: the shell
        try:
            os.execve(ARGS.shell, [ARGS.shell, "-i"], env)
        finally:
            os._exit(127)
    set_size(fd, 80, 24)
    loop = asyncio.get_running_loop()
    out = asyncio.Queue()

    def readable():
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        out.put_nowait(data)
        if not data:
            loop.remove_reader(fd)

    loop.add_reader(fd, readable)

    async def pump_out():
        while True:
            data = await out.get()
            if not data:
                await ws.close(1000, "shell exited")
                return
            await ws.send(data.decode("utf-8", "replace"))

    pumper = asyncio.ensure_future(pump_out())
    try:
        async for msg in ws:
            if isinstance(msg, bytes):
                msg = msg.decode("utf-8", "replace")
            if msg.startswith("\x00resize:"):
                _, cols, rows = msg.split(":")
                set_size(fd, int(cols), int(rows))
                continue
            os.write(fd, msg.encode())
    except websockets.ConnectionClosed:
        pass
    finally:
        pumper.cancel()
        try:
            loop.remove_reader(fd)
        except (ValueError, OSError):
            pass
        try:
            os.kill(pid, signal.SIGHUP)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        os.close(fd)


async def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--key", default="")
    ap.add_argument("--shell", default="/bin/sh")
    ARGS = ap.parse_args()
    server = await websockets.serve(shell_session, "127.0.0.1", ARGS.port,
                                    process_request=process_request, ping_interval=None,
                                    compression=None, max_size=1 << 20)
    await announce_and_serve(server)


if __name__ == "__main__":
    run(main)

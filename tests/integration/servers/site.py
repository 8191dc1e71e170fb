#!/usr/bin/python3
"""A tiny sandbox web app for the browser tests, plus the harness that starts it
and a real redis-server (stdlib only).

As a server:

    /usr/bin/python3 site.py NAME:PORT [NAME:PORT ...]      (PORT 0 = any free port)

listens on 127.0.0.1 on every PORT and prints "PORTS NAME=port ..." once ready.
Each listener is one sandbox app named NAME. It serves both direct mode (the
proxy connects to the app's port, path unchanged) and runner path mode
(/sandboxes/{id}/toolbox/proxy/{port}{app} is stripped to {app}).

App endpoints ({app})
  /api/data[?own_cors=1]   JSON: app name, method, path, the Cookie header it got,
                           sandbox id of a runner path. own_cors=1 adds the app's
                           own `Access-Control-Allow-Origin: *` and
                           `Access-Control-Allow-Credentials: false` (which the
                           proxy must replace, never duplicate).
  OPTIONS (any path)       200 with `X-Site-Saw: OPTIONS` (a preflight that the proxy
                           should have answered itself reached the app)
  anything else            an HTML page: <h1 id="app">NAME</h1> and the request
                           as JSON in <pre id="seen">
Control (never recorded): /__ctl/requests (JSON list), /__ctl/reset, /__ctl/ping.

As a module (tests import it as servers.site): Site (starts the server) and
RedisServer (a throwaway redis-server), built on tests/integration/helpers.py.
"""
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INTEGRATION = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if INTEGRATION not in sys.path:
    sys.path.insert(0, INTEGRATION)
from helpers import Resp, free_port, redis_ping, start_helper, stop_proc  # noqa: E402

PREFIX_RE = re.compile(r"^/sandboxes/([^/?]+)/toolbox/proxy/([0-9]+)(.*)$", re.S)

LOCK = threading.Lock()
RECORDS = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sandbox-site/1"

    def log_message(self, *a):
        pass

    def _send(self, code, ctype, body, extra=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        target = self.path
        if target.startswith("/__ctl/"):
            return self._control(target)
        sandbox = None
        m = PREFIX_RE.match(target)
        if m:
            sandbox, target = m.group(1), m.group(3) or "/"
            if not target.startswith("/"):
                target = "/" + target
        path, _, query = target.partition("?")
        rec = {
            "app": self.server.app_name,
            "port": self.server.server_address[1],
            "method": self.command,
            "target": target,
            "path": path,
            "sandbox": sandbox,
            "cookie": self.headers.get("Cookie"),
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", "replace"),
        }
        with LOCK:
            RECORDS.append(rec)
        if self.command == "OPTIONS":
            return self._send(200, "text/plain", b"app saw OPTIONS\n", [("X-Site-Saw", "OPTIONS")])
        if path == "/api/data":
            extra = []
            if "own_cors=1" in query:
                extra = [("Access-Control-Allow-Origin", "*"),
                         ("Access-Control-Allow-Credentials", "false")]
            return self._send(200, "application/json", json.dumps(rec).encode(), extra)
        name = html.escape(self.server.app_name)
        page = (
            "<!doctype html><html><head><meta charset=utf-8><title>Sandbox app " + name +
            "</title><style>body{font-family:sans-serif;margin:2rem;background:#eefaf0}"
            "h1{color:#176b2c}pre{background:#fff;padding:1rem;white-space:pre-wrap}</style>"
            "</head><body><h1 id=app>" + name + "</h1><p>Served by the test sandbox app on port " +
            str(rec["port"]) + ".</p><pre id=seen>" + html.escape(json.dumps(rec)) +
            "</pre></body></html>\n")
        return self._send(200, "text/html; charset=utf-8", page.encode())

    def _control(self, target):
        if target.startswith("/__ctl/requests"):
            with LOCK:
                data = json.dumps(RECORDS).encode()
        elif target.startswith("/__ctl/reset"):
            with LOCK:
                RECORDS.clear()
            data = b"{}"
        else:
            data = b'{"pong":true}'
        self._send(200, "application/json", data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle


class AppServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv):
    servers = []
    for spec in argv:
        name, _, port = spec.rpartition(":")
        srv = AppServer(("127.0.0.1", int(port)), Handler)
        srv.app_name = name
        servers.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    sys.stdout.write("PORTS " + " ".join(f"{s.app_name}={s.server_address[1]}" for s in servers)
                     + "\n")
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


# ----------------------------------------------------------- test harness --

class Site:
    """Starts site.py with the given {name: port} (port 0 = free); .ports maps
    name -> port. Use as a context manager or call stop()."""

    def __init__(self, apps):
        args = [f"{n}:{p}" for n, p in apps.items()]
        self.proc, line = start_helper(os.path.abspath(__file__), *args, ready=b"PORTS ")
        self.ports = {k: int(v) for k, v in (kv.split("=") for kv in line.decode().split()[1:])}
        self.ctl_port = next(iter(self.ports.values()))

    def _ctl(self, what):
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ctl_port}/__ctl/{what}",
                                    timeout=5) as r:
            return json.loads(r.read())

    def requests(self):
        return self._ctl("requests")

    def reset(self):
        self._ctl("reset")

    def stop(self):
        stop_proc(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


class RedisServer:
    """A throwaway redis-server on a free port (no persistence)."""

    def __init__(self):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.dir = tempfile.mkdtemp(prefix="browser-redis-")
        self.port = free_port()
        self.log = open(os.path.join(self.dir, "redis.log"), "wb")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", self.dir],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not redis_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)  # poll interval only

    def client(self):
        return Resp(self.port)

    def stop(self):
        stop_proc(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])

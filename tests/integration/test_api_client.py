"""The Daytona API client (issue 10, DAYTONA-API.md §2 C1 and §3), through its
first user: GET {api}/config, read in the background at start.

A scripted stub plays the API: each call takes the next step of a script
(a good answer, a JSON or HTML error, a slow answer, a reset, garbage, a huge
body). The stub records every call with its time and headers, so the tests
assert how many attempts were made, how far apart, and with what identity.
"""
import json
import socket
import struct
import threading
import time

import pytest

from helpers import wait_until

CONFIG = {"version": "0.190.0", "oidc": {"issuer": "http://idp.test/", "clientId": "proxy-test",
                                         "audience": "daytona"},
          "linkedAccountsEnabled": False, "announcements": {}, "proxyTemplateUrl": "x",
          "proxyToolboxUrl": "x", "defaultSnapshot": "x", "dashboardUrl": "x",
          "maxAutoArchiveInterval": 0, "maintananceMode": False, "environment": "test"}


def answer(status, body, ctype="application/json", extra=b""):
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    return (b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (status, ctype.encode(), len(body), extra)) + body


GOOD = ("send", answer(200, CONFIG))
JSON503 = ("send", answer(503, {"statusCode": 503, "error": "x", "message": "down",
                                "path": "/api/config", "timestamp": "2026-12-04T00:00:00Z"}))
JSON500 = ("send", answer(500, {"statusCode": 500, "message": "boom"}))
HTML502 = ("send", answer(502, "<html>Bad Gateway</html>", "text/html"))


class StubAPI:
    def __init__(self, script):
        self.script = list(script)
        self.calls = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _next(self):
        with self.lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def _serve(self, c):
        conn_id = c.fileno()
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (l.partition(":") for l in lines[1:])}
                with self.lock:
                    self.calls.append({"t": time.monotonic(), "method": method, "target": target,
                                       "headers": headers, "conn": conn_id})
                kind, data = self._next()
                if kind == "send":
                    c.sendall(data)
                elif kind == "slow":
                    time.sleep(data)
                    c.sendall(answer(200, CONFIG))
                elif kind == "reset":
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    c.close()
                    return
                elif kind == "close":
                    c.sendall(data)
                    c.close()
                    return
        except OSError:
            return
        finally:
            c.close()

    def ncalls(self):
        with self.lock:
            return len(self.calls)

    def close(self):
        self.sock.close()


@pytest.fixture
def stub():
    made = []

    def make(script):
        s = StubAPI(script)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def api_proxy(proxy, stub_api, **settings):
    s = {"api_url": f"http://127.0.0.1:{stub_api.port}/api", "api_key": "pk-S3CRET"}
    s.update(settings)
    return proxy(settings=s)


def read_line(p, needle, timeout=10):
    return wait_until(lambda: next((l for l in p.log_lines() if needle in l), None),
                      timeout=timeout, what=f"log line {needle!r}")


def test_config_read_with_proxy_identity(proxy, stub):
    api = stub([GOOD])
    p = api_proxy(proxy, api)
    line = read_line(p, "api: configuration read")
    assert "API 0.190.0, 1 attempt)" in line, line
    call = api.calls[0]
    assert call["method"] == "GET" and call["target"] == "/api/config"
    assert call["headers"]["authorization"] == "Bearer pk-S3CRET"
    assert call["headers"]["host"] == f"127.0.0.1:{api.port}"
    assert call["headers"]["user-agent"].startswith("preview-proxy/")
    assert "x-forwarded-for" not in call["headers"]
    assert "pk-S3CRET" not in p.log()          # the key never reaches a log
    assert p.health_ok()


def test_json_503_is_retried_after_150_ms(proxy, stub):
    api = stub([JSON503, GOOD])
    p = api_proxy(proxy, api)
    assert "2 attempts" in read_line(p, "api: configuration read")
    assert api.ncalls() == 2
    gap = api.calls[1]["t"] - api.calls[0]["t"]
    assert 0.13 <= gap < 1.0, gap


def test_html_502_twice_then_success_backs_off_150_then_300(proxy, stub):
    api = stub([HTML502, HTML502, GOOD])
    p = api_proxy(proxy, api)
    assert "3 attempts" in read_line(p, "api: configuration read")
    t = [c["t"] for c in api.calls]
    assert 0.13 <= t[1] - t[0] < 0.6 and 0.28 <= t[2] - t[1] < 0.9, t


def test_json_500_is_not_retried_within_a_round(proxy, stub):
    api = stub([JSON500, JSON500, GOOD])
    p = api_proxy(proxy, api)
    line = read_line(p, "api: GET /config answered 500")
    assert "(1 attempts)" in line, line
    # the next round, a second later, is a new call; the third succeeds
    read_line(p, "api: configuration read", timeout=15)
    t = [c["t"] for c in api.calls]
    assert len(t) == 3 and t[1] - t[0] >= 0.9, t


def test_timeouts_reset_and_garbage_are_retried(proxy, stub):
    api = stub([("slow", 3), ("reset", None), ("close", b"NOT HTTP AT ALL\r\n\r\n"), GOOD])
    p = api_proxy(proxy, api, api_timeout=1)
    line = read_line(p, "api: GET /config failed", timeout=15)
    assert "3 attempts" in line, line
    assert api.ncalls() == 3
    assert p.health_ok()                       # the loop never waited on the API
    read_line(p, "api: configuration read", timeout=15)


def test_huge_and_unusable_answers_are_errors_not_crashes(proxy, stub):
    huge = ("send", b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n" + b"{" * 65536)
    chunked_huge = ("close", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"100000\r\n" + b"x" * 0x100000 + b"\r\n" + b"100000\r\n" + b"x" * 0x100000)
    not_config = ("send", answer(200, {"version": 1}))
    api = stub([huge, chunked_huge, not_config, GOOD])
    p = api_proxy(proxy, api)
    read_line(p, "api: GET /config failed")             # the 5 MB one: not retried
    read_line(p, "unusable body", timeout=15)
    read_line(p, "api: configuration read", timeout=20)
    assert p.health_ok()


def test_chunked_keepalive_answers_reuse_the_connection(proxy, stub):
    body = json.dumps(CONFIG).encode()
    chunked = ("send", b"HTTP/1.1 503 X\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\n0\r\n\r\n" % (len(b'{"statusCode":503}'), b'{"statusCode":503}'))
    ok = ("send", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
          + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    api = stub([chunked, ok])
    p = api_proxy(proxy, api)
    assert "2 attempts" in read_line(p, "api: configuration read")
    assert api.calls[0]["conn"] == api.calls[1]["conn"]  # kept alive, taken from the pool


def test_api_down_does_not_stop_the_proxy(proxy, dead_port):
    p = proxy(settings={"api_url": f"http://127.0.0.1:{dead_port}/api", "api_key": "pk"})
    line = read_line(p, "api: GET /config failed")
    assert "connection refused" in line and "3 attempts" in line, line
    assert p.health_ok()


def test_bad_api_url_and_timeout_rejected(proxy_bin, tmp_path):
    import subprocess
    for bad in ("api_url ftp://x/api", "api_url http://h/api?x=1", "api_timeout 0"):
        conf = tmp_path / "bad.conf"
        conf.write_text(f"listen 127.0.0.1:1\n{bad}\n")
        r = subprocess.run([proxy_bin, "-t", "-c", str(conf)], capture_output=True, text=True,
                           timeout=10)
        assert r.returncode == 1, (bad, r.stdout, r.stderr)

"""The web terminal end to end: headless Chromium opens a signed preview URL for
port 22222, the page (xterm.js) opens a WebSocket through the proxy to a real
shell on a pty (servers/terminal.py), a command is typed and its output read
back from the page.

Needs Debian's /usr/bin/chromium, node, and tests/terminal/node_modules
(playwright-core, @xterm/xterm): run tests/terminal/setup.sh. Missing pieces
make the test FAIL, never skip. Standalone Redis mode (a redis-server per test,
see redisfix.py); the terminal service is the sandbox's runner in runner-path
mode (direct=0), so port 22222 on this machine need not be free.
"""
import json
import os
import shutil
import subprocess

import pytest
import requests

from helpers import BASE_DOMAIN, RUNNER_KEY, start_server, stop_proc
from redisfix import *  # noqa: F401,F403  (redis_server, rdb, rproxy, ...)
from redisfix import add_sandbox, add_signed_token

HERE = os.path.dirname(os.path.abspath(__file__))
TERMDIR = os.path.join(os.path.dirname(HERE), "terminal")
PYTHON = "/usr/bin/python3"
DOMAIN = "proxy.localhost"   # Chromium resolves *.localhost to loopback
SETUP_HINT = "run tests/terminal/setup.sh (installs chromium, node and the npm packages)"


def check_prereqs():
    missing = []
    if not os.access("/usr/bin/chromium", os.X_OK):
        missing.append("/usr/bin/chromium")
    if shutil.which("node") is None:
        missing.append("node")
    for rel in ("node_modules/playwright-core/package.json",
                "node_modules/@xterm/xterm/lib/xterm.js",
                "node_modules/@xterm/xterm/css/xterm.css"):
        if not os.path.isfile(os.path.join(TERMDIR, rel)):
            missing.append(f"tests/terminal/{rel}")
    if missing:
        pytest.fail(f"web terminal test prerequisites missing: {', '.join(missing)}; {SETUP_HINT}",
                    pytrace=False)


class Terminal:
    def __init__(self, proc, port):
        self.proc = proc
        self.port = port

    def stats(self):
        return requests.get(f"http://127.0.0.1:{self.port}/__ctl/stats", timeout=5).json()


@pytest.fixture
def terminal():
    try:
        proc, port = start_server("terminal.py", "--key", RUNNER_KEY)
    except RuntimeError as e:
        pytest.fail(str(e))
    yield Terminal(proc, port)
    stop_proc(proc)


def run_browser(url, typed="echo ready-$((6*7))", expect="ready-42", timeout_ms=30000):
    env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
    for k in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    try:
        cp = subprocess.run(["node", os.path.join(TERMDIR, "terminal.mjs"), url, typed, expect,
                             str(timeout_ms)], cwd=TERMDIR, env=env, capture_output=True,
                            timeout=timeout_ms / 1000 * 3 + 30)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"terminal.mjs did not finish: {e}")
    out = cp.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        res = json.loads(out[-1])
    except (IndexError, ValueError):
        pytest.fail(f"terminal.mjs exited {cp.returncode} without a result:\n"
                    f"stdout: {cp.stdout[-2000:]!r}\nstderr: {cp.stderr[-3000:]!r}\n{SETUP_HINT}")
    return cp.returncode, res


def test_web_terminal_signed_url_in_chromium(terminal, rproxy, rdb):
    check_prereqs()
    sid = "termsbx-4c1f"
    add_sandbox(rdb, sid, f"http://127.0.0.1:{terminal.port}", public=0, direct=0)
    token = "sgnterm" + os.urandom(6).hex()
    add_signed_token(rdb, 22222, token, sid)
    p = rproxy(settings={"domains": f"{BASE_DOMAIN} {DOMAIN}"})
    url = f"http://22222-{token}.{DOMAIN}:{p.port}/"

    rc, res = run_browser(url)
    detail = json.dumps({k: res.get(k) for k in ("error", "status", "wsOpen", "sawPrompt",
                                                  "responses", "console")}, indent=1)
    assert res["status"] == 200, detail
    assert res["wsOpen"], f"the page's WebSocket did not open through the proxy: {detail}"
    assert res["sawPrompt"], f"no shell prompt on the page: {detail}\ntext: {res.get('text')!r}"
    assert res["sawExpectInBuffer"], f"ready-42 not in the terminal buffer: {res.get('text')!r}\n{detail}"
    assert res["sawExpectInDom"], f"ready-42 not in the xterm DOM rows: {res.get('dom')!r}"
    assert rc == 0
    st = terminal.stats()
    assert st["sessions"] == 1, st
    for path in ("/", "/xterm.js", "/xterm.css", "/ws"):
        assert path in st["requests"], st
    # the typed command itself was echoed by the pty, not "ready-42" typed in
    assert "echo ready-$((6*7))" in res["text"]


def test_terminal_port_needs_auth_on_public_sandbox(terminal, rproxy, rdb):
    """22222 is reserved: a public sandbox still answers 401 to an
    unauthenticated page load and WebSocket upgrade, and to a signed token
    issued for another port; the terminal service never sees them."""
    sid = "termpub-9a0b"
    add_sandbox(rdb, sid, f"http://127.0.0.1:{terminal.port}", public=1, direct=0)
    other_token = "sgnother" + os.urandom(6).hex()
    add_signed_token(rdb, 3000, other_token, sid)
    p = rproxy(settings={"domains": f"{BASE_DOMAIN} {DOMAIN}"})
    ws_headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    for label in (sid, other_token):
        h = f"22222-{label}.{DOMAIN}:{p.port}"
        r = p.get("/", host=h, headers={"Accept": "text/html", "Sec-Fetch-Mode": "navigate"})
        assert r.status_code == 401, (label, r.status_code, r.text[:300])
        r = p.get("/ws", host=h, headers=ws_headers)
        assert r.status_code == 401, (label, r.status_code, r.text[:300])
    st = terminal.stats()
    assert st["requests"] == ["/__ctl/stats"], st  # only this control request
    # sanity: a non-reserved port of the same public sandbox needs nothing
    r = p.get("/", host=f"3000-{sid}.{DOMAIN}:{p.port}")
    assert r.status_code == 200 and "xterm.js" in r.text

"""A real browser through the proxy in API mode (issue 10 "Tests", C5, C13,
DAYTONA-API.md §5-6): headless Debian Chromium driven by playwright-core
(tests/browser/api_flow.mjs) against a proxy whose authority is the Daytona
API stand-in (servers/api.py).

Flow: the private sandbox sb-priv opened from its signed preview URL
(http://3000-abc123.proxy.localhost:<port>/index.html, token abc123 -> sb-priv
through C5) with the organisation's warning flag on (C13) shows the warning
page (tests/artifacts/api-warning.png) -> "Continue to the preview" -> the
sandbox's HTML page loads with its stylesheet, script, image and a fetch()
(tests/artifacts/api-page.png) -> the signed token is revoked at the API,
and the test waits (bounded) until the proxy refuses the signed host to a
client without the cookie (the proxy keeps a C5 answer briefly for single
flight, auth/lookup.c API_SIGNED_TTL) -> a reload still loads the page and
every sub-resource from the auth cookie alone, with no API call for
credentials (tests/artifacts/api-reload.png) -> the revoked URL in a context
without the auth cookie gets 401 (tests/artifacts/api-revoked.png).

The page comes from a small runner stand-in defined here (HtmlRunner): it
serves HTML under /sandboxes/sb-priv/toolbox/proxy/3000/ and checks the
runner key. The API stand-in's runners take their proxyUrl from --runner-url
at startup, so this module starts its own api.py pointed at HtmlRunner
rather than using apifix's shared one.

Needs /usr/bin/chromium, node and tests/browser/node_modules (run
tests/browser/setup.sh); without them this test FAILS, it does not skip.
Chromium resolves *.localhost to loopback, so the base domain is proxy.localhost.
"""
import http.server
import json
import os
import select
import shutil
import subprocess
import threading
import time

import pytest
import requests

from apifix import API_CLIENT_SECRET, API_PROXY_KEY, API_RUNNER_KEY, ApiClient
from helpers import start_server, stop_proc, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BROWSER_DIR = os.path.join(REPO, "tests", "browser")
ARTIFACTS = os.path.join(REPO, "tests", "artifacts")
CHROMIUM = "/usr/bin/chromium"
DOMAIN = "proxy.localhost"
SANDBOX, TOKEN, PORT = "sb-priv", "abc123", 3000      # the stand-in's fixture
PREFIX = f"/sandboxes/{SANDBOX}/toolbox/proxy/{PORT}"
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/156.0.0.0 Safari/537.36")
SETUP_HINT = "run tests/browser/setup.sh (as root) to install Chromium and playwright-core"
SHOTS = ("api-warning.png", "api-page.png", "api-reload.png", "api-revoked.png")
SUBRESOURCES = ("/assets/style.css", "/assets/app.js", "/assets/pic.svg", "/assets/data.json")

INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>API mode sandbox app</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="assets/style.css"></head>
<body>
<h1 id="app">api-app</h1>
<p>served: <span id="served">{served}</span></p>
<p>script: <span id="js">not run</span></p>
<p>fetch: <span id="fetch">pending</span></p>
<p><img id="img" src="assets/pic.svg" width="160" height="80" alt="picture"></p>
<script src="assets/app.js"></script>
</body></html>
"""
ASSETS = {
    "/assets/style.css": ("text/css; charset=utf-8",
                          "body { background: #e8f4ea; font-family: sans-serif; }\n"
                          "h1 { color: rgb(26, 94, 42); }\n"),
    "/assets/app.js": ("text/javascript; charset=utf-8",
                       "document.getElementById('js').textContent = 'js-ok';\n"
                       "fetch('assets/data.json').then(r => r.json())\n"
                       "  .then(j => { document.getElementById('fetch').textContent = j.value; })\n"
                       "  .catch(e => { document.getElementById('fetch').textContent ="
                       " 'fetch-failed ' + e; });\n"),
    "/assets/pic.svg": ("image/svg+xml",
                        '<svg xmlns="http://www.w3.org/2000/svg" width="160" height="80">'
                        '<rect width="160" height="80" fill="#2a7"/>'
                        '<text x="20" y="48" font-size="22" fill="#fff">image ok</text></svg>'),
    "/assets/data.json": ("application/json", json.dumps({"value": "fetch-ok"})),
}
RUNNER_CSS_COLOR = "rgb(26, 94, 42)"


class HtmlRunner:
    """A runner stand-in that serves an HTML page with sub-resources under
    PREFIX, for requests carrying exactly one
    `X-Daytona-Authorization: Bearer rk-1` (else 403); anything else is 404.
    Records every request (path after PREFIX, headers) for the test."""

    def __init__(self):
        self.lock = threading.Lock()
        self.records = []
        self.served = 0
        self.leave_to = None  # where /leave redirects (another origin), when set
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                keys = self.headers.get_all("X-Daytona-Authorization") or []
                rec = {"target": self.path, "headers": list(self.headers.items()),
                       "auth_ok": keys == [f"Bearer {API_RUNNER_KEY}"]}
                with outer.lock:
                    outer.records.append(rec)
                if not rec["auth_ok"]:
                    return self.answer(403, "text/plain", "bad runner key")
                if not self.path.startswith(PREFIX + "/"):
                    return self.answer(404, "text/plain", "not under the preview prefix")
                app = self.path[len(PREFIX):].split("?")[0]
                if app == "/leave" and outer.leave_to:
                    self.send_response(302)
                    self.send_header("Location", outer.leave_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if app in ("/", "/index.html"):
                    with outer.lock:
                        outer.served += 1
                        n = outer.served
                    return self.answer(200, "text/html; charset=utf-8", INDEX.format(served=n))
                if app in ASSETS:
                    return self.answer(200, *ASSETS[app])
                return self.answer(404, "text/plain", "no such file")

            def answer(self, status, ctype, body):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests(self):
        with self.lock:
            return [dict(r) for r in self.records]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def require_browser():
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(CHROMIUM)
    node = shutil.which("node")
    if node is None:
        missing.append("node")
    if not os.path.isfile(os.path.join(BROWSER_DIR, "node_modules", "playwright-core",
                                       "package.json")):
        missing.append("tests/browser/node_modules/playwright-core")
    if missing:
        pytest.fail(f"browser test dependencies missing: {', '.join(missing)}; {SETUP_HINT}",
                    pytrace=False)
    return node


@pytest.fixture
def html_api():
    """An api.py whose runners (r1, r-vm) point at an HtmlRunner; yields (ApiClient, runner)."""
    runner = HtmlRunner()
    proc = None
    try:
        proc, port = start_server("api.py", "--runner-url", runner.url,
                                  "--runner-key", API_RUNNER_KEY, "--proxy-key", API_PROXY_KEY,
                                  "--client-secret", API_CLIENT_SECRET,
                                  "--proxy-domain", DOMAIN)
        api = ApiClient(port, proc=proc)
        wait_until(api.ping, timeout=10, what="api.py /_ctl/ping")
        yield api, runner
    finally:
        if proc is not None:
            stop_proc(proc)
        runner.stop()


class Elsewhere:
    """Another origin: any GET gets a page with <h1 id="app">elsewhere</h1>."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                data = b'<!doctype html><title>elsewhere</title><h1 id="app">elsewhere</h1>'
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def run_flow(node, config, on_pause, timeout=120):
    proc = subprocess.Popen([node, os.path.join(BROWSER_DIR, "api_flow.mjs"), json.dumps(config)],
                            cwd=BROWSER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    buf = b""
    result = None
    try:
        while result is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"api_flow.mjs timed out; stdout so far {buf[-2000:]!r}")
            r, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
            if not r:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(b"PAUSE "):
                    on_pause(line[6:].decode())
                    proc.stdin.write(b"go\n")
                    proc.stdin.flush()
                elif line.startswith(b"RESULT "):
                    result = json.loads(line[7:])
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    if result is None:
        raise AssertionError(f"api_flow.mjs ended without a RESULT (exit {proc.returncode}); "
                             f"stderr: {proc.stderr.read()[-3000:]!r}")
    return result


def cookie_names(headers):
    out = []
    for k, v in headers:
        if k.lower() == "cookie":
            out += [c.split("=")[0].strip() for c in v.split(";") if c.strip()]
    return out


def brief(calls):
    return [(c["route"], c["method"], c["path"], c["status"]) for c in calls]


def test_chromium_api_mode_signed_url_warning_subresources_cookie_reload(proxy, html_api):
    node = require_browser()
    api, runner = html_api
    api.org("o1", True)                        # the organisation's preview warning (C13)
    # proxy.test too: the fixture's readiness probe asks /health with Host proxy.test.
    px = proxy(settings={"domains": f"{DOMAIN} proxy.test", "preview_warning": "on",
                         "api_timeout": "2",
                         "cookie_secret": "browser-api-cookie-secret-0123456789"},
               env=api.proxy_env(), default_sandboxes_too=False)
    signed = f"http://{PORT}-{TOKEN}.{DOMAIN}:{px.port}/index.html"
    for f in SHOTS:
        try:
            os.unlink(os.path.join(ARTIFACTS, f))
        except FileNotFoundError:
            pass

    marks = {}

    def refused_without_cookie():
        """A non-browser client (no warning page) without any cookie."""
        r = requests.get(f"http://127.0.0.1:{px.port}/index.html", timeout=5,
                         headers={"Host": f"{PORT}-{TOKEN}.{DOMAIN}:{px.port}",
                                  "User-Agent": "curl/8.5.0", "Accept": "application/json"})
        marks.setdefault("probes", []).append(r.status_code)
        return r.status_code if r.status_code != 200 else None

    def on_pause(name):
        if name == "revoked":
            marks["before_revoke"] = len(api.log())
            api.revoke_token(TOKEN, PORT)
            t0 = time.monotonic()
            # Until the proxy asks C5 again, the revoked host still resolves; the
            # reload must be authenticated by nothing but the cookie.
            marks["probe_status"] = wait_until(refused_without_cookie, timeout=20, interval=0.25,
                                               what="the revoked signed host refused "
                                                    "without a cookie")
            marks["revocation_s"] = time.monotonic() - t0
            marks["before_reload"] = len(api.log())
            marks["runner_before_reload"] = len(runner.requests())
        else:
            assert name == "reloaded", name
            marks["after_reload"] = len(api.log())

    res = run_flow(node, {"signedUrl": signed, "artifacts": ARTIFACTS, "userAgent": UA},
                   on_pause)
    log = api.log()
    seen = runner.requests()

    problems = []

    def check(cond, what, detail=None):
        if not cond:
            problems.append(f"- {what}" + (f": {json.dumps(detail)[:1500]}"
                                             if detail is not None else ""))

    diag = ("\nsteps: " + json.dumps(res["steps"])[:6000] + "\nconsole: " +
            json.dumps(res["console"])[:1500] + "\npage errors: " + json.dumps(res["pageErrors"])
            + "\nfailed requests: " + json.dumps(res["failedRequests"])[:1500] +
            "\nAPI calls: " + json.dumps(brief(log))[:3000] + "\nmarks: " + json.dumps(marks) +
            "\nproxy log tail:\n" +
            px.log()[-3000:])
    assert not res["errors"], "api_flow.mjs threw:\n" + "\n".join(res["errors"]) + diag
    s = res["steps"]

    # 1. The warning page, because the organisation's flag is on.
    w = s["warning"]
    check(w["status"] == 200 and "Continue to the preview" in w["text"],
          "the signed URL shows the warning page (200)", w)
    check(w["appName"] is None, "the sandbox page is not shown behind the warning", w)
    check(signed in w["text"], "the warning page shows the target URL", w["text"])
    check((w["formAction"] or "").startswith("/accept-daytona-preview-warning"),
          "the form posts to /accept-daytona-preview-warning", w["formAction"])
    c13 = [c for c in log if c["route"] == "C13"]
    check(c13 and c13[0]["status"] == 200 and f"port={PORT}" in c13[0]["target"],
          "the proxy asked the API for the organisation's warning flag (C13)", brief(c13))

    # 2. Click -> the page and every sub-resource, through the runner's prefix.
    a = s["afterClick"]
    check(a["appName"] == "api-app", "the button leads to the sandbox's page", a)
    check(a["url"] == signed, "and to the original signed URL", a["url"])
    posts = [n for n in a["responses"] if n["nav"] and n["method"] == "POST"]
    check(len(posts) == 1 and posts[0]["status"] == 200,
          "the click POSTs once to the accept endpoint (200, a meta refresh)", a["responses"])
    sub = a["sub"]
    check(sub["js"] == "js-ok", "the page's script ran (app.js loaded)", sub)
    check(sub["fetch"] == "fetch-ok", "the page's fetch() of data.json succeeded", sub)
    check(sub["imgComplete"] and sub["imgWidth"] == 160, "the image loaded", sub)
    check(sub["cssColor"] == RUNNER_CSS_COLOR, "the stylesheet applied", sub)
    for path in SUBRESOURCES:
        got = [r for r in a["responses"] if r["url"].split("?")[0].endswith(path)]
        check(got and all(r["status"] == 200 for r in got),
              f"{path} answered 200 to the browser", got)
    auth_cookie = f"daytona-sandbox-auth-{TOKEN}"
    check(any(c["name"] == auth_cookie and c["httpOnly"] for c in s["cookiesAfterClick"]),
          "the signed URL's auth cookie (HttpOnly) is set", s["cookiesAfterClick"])
    check(any(c["name"] == "daytona-preview-page-accepted" for c in s["cookiesAfterClick"]),
          "the warning's accepted cookie is set", s["cookiesAfterClick"])
    before = log[:marks.get("before_revoke", 0)]
    c5_before = [c for c in before if c["route"] == "C5"]
    check(len(c5_before) == 1 and c5_before[0]["status"] == 200
          and c5_before[0]["path"] == f"/api/preview/{TOKEN}/{PORT}/sandbox-id",
          "one C5 call resolved the signed host; the sub-resources used the cookie", brief(before))

    # 3. Token revoked -> reload from the auth cookie alone.
    r = s["reload"]
    check(r["status"] == 200 and r["appName"] == "api-app",
          "after the revocation a reload still shows the sandbox's page (auth cookie)", r)
    check("Continue to the preview" not in r["text"], "without the warning page", r["text"])
    check(r["sub"]["served"] not in (None, a["sub"]["served"]),
          "the reload fetched the page again from the runner", [a["sub"], r["sub"]])
    sub = r["sub"]
    check(sub["js"] == "js-ok" and sub["fetch"] == "fetch-ok" and sub["imgComplete"]
          and sub["imgWidth"] == 160 and sub["cssColor"] == RUNNER_CSS_COLOR,
          "after the reload every sub-resource loaded again", sub)
    for path in SUBRESOURCES:
        got = [x for x in r["responses"] if x["url"].split("?")[0].endswith(path)]
        check(got and all(x["status"] == 200 for x in got),
              f"{path} answered 200 on the reload", got)
    reload_seen = seen[marks.get("runner_before_reload", 0):]
    for path in ("/index.html",) + SUBRESOURCES:
        check(any(x["target"] == PREFIX + path for x in reload_seen),
              f"the reload's {path} reached the runner", [x["target"] for x in reload_seen])
    check(marks.get("probe_status") == 401,
          "after the revocation a client without the cookie is refused with 401",
          marks.get("probes"))
    during = log[marks.get("before_reload", len(log)):marks.get("after_reload", len(log))]
    check(not [c for c in during if c["route"] in ("C3", "C4", "C5")
               or c["route"].startswith("idp")],
          "the reload asked the API for no credential (no C5, C3, C4, IdP call)", brief(during))
    probe_calls = log[marks.get("before_revoke", len(log)):marks.get("before_reload", len(log))]
    check([c["status"] for c in probe_calls if c["route"] == "C5"] == [403],
          "the revoked token was asked once (C5 403) by the cookie-less probe", brief(probe_calls))

    # 4. The revoked URL without the auth cookie does not show the page.
    x = s["revokedNoCookie"]
    check(x["appName"] is None and x["status"] == 401,
          "without the auth cookie the revoked signed URL gives 401 (so the reload above was "
          "authenticated by the cookie)", x)

    # What the runner saw.
    check(seen and all(x["auth_ok"] for x in seen), "every runner request carried the runner key",
          [(x["target"], x["auth_ok"]) for x in seen])
    leaked = [x for x in seen if any(n.startswith("daytona-") for n in cookie_names(x["headers"]))]
    check(not leaked, "the proxy's own cookies never reach the sandbox app",
          [x["headers"] for x in leaked][:3])
    check(not any(x["target"].startswith(PREFIX + "/accept-daytona-preview-warning")
                  for x in seen), "the accept step never reached the runner",
          [x["target"] for x in seen])

    for name in SHOTS:
        path = os.path.join(ARTIFACTS, name)
        ok = os.path.isfile(path) and os.path.getsize(path) > 2000
        if ok:
            with open(path, "rb") as fh:
                ok = fh.read(8) == b"\x89PNG\r\n\x1a\n"
        check(ok, f"screenshot {path} written")
    check(not res["pageErrors"], "no script errors in the page", res["pageErrors"])
    check(not [m for m in res["console"] if m["type"] == "error" and m["page"] == "main"],
          "no console errors on the sandbox's page (the cookie-less one expects its 401s)",
          res["console"])

    if problems:
        pytest.fail("browser flow problems (API mode):\n" + "\n".join(problems) + diag,
                    pytrace=False)


def test_chromium_accept_reaches_a_preview_whose_next_hop_leaves_the_origin(proxy, html_api):
    """Issue 10 item 6 / DAYTONA-API §10: the warning page's CSP has form-action
    'self', and Chromium applies it to every redirect after the form POST. A
    302 from the accept step into a preview that itself redirects to another
    origin (here the app; with OIDC the IdP) was blocked; the accept step's
    200 + meta refresh starts a fresh navigation, so the browser gets there."""
    node = require_browser()
    api, runner = html_api
    api.org("o1", True)
    other = Elsewhere()
    try:
        there = f"elsewhere.localhost:{other.port}"
        runner.leave_to = f"http://{there}/landed"
        px = proxy(settings={"domains": f"{DOMAIN} proxy.test", "preview_warning": "on",
                             "api_timeout": "2",
                             "cookie_secret": "browser-api-cookie-secret-0123456789"},
                   env=api.proxy_env(), default_sandboxes_too=False)
        url = f"http://{PORT}-{TOKEN}.{DOMAIN}:{px.port}/leave"
        proc = subprocess.run([node, os.path.join(BROWSER_DIR, "click_through.mjs"),
                               json.dumps({"url": url, "expectHost": there, "userAgent": UA})],
                              cwd=BROWSER_DIR, capture_output=True, timeout=90)
        line = [x for x in proc.stdout.decode().splitlines() if x.startswith("RESULT ")]
        assert line, proc.stderr.decode()[-3000:]
        res = json.loads(line[-1][7:])
    finally:
        other.stop()
    diag = json.dumps(res)[:4000] + "\nproxy log tail:\n" + px.log()[-2000:]
    assert res["warningStatus"] == 200 and res["warningButtons"] == 1, diag
    assert not res["errors"], diag
    assert res["finalUrl"] == f"http://{there}/landed" and res["appName"] == "elsewhere", diag
    posts = [n for n in res["navs"] if n["method"] == "POST"]
    assert len(posts) == 1 and posts[0]["status"] == 200 and posts[0]["location"] is None, diag
    assert any(n["url"] == url and n["status"] == 302 for n in res["navs"]), diag
    assert not [m for m in res["console"] if "form-action" in m["text"]], diag
    assert "daytona-preview-page-accepted" in res["cookies"], diag

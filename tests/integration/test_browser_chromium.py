"""A real browser through the proxy (SPEC 3, 4.5, 6, 7, 10): headless Debian
Chromium driven by playwright-core (tests/browser/flow.mjs).

Flow: a private sandbox opened through a signed preview URL shows the warning
page (tests/artifacts/warning.png) -> the button leads to the sandbox's own
page -> the signed token expires and a reload still works (the auth cookie)
without the warning -> another sandbox's page fetches this one with
credentials (simple, preflighted, app with its own CORS headers, and an
unauthenticated host whose 401 must be readable) -> a 502 and a 401 page in a
fresh browser (tests/artifacts/error.png, error-401.png), and the expired
signed URL without the cookie (401).

Needs /usr/bin/chromium, node and tests/browser/node_modules (run
tests/browser/setup.sh); without them this test FAILS, it does not skip.
Chromium resolves *.localhost to loopback, so the base domain is proxy.localhost.
"""
import json
import os
import select
import shutil
import subprocess
import time

import pytest

from helpers import free_port
from servers.site import RedisServer, Site

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BROWSER_DIR = os.path.join(REPO, "tests", "browser")
ARTIFACTS = os.path.join(REPO, "tests", "artifacts")
CHROMIUM = "/usr/bin/chromium"
DOMAIN = "proxy.localhost"
TOKEN = "sgn4k7q2m9x"          # signed preview token (the host label)
APP, OTHER, DOWN = "sbxapp", "sbxother", "sbxdown"
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/156.0.0.0 Safari/537.36")
SETUP_HINT = "run tests/browser/setup.sh (as root) to install Chromium and playwright-core"


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
def redis_srv():
    srv = RedisServer()
    yield srv
    srv.stop()


def run_flow(node, config, on_pause, timeout=150):
    proc = subprocess.Popen([node, os.path.join(BROWSER_DIR, "flow.mjs"), json.dumps(config)],
                            cwd=BROWSER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    buf = b""
    result = None
    try:
        while result is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"flow.mjs timed out; stdout so far {buf[-2000:]!r}")
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
        raise AssertionError(f"flow.mjs ended without a RESULT (exit {proc.returncode}); "
                             f"stderr: {proc.stderr.read()[-3000:]!r}")
    return result


def cookie_names(cookie_header):
    if not cookie_header:
        return []
    return [c.split("=")[0].strip() for c in cookie_header.split(";") if c.strip()]


def test_chromium_signed_url_warning_cors_errors(proxy, redis_srv):
    node = require_browser()
    db = redis_srv.client()
    db("FLUSHALL")
    dead = free_port()
    with Site({"app": 0, "other": 0}) as site:
        pa, pb = site.ports["app"], site.ports["other"]
        common = ["runner_url", "http://127.0.0.1:1", "runner_key", "k", "org", "org1",
                  "state", "started", "direct", "1"]
        db("HSET", f"sandbox:{APP}", *common, "public", "0", "auth_token", "tok-app-S3CRET")
        db("HSET", f"sandbox:{OTHER}", *common, "public", "1", "warning", "0")
        db("HSET", f"sandbox:{DOWN}", *common, "public", "1", "warning", "0")
        db("SET", f"sandbox:signed-preview-url-token:{pa}:{TOKEN}", APP, "EX", "600")
        # Another sandbox's page reads this one with credentials: SPEC 7 allows that
        # for origins under the same base domain only with cors_credentials
        # same-domain (the default, same-sandbox, refuses it).
        px = proxy(settings={"domains": f"{DOMAIN} proxy.test", "preview_warning": "on",
                             "cors_credentials": "same-domain",
                             "cookie_secret": "browser-test-cookie-secret-0123456789"},
                   extra=[f"redis 127.0.0.1:{redis_srv.port}"], default_sandboxes_too=False)
        signed = f"http://{pa}-{TOKEN}.{DOMAIN}:{px.port}/"
        unsigned = f"http://{pa}-{APP}.{DOMAIN}:{px.port}/"
        other = f"http://{pb}-{OTHER}.{DOMAIN}:{px.port}/"
        error = f"http://{dead}-{DOWN}.{DOMAIN}:{px.port}/"
        for f in ("warning.png", "error.png", "error-401.png"):
            try:
                os.unlink(os.path.join(ARTIFACTS, f))
            except FileNotFoundError:
                pass

        def on_pause(name):
            assert name == "token-expired", name
            # The signed URL's key reaches its TTL (not a revocation).
            db("DEL", f"sandbox:signed-preview-url-token:{pa}:{TOKEN}")
            db("PUBLISH", "proxy:invalidate", f"token:{pa}:{TOKEN}")

        res = run_flow(node, {"signedUrl": signed, "unsignedUrl": unsigned, "otherUrl": other,
                              "errorUrl": error, "artifacts": ARTIFACTS, "userAgent": UA},
                       on_pause)
        seen = site.requests()
    db.close()

    problems = []

    def check(cond, what, detail=None):
        if not cond:
            problems.append(f"- {what}" + (f": {json.dumps(detail)[:1500]}" if detail is not None else ""))

    assert not res["errors"], "flow.mjs threw:\n" + "\n".join(res["errors"]) + \
        "\nsteps so far: " + json.dumps(res["steps"])[:4000]
    s = res["steps"]

    w = s["warning"]
    check(w["status"] == 200, "signed URL shows the warning page (200)", w)
    check(w["appName"] is None, "the sandbox app is not shown behind the warning", w)
    check(w["forms"] == 1 and w["buttons"] == 1, "the warning page has one form, one button", w)
    check(signed in w["text"], "the warning page shows the target URL", w["text"])
    check((w["formAction"] or "").startswith("/accept-daytona-preview-warning?redirect="),
          "the form posts to /accept-daytona-preview-warning", w["formAction"])
    hdrs = w["headers"] or {}
    check(hdrs.get("content-security-policy") ==
          "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'", "CSP", hdrs)
    check(hdrs.get("x-content-type-options") == "nosniff", "nosniff", hdrs)
    auth_cookie = f"daytona-sandbox-auth-{TOKEN}"
    check(any(c["name"] == auth_cookie and c["httpOnly"] for c in s["cookiesAfterWarning"]),
          "the signed URL's auth cookie is set (HttpOnly) with the warning page",
          s["cookiesAfterWarning"])

    a = s["afterClick"]
    check(a["appName"] == "app", "the button leads to the sandbox's page", a)
    check(a["url"] == signed, "and to the original URL", a["url"])
    posts = [n for n in s["clickNavigations"] if n["method"] == "POST"]
    check(len(posts) == 1 and posts[0]["status"] == 200 and posts[0]["location"] is None,
          "the click POSTs to the accept endpoint, which answers 200 (a meta refresh)",
          s["clickNavigations"])
    check(any(n["method"] == "GET" and n["url"] == signed for n in s["clickNavigations"]),
          "and the refresh opens the original URL", s["clickNavigations"])
    acc = [c for c in s["cookiesAfterClick"] if c["name"] == "daytona-preview-page-accepted"]
    check(len(acc) == 1 and acc[0]["domain"].lstrip(".") == f"{pa}-{TOKEN}.{DOMAIN}"
          and acc[0]["httpOnly"] and acc[0]["sameSite"] == "Lax" and acc[0]["path"] == "/",
          "accepted cookie: host domain, HttpOnly, Lax, Path=/", s["cookiesAfterClick"])

    r = s["reload"]
    check(r["status"] == 200 and r["appName"] == "app",
          "after the token expired, a reload still shows the sandbox (auth cookie) without "
          "the warning", r)

    o = s["otherPage"]
    check(o["status"] == 200 and o["appName"] == "other", "the other sandbox's page opens", o)

    f = s["fetches"]
    origin = f["origin"]
    check(origin == other.rstrip("/"), "fetches run from the other sandbox's origin", origin)
    simple = f["simple"]
    check(simple["ok"] and simple["status"] == 200 and (simple["json"] or {}).get("app") == "app",
          "cross-origin GET with credentials is readable", simple)
    check(simple["ok"] and (simple["json"] or {}).get("headers") and
          ["Origin", origin] in simple["json"]["headers"], "the app sees the caller's Origin",
          simple)
    pre = f["preflighted"]
    check(pre["ok"] and pre["status"] == 200 and (pre["json"] or {}).get("method") == "PUT"
          and '"hello"' in (pre["json"] or {}).get("body", ""),
          "preflighted cross-origin PUT with credentials succeeds", pre)
    own = f["ownCors"]
    check(own["ok"] and own["status"] == 200,
          "an app that sends its own 'Access-Control-Allow-Origin: *' is still readable with "
          "credentials (the proxy replaced its headers)", own)
    un = f["unauthenticated"]
    check(un["ok"] and un["status"] == 401 and (un["json"] or {}).get("statusCode") == 401,
          "a 401 from the proxy is readable cross-origin (JSON)", un)

    e = s["errorPage"]
    check(e["status"] == 502, "the dead port gives 502", e)
    check("not answering" in e["text"].lower() and "request id" in e["text"].lower(),
          "the 502 page says the service on the port is not answering, with a request ID", e)
    u = s["unauthorizedPage"]
    check(u["status"] == 401 and "preview token" in u["text"].lower()
          and "signed" in u["text"].lower(),
          "the 401 page explains the preview token / signed URL", u)

    x = s["expiredNoCookie"]
    check(x["status"] == 401 and x["appName"] is None,
          "without the auth cookie the expired signed URL gives 401 (so the reload and the "
          "fetches above were authenticated by the cookie)", x)

    # What the sandbox app itself saw.
    check(not [x for x in seen if x["method"] == "OPTIONS"],
          "no preflight reached the sandbox app", [x["target"] for x in seen])
    leaked = [x for x in seen if any(n.startswith("daytona-") for n in cookie_names(x["cookie"]))]
    check(not leaked, "the proxy's own cookies never reach the sandbox app",
          [x["cookie"] for x in leaked])
    check(any(x["app"] == "app" and x["method"] == "PUT" for x in seen),
          "the preflighted PUT reached the app", [(x["app"], x["method"]) for x in seen])

    for name in ("warning.png", "error.png"):
        path = os.path.join(ARTIFACTS, name)
        ok = os.path.isfile(path) and os.path.getsize(path) > 2000
        if ok:
            with open(path, "rb") as fh:
                ok = fh.read(8) == b"\x89PNG\r\n\x1a\n"
        check(ok, f"screenshot {path} written")

    if problems:
        pytest.fail("browser flow problems:\n" + "\n".join(problems), pytrace=False)

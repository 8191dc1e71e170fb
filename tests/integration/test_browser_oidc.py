"""The OIDC login in a real browser (SPEC 4.6, 6; DAYTONA-API.md §10 item 6):
headless Debian Chromium (tests/browser/oidc_flow.mjs, playwright-core) and
the real OpenID provider (tests/idp, idpfix.py).

A private sandbox with the warning page on: warning -> accept -> 307 to the
provider -> its login form filled and submitted -> /callback -> back at the
sandbox page, whose sub-resources load with the auth cookie -> a reload works
from the cookie alone -> a sandbox of another organisation is refused after
the provider's answer (standalone: the ID token's org claim).

Needs /usr/bin/chromium, node, tests/browser/node_modules and
tests/idp/node_modules; without them this test FAILS, it does not skip.
Chromium resolves *.localhost to loopback, so the base domain is proxy.localhost.
"""
import json
import os
import subprocess

from idpfix import *  # noqa: F401,F403
from servers.site import Site
from test_browser_chromium import BROWSER_DIR, UA, require_browser

DOMAIN = "proxy.localhost"
APP, OTHER = "sbxoidcapp", "sbxoidcother"


def run_flow(node, config, timeout=120):
    p = subprocess.run([node, os.path.join(BROWSER_DIR, "oidc_flow.mjs"), json.dumps(config)],
                       cwd=BROWSER_DIR, capture_output=True, timeout=timeout)
    for line in p.stdout.splitlines():
        if line.startswith(b"RESULT "):
            return json.loads(line[7:])
    raise AssertionError(f"oidc_flow.mjs ended without a RESULT (exit {p.returncode}); "
                         f"stderr: {p.stderr[-3000:]!r}")


def test_chromium_oidc_login_through_warning(proxy, idp):
    node = require_browser()
    with Site({"app": 0, "other": 0}) as site:
        pa, pb = site.ports["app"], site.ports["other"]
        common = "runner_url=http://127.0.0.1:1 runner_key=k state=started direct=1 public=0"
        px = proxy(settings={"domains": f"{DOMAIN} proxy.test", "preview_warning": "on",
                             "cookie_secret": "browser-oidc-cookie-secret-0123456789",
                             "oidc_issuer": idp.issuer, "oidc_client_id": idp.client_id,
                             "oidc_client_secret": idp.client_secret},
                   sandboxes=[f"sandbox {APP} {common} org=o1",
                              f"sandbox {OTHER} {common} org=o2"],
                   default_sandboxes_too=False)
        private = f"http://{pa}-{APP}.{DOMAIN}:{px.port}/"
        other = f"http://{pb}-{OTHER}.{DOMAIN}:{px.port}/"
        res = run_flow(node, {"privateUrl": private, "otherOrgUrl": other,
                              "idpOrigin": idp.issuer, "user": "alice", "password": "pw",
                              "userAgent": UA})
        seen = site.requests()

    problems = []

    def check(cond, what, detail=None):
        if not cond:
            problems.append(f"- {what}" + (f": {json.dumps(detail)[:1500]}" if detail is not None
                                           else ""))

    assert not res["errors"], "oidc_flow.mjs threw:\n" + "\n".join(res["errors"]) + \
        "\nsteps so far: " + json.dumps(res["steps"])[:4000]
    s = res["steps"]
    w = s["warning"]
    check(w["status"] == 200 and w["appName"] is None and w["forms"] == 1,
          "the private sandbox shows the warning page first", w)

    lf = s["loginForm"]
    check(lf["url"].startswith(idp.issuer), "accepting leads to the provider's login form", lf)
    redirects = [n for n in lf["navigations"] if n["status"] == 307]
    check(len(redirects) == 1 and redirects[0]["url"] == private,
          "the preview answered the navigation with one 307", lf["navigations"])

    b = s["back"]
    check(b["appName"] == "app" and b["url"] == private,
          "after the login the browser is back at the sandbox's page", b)
    cb = [n for n in b["navigations"] if "/callback" in n["url"]]
    check(len(cb) == 1 and cb[0]["status"] == 302, "the callback answered 302", b["navigations"])
    cookies = {c["name"]: c for c in s["cookies"]}
    auth = cookies.get(f"daytona-sandbox-auth-{APP}")
    check(auth is not None and auth["httpOnly"] and auth["domain"].lstrip(".") == DOMAIN,
          "the auth cookie is set, HttpOnly, for the base domain", s["cookies"])
    check("pkce_verifier" not in cookies, "the verifier cookie is gone", s["cookies"])

    f = s["fetch"]
    check(f["status"] == 200 and f["json"] and f["json"].get("app") == "app",
          "a fetch from the page reaches the sandbox", f)
    sub = s["subresources"]
    check(len(sub) >= 3 and all(r["status"] == 200 for r in sub),
          "the page's sub-resources (fetch, image, stylesheet) load", sub)

    r = s["reload"]
    check(r["status"] == 200 and r["appName"] == "app", "a reload works", r)
    check(all(not n["url"].startswith(idp.issuer) for n in r["navigations"]),
          "the reload needs no trip to the provider (the cookie alone)", r["navigations"])

    o = s["other"]
    check("403" in o["title"] or "403" in o["text"],
          "another organisation's sandbox is refused (403)", o)
    check(o["appName"] is None, "and its page is not shown", o)
    check(not [x for x in seen if x.get("app") == "other"],
          "the other sandbox's app never got a request", seen)
    check(not s["blocked"] or all("favicon" in x["url"] for x in s["blocked"]),
          "no request was blocked (CSP form-action and the like)", s["blocked"])

    assert not problems, "OIDC browser flow:\n" + "\n".join(problems)

"""Warning page and its accept endpoint (SPEC 2, 6; LESSONS A8, A9), seen from
outside with plain HTTP clients. The headless-Chromium flow is in
test_browser_chromium.py.
"""
import html
import html.parser
import urllib.parse

import pytest

from helpers import (accept_target, BASE_DOMAIN, PRIV, PRIV_TOKEN, PUB, PUB_TOKEN, RESERVED_PORTS, RawConn,
                     host, request_bytes, runner_prefix)

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/126.0.0.0 Safari/537.36")
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
ACCEPT_PATH = "/accept-daytona-preview-warning"

BROWSER_UAS = {
    "chrome": CHROME,
    "firefox": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "safari": ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like "
               "Gecko) Version/17.5 Safari/605.1.15"),
    "edge": ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.2592.87"),
    "opera": ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/126.0.0.0 Safari/537.36 OPR/111.0.0.0"),
    "samsung": ("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
                "SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36"),
    "vivaldi": ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                "Chrome/126.0.0.0 Safari/537.36 Vivaldi/6.8.3381.44"),
    "iphone-safari": ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
                      "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"),
}

NON_BROWSER_UAS = {
    "curl": "curl/8.5.0",
    "python-requests": "python-requests/2.31.0",
    "go": "Go-http-client/1.1",
    "axios": "axios/1.7.2",
    "node": "node",
    "sdk": "daytona-sdk-python/0.21.0",
    "wget": "Wget/1.21.3",
    "googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "googlebot-smartphone": ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) "
                             "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.126 Mobile "
                             "Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
    "bingbot": "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "empty": "",
}

@pytest.fixture
def wp(proxy, runner):
    """Proxy with preview_warning on, plus sandboxes that override it."""
    r = f"http://127.0.0.1:{runner.port}"
    common = f"runner_url={r} runner_key=runner-key-7f3a9c org=org1 state=started"
    return proxy(settings={"preview_warning": "on"}, sandboxes=[
        f"sandbox sbxnowarn {common} public=1 warning=0 auth_token=tok-nowarn",
        f"sandbox sbxprivnowarn {common} public=0 warning=0 auth_token=tok-privnowarn",
    ])


@pytest.fixture
def wp_off(proxy, runner):
    """Proxy with preview_warning off; one sandbox switches it on for itself."""
    r = f"http://127.0.0.1:{runner.port}"
    common = f"runner_url={r} runner_key=runner-key-7f3a9c org=org1 state=started"
    return proxy(settings={"preview_warning": "off"}, sandboxes=[
        f"sandbox sbxwarn {common} public=1 warning=1 auth_token=tok-warn",
    ])


def is_warning(r):
    return (r.status_code == 200 and "text/html" in r.headers.get("Content-Type", "")
            and ACCEPT_PATH in r.text)


def forwarded(runner, sandbox, port=3000):
    return runner.find(runner_prefix(sandbox, port))


class FormParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms = []
        self.buttons = 0
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        if tag == "form":
            self.forms.append(dict(attrs))
        elif tag == "button" or (tag == "input" and dict(attrs).get("type") == "submit"):
            self.buttons += 1
        elif tag == "script":
            self.scripts += 1


def form_of(text):
    p = FormParser()
    p.feed(text)
    return p


# ---------------------------------------------------------------- shown --

@pytest.mark.parametrize("ua", list(BROWSER_UAS.values()), ids=list(BROWSER_UAS))
def test_warning_shown_to_browsers(wp, runner, ua):
    r = wp.get("/", host=host(3000, PUB), headers={"User-Agent": ua})
    assert is_warning(r), (r.status_code, r.headers, r.text[:300])
    assert forwarded(runner, PUB) == [], "the request reached the sandbox behind the warning page"


@pytest.mark.parametrize("ua", list(NON_BROWSER_UAS.values()), ids=list(NON_BROWSER_UAS))
def test_non_browsers_pass_through(wp, runner, ua):
    r = wp.get("/api", host=host(3000, PUB), headers={"User-Agent": ua})
    assert r.status_code == 200 and not is_warning(r), r.text[:300]
    assert len(forwarded(runner, PUB)) == 1


def test_no_user_agent_passes_through(wp, runner):
    with wp.raw() as c:
        c.send(request_bytes("GET", "/x", host(3000, PUB), [("Connection", "close")]))
        resp = c.read_response()
    assert resp.status == 200 and ACCEPT_PATH.encode() not in resp.body
    assert len(forwarded(runner, PUB)) == 1


def test_warning_headers_exact(wp):
    r = wp.get("/", host=host(3000, PUB), headers={"User-Agent": CHROME})
    assert is_warning(r)
    with wp.raw() as c:
        c.send(request_bytes("GET", "/", host(3000, PUB),
                             [("User-Agent", CHROME), ("Connection", "close")]))
        resp = c.read_response()
    assert resp.header_all("Content-Security-Policy") == [CSP]
    assert resp.header_all("X-Content-Type-Options") == ["nosniff"]
    assert resp.header("Content-Type").startswith("text/html")


def test_warning_off_forwards(proxy, runner):
    px = proxy(settings={"preview_warning": "off"})
    r = px.get("/", host=host(3000, PUB), headers={"User-Agent": CHROME})
    assert r.status_code == 200 and not is_warning(r)
    assert len(forwarded(runner, PUB)) == 1


def test_warning_env_switch(proxy, runner):
    px = proxy(settings={"preview_warning": "off"}, env={"PREVIEW_WARNING_ENABLED": "true"})
    r = px.get("/", host=host(3000, PUB), headers={"User-Agent": CHROME})
    assert is_warning(r), "PREVIEW_WARNING_ENABLED=true should win over the file"


def test_sandbox_override_off(wp, runner):
    r = wp.get("/", host=host(3000, "sbxnowarn"), headers={"User-Agent": CHROME})
    assert r.status_code == 200 and not is_warning(r)
    assert len(forwarded(runner, "sbxnowarn")) == 1


def test_sandbox_override_on(wp_off, runner):
    r = wp_off.get("/", host=host(3000, "sbxwarn"), headers={"User-Agent": CHROME})
    assert is_warning(r)
    r = wp_off.get("/", host=host(3000, PUB), headers={"User-Agent": CHROME})
    assert not is_warning(r) and r.status_code == 200


def test_skip_header(wp, runner):
    r = wp.get("/", host=host(3000, PUB), headers={"User-Agent": CHROME,
                                                   "X-Daytona-Skip-Preview-Warning": "true"})
    assert r.status_code == 200 and not is_warning(r)
    (rec,) = forwarded(runner, PUB)
    names = [k.lower() for k, _ in rec["headers"]]
    assert "x-daytona-skip-preview-warning" not in names


def test_skip_header_other_value_still_warns(wp):
    r = wp.get("/", host=host(3000, PUB), headers={"User-Agent": CHROME,
                                                   "X-Daytona-Skip-Preview-Warning": "yes"})
    assert is_warning(r)


def test_accepted_cookie_skips_and_is_not_forwarded(wp, runner):
    r = wp.get("/", host=host(3000, PUB), headers={
        "User-Agent": CHROME, "Cookie": "a=1; daytona-preview-page-accepted=true; b=2"})
    assert r.status_code == 200 and not is_warning(r)
    (rec,) = forwarded(runner, PUB)
    cookies = [v for k, v in rec["headers"] if k.lower() == "cookie"]
    assert cookies and "daytona-preview-page-accepted" not in cookies[0]
    assert "a=1" in cookies[0] and "b=2" in cookies[0]


@pytest.mark.parametrize("cookie", ["daytona-preview-page-accepted=false",
                                    "daytona-preview-page-accepted=",
                                    "xdaytona-preview-page-accepted=true"])
def test_other_cookie_values_still_warn(wp, cookie):
    r = wp.get("/", host=host(3000, PUB), headers={"User-Agent": CHROME, "Cookie": cookie})
    assert is_warning(r)


def test_websocket_upgrade_skips(wp, runner):
    with wp.raw() as c:
        c.send(request_bytes("GET", "/ws", host(3000, PUB), [
            ("User-Agent", CHROME), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]))
        resp = c.read_response()
    assert resp.status == 101, resp


@pytest.mark.parametrize("port", RESERVED_PORTS)
def test_reserved_ports_skip(wp, runner, port):
    r = wp.get("/", host=host(port, PUB), headers={"User-Agent": CHROME,
                                                   "X-Daytona-Preview-Token": PUB_TOKEN})
    assert r.status_code == 200 and not is_warning(r), r.text[:300]
    assert len(forwarded(runner, PUB, port)) == 1


def test_toolbox_skips(wp, runner):
    r = wp.get(f"/toolbox/{PUB}/files", headers={"User-Agent": CHROME,
                                                 "X-Daytona-Preview-Token": PUB_TOKEN})
    assert r.status_code == 200 and not is_warning(r), r.text[:300]


def test_private_without_credentials_gets_401_not_page(wp, runner):
    r = wp.get("/", host=host(3000, PRIV), headers={"User-Agent": CHROME})
    assert r.status_code == 401 and ACCEPT_PATH not in r.text


def test_private_with_credentials_gets_page(wp, runner):
    r = wp.get("/", host=host(3000, PRIV), headers={"User-Agent": CHROME,
                                                    "X-Daytona-Preview-Token": PRIV_TOKEN})
    assert is_warning(r)
    assert forwarded(runner, PRIV) == []
    r = wp.get(f"/?DAYTONA_SANDBOX_AUTH_KEY={PRIV_TOKEN}", host=host(3000, PRIV),
               headers={"User-Agent": CHROME})
    assert is_warning(r)


def test_private_override_off_with_credentials_forwards(wp, runner):
    r = wp.get("/", host=host(3000, "sbxprivnowarn"),
               headers={"User-Agent": CHROME, "X-Daytona-Preview-Token": "tok-privnowarn"})
    assert r.status_code == 200 and not is_warning(r)


def test_warning_for_any_method(wp, runner):
    r = wp.request("POST", "/form", host=host(3000, PUB), headers={"User-Agent": CHROME},
                   data=b"x=1")
    assert is_warning(r)
    assert forwarded(runner, PUB) == []


# ------------------------------------------------------------- page body --

def test_page_shows_escaped_target_and_one_form(wp):
    h = host(3000, PUB) + ":8080"
    target = "/dash/index.html?tab=logs&x=%3Cy%3E"
    r = wp.get(target, host=h, headers={"User-Agent": CHROME})
    assert is_warning(r)
    original = f"http://{h}{target}"
    assert html.escape(original, quote=True).replace("&#x27;", "&#39;") in r.text \
        or html.escape(original, quote=False) in r.text
    p = form_of(r.text)
    assert len(p.forms) == 1 and p.buttons == 1 and p.scripts == 0
    form = p.forms[0]
    assert form.get("method", "").upper() == "POST"
    action = form["action"]  # the parser has already unescaped the attribute
    path, _, query = action.partition("?")
    assert path == ACCEPT_PATH
    assert urllib.parse.parse_qs(query)["redirect"] == [original]


@pytest.mark.parametrize("target", ['/?"><script>alert(1)</script>',
                                    "/?><ScRiPt>alert(1)</ScRiPt>",
                                    "/a?x='onmouseover=alert(1)'&y=<img src=x>"])
def test_page_escapes_xss_in_target(wp, target):
    with wp.raw() as c:
        c.send(request_bytes("GET", target, host(3000, PUB),
                             [("User-Agent", CHROME), ("Connection", "close")]))
        resp = c.read_response()
    if resp.status == 400:
        return  # refusing such a target outright is also safe
    body = resp.body.decode()
    assert resp.status == 200 and ACCEPT_PATH in body
    low = body.lower()
    assert "<script" not in low and "<img" not in low
    assert "'onmouseover" not in body
    p = form_of(body)
    assert len(p.forms) == 1 and p.scripts == 0
    _, _, q = p.forms[0]["action"].partition("?")
    assert urllib.parse.parse_qs(q)["redirect"] == [f"http://{host(3000, PUB)}{target}"]


def test_page_carries_cors_headers(wp):
    """CORS comes before the warning so fetch() can read the page (LESSONS A8)."""
    origin = f"http://3001-{PUB}.proxy.test"  # same sandbox: credentials (SPEC 7)
    r = wp.get("/", host=host(3000, PUB), headers={"User-Agent": CHROME, "Origin": origin})
    assert is_warning(r)
    assert r.headers.get("Access-Control-Allow-Origin") == origin
    assert r.headers.get("Access-Control-Allow-Credentials") == "true"


# ------------------------------------------------------------ accept --

def parse_set_cookie(value):
    parts = [p.strip() for p in value.split(";")]
    name, _, val = parts[0].partition("=")
    attrs = {}
    for p in parts[1:]:
        k, eq, v = p.partition("=")
        attrs[k.strip().lower()] = v.strip() if eq else True
    return name, val, attrs


def accept(px, redirect=None, host_header=BASE_DOMAIN, raw_query=None, headers=()):
    if raw_query is None:
        raw_query = "" if redirect is None else "redirect=" + urllib.parse.quote(redirect, safe="")
    target = ACCEPT_PATH + ("?" + raw_query if raw_query else "")
    with px.raw() as c:
        c.send(request_bytes("POST", target, host_header,
                             [("Content-Length", "0"), ("Connection", "close"), *headers]))
        return c.read_response()


@pytest.mark.parametrize("host_header,domain", [
    (BASE_DOMAIN, BASE_DOMAIN),
    (host(3000, PUB), host(3000, PUB)),
    (host(3000, PUB) + ":8443", host(3000, PUB)),
    ("3000-abc.daytonaproxy01.net", "3000-abc.daytonaproxy01.net"),
    ("localhost:8080", "localhost"),
])
def test_accept_sets_cookie(px, host_header, domain):
    resp = accept(px, "/", host_header=host_header)
    assert accept_target(resp.status, resp.body) == "/"
    cookies = resp.header_all("Set-Cookie")
    assert len(cookies) == 1, cookies
    name, val, attrs = parse_set_cookie(cookies[0])
    assert (name, val) == ("daytona-preview-page-accepted", "true")
    assert attrs == {"max-age": "86400", "path": "/", "httponly": True, "domain": domain,
                     "samesite": "Lax"}, cookies[0]


def test_accept_needs_post(px):
    r = px.get(ACCEPT_PATH + "?redirect=%2F", host=host(3000, PUB))
    assert "daytona-preview-page-accepted" not in r.headers.get("Set-Cookie", "")


H = "3000-abc.daytonaproxy01.net"

# Daytona's isSafeRedirect table (warning_page_test.go, PR #4940), plus the
# cases SPEC 6 spells out. (request Host, redirect value, expected Location)
SAFE = [
    ("same-host-absolute-https", H, f"https://{H}/dashboard/index.html"),
    ("same-host-with-port-and-query", "localhost:8080", "http://localhost:8080/dashboard?tab=logs"),
    ("safe-relative-path", H, "/dashboard"),
    ("root", H, "/"),
    ("relative-with-query-fragment", H, "/a/b?c=d&e=%2F#frag"),
    ("same-host-http", H, f"http://{H}/"),
    ("same-host-no-path", H, f"https://{H}"),
    ("preview-host-with-port", "3000-sbxpub.proxy.test:8080", "http://3000-sbxpub.proxy.test:8080/x?y=1"),
]
UNSAFE = [
    ("absolute-cross-host", H, "https://evil.com/phish"),
    ("protocol-relative", H, "//evil.com/x"),
    ("backslash-slash", H, "/\\evil.com"),
    ("double-backslash", H, "\\\\evil.com"),
    ("slash-backslash-mixed", H, "\\/evil.com"),
    ("userinfo-confusion", H, f"https://{H}@evil.com"),
    ("subdomain-lookalike", H, "https://host.evil.com"),
    ("suffix-lookalike", H, f"https://{H}.evil.com/"),
    ("javascript-scheme", H, "javascript:alert(1)"),
    ("data-scheme", H, "data:text/html,<script>alert(1)</script>"),
    ("empty", H, ""),
    ("other-port", "localhost:8080", "http://localhost:9090/"),
    ("port-missing", "localhost:8080", "http://localhost/"),
    ("port-added", H, f"https://{H}:8443/"),
    ("ftp-scheme", H, f"ftp://{H}/"),
    ("relative-no-slash", H, "dashboard"),
    ("crlf-injection", H, "/x\r\nSet-Cookie: evil=1"),
    ("tab-protocol-relative", H, "/\t/evil.com"),
    ("backslash-userinfo", H, f"https://evil.com\\@{H}"),
]


@pytest.mark.parametrize("host_header,redirect", [(h, r) for _, h, r in SAFE],
                         ids=[n for n, _, _ in SAFE])
def test_accept_redirect_safe(px, host_header, redirect):
    resp = accept(px, redirect, host_header=host_header)
    assert accept_target(resp.status, resp.body) == redirect
    assert resp.header("Location") is None


@pytest.mark.parametrize("host_header,redirect", [(h, r) for _, h, r in UNSAFE],
                         ids=[n for n, _, _ in UNSAFE])
def test_accept_redirect_unsafe(px, host_header, redirect):
    resp = accept(px, redirect, host_header=host_header)
    assert accept_target(resp.status, resp.body) == "/", resp.headers
    assert len(resp.header_all("Set-Cookie")) == 1, resp.headers


def test_accept_without_redirect(px):
    resp = accept(px, None, host_header=H)
    assert accept_target(resp.status, resp.body) == "/"


@pytest.mark.parametrize("raw_query", [
    "redirect=%2Fa%0d%0aSet-Cookie:x=y",
    "redirect=%2Fa%0aX-Injected:1",
    "redirect=%2F%2Fevil.com",
    "redirect=%2F%5Cevil.com",
    "redirect=https:%2F%2Fevil.com",
])
def test_accept_raw_encodings(px, raw_query):
    resp = accept(px, raw_query=raw_query, host_header=H)
    assert accept_target(resp.status, resp.body) == "/", resp.headers
    assert resp.header("X-Injected") is None
    assert len(resp.header_all("Set-Cookie")) == 1


def test_accept_ignores_x_forwarded_host(px):
    resp = accept(px, f"https://{H}/app", host_header=H,
                  headers=[("X-Forwarded-Host", "preview.yourcompany.com")])
    assert accept_target(resp.status, resp.body) == f"https://{H}/app"
    resp = accept(px, "https://preview.yourcompany.com/app", host_header=H,
                  headers=[("X-Forwarded-Host", "preview.yourcompany.com")])
    assert accept_target(resp.status, resp.body) == "/"


# -------------------------------------------------------- end to end --

def test_click_through_with_plain_http(wp, runner):
    """GET -> page; POST the form's action -> 200 meta refresh + cookie; follow -> sandbox."""
    h = host(3000, PUB) + ":8080"
    r = wp.get("/app/page?q=1", host=h, headers={"User-Agent": CHROME})
    assert is_warning(r)
    action = form_of(r.text).forms[0]["action"]
    r2 = wp.request("POST", action, host=h, headers={"User-Agent": CHROME}, data=b"")
    assert accept_target(r2.status_code, r2.text) == f"http://{h}/app/page?q=1"
    cookie = r2.headers["Set-Cookie"].split(";")[0]
    r3 = wp.get("/app/page?q=1", host=h, headers={"User-Agent": CHROME, "Cookie": cookie})
    assert r3.status_code == 200 and not is_warning(r3)
    (rec,) = forwarded(runner, PUB)
    assert rec["target"] == runner_prefix(PUB, 3000) + "/app/page?q=1"


# ------------------------------------------- absolute-form request targets --
# SPEC 1 / RFC 9112 3.2.2: an absolute-form target's authority wins over Host.
# The page must show, and the accept endpoint must compare with, the host the
# request is actually routed by.

def test_absolute_form_warning_shows_routed_host(wp, runner):
    with wp.raw() as c:
        c.send(request_bytes("GET", f"http://{host(3000, PUB)}/x?y=1", "unrelated.example",
                             [("User-Agent", CHROME), ("Connection", "close")]))
        resp = c.read_response()
    body = resp.body.decode()
    assert resp.status == 200 and ACCEPT_PATH in body
    _, _, q = form_of(body).forms[0]["action"].partition("?")
    assert urllib.parse.parse_qs(q)["redirect"] == [f"http://{host(3000, PUB)}/x?y=1"], body
    assert "unrelated.example" not in body


def test_absolute_form_accept_compares_with_authority(px):
    target = (f"http://{H}{ACCEPT_PATH}?redirect=" +
              urllib.parse.quote(f"http://{H}/app", safe=""))
    with px.raw() as c:
        c.send(request_bytes("POST", target, "evil.example",
                             [("Content-Length", "0"), ("Connection", "close")]))
        resp = c.read_response()
    assert accept_target(resp.status, resp.body) == f"http://{H}/app", resp.headers
    assert f"Domain={H}" in resp.header("Set-Cookie"), resp.headers


def test_absolute_form_accept_refuses_host_header_target(px):
    """Host: evil.example must not make http://evil.example/ 'same-host' when the
    request names another authority."""
    target = (f"http://{H}{ACCEPT_PATH}?redirect=" +
              urllib.parse.quote("http://evil.example/phish", safe=""))
    with px.raw() as c:
        c.send(request_bytes("POST", target, "evil.example",
                             [("Content-Length", "0"), ("Connection", "close")]))
        resp = c.read_response()
    assert accept_target(resp.status, resp.body) == "/", resp.headers

"""OIDC login (SPEC 4.6, DAYTONA-API.md §6) against a real OpenID provider
(tests/idp/idp.mjs on oidc-provider, see idpfix.py): the 307 and its
parameters, who gets a 401 instead, the full login (standalone: ID token and
org claim; API mode: C3 with the access token), and the refusals: another
organisation, tampered state, missing or foreign verifier cookie, replayed
code, rotated and unknown keys, unsafe returnTo, IdP down.

The proxy's cookies are for Domain=proxy.test while requests talk to
127.0.0.1, so cookies are carried by hand (Cookie headers)."""
import base64
import json
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests

from apifix import *  # noqa: F401,F403
from helpers import BASE_DOMAIN, RUNNER_KEY, host, runner_prefix
from idpfix import *  # noqa: F401,F403

O1 = "sbx-oidc-o1"
O2 = "sbx-oidc-o2"
NAV = {"Sec-Fetch-Mode": "navigate", "Accept": "text/html,application/xhtml+xml"}
CALLBACK_HOST = BASE_DOMAIN


def set_cookies(r):
    """{name: (value, attributes lower-cased)} of a response's Set-Cookie lines."""
    out = {}
    for line in r.raw.headers.getlist("Set-Cookie"):
        first, _, attrs = line.partition(";")
        name, _, value = first.strip().partition("=")
        out[name] = (value, attrs.lower())
    return out


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e_padded(raw):
    return base64.urlsafe_b64encode(raw).decode()


@pytest.fixture
def oidc(proxy, runner, idp):
    """Factory: a standalone proxy behind the real provider, with O1 (org o1)
    and O2 (org o2) private."""
    def make(settings=None, **kw):
        s = {"oidc_issuer": idp.issuer, "oidc_client_id": idp.client_id,
             "oidc_client_secret": idp.client_secret, "cookie_secret": "oidc-test-secret"}
        s.update(settings or {})
        common = f"runner_url={runner.url} runner_key={RUNNER_KEY} state=started public=0"
        return proxy(settings=s, sandboxes=[f"sandbox {O1} {common} org=o1",
                                            f"sandbox {O2} {common} org=o2"], **kw)
    return make


def start(px, label=O1, path="/page?x=1", port=3000, headers=None):
    """The navigation that starts a login: (authorize URL, sealed verifier cookie)."""
    r = px.get(path, host=host(port, label), headers=headers or NAV)
    assert r.status_code == 307, (r.status_code, r.text)
    return r.headers["Location"], set_cookies(r)["pkce_verifier"][0]


def at_provider(idp, authorize_url, user="alice", session=None):
    """Logs in at the provider; returns the callback's path?query."""
    back = idp.login(session or requests.Session(), authorize_url, user=user)
    u = urlsplit(back)
    assert u.path == "/callback", back
    return u.path + "?" + u.query


def callback(px, target, pkce):
    headers = {"Cookie": f"pkce_verifier={pkce}"} if pkce is not None else {}
    headers["Accept"] = "text/html"
    return px.get(target, host=CALLBACK_HOST, headers=headers)


def login(px, idp, label=O1, user="alice", path="/page?x=1", session=None):
    url, pkce = start(px, label, path)
    return callback(px, at_provider(idp, url, user, session), pkce)


def auth_cookie(r, label=O1):
    c = set_cookies(r).get(f"daytona-sandbox-auth-{label}")
    assert c, r.headers
    return c[0]


# ------------------------------------------------------------- the 307 --

def test_navigation_gets_307_with_pkce_state_and_cookie(oidc, idp):
    px = oidc()
    r = px.get("/page?x=1", host=host(3000, O1), headers=NAV)
    assert r.status_code == 307, r.text
    loc = r.headers["Location"]
    u = urlsplit(loc)
    assert f"{u.scheme}://{u.netloc}" == idp.issuer
    pairs = parse_qsl(u.query)
    keys = [k for k, _ in pairs]
    assert keys == sorted(keys)          # §6: sorted, as url.Values.Encode()
    q = dict(pairs)
    assert q["client_id"] == "proxy-test"
    assert q["response_type"] == "code"
    assert q["scope"] == "openid profile"
    assert q["code_challenge_method"] == "S256"
    assert len(q["code_challenge"]) == 43 and "=" not in q["code_challenge"]
    assert q["redirect_uri"] == f"http://{BASE_DOMAIN}/callback"
    assert len(q["nonce"]) == 43
    assert q["state"].endswith("=") or len(q["state"]) % 4 == 0   # padded base64url
    state = json.loads(b64d(q["state"]))
    assert state["returnTo"] == f"http://{host(3000, O1)}/page?x=1"
    assert state["sandboxId"] == O1
    assert len(state["state"]) == 44 and state["state"].endswith("=")
    c = set_cookies(r)["pkce_verifier"]
    assert c[0]
    for attr in ("max-age=300", "path=/", "httponly", f"domain={BASE_DOMAIN}"):
        assert attr in c[1], c
    assert r.headers.get("Cache-Control") == "no-store"
    # each login its own verifier and state
    r2 = px.get("/page?x=1", host=host(3000, O1), headers=NAV)
    assert dict(parse_qsl(urlsplit(r2.headers["Location"]).query))["state"] != q["state"]


@pytest.mark.parametrize("method,headers", [
    ("GET", {"Sec-Fetch-Mode": "cors", "Accept": "text/html"}),       # fetch()
    ("GET", {"X-Requested-With": "XMLHttpRequest", "Accept": "application/json"}),
    ("GET", {"Accept": "*/*"}),                                        # curl, API clients
    ("GET", {}),
    ("POST", {"Sec-Fetch-Mode": "navigate", "Accept": "text/html"}),  # form POST
    ("GET", {"Accept": "text/html", "Connection": "Upgrade", "Upgrade": "websocket",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}),
])
def test_other_requests_get_401(oidc, idp, method, headers):
    px = oidc()
    r = px.request(method, "/", host=host(3000, O1), headers=headers)
    assert r.status_code == 401, r.text
    assert "pkce_verifier" not in r.headers.get("Set-Cookie", "")


def test_toolbox_navigation_gets_401(oidc, idp):
    px = oidc()
    r = px.get(f"/toolbox/{O1}/files", headers=NAV)
    assert r.status_code == 401


def test_without_issuer_navigation_gets_401(proxy, runner):
    px = proxy(settings={"cookie_secret": "x"}, sandboxes=[
        f"sandbox {O1} runner_url={runner.url} runner_key={RUNNER_KEY} public=0 org=o1"])
    assert px.get("/", host=host(3000, O1), headers=NAV).status_code == 401
    assert px.get("/callback?code=a&state=b", host=CALLBACK_HOST).status_code == 404


# --------------------------------------------------------- full logins --

def test_login_standalone_sets_cookie_and_returns(oidc, idp, runner):
    px = oidc()
    r = login(px, idp, O1, "alice")
    assert r.status_code == 302, r.text
    assert r.headers["Location"] == f"http://{host(3000, O1)}/page?x=1"
    cookies = set_cookies(r)
    assert cookies["pkce_verifier"][0] == "" and "max-age=0" in cookies["pkce_verifier"][1]
    value, attrs = cookies[f"daytona-sandbox-auth-{O1}"]
    assert f"domain={BASE_DOMAIN}" in attrs and "httponly" in attrs
    runner.reset()
    page = px.get("/page?x=1", host=host(3000, O1),
                  headers={**NAV, "Cookie": f"daytona-sandbox-auth-{O1}={value}"})
    assert page.status_code == 200, page.text
    assert runner.requests()[-1]["target"] == runner_prefix(O1, 3000) + "/page?x=1"
    # the ID token was checked against the provider's keys
    assert idp.calls("/jwks") or idp.calls("/.well-known/jwks")


def test_login_es256(oidc, idp):
    idp.set_alg("ES256")
    px = oidc()
    r = login(px, idp, O1, "alice")
    assert r.status_code == 302, r.text


def test_other_org_refused_standalone(oidc, idp):
    px = oidc()
    r = login(px, idp, O1, "bob")                 # bob is in o2
    assert r.status_code == 403, r.text
    assert not any(k.startswith("daytona-sandbox-auth") for k in set_cookies(r))
    r = login(px, idp, O2, "bob")
    assert r.status_code == 302


def test_org_claim_configurable(oidc, idp):
    px = oidc(settings={"oidc_org_claim": "name"})     # "Alice Example" is no org
    assert login(px, idp, O1, "alice").status_code == 403


# ------------------------------------------------------------ refusals --

def test_tampered_state_refused(oidc, idp):
    px = oidc()
    url, pkce = start(px)
    target = at_provider(idp, url)
    u = urlsplit(target)
    q = dict(parse_qsl(u.query))
    st = json.loads(b64d(q["state"]))
    st["state"] = b64e_padded(b"\x01" * 32)            # another login's inner state
    q["state"] = b64e_padded(json.dumps(st).encode())
    r = callback(px, "/callback?" + urlencode(q), pkce)
    assert r.status_code == 400, r.text
    q["state"] = "not base64 json!"
    assert callback(px, "/callback?" + urlencode(q), pkce).status_code == 400


def test_missing_verifier_cookie_refused(oidc, idp):
    px = oidc()
    url, _ = start(px)
    r = callback(px, at_provider(idp, url), None)
    assert r.status_code == 400, r.text


def test_foreign_verifier_cookie_refused(oidc, idp):
    px = oidc()
    s = requests.Session()
    url_a, pkce_a = start(px)
    url_b, pkce_b = start(px)
    target_b = at_provider(idp, url_b, session=s)
    r = callback(px, target_b, pkce_a)                   # A's cookie, B's answer
    assert r.status_code == 400, r.text
    assert not any(k.startswith("daytona-sandbox-auth") for k in set_cookies(r))
    # a cookie sealed with another secret is no cookie at all
    other = oidc(settings={"cookie_secret": "another-secret"})
    _, pkce_other = start(other)
    assert callback(px, target_b, pkce_other).status_code == 400


def test_replayed_code_refused(oidc, idp):
    px = oidc()
    url, pkce = start(px)
    target = at_provider(idp, url)
    assert callback(px, target, pkce).status_code == 302
    r = callback(px, target, pkce)                       # same code, same cookie
    assert r.status_code == 400, r.text
    assert not any(k.startswith("daytona-sandbox-auth") for k in set_cookies(r))


def test_idp_error_shown_escaped(oidc, idp):
    px = oidc()
    url, pkce = start(px)
    r = callback(px, "/callback?" + urlencode(
        {"error": "access_denied", "error_description": "<script>alert(1)</script>"}), pkce)
    assert r.status_code == 401
    assert "<script>" not in r.text and "&lt;script&gt;" in r.text


def test_rotated_keys_refetched_once(oidc, idp):
    px = oidc()
    assert login(px, idp).status_code == 302
    n = len(idp.calls("/jwks"))
    assert n == 1
    # JWKS refetches on an unknown kid are spaced PX_OIDC_JWKS_REFETCH (10 s)
    # apart; the clock must pass that since the first fetch.
    wait_s = idp.calls("/jwks")[0]["time"] + 10.5 - time.time()
    if wait_s > 0:
        time.sleep(wait_s)  # a rate limit to respect, not synchronisation
    idp.rotate()
    s = requests.Session()
    assert login(px, idp, session=s).status_code == 302   # new kid: refetched, accepted
    assert len(idp.calls("/jwks")) == n + 1
    # a key nowhere in the JWKS: within 10 s of the last fetch no refetch, refused
    idp.rotate()
    r = login(px, idp, session=s)
    assert r.status_code == 401, r.text
    assert "unknown key" in r.text
    assert len(idp.calls("/jwks")) == n + 1


@pytest.mark.parametrize("return_to", [
    "http://evil.example/",
    "//evil.example/",
    "/\\evil.example/",
    f"http://{host(3000, O1)}\\@evil.example/",
    f"http://{host(3000, O1)}.evil.example/",
    f"http://user@{host(3000, O1)}/",
    "javascript:alert(1)",
    f"http://{BASE_DOMAIN}/callback",
])
def test_unsafe_return_to_goes_to_root(oidc, idp, return_to):
    px = oidc()
    url, pkce = start(px)
    u = urlsplit(url)
    q = dict(parse_qsl(u.query))
    st = json.loads(b64d(q["state"]))
    st["returnTo"] = return_to
    q["state"] = b64e_padded(json.dumps(st).encode())
    url = urlunsplit((u.scheme, u.netloc, u.path, urlencode(q), ""))
    r = callback(px, at_provider(idp, url), pkce)
    assert r.status_code == 302, r.text
    assert r.headers["Location"] == "/"


def test_safe_return_to_other_preview_port(oidc, idp):
    px = oidc()
    r = login(px, idp, path="/deep/path?a=b&c=d")
    assert r.headers["Location"] == f"http://{host(3000, O1)}/deep/path?a=b&c=d"


def test_idp_down_is_503_not_a_hang(oidc, idp):
    idp.down()
    px = oidc()
    t0 = time.monotonic()
    r = px.get("/", host=host(3000, O1), headers=NAV)
    assert r.status_code == 503, r.text
    assert time.monotonic() - t0 < 3
    assert r.headers.get("Retry-After")
    assert "identity provider" in r.text
    idp.up()
    assert px.get("/", host=host(3000, O1), headers=NAV).status_code == 307


def test_idp_down_at_token_exchange(oidc, idp):
    px = oidc()
    url, pkce = start(px)
    target = at_provider(idp, url)
    idp.down()
    r = callback(px, target, pkce)
    assert r.status_code == 503, r.text


def test_discovery_cached(oidc, idp):
    px = oidc()
    for _ in range(3):
        start(px)
    assert len(idp.calls("/.well-known/openid-configuration")) == 1


def test_secrets_never_logged(oidc, idp):
    px = oidc()
    url, pkce = start(px)
    target = at_provider(idp, url)
    r = callback(px, target, pkce)
    code = dict(parse_qsl(urlsplit(target).query))["code"]
    log = px.log()
    for secret in (code, pkce, auth_cookie(r), idp.client_secret):
        assert secret not in log


# ------------------------------------------------------------- API mode --

def test_login_api_mode_uses_c3(proxy, api, idp, runner):
    api.add_sandbox("sb-o2", organizationId="o2")
    disc = requests.get(idp.discovery_url, timeout=5).json()
    api.set(userinfo_url=disc["userinfo_endpoint"])
    env = api.proxy_env()
    env.update({"OIDC_DOMAIN": idp.issuer, "OIDC_CLIENT_ID": idp.client_id,
                "OIDC_CLIENT_SECRET": idp.client_secret})
    px = proxy(env=env)
    r = login(px, idp, "sb-priv", "alice")
    assert r.status_code == 302, r.text
    value = auth_cookie(r, "sb-priv")
    c3 = api.calls("/preview/sb-priv/access")
    assert c3 and c3[-1]["identity"] == "alice"
    page = px.get("/", host=host(3000, "sb-priv"),
                  headers={"Cookie": f"daytona-sandbox-auth-sb-priv={value}"})
    assert page.status_code == 200, page.text
    # alice (o1) on o2's sandbox: the API says no
    r = login(px, idp, "sb-o2", "alice")
    assert r.status_code == 403, r.text


def test_config_checks_issuer(proxy_bin, tmp_path):
    import subprocess
    conf = tmp_path / "bad.conf"
    conf.write_text("listen 127.0.0.1:1\noidc_issuer ftp://idp.example/\n")
    p = subprocess.run([proxy_bin, "-t", "-c", str(conf)], capture_output=True, timeout=10)
    assert p.returncode == 1 and b"oidc_issuer" in p.stderr
    conf.write_text("listen 127.0.0.1:1\noidc_issuer https://idp.example/realms/a\n"
                    "oidc_client_id c\noidc_client_secret s\noidc_audience aud\n"
                    "oidc_public_issuer https://login.example/realms/a\noidc_org_claim team\n")
    p = subprocess.run([proxy_bin, "-t", "-c", str(conf)], capture_output=True, timeout=10)
    assert p.returncode == 0, p.stderr
    import os
    env = dict(os.environ, OIDC_DOMAIN="not a url")
    p = subprocess.run([proxy_bin, "-t", "-c", str(conf)], capture_output=True, timeout=10,
                       env=env)
    assert p.returncode == 1 and b"OIDC_DOMAIN" in p.stderr


def test_wrong_client_secret_is_502(oidc, idp):
    px = oidc(settings={"oidc_client_secret": "not-the-secret"})
    r = login(px, idp)
    assert r.status_code == 502, r.text
    assert "client credentials" in r.text
    assert "not-the-secret" not in px.log()


def test_dead_signed_token_is_401_not_a_login_standalone(oidc, idp):
    """LESSONS A2: a host label that names no sandbox (an expired or revoked
    signed token, or nothing) gets 401: logging in cannot open it, so no 307."""
    px = oidc()
    r = px.get("/", host=host(3000, "deadtoken0123456"), headers=NAV)
    assert r.status_code == 401, (r.status_code, r.headers.get("Location"))
    assert idp.calls("/.well-known") == []
    r = px.get("/", host=host(3000, O1), headers=NAV)      # a private sandbox still does
    assert r.status_code == 307


def test_dead_signed_token_is_401_not_a_login_api_mode(proxy, api, idp, runner):
    """API mode cannot tell a private sandbox's ID from a dead token by C2 and C5
    (both refuse); C6 on the label can, once per label (cached)."""
    env = api.proxy_env()
    env.update({"OIDC_DOMAIN": idp.issuer, "OIDC_CLIENT_ID": idp.client_id,
                "OIDC_CLIENT_SECRET": idp.client_secret})
    px = proxy(env=env)
    api.add_token("tok0123456789abc", 3000, "sb-priv")
    api.revoke_token("tok0123456789abc", 3000)
    for _ in range(3):
        r = px.get("/", host=host(3000, "tok0123456789abc"), headers=NAV)
        assert r.status_code == 401, (r.status_code, r.headers.get("Location"))
    assert len(api.calls("/runners/by-sandbox/tok0123456789abc")) == 1
    r = px.get("/", host=host(3000, "sb-priv"), headers=NAV)
    assert r.status_code == 307 and r.headers["Location"].startswith(idp.issuer)
    # not a navigation: no C6 on the label at all
    r = px.get("/", host=host(3000, "othertoken000000"),
               headers={"Accept": "application/json"})
    assert r.status_code == 401
    assert api.calls("/runners/by-sandbox/othertoken000000") == []

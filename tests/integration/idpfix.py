"""Fixtures for the OIDC tests: a real OpenID provider (tests/idp/idp.mjs,
oidc-provider on Node.js) and a requests-only login helper.

Import them into a test module with
    from idpfix import *  # noqa: F401,F403

  idp_server   session: idp.mjs started once (readiness: its "PORT <n> CTL <m>"
               line); an IdpClient
  idp          function: idp_server after /_ctl/reset (initial keys, RS256,
               ID-token TTL 3600 s, listening, start-up redirect URIs, empty log)
  IdpClient    .issuer, .client_id, .client_secret, .port, .ctl_port,
               .discovery_url, .authorization_endpoint, .token_endpoint,
               .jwks_uri; rotate(), set_alg(), set_id_token_ttl(), down(),
               up(), log(), calls(), wait_calls(), set_redirect_uris(), state(),
               reset(), login()
  login(session, authorize_url, user="alice", password="pw")
               follows an authorization URL through the provider's login form
               and returns the Location of the redirect back to the relying
               party (redirect_uri?code=..&state=..&iss=..) without following it
  LoginRejected  raised by login() when the provider shows the form again

The client: client_id "proxy-test", client_secret "proxy-secret"
(client_secret_basic, client_secret_post accepted), code flow, PKCE S256
required. Redirect URIs: any http(s) URI whose path ends in /callback (e.g.
http://proxy.test:<port>/callback, http://proxy.localhost:<port>/callback),
plus any given with set_redirect_uris(); set_redirect_uris([...], strict=True)
accepts only the listed ones.
Accounts: alice (org o1) and bob (org o2), password "pw". ID-token claims:
iss, sub, aud, exp, iat, nonce (when sent), org, name (scope profile), ...

Needs node and tests/idp/node_modules (run tests/idp/setup.sh); without them the
fixture FAILS, it does not skip. Nothing here sleeps to synchronise: waits are
bounded polls or the readiness line.
"""
import os
import shutil
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from helpers import helper_log, popen_with_log, read_line, stop_proc, wait_until

__all__ = ["IdpClient", "LoginRejected", "idp_server", "idp", "login", "IDP_CLIENT_ID",
           "IDP_CLIENT_SECRET", "IDP_USERS"]

IDP_CLIENT_ID = "proxy-test"
IDP_CLIENT_SECRET = "proxy-secret"
IDP_USERS = {"alice": {"password": "pw", "org": "o1", "name": "Alice Example"},
             "bob": {"password": "pw", "org": "o2", "name": "Bob Example"}}

HERE = os.path.dirname(os.path.abspath(__file__))
IDP_DIR = os.path.join(os.path.dirname(HERE), "idp")
IDP_SCRIPT = os.path.join(IDP_DIR, "idp.mjs")
SETUP_HINT = "run tests/idp/setup.sh to install Node.js and oidc-provider"


class LoginRejected(AssertionError):
    """The provider answered a login submission with its form again
    (wrong user or password). .response is that answer."""

    def __init__(self, msg, response):
        super().__init__(msg)
        self.response = response


class _Forms(HTMLParser):
    """The forms of a page: [{"action", "method", "fields": {name: value}}]."""

    def __init__(self):
        super().__init__()
        self.forms = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action") or "", "method":
                               (a.get("method") or "get").lower(), "fields": {}})
        elif tag in ("input", "button", "select", "textarea") and self.forms and a.get("name"):
            if tag in ("input", "button") and (a.get("type") or "").lower() in ("submit", "button"):
                return
            self.forms[-1]["fields"].setdefault(a["name"], a.get("value") or "")


def _forms(html):
    p = _Forms()
    p.feed(html)
    p.close()
    return p.forms


def _origin(url):
    s = urlsplit(url)
    return (s.scheme, s.hostname, s.port)


def login(session, authorize_url, user="alice", password="pw", max_steps=20, timeout=5):
    """Walks authorize_url (the provider's /auth URL with the relying party's
    parameters) through the provider: follows its redirects, fills and submits
    its login form (fields "login" and "password") and any other form it shows
    (a consent form is submitted as is). Returns the Location of the first
    redirect that leaves the provider's origin (the relying party's
    redirect_uri with code and state, or with error=...), without requesting it.

    session is a requests.Session (it keeps the provider's cookies: a second
    login() with the same session reuses the provider's login session and shows
    no form). authorize_url must be on the provider's origin: an authorization
    request the provider refuses without a redirect (a bad redirect_uri) is an
    AssertionError, one it refuses with a redirect returns that redirect.
    Raises LoginRejected when a submitted login form comes back."""
    idp_origin = _origin(authorize_url)
    method, url, data = "GET", authorize_url, None
    submitted_login = False
    for _ in range(max_steps):
        r = session.request(method, url, data=data, allow_redirects=False, timeout=timeout)
        if r.is_redirect:
            target = urljoin(r.url, r.headers["Location"])
            if _origin(target) != idp_origin:
                return target
            method, url, data = "GET", target, None
            continue
        if r.status_code != 200 or "html" not in r.headers.get("Content-Type", ""):
            raise AssertionError(f"login: unexpected {r.status_code} at {r.url}: {r.text[:500]!r}")
        forms = _forms(r.text)
        if not forms:
            raise AssertionError(f"login: no form at {r.url}: {r.text[:500]!r}")
        form = forms[0]
        fields = dict(form["fields"])
        if "password" in fields:
            if submitted_login:
                raise LoginRejected(f"login as {user!r} rejected at {r.url}", r)
            fields["login"] = user
            fields["password"] = password
            submitted_login = True
        url = urljoin(r.url, form["action"])
        if form["method"] == "post":
            method, data = "POST", fields
        else:
            method, data = "GET", None
            url = requests.Request("GET", url, params=fields).prepare().url
    raise AssertionError(f"login: still at the provider after {max_steps} steps ({url})")


class IdpClient:
    """Talks to idp.mjs's control API (its own port, see the script's header)."""

    def __init__(self, port, ctl_port, proc=None):
        self.port = port
        self.ctl_port = ctl_port
        self.proc = proc
        self.issuer = f"http://127.0.0.1:{port}"
        self.discovery_url = self.issuer + "/.well-known/openid-configuration"
        # what discovery names (test_idp_fixture checks they agree)
        self.authorization_endpoint = self.issuer + "/auth"
        self.token_endpoint = self.issuer + "/token"
        self.jwks_uri = self.issuer + "/jwks"
        self.client_id = IDP_CLIENT_ID
        self.client_secret = IDP_CLIENT_SECRET
        self.ctl_base = f"http://127.0.0.1:{ctl_port}/_ctl"

    def ctl(self, name, **body):
        r = requests.post(f"{self.ctl_base}/{name}", json=body, timeout=10)
        if r.status_code != 200:
            raise AssertionError(f"/_ctl/{name} {body!r}: {r.status_code} {r.text}")
        return r.json()

    def ping(self):
        try:
            return self.ctl("ping")["ok"]
        except (requests.RequestException, AssertionError):
            return False

    def state(self):
        """issuer, port, alg, id_token_ttl, kids, up, down_mode, redirect_uris."""
        return self.ctl("state")

    def reset(self):
        return self.ctl("reset")

    def rotate(self, keep_old=False):
        """A brand-new RSA and EC signing key (new kids); the old keys leave the
        JWKS unless keep_old. Returns the JWKS's kids, newest first."""
        return self.ctl("rotate", keep_old=keep_old)["kids"]

    def set_alg(self, alg):
        """"RS256" or "ES256": how ID tokens issued from now on are signed."""
        return self.ctl("alg", alg=alg)

    def set_id_token_ttl(self, seconds):
        return self.ctl("id_token_ttl", seconds=seconds)

    def down(self, mode="refuse"):
        """"refuse": the listener is closed (connects are refused, open
        connections dropped); "reset": connects are answered with a TCP RST."""
        return self.ctl("down", mode=mode)

    def up(self):
        return self.ctl("up")

    def set_redirect_uris(self, uris, strict=None):
        body = {"uris": list(uris)}
        if strict is not None:
            body["strict"] = strict
        return self.ctl("redirect_uris", **body)

    def log(self):
        """Requests to the provider port since the last reset, in arrival order:
        [{"method", "path", "query", "time"}]."""
        return self.ctl("log")

    def calls(self, path_prefix="", method=None):
        """Logged requests whose path starts with path_prefix, e.g.
        calls("/.well-known/"), calls("/jwks"), calls("/token", "POST")."""
        return [e for e in self.log() if e["path"].startswith(path_prefix)
                and (method is None or e["method"] == method)]

    def wait_calls(self, path_prefix="", count=1, timeout=5.0, method=None):
        """Waits (bounded) until at least count matching requests are logged."""
        return wait_until(lambda: (lambda c: c if len(c) >= count else None)(
            self.calls(path_prefix, method)), timeout=timeout,
            what=f"{count} IdP request(s) to {path_prefix!r}")

    def login(self, session, authorize_url, user="alice", password="pw"):
        return login(session, authorize_url, user=user, password=password)


def start_idp(*args):
    """Starts idp.mjs with args; returns (proc, IdpClient). Fails the test when
    node or tests/idp/node_modules is missing."""
    node = shutil.which("node")
    if node is None or not os.path.isfile(os.path.join(
            IDP_DIR, "node_modules", "oidc-provider", "package.json")):
        pytest.fail(f"IdP dependencies missing (node, tests/idp/node_modules); {SETUP_HINT}",
                    pytrace=False)
    proc = popen_with_log([node, IDP_SCRIPT, "0", *args])
    line = read_line(proc, timeout=30)
    parts = line.split()
    if len(parts) != 4 or parts[0] != b"PORT" or parts[2] != b"CTL":
        stop_proc(proc)
        raise RuntimeError(f"idp.mjs did not start: {line!r} {helper_log(proc)!r}")
    client = IdpClient(int(parts[1]), int(parts[3]), proc=proc)
    if not client.ping():
        stop_proc(proc)
        raise RuntimeError(f"idp.mjs control API does not answer: {helper_log(proc)!r}")
    return proc, client


@pytest.fixture(scope="session")
def idp_server():
    proc, client = start_idp()
    yield client
    stop_proc(proc)


@pytest.fixture
def idp(idp_server):
    idp_server.reset()
    return idp_server

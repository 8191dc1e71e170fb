"""The OIDC test provider (tests/idp/idp.mjs, via idpfix.py) checked on its own
with a tiny relying party written here: discovery, the code flow with PKCE S256
through login(), the token exchange, ID-token signatures against the JWKS, the
controls (rotate, alg, TTL, down/up, log, redirect URIs) and the login form.
No proxy is involved: these tests keep the harness honest for the OIDC tests
that use it."""
import base64
import hashlib
import json
import secrets
import socket
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests

from helpers import BASE_DOMAIN, wait_until
from idpfix import *  # noqa: F401,F403
from idpfix import IDP_USERS, LoginRejected, login

REDIRECT_URI = f"http://{BASE_DOMAIN}:18080/callback"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def discovery(idp):
    r = requests.get(idp.discovery_url, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def jwks(idp):
    r = requests.get(discovery(idp)["jwks_uri"], timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


class Flow:
    """One authorization request of the test relying party."""

    def __init__(self, idp, redirect_uri=REDIRECT_URI, **extra):
        self.idp = idp
        self.verifier = b64url(secrets.token_bytes(32))
        self.state = b64url(secrets.token_bytes(12))
        self.nonce = b64url(secrets.token_bytes(12))
        self.redirect_uri = redirect_uri
        params = {"client_id": idp.client_id, "response_type": "code", "scope": "openid profile",
                  "redirect_uri": redirect_uri, "state": self.state, "nonce": self.nonce,
                  "code_challenge": b64url(hashlib.sha256(self.verifier.encode()).digest()),
                  "code_challenge_method": "S256"}
        params.update(extra)
        self.params = {k: v for k, v in params.items() if v is not None}
        self.url = discovery(idp)["authorization_endpoint"] + "?" + urlencode(self.params)

    def login(self, user="alice", password="pw", session=None):
        """login(); checks the redirect and returns the code."""
        loc = login(session or requests.Session(), self.url, user=user, password=password)
        assert loc.startswith(self.redirect_uri + "?"), loc
        q = parse_qs(urlsplit(loc).query)
        assert q.get("state") == [self.state], loc
        assert q.get("iss") == [self.idp.issuer], loc
        assert "code" in q, loc
        return q["code"][0]

    def exchange(self, code, verifier=None, auth="basic", secret=None):
        data = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": self.redirect_uri, "code_verifier": verifier or self.verifier}
        kw = {}
        secret = secret or self.idp.client_secret
        if auth == "basic":
            kw["auth"] = (self.idp.client_id, secret)
        else:
            data.update(client_id=self.idp.client_id, client_secret=secret)
        return requests.post(discovery(self.idp)["token_endpoint"], data=data, timeout=5, **kw)

    def id_token(self, user="alice", password="pw"):
        r = self.exchange(self.login(user, password))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_type"].lower() == "bearer" and body["access_token"]
        return body["id_token"]


def verify(idp, token, alg):
    """Checks token's signature with the JWKS key its kid names, and iss/aud/exp."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg, header
    keys = {k["kid"]: k for k in jwks(idp)["keys"]}
    assert header["kid"] in keys, (header, list(keys))
    key = jwt.PyJWK.from_dict(keys[header["kid"]])
    return jwt.decode(token, key.key, algorithms=[alg], audience=idp.client_id,
                      issuer=idp.issuer, options={"require": ["exp", "iat", "sub"]})


def test_discovery_names_the_issuer(idp):
    d = discovery(idp)
    assert d["issuer"] == idp.issuer == f"http://127.0.0.1:{idp.port}"
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        assert d[name] == getattr(idp, name), (name, d[name])
    assert d["code_challenge_methods_supported"] == ["S256"]
    assert set(d["id_token_signing_alg_values_supported"]) == {"RS256", "ES256"}
    assert {"client_secret_basic", "client_secret_post"} <= set(
        d["token_endpoint_auth_methods_supported"])
    assert {"sub", "org", "name"} <= set(d["claims_supported"])
    assert [e["path"] for e in idp.calls("/.well-known/")] == ["/.well-known/openid-configuration"]


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_code_flow_with_pkce_gives_a_signed_id_token(idp, user):
    # Daytona adds audience=<OIDC_AUDIENCE>: it must not break the request.
    flow = Flow(idp, audience="https://daytona.example/api")
    before = time.time()
    claims = verify(idp, flow.id_token(user), "RS256")
    assert claims["sub"] == user
    assert claims["org"] == IDP_USERS[user]["org"]
    assert claims["name"] == IDP_USERS[user]["name"]
    assert claims["nonce"] == flow.nonce
    assert claims["aud"] == idp.client_id
    assert claims["iss"] == idp.issuer
    assert claims["exp"] - claims["iat"] == 3600
    assert before - 5 <= claims["iat"] <= time.time() + 5
    assert len(idp.calls("/token", "POST")) == 1
    assert jwt.get_unverified_header(flow.id_token(user))["kid"].startswith("rsa-")


def test_signature_check_is_real(idp):
    """verify() must refuse a token whose payload was changed."""
    token = Flow(idp).id_token("alice")
    head, payload, sig = token.split(".")
    claims = verify(idp, token, "RS256")
    claims["org"] = "o2"
    forged = ".".join([head, b64url(json.dumps(claims).encode()), sig])
    with pytest.raises(jwt.InvalidSignatureError):
        verify(idp, forged, "RS256")


def test_client_secret_post_and_wrong_secret(idp):
    flow = Flow(idp)
    r = flow.exchange(flow.login(), auth="post", secret="wrong")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
    flow = Flow(idp)
    r = flow.exchange(flow.login(), auth="post")
    assert r.status_code == 200 and r.json()["id_token"], r.text


def test_replayed_code_is_refused(idp):
    flow = Flow(idp)
    code = flow.login()
    assert flow.exchange(code).status_code == 200
    r = flow.exchange(code)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text


def test_pkce_is_required_and_checked(idp):
    flow = Flow(idp)
    r = flow.exchange(flow.login(), verifier=b64url(secrets.token_bytes(32)))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    flow = Flow(idp, code_challenge=None, code_challenge_method=None)
    loc = login(requests.Session(), flow.url)
    q = parse_qs(urlsplit(loc).query)
    assert loc.startswith(REDIRECT_URI + "?") and q["error"] == ["invalid_request"], loc
    assert "code" not in q


def test_nonce_is_absent_when_not_sent(idp):
    claims = verify(idp, Flow(idp, nonce=None).id_token(), "RS256")
    assert "nonce" not in claims


def test_rotate_changes_the_kids(idp):
    old = {k["kid"] for k in jwks(idp)["keys"]}
    assert len(old) == 2
    kids = idp.rotate()
    new = {k["kid"] for k in jwks(idp)["keys"]}
    assert new == set(kids) and not (new & old), (old, new)
    token = Flow(idp).id_token()
    assert jwt.get_unverified_header(token)["kid"] in new
    verify(idp, token, "RS256")
    kept = idp.rotate(keep_old=True)
    assert set(kept) == {k["kid"] for k in jwks(idp)["keys"]} and new < set(kept)
    assert jwt.get_unverified_header(Flow(idp).id_token())["kid"] == kept[0]
    idp.reset()
    assert {k["kid"] for k in jwks(idp)["keys"]} == old


def test_es256(idp):
    idp.set_alg("ES256")
    token = Flow(idp).id_token("bob")
    assert jwt.get_unverified_header(token)["kid"].startswith("ec-")
    assert verify(idp, token, "ES256")["org"] == "o2"
    idp.set_alg("RS256")
    verify(idp, Flow(idp).id_token(), "RS256")
    with pytest.raises(AssertionError):
        idp.set_alg("HS256")


def test_id_token_ttl(idp):
    # 3 s, not 1: exp is whole seconds, so a 1 s token can be expired by the
    # time a loaded machine checks it the first time.
    idp.set_id_token_ttl(3)
    token = Flow(idp).id_token()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3
    # It does expire: verification refuses it once exp has passed (bounded poll).
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWK.from_dict(next(k for k in jwks(idp)["keys"] if k["kid"] == kid)).key

    def expired():
        try:
            jwt.decode(token, key, algorithms=["RS256"], audience=idp.client_id)
            return False
        except jwt.ExpiredSignatureError:
            return True
    assert not expired()
    wait_until(expired, timeout=8, interval=0.1, what="the 3 s ID token to expire")


def connect_fails(port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /.well-known/openid-configuration HTTP/1.1\r\nHost: x\r\n\r\n")
        data = s.recv(100)
        return "closed" if not data else None
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    finally:
        s.close()


def test_down_and_up(idp):
    s = requests.Session()
    assert s.get(idp.discovery_url, timeout=5).status_code == 200   # a kept-alive connection
    assert idp.down()["up"] is False
    assert connect_fails(idp.port) == "refused"
    with pytest.raises(requests.ConnectionError):
        s.get(idp.discovery_url, timeout=5)
    idp.up()
    assert discovery(idp)["issuer"] == idp.issuer
    assert idp.down("reset")["down_mode"] == "reset"
    assert connect_fails(idp.port) == "reset"
    with pytest.raises(requests.ConnectionError):
        requests.get(idp.discovery_url, timeout=5)
    idp.up()
    Flow(idp).id_token()


def test_reset_brings_it_back_up(idp_server):
    idp_server.down()
    idp_server.reset()
    assert discovery(idp_server)["issuer"] == idp_server.issuer


def test_wrong_password_shows_the_form_again(idp):
    flow = Flow(idp)
    for user, password in (("alice", "nope"), ("mallory", "pw"), ("", "")):
        with pytest.raises(LoginRejected) as e:
            login(requests.Session(), flow.url, user=user, password=password)
        page = e.value.response.text
        assert 'name="login"' in page and 'name="password"' in page
        assert "Invalid username or password" in page
        assert "code=" not in e.value.response.headers.get("Location", "")
    assert idp.calls("/token") == []


def test_login_form_is_plain_html(idp):
    r = requests.get(Flow(idp).url, timeout=5)   # follows to the form
    assert r.status_code == 200 and r.url.startswith(idp.issuer + "/interaction/")
    assert r.headers["Content-Type"].startswith("text/html")
    for needle in ('<form id="login-form" method="post"', 'name="login"',
                   'type="password" name="password"', '<button type="submit"'):
        assert needle in r.text, needle


def test_second_login_reuses_the_session(idp):
    s = requests.Session()
    Flow(idp).login("bob", session=s)
    flow = Flow(idp)
    # no form this time: a wrong password would not even be asked for
    code = flow.login("bob", "ignored", session=s)
    r = flow.exchange(code)
    assert verify(idp, r.json()["id_token"], "RS256")["sub"] == "bob"


def test_redirect_uris(idp):
    for uri in (REDIRECT_URI, "http://proxy.localhost:4321/callback",
                "http://127.0.0.1:9/oidc/callback"):
        Flow(idp, redirect_uri=uri).login()
    for uri in ("http://proxy.test:18080/other", "http://evil@proxy.test/callback",
                "http://proxy.test/callback#x"):
        with pytest.raises(AssertionError, match="unexpected 400"):
            Flow(idp, redirect_uri=uri).login()
    idp.set_redirect_uris([REDIRECT_URI], strict=True)
    Flow(idp).login()
    with pytest.raises(AssertionError, match="unexpected 400"):
        Flow(idp, redirect_uri="http://proxy.localhost:4321/callback").login()


def test_log_counts_requests(idp):
    assert idp.log() == []
    jwks(idp)
    jwks(idp)
    assert len(idp.calls("/jwks", "GET")) == 2
    assert len(idp.calls("/.well-known/openid-configuration")) == 2
    e = idp.calls("/jwks")[0]
    assert e["method"] == "GET" and abs(e["time"] - time.time()) < 30

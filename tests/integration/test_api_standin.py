"""The Daytona API stand-in (servers/api.py) itself, talked to directly with
requests (no proxy): every call C1-C13 answers the §9 fixture cases with the
§2 status, content type and body shape; the proxy-key check; faults; the log;
the toy IdP's PKCE and client checks. A wrong shape here would make the
API-mode proxy tests prove nothing, so this runs before they rely on it."""
import base64
import datetime
import hashlib
import json
import secrets
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from apifix import *  # noqa: F401,F403
from apifix import API_CLIENT_ID, API_CLIENT_SECRET, API_RUNNER_KEY
from helpers import RawConn, request_bytes, wait_until

HTML = "text/html; charset=utf-8"

RUNNER_FULL_KEYS = ("id cpu memory disk region name state unschedulable tags createdAt updatedAt "
                    "version apiVersion runnerClass apiKey").split()
SANDBOX_KEYS = ("id organizationId name user env labels public networkBlockAll target cpu gpu "
                "memory disk toolboxProxyUrl").split()
BUILD_INFO_KEYS = ("createdAt", "updatedAt", "snapshotRef")
SNAPSHOT_KEYS = ("id general name state size entrypoint cpu gpu mem disk errorReason createdAt "
                 "updatedAt lastUsedAt").split()
CONFIG_KEYS = ("version oidc linkedAccountsEnabled announcements proxyTemplateUrl proxyToolboxUrl "
               "defaultSnapshot dashboardUrl maxAutoArchiveInterval maintananceMode "
               "environment").split()

PK = {"Authorization": "Bearer pk"}


def bearer(tok):
    return {"Authorization": f"Bearer {tok}"}


def get(api, path, headers=None, method="GET", **kw):
    kw.setdefault("timeout", 5)
    kw.setdefault("allow_redirects", False)
    return requests.request(method, api.url + path, headers=headers or {}, **kw)


def assert_plain(r, value):
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == HTML
    assert r.content == value.encode()


def assert_error(r, status, message=None):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"path", "timestamp", "statusCode", "error", "message"}
    assert body["statusCode"] == status and isinstance(body["statusCode"], int)
    assert body["path"] == urlsplit(r.request.url).path + (
        "?" + urlsplit(r.request.url).query if urlsplit(r.request.url).query else "")
    ts = body["timestamp"]
    assert ts.endswith("Z")
    datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))   # RFC 3339
    if message is not None:
        assert body["message"] == message
    return body


def assert_json(r, keys, status=200):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    missing = [k for k in keys if k not in body]
    assert not missing, f"missing required keys {missing}"
    return body


# ------------------------------------------------------------------- C1-C13 --

def test_c1_config(api):
    r = get(api, "/config")          # public: no key needed
    body = assert_json(r, CONFIG_KEYS)
    assert body["oidc"] == {"issuer": api.idp + "/", "clientId": "proxy-test",
                            "audience": "daytona"}
    assert isinstance(body["announcements"], dict)


@pytest.mark.parametrize("headers,status,message", [
    ({}, 401, None),
    (bearer("wrong"), 401, None),
    ({"Authorization": "Bearer "}, 401, None),
    ({"Authorization": "pk"}, 401, None),
    (bearer("key-bob"), 403, "Invalid authentication context"),
])
def test_proxy_key_check(api, headers, status, message):
    for path in ("/preview/sb-pub/public", "/preview/sb-priv/validate/tok-1",
                 "/preview/abc123/3000/sandbox-id", "/runners/by-sandbox/sb-priv",
                 "/runners/r1/full", "/preview/sb-priv/signing-key",
                 "/preview/sb-priv/preview-warning?port=3000"):
        assert_error(get(api, path, headers), status, message)
    for path in ("/sandbox/sb-priv/last-activity", "/sandbox/sb-stop/start"):
        assert_error(get(api, path, headers, method="POST"), status, message)
    assert api.activity() == {}
    assert api.sandboxes()["sb-stop"]["state"] == "stopped"


def test_c2_public(api):
    assert_plain(get(api, "/preview/sb-pub/public", PK), "true")
    for label in ("sb-priv", "nope", "abc123"):
        assert_error(get(api, f"/preview/{label}/public", PK), 404)


def test_c3_access_user_bearer_and_xff(api):
    h = {"X-Forwarded-For": "203.0.113.7"}
    assert_plain(get(api, "/preview/sb-priv/access", {**bearer("jwt-alice"), **h}), "true")
    assert_error(get(api, "/preview/sb-priv/access", {**bearer("key-bob"), **h}), 404)
    assert_error(get(api, "/preview/sb-priv/access", {**bearer("bad"), **h}), 401)
    assert_error(get(api, "/preview/sb-priv/access", {"Authorization": "Bearer "}), 401)
    assert_error(get(api, "/preview/nope/access", bearer("jwt-alice")), 404)
    calls = api.calls("/access")
    assert [c["xff"] for c in calls] == ["203.0.113.7"] * 3 + [None, None]
    assert [c["identity"] for c in calls] == ["alice", "bob", None, None, "alice"]
    # proxy-key calls never record an XFF
    get(api, "/preview/sb-pub/public", {**PK, **h})
    assert api.calls("/public")[0]["xff"] is None


def test_c4_validate(api):
    assert_plain(get(api, "/preview/sb-priv/validate/tok-1", PK), "true")
    assert_error(get(api, "/preview/sb-priv/validate/tok-2", PK), 404)
    assert_error(get(api, "/preview/nope/validate/tok-1", PK), 404)


def test_c5_signed_token(api):
    assert_plain(get(api, "/preview/abc123/3000/sandbox-id", PK), "sb-priv")
    assert_error(get(api, "/preview/abc123/3001/sandbox-id", PK), 403, "Invalid or expired token")
    assert_error(get(api, "/preview/zzz/3000/sandbox-id", PK), 403, "Invalid or expired token")


def test_c6_runner_by_sandbox(api):
    for sid, cls in (("sb-priv", "container"), ("sb-pub", "container"), ("sb-stop", "vm")):
        body = assert_json(get(api, f"/runners/by-sandbox/{sid}", PK), RUNNER_FULL_KEYS)
        assert body["proxyUrl"] == api.runner.url and body["apiUrl"] == api.runner.url
        assert body["apiKey"] == API_RUNNER_KEY and body["runnerClass"] == cls
        assert body["state"] == "ready"
    assert_error(get(api, "/runners/by-sandbox/sb-norunner", PK), 404)
    assert_error(get(api, "/runners/by-sandbox/nope", PK), 404)


def test_c7_last_activity(api):
    for _ in range(2):
        r = get(api, "/sandbox/sb-priv/last-activity", PK, method="POST")
        assert r.status_code == 201 and r.content == b""
        assert r.headers["Content-Length"] == "0"
    get(api, "/sandbox/whatever/last-activity", PK, method="POST")   # not checked
    assert api.activity() == {"sb-priv": 2, "whatever": 1}
    assert len(api.calls("/last-activity", method="POST")) == 3


def test_c8_sandbox(api):
    body = assert_json(get(api, "/sandbox/sb-build", PK), SANDBOX_KEYS)
    assert all(k in body["buildInfo"] for k in BUILD_INFO_KEYS)
    assert body["buildInfo"]["snapshotRef"] == "snap-ref-1"
    assert body["runnerId"] == "r1" and body["state"] == "started"
    body = assert_json(get(api, "/sandbox/sb-stop", PK), SANDBOX_KEYS)
    assert body["state"] == "stopped" and body["runnerId"] == "r-vm" and "buildInfo" not in body
    assert get(api, "/sandbox/sb-norunner", PK).json()["runnerId"] is None
    # user bearer (§8): an API key of a member works, a JWT has no organisation context
    assert_json(get(api, "/sandbox/sb-build", bearer("key-alice")), SANDBOX_KEYS)
    assert_error(get(api, "/sandbox/sb-build", bearer("jwt-alice")), 403)
    assert_error(get(api, "/sandbox/sb-build", bearer("key-bob")), 404)
    assert_error(get(api, "/sandbox/sb-build", {"Authorization": "Bearer "}), 401)
    assert_error(get(api, "/sandbox/nope", PK), 404)


def test_c9_snapshot(api):
    body = assert_json(get(api, "/snapshots/snap-1", {**bearer("key-alice"),
                                                     "X-Forwarded-For": "198.51.100.1"}),
                       SNAPSHOT_KEYS)
    assert body["ref"] == "snap-ref-1" and body["initialRunnerId"] == "r1"
    assert api.calls("/snapshots/")[0]["xff"] == "198.51.100.1"
    assert_error(get(api, "/snapshots/nope", bearer("key-alice")), 404)
    assert_error(get(api, "/snapshots/snap-1", {}), 401)


def test_c10_runner_full(api):
    body = assert_json(get(api, "/runners/r-vm/full", PK), RUNNER_FULL_KEYS)
    assert body["runnerClass"] == "vm" and body["apiUrl"] == api.runner.url
    assert_json(get(api, "/runners/r1/full", PK), RUNNER_FULL_KEYS)
    assert_error(get(api, "/runners/nope/full", PK), 404)


def test_c11_start_state_machine(api):
    api.set(start_delay_ms=300)
    t0 = time.monotonic()
    body = assert_json(get(api, "/sandbox/sb-stop/start", PK, method="POST"), SANDBOX_KEYS)
    assert body["state"] == "starting"
    states = []

    def started():
        s = get(api, "/sandbox/sb-stop", PK).json()["state"]
        states.append(s)
        return s == "started"
    wait_until(started, timeout=5, what="sb-stop started")
    assert time.monotonic() - t0 >= 0.3
    assert states[0] == "starting"
    # already started: 200, unchanged
    assert get(api, "/sandbox/sb-stop/start", PK, method="POST").json()["state"] == "started"
    assert_error(get(api, "/sandbox/nope/start", PK, method="POST"), 404)


def test_c11_outcome_and_v0190(api):
    api.set(start_delay_ms=0, start_outcome="error")
    get(api, "/sandbox/sb-stop/start", PK, method="POST")
    assert get(api, "/sandbox/sb-stop", PK).json()["state"] == "error"
    api.reset()
    api.set(v0190=True)
    assert_error(get(api, "/sandbox/sb-stop/start", PK, method="POST"), 403)
    assert get(api, "/sandbox/sb-stop", PK).json()["state"] == "stopped"


def test_c12_signing_key_and_rotation(api):
    assert_plain(get(api, "/preview/sb-priv/signing-key", PK), "testsigningkey1234567890abcdefgh")
    new = api.rotate("sb-priv")
    assert len(new) == 32 and new != "testsigningkey1234567890abcdefgh"
    assert_plain(get(api, "/preview/sb-priv/signing-key", PK), new)
    assert api.rotate("sb-priv", key="k" * 32) == "k" * 32
    assert_plain(get(api, "/preview/sb-priv/signing-key", PK), "k" * 32)
    assert_error(get(api, "/preview/nope/signing-key", PK), 404)


def test_c13_preview_warning(api):
    r = get(api, "/preview/sb-priv/preview-warning?port=3000", PK)
    assert assert_json(r, ["enabled"]) == {"enabled": False}
    api.org("o1", True)
    assert get(api, "/preview/sb-priv/preview-warning?port=3000", PK).json() == {"enabled": True}
    # a signed-token label is resolved through its port
    assert get(api, "/preview/abc123/preview-warning?port=3000", PK).json() == {"enabled": True}
    assert_error(get(api, "/preview/abc123/preview-warning?port=3001", PK), 404)
    assert_error(get(api, "/preview/nope/preview-warning?port=3000", PK), 404)
    api.add_sandbox("sb-o2", organizationId="o2")
    assert get(api, "/preview/sb-o2/preview-warning?port=1", PK).json() == {"enabled": False}


def test_unknown_route_and_wrong_method(api):
    assert_error(get(api, "/nothing/here", PK), 404)
    assert_error(get(api, "/sandbox/sb-priv/start", PK), 404)           # GET on a POST route
    assert_error(get(api, "/preview/sb-pub/public", PK, method="POST"), 404)


# ---------------------------------------------------------- runtime changes --

def test_add_sandbox_token_and_reset(api):
    api.add_sandbox("sb-new", public=True, runnerId="r-vm", snapshotRef="ref-9")
    assert_plain(get(api, "/preview/sb-new/public", PK), "true")
    assert get(api, "/runners/by-sandbox/sb-new", PK).json()["runnerClass"] == "vm"
    assert get(api, "/sandbox/sb-new", PK).json()["buildInfo"]["snapshotRef"] == "ref-9"
    api.add_sandbox("sb-priv", authToken="tok-9")          # update keeps the rest
    assert_plain(get(api, "/preview/sb-priv/validate/tok-9", PK), "true")
    assert_error(get(api, "/preview/sb-priv/validate/tok-1", PK), 404)
    api.add_sandbox("sb-pub", public=False)
    assert_error(get(api, "/preview/sb-pub/public", PK), 404)
    api.add_token("t0k", 8080, "sb-new")
    assert_plain(get(api, "/preview/t0k/8080/sandbox-id", PK), "sb-new")
    api.revoke_token("t0k", 8080)
    assert_error(get(api, "/preview/t0k/8080/sandbox-id", PK), 403)
    api.add_token("t1k", 8080, "sb-new", ttl_s=0)          # already expired
    assert_error(get(api, "/preview/t1k/8080/sandbox-id", PK), 403)
    api.reset()
    assert api.log() == []
    assert_error(get(api, "/preview/sb-new/public", PK), 404)
    assert_plain(get(api, "/preview/sb-pub/public", PK), "true")
    assert_plain(get(api, "/preview/sb-priv/validate/tok-1", PK), "true")


def test_proxy_key_switch(api):
    api.set(proxy_key="other")
    assert_error(get(api, "/preview/sb-pub/public", PK), 401)
    assert_plain(get(api, "/preview/sb-pub/public", bearer("other")), "true")


# -------------------------------------------------------------------- faults --

def test_fail_next_then_success(api):
    api.fault("C6", fail_next=1, status=503, body="json")
    r = get(api, "/runners/by-sandbox/sb-priv", PK)
    assert_error(r, 503)
    assert_json(get(api, "/runners/by-sandbox/sb-priv", PK), RUNNER_FULL_KEYS)
    calls = api.calls("/runners/by-sandbox/")
    assert [(c["status"], c["fault"]) for c in calls] == [(503, 503), (200, None)]
    # other routes are untouched
    assert_plain(get(api, "/preview/sb-pub/public", PK), "true")


def test_fault_by_glob_body_status_and_count(api):
    api.fault("/api/preview/*/public", fail_next=2, status=500, body="json", body_status=502)
    r = get(api, "/preview/sb-pub/public", PK)
    assert r.status_code == 500 and r.json()["statusCode"] == 502
    assert get(api, "/preview/sb-pub/public", PK).status_code == 500
    assert_plain(get(api, "/preview/sb-pub/public", PK), "true")


@pytest.mark.parametrize("status", [401, 429, 500])
def test_json_error_statuses(api, status):
    api.fault("C3", fail_next=1, status=status)
    assert_error(get(api, "/preview/sb-priv/access", bearer("jwt-alice")), status)
    assert_plain(get(api, "/preview/sb-priv/access", bearer("jwt-alice")), "true")


def test_html_502(api):
    api.fault("C2", fail_next=1, status=502, body="html")
    r = get(api, "/preview/sb-pub/public", PK)
    assert r.status_code == 502 and r.headers["Content-Type"] == "text/html"
    assert r.text.startswith("<html>") and "502 Bad Gateway" in r.text
    with pytest.raises(ValueError):
        r.json()


def test_empty_object_and_garbage_bodies(api):
    api.fault("C6", fail_next=1, status=503, body="{}")
    r = get(api, "/runners/by-sandbox/sb-priv", PK)
    assert r.status_code == 503 and r.content == b"{}"
    api.fault("C6", fail_next=1, status=200, body="garbage")
    r = get(api, "/runners/by-sandbox/sb-priv", PK)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    with pytest.raises(ValueError):
        json.loads(r.content)


def test_huge_body(api):
    api.fault("C6", fail_next=1, status=200, body="huge", huge_bytes=3 << 20)
    r = get(api, "/runners/by-sandbox/sb-priv", PK, timeout=10)
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == len(r.content) == 3 << 20
    assert json.loads(r.content)["statusCode"] == 200


def test_reset_then_success(api):
    api.fault("C2", fail_next=1, body="reset")
    with pytest.raises(requests.ConnectionError):
        get(api, "/preview/sb-pub/public", PK)
    assert_plain(get(api, "/preview/sb-pub/public", PK), "true")
    assert [c["status"] for c in api.calls("/public")] == ["reset", 200]


def test_reset_is_a_tcp_rst(api):
    api.fault("C2", fail_next=1, body="reset")
    with RawConn(api.port) as c:
        c.send(request_bytes("GET", "/api/preview/sb-pub/public", "api", [("Authorization", "Bearer pk")]))
        with pytest.raises(ConnectionResetError):
            while c.sock.recv(65536):
                pass


def test_down_resets_every_matching_call(api):
    api.fault("/api/runners/*", down=True)
    for _ in range(3):
        with pytest.raises(requests.ConnectionError):
            get(api, "/runners/r1/full", PK)
    assert_plain(get(api, "/preview/sb-pub/public", PK), "true")
    api.clear_faults("/api/runners/*")
    assert_json(get(api, "/runners/r1/full", PK), RUNNER_FULL_KEYS)


def test_delay(api):
    api.fault("C2", delay_ms=400)
    t0 = time.monotonic()
    assert_plain(get(api, "/preview/sb-pub/public", PK), "true")
    assert 0.4 <= time.monotonic() - t0 < 3
    with pytest.raises(requests.Timeout):
        get(api, "/preview/sb-pub/public", PK, timeout=0.1)
    api.clear_faults()
    t0 = time.monotonic()
    get(api, "/preview/sb-pub/public", PK)
    assert time.monotonic() - t0 < 0.4


def test_keepalive_and_close_fault(api):
    """Answers are keep-alive with a Content-Length; Connection: close only by a fault."""
    with RawConn(api.port) as c:
        for path in ("/api/preview/sb-pub/public", "/api/preview/sb-priv/public",
                     "/api/sandbox/sb-pub/last-activity"):
            method = "POST" if "activity" in path else "GET"
            c.send(request_bytes(method, path, "api", [("Authorization", "Bearer pk")]))
            r = c.read_response()
            assert r.header("Content-Length") is not None and r.header("Connection") is None
        api.fault("C2", close=True)
        c.send(request_bytes("GET", "/api/preview/sb-pub/public", "api",
                             [("Authorization", "Bearer pk")]))
        r = c.read_response()
        assert r.status == 200 and r.header("Connection") == "close"
        assert c.is_closed(timeout=2)
    log = api.log()
    assert len({e["conn"] for e in log}) == 1
    assert [e["conn_request"] for e in log] == [1, 2, 3, 4]


# ----------------------------------------------------------------------- log --

def test_log_records_every_call_in_order(api):
    get(api, "/config")
    get(api, "/preview/sb-pub/public?x=1", {**PK, "X-Test": "a"})
    get(api, "/sandbox/sb-pub/last-activity", PK, method="POST")
    log = api.log()
    assert [(e["method"], e["path"], e["query"], e["route"]) for e in log] == [
        ("GET", "/api/config", "", "C1"),
        ("GET", "/api/preview/sb-pub/public", "x=1", "C2"),
        ("POST", "/api/sandbox/sb-pub/last-activity", "", "C7")]
    assert ["X-Test", "a"] in log[1]["headers"]
    assert ["Authorization", "Bearer pk"] in log[1]["headers"]
    assert log[0]["time"] <= log[1]["time"] <= log[2]["time"]
    assert [e["seq"] for e in log] == sorted(e["seq"] for e in log)
    assert [e["status"] for e in log] == [200, 200, 201]
    # control calls are never logged
    api.ctl("faults")
    assert len(api.log()) == 3


# ----------------------------------------------------------------------- IdP --

def pkce():
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(api, challenge, redirect="http://proxy.test/callback", state="st8=="):
    r = requests.get(api.idp + "/authorize", params={
        "audience": "daytona", "client_id": API_CLIENT_ID, "code_challenge": challenge,
        "code_challenge_method": "S256", "redirect_uri": redirect, "response_type": "code",
        "scope": "openid profile", "state": state}, allow_redirects=False, timeout=5)
    assert r.status_code == 302, r.text
    loc = urlsplit(r.headers["Location"])
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == redirect
    return {k: v[0] for k, v in parse_qs(loc.query).items()}


def token(api, code, verifier, redirect="http://proxy.test/callback", basic=True,
          secret=API_CLIENT_SECRET):
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
            "code_verifier": verifier}
    kw = {}
    if basic:
        kw["auth"] = (API_CLIENT_ID, secret)
    else:
        form.update(client_id=API_CLIENT_ID, client_secret=secret)
    return requests.post(api.idp + "/token", data=form, timeout=5, **kw)


def test_idp_discovery_and_issuer_switch(api):
    r = requests.get(api.idp + "/.well-known/openid-configuration", timeout=5)
    d = r.json()
    assert d["issuer"] == api.idp + "/"
    assert d["authorization_endpoint"] == api.idp + "/authorize"
    assert d["token_endpoint"] == api.idp + "/token"
    api.set(issuer_slash=False)
    assert requests.get(api.idp + "/.well-known/openid-configuration",
                        timeout=5).json()["issuer"] == api.idp
    assert get(api, "/config").json()["oidc"]["issuer"] == api.idp
    assert api.calls(route="idp-discovery")


def test_idp_code_flow_pkce(api):
    verifier, challenge = pkce()
    q = authorize(api, challenge)
    assert q["state"] == "st8==" and q["code"]
    r = token(api, q["code"], verifier)
    assert r.status_code == 200, r.text
    assert r.json()["access_token"] == "jwt-alice" and r.json()["token_type"] == "Bearer"
    # the code is single-use
    assert token(api, q["code"], verifier).json()["error"] == "invalid_grant"
    # client credentials in the form work too
    q = authorize(api, challenge)
    assert token(api, q["code"], verifier, basic=False).json()["access_token"] == "jwt-alice"


def test_idp_rejects_bad_verifier_client_and_redirect(api):
    verifier, challenge = pkce()
    q = authorize(api, challenge)
    r = token(api, q["code"], pkce()[0])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    q = authorize(api, challenge)
    r = token(api, q["code"], verifier, secret="wrong")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    q = authorize(api, challenge)
    r = token(api, q["code"], verifier, redirect="http://elsewhere.test/callback")
    assert r.status_code == 400
    r = requests.get(api.idp + "/authorize", params={"client_id": API_CLIENT_ID,
                     "response_type": "code", "redirect_uri": "http://proxy.test/callback"},
                     allow_redirects=False, timeout=5)
    assert r.status_code == 400          # no S256 challenge
    api.set(idp_deny=True)
    assert authorize(api, challenge)["error"] == "access_denied"

"""API mode against the Daytona API stand-in (servers/api.py, DAYTONA-API.md §9),
configured through the environment as a Daytona deployment does
(DAYTONA_API_URL, PROXY_API_KEY): the fixture's sandboxes, its fault controls,
and the call log for how many API calls a request costs."""
import time

import pytest

from apifix import *  # noqa: F401,F403
from apifix import API_RUNNER_KEY
from helpers import host, raw_exchange, request_bytes, wait_until


def start(proxy, api, key=None, **settings):
    s = {"cookie_secret": "cookie-secret-for-tests", "api_timeout": "2"}
    s.update(settings)
    return proxy(settings=s, env=api.proxy_env(key), default_sandboxes_too=False)


def get(p, label, path="/", port=3000, headers=(), timeout=5.0):
    return raw_exchange(p.port, request_bytes("GET", path, host(port, label),
                                              headers=[("Accept", "application/json"),
                                                       *headers]), timeout=timeout)


def test_fixture_sandboxes_through_the_standin(proxy, api):
    p = start(proxy, api)
    r = get(p, "sb-pub", "/hello")
    assert r.status == 200, r
    rec = api.runner.wait_for("/sandboxes/sb-pub/toolbox/proxy/3000/hello")[0]
    assert rec["auth_ok"] is True            # the runner's apiKey (rk-1) from C6
    assert get(p, "sb-priv", "/p").status == 401
    assert get(p, "sb-priv", "/p2", headers=[("X-Daytona-Preview-Token", "tok-1")]).status == 200
    assert get(p, "sb-priv", "/p3", headers=[("Authorization", "Bearer jwt-alice")]).status == 200
    assert get(p, "sb-priv", "/p4", headers=[("Authorization", "Bearer key-bob")]).status == 401
    assert get(p, "abc123", "/signed").status == 200
    assert api.runner.wait_for("/sandboxes/sb-priv/toolbox/proxy/3000/signed")
    # the warm path asks the API nothing
    before = len(api.calls("/api/preview/") + api.calls("/api/runners/"))
    for i in range(5):
        assert get(p, "sb-pub", f"/warm{i}").status == 200
    assert len(api.calls("/api/preview/") + api.calls("/api/runners/")) == before
    assert API_RUNNER_KEY not in p.log()


def test_5xx_then_success_is_retried_150_ms_later(proxy, api):
    p = start(proxy, api)
    api.fault("C6", fail_next=1, status=503, body="json")
    assert get(p, "sb-pub", "/retry").status == 200
    calls = api.calls("/api/runners/by-sandbox/sb-pub")
    assert len(calls) == 2
    gap = calls[1]["time"] - calls[0]["time"]
    assert 0.13 <= gap < 1.0, gap


def test_json_500_is_not_retried_and_gives_503(proxy, api):
    p = start(proxy, api)
    api.fault("C6", fail_next=1, status=500, body="json")
    r = get(p, "sb-pub", "/j500")
    assert r.status == 503 and r.header("retry-after") == "5", r
    assert len(api.calls("/api/runners/by-sandbox/sb-pub")) == 1


def test_api_faults_never_hang_or_pass(proxy, api):
    p = start(proxy, api)
    for i, kw in enumerate(({"body": "reset"}, {"body": "huge"}, {"body": "garbage"},
                            {"body": "html", "status": 502})):
        api.clear_faults()
        api.fault("C2", fail_next=3, status=kw.pop("status", 200), **kw)
        r = get(p, f"sb-fault{i}", "/f")
        assert r is not None and r.status in (503, 401, 404), (kw, r)  # C2 is status-only
        assert api.runner.find(f"sb-fault{i}") == []
    api.clear_faults()
    api.fault("C2", delay_ms=5000)
    t0 = time.monotonic()
    r = get(p, "sb-slow", "/slow", timeout=20)  # 3 attempts of api_timeout 2 s, then 503
    assert r is not None and r.status == 503, r
    assert 5.5 < time.monotonic() - t0 < 10        # bounded by 3 x api_timeout + 0.45 s
    assert len(api.calls("/api/preview/sb-slow/public")) == 3
    assert p.health_ok()


def test_unknown_runner_for_an_authenticated_caller_is_404(proxy, api):
    p = start(proxy, api)
    api.add_sandbox("sb-gone", authToken="tok-g", runnerId=None)
    r = get(p, "sb-gone", "/x", headers=[("X-Daytona-Preview-Token", "tok-g")])
    assert r.status == 404 and r.json()["code"] == "SANDBOX_NOT_FOUND", r


# ------------------------------------------- the warning page per organisation (C13) --

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/126.0.0.0 Safari/537.36")


def browse(p, label, port, path):
    return get(p, label, path, port=port, headers=[("User-Agent", CHROME),
                                                  ("Accept", "text/html")])


def is_warning(r):
    return r.status == 200 and b"Continue to the preview" in r.body and \
        r.header("content-security-policy") is not None


def test_warning_page_follows_the_organisation(proxy, api):
    p = start(proxy, api, preview_warning="on")
    api.org("o1", False)
    r = browse(p, "sb-pub", 3000, "/org-off")
    assert r.status == 200 and not is_warning(r), r
    assert api.runner.wait_for("/org-off")
    assert len(api.calls("/preview-warning")) == 1
    assert api.calls("/preview-warning")[0]["query"] in ("port=3000", {"port": "3000"}) or \
        "port=3000" in api.calls("/preview-warning")[0]["target"]
    browse(p, "sb-pub", 3000, "/org-off-again")
    assert len(api.calls("/preview-warning")) == 1           # cached (60 s)
    api.org("o1", True)
    r = browse(p, "sb-pub", 3001, "/org-on")
    assert is_warning(r), r
    assert api.runner.find("/org-on") == []
    # the API cannot say: the page is shown (fail open), and not cached
    api.fault("C13", fail_next=1, status=500, body="json")   # JSON 500: not retried
    api.org("o1", False)
    r = browse(p, "sb-pub", 3002, "/c13-error")
    assert is_warning(r), r
    r = browse(p, "sb-pub", 3002, "/c13-back")
    assert r.status == 200 and not is_warning(r), r


def test_warning_off_asks_nothing(proxy, api):
    p = start(proxy, api)
    r = browse(p, "sb-pub", 3000, "/no-warning")
    assert r.status == 200 and not is_warning(r)
    assert api.calls("/preview-warning") == []


# ----------------------------------------------------- build-log routes (§8) --

def test_sandbox_build_logs_stream_from_the_runner(proxy, api):
    p = start(proxy, api)
    r = raw_exchange(p.port, request_bytes(
        "GET", "/sandboxes/sb-build/build-logs?follow=false", "proxy.test",
        headers=[("Authorization", "Bearer key-alice"), ("Accept", "application/json")]))
    assert r is not None and r.status == 200, r
    rec = api.runner.wait_for("/snapshots/logs?follow=false&snapshotRef=")[0]
    auth = [v for k, v in rec["headers"] if k.lower() == "x-daytona-authorization"]
    assert auth == [f"Bearer {API_RUNNER_KEY}"]
    assert not [v for k, v in rec["headers"] if k.lower() == "authorization"]
    c8 = api.calls("/api/sandbox/sb-build")
    assert len(c8) == 1
    assert {k.lower(): v for k, v in c8[0]["headers"]}.get("authorization") == "Bearer key-alice"
    assert api.calls("/last-activity") == []              # §8: no activity


def test_snapshot_build_logs_and_refusals(proxy, api):
    p = start(proxy, api)
    r = raw_exchange(p.port, request_bytes("GET", "/snapshots/snap-1/build-logs", "proxy.test",
                                           headers=[("Authorization", "Bearer key-alice")]))
    assert r is not None and r.status == 200, r
    assert api.runner.wait_for("/snapshots/logs?snapshotRef=snap-ref-1")
    cases = [("/sandboxes/sb-build/build-logs", None, 401),          # no bearer: the API says
             ("/sandboxes/sb-pub/build-logs", "key-alice", 400),     # no buildInfo
             ("/sandboxes/nope/build-logs", "key-alice", 404)]
    for path, user, status in cases:
        h = [("Accept", "application/json")] + ([("Authorization", f"Bearer {user}")] if user else [])
        r = raw_exchange(p.port, request_bytes("GET", path, "proxy.test", headers=h))
        assert r is not None and r.status == status, (path, r)
    r = raw_exchange(p.port, request_bytes("POST", "/snapshots/snap-1/build-logs", "proxy.test",
                                           headers=[("Content-Length", "0")]))
    assert r.status == 405, r
    api.fault("C9", fail_next=3, status=503, body="html")
    r = raw_exchange(p.port, request_bytes("GET", "/snapshots/snap-1/build-logs", "proxy.test",
                                           headers=[("Authorization", "Bearer key-alice")]),
                     timeout=10)
    assert r.status == 503 and r.header("retry-after") == "5", r


# -------------------------------------------------------- wake-on-request --

@pytest.fixture
def sleepy_api(dead_port):
    """A second stand-in whose runners are all down (a dead port)."""
    from apifix import API_CLIENT_SECRET, API_PROXY_KEY, ApiClient
    from helpers import start_server, stop_proc, wait_until
    proc, port = start_server("api.py", "--runner-url", f"http://127.0.0.1:{dead_port}",
                              "--runner-key", API_RUNNER_KEY, "--proxy-key", API_PROXY_KEY,
                              "--client-secret", API_CLIENT_SECRET)
    client = ApiClient(port, proc=proc)
    wait_until(client.ping, timeout=10, what="second api.py")
    yield client
    stop_proc(proc)


def test_stopped_sandbox_is_woken_and_the_client_told_to_retry(proxy, sleepy_api):
    api = sleepy_api
    api.add_sandbox("sb-sleepy", public=True, state="stopped", runnerId="r1")
    api.set(start_delay_ms=60000)          # it stays "starting" for the test
    p = start(proxy, api)
    r = get(p, "sb-sleepy", "/wake-me", timeout=10)
    assert r.status == 503 and r.header("retry-after") == "5", r
    assert r.json()["code"] == "SANDBOX_STARTING"
    # The start call is fire-and-forget (C11 may wait 30 s): it may reach the
    # API just after the client has its answer.
    wait_until(lambda: api.calls("/api/sandbox/sb-sleepy/start", method="POST"), timeout=5,
               what="the start call")
    assert len(api.calls("/api/sandbox/sb-sleepy/start", method="POST")) == 1
    # while it starts: the same answer, no second start
    r = get(p, "sb-sleepy", "/again", timeout=10)
    assert r.status == 503, r
    assert len(api.calls("/api/sandbox/sb-sleepy/start", method="POST")) == 1
    # and the API is not asked again about a sandbox it was just told to start
    assert len(api.calls("/api/sandbox/sb-sleepy", method="GET")) == 1
    # a started sandbox whose runner is down is a plain 502, and nothing is started
    api.add_sandbox("sb-awake", public=True, state="started", runnerId="r1")
    r = get(p, "sb-awake", "/down", timeout=10)
    assert r.status == 502, r
    assert api.calls("/api/sandbox/sb-awake/start") == []


def test_runner_saying_stopped_wakes_the_sandbox(proxy, api):
    api.add_sandbox("sb-nap", public=True, state="stopped", runnerId="r1")
    api.set(start_delay_ms=60000)
    p = start(proxy, api)
    r = get(p, "sb-nap", "/stopped", timeout=10)
    assert r.status == 503 and r.json()["code"] == "SANDBOX_STARTING", r
    wait_until(lambda: api.calls("/api/sandbox/sb-nap/start", method="POST"), timeout=5,
               what="the start call")
    assert len(api.calls("/api/sandbox/sb-nap/start", method="POST")) == 1
    # a started sandbox whose app answers that 503 gets the 503 that led here
    api.add_sandbox("sb-up", public=True, state="started", runnerId="r1")
    for i in range(5):
        r = get(p, "sb-up", f"/stopped?i={i}", timeout=10)
        assert r.status == 503 and r.json()["code"] != "SANDBOX_STARTING", r
    assert api.calls("/api/sandbox/sb-up/start") == []
    # and such an app cannot turn each request into an API call
    assert len(api.calls("/api/sandbox/sb-up", method="GET")) == 1

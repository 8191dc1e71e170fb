"""Fixtures for the API-mode tests: the Daytona API stand-in (servers/api.py)
and the runner its fixture runners point at.

Import them into a test module with
    from apifix import *  # noqa: F401,F403

  api_server         session: api.py started once, with its own runner.py
                     (key rk-1, the apiKey of the stand-in's runners r1 and r-vm)
  api                function: api_server after /_ctl/reset (fixture restored,
                     faults and log cleared) and a runner reset; an ApiClient
  ApiClient          fault(), clear_faults(), log(), calls(), wait_calls(),
                     add_sandbox(), add_token(), revoke_token(), org(), rotate(),
                     set(), activity(); .url is DAYTONA_API_URL, .runner the
                     RunnerClient, .proxy_env() the environment for API mode.
Nothing here sleeps to synchronise: waits are bounded polls.
"""
import pytest
import requests

from helpers import start_server, stop_proc, wait_until

__all__ = ["ApiClient", "api_server", "api_runner_server", "api", "API_PROXY_KEY",
           "API_RUNNER_KEY", "API_CLIENT_ID", "API_CLIENT_SECRET"]

API_PROXY_KEY = "pk"
API_RUNNER_KEY = "rk-1"
API_CLIENT_ID = "proxy-test"
API_CLIENT_SECRET = "proxy-secret"


class ApiClient:
    """Talks to api.py's /_ctl endpoints (see its docstring)."""

    def __init__(self, port, runner=None, proc=None):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.url = self.base + "/api"            # DAYTONA_API_URL (no trailing slash)
        self.idp = self.base + "/idp"
        self.runner = runner
        self.proc = proc
        self.proxy_key = API_PROXY_KEY

    def ctl(self, path, **body):
        r = requests.post(f"{self.base}/_ctl/{path}", json=body, timeout=5)
        if r.status_code != 200:
            raise AssertionError(f"/_ctl/{path} {body!r}: {r.status_code} {r.text}")
        return r.json()

    def ping(self):
        try:
            return self.ctl("ping")["ok"]
        except (requests.RequestException, AssertionError):
            return False

    def reset(self):
        self.ctl("reset")

    # faults
    def fault(self, route, **kw):
        """fault("C6", fail_next=1, status=503, body="json"); fault("C2", delay_ms=500);
        fault("/api/runners/*", down=True). See api.py for the fields."""
        return self.ctl("fault", route=route, **kw)

    def clear_faults(self, route=None):
        if route is None:
            return self.ctl("fault", clear=True)
        return self.ctl("fault", route=route, clear=True)

    # the call log
    def log(self):
        return self.ctl("log")

    def calls(self, path_substring="", method=None, route=None):
        """Logged /api and /idp calls whose path contains path_substring
        (optionally with this method or route name), in arrival order."""
        return [e for e in self.log()
                if path_substring in e["path"]
                and (method is None or e["method"] == method)
                and (route is None or e["route"] == route)]

    def wait_calls(self, path_substring="", count=1, timeout=5.0, **kw):
        """Waits (bounded) until at least count matching calls are logged."""
        return wait_until(lambda: (lambda c: c if len(c) >= count else None)(
            self.calls(path_substring, **kw)), timeout=timeout,
            what=f"{count} API call(s) matching {path_substring!r} {kw or ''}")

    # fixture changes
    def add_sandbox(self, id, **fields):
        """Creates or updates a sandbox: public, authToken, organizationId, state,
        runnerId (None: no runner), snapshotRef, signingKey."""
        return self.ctl("sandbox", id=id, **fields)

    def sandboxes(self):
        return self.ctl("sandboxes")

    def add_token(self, token, port, sandbox_id, ttl_s=None):
        body = {"token": token, "port": str(port), "sandboxId": sandbox_id}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return self.ctl("token", **body)

    def revoke_token(self, token, port):
        return self.ctl("token", token=token, port=str(port), revoke=True)

    def org(self, id, preview_warning):
        return self.ctl("org", id=id, previewWarningEnabled=preview_warning)

    def rotate(self, sandbox_id, key=None):
        """New signing key for sandbox_id (random unless key); returns it."""
        body = {"key": key} if key else {}
        return self.ctl(f"rotate/{sandbox_id}", **body)["key"]

    def set(self, **switches):
        """v0190, issuer_slash, start_delay_ms, start_outcome, idp_deny, proxy_key."""
        return self.ctl("set", **switches)

    def activity(self):
        return self.ctl("activity")

    def proxy_env(self, key=None):
        return {"DAYTONA_API_URL": self.url, "PROXY_API_KEY": key or self.proxy_key,
                "OIDC_CLIENT_SECRET": API_CLIENT_SECRET}


@pytest.fixture(scope="session")
def api_runner_server():
    from conftest import start_runner
    proc, client = start_runner(key=API_RUNNER_KEY)
    yield client
    stop_proc(proc)


@pytest.fixture(scope="session")
def api_server(api_runner_server):
    proc, port = start_server("api.py", "--runner-url", api_runner_server.url,
                              "--runner-key", API_RUNNER_KEY, "--proxy-key", API_PROXY_KEY,
                              "--client-secret", API_CLIENT_SECRET)
    client = ApiClient(port, runner=api_runner_server, proc=proc)
    try:
        wait_until(client.ping, timeout=10, what="api.py /_ctl/ping")
    except AssertionError:
        stop_proc(proc)
        raise
    yield client
    stop_proc(proc)


@pytest.fixture
def api(api_server):
    api_server.reset()
    api_server.runner.reset()
    return api_server

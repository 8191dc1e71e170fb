"""Routes, host parsing, authentication and the toolbox route
(SPEC sections 1, 2, 3, 10)."""
import re

import pytest

from helpers import (BASE_DOMAIN, PRIV, PRIV_TOKEN, PUB, PUB_TOKEN, RESERVED_PORTS, UUID_SBX,
                     host, raw_exchange, request_bytes, runner_prefix)

ERROR_KEYS = {"statusCode", "message", "code", "timestamp", "path", "method"}


def assert_json_error(r, status, method="GET", path=None):
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert "json" in r.headers.get("Content-Type", ""), r.headers
    body = r.json()
    assert ERROR_KEYS <= set(body), body
    assert body["statusCode"] == status
    assert body["method"] == method
    assert isinstance(body["message"], str) and body["message"]
    if path is not None:
        assert body["path"].split("?")[0] == path, body


# ------------------------------------------------------------ base host --

def test_health_on_base_host(px):
    r = px.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert isinstance(body["version"], str) and body["version"]


def test_health_host_case_and_port_ignored(px):
    r = px.get("/health", host=f"PROXY.Test:{px.port}")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_unknown_base_route_is_404_json(px, runner):
    r = px.get("/no/such/route", headers={"Accept": "application/json"})
    assert_json_error(r, 404, path="/no/such/route")
    assert runner.requests() == []


def test_unknown_base_route_post_is_404(px, runner):
    r = px.request("POST", "/health2", data=b"x")
    assert r.status_code == 404
    assert runner.requests() == []


# --------------------------------------------------------- preview host --

def test_public_preview_routed_to_runner_path(px, runner):
    r = px.get("/hello/world?x=1&y=two", host=host(3000, PUB))
    assert r.status_code == 200, r.text
    reqs = runner.requests()
    assert len(reqs) == 1
    assert reqs[0]["target"] == runner_prefix(PUB, 3000) + "/hello/world?x=1&y=two"
    assert reqs[0]["method"] == "GET"


@pytest.mark.parametrize("port", [1, 80, 8080, 65535])
def test_valid_ports(px, runner, port):
    r = px.get("/p", host=host(port, PUB))
    assert r.status_code == 200, r.text
    assert runner.requests()[0]["target"] == runner_prefix(PUB, port) + "/p"


def test_label_containing_dashes(px, runner):
    r = px.get("/x", host=host(5173, UUID_SBX))
    assert r.status_code == 200, r.text
    assert runner.requests()[0]["target"] == runner_prefix(UUID_SBX, 5173) + "/x"


def test_host_case_insensitive_domain_and_port_suffix(px, runner):
    r = px.get("/cased", host=f"3000-{PUB}.PROXY.Test:{px.port}")
    assert r.status_code == 200, r.text
    assert runner.requests()[0]["target"] == runner_prefix(PUB, 3000) + "/cased"


@pytest.mark.parametrize("bad", ["0", "65536", "99999", "123456", "03000", "00080"])
def test_bad_port_is_400(px, runner, bad):
    r = px.get("/p", host=f"{bad}-{PUB}.{BASE_DOMAIN}", headers={"Accept": "application/json"})
    assert_json_error(r, 400, path="/p")
    assert runner.requests() == []


def test_empty_label_is_400(px, runner):
    r = px.get("/p", host=f"3000-.{BASE_DOMAIN}")
    assert_json_error(r, 400)
    assert runner.requests() == []


def test_error_json_shape(px):
    r = px.request("DELETE", "/some/path?q=1", host=f"0-{PUB}.{BASE_DOMAIN}")
    assert_json_error(r, 400, method="DELETE", path="/some/path")
    assert str(r.json()["timestamp"])


def test_error_html_for_browsers(px, runner):
    r = px.get("/p", host=f"70000-{PUB}.{BASE_DOMAIN}",
               headers={"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36"})
    assert r.status_code == 400
    assert r.headers.get("Content-Type", "").startswith("text/html"), r.headers
    text = r.text
    assert re.search(r"<html", text, re.I), text[:300]
    assert "400" in text
    # no external resources
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.I), text
    assert runner.requests() == []


def test_other_domain_not_routed_when_domains_configured(px, runner):
    r = px.get("/p", host=f"3000-{PUB}.elsewhere.example")
    assert r.status_code == 404, r.text
    assert runner.requests() == []


def test_any_domain_routed_when_domains_unset(proxy, runner):
    p = proxy(settings={"domains": None})
    r = p.get("/anydomain", host=f"3000-{PUB}.region2.example.org")
    assert r.status_code == 200, r.text
    assert runner.requests()[0]["target"] == runner_prefix(PUB, 3000) + "/anydomain"


def test_several_domains(proxy, runner):
    p = proxy(settings={"domains": f"{BASE_DOMAIN} eu.preview.example"})
    assert p.get("/a", host=f"3000-{PUB}.eu.preview.example").status_code == 200
    assert p.get("/b", host=host(3000, PUB)).status_code == 200
    assert [r["target"] for r in runner.requests()] == [
        runner_prefix(PUB, 3000) + "/a", runner_prefix(PUB, 3000) + "/b"]


def test_absolute_form_authority_wins_over_host(px, runner):
    req = request_bytes("GET", f"http://{host(3000, PUB)}/abs/form?q=%41", BASE_DOMAIN)
    r = raw_exchange(px.port, req)
    assert r is not None and r.status == 200, r
    reqs = runner.requests()
    assert len(reqs) == 1
    # forwarded in origin-form under the runner prefix
    assert reqs[0]["target"] == runner_prefix(PUB, 3000) + "/abs/form?q=%41"


def test_absolute_form_same_host(px, runner):
    req = request_bytes("GET", f"http://{host(8000, PUB)}/same", host(8000, PUB))
    r = raw_exchange(px.port, req)
    assert r is not None and r.status == 200, r
    assert runner.requests()[0]["target"] == runner_prefix(PUB, 8000) + "/same"


def test_absolute_form_base_authority_health(px, runner):
    req = request_bytes("GET", f"http://{BASE_DOMAIN}/health", host(3000, PUB))
    r = raw_exchange(px.port, req)
    assert r is not None and r.status == 200, r
    assert r.json()["status"] == "ok"
    assert runner.requests() == []


# ------------------------------------------------------------------ auth --

def test_private_without_token_401(px, runner):
    r = px.get("/secret", host=host(3000, PRIV), headers={"Accept": "application/json"})
    assert_json_error(r, 401, path="/secret")
    assert runner.requests() == []


def test_private_wrong_token_401(px, runner):
    r = px.get("/secret", host=host(3000, PRIV),
               headers={"X-Daytona-Preview-Token": "wrong-token"})
    assert r.status_code == 401
    assert runner.requests() == []


def test_private_other_sandboxes_token_401(px, runner):
    r = px.get("/secret", host=host(3000, PRIV), headers={"X-Daytona-Preview-Token": PUB_TOKEN})
    assert r.status_code == 401
    assert runner.requests() == []


def test_private_with_token_forwarded_token_stripped(px, runner):
    r = px.get("/secret", host=host(3000, PRIV), headers={"X-Daytona-Preview-Token": PRIV_TOKEN})
    assert r.status_code == 200, r.text
    reqs = runner.requests()
    assert len(reqs) == 1
    assert reqs[0]["target"] == runner_prefix(PRIV, 3000) + "/secret"
    names = [k.lower() for k, _ in reqs[0]["headers"]]
    assert "x-daytona-preview-token" not in names
    assert PRIV_TOKEN not in str(reqs[0]["headers"])


def test_private_token_header_name_case_insensitive(px, runner):
    r = px.get("/ci", host=host(3000, PRIV), headers={"x-daytona-preview-token": PRIV_TOKEN})
    assert r.status_code == 200
    assert runner.requests()[0]["target"].endswith("/ci")


def test_unknown_sandbox_without_credentials_401_not_404(px, runner):
    r = px.get("/x", host=host(3000, "nosuchsandbox"))
    assert r.status_code == 401, r.text
    assert runner.requests() == []


def test_unknown_sandbox_with_some_token_401(px, runner):
    r = px.get("/x", host=host(3000, "nosuchsandbox"),
               headers={"X-Daytona-Preview-Token": PRIV_TOKEN})
    assert r.status_code == 401, r.text
    assert runner.requests() == []


def test_public_no_auth_needed(px, runner):
    r = px.get("/open", host=host(3000, PUB))
    assert r.status_code == 200
    assert len(runner.requests()) == 1


def test_public_token_header_not_forwarded(px, runner):
    r = px.get("/open", host=host(3000, PUB), headers={"X-Daytona-Preview-Token": PUB_TOKEN})
    assert r.status_code == 200
    names = [k.lower() for k, _ in runner.requests()[0]["headers"]]
    assert "x-daytona-preview-token" not in names


@pytest.mark.parametrize("port", RESERVED_PORTS)
def test_reserved_port_on_public_needs_token(px, runner, port):
    r = px.get("/r", host=host(port, PUB))
    assert r.status_code == 401, r.text
    assert runner.requests() == []
    r = px.get("/r", host=host(port, PUB), headers={"X-Daytona-Preview-Token": "nope"})
    assert r.status_code == 401
    assert runner.requests() == []
    r = px.get("/r", host=host(port, PUB), headers={"X-Daytona-Preview-Token": PUB_TOKEN})
    assert r.status_code == 200, r.text
    assert runner.requests()[0]["target"] == runner_prefix(PUB, port) + "/r"


# --------------------------------------------------------------- toolbox --

def test_toolbox_route_forwards_to_toolbox_path(px, runner):
    r = px.get(f"/toolbox/{PRIV}/files/list?path=%2Fhome%2Fdaytona&x=a+b",
               headers={"X-Daytona-Preview-Token": PRIV_TOKEN})
    assert r.status_code == 200, r.text
    reqs = runner.requests()
    assert len(reqs) == 1
    assert reqs[0]["target"] == f"/sandboxes/{PRIV}/toolbox/files/list?path=%2Fhome%2Fdaytona&x=a+b"
    assert reqs[0]["auth_ok"] is True
    names = [k.lower() for k, _ in reqs[0]["headers"]]
    assert "x-daytona-preview-token" not in names


def test_toolbox_post_body(px, runner):
    r = px.request("POST", f"/toolbox/{PRIV}/process/execute", data=b'{"command":"ls"}',
                   headers={"X-Daytona-Preview-Token": PRIV_TOKEN,
                            "Content-Type": "application/json"})
    assert r.status_code == 200
    rec = runner.requests()[0]
    assert rec["method"] == "POST"
    assert rec["target"] == f"/sandboxes/{PRIV}/toolbox/process/execute"
    assert rec["body_len"] == len(b'{"command":"ls"}')


def test_toolbox_requires_auth_even_when_public(px, runner):
    r = px.get(f"/toolbox/{PUB}/files/list")
    assert r.status_code == 401, r.text
    assert "json" in r.headers.get("Content-Type", "")
    assert runner.requests() == []
    r = px.get(f"/toolbox/{PUB}/files/list", headers={"X-Daytona-Preview-Token": PUB_TOKEN})
    assert r.status_code == 200
    assert runner.requests()[0]["target"] == f"/sandboxes/{PUB}/toolbox/files/list"


def test_toolbox_private_without_token_401(px, runner):
    r = px.get(f"/toolbox/{PRIV}/files/list",
               headers={"Accept": "text/html", "User-Agent": "Mozilla/5.0 Chrome/120"})
    assert r.status_code == 401   # never a redirect to a login page
    assert runner.requests() == []


def test_toolbox_unknown_sandbox_401(px, runner):
    r = px.get("/toolbox/nosuchsandbox/files/list", headers={"X-Daytona-Preview-Token": PRIV_TOKEN})
    assert r.status_code == 401
    assert runner.requests() == []


def test_toolbox_redirect_location_gets_prefix(px, runner):
    r = px.get(f"/toolbox/{PRIV}/redirect?to=/files/somewhere%3Fa",
               headers={"X-Daytona-Preview-Token": PRIV_TOKEN})
    assert r.status_code == 302
    # the runner decodes its `to` parameter, so it sends Location: /files/somewhere?a
    assert r.headers["Location"] == f"/toolbox/{PRIV}/files/somewhere?a"


def test_toolbox_redirect_location_already_prefixed_unchanged(px, runner):
    loc = f"/toolbox/{PRIV}/already/there"
    r = px.get(f"/toolbox/{PRIV}/redirect?to={loc}&status=307",
               headers={"X-Daytona-Preview-Token": PRIV_TOKEN})
    assert r.status_code == 307
    assert r.headers["Location"] == loc


def test_preview_redirect_location_untouched(px, runner):
    r = px.get("/redirect?to=/login", host=host(3000, PUB))
    assert r.status_code == 302
    assert r.headers["Location"] == "/login"


# ---------------------------------------------------------- toolbox_only --

def test_toolbox_only_blocks_other_ports(proxy, runner):
    p = proxy(settings={"toolbox_only": "on"})
    r = p.get("/x", host=host(3000, PUB))
    assert r.status_code == 404
    assert runner.requests() == []
    r = p.get("/x", host=host(2280, PUB), headers={"X-Daytona-Preview-Token": PUB_TOKEN})
    assert r.status_code == 200
    r = p.get(f"/toolbox/{PRIV}/files", headers={"X-Daytona-Preview-Token": PRIV_TOKEN})
    assert r.status_code == 200
    assert [x["target"] for x in runner.requests()] == [
        runner_prefix(PUB, 2280) + "/x", f"/sandboxes/{PRIV}/toolbox/files"]
    assert p.health_ok()


def test_toolbox_only_env_overrides_file(proxy, runner):
    p = proxy(settings={"toolbox_only": "off"}, env={"TOOLBOX_ONLY_MODE": "true"})
    r = p.get("/x", host=host(3000, PUB))
    assert r.status_code == 404
    assert runner.requests() == []


# ------------------------------------------------------------ route order --

def test_preview_host_paths_go_to_the_app(px, runner):
    """On a preview host, /health and /toolbox/... belong to the sandbox app."""
    r = px.get("/health", host=host(3000, PUB))
    assert r.status_code == 200
    r = px.get(f"/toolbox/{PRIV}/files", host=host(3000, PUB))
    assert r.status_code == 200
    assert [x["target"] for x in runner.requests()] == [
        runner_prefix(PUB, 3000) + "/health",
        runner_prefix(PUB, 3000) + f"/toolbox/{PRIV}/files"]


def test_http10_without_host_is_a_base_host_request(px, runner):
    """HTTP/1.0 does not require Host (RFC 9112 section 3.2 requires it of
    HTTP/1.1 only); load-balancer probes such as HAProxy's default
    `option httpchk` send exactly this. With no Host it cannot be a preview
    host, so it is a base-host request and /health answers."""
    r = raw_exchange(px.port, b"GET /health HTTP/1.0\r\n\r\n")
    assert r is not None and r.status == 200, r
    assert r.json()["status"] == "ok"
    assert runner.requests() == []


@pytest.mark.parametrize("bad_host", [
    "..proxy.test", f"3000-{PUB}..proxy.test", f".3000-{PUB}.proxy.test",
    f"3000-{PUB}.proxy.test/x", f"3000-{PUB}\\x.proxy.test", "[::1", f"3000-{PUB}.proxy.test:abc",
    "a b",
])
def test_malformed_host_header_400(px, runner, bad_host):
    """Host edge cases after nginx-tests http_host.t (STYLE 11)."""
    r = raw_exchange(px.port, f"GET /x HTTP/1.1\r\nHost: {bad_host}\r\n\r\n".encode())
    assert r is not None and r.status == 400, r
    assert runner.requests() == []

"""Upstream TLS (https runners): runner_url=https://127.0.0.1:PORT is reached
over TLS and its certificate verified against upstream_ca (or the system store)
including the name/IP; an untrusted certificate gives 502 RUNNER_TLS_ERROR and a
log line. servers/https_runner.py is runner.py behind TLS."""
import hashlib
import json

import pytest
import requests

from helpers import RUNNER_KEY, host, pattern_bytes, runner_prefix, stop_proc
from tlsfix import *  # noqa: F401,F403
from tlsfix import H2Client, start_https_runner

SBX = "sbxhttps"
TOKEN = "tok-https-S3CRET-5"


@pytest.fixture(scope="module")
def https_runners(pki):
    procs = {}
    out = {}
    try:
        for label in ("runner", "runner_evil", "runner_wrongname"):
            proc, port = start_https_runner(*pki.certs[label])
            procs[label] = proc
            out[label] = port
        yield out
    finally:
        for proc in procs.values():
            stop_proc(proc)


def sbx(port, name=SBX):
    return (f"sandbox {name} runner_url=https://127.0.0.1:{port} runner_key={RUNNER_KEY} org=org1 "
            f"state=started public=1 auth_token={TOKEN}")


def ctl_tls(port, pki):
    r = requests.get(f"https://127.0.0.1:{port}/__ctl/tls", verify=pki.ca_file, timeout=5)
    return r.json()


def test_https_runner_good_certificate(proxy, pki, https_runners):
    port = https_runners["runner"]
    p = proxy(settings={"upstream_ca": pki.ca_file}, sandboxes=[sbx(port)])
    r = p.get("/some/path?q=1", host=host(3000, SBX))
    assert r.status_code == 200, r.text
    echo = r.json()
    assert echo["target"] == runner_prefix(SBX, 3000) + "/some/path?q=1"
    hdrs = {k.lower(): v for k, v in echo["headers"]}
    assert hdrs["x-daytona-authorization"] == f"Bearer {RUNNER_KEY}"
    assert hdrs["host"].startswith("127.0.0.1")
    # bodies both ways, intact
    body = pattern_bytes(3 * 1024 * 1024, seed=5)
    r = p.request("POST", "/upload", host=host(3000, SBX), data=body)
    assert r.status_code == 200
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    r = p.get(f"/download?n={8 * 1024 * 1024}&seed=3", host=host(3000, SBX), timeout=30)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(
        pattern_bytes(8 * 1024 * 1024, seed=3)).hexdigest()
    # keep-alive: several requests, not one handshake each (pooled TLS connections)
    before = ctl_tls(port, pki)["ok"]
    for i in range(10):
        assert p.get(f"/k{i}", host=host(3000, SBX)).status_code == 200
    assert ctl_tls(port, pki)["ok"] - before - 1 <= 2   # -1: our own /__ctl/tls


def test_https_runner_over_h2c_client(proxy, pki, https_runners):
    port = https_runners["runner"]
    p = proxy(settings={"upstream_ca": pki.ca_file}, sandboxes=[sbx(port)])
    with H2Client(p.port, tls=False) as c:
        st = c.get("/via-h2", host(3000, SBX), scheme="http")
        assert st.status == 200
        assert json.loads(bytes(st.data))["target"].endswith("/via-h2")


@pytest.mark.parametrize("which", ["runner_evil", "runner_wrongname"])
def test_https_runner_untrusted_certificate(proxy, pki, https_runners, which):
    port = https_runners[which]
    p = proxy(settings={"upstream_ca": pki.ca_file}, sandboxes=[sbx(port)])
    r = p.get("/x", host=host(3000, SBX))
    assert r.status_code == 502, r.text
    assert r.json()["code"] == "RUNNER_TLS_ERROR", r.text
    assert "runner TLS certificate verification failed" in p.log()
    assert p.health_ok()


def test_https_runner_system_store_does_not_trust_test_ca(proxy, pki, https_runners):
    p = proxy(settings={"upstream_ca": None}, sandboxes=[sbx(https_runners["runner"])])
    r = p.get("/x", host=host(3000, SBX))
    assert r.status_code == 502, r.text
    assert r.json()["code"] == "RUNNER_TLS_ERROR"


def test_https_runner_mixed_with_plain_runner(proxy, pki, https_runners, runner):
    p = proxy(settings={"upstream_ca": pki.ca_file},
              sandboxes=[sbx(https_runners["runner"]), sbx(https_runners["runner_evil"], "sbxevil")])
    for _ in range(3):
        assert p.get("/ok", host=host(3000, SBX)).status_code == 200
        assert p.get("/bad", host=host(3000, "sbxevil")).status_code == 502
        assert p.get("/plain", host=host(3000, "sbxpub")).status_code == 200

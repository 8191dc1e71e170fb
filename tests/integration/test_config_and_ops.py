"""Config checking, environment overrides, access log, SIGTERM drain
(SPEC sections 11, 12)."""
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from helpers import (BASE_DOMAIN, PRIV, PRIV_TOKEN, PUB, free_port, host, port_is_listening,
                     wait_until)


def run_check(proxy_bin, path, timeout=10):
    return subprocess.run([proxy_bin, "-t", "-c", str(path)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("PROXY_PORT", "TOOLBOX_ONLY_MODE",
                                            "SHUTDOWN_TIMEOUT_SEC")})


GOOD_LINES = [
    "# a comment line",
    "listen 127.0.0.1:{port}",
    "domains proxy.test other.example",
    "access_log stderr",
    "log_level info          # trailing comment",
    "connect_timeout 10",
    "response_header_timeout 60",
    "keepalive_timeout 70",
    "client_header_timeout 10",
    "ws_idle_timeout 3600",
    "upstream_idle_timeout 30",
    "upstream_keepalive 32",
    "max_request_line 8k",
    "max_header_size 64k",
    "max_headers 100",
    "shutdown_timeout 30",
    "toolbox_only off",
    "trusted_proxies 127.0.0.1/32 10.0.0.0/8",
    "",
    "sandbox abc runner_url=http://127.0.0.1:3986 runner_key=K public=0 auth_token=T "
    "direct=0 org=O state=started",
]


def test_check_good_config(proxy_bin, tmp_path):
    conf = tmp_path / "good.conf"
    conf.write_text("\n".join(GOOD_LINES).format(port=free_port()) + "\n")
    res = run_check(proxy_bin, conf)
    assert res.returncode == 0, res.stderr


def test_check_plain_byte_sizes(proxy_bin, tmp_path):
    conf = tmp_path / "sizes.conf"
    conf.write_text(f"listen 127.0.0.1:{free_port()}\nmax_request_line 8192\n"
                    "max_header_size 65536\n")
    res = run_check(proxy_bin, conf)
    assert res.returncode == 0, res.stderr


BAD_LINES = [
    "frobnicate yes",
    "connect_timeout abc",
    "connect_timeout",
    "response_header_timeout -1",
    "listen not-an-address",
    "listen 127.0.0.1:99999",
    "max_headers -5",
    "max_header_size 12q",
    "toolbox_only maybe",
    "log_level loud",
    "trusted_proxies 300.1.1.1/8",
    "sandbox broken runner_url=http://127.0.0.1:1 bogus_field=1",
]


@pytest.mark.parametrize("bad", BAD_LINES)
def test_check_bad_line_names_file_and_line(proxy_bin, tmp_path, bad):
    conf = tmp_path / "bad.conf"
    conf.write_text(f"# line 1\nlisten 127.0.0.1:{free_port()}\nlog_level info\n{bad}\n"
                    "max_headers 100\n")
    res = run_check(proxy_bin, conf)
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert re.search(r"bad\.conf:4\b", res.stderr), res.stderr


def test_check_unknown_directive_reason(proxy_bin, tmp_path):
    conf = tmp_path / "unk.conf"
    conf.write_text(f"listen 127.0.0.1:{free_port()}\n\n\nfrobnicate yes\n")
    res = run_check(proxy_bin, conf)
    assert res.returncode == 1
    assert re.search(r"unk\.conf:4\b", res.stderr), res.stderr
    assert "frobnicate" in res.stderr or "unknown" in res.stderr.lower(), res.stderr


def test_check_missing_file(proxy_bin, tmp_path):
    res = run_check(proxy_bin, tmp_path / "does-not-exist.conf")
    assert res.returncode == 1
    assert "does-not-exist.conf" in res.stderr


def test_bad_config_refuses_to_start(proxy_bin, tmp_path):
    port = free_port()
    conf = tmp_path / "bad.conf"
    conf.write_text(f"listen 127.0.0.1:{port}\nconnect_timeout soon\n")
    proc = subprocess.Popen([proxy_bin, "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        rc = proc.wait(10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert rc != 0
    assert b"bad.conf:2" in proc.stderr.read()
    assert not port_is_listening(port)


# ---------------------------------------------------- environment wins --

def test_proxy_port_env_overrides_listen(proxy, runner):
    env_port = free_port()
    p = proxy(env={"PROXY_PORT": str(env_port)}, wait=False)
    p.wait_ready(port=env_port)
    r = requests.get(f"http://127.0.0.1:{env_port}/health", headers={"Host": BASE_DOMAIN},
                     timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_shutdown_timeout_env_overrides_file(proxy, runner):
    p = proxy(settings={"shutdown_timeout": "30"}, env={"SHUTDOWN_TIMEOUT_SEC": "1"})
    result = {}
    t = threading.Thread(target=_slow_request, args=(p, "/slow?name=forever", result))
    t.start()
    runner.wait_for("/slow?name=forever")
    t0 = time.monotonic()
    p.terminate()
    rc = p.proc.wait(10)
    elapsed = time.monotonic() - t0
    t.join(10)
    assert elapsed < 6, f"exit took {elapsed:.1f}s; SHUTDOWN_TIMEOUT_SEC=1 ignored?"
    assert rc == 0


def _slow_request(p, path, result, h=None):
    try:
        r = requests.get(p.url + path, headers={"Host": h or host(3000, PUB)}, timeout=30)
        result["status"] = r.status_code
        result["body"] = r.content
    except requests.RequestException as e:
        result["error"] = repr(e)


# -------------------------------------------------------------- SIGTERM --

def test_sigterm_drains_in_flight_request(proxy, runner):
    p = proxy(settings={"shutdown_timeout": "10"})
    result = {}
    t = threading.Thread(target=_slow_request, args=(p, "/slow?name=drain", result))
    t.start()
    runner.wait_for("/slow?name=drain")
    p.terminate()
    # it stops accepting new connections while the request is in flight
    wait_until(lambda: not port_is_listening(p.port), timeout=5,
               what="listener closed after SIGTERM")
    assert p.proc.poll() is None, "proxy exited with a request still in flight"
    assert "status" not in result
    runner.signal("drain")
    t.join(10)
    assert result.get("status") == 200, result
    assert b"/slow?name=drain" in result["body"]
    assert p.proc.wait(10) == 0


def test_sigterm_idle_exits_zero_quickly(proxy, runner):
    p = proxy(settings={"shutdown_timeout": "10"})
    # an idle keep-alive client connection must not hold the exit up
    with p.raw() as c:
        c.send(f"GET /health HTTP/1.1\r\nHost: {BASE_DOMAIN}\r\n\r\n")
        assert c.read_response().status == 200
        t0 = time.monotonic()
        p.terminate()
        rc = p.proc.wait(10)
        assert rc == 0
        assert time.monotonic() - t0 < 3


def test_sigterm_shutdown_timeout_bounds_drain(proxy, runner):
    p = proxy(settings={"shutdown_timeout": "1"})
    result = {}
    t = threading.Thread(target=_slow_request, args=(p, "/slow?name=stuck", result))
    t.start()
    runner.wait_for("/slow?name=stuck")
    t0 = time.monotonic()
    p.terminate()
    rc = p.proc.wait(10)
    assert time.monotonic() - t0 < 6
    assert rc == 0
    runner.signal("stuck")
    t.join(10)
    # the proxy was gone before the runner answered: the client cannot have a 200
    assert result.get("status") != 200, result


# ------------------------------------------------------------ access log --

def access_lines(p, *needles):
    return [ln for ln in p.log_lines() if all(n in ln for n in needles)]


def test_access_log_one_line_per_request(px, runner):
    before = len(access_lines(px, "PUT", "418"))
    assert before == 0
    s = requests.Session()
    for i in range(3):
        r = s.put(f"{px.url}/status/418", headers={"Host": host(3000, PUB)}, data=b"x")
        assert r.status_code == 418
    wait_until(lambda: len(access_lines(px, "PUT", "418")) >= 3, timeout=5,
               what="three access log lines")
    # a later request's line proves all earlier lines were written
    assert px.get("/health").status_code == 200
    wait_until(lambda: access_lines(px, "GET", "200"), timeout=5, what="health access line")
    assert len(access_lines(px, "PUT", "418")) == 3


def test_access_log_error_statuses(px, runner):
    assert px.get("/x", host=host(3000, PRIV)).status_code == 401
    assert px.request("DELETE", "/nope-route").status_code == 404
    wait_until(lambda: access_lines(px, "GET", "401"), timeout=5, what="401 access line")
    wait_until(lambda: access_lines(px, "DELETE", "404"), timeout=5, what="404 access line")


def test_access_log_for_rejected_parse(px, runner):
    """A 400 for a malformed request is logged too (no crash in the log path)."""
    from helpers import raw_exchange
    r = raw_exchange(px.port, b"GET /x HTTP/1.1\r\nHost: a\r\nX-Bad : 1\r\n\r\n")
    assert r is None or r.status == 400
    assert px.health_ok()


def test_access_log_never_contains_secrets(px, runner):
    secrets = {
        "preview": PRIV_TOKEN,
        "authz": "authz-S3CRET-value-123",
        "query": "qkey-S3CRET-value-456",
        "cookie": "cookie-S3CRET-value-789",
        "wrongtoken": "wrong-S3CRET-token-000",
    }
    px.get("/a", host=host(3000, PRIV), headers={"X-Daytona-Preview-Token": secrets["preview"]})
    px.get("/b", host=host(3000, PRIV),
           headers={"X-Daytona-Preview-Token": secrets["wrongtoken"]})
    px.get("/c", host=host(3000, PUB), headers={"Authorization": f"Bearer {secrets['authz']}"})
    px.get("/d", host=host(3000, PRIV), headers={"Authorization": f"Bearer {secrets['authz']}"})
    px.get(f"/e?x=1&DAYTONA_SANDBOX_AUTH_KEY={secrets['query']}&y=2", host=host(3000, PRIV))
    px.get(f"/f?DAYTONA_SANDBOX_AUTH_KEY={secrets['query']}", host=host(3000, PUB))
    px.get("/g", host=host(3000, PUB),
           headers={"Cookie": f"daytona-sandbox-auth-{PUB}={secrets['cookie']}"})
    px.get(f"/toolbox/{PRIV}/h", headers={"X-Daytona-Preview-Token": secrets["preview"]})
    assert px.get("/health").status_code == 200
    wait_until(lambda: len(access_lines(px, "GET")) >= 9, timeout=5,
               what="access lines for all 9 requests")
    log = px.log()
    for name, value in secrets.items():
        assert value not in log, f"{name} secret {value!r} leaked into the log"
    assert "S3CRET" not in log


def test_access_log_off(proxy, runner):
    p = proxy(settings={"access_log": "off"})
    for _ in range(2):
        assert p.request("PUT", "/status/418", host=host(3000, PUB), data=b"x").status_code == 418
    # a request the proxy answers itself, then stop the process so every
    # buffered line is out before we look
    assert p.health_ok()
    p.stop()
    assert access_lines(p, "PUT", "418") == []


def test_access_log_to_file(proxy, runner, tmp_path):
    path = tmp_path / "access.log"
    p = proxy(settings={"access_log": str(path)})
    assert p.request("PUT", "/status/418", host=host(3000, PUB), data=b"x").status_code == 418
    wait_until(lambda: path.exists() and "418" in path.read_text(), timeout=5,
               what="access line in the access_log file")
    lines = [ln for ln in path.read_text().splitlines() if "PUT" in ln and "418" in ln]
    assert len(lines) == 1
    assert access_lines(p, "PUT", "418") == []


# -------------------------------------------------------------- misc ops --

def test_many_connections_then_health(px, runner):
    socks = []
    try:
        for _ in range(200):
            socks.append(socket.create_connection(("127.0.0.1", px.port), timeout=5))
        assert px.health_ok()
    finally:
        for s in socks:
            s.close()
    assert px.health_ok()
    assert px.alive()


# -------------------------------------------- SIGINT, SIGHUP, workers --

def test_sigint_drains_like_sigterm(proxy, runner):
    p = proxy(settings={"shutdown_timeout": "10"})
    result = {}
    t = threading.Thread(target=_slow_request, args=(p, "/slow?name=intdrain", result))
    t.start()
    runner.wait_for("/slow?name=intdrain")
    os.kill(p.proc.pid, signal.SIGINT)
    wait_until(lambda: not port_is_listening(p.port), timeout=5,
               what="listener closed after SIGINT")
    assert p.proc.poll() is None
    runner.signal("intdrain")
    t.join(10)
    assert result.get("status") == 200, result
    assert p.proc.wait(10) == 0


def test_sighup_reloads_config_keeping_connections(proxy, runner, dead_port):
    p = proxy()
    with p.raw() as c:
        c.send(f"GET /before HTTP/1.1\r\nHost: {host(3000, PUB)}\r\n\r\n")
        assert c.read_response().status == 200
        assert p.get("/x", host=host(3000, "addedlater")).status_code == 401
        with open(p.conf_path, "a") as f:
            f.write(f"sandbox addedlater runner_url=http://127.0.0.1:{runner.port} "
                    "runner_key=runner-key-7f3a9c public=1 auth_token=t-added\n")
        os.kill(p.proc.pid, signal.SIGHUP)
        wait_until(lambda: p.get("/x", host=host(3000, "addedlater")).status_code == 200,
                   timeout=5, what="new sandbox served after SIGHUP")
        # the connection opened before the reload still works
        c.send(f"GET /after HTTP/1.1\r\nHost: {host(3000, PUB)}\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["target"].endswith("/after")
    assert p.alive()


def test_sighup_bad_config_keeps_old(proxy, runner):
    p = proxy()
    text = open(p.conf_path).read()
    with open(p.conf_path, "a") as f:
        f.write("frobnicate yes\n")
    os.kill(p.proc.pid, signal.SIGHUP)
    # the refusal is logged, naming the line; the old config keeps serving
    wait_until(lambda: "frobnicate" in p.log() or ":%d" % (text.count("\n") + 1) in p.log(),
               timeout=5, what="reload refusal logged")
    assert p.alive()
    assert p.health_ok()
    assert p.get("/still", host=host(3000, PUB)).status_code == 200
    assert p.get("/x", host=host(3000, PRIV)).status_code == 401


def _children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    kids.append(int(d))
            except OSError:
                pass
    return kids


def test_workers_share_listener_and_stop_together(proxy, runner):
    p = proxy(settings={"workers": "2"})
    kids = wait_until(lambda: (lambda k: k if len(k) >= 2 else None)(_children(p.proc.pid)),
                      timeout=5, what="two worker processes")
    for i in range(10):
        with p.raw() as c:
            c.send(f"GET /w/{i} HTTP/1.1\r\nHost: {host(3000, PUB)}\r\nConnection: close\r\n\r\n")
            assert c.read_response().status == 200
    assert len(runner.find("/w/")) == 10
    p.terminate()
    assert p.proc.wait(10) == 0
    wait_until(lambda: not [k for k in kids if os.path.exists(f"/proc/{k}")
                            and open(f"/proc/{k}/stat").read().rsplit(")", 1)[1].split()[0]
                            != "Z"],
               timeout=5, what="workers gone after SIGTERM to the master")


def test_metrics_listener(proxy, runner):
    mport = free_port()
    p = proxy(extra=[f"metrics_listen 127.0.0.1:{mport}"])
    assert p.get("/m", host=host(3000, PUB)).status_code == 200
    wait_until(lambda: port_is_listening(mport), timeout=5, what="metrics listener")
    r = requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=5)
    assert r.status_code == 200
    assert "# TYPE" in r.text, r.text[:500]
    # metrics are not served on the proxy listener
    assert p.get("/metrics").status_code == 404


def test_max_body_size_413(proxy, runner):
    """max_body_size: a declared length over it gets 413 before anything is
    forwarded; a chunked body that grows past it is cut off with 413."""
    p = proxy(extra=["max_body_size 1k"])
    h = host(3000, PUB)
    r = p.request("POST", "/upload", host=h, data=b"x" * 2048)
    assert r.status_code == 413
    assert r.json()["code"] == "PAYLOAD_TOO_LARGE"
    r = p.request("POST", "/upload", host=h, data=b"x" * 1000)
    assert r.status_code == 200
    chunks = (b"y" * 600 for _ in range(4))  # requests sends this chunked
    r = p.request("POST", "/upload", host=h, data=chunks)
    assert r.status_code == 413
    # the runner never received a complete body over the limit
    assert [x for x in runner.requests() if (x.get("body_len") or 0) > 1024] == []
    assert p.health_ok()


def _read_to_eof(s):
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            return data
        data += d


def test_413_reaches_a_client_still_uploading(proxy, runner):
    """The proxy answers 413 on the head, while the client is still sending a
    16 MiB body: it must read and discard that body (lingering close), not
    close at once, since closing with unread bytes sends RST and the client's
    kernel then drops the 413 before the client reads it."""
    p = proxy(extra=["max_body_size 1k"])
    body = 16 << 20
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(f"POST /upload HTTP/1.1\r\nHost: {host(3000, PUB)}\r\n"
                  f"Content-Length: {body}\r\n\r\n".encode())
        chunk = b"x" * 65536
        for _ in range(body // len(chunk)):
            s.sendall(chunk)
        data = _read_to_eof(s)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b"PAYLOAD_TOO_LARGE" in data
    assert [x for x in runner.requests() if (x.get("body_len") or 0) > 1024] == []
    assert p.health_ok()


def test_lingering_close_is_bounded_for_a_silent_client(proxy):
    """After its answer the proxy sends FIN and discards input; a client that
    neither sends nor closes is dropped after the lingering timeout (5 s),
    not kept forever."""
    p = proxy(extra=["max_body_size 1k"])
    fds = lambda: len(os.listdir(f"/proc/{p.proc.pid}/fd"))  # noqa: E731
    base = fds()
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(f"POST /upload HTTP/1.1\r\nHost: {host(3000, PUB)}\r\n"
                  f"Content-Length: 2048\r\n\r\n".encode())
        data = _read_to_eof(s)  # the FIN arrives after the answer
        assert data.startswith(b"HTTP/1.1 413"), data[:200]
        # the socket stays open and silent on our side
        wait_until(lambda: fds() <= base, timeout=15,
                   what="proxy closing a silent lingering connection")

"""TLS listeners (SPEC 11 TLS bullet, 12): certificates by SNI, the default
certificate, protocol versions, ALPN, session resumption, curl over HTTP/1.1 and
HTTP/2, X-Forwarded-Proto and cookie attributes over TLS, `-t` checks, and
Daytona's ENABLE_TLS/TLS_CERT_FILE/TLS_KEY_FILE/PROXY_PORT environment mode.

The PKI is generated with the openssl CLI (tlsfix.PKI): `default` covers
proxy.test, `a` a.test, `b` b.test (named in tls_cert), `c` c.test (a tls_cert
entry without domains: its SAN names).
"""
import json
import os
import socket
import ssl
import subprocess

import pytest

from helpers import accept_target, BASE_DOMAIN, PRIV, PRIV_TOKEN, PUB, RUNNER_KEY, free_port, host, runner_prefix, wait_until
from tlsfix import *  # noqa: F401,F403  (pki, tls_proxy)
from tlsfix import DOMAINS, client_ctx, curl, peer_cert, tls_connect, tls_health, tls_raw


@pytest.fixture
def tp(tls_proxy):
    return tls_proxy()


# ------------------------------------------------------------------ SNI --

@pytest.mark.parametrize("sni,label", [
    ("3000-sbxpub.a.test", "a"),
    ("a.test", "a"),
    ("8080-anything.b.test", "b"),
    ("b.test", "b"),
    ("3000-sbxpub.c.test", "c"),          # entry without domains: its SAN names
    (f"3000-sbxpub.{BASE_DOMAIN}", "default"),
    (BASE_DOMAIN, "default"),
])
def test_sni_selects_certificate(tp, pki, sni, label):
    cn, sans = peer_cert(tp.tls_port, sni, pki)
    assert cn == pki.cn(label), (sni, cn, sans)
    # and the chain verifies against our CA with the name the client asked for
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    with socket.create_connection(("127.0.0.1", tp.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            assert s.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("sni", ["unknown.example", "x.y.a.test.evil", "a.test.example", None])
def test_unknown_or_absent_sni_gets_default(tp, pki, sni):
    cn, _ = peer_cert(tp.tls_port, sni, pki)
    assert cn == pki.cn("default"), (sni, cn)


def test_first_entry_is_default_whatever_its_domain(tls_proxy, pki):
    p = tls_proxy(certs=[("b", "b.test"), ("a", "a.test"), ("default", BASE_DOMAIN)])
    assert peer_cert(p.tls_port, "unknown.example", pki)[0] == pki.cn("b")
    assert peer_cert(p.tls_port, None, pki)[0] == pki.cn("b")
    assert peer_cert(p.tls_port, "x.a.test", pki)[0] == pki.cn("a")
    assert peer_cert(p.tls_port, BASE_DOMAIN, pki)[0] == pki.cn("default")


# ------------------------------------------------------------ versions --

@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_old_tls_versions_refused(tp, pki, version):
    v = getattr(ssl.TLSVersion, version)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.minimum_version = v
    ctx.maximum_version = v
    with socket.create_connection(("127.0.0.1", tp.tls_port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)) as ei:
            ctx.wrap_socket(raw, server_hostname="x.a.test")
    # the server must have answered (alert), i.e. the client did offer the version
    msg = str(ei.value).upper()
    assert ("PROTOCOL_VERSION" in msg or "UNSUPPORTED_PROTOCOL" in msg
            or isinstance(ei.value, ConnectionResetError)), msg
    assert tp.alive() and tls_health(tp, pki, timeout=10)


def test_old_tls_refused_openssl_cli(tp):
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{tp.tls_port}",
                        "-servername", "x.a.test", "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=15)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode != 0, out
    assert "alert protocol version" in out or "unsupported protocol" in out, out
    assert "no peer certificate available" in out, out   # no handshake completed


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls12_and_tls13_accepted(tp, pki, version):
    ctx = client_ctx(pki)
    v = getattr(ssl.TLSVersion, version)
    ctx.minimum_version = v
    ctx.maximum_version = v
    with tls_connect(tp.tls_port, "3000-sbxpub.a.test", ctx=ctx) as s:
        assert s.version() == version.replace("_", ".")
        s.sendall(f"GET /health HTTP/1.1\r\nHost: {BASE_DOMAIN}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while (d := s.recv(65536)):
            data += d
        assert data.startswith(b"HTTP/1.1 200"), data[:200]


# ---------------------------------------------------------------- ALPN --

@pytest.mark.parametrize("offer,expect", [
    (["h2", "http/1.1"], "h2"),
    (["http/1.1", "h2"], "h2"),          # server preference
    (["http/1.1"], "http/1.1"),
    (["spdy/3", "http/1.1"], "http/1.1"),
    (None, None),
])
def test_alpn(tp, pki, offer, expect):
    with tls_connect(tp.tls_port, "x.a.test", pki, alpn=offer) as s:
        assert s.selected_alpn_protocol() == expect


def test_unknown_alpn_only_still_serves_http11(tp, pki):
    with tls_connect(tp.tls_port, BASE_DOMAIN, pki, alpn=["spdy/3"]) as s:
        assert s.selected_alpn_protocol() is None
        s.sendall(f"GET /health HTTP/1.1\r\nHost: {BASE_DOMAIN}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while (d := s.recv(65536)):
            data += d
        assert data.startswith(b"HTTP/1.1 200"), data[:200]


# ------------------------------------------------------------ resumption --

@pytest.mark.parametrize("proto", ["-tls1_2", "-tls1_3"])
def test_session_resumption(tp, pki, tmp_path, proto):
    sess = tmp_path / f"sess{proto}.pem"
    req = f"GET /health HTTP/1.1\r\nHost: {BASE_DOMAIN}\r\nConnection: close\r\n\r\n".encode()

    def s_client(*extra):
        p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{tp.tls_port}",
                            "-servername", "x.a.test", "-CAfile", pki.ca_file, proto, "-ign_eof",
                            *extra], input=req, capture_output=True, timeout=15)
        return (p.stdout + p.stderr).decode(errors="replace")

    first = s_client("-sess_out", str(sess))
    assert "HTTP/1.1 200" in first, first[-2000:]
    assert "New," in first
    assert sess.exists() and sess.stat().st_size > 0
    second = s_client("-sess_in", str(sess))
    assert "HTTP/1.1 200" in second, second[-2000:]
    assert "Reused," in second, second[-3000:]


def test_session_resumption_python(tp, pki):
    ctx = client_ctx(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_connect(tp.tls_port, "x.a.test", ctx=ctx) as s:
        sess = s.session
        assert not s.session_reused
    with tls_connect(tp.tls_port, "x.a.test", ctx=ctx, session=sess) as s:
        assert s.session_reused


# ----------------------------------------------------------------- curl --

@pytest.mark.parametrize("flag,version", [("--http1.1", "1.1"), ("--http2", "2")])
def test_curl_https(tp, pki, runner, flag, version):
    h = host(3000, PUB, "a.test")
    url = f"https://{h}:{tp.tls_port}/hello/world?x=1&y=%20z"
    p = curl([flag, "--cacert", pki.ca_file, "--resolve", f"{h}:{tp.tls_port}:127.0.0.1",
              "-H", "X-Custom: abc", "-w", "\n%{http_version} %{http_code}", url])
    assert p.returncode == 0, p.stderr
    body, _, tail = p.stdout.rpartition(b"\n")
    assert tail.decode().split() == [version, "200"], (tail, p.stderr)
    echo = json.loads(body)
    assert echo["target"] == runner_prefix(PUB, 3000) + "/hello/world?x=1&y=%20z"
    hdrs = {k.lower(): v for k, v in echo["headers"]}
    assert hdrs["x-forwarded-proto"] == "https"
    assert hdrs["x-daytona-authorization"] == f"Bearer {RUNNER_KEY}"
    assert hdrs["x-custom"] == "abc"
    assert hdrs["x-forwarded-host"].split(":")[0] == h
    assert "host" in hdrs


@pytest.mark.parametrize("flag", ["--http1.1", "--http2"])
def test_curl_https_private_needs_auth(tp, pki, runner, flag):
    h = host(3000, PRIV, "b.test")
    base = [flag, "--cacert", pki.ca_file, "--resolve", f"{h}:{tp.tls_port}:127.0.0.1",
            "-o", "/dev/null", "-w", "%{http_code}"]
    p = curl(base + [f"https://{h}:{tp.tls_port}/secret"])
    assert p.stdout == b"401", (p.stdout, p.stderr)
    p = curl(base + ["-H", f"X-Daytona-Preview-Token: {PRIV_TOKEN}", f"https://{h}:{tp.tls_port}/secret"])
    assert p.stdout == b"200", (p.stdout, p.stderr)
    rec = runner.wait_for("/secret")[0]
    assert not any(k.lower() == "x-daytona-preview-token" for k, _ in rec["headers"])


def test_curl_rejects_wrong_name(tp, pki):
    """A host that no tls_cert covers gets the default certificate, which curl
    refuses for that name (the proxy does not invent certificates)."""
    h = "3000-sbxpub.unknown.example"
    p = curl(["--cacert", pki.ca_file, "--resolve", f"{h}:{tp.tls_port}:127.0.0.1",
              f"https://{h}:{tp.tls_port}/"])
    assert p.returncode == 60, (p.returncode, p.stderr)   # peer certificate cannot be authenticated


def test_http_on_tls_port_does_not_hang_or_crash(tp, pki):
    with socket.create_connection(("127.0.0.1", tp.tls_port), timeout=5) as s:
        s.sendall(f"GET /health HTTP/1.1\r\nHost: {BASE_DOMAIN}\r\n\r\n".encode())
        s.settimeout(5)
        try:
            data = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            data = b""
        assert not data.startswith(b"HTTP/1.1 200")
    assert tp.alive() and tls_health(tp, pki, timeout=10)


# ------------------------------------------------------------ over TLS --

def test_warning_cookie_secure_over_tls(tp, pki):
    with tls_raw(tp.tls_port, "3000-sbxpub.a.test", pki) as c:
        c.send(f"POST /accept-daytona-preview-warning?redirect=/x HTTP/1.1\r\n"
               f"Host: {host(3000, PUB, 'a.test')}\r\nContent-Length: 0\r\n\r\n")
        r = c.read_response()
    assert accept_target(r.status, r.body) == "/x", r
    sc = r.header("set-cookie")
    assert "daytona-preview-page-accepted=true" in sc
    attrs = [a.strip() for a in sc.split(";")]
    assert "Secure" in attrs and "SameSite=None" in attrs, sc


def test_auth_cookie_secure_over_tls(tp, pki, runner):
    h = host(3000, PRIV, "a.test")
    with tls_raw(tp.tls_port, h, pki) as c:
        c.send(f"GET /page?DAYTONA_SANDBOX_AUTH_KEY={PRIV_TOKEN} HTTP/1.1\r\nHost: {h}\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    cookies = [v for v in r.header_all("set-cookie") if v.startswith("daytona-sandbox-auth-")]
    assert cookies, r.headers
    attrs = [a.strip() for a in cookies[0].split(";")]
    assert "Secure" in attrs and "SameSite=None" in attrs and "HttpOnly" in attrs, cookies


def test_tls_keepalive_many_requests_one_connection(tp, pki, runner):
    h = host(3000, PUB, "b.test")
    with tls_raw(tp.tls_port, h, pki) as c:
        for i in range(20):
            c.send(f"GET /k{i} HTTP/1.1\r\nHost: {h}\r\n\r\n")
            r = c.read_response()
            assert r.status == 200
            assert r.json()["target"].endswith(f"/k{i}")


# ------------------------------------------------------------ -t checks --

def _check(proxy_bin, tmp_path, lines, name="check.conf"):
    conf = tmp_path / name
    conf.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PROXY_PORT", "ENABLE_TLS",
                                                          "TLS_CERT_FILE", "TLS_KEY_FILE")}
    return subprocess.run([proxy_bin, "-t", "-c", str(conf)], capture_output=True, timeout=10,
                          env=env)


def test_config_check_tls(proxy_bin, pki, tmp_path):
    port = free_port()
    cert, key = pki.certs["a"]
    base = [f"domains {DOMAINS}"]
    # a TLS listener with no certificate at all
    p = _check(proxy_bin, tmp_path, base + [f"listen 127.0.0.1:{port} tls"], "nocert.conf")
    assert p.returncode == 1, p
    assert p.stderr, p
    # good
    p = _check(proxy_bin, tmp_path, base + [f"listen 127.0.0.1:{port} tls",
                                           f"tls_cert {cert} {key} a.test"], "good.conf")
    assert p.returncode == 0, p.stderr
    # missing files, key that does not match, garbage certificate
    other_key = pki.certs["b"][1]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    for i, tc in enumerate([f"tls_cert {tmp_path}/missing.pem {key} a.test",
                            f"tls_cert {cert} {tmp_path}/missing.key a.test",
                            f"tls_cert {cert} {other_key} a.test",
                            f"tls_cert {garbage} {key} a.test",
                            "tls_cert"]):
        p = _check(proxy_bin, tmp_path, base + [f"listen 127.0.0.1:{port} tls", tc], f"bad{i}.conf")
        assert p.returncode == 1, (tc, p)
    # bad listen suffix
    p = _check(proxy_bin, tmp_path, base + [f"listen 127.0.0.1:{port} ssl",
                                           f"tls_cert {cert} {key}"], "badlisten.conf")
    assert p.returncode == 1, p


# ------------------------------------------------------------ env mode --

def test_env_mode_enable_tls(proxy, pki, runner):
    port = free_port()
    cert, key = pki.certs["b"]
    p = proxy(settings={"domains": DOMAINS}, wait=False,
              env={"ENABLE_TLS": "true", "TLS_CERT_FILE": cert, "TLS_KEY_FILE": key,
                   "PROXY_PORT": str(port)})
    p.tls_port = port
    wait_until(lambda: tls_health(p, pki), timeout=10, what="env-mode TLS /health")
    # the env certificate is the only (so default) one
    for sni in ("x.b.test", "x.a.test", None):
        assert peer_cert(port, sni, pki)[0] == pki.cn("b"), sni
    h = host(3000, PUB, "b.test")
    r = curl(["--http2", "--cacert", pki.ca_file, "--resolve", f"{h}:{port}:127.0.0.1",
              "-w", "\n%{http_version} %{http_code}", f"https://{h}:{port}/envmode"])
    body, _, tail = r.stdout.rpartition(b"\n")
    assert tail.split() == [b"2", b"200"], (r.stdout[-300:], r.stderr)
    hdrs = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert hdrs["x-forwarded-proto"] == "https"
    # PROXY_PORT replaced the file's plaintext listener
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1).close()


def test_env_mode_cert_is_default_next_to_file_certs(proxy, pki, runner):
    port = free_port()
    cert, key = pki.certs["b"]
    a_cert, a_key = pki.certs["a"]
    p = proxy(settings={"domains": DOMAINS}, wait=False, extra=[f"tls_cert {a_cert} {a_key} a.test"],
              env={"ENABLE_TLS": "true", "TLS_CERT_FILE": cert, "TLS_KEY_FILE": key,
                   "PROXY_PORT": str(port)})
    p.tls_port = port
    wait_until(lambda: tls_health(p, pki), timeout=10, what="env-mode TLS /health")
    assert peer_cert(port, "x.a.test", pki)[0] == pki.cn("a")
    assert peer_cert(port, "unknown.example", pki)[0] == pki.cn("b")
    assert peer_cert(port, None, pki)[0] == pki.cn("b")


def test_env_mode_without_enable_tls_is_plaintext(proxy, pki, runner):
    port = free_port()
    cert, key = pki.certs["b"]
    p = proxy(settings={"domains": DOMAINS}, wait=False,
              env={"ENABLE_TLS": "false", "TLS_CERT_FILE": cert, "TLS_KEY_FILE": key,
                   "PROXY_PORT": str(port)})
    p.wait_ready(port=port)


def test_env_mode_missing_key_fails(proxy_bin, pki, tmp_path):
    conf = tmp_path / "env.conf"
    conf.write_text(f"domains {DOMAINS}\n")
    env = dict(os.environ, ENABLE_TLS="true", TLS_CERT_FILE=pki.certs["b"][0],
               PROXY_PORT=str(free_port()))
    env.pop("TLS_KEY_FILE", None)
    p = subprocess.run([proxy_bin, "-t", "-c", str(conf)], capture_output=True, timeout=10, env=env)
    assert p.returncode == 1, p

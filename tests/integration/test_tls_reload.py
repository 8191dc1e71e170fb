"""SIGHUP and TLS certificates (SPEC 11, 12): new handshakes get the new
certificate, established connections (a 50 MiB download) continue intact, and a
broken certificate file on reload keeps the old one while the proxy serves on.

The tls_cert lines point at "live" copies of the PKI files, which the tests
overwrite before sending SIGHUP.
"""
import hashlib
import os
import shutil
import signal

import pytest

from helpers import BASE_DOMAIN, PUB, host, pattern_bytes, wait_until
from tlsfix import *  # noqa: F401,F403
from tlsfix import H2Client, log_wait, peer_cert, tls_health, tls_raw

SIZE = 50 * 1024 * 1024


@pytest.fixture
def live(pki, tmp_path):
    cert, key = str(tmp_path / "live-a.pem"), str(tmp_path / "live-a.key")
    shutil.copy(pki.certs["a"][0], cert)
    shutil.copy(pki.certs["a"][1], key)
    return cert, key


@pytest.fixture
def rp(tls_proxy, live):
    return tls_proxy(certs=[("default", BASE_DOMAIN), (live, "a.test"), ("b", "b.test")])


def install(pki, label, live):
    # write to temp files and rename, as a certificate manager would
    for src, dst in zip(pki.certs[label], live):
        shutil.copy(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)


def hup(p):
    mark = len(p.log())
    os.kill(p.proc.pid, signal.SIGHUP)
    log_wait(p, "SIGHUP", start=mark, timeout=5)
    return mark


def test_sighup_swaps_certificate_during_long_download(rp, pki, live, runner):
    h = host(3000, PUB, "a.test")
    assert peer_cert(rp.tls_port, h, pki)[0] == pki.cn("a")
    c = tls_raw(rp.tls_port, h, pki, timeout=30)
    try:
        c.send(f"GET /partial?n={SIZE}&name=hupdl HTTP/1.1\r\nHost: {h}\r\n\r\n")
        status, _, _, headers, _ = c.read_head()
        assert status == 200
        got = hashlib.sha256()
        first = c.read_exact(4 * 1024 * 1024)         # download under way
        got.update(first)
        install(pki, "a2", live)
        hup(rp)
        # new handshakes (during the download) see the new certificate
        seen = []

        def new_cert():
            seen.append(peer_cert(rp.tls_port, h, pki)[0])
            return seen[-1] == pki.cn("a2")
        try:
            wait_until(new_cert, timeout=3, what="new cert")
        except AssertionError:
            pass
        others = (peer_cert(rp.tls_port, "x.b.test", pki)[0],
                  peer_cert(rp.tls_port, "unknown.example", pki)[0])
        # the old connection finishes its download intact
        runner.signal("hupdl")
        left = SIZE - len(first)
        while left:
            chunk = c.read_exact(min(left, 1 << 20))
            got.update(chunk)
            left -= len(chunk)
        assert got.hexdigest() == hashlib.sha256(pattern_bytes(SIZE)).hexdigest()
        assert others == (pki.cn("b"), pki.cn("default"))
        assert seen[-1] == pki.cn("a2"), \
            f"after SIGHUP new handshakes for {h} still get {seen[-1]!r}, not {pki.cn('a2')!r}"
        # and keeps working for further requests
        c.send(f"GET /after HTTP/1.1\r\nHost: {h}\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["target"].endswith("/after")
    finally:
        c.close()
    assert rp.alive()


def test_sighup_keeps_h2_connection_streaming(rp, pki, live, runner):
    """An HTTP/2 connection opened before SIGHUP keeps serving new streams."""
    h = host(3000, PUB, "a.test")
    with H2Client(rp.tls_port, sni=h, pki=pki) as c:
        sid = c.request("GET", "/partial?n=3000000&name=huph2", h)
        c.pump_until(lambda: len(c.streams[sid].data) > 0, what="first bytes")
        install(pki, "a2", live)
        hup(rp)
        runner.signal("huph2")
        st = c.response(sid, timeout=20)
        assert st.status == 200 and bytes(st.data) == pattern_bytes(3000000)
        st = c.get("/after-hup", h)
        assert st.status == 200
    assert wait_until(lambda: peer_cert(rp.tls_port, h, pki)[0] == pki.cn("a2"), timeout=3,
                      what="new certificate")


def test_sighup_with_broken_certificate_keeps_old(rp, pki, live, runner):
    h = host(3000, PUB, "a.test")
    assert peer_cert(rp.tls_port, h, pki)[0] == pki.cn("a")
    with open(live[0], "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\ntruncated\n")
    mark = hup(rp)
    # the old certificate stays, and the proxy serves ...
    assert peer_cert(rp.tls_port, h, pki)[0] == pki.cn("a")
    assert tls_health(rp, pki, timeout=10)
    with tls_raw(rp.tls_port, h, pki) as c:
        c.send(f"GET /still HTTP/1.1\r\nHost: {h}\r\n\r\n")
        assert c.read_response().status == 200
    # ... and a log line names the problem
    wait_until(lambda: any(("tls_cert" in ln or live[0] in ln or "certificate" in ln.lower())
                           for ln in rp.log()[mark:].splitlines()),
               timeout=3, what="a log line about the broken certificate")
    # a later good reload works again
    install(pki, "a2", live)
    hup(rp)
    wait_until(lambda: peer_cert(rp.tls_port, h, pki)[0] == pki.cn("a2"), timeout=3,
               what="the new certificate after fixing the file")


def test_sighup_with_mismatched_key_keeps_old(rp, pki, live, runner):
    h = host(3000, PUB, "a.test")
    shutil.copy(pki.certs["a2"][0], live[0])   # new certificate, old key: does not match
    mark = hup(rp)
    assert peer_cert(rp.tls_port, h, pki)[0] == pki.cn("a")
    assert tls_health(rp, pki, timeout=10)
    wait_until(lambda: any(("tls_cert" in ln or live[0] in ln or "key" in ln.lower())
                           for ln in rp.log()[mark:].splitlines()
                           if "SIGHUP" in ln or "tls" in ln.lower()),
               timeout=3, what="a log line about the mismatched key")


def test_sighup_unchanged_certificates_keep_serving(rp, pki, runner):
    h = host(3000, PUB, "a.test")
    for _ in range(3):
        hup(rp)
    assert peer_cert(rp.tls_port, h, pki)[0] == pki.cn("a")
    assert peer_cert(rp.tls_port, None, pki)[0] == pki.cn("default")
    assert tls_health(rp, pki, timeout=10)

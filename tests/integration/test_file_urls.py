"""Signed toolbox file URLs (SPEC 4.7, DAYTONA-API.md §7): downloads, HEAD and
streamed uploads authenticated by a signature alone; every tamper case; the
parameters that never reach the runner; the key from the sandbox record
(standalone, rotated with proxyctl) or from C12 (API mode: cached 30 s,
refetched once on a mismatch, DAYTONA-API.md §9 scenario 11)."""
import base64
import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
from urllib.parse import quote

import pytest

from apifix import *  # noqa: F401,F403
from helpers import raw_exchange, request_bytes, sha256, wait_until
from redisfix import *  # noqa: F401,F403
from redisfix import add_sandbox, json_error

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROXYCTL = os.environ.get("PROXYCTL_BIN", os.path.join(REPO_ROOT, "build", "proxyctl"))

KEY = "testsigningkey1234567890abcdefgh"          # DAYTONA-API.md §7's test key
KEY2 = "otherkey-S3CRET-0123456789abcdefg"
SB = "sbx-files-a1"                               # private, signing key KEY
SB2 = "sbx-files-b2"                              # private, signing key KEY2
NOKEY = "sbx-files-c3"                            # private, no signing key
FILE = "/home/user/report.pdf"
MiB = 1024 * 1024


def sign(key, method, path, expires):
    msg = f"v1:files:{method}:{path}:{expires}".encode()
    mac = hmac.new(key.encode(), msg, hashlib.sha256).digest()
    return "v1_" + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def url(sid, path=FILE, expires=0, sig=None, key=KEY, method="GET", op=None, extra=""):
    """A signed file URL as the SDK builds it (path escaped with quote_plus rules)."""
    op = op or ("download" if method == "GET" else "upload-v2")
    sig = sig if sig is not None else sign(key, method, path, expires)
    return (f"/toolbox/{sid}/files/{op}?path={quote(path, safe='')}&expires={expires}{extra}"
            f"&signature={sig}")


def later(seconds=600):
    return int(time.time()) + seconds


def only(runner):
    recs = runner.requests()
    assert len(recs) == 1, recs
    return recs[0]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def world(rdb, runner):
    add_sandbox(rdb, SB, runner.url, signing_key=KEY)
    add_sandbox(rdb, SB2, runner.url, signing_key=KEY2)
    add_sandbox(rdb, NOKEY, runner.url)
    return rdb


@pytest.fixture
def px(rproxy, world):
    return rproxy()


# ------------------------------------------------------------------ standalone --

def test_test_vectors_match_this_helper():
    """The Python signer the tests use is §7's (so the proxy is checked against §7)."""
    assert sign(KEY, "GET", FILE, 1781234567) == "v1_QXoy36mypac2FAv33L7jnN44GEUx8KrdwT0vuKgKiQg"
    assert sign(KEY, "POST", "/tmp/incoming/data.bin", 1781234567) == \
        "v1_CziiRdFkC9asB7q1mi0-fDvvwkpTxcI7yR8N35ht9Vw"


def test_download_and_parameters_never_reach_the_runner(px, runner):
    exp = later()
    sig = sign(KEY, "GET", FILE, exp)
    target = f"/toolbox/{SB}/files/download?path=%2Fhome%2Fuser%2Freport.pdf&expires={exp}&x=1" \
             f"&signature={sig}"
    r = px.get(target)
    assert r.status_code == 200, r.text
    rec = only(runner)
    # path (and every other parameter) byte for byte; signature and expires gone
    assert rec["target"] == f"/sandboxes/{SB}/toolbox/files/download" \
                            "?path=%2Fhome%2Fuser%2Freport.pdf&x=1", rec
    assert rec["auth_ok"] is True
    assert sig not in json.dumps(rec) and "expires" not in rec["target"]
    assert sig not in px.log() and KEY not in px.log()


def test_head_download(px, runner):
    exp = later()
    r = px.request("HEAD", url(SB, expires=exp))           # HEAD uses the GET signature
    assert r.status_code == 200
    rec = only(runner)
    assert rec["method"] == "HEAD"
    assert rec["target"] == f"/sandboxes/{SB}/toolbox/files/download?path=%2Fhome%2Fuser%2Freport.pdf"


def test_expires_zero_never_expires(px, runner):
    r = px.get(url(SB, expires=0))
    assert r.status_code == 200, r.text
    assert only(runner)["target"].endswith("/files/download?path=%2Fhome%2Fuser%2Freport.pdf")


def test_path_with_spaces_plus_or_percent_encoded(px, runner):
    path = "/path with spaces/f.txt"
    sig = sign(KEY, "GET", path, 0)
    for enc in ("%2Fpath+with+spaces%2Ff.txt", "/path%20with%20spaces/f.txt"):
        r = px.get(f"/toolbox/{SB}/files/download?path={enc}&expires=0&signature={sig}")
        assert r.status_code == 200, (enc, r.text)
    assert [rec["target"].split("?")[1] for rec in runner.requests()] == \
        ["path=%2Fpath+with+spaces%2Ff.txt", "path=/path%20with%20spaces/f.txt"]


def test_upload_50mib_streams_with_flat_rss(px, runner):
    """The body goes through as it arrives: the proxy's RSS stays far below the
    body's size while 50 MiB pass (a proxy that buffered would grow by 50 MiB)."""
    path = "/tmp/incoming/data.bin"
    total = 50 * MiB
    piece = os.urandom(MiB)
    digest = hashlib.sha256()
    target = url(SB, path=path, expires=later(), method="POST", extra="&tag=up50")
    base = rss_kib(px.proc.pid)
    peak = base
    with px.raw(timeout=60) as c:
        c.send(request_bytes("POST", target, "proxy.test",
                             headers=[("Content-Length", str(total)),
                                      ("Content-Type", "application/octet-stream")]))
        for i in range(total // MiB):
            c.send(piece)
            digest.update(piece)
            if i % 4 == 3:
                peak = max(peak, rss_kib(px.proc.pid))
        r = c.read_response()
    peak = max(peak, rss_kib(px.proc.pid))
    assert r.status == 200, r
    rec = only(runner)
    assert rec["body_len"] == total and rec["body_sha256"] == digest.hexdigest()
    assert rec["target"] == f"/sandboxes/{SB}/toolbox/files/upload-v2" \
                            "?path=%2Ftmp%2Fincoming%2Fdata.bin&tag=up50"
    assert peak - base < 24 * 1024, f"proxy RSS grew by {(peak - base) // 1024} MiB"


def test_small_upload(px, runner):
    body = b"hello file"
    r = px.request("POST", url(SB, path="/tmp/a.txt", expires=later(), method="POST"), data=body)
    assert r.status_code == 200, r.text
    assert only(runner)["body_sha256"] == sha256(body)


def past():
    return int(time.time()) - 5


# (description, method, target builder, status, message substring)
TAMPER = [
    ("changed path", "GET",
     lambda: url(SB, path="/etc/passwd", sig=sign(KEY, "GET", FILE, 0)), 401, "invalid signature"),
    ("changed expires", "GET",
     lambda: url(SB, expires=later(900), sig=sign(KEY, "GET", FILE, later(600))), 401,
     "invalid signature"),
    ("past expires", "GET", lambda: url(SB, expires=past()), 401, "expired"),
    ("non-integer expires", "GET", lambda: url(SB, expires="1.5e9"), 401, "expires"),
    ("negative expires", "GET", lambda: url(SB, expires=-1), 401, "expires"),
    ("missing expires", "GET",
     lambda: f"/toolbox/{SB}/files/download?path=%2Fa&signature={sign(KEY, 'GET', '/a', 0)}",
     401, "expires"),
    ("missing path", "GET",
     lambda: f"/toolbox/{SB}/files/download?expires=0&signature={sign(KEY, 'GET', '', 0)}",
     400, "path"),
    ("no v1_ prefix", "GET", lambda: url(SB, sig=sign(KEY, "GET", FILE, 0)[3:]), 401,
     "unsupported signature scheme"),
    ("v2_ prefix", "GET", lambda: url(SB, sig="v2_" + sign(KEY, "GET", FILE, 0)[3:]), 401,
     "unsupported signature scheme"),
    ("bad base64", "GET", lambda: url(SB, sig="v1_!!!not*base64!!!"), 401, "invalid signature"),
    ("padded base64", "GET", lambda: url(SB, sig=sign(KEY, "GET", FILE, 0) + "%3D"), 401,
     "invalid signature"),
    ("one character changed", "GET",
     lambda: url(SB, sig=sign(KEY, "GET", FILE, 0)[:-1] +
                 ("A" if sign(KEY, "GET", FILE, 0)[-1] != "A" else "B")), 401,
     "invalid signature"),
    ("GET signature used for POST", "POST",
     lambda: url(SB, op="upload-v2", sig=sign(KEY, "GET", FILE, 0)), 401, "invalid signature"),
    ("POST signature used for GET", "GET",
     lambda: url(SB, op="download", sig=sign(KEY, "POST", FILE, 0)), 401, "invalid signature"),
    ("signature of another sandbox", "GET", lambda: url(SB, key=KEY2), 401, "invalid signature"),
    ("sandbox without signing_key", "GET", lambda: url(NOKEY), 401, "signing key"),
    ("unknown sandbox", "GET", lambda: url("sbx-nope-d4"), 401, "signing key"),
]


@pytest.mark.parametrize("what,method,target,status,message", TAMPER,
                         ids=[t[0] for t in TAMPER])
def test_tampered_urls_are_refused(px, runner, what, method, target, status, message):
    r = px.request(method, target(), headers={"Accept": "application/json"},
                   data=b"x" * 10 if method == "POST" else None)
    assert r.status_code == status, (what, r.text)
    body = json_error(r)
    assert message in body["message"], body
    assert "signature" not in body["path"]          # the query never echoes back
    assert runner.requests() == []


def test_the_same_url_works_untampered(px, runner):
    """Control for the tamper cases: SB2's own signature opens SB2."""
    assert px.get(url(SB2, key=KEY2)).status_code == 200
    assert px.request("POST", url(SB, op="upload-v2", method="POST"), data=b"x").status_code == 200


def test_other_credentials_do_not_rescue_a_bad_signature(px, runner, world):
    """A signed file URL is decided by its signature alone (§5 step 7 replaces step 8)."""
    tok = f"tok-{SB}-S3CRET"
    r = px.get(url(SB, sig=sign(KEY2, "GET", FILE, 0)), headers={"X-Daytona-Preview-Token": tok})
    assert r.status_code == 401
    assert runner.requests() == []


def test_without_signature_normal_auth_applies(px, runner):
    tok = f"tok-{SB}-S3CRET"
    assert px.get(f"/toolbox/{SB}/files/download?path=%2Fa").status_code == 401
    r = px.get(f"/toolbox/{SB}/files/download?path=%2Fa&expires=0&signature=",
               headers={"X-Daytona-Preview-Token": tok})
    assert r.status_code == 200
    # nothing was consumed: the empty signature is the runner's business
    assert only(runner)["target"].endswith("/files/download?path=%2Fa&expires=0&signature=")


@pytest.mark.parametrize("op", ["download/", "download/x", "Download", "%64ownload", "upload"])
def test_other_paths_are_not_file_urls(px, runner, op):
    # raw bytes: an HTTP library would normalise %64 to d
    target = f"/toolbox/{SB}/files/{op}?path=%2Fa&expires=0&signature={sign(KEY, 'GET', '/a', 0)}"
    r = raw_exchange(px.port, request_bytes("GET", target, "proxy.test",
                                            headers=[("Accept", "application/json")]))
    assert r is not None and r.status == 401, r
    assert "signature" not in r.json()["message"]    # the normal 401, not a signature verdict
    assert runner.requests() == []


def test_preview_host_on_2280_is_not_covered(px, runner):
    r = px.get(url(SB).replace(f"/toolbox/{SB}", ""), host=f"2280-{SB}.proxy.test")
    assert r.status_code == 401
    assert runner.requests() == []


def test_rotation_with_proxyctl_takes_effect_at_once(px, runner, redis_server):
    """Standalone: the record change is published, so the old key is dropped now."""
    assert px.get(url(SB)).status_code == 200
    p = subprocess.run([PROXYCTL, "--redis", f"127.0.0.1:{redis_server.port}", "signing-key",
                        "rotate", SB], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""                           # the key itself is never printed
    wait_until(lambda: px.get(url(SB)).status_code == 401, timeout=5,
               what="old signature refused after rotation")


def test_proxyctl_file_url_create_end_to_end(px, runner, redis_server):
    def create(*args):
        p = subprocess.run([PROXYCTL, "--redis", f"127.0.0.1:{redis_server.port}", "file-url",
                            "create", *args, "--domain", "proxy.test"],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, p.stderr
        lines = dict(line.split(": ", 1) for line in p.stdout.splitlines())
        assert lines["url"].startswith("http://proxy.test/toolbox/")
        return lines["url"][len("http://proxy.test"):], int(lines["expires"])

    target, exp = create(SB, "/home/user/my report.pdf", "--method", "GET", "--expires", "600")
    assert abs(exp - (time.time() + 600)) < 30
    assert px.get(target).status_code == 200
    assert px.request("HEAD", target).status_code == 200
    target, exp = create(SB, "/tmp/up.bin", "--method", "POST", "--expires", "0")
    assert exp == 0 and "/files/upload-v2?" in target
    assert px.request("POST", target, data=b"abc").status_code == 200
    assert px.get(target).status_code == 401           # an upload link is no download link
    got = [rec["target"] for rec in runner.requests()]
    assert got == [f"/sandboxes/{SB}/toolbox/files/download?path=/home/user/my%20report.pdf"] * 2 \
        + [f"/sandboxes/{SB}/toolbox/files/upload-v2?path=/tmp/up.bin"]


# -------------------------------------------------------------------- API mode --

def api_proxy(proxy, api, redis_server=None, **settings):
    s = {"cookie_secret": "cookie-secret-for-tests", "api_timeout": "2"}
    if redis_server is not None:
        s["redis"] = f"127.0.0.1:{redis_server.port}"
    s.update(settings)
    return proxy(settings=s, env=api.proxy_env(), default_sandboxes_too=False)


def c12(api, sid="sb-priv"):
    return api.calls(f"/api/preview/{sid}/signing-key")


def test_api_download_upload_and_warm_path(proxy, api):
    p = api_proxy(proxy, api)
    exp = later()
    r = p.get(url("sb-priv", expires=exp))
    assert r.status_code == 200, r.text
    rec = api.runner.wait_for("/sandboxes/sb-priv/toolbox/files/download")[0]
    assert rec["target"] == "/sandboxes/sb-priv/toolbox/files/download?path=%2Fhome%2Fuser%2Freport.pdf"
    assert rec["auth_ok"] is True
    log = api.log()
    seq = [e["route"] for e in log if e["route"] in ("C2", "C12", "C6")]
    assert seq == ["C2", "C12", "C6"], seq          # §5: C2 first, then the key, then the runner
    # the warm path: within 30 s no further C12 (nor any other) call
    before = len(api.log())
    assert p.request("HEAD", url("sb-priv", expires=exp)).status_code == 200
    assert p.request("POST", url("sb-priv", path="/tmp/x", expires=0, method="POST"),
                     data=b"abc").status_code == 200
    assert len(api.log()) == before
    assert len(c12(api)) == 1
    assert KEY not in p.log() and sign(KEY, "GET", FILE, exp) not in p.log()


@pytest.mark.parametrize("what,method,target,status,message", [
    ("changed path", "GET", lambda: url("sb-priv", path="/etc/passwd", sig=sign(KEY, "GET", FILE, 0)),
     401, "invalid signature"),
    ("past expires", "GET", lambda: url("sb-priv", expires=past()), 401, "expired"),
    ("missing path", "GET",
     lambda: f"/toolbox/sb-priv/files/download?expires=0&signature={sign(KEY, 'GET', '', 0)}",
     400, "path"),
    ("no v1_ prefix", "GET", lambda: url("sb-priv", sig=sign(KEY, "GET", FILE, 0)[3:]), 401,
     "unsupported signature scheme"),
    ("wrong method", "POST", lambda: url("sb-priv", op="upload-v2", sig=sign(KEY, "GET", FILE, 0)),
     401, "invalid signature"),
    ("unknown sandbox", "GET", lambda: url("sb-nope"), 401, "signing key"),
], ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_api_tampered_urls_are_refused(proxy, api, what, method, target, status, message):
    p = api_proxy(proxy, api)
    r = p.request(method, target(), headers={"Accept": "application/json"},
                  data=b"x" if method == "POST" else None)
    assert r.status_code == status, (what, r.text)
    assert message in r.json()["message"]
    assert api.runner.requests() == []


def test_api_mismatch_refetches_once_and_nothing_negative_is_cached(proxy, api):
    p = api_proxy(proxy, api)
    bad = url("sb-priv", key=KEY2)
    assert p.get(bad).status_code == 401
    assert len(c12(api)) == 2                          # the fetch, then one refetch
    assert p.get(bad).status_code == 401
    assert len(c12(api)) == 3                          # the good key is cached; one refetch
    # an unknown sandbox: C12 404 each time, never cached
    assert p.get(url("sb-nope")).status_code == 401
    assert p.get(url("sb-nope")).status_code == 401
    assert len(c12(api, "sb-nope")) == 2
    assert api.runner.requests() == []


def test_api_key_rotation_scenario_11(proxy, api, redis_server, rdb):
    """DAYTONA-API.md §9 scenario 11: after a rotation a new signature works at
    once (one refetch), an old one costs one refetch and gets 401; the refetched
    key replaces the cached one, in process and in Daytona's Redis key."""
    p = api_proxy(proxy, api, redis_server)
    old = url("sb-priv")
    assert p.get(old).status_code == 200
    assert len(c12(api)) == 1
    cached = json.loads(rdb("GET", "proxy:sandbox-signing-key:sb-priv"))
    assert cached == {"value": KEY}
    assert 0 < rdb("TTL", "proxy:sandbox-signing-key:sb-priv") <= 30

    new_key = api.rotate("sb-priv")
    assert new_key != KEY
    new = url("sb-priv", key=new_key)
    assert p.get(new).status_code == 200                # at once
    assert len(c12(api)) == 2                          # one refetch
    assert json.loads(rdb("GET", "proxy:sandbox-signing-key:sb-priv")) == {"value": new_key}

    r = p.get(old, headers={"Accept": "application/json"})
    assert r.status_code == 401 and "invalid signature" in r.json()["message"]
    assert len(c12(api)) == 3                          # one refetch, then 401

    assert p.get(new).status_code == 200                # the new key is cached now
    assert len(c12(api)) == 3
    assert [rec["target"].split("?")[0] for rec in api.runner.requests()] == \
        ["/sandboxes/sb-priv/toolbox/files/download"] * 3
    assert new_key not in p.log() and KEY not in p.log()


def test_api_key_read_from_daytonas_redis_cache(proxy, api, redis_server, rdb):
    """A key another proxy cached under Daytona's key is used without a C12 call."""
    rdb("SET", "proxy:sandbox-signing-key:sb-priv", json.dumps({"value": KEY2}), "EX", "30")
    p = api_proxy(proxy, api, redis_server)
    assert p.get(url("sb-priv", key=KEY2)).status_code == 200
    assert c12(api) == []


def test_api_c12_down_gives_503_not_a_pass(proxy, api):
    p = api_proxy(proxy, api)
    api.fault("C12", fail_next=3, status=503, body="json")
    r = p.get(url("sb-priv"))
    assert r.status_code == 503, r.text
    assert len(c12(api)) == 3                          # §3: retried
    assert api.runner.requests() == []
    assert p.get(url("sb-priv")).status_code == 200    # the failure was not cached


def test_api_refetch_failure_is_a_401(proxy, api):
    p = api_proxy(proxy, api)
    assert p.get(url("sb-priv")).status_code == 200
    api.fault("C12", fail_next=3, status=503, body="json")
    assert p.get(url("sb-priv", key=KEY2)).status_code == 401
    assert p.get(url("sb-priv")).status_code == 200    # the cached key still works


def test_api_bad_signature_flood_is_bounded_by_the_miss_budget(proxy, api):
    """Each mismatch may cost one C12 refetch, but only as many as the client's
    miss budget allows: beyond it the answer is still 401, without a call."""
    p = api_proxy(proxy, api, lookup_client_rate="1 5")
    assert p.get(url("sb-priv")).status_code == 200    # C2, C12 and C6 are cached now
    bad = url("sb-priv", key=KEY2)
    for _ in range(20):
        assert p.get(bad).status_code == 401
    assert len(c12(api)) <= 1 + 7, len(c12(api))      # the first fetch, then about the burst
    assert p.get(url("sb-priv")).status_code == 200    # good links keep working (cached)

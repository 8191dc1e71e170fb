"""Request smuggling defences and size limits, byte-exact over raw sockets
(SPEC section 9, LESSONS B2). Each bad request gets 400 (or a closed
connection), never reaches the runner, and the proxy keeps serving."""
import pytest

from helpers import PUB, ConnectionClosed, host, raw_exchange, request_bytes, runner_prefix

H = host(3000, PUB)


def head(*lines):
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


BAD_REQUESTS = {
    "cl_and_te": head("POST /smuggle HTTP/1.1", f"Host: {H}", "Content-Length: 5",
                      "Transfer-Encoding: chunked") + b"0\r\n\r\n",
    "te_and_cl": head("POST /smuggle HTTP/1.1", f"Host: {H}", "Transfer-Encoding: chunked",
                      "Content-Length: 5") + b"0\r\n\r\n",
    "two_differing_cl": head("POST /smuggle HTTP/1.1", f"Host: {H}", "Content-Length: 5",
                             "Content-Length: 6") + b"hello!",
    "cl_list_differing": head("POST /smuggle HTTP/1.1", f"Host: {H}",
                              "Content-Length: 5, 6") + b"hello!",
    "cl_plus": head("POST /smuggle HTTP/1.1", f"Host: {H}", "Content-Length: +5") + b"hello",
    "cl_negative": head("POST /smuggle HTTP/1.1", f"Host: {H}", "Content-Length: -1") + b"x",
    "cl_alpha": head("POST /smuggle HTTP/1.1", f"Host: {H}", "Content-Length: abc") + b"abc",
    "cl_hex": head("POST /smuggle HTTP/1.1", f"Host: {H}", "Content-Length: 0x5") + b"hello",
    "cl_huge": head("POST /smuggle HTTP/1.1", f"Host: {H}",
                    "Content-Length: 99999999999999999999999999") + b"x",
    "te_not_chunked_last": head("POST /smuggle HTTP/1.1", f"Host: {H}",
                                "Transfer-Encoding: chunked, gzip") + b"0\r\n\r\n",
    "te_unknown": head("POST /smuggle HTTP/1.1", f"Host: {H}",
                       "Transfer-Encoding: xchunked") + b"0\r\n\r\n",
    "te_chunked_twice": head("POST /smuggle HTTP/1.1", f"Host: {H}",
                             "Transfer-Encoding: chunked", "Transfer-Encoding: chunked")
    + b"0\r\n\r\n",
    "bad_chunk_size": head("POST /smuggle HTTP/1.1", f"Host: {H}", "Transfer-Encoding: chunked")
    + b"zz\r\nhello\r\n0\r\n\r\n",
    "chunk_size_overflow": head("POST /smuggle HTTP/1.1", f"Host: {H}",
                                "Transfer-Encoding: chunked")
    + b"10000000000000000005\r\nhello\r\n0\r\n\r\n",
    "chunk_bare_lf": head("POST /smuggle HTTP/1.1", f"Host: {H}", "Transfer-Encoding: chunked")
    + b"5\nhello\n0\n\n",
    "obs_fold": head("GET /smuggle HTTP/1.1", f"Host: {H}", "X-Folded: a", " b"),
    "obs_fold_tab": head("GET /smuggle HTTP/1.1", f"Host: {H}", "X-Folded: a", "\tb"),
    "nul_in_value": head("GET /smuggle HTTP/1.1", f"Host: {H}", "X-Bad: a\x00b"),
    "bare_cr_in_value": head("GET /smuggle HTTP/1.1", f"Host: {H}", "X-Bad: a\rb"),
    "ctl_in_value": head("GET /smuggle HTTP/1.1", f"Host: {H}", "X-Bad: a\x01b"),
    "no_host_http11": head("GET /smuggle HTTP/1.1", "X-Other: 1"),
    "two_hosts": head("GET /smuggle HTTP/1.1", f"Host: {H}", "Host: proxy.test"),
    "space_before_colon": head("GET /smuggle HTTP/1.1", f"Host: {H}", "X-Bad : value"),
    "space_before_colon_host": head("GET /smuggle HTTP/1.1", f"Host : {H}"),
    "space_in_header_name": head("GET /smuggle HTTP/1.1", f"Host: {H}", "X Bad: value"),
    "no_colon": head("GET /smuggle HTTP/1.1", f"Host: {H}", "X-Bad-No-Colon"),
    "bad_version_text": head("GET /smuggle HTTX/1.1", f"Host: {H}"),
    "bad_method": head("G(T /smuggle HTTP/1.1", f"Host: {H}"),
    "space_in_target": head("GET /smug gle HTTP/1.1", f"Host: {H}"),
    "ctl_in_target": head("GET /smug\x01gle HTTP/1.1", f"Host: {H}"),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_rejected(px, runner, name):
    r = raw_exchange(px.port, BAD_REQUESTS[name])
    allowed = (400, 413) if name == "cl_huge" else (400,)
    assert r is None or r.status in allowed, f"{name}: got {r!r}"
    assert runner.find("/smug") == [], f"{name} reached the runner"
    assert px.health_ok()
    # the next request on a fresh connection still goes through
    r2 = raw_exchange(px.port, request_bytes("GET", "/after-bad", H))
    assert r2 is not None and r2.status == 200
    assert runner.requests()[-1]["target"] == runner_prefix(PUB, 3000) + "/after-bad"


def test_bad_request_closes_connection(px, runner):
    """After a framing error the connection must not be reused: bytes after
    the bad request must not be parsed as a second request."""
    smuggled = request_bytes("GET", "/smuggled-second", H)
    data = head("POST /smuggle HTTP/1.1", f"Host: {H}", "Content-Length: 5",
                "Transfer-Encoding: chunked") + b"0\r\n\r\n" + smuggled
    with px.raw() as c:
        c.send(data)
        try:
            r = c.read_response()
            assert r.status == 400
        except ConnectionClosed:  # closed without a response is also fine
            pass
        assert c.is_closed(timeout=5)
    assert runner.find("/smuggl") == []


def test_valid_identical_duplicate_cl_or_rejected(px, runner):
    """Content-Length: 5 twice with the same value is either accepted as 5 or
    rejected; it must never be framed as anything else."""
    data = head("POST /dupcl HTTP/1.1", f"Host: {H}", "Content-Length: 5",
                "Content-Length: 5") + b"hello"
    r = raw_exchange(px.port, data)
    if r is not None and r.status == 200:
        rec = runner.requests()[0]
        assert rec["body_len"] == 5
    else:
        assert r is None or r.status == 400
        assert runner.requests() == []


# --------------------------------------------------------------- limits --

def test_request_line_too_long_414(px, runner):
    target = "/long/" + "a" * 9000
    r = raw_exchange(px.port, request_bytes("GET", target, H))
    assert r is not None and r.status == 414, r
    assert runner.requests() == []
    assert px.health_ok()


def test_request_line_under_limit_ok(px, runner):
    target = "/long/" + "a" * 7000
    r = raw_exchange(px.port, request_bytes("GET", target, H))
    assert r is not None and r.status == 200, r
    assert runner.requests()[0]["target"] == runner_prefix(PUB, 3000) + target


def test_headers_too_large_431(px, runner):
    headers = [(f"X-Big-{i}", "b" * 7000) for i in range(10)]   # ~70 KiB
    r = raw_exchange(px.port, request_bytes("GET", "/bigheaders", H, headers=headers))
    assert r is not None and r.status == 431, r
    assert runner.requests() == []
    assert px.health_ok()


def test_headers_under_limit_ok(px, runner):
    headers = [(f"X-Big-{i}", "b" * 6000) for i in range(7)]    # ~42 KiB
    r = raw_exchange(px.port, request_bytes("GET", "/okheaders", H, headers=headers))
    assert r is not None and r.status == 200, r
    rec = runner.requests()[0]
    assert len([k for k, _ in rec["headers"] if k.startswith("X-Big-")]) == 7


def test_too_many_headers_431(px, runner):
    headers = [(f"X-H{i}", str(i)) for i in range(150)]
    r = raw_exchange(px.port, request_bytes("GET", "/manyheaders", H, headers=headers))
    assert r is not None and r.status == 431, r
    assert runner.requests() == []
    assert px.health_ok()


def test_many_headers_under_limit_ok(px, runner):
    headers = [(f"X-H{i}", str(i)) for i in range(80)]
    r = raw_exchange(px.port, request_bytes("GET", "/someheaders", H, headers=headers))
    assert r is not None and r.status == 200, r
    rec = runner.requests()[0]
    assert len([k for k, _ in rec["headers"] if k.startswith("X-H")]) == 80


def test_limits_configurable(proxy, runner):
    p = proxy(settings={"max_request_line": "1k", "max_headers": "20", "max_header_size": "4k"})
    r = raw_exchange(p.port, request_bytes("GET", "/x" + "a" * 1500, H))
    assert r is not None and r.status == 414, r
    r = raw_exchange(p.port, request_bytes("GET", "/y", H,
                                           headers=[(f"X-H{i}", "1") for i in range(30)]))
    assert r is not None and r.status == 431, r
    r = raw_exchange(p.port, request_bytes("GET", "/z", H, headers=[("X-Big", "c" * 5000)]))
    assert r is not None and r.status == 431, r
    assert runner.requests() == []
    r = raw_exchange(p.port, request_bytes("GET", "/fine", H))
    assert r is not None and r.status == 200


def test_garbage_then_health(px, runner):
    r = raw_exchange(px.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)
    assert r is None or r.status == 400
    assert px.health_ok()
    assert runner.requests() == []


def test_chunk_data_longer_than_size_rejected(px, runner):
    data = head("POST /smuggle HTTP/1.1", f"Host: {H}", "Transfer-Encoding: chunked") \
        + b"5\r\nhelloXX\r\n0\r\n\r\n"
    r = raw_exchange(px.port, data)
    assert r is None or r.status == 400, r
    # the body may already be streaming when the error is found; what must
    # never happen is a complete request reaching the runner
    assert all(x["body_sha256"] is None for x in runner.find("/smuggle"))
    assert px.health_ok()


@pytest.mark.parametrize("te", ["CHUNKED", "Chunked", "chunked "])
def test_transfer_encoding_case_insensitive(px, runner, te):
    data = head("POST /te HTTP/1.1", f"Host: {H}", f"Transfer-Encoding: {te}") \
        + b"0005\r\nhello\r\n0\r\n\r\n"
    r = raw_exchange(px.port, data)
    assert r is not None and r.status == 200, r
    from helpers import sha256
    assert runner.requests()[0]["body_sha256"] == sha256(b"hello")


# ------------------------------------ bodies of requests the proxy refuses --

INNER = request_bytes("GET", "/smuggled-in-body", H)


@pytest.mark.parametrize("where", ["private_401", "base_404", "bad_host_400", "toolbox_401"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_body_of_refused_request_never_parsed_as_request(px, runner, where, framing):
    """The proxy answers without forwarding; the body it did not forward must
    be discarded (or the connection closed), never read as a next request."""
    from helpers import PRIV
    target, hostname, status = {
        "private_401": ("/p", host(3000, PRIV), 401),
        "base_404": ("/nope", "proxy.test", 404),
        "bad_host_400": ("/p", f"0-{PUB}.proxy.test", 400),
        "toolbox_401": (f"/toolbox/{PRIV}/files/upload", "proxy.test", 401),
    }[where]
    if framing == "length":
        req = request_bytes("POST", target, hostname, body=INNER)
    else:
        from helpers import chunked
        req = request_bytes("POST", target, hostname,
                            headers=[("Transfer-Encoding", "chunked")]) + chunked(INNER, size=10)
    with px.raw() as c:
        c.send(req)
        r = c.read_response()
        assert r.status == status, r
        try:
            c.send(request_bytes("GET", "/legit-next", H))
            r2 = c.read_response()
        except (ConnectionClosed, ConnectionResetError, BrokenPipeError) as e:
            r2 = e  # closed after the refusal: fine (a hang is not)
        if not isinstance(r2, Exception):
            assert r2.status == 200, r2
            assert r2.json()["target"] == runner_prefix(PUB, 3000) + "/legit-next"
    assert runner.find("/smuggled-in-body") == []


def test_head_on_proxy_errors_has_no_body(px, runner):
    from helpers import PRIV
    with px.raw() as c:
        c.send(request_bytes("HEAD", "/p", host(3000, PRIV)))
        r = c.read_response(head_request=True)
        assert r.status == 401
        c.send(request_bytes("HEAD", "/nope", "proxy.test"))
        r = c.read_response(head_request=True)
        assert r.status == 404
        c.send(request_bytes("GET", "/after-head", H))
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["target"].endswith("/after-head")


def test_http10_client_never_gets_chunked(px, runner):
    n = 100000
    with px.raw(timeout=10) as c:
        c.send(request_bytes("GET", f"/download?n={n}&chunked=1&seed=4", H, version="HTTP/1.0"))
        r = c.read_response()
    assert r.status == 200
    assert "chunked" not in (r.header("Transfer-Encoding") or "").lower(), r.headers
    from helpers import pattern_bytes
    assert r.body == pattern_bytes(n, 4)


# ---------------------------------------------------- limit boundaries --

def test_max_headers_boundary(px, runner):
    # Host + 99 = 100 header fields: allowed; Host + 100 = 101: 431
    ok = [(f"X-H{i}", "1") for i in range(99)]
    r = raw_exchange(px.port, request_bytes("GET", "/hdr100", H, headers=ok))
    assert r is not None and r.status == 200, r
    too_many = [(f"X-H{i}", "1") for i in range(100)]
    r = raw_exchange(px.port, request_bytes("GET", "/hdr101", H, headers=too_many))
    assert r is not None and r.status == 431, r
    assert [x["target"] for x in runner.requests()] == [runner_prefix(PUB, 3000) + "/hdr100"]


def test_max_request_line_boundary(px, runner):
    # "GET " + target + " HTTP/1.1" is 13 bytes besides the target
    ok_target = "/b" + "a" * (8190 - 13 - 2)          # 8190-byte line (+CRLF = 8192)
    r = raw_exchange(px.port, request_bytes("GET", ok_target, H))
    assert r is not None and r.status == 200, r
    long_target = "/c" + "a" * (8193 - 13 - 2)        # 8193-byte line
    r = raw_exchange(px.port, request_bytes("GET", long_target, H))
    assert r is not None and r.status == 414, r
    assert [x["target"] for x in runner.requests()] == [runner_prefix(PUB, 3000) + ok_target]


def test_max_header_size_boundary(px, runner):
    ok = [(f"X-Big-{i}", "b" * 6200) for i in range(10)]        # ~62 KiB
    r = raw_exchange(px.port, request_bytes("GET", "/hs-ok", H, headers=ok))
    assert r is not None and r.status == 200, r
    big = [(f"X-Big-{i}", "b" * 6750) for i in range(10)]       # ~66 KiB
    r = raw_exchange(px.port, request_bytes("GET", "/hs-big", H, headers=big))
    assert r is not None and r.status == 431, r
    assert [x["target"] for x in runner.requests()] == [runner_prefix(PUB, 3000) + "/hs-ok"]


# ------------------------------- found by the differential tests (issue 12) --
# tests/integration/test_differential.py compares the proxy with nginx and
# HAProxy; each fix below has its case there and a focused test here.

def test_absolute_form_userinfo_rejected(px, runner):
    """RFC 9110 4.2.4: userinfo in an http(s) target is an error (nginx: 400)."""
    r = raw_exchange(px.port, request_bytes("GET", f"http://user:pw@{H}/smuggle-ui", H))
    assert r is None or r.status == 400, r
    assert runner.find("/smuggle-ui") == []


def test_absolute_form_with_empty_host_rejected(px, runner):
    """An empty Host beside an authority in the target: nginx and HAProxy
    both refuse it; the proxy forwarded it."""
    data = head(f"GET http://{H}/smuggle-eh HTTP/1.1", "Host:")
    r = raw_exchange(px.port, data)
    assert r is None or r.status == 400, r
    assert runner.find("/smuggle-eh") == []


def test_absolute_form_host_is_the_routed_authority(px, runner):
    """RFC 9112 3.2.2: a proxy MUST send the target's authority as Host, not
    the Host field it received. Direct mode forwarded the received one, so
    the app saw a host the request was not routed by."""
    from helpers import DIRECT
    routed = host(runner.port, DIRECT)
    r = raw_exchange(px.port, request_bytes("GET", f"http://{routed}/abs-host", "other.example"))
    assert r is not None and r.status == 200, r
    rec = runner.wait_for("/abs-host")[0]
    hdrs = {k.lower(): v for k, v in rec["headers"]}
    assert hdrs["host"] == routed and hdrs["x-forwarded-host"] == routed, rec["headers"]


@pytest.mark.parametrize("size,ok", [("fffffffffffff", True), ("10000000000000", False),
                                     ("7fffffffffffffff", False), ("ffffffffffffffff", False)])
def test_chunk_size_limit(px, runner, size, ok):
    """Chunk sizes of 2^52 and more get 400 (as in HAProxy; nginx refuses
    those near 2^63): a next hop could read them as negative or rounded.
    2^52 - 1 is streamed as usual."""
    data = head("POST /smuggle-cs HTTP/1.1", f"Host: {H}", "Transfer-Encoding: chunked") \
        + size.encode() + b"\r\nhello\r\n0\r\n\r\n"
    with px.raw(timeout=2) as c:
        c.send(data)
        if ok:  # accepted: the proxy now waits for the rest of the chunk
            runner.wait_for("/smuggle-cs")
            return
        try:
            r = c.read_response()
            assert r.status == 400, r
        except ConnectionClosed:
            pass
    assert all(x["body_sha256"] is None for x in runner.find("/smuggle-cs"))


def test_head_ending_in_bare_cr_answered_at_once(px, runner):
    """"\\r\\n\\r\\r\\n" never completes a head: 400 at once, as nginx and
    HAProxy do, not after client_header_timeout."""
    import time
    data = head("GET /smuggle-cr HTTP/1.1", f"Host: {H}")[:-4] + b"\r\n\r\r\n"
    t0 = time.monotonic()
    r = raw_exchange(px.port, data, timeout=5)
    assert r is None or r.status == 400, r
    assert time.monotonic() - t0 < 3
    assert runner.find("/smuggle-cr") == []

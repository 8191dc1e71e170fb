"""Request smuggling defences and size limits, byte-exact over raw sockets
(SPEC section 9, LESSONS B2). Each bad request gets 400 (or a closed
connection), never reaches the runner, and the proxy keeps serving."""
import pytest

from helpers import PUB, host, raw_exchange, request_bytes, runner_prefix

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
        except Exception:  # closed without a response is also fine
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

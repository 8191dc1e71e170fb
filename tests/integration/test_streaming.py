"""Bodies, streaming, keep-alive, pipelining, upstream pooling and retries
(SPEC section 9)."""
import hashlib
import os
import threading

import pytest
import requests

from helpers import (PUB, chunked, host, pattern_bytes, raw_exchange,
                     request_bytes, runner_prefix, sha256, wait_until)

MiB = 1024 * 1024


# ------------------------------------------------------------ big bodies --

def test_upload_10mib_content_length(px, runner):
    body = os.urandom(10 * MiB)
    r = px.request("POST", "/upload", host=host(3000, PUB), data=body, timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["body_sha256"] == sha256(body)
    rec = runner.requests()[0]
    assert rec["body_len"] == len(body)
    assert rec["body_sha256"] == sha256(body)


def test_upload_10mib_chunked(px, runner):
    body = os.urandom(10 * MiB)

    def gen():
        for i in range(0, len(body), 64 * 1024 + 17):
            yield body[i:i + 64 * 1024 + 17]

    r = px.request("PUT", "/upload", host=host(3000, PUB), data=gen(), timeout=60)
    assert r.status_code == 200, r.text[:300]
    rec = runner.requests()[0]
    assert rec["body_len"] == len(body)
    assert rec["body_sha256"] == sha256(body)


@pytest.mark.parametrize("mode", ["length", "chunked"])
def test_download_20mib(px, runner, mode):
    n = 20 * MiB
    q = f"/download?n={n}&seed=7" + ("&chunked=1" if mode == "chunked" else "")
    with px.get(q, host=host(3000, PUB), stream=True, timeout=60) as r:
        assert r.status_code == 200
        if mode == "length":
            assert r.headers.get("Content-Length") == str(n)
        h = hashlib.sha256()
        total = 0
        for part in r.iter_content(256 * 1024):
            h.update(part)
            total += len(part)
    assert total == n
    assert h.hexdigest() == sha256(pattern_bytes(n, 7))


def test_request_body_streamed_not_buffered(px, runner):
    """The runner must see the first part of a large Content-Length body before
    the client has sent the rest."""
    total = 4 * MiB
    first = os.urandom(MiB)
    rest = os.urandom(total - MiB)
    with px.raw(timeout=20) as c:
        c.send(request_bytes("POST", "/upload?tag=stream1", host(3000, PUB),
                             headers=[("Content-Length", str(total))]) + first)
        wait_until(lambda: runner.progress("stream1") >= 512 * 1024, timeout=5,
                   what="runner received the first part of the body")
        c.send(rest)
        r = c.read_response()
    assert r.status == 200
    assert r.json()["body_sha256"] == sha256(first + rest)


def test_chunked_request_with_trailers(px, runner):
    body = os.urandom(200000)
    req = request_bytes("POST", "/upload", host(3000, PUB),
                        headers=[("Transfer-Encoding", "chunked"), ("Trailer", "X-Checksum")])
    req += chunked(body, size=7001, trailers=[("X-Checksum", "abc123")])
    r = raw_exchange(px.port, req)
    assert r is not None and r.status == 200, r
    rec = runner.requests()[0]
    assert rec["body_sha256"] == sha256(body)
    assert rec["body_len"] == len(body)
    assert ["X-Checksum", "abc123"] in rec["trailers"], rec


def test_chunked_request_with_extensions(px, runner):
    req = request_bytes("POST", "/upload", host(3000, PUB),
                        headers=[("Transfer-Encoding", "chunked")])
    req += b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    r = raw_exchange(px.port, req)
    assert r is not None and r.status == 200, r
    assert runner.requests()[0]["body_sha256"] == sha256(b"hello world")


def test_response_trailers_forwarded(px, runner):
    r = raw_exchange(px.port, request_bytes("GET", "/trailers", host(3000, PUB),
                                            headers=[("TE", "trailers")]))
    assert r is not None and r.status == 200, r
    assert r.body == b"hello world"
    assert ("X-Runner-Trailer", "done") in r.trailers, r


def test_expect_100_continue(px, runner):
    body = os.urandom(300000)
    with px.raw(timeout=5) as c:
        c.send(request_bytes("POST", "/upload", host(3000, PUB),
                             headers=[("Content-Length", str(len(body))),
                                      ("Expect", "100-continue")]))
        # the proxy (or the runner through it) must invite the body
        status, _, _, _, _ = c.read_head()
        assert status == 100
        c.send(body)
        r = c.read_response()
    assert r.status == 200
    assert r.json()["body_sha256"] == sha256(body)
    assert runner.requests()[0]["body_sha256"] == sha256(body)


def test_expect_100_continue_rejected_early(px, runner):
    """Private sandbox, no token: the final 401 comes without waiting for the
    body (which the client never sends)."""
    from helpers import PRIV
    with px.raw(timeout=5) as c:
        c.send(request_bytes("POST", "/upload", host(3000, PRIV),
                             headers=[("Content-Length", "100000"), ("Expect", "100-continue")]))
        r = c.read_response()
    assert r.status == 401
    assert runner.requests() == []


# ------------------------------------------------------- bodiless answers --

@pytest.mark.parametrize("method,path,status", [
    ("HEAD", "/download?n=5000", 200),
    ("HEAD", "/download?n=5000&chunked=1", 200),
    ("GET", "/status/204", 204),
    ("GET", "/status/304", 304),
    ("HEAD", "/status/204", 204),
])
def test_bodiless_responses_keep_connection_usable(px, runner, method, path, status):
    with px.raw() as c:
        c.send(request_bytes(method, path, host(3000, PUB)))
        r = c.read_response(head_request=(method == "HEAD"))
        assert r.status == status
        if method == "HEAD" and "chunked" not in path and status == 200:
            assert r.header("Content-Length") == "5000"
        # the next response must start exactly here: no stray body bytes
        c.send(request_bytes("GET", "/after", host(3000, PUB)))
        r2 = c.read_response()
        assert r2.status == 200, r2
        assert r2.json()["target"] == runner_prefix(PUB, 3000) + "/after"


# --------------------------------------------------------------- SSE etc --

def test_sse_events_arrive_as_sent(px, runner):
    with px.raw(timeout=10) as c:
        c.send(request_bytes("GET", "/sse?name=sse1", host(3000, PUB),
                             headers=[("Accept", "text/event-stream")]))
        status, _, _, headers, _ = c.read_head()
        assert status == 200
        # the runner holds "second" back until we signal; "first" must be here already
        got = b""
        while b"data: first" not in got:
            got += c.read_some()
        assert b"data: second" not in got
        runner.signal("sse1")
        while b"data: second" not in got:
            got += c.read_some()


def test_content_length_response_streamed(px, runner):
    n = 2 * MiB
    data = pattern_bytes(n, 3)
    with px.raw(timeout=10) as c:
        c.send(request_bytes("GET", f"/partial?n={n}&seed=3&name=part1", host(3000, PUB)))
        status, _, _, headers, _ = c.read_head()
        assert status == 200
        got = b""
        while len(got) < n // 2:
            got += c.read_some()
        assert got == data[:len(got)]
        runner.signal("part1")
        got += c.read_exact(n - len(got))
        assert got == data


def test_sse_via_requests_stream(px, runner):
    with px.get("/sse?name=sse2", host=host(3000, PUB), stream=True, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        it = r.iter_lines()
        lines = []
        while "data: first" not in lines:
            lines.append(next(it).decode())
        runner.signal("sse2")
        while "data: second" not in lines:
            lines.append(next(it).decode())


# ------------------------------------------------- client connection reuse --

def test_client_keepalive_several_requests_one_connection(px, runner):
    with px.raw() as c:
        for i in range(5):
            c.send(request_bytes("GET", f"/ka/{i}", host(3000, PUB)))
            r = c.read_response()
            assert r.status == 200
            assert r.json()["target"] == runner_prefix(PUB, 3000) + f"/ka/{i}"
        c.send(request_bytes("GET", "/health", "proxy.test"))
        assert c.read_response().status == 200


def test_pipelining_responses_in_order(px, runner):
    reqs = b"".join(request_bytes("GET", f"/pipe/{i}", host(3000, PUB)) for i in range(3))
    with px.raw() as c:
        c.send(reqs)
        for i in range(3):
            r = c.read_response()
            assert r.status == 200
            assert r.json()["target"] == runner_prefix(PUB, 3000) + f"/pipe/{i}"


def test_pipelining_mixed_with_bodies(px, runner):
    b1, b2 = os.urandom(1000), os.urandom(70000)
    reqs = (request_bytes("POST", "/pipe/a", host(3000, PUB), body=b1)
            + request_bytes("GET", "/health", "proxy.test")
            + request_bytes("PUT", "/pipe/b", host(3000, PUB), body=b2)
            + request_bytes("HEAD", "/download?n=10", host(3000, PUB))
            + request_bytes("GET", "/pipe/c", host(3000, PUB)))
    with px.raw() as c:
        c.send(reqs)
        r = c.read_response()
        assert r.json()["body_sha256"] == sha256(b1)
        r = c.read_response()
        assert r.json()["status"] == "ok"
        r = c.read_response()
        assert r.json()["body_sha256"] == sha256(b2)
        r = c.read_response(head_request=True)
        assert r.status == 200 and r.header("Content-Length") == "10"
        r = c.read_response()
        assert r.json()["target"].endswith("/pipe/c")


def test_connection_close_honoured(px, runner):
    with px.raw() as c:
        c.send(request_bytes("GET", "/bye", host(3000, PUB), headers=[("Connection", "close")]))
        r = c.read_response()
        assert r.status == 200
        assert c.is_closed(timeout=5)


# --------------------------------------------------------- upstream pool --

def test_upstream_keepalive_reuse(px, runner):
    s = requests.Session()
    for i in range(6):
        r = s.get(f"{px.url}/reuse/{i}", headers={"Host": host(3000, PUB)}, timeout=10)
        assert r.status_code == 200
    reqs = runner.find("/reuse/")
    assert len(reqs) == 6
    conns = {r["conn"] for r in reqs}
    assert len(conns) < 6, f"every request used a new upstream connection: {conns}"


def test_upstream_reuse_across_client_connections(px, runner):
    for i in range(4):
        with px.raw() as c:
            c.send(request_bytes("GET", f"/across/{i}", host(3000, PUB)))
            assert c.read_response().status == 200
    conns = {r["conn"] for r in runner.find("/across/")}
    assert len(conns) < 4, conns


def test_runner_closing_after_response_then_get_succeeds(px, runner):
    s = requests.Session()
    h = {"Host": host(3000, PUB)}
    for i in range(3):
        r = s.get(f"{px.url}/close-after?i={i}", headers=h, timeout=10)
        assert r.status_code == 200
        r = s.get(f"{px.url}/next?i={i}", headers=h, timeout=10)
        assert r.status_code == 200, r.text
    assert len(runner.find("/next?")) == 3


def test_stale_pooled_connection_get_retried_once(px, runner):
    h = {"Host": host(3000, PUB)}
    s = requests.Session()
    assert s.get(f"{px.url}/warm", headers=h, timeout=10).status_code == 200
    runner.arm_drop_reused()   # the next request on a used upstream conn is swallowed
    r = s.get(f"{px.url}/idem?x=1", headers=h, timeout=10)
    assert r.status_code == 200, r.text
    seen = runner.find("/idem?x=1")
    answered = [x for x in seen if not x["dropped"]]
    assert len(answered) == 1
    assert len(seen) <= 2       # at most the dropped attempt plus one retry


def test_stale_pooled_connection_post_not_replayed(px, runner):
    h = {"Host": host(3000, PUB)}
    s = requests.Session()
    assert s.get(f"{px.url}/warm", headers=h, timeout=10).status_code == 200
    runner.arm_drop_reused()
    r = s.post(f"{px.url}/once?x=1", headers=h, data=b"do-it-once", timeout=10)
    seen = runner.find("/once?x=1")
    assert len(seen) == 1, f"POST reached the runner {len(seen)} times: {seen}"
    if seen[0]["dropped"]:
        assert r.status_code == 502, r.status_code
    else:
        assert r.status_code == 200


def test_post_to_aborting_runner_seen_once(px, runner):
    r = px.request("POST", "/abort?id=p1", host=host(3000, PUB), data=b"x" * 10)
    assert r.status_code == 502
    assert len(runner.find("/abort?id=p1")) == 1
    assert px.health_ok()


def test_get_to_aborting_runner_502_bounded_attempts(px, runner):
    r = px.get("/abort?id=g1", host=host(3000, PUB))
    assert r.status_code == 502
    assert 1 <= len(runner.find("/abort?id=g1")) <= 2


def test_upstream_idle_timeout_closes_pooled_connection(proxy, runner):
    p = proxy(settings={"upstream_idle_timeout": "1"})
    r = p.get("/idle", host=host(3000, PUB))
    assert r.status_code == 200
    conn_id = runner.requests()[0]["conn"]
    wait_until(lambda: not [c for c in runner.conns() if c["id"] == conn_id][0]["open"],
               timeout=6, what="proxy closing the idle upstream connection")


def test_concurrent_requests(px, runner):
    errors = []

    def worker(i):
        try:
            s = requests.Session()
            for j in range(5):
                body = os.urandom(5000 + i * 100 + j)
                r = s.post(f"{px.url}/conc/{i}/{j}", headers={"Host": host(3000, PUB)},
                           data=body, timeout=20)
                assert r.status_code == 200
                assert r.json()["body_sha256"] == sha256(body)
                assert r.json()["target"].endswith(f"/conc/{i}/{j}")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(runner.find("/conc/")) == 40


def test_pipelining_many(px, runner):
    n = 50
    reqs = b"".join(request_bytes("GET", f"/many/{i}", host(3000, PUB)) for i in range(n))
    with px.raw(timeout=10) as c:
        c.send(reqs)
        for i in range(n):
            r = c.read_response()
            assert r.status == 200
            assert r.json()["target"].endswith(f"/many/{i}")


def test_eof_delimited_response_relayed(px, runner):
    n = 300000
    with px.raw(timeout=10) as c:
        c.send(request_bytes("GET", f"/eof-body?n={n}&seed=5", host(3000, PUB)))
        r = c.read_response()
    assert r.status == 200
    assert r.body == pattern_bytes(n, 5)


def test_client_abort_mid_download(px, runner):
    n = 20 * MiB
    c = px.raw(timeout=10)
    c.send(request_bytes("GET", f"/download?n={n}&seed=9", host(3000, PUB)))
    status, _, _, _, _ = c.read_head()
    assert status == 200
    got = len(c.buf)
    while got < 256 * 1024:
        got += len(c.read_some())
    c.close()
    # the proxy survives and the same upstream keeps working
    assert px.health_ok()
    r = px.get("/download?n=1000&seed=2", host=host(3000, PUB))
    assert r.status_code == 200 and r.content == pattern_bytes(1000, 2)


def test_client_abort_mid_upload(px, runner):
    c = px.raw(timeout=10)
    c.send(request_bytes("POST", "/upload?tag=abort1", host(3000, PUB),
                         headers=[("Content-Length", str(4 * MiB))]) + os.urandom(MiB))
    wait_until(lambda: runner.progress("abort1") > 0, timeout=5, what="upload started")
    conn_id = runner.find("tag=abort1")[0]["conn"]
    c.close()
    # the half-sent request must not be completed or reused: the runner-side
    # connection carrying it is closed
    wait_until(lambda: not [x for x in runner.conns() if x["id"] == conn_id][0]["open"],
               timeout=5, what="runner connection of the aborted upload closed")
    assert runner.find("tag=abort1")[0]["body_sha256"] is None
    assert px.health_ok()
    r = px.request("POST", "/upload", host=host(3000, PUB), data=b"again")
    assert r.status_code == 200 and r.json()["body_sha256"] == sha256(b"again")


def test_big_response_header_relayed(px, runner):
    r = px.get("/bighdr?n=20000", host=host(3000, PUB))
    assert r.status_code == 200
    assert r.headers["X-Big"] == "v" * 20000
    assert r.content == b"big-header"


def test_slow_upstreams_do_not_block_others(px, runner):
    """20 requests parked on a slow runner endpoint; /health and other
    sandboxes' requests are still answered at once."""
    results = []

    def worker(i):
        try:
            r = requests.get(f"{px.url}/slow?name=park&i={i}", headers={"Host": host(3000, PUB)},
                             timeout=20)
            results.append(r.status_code)
        except requests.RequestException as e:
            results.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    try:
        runner.wait_for("/slow?name=park", count=20, timeout=10)
        assert px.health_ok()
        r = px.get("/meanwhile", host=host(3000, PUB), timeout=5)
        assert r.status_code == 200
        assert results == []
    finally:
        runner.signal("park")
        for t in threads:
            t.join(20)
    assert results == [200] * 20


def test_upstream_keepalive_caps_idle_pool(proxy, runner):
    p = proxy(settings={"upstream_keepalive": "2"})
    results = []

    def worker(i):
        r = requests.get(f"{p.url}/slow?name=cap&i={i}", headers={"Host": host(3000, PUB)},
                         timeout=20)
        results.append(r.status_code)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    runner.wait_for("/slow?name=cap", count=6, timeout=10)
    conns = {r["conn"] for r in runner.find("/slow?name=cap")}
    assert len(conns) == 6
    runner.signal("cap")
    for t in threads:
        t.join(20)
    assert results == [200] * 6

    def open_count():
        return len([c for c in runner.conns() if c["id"] in conns and c["open"]])
    wait_until(lambda: open_count() <= 2, timeout=5,
               what="proxy closing upstream connections beyond upstream_keepalive=2")
    assert open_count() <= 2

"""Issue 13 item 2 (REVIEW change 2): one way to end an exchange that cannot
finish, and exactly one access log line for it, whichever way it ends."""
import re
import socket

import pytest
import requests

from helpers import BASE_DOMAIN, PUB, free_port, host, wait_until


def access_lines(px, path):
    return [l for l in px.log_lines() if " ACCESS " in l and f" path={path} " in l]


def read_until(sock, marker, limit=1 << 16):
    got = b""
    while marker not in got and len(got) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def test_bad_request_body_after_the_answer_began_is_logged_once(px, runner):
    """The runner answers before it reads the upload; then the client's chunked
    body turns malformed. Nothing can be answered any more (the status line is
    out): the connection closes, and the exchange still gets its one log line
    with the status that was sent (before: closed without any)."""
    s = socket.create_connection(("127.0.0.1", px.port))
    s.settimeout(10)
    try:
        s.sendall(b"POST /answer-first?name=af1 HTTP/1.1\r\nHost: " + host(3000, PUB).encode()
                  + b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        got = read_until(s, b"half-")
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"half-"), got
        s.sendall(b"zz\r\n")  # not a chunk size
        rest = read_until(s, b"\0never")
        assert rest == b"", rest  # closed: no second answer after the first began
    finally:
        s.close()
        runner.signal("af1")
    lines = wait_until(lambda: access_lines(px, "/answer-first") or None,
                       what="the access log line of the failed exchange")
    assert len(lines) == 1, lines
    assert " status=200 " in lines[0], lines[0]


def test_runner_gone_mid_response_is_logged_once_as_sent(px, runner):
    """The runner closes with half of its answer sent: the client's connection
    closes (the length it was promised cannot be met) and one line says 200."""
    s = socket.create_connection(("127.0.0.1", px.port))
    s.settimeout(10)
    try:
        s.sendall(b"GET /answer-first?name=af2 HTTP/1.1\r\nHost: " + host(3000, PUB).encode()
                  + b"\r\n\r\n")
        got = read_until(s, b"half-")
        assert got.endswith(b"half-"), got
        runner.signal("af2")  # the runner closes its connection now
        assert read_until(s, b"\0never") == b""
    finally:
        s.close()
    lines = wait_until(lambda: access_lines(px, "/answer-first") or None,
                       what="the access log line of the cut exchange")
    assert len(lines) == 1, lines
    assert " status=200 " in lines[0], lines[0]


def open_http(mport):
    text = requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
    m = re.search(r'^preview_proxy_open_connections\{kind="http"\} (\d+)$', text, re.M)
    return int(m.group(1))


@pytest.fixture
def mpx(proxy):
    mport = free_port()
    p = proxy(extra=[f"metrics_listen 127.0.0.1:{mport}"])
    p.mport = mport
    return p


def test_connection_close_request_read_whole_is_closed_at_once(mpx):
    """Issue 13: after `Connection: close` from a client that sent its whole
    request and nothing more, the proxy closes at once (nginx's rule), instead
    of shutting down its side and lingering up to 5 s for the client's FIN.
    The client here keeps its socket open and reads nothing more."""
    s = socket.create_connection(("127.0.0.1", mpx.port))
    s.settimeout(10)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: " + BASE_DOMAIN.encode()
                  + b"\r\nConnection: close\r\n\r\n")
        got = read_until(s, b"\0never")
        assert got.startswith(b"HTTP/1.1 200") and b"Connection: close" in got, got
        # gone from the proxy's connections well before the 5 s linger would end
        wait_until(lambda: open_http(mpx.mport) == 0, timeout=2,
                   what="the closed connection to leave the proxy")
    finally:
        s.close()


def test_client_still_sending_after_close_keeps_the_linger(mpx):
    """The counter-case: bytes after the request (here a second, pipelined
    request behind `Connection: close`) mean the client may still be writing:
    the proxy lingers (RFC 9112 9.6), so its answer is not lost to an RST."""
    s = socket.create_connection(("127.0.0.1", mpx.port))
    s.settimeout(10)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: " + BASE_DOMAIN.encode()
                  + b"\r\nConnection: close\r\n\r\nGET /health HTTP/1.1\r\nHost: "
                  + BASE_DOMAIN.encode() + b"\r\n\r\n")
        got = read_until(s, b"\0never")
        assert got.startswith(b"HTTP/1.1 200") and got.count(b"HTTP/1.1") == 1, got
        assert open_http(mpx.mport) == 1  # lingering: waits for our FIN
    finally:
        s.close()
    wait_until(lambda: open_http(mpx.mport) == 0, timeout=5, what="the linger to end")

"""Issue 13 item 2 (REVIEW change 2): one way to end an exchange that cannot
finish, and exactly one access log line for it, whichever way it ends."""
import socket

from helpers import PUB, host, wait_until


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

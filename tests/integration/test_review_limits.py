"""Outside review, issue 9 items 2 and 4: answers piling up under pipelining,
and exchanges that stall after forwarding started.

Memory is read from /proc/PID/status (VmRSS); the bounds are generous against
allocator noise and the sanitizer build, and far below what the reviewed
commit reached (it grew linearly with what the client sent).
"""
import socket
import threading
import time

from helpers import PUB, host, request_bytes, wait_until
from measure import record


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def send_until_blocked(sock, data, seconds):
    """Sends as much of data as the peer takes within `seconds`; returns the
    count. A proxy that stops reading makes the kernel buffers fill and send()
    block: that is the point."""
    sock.setblocking(False)
    sent, deadline = 0, time.monotonic() + seconds
    stalled_since = None
    while sent < len(data) and time.monotonic() < deadline:
        try:
            n = sock.send(data[sent:sent + 65536])
            sent += n
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 1.0:  # the peer stopped taking bytes
                break
            time.sleep(0.01)
    sock.setblocking(True)
    return sent


def read_responses(sock, count, timeout=60):
    """Reads count HTTP responses with Content-Length bodies; returns statuses."""
    sock.settimeout(timeout)
    buf, statuses = b"", []
    while len(statuses) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {len(statuses)} responses"
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        statuses.append(int(lines[0].split()[1]))
        length = 0
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(buf) < length:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed inside response {len(statuses)}"
            buf += chunk
        buf = buf[length:]
    return statuses


# ------------------------------------------------- item 2: pipelining --

def test_pipelined_local_answers_are_bounded(px):
    """200,000 pipelined 404s never read: the reviewed commit grew by ~190 MB."""
    one = request_bytes("GET", "/x", "proxy.test")
    data = one * 200000                                  # ~5 MB of requests
    base = rss_mib(px.proc.pid)
    s = socket.create_connection(("127.0.0.1", px.port))
    try:
        send_until_blocked(s, data, 20)
        grown = rss_mib(px.proc.pid) - base
        record("pipelined_local_answers_unread", requests=200000, rss_growth_mib=grown,
               bound_mib=24)
        assert grown < 24, f"RSS grew {grown:.1f} MiB with pipelined answers unread"
        # and it resumes as the client reads: the first answers are all there
        statuses = read_responses(s, 2000)
        assert set(statuses) == {404}
    finally:
        s.close()
    assert px.health_ok()


def test_pipelined_answers_all_arrive_when_read(px):
    """Pause and resume: every pipelined answer arrives, in order, when the
    client reads while it sends (more than the bound several times over)."""
    n = 6000
    data = b"".join(request_bytes("GET", f"/x{i}", "proxy.test") for i in range(n))
    s = socket.create_connection(("127.0.0.1", px.port))
    sender = threading.Thread(target=s.sendall, args=(data,))
    sender.start()
    try:
        statuses = read_responses(s, n)
    finally:
        sender.join(30)
        s.close()
    assert statuses == [404] * n


def test_pipelined_forwarded_answers_are_bounded(px, runner):
    """Pipelined small upstream responses (4 KiB each) that the client never
    reads stop being fetched once the bound is reached."""
    n = 5000
    data = b"".join(request_bytes("GET", f"/download?n=4096&seed={i % 7}", host(3000, PUB))
                    for i in range(n))
    base = rss_mib(px.proc.pid)
    s = socket.create_connection(("127.0.0.1", px.port))
    try:
        send_until_blocked(s, data, 20)
        # wait until the runner stops receiving requests (the proxy paused)
        last = [-1, time.monotonic()]

        def settled():
            k = len(runner.find("/download"))
            if k != last[0]:
                last[0], last[1] = k, time.monotonic()
                return False
            return time.monotonic() - last[1] > 1.0
        wait_until(settled, timeout=30, what="the runner to stop receiving requests")
        forwarded = last[0]
        grown = rss_mib(px.proc.pid) - base
        record("pipelined_forwarded_answers_unread", requests=n, forwarded=forwarded,
               rss_growth_mib=grown, bound_mib=16)
        assert forwarded < n, "the proxy fetched every answer the client never read"
        assert grown < 16, f"RSS grew {grown:.1f} MiB with forwarded answers unread"
        statuses = read_responses(s, n, timeout=120)
        assert statuses == [200] * n
    finally:
        s.close()


# ------------------------------------ item 4: timeouts after forwarding --

def test_stalled_request_body_times_out(proxy, runner):
    p = proxy(settings={"client_body_timeout": "2"})
    with p.raw(timeout=15) as c:
        c.send(request_bytes("POST", "/upload?tag=stall", host(3000, PUB),
                             headers=[("Content-Length", "1000"),
                                      ("Accept", "application/json")]) + b"0123456789")
        rec = runner.wait_for("/upload?tag=stall")[0]
        t0 = time.monotonic()
        r = c.read_response()
        assert r.status == 408, r
        assert c.is_closed(timeout=10)
        assert time.monotonic() - t0 < 8
    wait_until(lambda: not [x for x in runner.conns() if x["id"] == rec["conn"]][0]["open"],
               timeout=10, what="the runner connection of the stalled upload to close")
    assert "client_body_timeout" in p.log()
    assert p.health_ok()


def test_client_that_never_reads_is_dropped(proxy, runner):
    p = proxy(settings={"send_timeout": "2"})
    s = socket.create_connection(("127.0.0.1", p.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        s.sendall(request_bytes("GET", "/download?n=67108864", host(3000, PUB)))
        rec = runner.wait_for("/download?n=67108864")[0]
        wait_until(lambda: "send_timeout" in p.log(), timeout=20,
                   what="the proxy to drop the client that never reads")
        wait_until(lambda: not [x for x in runner.conns() if x["id"] == rec["conn"]][0]["open"],
                   timeout=10, what="the runner connection to close")
    finally:
        s.close()
    assert p.health_ok()


def test_runner_that_never_reads_the_body_times_out(proxy, runner):
    """The upload stalls on the runner's side: send_timeout bounds the write."""
    p = proxy(settings={"send_timeout": "2"})
    body = b"x" * (64 * 1024 * 1024)
    s = socket.create_connection(("127.0.0.1", p.port))
    try:
        s.sendall(request_bytes("POST", "/no-read?name=nr1", host(3000, PUB),
                                headers=[("Content-Length", str(len(body))),
                                         ("Accept", "application/json")]))
        sent = send_until_blocked(s, body, 30)
        assert sent < len(body)
        s.settimeout(15)
        got = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        assert got.startswith(b"HTTP/1.1 504"), got[:200]
    finally:
        s.close()
        runner.signal("nr1")
    assert p.health_ok()

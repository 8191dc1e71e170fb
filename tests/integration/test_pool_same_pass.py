"""A pooled runner connection that turned bad in the same event-loop pass as the
request that would reuse it (proxy/upstream.c, issue 13): bytes or EOF that the
kernel reported in the same epoll_wait as the client's request must close the
idle connection before the request can take it.

To put both events into one epoll_wait, the test stops the proxy (SIGSTOP)
while it waits, makes the client's request arrive first and the runner's stray
bytes (or FIN) second, checks in /proc/net/tcp that both are queued on the
proxy's sockets, and lets it go on (SIGCONT). Without the MSG_PEEK at take
(proxy/upstream.c socket_quiet), the request takes the bad connection: it gets
the stray bytes as its answer, or (POST, not replayed) a 502."""
import os
import signal
import socket
import threading

from helpers import RUNNER_KEY, host, request_bytes, wait_until

STRAY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"


class App:
    """A direct-mode app: answers 'real:{method}{path}', keeps connections open,
    and on demand writes STRAY to (or closes) its most recent connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, path = lines[0].split(b" ")[:2]
                for ln in lines[1:]:
                    k, _, v = ln.partition(b":")
                    if k.strip().lower() == b"content-length":
                        n = int(v)
                        while len(buf) < n:
                            d = c.recv(65536)
                            if not d:
                                return
                            buf += d
                        buf = buf[n:]
                body = b"real:" + method + path
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            return

    def close(self):
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def _sockets(remote_port):
    """(state, receive-queue bytes) of each IPv4 TCP socket talking to remote_port."""
    out = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == remote_port:
                out.append((fields[3], int(fields[4].split(":")[1], 16)))
    return out


def _queued_to(remote_port):
    return any(q > 0 for _, q in _sockets(remote_port))


def _closing_to(remote_port):
    return any(st == "08" for st, _ in _sockets(remote_port))  # CLOSE_WAIT: FIN received


def _stopped(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def _in_epoll_wait(pid):
    with open(f"/proc/{pid}/syscall") as f:
        nr = f.read().split()[0]
    return nr in ("232", "281", "441")  # epoll_wait, epoll_pwait, epoll_pwait2 (x86-64)


def _same_pass(p, app, c, second_request, then):
    """With the proxy stopped in epoll_wait: the client's next request arrives,
    then then() makes the app's side arrive; both checked queued; go on."""
    pid = p.proc.pid
    wait_until(lambda: _in_epoll_wait(pid), timeout=5, what="proxy idle in epoll_wait")
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: _stopped(pid), timeout=5, what="proxy stopped")
        client_port = c.sock.getsockname()[1]
        c.send(second_request)
        wait_until(lambda: _queued_to(client_port), timeout=5,
                   what="request queued on the proxy's client socket")
        then()
    finally:
        os.kill(pid, signal.SIGCONT)


def _setup(proxy):
    app = App()
    p = proxy(settings={"workers": "1"},
              sandboxes=[f"sandbox dpool runner_url=http://127.0.0.1:9 "
                         f"runner_key={RUNNER_KEY} public=1 direct=1"])
    return app, p, host(app.port, "dpool")


def test_stray_bytes_in_the_same_pass_never_answer_the_request(proxy):
    app, p, h = _setup(proxy)
    try:
        for i in range(3):
            with p.raw(timeout=10) as c:
                c.send(request_bytes("GET", f"/a{i}", h))
                r = c.read_response()
                assert r.status == 200 and r.body == f"real:GET/a{i}".encode(), r.body

                def stray():
                    app.conns[-1].sendall(STRAY)
                    # the proxy's end of that runner connection: remote port = app.port
                    wait_until(lambda: _queued_to(app.port), timeout=5,
                               what="stray bytes queued on the proxy's runner socket")
                _same_pass(p, app, c, request_bytes("GET", f"/b{i}", h), stray)
                r = c.read_response()
                assert r.status == 200, r
                assert r.body == f"real:GET/b{i}".encode(), r.body
    finally:
        app.close()


def test_runner_close_in_the_same_pass_post_not_lost(proxy):
    """EOF from the runner on the idle connection, reported with a POST: the POST
    goes on a fresh connection (a POST on a stale one is not replayed: 502)."""
    app, p, h = _setup(proxy)
    try:
        for i in range(3):
            with p.raw(timeout=10) as c:
                c.send(request_bytes("GET", f"/a{i}", h))
                assert c.read_response().status == 200
                n_before = len(app.conns)

                def close_it():
                    app.conns[-1].shutdown(socket.SHUT_RDWR)
                    wait_until(lambda: _closing_to(app.port), timeout=5,
                               what="runner FIN on the proxy's socket")
                _same_pass(p, app, c, request_bytes("POST", f"/p{i}", h, body=b"once"), close_it)
                r = c.read_response()
                assert r.status == 200, r
                assert r.body == f"real:POST/p{i}".encode(), r.body
                assert len(app.conns) == n_before + 1
    finally:
        app.close()


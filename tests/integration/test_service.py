"""What the packaged service relies on (issue 14): sd_notify(3) readiness,
reload and stop messages for systemd's Type=notify, and SIGUSR1 reopening the
log files for logrotate.

systemd is stood in for by a unix datagram socket given as NOTIFY_SOCKET, with
SO_PASSCRED so each message names its sender: only the process systemd started
(the master with `workers 2`) may speak."""
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile

import pytest

from conftest import CRASH_MARKERS
from helpers import PUB, host, port_is_listening, wait_until


class NotifyListener:
    def __init__(self):
        # sun_path holds 108 bytes: pytest's tmp_path can be longer than that.
        self.dir = tempfile.mkdtemp(prefix="pxn-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)

    def recv(self, timeout=10.0):
        """(sender pid, {key: value}) of the next message."""
        self.sock.settimeout(timeout)
        data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        return pid, fields

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify():
    n = NotifyListener()
    yield n
    n.close()


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_notify_ready_reload_stopping(proxy, notify, workers):
    p = proxy(settings={"workers": workers}, env={"NOTIFY_SOCKET": notify.path}, wait=False)
    pid, msg = notify.recv()
    assert msg == {"READY": "1"}, msg
    assert pid == p.proc.pid  # never a worker
    # READY means serving: the port accepts at once, no retry loop.
    assert port_is_listening(p.port, timeout=1)
    assert p.health_ok()
    if workers == "2":
        assert len(_children(p.proc.pid)) == 2

    os.kill(p.proc.pid, signal.SIGHUP)
    pid, msg = notify.recv()
    assert pid == p.proc.pid and msg.get("RELOADING") == "1", msg
    assert int(msg["MONOTONIC_USEC"]) > 0
    pid, msg = notify.recv()
    assert pid == p.proc.pid and msg == {"READY": "1"}, msg
    assert p.health_ok()

    p.terminate()
    pid, msg = notify.recv()
    assert pid == p.proc.pid and msg == {"STOPPING": "1"}, msg
    assert p.proc.wait(10) == 0


def test_notify_refused_reload_still_ends_with_ready(proxy, notify, tmp_path):
    p = proxy(env={"NOTIFY_SOCKET": notify.path}, wait=False)
    assert notify.recv()[1] == {"READY": "1"}
    with open(p.conf_path, "a") as f:
        f.write("no_such_directive 1\n")
    os.kill(p.proc.pid, signal.SIGHUP)
    assert notify.recv()[1].get("RELOADING") == "1"
    assert notify.recv()[1] == {"READY": "1"}  # the old configuration still serves
    assert p.health_ok()


def test_without_notify_socket_nothing_changes(proxy):
    p = proxy()  # NOTIFY_SOCKET unset: sd_notify() is a no-op
    os.kill(p.proc.pid, signal.SIGHUP)
    wait_until(lambda: "reloaded" in p.log(), timeout=5, what="reload logged")
    assert p.health_ok()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigusr1_reopens_log_files(proxy, runner, tmp_path, workers):
    logs = tmp_path / "logs"
    logs.mkdir()
    access, error = logs / "access.log", logs / "error.log"
    p = proxy(settings={"workers": workers, "access_log": str(access),
                        "error_log": str(error)})
    assert p.request("GET", "/before", host=host(3000, PUB)).status_code == 200
    wait_until(lambda: "/before" in access.read_text(), timeout=5, what="access line")
    assert "serving" in error.read_text()

    # What logrotate does: rename, then signal (postrotate).
    access.rename(logs / "access.log.1")
    error.rename(logs / "error.log.1")
    os.kill(p.proc.pid, signal.SIGUSR1)
    n = int(workers)
    wait_until(lambda: error.exists() and error.read_text().count("log files reopened") == n,
               timeout=5, what=f"{n} reopen line(s) in the new error.log")
    for _ in range(2 * n):  # with 2 workers, either may take a connection
        assert p.request("GET", "/after", host=host(3000, PUB)).status_code == 200
    wait_until(lambda: access.exists() and access.read_text().count("/after") == 2 * n,
               timeout=5, what="new access lines in the new access.log")
    assert "/after" not in (logs / "access.log.1").read_text()
    assert "reopened" not in (logs / "error.log.1").read_text()

    p.terminate()
    assert p.proc.wait(10) == 0
    text = error.read_text() + (logs / "error.log.1").read_text()
    for marker in CRASH_MARKERS:
        assert marker not in text


def test_sigusr1_unopenable_keeps_old_file(proxy, runner, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    access = logs / "access.log"
    p = proxy(settings={"access_log": str(access)})
    access.rename(logs / "access.log.1")
    access.mkdir()  # fopen() fails with EISDIR, even for root
    os.kill(p.proc.pid, signal.SIGUSR1)
    wait_until(lambda: "cannot reopen access_log" in p.log(), timeout=5, what="warning")
    assert p.request("GET", "/kept", host=host(3000, PUB)).status_code == 200
    wait_until(lambda: "/kept" in (logs / "access.log.1").read_text(), timeout=5,
               what="line still in the old file")


def test_error_log_off_is_refused(proxy_bin, tmp_path):
    conf = tmp_path / "p.conf"
    conf.write_text("listen 127.0.0.1:1\nerror_log off\n")
    r = subprocess.run([proxy_bin, "-t", "-c", str(conf)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1 and "p.conf:2" in r.stderr


def test_master_relays_signals_sent_together(proxy, runner, notify, tmp_path):
    """SIGUSR1 and SIGHUP in one burst: the master relays both (one flag per signal)."""
    error = tmp_path / "error.log"
    p = proxy(settings={"workers": "2", "error_log": str(error)},
              env={"NOTIFY_SOCKET": notify.path}, wait=False)
    assert notify.recv()[1] == {"READY": "1"}
    os.kill(p.proc.pid, signal.SIGUSR1)
    os.kill(p.proc.pid, signal.SIGHUP)
    assert notify.recv()[1].get("RELOADING") == "1"
    assert notify.recv()[1] == {"READY": "1"}
    wait_until(lambda: error.read_text().count("log files reopened") == 2, timeout=5,
               what="both workers reopened their logs")
    wait_until(lambda: error.read_text().count("reloaded") == 2, timeout=5,
               what="both workers reloaded")

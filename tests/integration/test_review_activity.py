"""Outside review, issue 9 item 4: an exchange stalled on its client must not
keep its sandbox awake (SPEC 8), while a stream that waits on the runner (an
idle SSE stream) still does. activity_interval 1 makes the refresh tick 2 s."""
import socket
import time

import pytest

from helpers import host, request_bytes, wait_until
from redisfix import *  # noqa: F401,F403
from redisfix import add_sandbox

STALL = "sbx-act-stall"
SSE = "sbx-act-sse"
ZSET = "proxy:last-activity"


@pytest.fixture
def world(rdb, runner):
    add_sandbox(rdb, STALL, runner.url, public=1)
    add_sandbox(rdb, SSE, runner.url, public=1)
    return rdb


def score(db, sid):
    v = db("ZSCORE", ZSET, sid)
    return None if v is None else float(v)


def test_stalled_download_stops_refreshing_activity(rproxy, world, runner):
    px = rproxy(settings={"activity_interval": "1", "send_timeout": "60"})
    stalled = socket.create_connection(("127.0.0.1", px.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sse = px.raw(timeout=30)
    try:
        stalled.sendall(request_bytes("GET", "/download?n=67108864", host(3000, STALL)))
        sse.send(request_bytes("GET", "/sse?name=act-sse", host(3000, SSE)))
        assert sse.read_head()[0] == 200
        wait_until(lambda: score(world, STALL) is not None and score(world, SSE) is not None,
                   timeout=5, what="the first activity of both sandboxes")
        # Let the download fill every buffer and the first tick pass (bytes
        # moved before it); from then on nothing moves.
        time.sleep(3)  # the condition under test: time passing without progress
        stalled_score, sse_score = score(world, STALL), score(world, SSE)
        time.sleep(5)  # two more ticks
        assert score(world, STALL) == stalled_score, "a stalled download kept its sandbox awake"
        assert score(world, SSE) > sse_score, "an idle SSE stream stopped keeping its sandbox awake"
    finally:
        runner.signal("act-sse")
        stalled.close()
        sse.close()

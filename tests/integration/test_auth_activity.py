"""Activity for auto-stop in standalone mode (SPEC 8): ZADD proxy:last-activity,
the X-Daytona-Skip-Last-Activity-Update opt-out, and the 45 s SET NX guard
shared by all proxy processes.

Absence is proven with a marker: activity commands go out on the proxy's one
command link in order, so once a later request's marker sandbox shows up in
the sorted set, an update for an earlier request would have too."""
import time

import pytest

from helpers import host, wait_until
from redisfix import *  # noqa: F401,F403
from redisfix import add_sandbox, cmdstats

S = "sbx-act-1"
P = "sbx-act-priv"
TP = "tok-act-S3CRET"
ZSET = "proxy:last-activity"


@pytest.fixture
def world(rdb, runner):
    add_sandbox(rdb, S, runner.url, public=1)
    add_sandbox(rdb, P, runner.url, auth_token=TP)
    for i in range(6):
        add_sandbox(rdb, f"sbx-act-marker-{i}", runner.url, public=1)
    return rdb


def score(db, sid):
    v = db("ZSCORE", ZSET, sid)
    return None if v is None else float(v)


def marker(px, db, i):
    sid = f"sbx-act-marker-{i}"
    assert px.get("/m", host=host(3000, sid)).status_code == 200
    wait_until(lambda: score(db, sid) is not None, timeout=5, what=f"marker {sid} in {ZSET}")


def test_forwarded_request_records_activity(rproxy, world, runner):
    px = rproxy()
    t0 = time.time()
    assert px.get("/a", host=host(3000, S)).status_code == 200
    wait_until(lambda: score(world, S) is not None, timeout=5, what="activity ZADD")
    assert int(t0) - 1 <= score(world, S) <= time.time() + 1
    ttl = world("TTL", f"proxy:sandbox-last-activity-update:{S}")
    assert 0 < ttl <= 45, ttl


def test_private_request_with_token_records_activity(rproxy, world, runner):
    px = rproxy()
    r = px.get("/a", host=host(3000, P), headers={"X-Daytona-Preview-Token": TP})
    assert r.status_code == 200
    wait_until(lambda: score(world, P) is not None, timeout=5, what="activity ZADD")


def test_skip_header_skips_and_is_not_forwarded(rproxy, world, runner):
    px = rproxy()
    r = px.get("/skip", host=host(3000, S), headers={"X-Daytona-Skip-Last-Activity-Update": "true"})
    assert r.status_code == 200
    rec = runner.requests()[0]
    assert not [k for k, _ in rec["headers"] if k.lower() == "x-daytona-skip-last-activity-update"]
    marker(px, world, 0)
    assert score(world, S) is None
    assert world("EXISTS", f"proxy:sandbox-last-activity-update:{S}") == 0


def test_refused_request_is_not_activity(rproxy, world, runner):
    px = rproxy()
    assert px.get("/x", host=host(3000, P)).status_code == 401
    assert px.get("/x", host=host(3000, P), headers={"X-Daytona-Preview-Token": "no"}).status_code == 401
    marker(px, world, 0)
    assert score(world, P) is None


def test_one_update_per_45_seconds(rproxy, world, runner):
    px = rproxy()
    before = cmdstats(world)
    for i in range(10):
        assert px.get(f"/n{i}", host=host(3000, S)).status_code == 200
    wait_until(lambda: score(world, S) is not None, timeout=5, what="activity ZADD")
    first = score(world, S)
    for i in range(10):
        assert px.get(f"/again{i}", host=host(3000, S)).status_code == 200
    marker(px, world, 1)
    after = cmdstats(world)
    # S once, the marker once
    assert after.get("set", 0) - before.get("set", 0) == 2, (before, after)
    assert after.get("zadd", 0) - before.get("zadd", 0) == 2, (before, after)
    assert score(world, S) == first
    ttl = world("TTL", f"proxy:sandbox-last-activity-update:{S}")
    assert 0 < ttl <= 45, ttl


def test_guard_shared_across_processes(rproxy, world, runner):
    """A second proxy process within 45 s sends its SET NX, loses, and adds no ZADD."""
    p1 = rproxy()
    assert p1.get("/one", host=host(3000, S)).status_code == 200
    wait_until(lambda: score(world, S) is not None, timeout=5, what="activity ZADD")
    first = score(world, S)
    world("ZADD", ZSET, "1", S)      # so a second ZADD would show
    p2 = rproxy()
    before = cmdstats(world)
    assert p2.get("/two", host=host(3000, S)).status_code == 200
    marker(p2, world, 2)
    after = cmdstats(world)
    assert after.get("set", 0) - before.get("set", 0) == 2, (before, after)   # S (lost) + marker
    assert after.get("zadd", 0) - before.get("zadd", 0) == 1, (before, after)  # marker only
    assert score(world, S) == 1.0, (first, score(world, S))


def test_toolbox_request_records_activity(rproxy, world, runner):
    px = rproxy()
    r = px.get(f"/toolbox/{P}/files", headers={"X-Daytona-Preview-Token": TP})
    assert r.status_code == 200
    wait_until(lambda: score(world, P) is not None, timeout=5, what="activity ZADD")

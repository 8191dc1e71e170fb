"""The per-process lookup cache and its invalidation (SPEC 5): preview-token
rotation, runner changes, API-key and custom-domain changes through
PUBLISH proxy:invalidate; expiry after cache_ttl; a warm cache costs no Redis
command; concurrent cold requests share one fetch."""
import threading
import time

import pytest

from helpers import RawConn, host, request_bytes, runner_prefix, wait_until
from redisfix import *  # noqa: F401,F403
from redisfix import (SECOND_RUNNER_KEY, add_api_key, add_sandbox, add_signed_token,
                      api_key_hash, cmdstats, lookup_calls, mint_cookie, poll_latency)

SBX = "sbx-cache-a1"
PUB = "sbx-cache-pub"
OLD = "tok-old-S3CRET-1111"
NEW = "tok-new-S3CRET-2222"
KEY = "apikey-cache-S3CRET-33"
SIGNED = "sgncache9999zzzz8888"


@pytest.fixture
def world(rdb, runner):
    add_sandbox(rdb, SBX, runner.url, auth_token=OLD)
    add_sandbox(rdb, PUB, runner.url, public=1)
    add_api_key(rdb, KEY)
    add_signed_token(rdb, 3000, SIGNED, SBX)
    return rdb


def tok(px, token, sid=SBX, path="/t"):
    return px.get(path, host=host(3000, sid), headers={"X-Daytona-Preview-Token": token}).status_code


# ---------------------------------------------------------------- invalidation --

def test_token_rotation_within_one_second(rproxy, world, runner):
    px = rproxy(cache_ttl=60)      # only the message can explain a fast change
    assert tok(px, OLD) == 200
    assert tok(px, NEW) == 401
    world("HSET", f"sandbox:{SBX}", "auth_token", NEW)
    world("PUBLISH", "proxy:invalidate", f"sandbox:{SBX}")
    latency = poll_latency(lambda: tok(px, OLD) == 401 and tok(px, NEW) == 200, timeout=5)
    print(f"\nROTATION latency (old refused and new accepted after PUBLISH): "
          f"{latency if latency is None else round(latency * 1000, 1)} ms")
    assert latency is not None and latency < 1.0, latency
    for _ in range(5):
        assert tok(px, OLD) == 401 and tok(px, NEW) == 200


def test_token_rotation_without_message_within_cache_ttl(rproxy, world, runner):
    px = rproxy(cache_ttl=2)
    assert tok(px, OLD) == 200
    world("HSET", f"sandbox:{SBX}", "auth_token", NEW)
    t0 = time.monotonic()
    latency = poll_latency(lambda: tok(px, NEW) == 200, timeout=6, interval=0.05)
    assert latency is not None and time.monotonic() - t0 <= 2 + 1.5, latency
    assert tok(px, OLD) == 401


def test_runner_change_within_one_second(rproxy, world, runner, second_runner):
    px = rproxy(cache_ttl=60)
    r = px.get("/who", host=host(3000, SBX), headers={"X-Daytona-Preview-Token": OLD})
    assert r.status_code == 200 and len(runner.requests()) == 1
    world("HSET", f"sandbox:{SBX}", "runner_url", second_runner.url,
          "runner_key", SECOND_RUNNER_KEY)
    world("PUBLISH", "proxy:invalidate", f"sandbox:{SBX}")

    def on_second():
        r = px.get("/who", host=host(3000, SBX), headers={"X-Daytona-Preview-Token": OLD})
        return r.status_code == 200 and bool(second_runner.find("/who"))
    latency = poll_latency(on_second, timeout=5)
    print(f"\nRUNNER CHANGE latency: {latency if latency is None else round(latency * 1000, 1)} ms")
    assert latency is not None and latency < 1.0, latency
    rec = second_runner.find("/who")[0]
    assert rec["target"] == runner_prefix(SBX, 3000) + "/who"
    assert rec["auth_ok"] is True, "the new runner must get its own key"
    n_first = len(runner.requests())
    for _ in range(5):
        assert px.get("/who2", host=host(3000, SBX),
                      headers={"X-Daytona-Preview-Token": OLD}).status_code == 200
    assert len(runner.requests()) == n_first, "requests still reach the old runner"
    assert len(second_runner.find("/who2")) == 5


def test_api_key_revocation_within_one_second(rproxy, world, runner):
    px = rproxy(cache_ttl=60)

    def bearer():
        return px.get("/k", host=host(3000, SBX), headers={"Authorization": f"Bearer {KEY}"}).status_code
    assert bearer() == 200
    world("DEL", f"proxy:api-key:{api_key_hash(KEY)}")
    world("PUBLISH", "proxy:invalidate", f"apikey:{api_key_hash(KEY)}")
    latency = poll_latency(lambda: bearer() == 401, timeout=5)
    print(f"\nAPI KEY revocation latency: {latency if latency is None else round(latency * 1000, 1)} ms")
    assert latency is not None and latency < 1.0, latency


def test_signed_token_deletion_with_message(rproxy, world, runner):
    px = rproxy(cache_ttl=60)
    assert px.get("/", host=host(3000, SIGNED)).status_code == 200
    world("DEL", f"sandbox:signed-preview-url-token:3000:{SIGNED}")
    world("PUBLISH", "proxy:invalidate", f"token:3000:{SIGNED}")
    latency = poll_latency(lambda: px.get("/", host=host(3000, SIGNED)).status_code == 401, 5)
    assert latency is not None and latency < 1.0, latency


def test_custom_domain_change_within_one_second(rproxy, world, runner):
    px = rproxy(cache_ttl=60)
    dom = "app.customer-one.example"
    world("HSET", f"proxy:custom-domain:{dom}", "sandbox", PUB, "port", "3000")
    r = px.get("/d", host=dom)
    assert r.status_code == 200, r.text
    assert runner.requests()[-1]["target"] == runner_prefix(PUB, 3000) + "/d"
    world("HSET", f"proxy:custom-domain:{dom}", "port", "4000")
    world("PUBLISH", "proxy:invalidate", f"domain:{dom}")

    def moved():
        runner.reset()
        ok = px.get("/d", host=dom).status_code == 200
        return ok and runner.requests()[-1]["target"] == runner_prefix(PUB, 4000) + "/d"
    latency = poll_latency(moved, timeout=5)
    assert latency is not None and latency < 1.0, latency


def test_star_message_flushes_everything(rproxy, world, runner):
    px = rproxy(cache_ttl=60)
    assert tok(px, OLD) == 200
    world("HSET", f"sandbox:{SBX}", "auth_token", NEW)
    world("PUBLISH", "proxy:invalidate", "*")
    assert poll_latency(lambda: tok(px, NEW) == 200, timeout=5) is not None
    assert tok(px, OLD) == 401


def test_subscriber_reconnect_flushes_cache(rproxy, world, runner):
    """Messages published while the subscriber was away are lost; on
    (re)subscribing the proxy drops its whole cache instead."""
    px = rproxy(cache_ttl=60)
    assert tok(px, OLD) == 200
    # kill the proxy's subscriber connection; it reconnects (with backoff)
    clients = world("CLIENT", "LIST", "TYPE", "pubsub")
    ids = [part.split("=", 1)[1] for line in clients.splitlines() for part in line.split()
           if part.startswith("id=")]
    assert ids, clients
    world("HSET", f"sandbox:{SBX}", "auth_token", NEW)     # no message: a "missed" change
    for cid in ids:
        world("CLIENT", "KILL", "ID", cid)
    latency = poll_latency(lambda: tok(px, NEW) == 200, timeout=8, interval=0.05)
    assert latency is not None, "cache not flushed after the subscriber reconnected"
    assert latency < 5, latency      # far below cache_ttl=60
    assert tok(px, OLD) == 401


# ----------------------------------------------------------------- warm cache --

def activity_done(db, *sids):
    return all(db("ZSCORE", "proxy:last-activity", s) is not None for s in sids)


def test_warm_cache_makes_no_redis_calls(rproxy, world, runner):
    px = rproxy(cache_ttl=60)
    cookie = mint_cookie(SBX, SBX)
    good = [
        dict(host=host(3000, SBX), headers={"X-Daytona-Preview-Token": OLD}),
        dict(host=host(3000, SBX), headers={"Authorization": f"Bearer {KEY}"}),
        dict(host=host(3000, SBX), headers={"Cookie": f"daytona-sandbox-auth-{SBX}={cookie}"}),
        dict(host=host(3000, PUB), headers={}),
        dict(host=host(3000, SIGNED), headers={}),
    ]
    r = px.get("/", host=host(3000, SIGNED))
    signed_cookie = r.cookies.get(f"daytona-sandbox-auth-{SIGNED}")
    good.append(dict(host=host(3000, SIGNED),
                     headers={"Cookie": f"daytona-sandbox-auth-{SIGNED}={signed_cookie}"}))
    bad = [dict(host=host(3000, SBX), headers={"X-Daytona-Preview-Token": "wrong"})]
    for _ in range(2):   # warm every entry
        for kw in good:
            assert px.get("/warm", **kw).status_code == 200, kw
        for kw in bad:
            assert px.get("/warm", **kw).status_code == 401
    wait_until(lambda: activity_done(world, SBX, PUB), timeout=5, what="activity updates")
    before = cmdstats(world)
    t0 = time.monotonic()
    for i in range(50):
        kw = (good + bad)[i % (len(good) + len(bad))]
        assert px.get(f"/hot{i}", **kw).status_code in (200, 401)
    elapsed = time.monotonic() - t0
    after = cmdstats(world)
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in after
            if k not in ("info",) and after.get(k, 0) != before.get(k, 0)}
    assert elapsed < 4.5, f"too slow to be meaningful against the 5 s negative TTL: {elapsed:.2f}s"
    assert diff == {}, f"warm requests made Redis calls: {diff}"


def _fire_concurrently(port, reqs):
    conns = [RawConn(port, timeout=10) for _ in reqs]
    barrier = threading.Barrier(len(reqs))
    out = [None] * len(reqs)
    times = [None] * len(reqs)

    def go(i):
        barrier.wait()
        t0 = time.monotonic()
        conns[i].send(reqs[i])
        out[i] = conns[i].read_response().status
        times[i] = time.monotonic() - t0
    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    for c in conns:
        c.close()
    return out, times


def test_concurrent_cold_requests_share_one_fetch(rproxy, world, runner):
    px = rproxy(cache_ttl=60)
    add_sandbox(world, "sbx-cold-1", runner.url, auth_token=OLD)
    before = lookup_calls(world)
    req = request_bytes("GET", "/cold", host(3000, "sbx-cold-1"),
                        headers=[("X-Daytona-Preview-Token", OLD)])
    statuses, _ = _fire_concurrently(px.port, [req] * 20)
    after = lookup_calls(world)
    assert statuses == [200] * 20, statuses
    assert after["hgetall"] - before["hgetall"] in (1, 2), (before, after)
    assert after["get"] == before["get"] and after["exists"] == before["exists"]


def test_single_flight_while_redis_is_slow(rproxy, world, runner, redis_server):
    """Redis blocked for 0.5 s (DEBUG SLEEP): 20 concurrent cold requests all wait
    on one in-flight HGETALL instead of sending 20."""
    px = rproxy(cache_ttl=60)
    add_sandbox(world, "sbx-cold-2", runner.url, auth_token=OLD)
    before = lookup_calls(world)
    blocker = redis_server.client()
    try:
        blocker.send("DEBUG", "SLEEP", "0.5")
        req = request_bytes("GET", "/cold", host(3000, "sbx-cold-2"),
                            headers=[("X-Daytona-Preview-Token", OLD)])
        statuses, times = _fire_concurrently(px.port, [req] * 20)
        assert blocker.read() == "OK"
    finally:
        blocker.close()
    after = lookup_calls(world)
    assert statuses == [200] * 20, statuses
    waited = sum(1 for t in times if t > 0.2)
    assert after["hgetall"] - before["hgetall"] == 1, (before, after, sorted(times))
    assert waited >= 10, f"requests did not overlap the slow fetch: {sorted(times)}"


def test_known_sandbox_positive_entry_expires_after_cache_ttl(rproxy, world, runner):
    px = rproxy(cache_ttl=1)
    assert tok(px, OLD) == 200
    before = lookup_calls(world)["hgetall"]
    # after the TTL the next request refetches exactly once
    wait_until(lambda: (tok(px, OLD) == 200 and lookup_calls(world)["hgetall"] > before),
               timeout=5, interval=0.1, what="refetch after cache_ttl")
    assert lookup_calls(world)["hgetall"] - before <= 2

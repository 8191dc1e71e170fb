"""Edges of the Redis-backed auth chain: negative-cache entries cleared by
messages, an invalidation racing an in-flight fetch, empty or malformed
records and credentials, duplicated credential headers, deleted sandboxes."""
import threading
import time

import pytest

from helpers import RawConn, host, request_bytes
from redisfix import *  # noqa: F401,F403
from redisfix import (add_api_key, add_sandbox, add_signed_token, api_key_hash, mint_cookie,
                      poll_latency)

SBX = "sbx-edge-a1"
TOK = "tok-edge-S3CRET-1"
NEW = "tok-edge-S3CRET-2"


@pytest.fixture
def world(rdb, runner):
    add_sandbox(rdb, SBX, runner.url, auth_token=TOK)
    return rdb


def tok(px, token, sid=SBX, port=3000):
    return px.get("/e", host=host(port, sid), headers={"X-Daytona-Preview-Token": token}).status_code


# ------------------------------------------------------------ negative cache --

def test_new_sandbox_visible_at_once_after_message(rproxy, world, runner):
    px = rproxy(cache_ttl=60)
    assert tok(px, "t-new-S3CRET", sid="sbx-edge-new") == 401      # cached as unknown
    add_sandbox(world, "sbx-edge-new", runner.url, auth_token="t-new-S3CRET")
    world("PUBLISH", "proxy:invalidate", "sandbox:sbx-edge-new")
    latency = poll_latency(lambda: tok(px, "t-new-S3CRET", sid="sbx-edge-new") == 200, 5)
    assert latency is not None and latency < 1.0, latency


def test_new_sandbox_visible_without_message_after_negative_ttl(rproxy, world, runner):
    px = rproxy(cache_ttl=60)
    assert tok(px, "t-new-S3CRET", sid="sbx-edge-new2") == 401
    add_sandbox(world, "sbx-edge-new2", runner.url, auth_token="t-new-S3CRET")
    latency = poll_latency(lambda: tok(px, "t-new-S3CRET", sid="sbx-edge-new2") == 200, 10,
                           interval=0.1)
    assert latency is not None and latency <= 6.5, latency   # SPEC 4: invalid results ~5 s


def test_signed_token_issued_after_a_miss(rproxy, world, runner):
    px = rproxy(cache_ttl=60)
    label = "sgnedgelate00001111"
    assert px.get("/", host=host(3000, label)).status_code == 401
    add_signed_token(world, 3000, label, SBX)
    world("PUBLISH", "proxy:invalidate", f"token:3000:{label}")
    latency = poll_latency(lambda: px.get("/", host=host(3000, label)).status_code == 200, 5)
    assert latency is not None and latency < 1.0, latency


def test_deleted_sandbox_refuses_its_cookie(rproxy, world, runner):
    px = rproxy(cache_ttl=60)
    cookie = mint_cookie(SBX, SBX)
    hdr = {"Cookie": f"daytona-sandbox-auth-{SBX}={cookie}"}
    assert px.get("/", host=host(3000, SBX), headers=hdr).status_code == 200
    world("DEL", f"sandbox:{SBX}")
    world("PUBLISH", "proxy:invalidate", f"sandbox:{SBX}")
    latency = poll_latency(
        lambda: px.get("/", host=host(3000, SBX), headers=hdr).status_code == 401, 5)
    assert latency is not None and latency < 1.0, latency


def test_invalidation_racing_an_inflight_fetch(rproxy, world, runner, redis_server):
    """The fetch is in flight (Redis blocked) when the token rotates: whatever the
    order in which reply and message arrive, the old record must not stay cached
    for cache_ttl (60 s)."""
    px = rproxy(cache_ttl=60)
    blocker = redis_server.client()
    writer = redis_server.client()
    try:
        blocker.send("DEBUG", "SLEEP", "0.4")
        conn = RawConn(px.port, timeout=10)
        conn.send(request_bytes("GET", "/race", host(3000, SBX),
                                headers=[("X-Daytona-Preview-Token", TOK)]))
        # queued behind the proxy's HGETALL (or before it; both orders are fine)
        writer.send("HSET", f"sandbox:{SBX}", "auth_token", NEW)
        writer.send("PUBLISH", "proxy:invalidate", f"sandbox:{SBX}")
        first = conn.read_response().status
        conn.close()
        assert blocker.read() == "OK"
        writer.read()
        writer.read()
    finally:
        blocker.close()
        writer.close()
    assert first in (200, 401)
    latency = poll_latency(lambda: tok(px, NEW) == 200 and tok(px, TOK) == 401, 3)
    assert latency is not None and latency < 1.0, f"stale record kept after the race ({latency})"


# ----------------------------------------------------- empty / malformed input --

def test_sandbox_without_auth_token_refuses_empty_tokens(rproxy, world, runner):
    world("HDEL", f"sandbox:{SBX}", "auth_token")
    px = rproxy()
    r = px.get("/", host=host(3000, SBX), headers={"X-Daytona-Preview-Token": ""})
    assert r.status_code == 401
    c = RawConn(px.port)
    try:
        c.send(request_bytes("GET", "/?DAYTONA_SANDBOX_AUTH_KEY=", host(3000, SBX)))
        assert c.read_response().status == 401
        c.send(request_bytes("GET", "/?DAYTONA_SANDBOX_AUTH_KEY", host(3000, SBX)))
        assert c.read_response().status == 401
    finally:
        c.close()
    assert runner.requests() == []


def test_empty_auth_token_field_is_not_a_password(rproxy, world, runner):
    world("HSET", f"sandbox:{SBX}", "auth_token", "")
    px = rproxy()
    assert px.get("/", host=host(3000, SBX), headers={"X-Daytona-Preview-Token": ""}).status_code == 401
    r = RawConn(px.port)
    try:
        r.send(request_bytes("GET", "/?DAYTONA_SANDBOX_AUTH_KEY=&x=1", host(3000, SBX)))
        assert r.read_response().status == 401
    finally:
        r.close()
    assert runner.requests() == []


@pytest.mark.parametrize("sandbox_org,key_org", [(None, ""), ("", ""), (None, "org-x")])
def test_api_key_needs_a_real_org_match(rproxy, world, runner, sandbox_org, key_org):
    if sandbox_org is None:
        world("HDEL", f"sandbox:{SBX}", "org")
    else:
        world("HSET", f"sandbox:{SBX}", "org", sandbox_org)
    add_api_key(world, "apikey-edge-S3CRET", org=key_org)
    px = rproxy()
    r = px.get("/", host=host(3000, SBX), headers={"Authorization": "Bearer apikey-edge-S3CRET"})
    assert r.status_code == 401, (sandbox_org, key_org, r.status_code)
    assert runner.requests() == []


def test_api_key_without_org_field_refused(rproxy, world, runner):
    world("HSET", f"proxy:api-key:{api_key_hash('apikey-noorg-S3CRET')}", "expires", "0")
    px = rproxy()
    r = px.get("/", host=host(3000, SBX), headers={"Authorization": "Bearer apikey-noorg-S3CRET"})
    assert r.status_code == 401


@pytest.mark.parametrize("expires", ["garbage", "", "-5", "1e99", " 12", "12abc"])
def test_api_key_with_malformed_expiry_fails_closed(rproxy, world, runner, expires):
    """An `expires` that is not a unix time must not mean "never expires"."""
    add_api_key(world, "apikey-exp-S3CRET", expires=expires)
    px = rproxy()
    r = px.get("/", host=host(3000, SBX), headers={"Authorization": "Bearer apikey-exp-S3CRET"})
    assert r.status_code == 401, (expires, r.status_code)


def test_api_key_expiring_while_cached(rproxy, world, runner):
    """Expiry is checked at use, not only when the key was fetched."""
    exp = int(time.time()) + 2
    add_api_key(world, "apikey-soon-S3CRET", expires=exp)
    px = rproxy(cache_ttl=60)

    def st():
        return px.get("/", host=host(3000, SBX),
                      headers={"Authorization": "Bearer apikey-soon-S3CRET"}).status_code
    assert st() == 200
    latency = poll_latency(lambda: st() == 401, timeout=6, interval=0.1)
    assert latency is not None, "expired API key still accepted from the cache"
    assert time.time() <= exp + 1.5


def test_bearer_scheme_and_whitespace(rproxy, world, runner):
    add_api_key(world, "apikey-ws-S3CRET")
    px = rproxy()
    ok = px.get("/", host=host(3000, SBX), headers={"Authorization": "Bearer apikey-ws-S3CRET"})
    assert ok.status_code == 200
    for value in ("Basic apikey-ws-S3CRET", "Bearerapikey-ws-S3CRET", "Bearer ", "Bearer"):
        r = px.get("/", host=host(3000, SBX), headers={"Authorization": value})
        assert r.status_code == 401, value


def test_duplicate_preview_token_headers_never_forwarded(rproxy, world, runner):
    px = rproxy()
    for order in ((TOK, "bad"), ("bad", TOK)):
        runner.reset()
        c = RawConn(px.port)
        try:
            c.send(request_bytes("GET", "/dup", host(3000, SBX), headers=[
                ("X-Daytona-Preview-Token", order[0]), ("X-Daytona-Preview-Token", order[1])]))
            st = c.read_response().status
        finally:
            c.close()
        assert st in (200, 401), st
        for rec in runner.requests():
            assert not [k for k, _ in rec["headers"] if k.lower() == "x-daytona-preview-token"]


def test_duplicate_query_keys_all_removed(rproxy, world, runner):
    px = rproxy()
    c = RawConn(px.port)
    try:
        c.send(request_bytes(
            "GET", f"/dq?DAYTONA_SANDBOX_AUTH_KEY={TOK}&a=1&DAYTONA_SANDBOX_AUTH_KEY=second-S3CRET",
            host(3000, SBX)))
        st = c.read_response().status
    finally:
        c.close()
    assert st == 200
    target = runner.requests()[0]["target"]
    assert "DAYTONA_SANDBOX_AUTH_KEY" not in target and "S3CRET" not in target, target
    assert target.endswith("/dq?a=1"), target


def test_concurrent_rotation_under_load(rproxy, world, runner):
    """Requests keep flowing while the token rotates: before the change only the
    old token works, after it only the new one; never both for long."""
    px = rproxy(cache_ttl=60)
    stop = threading.Event()
    seen = []

    def load():
        while not stop.is_set():
            seen.append((time.monotonic(), tok(px, TOK), tok(px, NEW)))
    t = threading.Thread(target=load)
    t.start()
    try:
        poll_latency(lambda: len(seen) >= 5, 5)
        world("HSET", f"sandbox:{SBX}", "auth_token", NEW)
        t_pub = time.monotonic()
        world("PUBLISH", "proxy:invalidate", f"sandbox:{SBX}")
        poll_latency(lambda: any(ts > t_pub + 0.3 for ts, _, _ in seen), 5)
    finally:
        stop.set()
        t.join(10)
    for ts, old, new in seen:
        # old is sampled before new, so (200, 200) can straddle the switch; (401, 401) cannot
        assert (old, new) in ((200, 401), (401, 200), (200, 200)), (ts - t_pub, old, new)
        if ts > t_pub + 1.0:
            assert (old, new) == (401, 200), (ts - t_pub, old, new)

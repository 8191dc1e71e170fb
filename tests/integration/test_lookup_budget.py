"""The cache-miss budget (issue 9 item 6, auth/lookup.c): only lookups that find
nothing are budgeted, per client address with a per-process ceiling. A client
hammering random labels gets 429 itself but cannot lock other clients out, and
many existing sandboxes requested at once are all served."""
import secrets
import socket
import threading
import time

from helpers import RawConn, ConnectionClosed, host, request_bytes
from redisfix import *  # noqa: F401,F403
from redisfix import add_sandbox, lookup_calls, poll_latency


class SrcConn(RawConn):
    """RawConn whose client socket is bound to a chosen loopback source address,
    so the proxy sees another client."""

    def __init__(self, port, source, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.sock.settimeout(timeout)
        self.buf = b""


def blast(port, reqs, source="127.0.0.1", depth=64, stop=None):
    """reqs pipelined over keep-alive connections from source; the statuses."""
    statuses = []
    conn = SrcConn(port, source)
    i = 0
    fails = 0
    try:
        while i < len(reqs) and not (stop is not None and stop.is_set()):
            batch = reqs[i:i + depth]
            got = 0
            try:
                conn.send(b"".join(batch))
                for _ in batch:
                    r = conn.read_response()
                    statuses.append(r.status)
                    got += 1
                    if (r.header("connection") or "").lower() == "close":
                        raise ConnectionClosed("close")
            except (ConnectionClosed, BrokenPipeError, ConnectionResetError):
                conn.close()
                conn = SrcConn(port, source)
                fails += 1
                assert fails < 200, "the proxy keeps closing connections"
            i += got
    finally:
        conn.close()
    return statuses


def counts(statuses):
    return {s: statuses.count(s) for s in set(statuses)}


def test_random_label_flood_from_one_client_does_not_lock_out_another(rproxy, rdb, runner):
    """127.0.0.1 requests random labels as fast as it can (old binary: the one
    process-wide bucket runs dry and everyone's uncached lookups get 429); public
    sandboxes first requested by 127.0.0.2 meanwhile are all served 200."""
    publics = [f"sbx-budget-pub-{i}" for i in range(20)]
    for sid in publics:
        add_sandbox(rdb, sid, runner.url, public=1)
    px = rproxy(cache_ttl=60)

    stop = threading.Event()
    flood = []
    errors = []

    def hammer():
        try:
            while not stop.is_set():
                reqs = [request_bytes("GET", "/x", host(3000, "rnd" + secrets.token_hex(8)))
                        for _ in range(256)]
                flood.extend(blast(px.port, reqs, stop=stop))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        # The flood is on once its client is being refused.
        assert poll_latency(lambda: 429 in flood, 10, 0.01) is not None, counts(flood)
        other = []
        for sid in publics:          # each one uncached: a Redis lookup during the flood
            with SrcConn(px.port, "127.0.0.2") as c:
                c.send(request_bytes("GET", "/p", host(3000, sid)))
                other.append(c.read_response().status)
            time.sleep(0.05)         # spread over ~1 s of flood (pacing, not readiness)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    got = counts(flood)
    print(f"\nFLOOD from 127.0.0.1: {len(flood)} requests, statuses {got}; "
          f"127.0.0.2: {counts(other)}")
    assert set(got) <= {401, 429}, got
    assert 429 in got, got
    assert other == [200] * len(publics), other
    assert px.health_ok()


def test_many_existing_sandboxes_are_never_refused(rproxy, rdb, runner):
    """2,000 public sandboxes, each requested once as fast as the client can:
    every answer is 200, none 429 (old binary: 200 misses per second per process,
    so most of them were refused), and each costs one Redis lookup."""
    n = 2000
    sids = [f"sbx-many-{i:05d}" for i in range(n)]
    for sid in sids:
        add_sandbox(rdb, sid, runner.url, public=1)
    px = rproxy(cache_ttl=300)
    reqs = [request_bytes("GET", "/m", host(3000, sid)) for sid in sids]
    parts = [reqs[i::8] for i in range(8)]
    results = [[] for _ in parts]
    errors = []

    def run(i):
        try:
            results[i] = blast(px.port, parts[i])
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    before = lookup_calls(rdb)
    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - t0
    after = lookup_calls(rdb)
    assert not errors, errors
    statuses = [s for r in results for s in r]
    used = sum(after.values()) - sum(before.values())
    print(f"\nMANY SANDBOXES: {n} in {elapsed:.2f} s, statuses {counts(statuses)}, "
          f"Redis lookups {used}")
    assert len(statuses) == n
    assert counts(statuses) == {200: n}, counts(statuses)
    assert used <= n + 10, used
    # and they stay cached: a second round costs no lookup at all
    before = lookup_calls(rdb)
    again = blast(px.port, reqs[:200])
    assert again == [200] * 200
    assert lookup_calls(rdb) == before


def test_label_that_cannot_be_a_token_costs_one_lookup(rproxy, rdb, runner):
    """A label longer than any token (proxyctl: 1-128 of [A-Za-z0-9_-]) is looked
    up as a sandbox only; the signed-token GET is skipped. A 16-character
    Daytona-style label still gets both lookups."""
    px = rproxy(cache_ttl=60)
    long_label = "l" + secrets.token_hex(70)          # 141 characters
    before = lookup_calls(rdb)
    assert px.get("/", host=host(3000, long_label)).status_code == 401
    after = lookup_calls(rdb)
    assert after["hgetall"] - before["hgetall"] == 1, (before, after)
    assert after["get"] == before["get"], (before, after)

    short = secrets.token_hex(8)                      # like a Daytona token
    before = after
    assert px.get("/", host=host(3000, short)).status_code == 401
    after = lookup_calls(rdb)
    assert after["hgetall"] - before["hgetall"] == 1, (before, after)
    assert after["get"] - before["get"] == 1, (before, after)

"""API mode, first slice (issue 10): the Daytona API decides public (C2), preview
tokens (C4), signed preview hosts (C5) and the runner (C6); answers are cached
in process with single flight; an API that is down or refuses the proxy's key
gives 503, never a pass; a sandbox the API no longer knows gives 404.

The API is a small stub here with Daytona's answer shapes (DAYTONA-API.md §2):
booleans and strings as raw text/html, objects as JSON, errors as JSON with
statusCode. It counts calls per path so the tests can assert cache behaviour.
"""
import json
import socket
import threading
import time
from urllib.parse import unquote

import pytest

from helpers import RUNNER_KEY, host, raw_exchange, request_bytes, wait_until
from redisfix import redis_server, rdb  # noqa: F401 (fixtures)
from tlsfix import pki  # noqa: F401 (fixture)

PROXY_KEY = "pk-S3CRET-9"


def err(status, message):
    return status, "application/json", json.dumps(
        {"path": "/x", "timestamp": "2026-12-04T00:00:00Z", "statusCode": status,
         "error": "E", "message": message})


class API:
    def __init__(self, runner_url, tls=None):
        self.runner_url = runner_url
        self.tls = None
        if tls is not None:                     # (cert, key): serve https
            import ssl
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*tls)
        self.public = {"apub"}
        self.tokens = {"apriv": "tok-1"}
        self.signed = {("3000", "abc123"): "apriv"}
        self.runners = {"apub", "apriv"}   # sandboxes with a runner
        self.calls = []
        self.xff = []
        self.down = False
        self.delay = 0.0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def count(self, needle):
        with self.lock:
            return sum(1 for c in self.calls if needle in c)

    def route(self, method, target, headers):
        parts = [unquote(p) for p in target.split("?")[0].split("/")]
        if parts[1:3] == ["api", "preview"] and len(parts) == 5 and parts[4] == "access":
            self.xff.append(headers.get("x-forwarded-for"))
            user = headers.get("authorization", "")[len("Bearer "):]
            if user == "throttled":
                return err(429, "Too many failed attempts")
            if user not in ("jwt-alice", "key-bob"):
                return err(401, "Invalid credentials")
            return (200, "text/html; charset=utf-8", "true") \
                if user == "jwt-alice" and parts[3] == "apriv" else err(404, "not a member")
        if headers.get("authorization") != f"Bearer {PROXY_KEY}":
            return err(401, "Unauthorized")
        # ['', 'api', 'preview', label, 'public']
        if parts[1:3] == ["api", "preview"] and len(parts) == 5 and parts[4] == "public":
            return (200, "text/html; charset=utf-8", "true") if parts[3] in self.public \
                else err(404, "not public")
        if parts[1:3] == ["api", "preview"] and len(parts) == 6 and parts[4] == "validate":
            ok = self.tokens.get(parts[3]) == parts[5]
            return (200, "text/html; charset=utf-8", "true") if ok else err(404, "bad token")
        if parts[1:3] == ["api", "preview"] and len(parts) == 6 and parts[5] == "sandbox-id":
            sid = self.signed.get((parts[4], parts[3]))
            return (200, "text/html; charset=utf-8", sid) if sid else \
                err(403, "Invalid or expired token")
        if parts[1:4] == ["api", "runners", "by-sandbox"] and len(parts) == 5:
            if parts[4] not in self.runners:
                return err(404, f"Sandbox with ID {parts[4]} not found")
            return 200, "application/json", json.dumps({
                "id": "r1", "proxyUrl": self.runner_url, "apiKey": RUNNER_KEY,
                "apiUrl": self.runner_url, "runnerClass": "container", "state": "ready"})
        if method == "POST" and parts[1:3] == ["api", "sandbox"] and len(parts) == 5 \
                and parts[4] == "last-activity":
            return 201, "text/plain", ""
        if target == "/api/config":
            return 200, "application/json", json.dumps(
                {"version": "0.190.0", "oidc": {"issuer": "http://idp/", "clientId": "c",
                                                "audience": "a"}})
        return err(404, "no route")

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            if self.tls is not None:
                c = self.tls.wrap_socket(c, server_side=True)
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (l.partition(":") for l in lines[1:])}
                with self.lock:
                    self.calls.append(target)
                if self.down:
                    status, ctype, body = 503, "text/html", "<html>down</html>"
                else:
                    if self.delay:
                        time.sleep(self.delay)
                    status, ctype, body = self.route(method, target, headers)
                body = body.encode()
                c.sendall(b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                          % (status, ctype.encode(), len(body)) + body)
        except OSError:
            return
        finally:
            c.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def api(runner):
    a = API(runner.url)
    yield a
    a.close()


def api_proxy(proxy, api, **settings):
    s = {"api_url": f"http://127.0.0.1:{api.port}/api", "api_key": PROXY_KEY,
         "cookie_secret": "cookie-secret-for-tests"}
    s.update(settings)
    return proxy(settings=s, default_sandboxes_too=False)


def get(p, label, path="/", port=3000, headers=(), timeout=5.0):
    return raw_exchange(p.port, request_bytes("GET", path, host(port, label),
                                              headers=[("Accept", "application/json"),
                                                       *headers]), timeout=timeout)


def test_public_sandbox_goes_to_its_runner_and_is_cached(proxy, api, runner):
    p = api_proxy(proxy, api)
    for i in range(5):
        r = get(p, "apub", f"/page{i}")
        assert r is not None and r.status == 200, r
    rec = runner.wait_for("/sandboxes/apub/toolbox/proxy/3000/page0")[0]
    assert rec["auth_ok"] is True                      # the runner key from C6
    assert api.count("/api/preview/apub/public") == 1  # cached after the first
    assert api.count("/api/runners/by-sandbox/apub") == 1


def test_private_sandbox_needs_a_valid_token(proxy, api, runner):
    p = api_proxy(proxy, api)
    r = get(p, "apriv", "/nope")
    assert r.status == 401, r
    r = get(p, "apriv", "/bad", headers=[("X-Daytona-Preview-Token", "wrong")])
    assert r.status == 401, r
    r = get(p, "apriv", "/good", headers=[("X-Daytona-Preview-Token", "tok-1")])
    assert r.status == 200, r
    rec = runner.wait_for("/good")[0]
    assert not any(k.lower() == "x-daytona-preview-token" for k, _ in rec["headers"])
    # the query parameter also works, and leaves a cookie that works alone
    r = get(p, "apriv", "/q?DAYTONA_SANDBOX_AUTH_KEY=tok-1&x=1")
    assert r.status == 200, r
    cookie = r.header("set-cookie").split(";")[0]
    assert runner.wait_for("/q?x=1")
    r = get(p, "apriv", "/with-cookie", headers=[("Cookie", cookie)])
    assert r.status == 200, r
    # reserved ports need credentials even for a public sandbox
    r = get(p, "apub", "/term", port=22222)
    assert r.status == 401, r


def test_signed_preview_host(proxy, api, runner):
    p = api_proxy(proxy, api)
    r = get(p, "abc123", "/signed")
    assert r.status == 200, r
    assert runner.wait_for("/sandboxes/apriv/toolbox/proxy/3000/signed")
    assert r.header("set-cookie").startswith("daytona-sandbox-auth-abc123=")
    r = get(p, "abc123", "/other-port", port=3001)
    assert r.status == 401, r                           # the token names port 3000 only
    # revoked: the next request without the cookie is refused at once (C5 is never kept,
    # or a revoked URL would go on minting hour-long cookies)
    del api.signed[("3000", "abc123")]
    r = get(p, "abc123", "/after-revoke")
    assert r.status == 401, r
    assert r.header("set-cookie") is None


def test_cold_burst_makes_one_call_per_key(proxy, api, runner):
    p = api_proxy(proxy, api)
    api.delay = 0.3
    results = []

    def one(i):
        results.append(get(p, "apub", f"/burst{i}"))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status for r in results] == [200] * 40
    assert api.count("/api/preview/apub/public") == 1
    assert api.count("/api/runners/by-sandbox/apub") == 1


def test_api_down_is_503_never_a_pass(proxy, api, runner):
    p = api_proxy(proxy, api, api_timeout=2)
    api.down = True
    r = get(p, "apriv", "/down", headers=[("X-Daytona-Preview-Token", "tok-1")])
    assert r.status == 503, r
    assert r.header("retry-after") == "5"
    assert runner.find("/down") == []
    assert api.count("/api/preview/apriv/public") == 3   # §3: HTML 503 is retried
    api.down = False
    r = get(p, "apriv", "/up", headers=[("X-Daytona-Preview-Token", "tok-1")])
    assert r.status == 200, r                            # errors were not cached


def test_wrong_proxy_key_is_503_and_one_log_line(proxy, api, runner):
    p = api_proxy(proxy, api, api_key="not-the-key")
    for i in range(3):
        r = get(p, f"apub{i}" if i else "apub", f"/k{i}")
        assert r.status == 503, r
    assert runner.requests() == []
    lines = [l for l in p.log_lines() if "refused the proxy's key" in l]
    assert len(lines) == 1, lines
    assert "not-the-key" not in p.log()


def test_sandbox_gone_for_an_authenticated_caller_is_404(proxy, api, runner):
    p = api_proxy(proxy, api)
    api.runners.discard("apriv")
    r = get(p, "apriv", "/gone", headers=[("X-Daytona-Preview-Token", "tok-1")])
    assert r.status == 404, r
    assert r.json()["code"] == "SANDBOX_NOT_FOUND"
    r = get(p, "abc123", "/gone-signed")                # a valid signed token, sandbox gone
    assert r.status == 404, r


def test_hostile_labels_and_tokens_are_escaped(proxy, api, runner):
    p = api_proxy(proxy, api)
    r = get(p, "apriv", "/x", headers=[("X-Daytona-Preview-Token", "a/../../b%2f?c=d")])
    assert r.status == 401, r
    with api.lock:
        asked = [c for c in api.calls if "/validate/" in c]
    assert asked and asked[-1].endswith("/validate/a%2F..%2F..%2Fb%252f%3Fc%3Dd"), asked


def test_bearer_access_asks_the_api_with_the_users_token(proxy, api, runner):
    p = api_proxy(proxy, api)
    r = get(p, "apriv", "/member", headers=[("Authorization", "Bearer jwt-alice")])
    assert r.status == 200, r
    rec = runner.wait_for("/member")[0]
    assert not any(k.lower() == "authorization" for k, _ in rec["headers"])  # consumed
    assert api.xff == ["127.0.0.1"]
    r = get(p, "apriv", "/member2", headers=[("Authorization", "Bearer jwt-alice")])
    assert r.status == 200 and api.count("/access") == 1                  # cached
    for i, (user, status) in enumerate((("key-bob", 401), ("bad", 401), ("throttled", 429))):
        r = get(p, "apriv", f"/u{i}", headers=[("Authorization", f"Bearer {user}")])
        assert r.status == status, (user, r)
    assert "jwt-alice" not in p.log() and "key-bob" not in p.log()


# ------------------------------------------------------------- activity (C7) --

def test_activity_goes_to_the_api_once_per_interval(proxy, api, runner):
    p = api_proxy(proxy, api)
    for i in range(3):
        assert get(p, "apub", f"/act{i}").status == 200
    wait_until(lambda: api.count("/api/sandbox/apub/last-activity") == 1, timeout=5,
               what="one C7 for apub")
    # the opt-out is honoured and the header does not reach the sandbox
    r = get(p, "apriv", "/skip", headers=[("X-Daytona-Preview-Token", "tok-1"),
                                          ("X-Daytona-Skip-Last-Activity-Update", "true")])
    assert r.status == 200
    rec = runner.wait_for("/skip")[0]
    assert not any(k.lower().startswith("x-daytona-skip") for k, _ in rec["headers"])
    # a marker request after it: C7s go out in order, so none for apriv means none was sent
    assert get(p, "apub", "/marker", headers=[]).status == 200
    assert api.count("/api/sandbox/apriv/last-activity") == 0


def test_activity_is_deduplicated_across_proxies_with_redis(proxy, api, runner, redis_server,
                                                            rdb):
    from redisfix import _subscribed
    ps = []
    for _ in range(2):
        ps.append(api_proxy(proxy, api, redis=f"127.0.0.1:{redis_server.port}"))
    wait_until(lambda: _subscribed(redis_server.port), timeout=10, what="subscribers")
    for i in range(4):
        assert get(ps[i % 2], "apub", f"/fleet{i}").status == 200
    wait_until(lambda: rdb("GET", "proxy:sandbox-last-activity-update:apub") is not None,
               timeout=5, what="Daytona's activity key")
    assert rdb("GET", "proxy:sandbox-last-activity-update:apub") == '{"value":true}'
    assert 0 < int(rdb("TTL", "proxy:sandbox-last-activity-update:apub")) <= 45
    wait_until(lambda: api.count("/api/sandbox/apub/last-activity") >= 1, timeout=5,
               what="the C7")
    time.sleep(0.5)  # a negative check needs its window: a second C7 would be out by now
    assert api.count("/api/sandbox/apub/last-activity") == 1


# ------------------------------------ Daytona's Redis keys (§4): rolling swap --

def test_serves_what_the_go_proxy_cached_without_asking_the_api(proxy, api, runner,
                                                                redis_server, rdb):
    # written exactly as the Go proxy writes them (SET key {"value": V} EX ttl)
    rdb("SET", "proxy:sandbox-public:gocached", '{"value":false}', "EX", "3600")
    rdb("SET", "proxy:sandbox-auth-key-valid:gocached:tok-go", '{"value":true}', "EX", "120")
    rdb("SET", "proxy:sandbox-runner-info:gocached",
        json.dumps({"value": {"apiUrl": runner.url, "apiKey": RUNNER_KEY}}), "EX", "120")
    p = api_proxy(proxy, api, redis=f"127.0.0.1:{redis_server.port}")
    r = get(p, "gocached", "/from-go-cache", headers=[("X-Daytona-Preview-Token", "tok-go")])
    assert r.status == 200, r
    assert runner.wait_for("/sandboxes/gocached/toolbox/proxy/3000/from-go-cache")
    with api.lock:  # (activity, C7, is never cached: it may go out)
        assert not [c for c in api.calls if "gocached" in c and "last-activity" not in c], \
            api.calls
    # an unreadable cached value is a miss: the API decides
    rdb("SET", "proxy:sandbox-public:apub", "garbage{", "EX", "3600")
    r = get(p, "apub", "/after-garbage")
    assert r.status == 200 and api.count("/api/preview/apub/public") == 1


def test_writes_daytona_keys_in_the_go_proxys_shape(proxy, api, runner, redis_server, rdb):
    p = api_proxy(proxy, api, redis=f"127.0.0.1:{redis_server.port}")
    assert get(p, "apriv", "/w", headers=[("X-Daytona-Preview-Token", "tok-1")]).status == 200
    assert get(p, "apriv", "/w2", headers=[("X-Daytona-Preview-Token", "nope")]).status == 401
    wait_until(lambda: rdb("GET", "proxy:sandbox-auth-key-valid:apriv:nope") is not None,
               timeout=5, what="the negative token key")
    assert rdb("GET", "proxy:sandbox-public:apriv") == '{"value":false}'
    assert 3500 < int(rdb("TTL", "proxy:sandbox-public:apriv")) <= 3600
    assert rdb("GET", "proxy:sandbox-auth-key-valid:apriv:tok-1") == '{"value":true}'
    assert 100 < int(rdb("TTL", "proxy:sandbox-auth-key-valid:apriv:tok-1")) <= 120
    assert rdb("GET", "proxy:sandbox-auth-key-valid:apriv:nope") == '{"value":false}'
    assert 0 < int(rdb("TTL", "proxy:sandbox-auth-key-valid:apriv:nope")) <= 5
    info = json.loads(rdb("GET", "proxy:sandbox-runner-info:apriv"))
    assert info == {"value": {"apiUrl": runner.url, "apiKey": RUNNER_KEY}}
    assert 100 < int(rdb("TTL", "proxy:sandbox-runner-info:apriv")) <= 120
    # a second proxy sharing the Redis answers from those keys, without the API
    before = len(api.calls)
    p2 = api_proxy(proxy, api, redis=f"127.0.0.1:{redis_server.port}")
    assert get(p2, "apriv", "/w3", headers=[("X-Daytona-Preview-Token", "tok-1")]).status == 200
    with api.lock:
        assert [c for c in api.calls[before:]
                if "last-activity" not in c and c != "/api/config"] == []


def test_redis_down_in_api_mode_is_a_cache_miss(proxy, api, runner, dead_port):
    p = api_proxy(proxy, api, redis=f"127.0.0.1:{dead_port}")
    r = get(p, "apub", "/no-redis")
    assert r.status == 200, r
    assert api.count("/api/preview/apub/public") == 1


def test_thousand_concurrent_cold_requests_make_one_call_per_key(proxy, api, runner):
    """Issue 10: 1,000 concurrent cold requests for one sandbox make one API call
    per lookup (C2 and C6), however long the API takes."""
    import asyncio
    p = api_proxy(proxy, api, max_connections="5000")
    api.delay = 1.0
    req = request_bytes("GET", "/cold", host(3000, "apub"))

    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(req)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
        writer.close()
        return int(line.split()[1])

    async def burst():
        return await asyncio.gather(*(one() for _ in range(1000)))
    statuses = asyncio.run(burst())
    assert statuses.count(200) == 1000, {s: statuses.count(s) for s in set(statuses)}
    assert api.count("/api/preview/apub/public") == 1
    assert api.count("/api/runners/by-sandbox/apub") == 1


def test_https_api_is_verified(proxy, runner, pki):
    """https:// API URLs go through the same verified TLS as https runners."""
    good = API(runner.url, tls=pki.certs["runner"])
    evil = API(runner.url, tls=pki.certs["runner_evil"])
    try:
        p = proxy(settings={"api_url": f"https://127.0.0.1:{good.port}/api", "api_key": PROXY_KEY,
                            "upstream_ca": pki.ca_file, "cookie_secret": "c"},
                  default_sandboxes_too=False)
        assert get(p, "apub", "/over-tls").status == 200
        assert good.count("/api/preview/apub/public") == 1
        p2 = proxy(settings={"api_url": f"https://127.0.0.1:{evil.port}/api",
                             "api_key": PROXY_KEY, "upstream_ca": pki.ca_file, "cookie_secret": "c"},
                   default_sandboxes_too=False)
        r = get(p2, "apub", "/untrusted", timeout=10)
        assert r.status == 503, r
        assert evil.count("/api/") == 0       # no request was sent over the untrusted link
        assert runner.find("/untrusted") == []
    finally:
        good.close()
        evil.close()

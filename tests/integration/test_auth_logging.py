"""Secrets never reach the proxy's stderr (SPEC 11): after a run that exercises
every authentication method, success and failure, revocation and a Redis
outage, the access log and the other log lines contain no preview token, API
key, cookie value or MAC, signed-token label, runner key or cookie secret."""
import re


from helpers import RUNNER_KEY, host, raw_exchange, request_bytes, wait_until
from redisfix import *  # noqa: F401,F403
from redisfix import (COOKIE_SECRET, SECOND_RUNNER_KEY, add_api_key, add_sandbox,
                      add_signed_token, mint_cookie)

PRIV = "sbx-log-priv"
PUB = "sbx-log-pub"
TOKEN = "tok-log-S3CRET-q1w2e3"
PUB_TOKEN = "tok-logpub-S3CRET-z9"
KEY = "apikey-log-S3CRET-r4t5"
BAD_KEY = "apikey-bad-S3CRET-y6u7"
BAD_TOKEN = "tok-bad-S3CRET-i8o9"
SIGNED = "sgnlogsecret0a1b2c3d"
SIGNED2 = "sgnlogsecret4e5f6a7b"
SIGNED_UNKNOWN = "sgnlogsecret8c9d0e1f"


def test_no_secret_in_logs(rproxy, rdb, runner, second_runner, redis_server):
    add_sandbox(rdb, PRIV, runner.url, auth_token=TOKEN)
    add_sandbox(rdb, PUB, second_runner.url, auth_token=PUB_TOKEN, public=1,
                runner_key=SECOND_RUNNER_KEY)
    add_api_key(rdb, KEY)
    add_signed_token(rdb, 3000, SIGNED, PRIV)
    add_signed_token(rdb, 3000, SIGNED2, PRIV)
    px = rproxy(settings={"log_level": "debug"})
    cookies = []
    results = []

    def get(path, h, headers=None):
        r = px.get(path, host=h, headers=headers or {})
        results.append((path, r.status_code))
        return r

    # 4.1 bearer: good, unknown; public sandbox with an app Authorization
    get("/b1", host(3000, PRIV), {"Authorization": f"Bearer {KEY}"})
    get("/b2", host(3000, PRIV), {"Authorization": f"Bearer {BAD_KEY}"})
    get("/b3", host(3000, PUB), {"Authorization": f"Bearer {BAD_KEY}"})
    # 4.2 header token: good, bad; reserved port of the public sandbox
    get("/t1", host(3000, PRIV), {"X-Daytona-Preview-Token": TOKEN})
    get("/t2", host(3000, PRIV), {"X-Daytona-Preview-Token": BAD_TOKEN})
    get("/t3", host(22222, PUB), {"X-Daytona-Preview-Token": PUB_TOKEN})
    # 4.3 query key: good (sets a cookie), bad
    r = raw_exchange(px.port, request_bytes(
        "GET", f"/q1?x=1&DAYTONA_SANDBOX_AUTH_KEY={TOKEN}&y=2", host(3000, PRIV)))
    results.append(("/q1", r.status))
    cookies += [v.split(";")[0].split("=", 1)[1] for v in r.header_all("Set-Cookie")]
    r = raw_exchange(px.port, request_bytes(
        "GET", f"/q2?DAYTONA_SANDBOX_AUTH_KEY={BAD_TOKEN}", host(3000, PRIV)))
    results.append(("/q2", r.status))
    # 4.4 cookie on the sandbox host: good, tampered
    own = mint_cookie(PRIV, PRIV)
    cookies.append(own)
    get("/c1", host(3000, PRIV), {"Cookie": f"daytona-sandbox-auth-{PRIV}={own}"})
    get("/c2", host(3000, PRIV), {"Cookie": f"daytona-sandbox-auth-{PRIV}={own[:-2]}xx"})
    # 4.5 signed hosts: good, wrong port, unknown token, cookie reuse, revocation
    r = get("/s1", host(3000, SIGNED))
    cookies.append(r.cookies.get(f"daytona-sandbox-auth-{SIGNED}"))
    r = get("/s1b", host(3000, SIGNED2))
    cookies.append(r.cookies.get(f"daytona-sandbox-auth-{SIGNED2}"))
    get("/s2", host(3001, SIGNED))
    get("/s3", host(3000, SIGNED_UNKNOWN))
    get("/s4", host(3000, SIGNED), {"Cookie": f"daytona-sandbox-auth-{SIGNED}={cookies[-2]}"})
    rdb("DEL", f"sandbox:signed-preview-url-token:3000:{SIGNED}")
    rdb("SET", f"sandbox:signed-preview-url-revoked:{SIGNED}", "1", "EX", "3600")
    rdb("PUBLISH", "proxy:invalidate", f"token:3000:{SIGNED}")
    wait_until(lambda: get("/s5", host(3000, SIGNED),
                           {"Cookie": f"daytona-sandbox-auth-{SIGNED}={cookies[-2]}"}
                           ).status_code == 401, timeout=5, what="revoked cookie refused")
    # toolbox
    get(f"/toolbox/{PRIV}/files", "proxy.test", {"X-Daytona-Preview-Token": TOKEN})
    get(f"/toolbox/{PRIV}/files", "proxy.test", {"X-Daytona-Preview-Token": BAD_TOKEN})
    # Redis outage: failures on uncached lookups, then back
    redis_server.kill()
    rdb.close()
    get("/d1", host(3000, SIGNED2), {"Cookie": f"daytona-sandbox-auth-{SIGNED2}={cookies[-1]}"})
    get("/d2", host(3000, "sgnlogsecretdown0000"))
    get("/d3", host(3000, "sbx-uncached"), {"Authorization": f"Bearer {KEY}"})
    redis_server.start()
    wait_until(lambda: px.get("/up", host=host(3000, PUB)).status_code == 200, timeout=15,
               what="proxy back on Redis")

    statuses = dict(results)
    assert statuses["/b1"] == 200 and statuses["/t1"] == 200 and statuses["/q1"] == 200
    assert statuses["/c1"] == 200 and statuses["/s1"] == 200 and statuses["/s4"] == 200
    assert statuses["/b2"] == 401 and statuses["/s2"] == 401 and statuses["/d2"] == 503, results
    assert all(cookies), cookies

    px.stop()       # flush every buffered line
    log = px.log()
    assert re.search(r"ACCESS .* status=200", log), log[-2000:]
    n_access = len(re.findall(r" ACCESS ", log))
    assert n_access >= len(results), (n_access, len(results))

    secrets = {
        "preview token": TOKEN, "public preview token": PUB_TOKEN, "wrong token": BAD_TOKEN,
        "api key": KEY, "unknown api key": BAD_KEY,
        "signed label": SIGNED, "signed label 2": SIGNED2, "unknown signed label": SIGNED_UNKNOWN,
        "signed label during outage": "sgnlogsecretdown0000",
        "runner key": RUNNER_KEY, "second runner key": SECOND_RUNNER_KEY,
        "cookie secret": COOKIE_SECRET,
    }
    for i, c in enumerate(cookies):
        secrets[f"cookie value {i}"] = c
        secrets[f"cookie mac {i}"] = c.rsplit(".", 1)[1]
    leaks = {name: value for name, value in secrets.items() if value in log}
    lines = [ln for ln in log.splitlines() if any(v in ln for v in leaks.values())]
    assert not leaks, f"secrets in the proxy log: {leaks}\n" + "\n".join(lines[:20])
    assert "S3CRET" not in log, [ln for ln in log.splitlines() if "S3CRET" in ln][:10]
    assert "sgnlogsecret" not in log


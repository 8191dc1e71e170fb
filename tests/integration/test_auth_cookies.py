"""Auth cookies minted from signed preview tokens (SPEC 4.4, 4.5): reuse after the
token expired, tampering, expiry, label binding, and revocation latency."""
import time

import pytest

from helpers import host, runner_prefix
from redisfix import *  # noqa: F401,F403
from redisfix import (add_sandbox, add_signed_token, cookie_mac, mint_cookie, poll_latency)

SBX = "sbx-cookie-a1"
SBX2 = "sbx-cookie-b2"
TOKEN = "sgnaaaa1111bbbb2222cccc"
TOKEN2 = "sgndddd3333eeee4444ffff"
NAME = f"daytona-sandbox-auth-{TOKEN}"


@pytest.fixture
def world(rdb, runner):
    add_sandbox(rdb, SBX, runner.url, auth_token="tok-cookie-S3CRET-1")
    add_sandbox(rdb, SBX2, runner.url, auth_token="tok-cookie-S3CRET-2")
    add_signed_token(rdb, 3000, TOKEN, SBX, ttl=300)
    add_signed_token(rdb, 3000, TOKEN2, SBX, ttl=300)
    return rdb


@pytest.fixture
def px(rproxy, world):
    return rproxy()


def issued_cookie(px, token=TOKEN, port=3000):
    r = px.get("/", host=host(port, token))
    assert r.status_code == 200, r.text
    v = r.cookies.get(f"daytona-sandbox-auth-{token}")
    assert v, r.headers
    return v


def with_cookie(px, value, token=TOKEN, port=3000, path="/a", name=None):
    name = name or f"daytona-sandbox-auth-{token}"
    return px.get(path, host=host(port, token), headers={"Cookie": f"{name}={value}"})


def test_cookie_reused_after_token_key_gone(px, runner, world):
    value = issued_cookie(px)
    world("DEL", f"sandbox:signed-preview-url-token:3000:{TOKEN}")   # natural expiry
    world("PUBLISH", "proxy:invalidate", "*")                         # and no cached copy
    # the token alone is now refused ...
    assert poll_latency(lambda: px.get("/", host=host(3000, TOKEN)).status_code == 401, 3) is not None
    # ... but the page's cookie keeps working, with no further Set-Cookie
    runner.reset()
    r = with_cookie(px, value, path="/asset.js")
    assert r.status_code == 200, r.text
    assert runner.requests()[0]["target"] == runner_prefix(SBX, 3000) + "/asset.js"
    assert "daytona-sandbox-auth" not in r.headers.get("Set-Cookie", "")
    assert all("daytona-sandbox-auth" not in v for k, v in runner.requests()[0]["headers"]
               if k.lower() == "cookie")


def test_issued_cookie_matches_spec_mac(px, world):
    value = issued_cookie(px)
    v1, sid, exp, mac = value.split(".")
    assert v1 == "v1" and sid == SBX
    assert mac == cookie_mac(TOKEN, SBX, exp)


def flip(ch):
    return "A" if ch != "A" else "B"


@pytest.mark.parametrize("how", ["mac_first", "mac_last", "mac_mid", "id", "id_other_sandbox",
                                 "expiry_plus_one", "expiry_far", "version", "mac_truncated",
                                 "mac_extended", "empty"])
def test_tampered_cookie_refused(px, runner, world, how):
    value = issued_cookie(px)
    world("DEL", f"sandbox:signed-preview-url-token:3000:{TOKEN}")
    world("PUBLISH", "proxy:invalidate", "*")
    v1, sid, exp, mac = value.split(".")
    m = len(mac) // 2
    bad = {
        "mac_first": f"{v1}.{sid}.{exp}.{flip(mac[0])}{mac[1:]}",
        "mac_last": f"{v1}.{sid}.{exp}.{mac[:-1]}{flip(mac[-1])}",
        "mac_mid": f"{v1}.{sid}.{exp}.{mac[:m]}{flip(mac[m])}{mac[m + 1:]}",
        "id": f"{v1}.{sid}x.{exp}.{mac}",
        "id_other_sandbox": f"{v1}.{SBX2}.{exp}.{mac}",
        "expiry_plus_one": f"{v1}.{sid}.{int(exp) + 1}.{mac}",
        "expiry_far": f"{v1}.{sid}.{int(exp) + 10 ** 6}.{mac}",
        "version": f"v2.{sid}.{exp}.{mac}",
        "mac_truncated": f"{v1}.{sid}.{exp}.{mac[:-1]}",
        "mac_extended": f"{v1}.{sid}.{exp}.{mac}A",
        "empty": "",
    }[how]
    # sanity: the untouched value still works
    assert with_cookie(px, value).status_code == 200
    runner.reset()
    r = with_cookie(px, bad)
    assert r.status_code == 401, (how, bad, r.status_code, r.text)
    assert runner.requests() == []


def test_expired_cookie_refused(px, runner, world):
    now = int(time.time())
    good = mint_cookie(TOKEN, SBX, exp=now + 600)
    assert with_cookie(px, good).status_code == 200
    runner.reset()
    world("DEL", f"sandbox:signed-preview-url-token:3000:{TOKEN}")
    world("PUBLISH", "proxy:invalidate", "*")
    for exp in (now - 5, now - 3600, 1):
        r = with_cookie(px, mint_cookie(TOKEN, SBX, exp=exp))
        assert r.status_code == 401, (exp, r.text)
    # also on a sandbox-ID label
    r = px.get("/", host=host(3000, SBX),
               headers={"Cookie": f"daytona-sandbox-auth-{SBX}={mint_cookie(SBX, SBX, exp=now - 5)}"})
    assert r.status_code == 401
    assert runner.requests() == []


def test_cookie_bound_to_its_label(px, runner, world):
    """Both tokens name the same sandbox, yet TOKEN's cookie does not open TOKEN2's
    host, under either name, nor the sandbox's own ID host."""
    value = issued_cookie(px, TOKEN)
    for t in (TOKEN, TOKEN2):
        world("DEL", f"sandbox:signed-preview-url-token:3000:{t}")
    world("PUBLISH", "proxy:invalidate", "*")
    runner.reset()
    assert with_cookie(px, value, token=TOKEN2).status_code == 401
    assert with_cookie(px, value, token=TOKEN2, name=NAME).status_code == 401
    r = px.get("/", host=host(3000, SBX), headers={"Cookie": f"daytona-sandbox-auth-{SBX}={value}"})
    assert r.status_code == 401
    r = px.get("/", host=host(3000, SBX), headers={"Cookie": f"{NAME}={value}"})
    assert r.status_code == 401
    assert runner.requests() == []
    assert with_cookie(px, value).status_code == 200


def test_revocation_refuses_cookie_within_one_second(px, runner, world):
    value = issued_cookie(px)
    # warm every cache the cookie path uses (revocation marker, sandbox record)
    for _ in range(3):
        assert with_cookie(px, value).status_code == 200
    world("DEL", f"sandbox:signed-preview-url-token:3000:{TOKEN}")
    world("SET", f"sandbox:signed-preview-url-revoked:{TOKEN}", "1", "EX", "3600")
    t0 = time.monotonic()
    world("PUBLISH", "proxy:invalidate", f"token:3000:{TOKEN}")
    latency = poll_latency(lambda: with_cookie(px, value).status_code == 401, timeout=5)
    print(f"\nREVOCATION latency (cookie refused after PUBLISH): "
          f"{latency if latency is None else round(latency * 1000, 1)} ms")
    assert latency is not None, "revoked cookie still accepted after 5 s"
    assert latency < 1.0, f"revocation took {latency:.3f} s"
    # it stays refused, and the token itself is refused too
    assert with_cookie(px, value).status_code == 401
    assert px.get("/", host=host(3000, TOKEN)).status_code == 401
    # other tokens of the same sandbox are unaffected
    assert issued_cookie(px, TOKEN2)
    assert time.monotonic() - t0 < 10


def test_revocation_marker_alone_refuses_a_fresh_proxy(rproxy, runner, world):
    """A proxy that never cached anything honours an existing marker."""
    value = mint_cookie(TOKEN, SBX)
    world("SET", f"sandbox:signed-preview-url-revoked:{TOKEN}", "1", "EX", "3600")
    world("DEL", f"sandbox:signed-preview-url-token:3000:{TOKEN}")
    p = rproxy()
    assert with_cookie(p, value).status_code == 401
    assert runner.requests() == []


def test_token_cookie_is_bound_to_its_port(px, runner, world):
    """A token-label cookie carries the port in its MAC (commit 9304fe7): the same
    value is refused on the token's other ports, and a MAC over the message
    without the port (the SPEC 4.5 formula as written) is refused too."""
    now = int(time.time()) + 600
    for t in (TOKEN,):
        world("DEL", f"sandbox:signed-preview-url-token:3000:{t}")
    world("PUBLISH", "proxy:invalidate", "*")
    bound = mint_cookie(TOKEN, SBX, exp=now, port=3000)
    assert with_cookie(px, bound).status_code == 200
    runner.reset()
    for port in (3001, 22222, 2280, 33333):
        assert with_cookie(px, bound, port=port).status_code == 401, port
    import base64
    import hashlib
    import hmac
    from redisfix import COOKIE_SECRET
    msg = f"v1|{NAME}|{SBX}|{now}".encode()
    unbound = base64.urlsafe_b64encode(hmac.new(COOKIE_SECRET.encode(), msg, hashlib.sha256)
                                       .digest()).rstrip(b"=").decode()
    for port in (3000, 22222):
        assert with_cookie(px, f"v1.{SBX}.{now}.{unbound}", port=port).status_code == 401, port
    assert runner.requests() == []

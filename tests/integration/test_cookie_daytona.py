"""Daytona's auth cookie (issue 10 item 4, DAYTONA-API.md §6 "Cookie encoding"):
sessions survive a swap with the Go proxy. The reference encoder below is written
from the spec (gorilla/securecookie v1.1.2 with a gob string, written through gin),
not from the proxy's code; it reproduces the document's test vector first.

Both formats are always read; `cookie_format` picks the one written. A Daytona
cookie names no port, so for a signed-token label it is refused on the reserved
ports 22222/2280/33333 (our v1 cookie is port-bound there instead)."""
import base64
import hashlib
import hmac
import re
import time
from urllib.parse import unquote

import pytest

from helpers import PRIV, PRIV_TOKEN, PUB, UUID_SBX, UUID_TOKEN, host, runner_prefix
from redisfix import *  # noqa: F401,F403
from redisfix import add_sandbox, add_signed_token, mint_cookie

SECRET = "cookie-secret-daytona-S3CRET-0c1"
COOKIE = f"daytona-sandbox-auth-{PRIV}"


# ------------------------------------------------------ reference (from §6) --

def gob_uint(n):
    if n < 128:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([256 - len(b)]) + b


def gob_string(s):
    rest = b"\x0c\x00" + gob_uint(len(s)) + s
    return gob_uint(len(rest)) + rest


def gorilla_encode(secret, name, value, ts=None, escape=True):
    """What Daytona's Go proxy puts on the wire for cookie name = value."""
    ts = int(time.time()) if ts is None else ts
    v = base64.urlsafe_b64encode(gob_string(value.encode()))
    mac = hmac.new(secret.encode(), f"{name}|{ts}|".encode() + v, hashlib.sha256).digest()
    out = base64.urlsafe_b64encode(f"{ts}|".encode() + v + b"|" + mac).decode()
    return out.replace("=", "%3D") if escape else out


def gorilla_decode(secret, name, wire, now=None, max_age=3600):
    """Go's reading side: gin's QueryUnescape, then securecookie.Decode. Returns
    the string, or raises ValueError."""
    now = int(time.time()) if now is None else now
    val = unquote(wire)
    if len(val) > 4096:
        raise ValueError("too long")
    b = base64.urlsafe_b64decode(val)
    parts = b.split(b"|", 2)
    if len(parts) != 3:
        raise ValueError("parts")
    msg = name.encode() + b"|" + b[:len(b) - len(parts[2]) - 1]
    if not hmac.compare_digest(hmac.new(secret.encode(), msg, hashlib.sha256).digest(), parts[2]):
        raise ValueError("mac")
    if int(parts[0]) < now - max_age:
        raise ValueError("expired")
    g = base64.urlsafe_b64decode(parts[1])
    if g[0] != len(g) - 1 or g[1:3] != b"\x0c\x00" or g[3] != len(g) - 4:
        raise ValueError("gob")
    return g[4:].decode()


def test_reference_reproduces_the_vector():
    want = "MTc4MTIzNDU2N3xCZ3dBQTNOaU1RPT18KmcuNc_oDru7h-IETWpg0ZZxHp5qyX-yglbiAQbDFpI="
    got = gorilla_encode("super_secret_key", "daytona-sandbox-auth-sb1", "sb1", 1781234567,
                         escape=False)
    assert got == want
    assert gorilla_decode("super_secret_key", "daytona-sandbox-auth-sb1", want, now=1781234567) == "sb1"


# --------------------------------------------------------------- helpers --

def set_cookie_value(resp, name=COOKIE):
    """The value exactly as the proxy wrote it (requests' jar may re-quote)."""
    for k, v in resp.raw.headers.items():
        if k.lower() == "set-cookie":
            m = re.match(rf"\s*{re.escape(name)}=([^;]*)", v)
            if m:
                return m.group(1), v
    return None, None


def with_cookie(px, value, label=PRIV, port=3000, name=None, path="/a"):
    name = name or f"daytona-sandbox-auth-{label}"
    return px.get(path, host=host(port, label), headers={"Cookie": f"{name}={value}"})


@pytest.fixture
def mk(proxy):
    def make(fmt=None, **settings):
        s = {"cookie_secret": SECRET}
        if fmt is not None:
            s["cookie_format"] = fmt
        s.update(settings)
        return proxy(settings=s)
    return make


# ------------------------------------------------------------- in memory --

@pytest.mark.parametrize("fmt", ["daytona", "v1", None])
@pytest.mark.parametrize("escaped", [True, False])
def test_gorilla_cookie_opens_private_sandbox(mk, runner, fmt, escaped):
    px = mk(fmt)
    assert px.get("/a", host=host(3000, PRIV)).status_code == 401
    runner.reset()
    r = with_cookie(px, gorilla_encode(SECRET, COOKIE, PRIV, escape=escaped))
    assert r.status_code == 200, r.text
    reqs = runner.requests()
    assert reqs[0]["target"] == runner_prefix(PRIV, 3000) + "/a"
    # the proxy's own cookie is not forwarded to the sandbox
    assert all("daytona-sandbox-auth" not in v for k, v in reqs[0]["headers"]
               if k.lower() == "cookie")
    assert "daytona-sandbox-auth" not in r.headers.get("Set-Cookie", "")
    # a sandbox-ID label is not port-bound, in Daytona's format as in ours
    r = with_cookie(px, gorilla_encode(SECRET, COOKIE, PRIV), port=22222)
    assert r.status_code == 200, r.text


def test_minted_daytona_cookie_verifies_under_reference(mk, runner):
    px = mk("daytona")
    t0 = int(time.time())
    r = px.get(f"/?DAYTONA_SANDBOX_AUTH_KEY={PRIV_TOKEN}", host=host(3000, PRIV))
    assert r.status_code == 200, r.text
    value, line = set_cookie_value(r)
    assert value, r.headers
    assert "=" not in value                              # escaped as gin does (if padded)
    assert "Max-Age=3600" in line and "HttpOnly" in line and "Path=/" in line
    assert gorilla_decode(SECRET, COOKIE, value) == PRIV
    ts = int(base64.urlsafe_b64decode(unquote(value)).split(b"|")[0])
    assert t0 - 2 <= ts <= int(time.time()) + 2          # issue time, not expiry
    with pytest.raises(ValueError):
        gorilla_decode("another secret", COOKIE, value)
    with pytest.raises(ValueError):
        gorilla_decode(SECRET, f"daytona-sandbox-auth-{PUB}", value)
    # and the proxy takes its own cookie back, raw or escaped
    runner.reset()
    assert with_cookie(px, value).status_code == 200
    assert with_cookie(px, unquote(value)).status_code == 200


def test_minted_padded_value_is_escaped(mk, runner):
    """A 36-character ID pads the value with "==", written "%3D%3D" as gin does.
    (UUID_SBX is public: port 22222 makes it ask for credentials.)"""
    px = mk("daytona")
    name = f"daytona-sandbox-auth-{UUID_SBX}"
    r = px.get(f"/?DAYTONA_SANDBOX_AUTH_KEY={UUID_TOKEN}", host=host(22222, UUID_SBX))
    assert r.status_code == 200, r.text
    value, _ = set_cookie_value(r, name)
    assert value.endswith("%3D%3D") and "=" not in value, value
    assert value == gorilla_encode(SECRET, name, UUID_SBX,
                                   ts=int(base64.urlsafe_b64decode(unquote(value)).split(b"|")[0]))
    assert gorilla_decode(SECRET, name, value) == UUID_SBX
    runner.reset()
    assert with_cookie(px, value, label=UUID_SBX, port=22222).status_code == 200
    assert with_cookie(px, unquote(value), label=UUID_SBX, port=22222).status_code == 200


def test_default_format_in_standalone_mode_is_v1(mk):
    px = mk(None)
    r = px.get(f"/?DAYTONA_SANDBOX_AUTH_KEY={PRIV_TOKEN}", host=host(3000, PRIV))
    value, _ = set_cookie_value(r)
    assert value and value.startswith(f"v1.{PRIV}."), value


def test_each_format_accepts_the_other(mk, runner):
    now = int(time.time())
    v1 = mint_cookie(PRIV, PRIV, exp=now + 600, secret=SECRET)
    day = gorilla_encode(SECRET, COOKIE, PRIV)
    for fmt in ("v1", "daytona"):
        px = mk(fmt)
        r = px.get(f"/?DAYTONA_SANDBOX_AUTH_KEY={PRIV_TOKEN}", host=host(3000, PRIV))
        minted, _ = set_cookie_value(r)
        assert minted.startswith("v1.") == (fmt == "v1"), (fmt, minted)
        for value in (v1, day, minted):
            assert with_cookie(px, value).status_code == 200, (fmt, value)


def flip(ch):
    return "A" if ch != "A" else "B"


def test_tampered_expired_or_foreign_daytona_cookie_refused(mk, runner):
    px = mk("daytona")
    now = int(time.time())
    good = gorilla_encode(SECRET, COOKIE, PRIV, escape=False)
    assert with_cookie(px, good).status_code == 200
    body = good.rstrip("=")
    bad = {
        "first": flip(good[0]) + good[1:],
        "middle": good[:40] + flip(good[40]) + good[41:],
        "last_data": body[:-1] + flip(body[-1]) + good[len(body):],
        "pad_added": good + "=",
        "pad_block_added": good + "AA==",
        "truncated": good[:-8],
        "extended": good[:-1] + "AAAA",
        "expired": gorilla_encode(SECRET, COOKIE, PRIV, ts=now - 3601),
        "expired_long_ago": gorilla_encode(SECRET, COOKIE, PRIV, ts=1),
        "future": gorilla_encode(SECRET, COOKIE, PRIV, ts=now + 3600),
        "other_secret": gorilla_encode("not the secret", COOKIE, PRIV),
        "other_sandbox_name": gorilla_encode(SECRET, f"daytona-sandbox-auth-{PUB}", PRIV),
        "too_long": "A" * 4097,
        "empty": "",
    }
    runner.reset()
    for how, value in bad.items():
        r = with_cookie(px, value)
        assert r.status_code == 401, (how, value, r.status_code, r.text)
    assert runner.requests() == []
    # an hour minus a little is still fine
    assert with_cookie(px, gorilla_encode(SECRET, COOKIE, PRIV, ts=now - 3590)).status_code == 200


@pytest.mark.parametrize("value", ["gorilla", "V1", "", "daytona v1"])
def test_directive_rejects_bad_values(proxy, value):
    p = proxy(settings={"cookie_format": value or '""'}, wait=False)
    rc = p.proc.wait(10)
    assert rc != 0
    assert "cookie_format" in p.log(), p.log()


# ---------------------------------------------- signed-token labels (Redis) --

SBX = "sbx-daycookie-1"
TOKEN = "sgnday1111aaaa2222"
TNAME = f"daytona-sandbox-auth-{TOKEN}"


@pytest.fixture
def world(rdb, runner):
    add_sandbox(rdb, SBX, runner.url)
    for port in (3000, 22222):
        add_signed_token(rdb, port, TOKEN, SBX, ttl=300)
    return rdb


def test_token_label_cookie_minted_and_scoped(rproxy, runner, world):
    from redisfix import COOKIE_SECRET
    px = rproxy(settings={"cookie_format": "daytona"})
    r = px.get("/", host=host(3000, TOKEN))
    assert r.status_code == 200, r.text
    value, _ = set_cookie_value(r, TNAME)
    assert gorilla_decode(COOKIE_SECRET, TNAME, value) == SBX
    # on a reserved port the port-bound v1 is minted instead
    r = px.get("/", host=host(22222, TOKEN))
    assert r.status_code == 200, r.text
    v22, _ = set_cookie_value(r, TNAME)
    assert v22.startswith(f"v1.{SBX}."), v22
    # the tokens expire: only the cookies remain
    for port in (3000, 22222):
        world("DEL", f"sandbox:signed-preview-url-token:{port}:{TOKEN}")
    world("PUBLISH", "proxy:invalidate", "*")
    runner.reset()
    assert with_cookie(px, value, label=TOKEN).status_code == 200
    # a Daytona cookie names no port: another app port opens (Daytona's behaviour) ...
    assert with_cookie(px, value, label=TOKEN, port=8080).status_code == 200
    # ... but never the terminal, toolbox or 33333
    for port in (22222, 2280, 33333):
        assert with_cookie(px, value, label=TOKEN, port=port).status_code == 401, port
    # the v1 cookie opens its own port only
    assert with_cookie(px, v22, label=TOKEN, port=22222).status_code == 200
    assert with_cookie(px, v22, label=TOKEN, port=3000).status_code == 401
    # a Go-minted cookie for the token label behaves the same
    go = gorilla_encode(COOKIE_SECRET, TNAME, SBX)
    assert with_cookie(px, go, label=TOKEN).status_code == 200
    assert with_cookie(px, go, label=TOKEN, port=22222).status_code == 401


def test_revocation_refuses_daytona_cookie(rproxy, runner, world):
    from redisfix import COOKIE_SECRET
    px = rproxy(settings={"cookie_format": "v1"})
    go = gorilla_encode(COOKIE_SECRET, TNAME, SBX)
    world("DEL", f"sandbox:signed-preview-url-token:3000:{TOKEN}")
    world("PUBLISH", "proxy:invalidate", "*")
    assert with_cookie(px, go, label=TOKEN).status_code == 200
    world("SET", f"sandbox:signed-preview-url-revoked:{TOKEN}", "1", "EX", "3600")
    world("PUBLISH", "proxy:invalidate", f"token:3000:{TOKEN}")
    deadline = time.monotonic() + 3
    while with_cookie(px, go, label=TOKEN).status_code != 401:
        assert time.monotonic() < deadline, "revoked token's Daytona cookie still accepted"
        time.sleep(0.01)  # poll interval only

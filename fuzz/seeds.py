#!/usr/bin/env python3
"""seeds.py — writes the seed corpora under fuzz/corpus/ (committed; rerun after
editing). Seeds come from the unit-test tables and the RFC examples; the crash
inputs the fuzzers found live beside them as regress-* files, which this script
leaves alone."""
import base64, hashlib, hmac, os, struct, sys

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8" if any(ord(c) > 255 for c in data) else "latin-1")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- HTTP/1.1 request heads (RFC 9112 3, 6, 7; test_proxy_h1.c) ----
REQ = [
    "GET /hello.txt HTTP/1.1\r\nUser-Agent: curl/7.64.1\r\nHost: www.example.com\r\nAccept-Language: en, mi\r\n\r\n",
    "GET /a/b?x=1 HTTP/1.1\r\nHost: 3000-sb1.proxy.test\r\nUser-Agent:   curl/8   \r\nX-Empty:\r\nAccept: */*\r\n\r\n",
    "POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\r\nhello world!",
    "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n0\r\n\r\n",
    "GET /chat HTTP/1.1\r\nHost: 3000-sb1.proxy.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "GET http://3000-sb1.proxy.test/x HTTP/1.1\r\nHost: 3000-sb1.proxy.test\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "HEAD /toolbox/sb1/files/list?DAYTONA_SANDBOX_AUTH_KEY=tok HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: 3000-sb1.proxy.test\r\nCookie: a=1; daytona-sandbox-auth-sb1=v1.sb1.2000.mac\r\nX-Daytona-Preview-Token: tok\r\n\r\n",
    # smuggling shapes: all must be refused
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    "GET / HTTP/1.1\nHost: a\n\n",
    "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "GET / HTTX/1.1\r\nHost: a\r\n\r\n",
    "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\n",
    "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
]
for i, r in enumerate(REQ):
    put("h1_request", "seed-%02d" % i, r)

RESP = [
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    "HTTP/1.1 204 No Content\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n0\r\n\r\n",
    "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nbody until close",
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.1 302 Found\r\nLocation: /x\r\nSet-Cookie: a=b\r\nSet-Cookie: c=d\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    "HTTP/1.1 200\r\n\r\n",
    "HTTP/1.1 999 Weird\r\nX:\r\n\r\n",
]
for i, r in enumerate(RESP):
    put("h1_response", "seed-%02d" % i, r)

# ---- chunked bodies: byte 0 mode (0 re-framed, 1 plain, 2 discard), byte 1 split seed ----
CH = [
    "4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n",  # RFC 9112 7.1 style
    "5;name=value\r\nhello\r\n0\r\n\r\n",
    "3 ; ext\r\nabc\r\n0\r\nExpires: never\r\nX-Trailer: 1\r\n\r\n",
    "0\r\nContent-Length: 5\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n",
    "A\r\n0123456789\r\n0\r\n\r\nnext",
    "ffffffffffffffff\r\nx",
    "1\nx\n0\n\n",
    "1\r\nxy\r\n",
    "0000000000000000001\r\nx\r\n0\r\n\r\n",
    # the limits: a size line just over PX_CHUNK_MAX_LINE, trailers just over PX_CHUNK_MAX_TRAILERS
    # (seeds this long also raise libFuzzer's max_len past them)
    "1;" + "e" * 4096 + "\r\nx\r\n0\r\n\r\n",
    "1\r\nx\r\n0\r\n" + "".join("X-T%d: %s\r\n" % (i, "v" * 1000) for i in range(17)) + "\r\n",
]
for i, c in enumerate(CH):
    for mode in range(3):
        put("chunked", "seed-%02d-%d" % (i, mode), bytes([mode, 7 * i + 1]) + c.encode())

# ---- Host values: byte 0 picks the domains (0 none, 1 proxy.test, 2 + example.com) ----
HOSTS = [
    "3000-abc123.preview.test", "3000-abc.proxy.test", "3000-SB1.Proxy.Test:8080", "3000-abc.proxy.test.",
    "3000-abc.example.com.:8080", "03000-abc.preview.test", "65536-a.x", "3000-.x", "3000-abc..example.com",
    "[::1]:4000", "[abcd::ef98:0:7654:321]", "[::ffff:12.30.67.89]", "[::1]x", "123.49.0.78:987",
    "_srv.example.com", "-abc.example.com", "3000-abc.example.com:80:90", "8080-tok3n0123456789abcdef.proxy.localhost",
    "3000-a\0b.example.com", "a b", "\xc3\xa9", "proxy.test", "3000-abc.sub.proxy.test",
]
for i, h in enumerate(HOSTS):
    put("host", "seed-%02d" % i, bytes([i % 3]) + h.encode("latin-1"))

# ---- request targets ----
PATHS = [
    "/", "/a/b/c", "/../etc/passwd", "/a/%2e%2e/b", "/a%2f..%2fb", "/a%5c..%5cb", "/a\\..\\b", "/%2E./",
    "/a?x=/../", "/toolbox/sb1/files/list?x=1", "/toolbox/4f1c0e2a-9c1d/process/execute?x=1", "/toolbox//x",
    "/toolbox?x=1", "/p?DAYTONA_SANDBOX_AUTH_KEY=tok&a=1", "/p?a=1&DAYTONA_SANDBOX_AUTH_KEY=x&&b=2&DAYTONA_SANDBOX_AUTH_KEY",
    "/p?redirectx=1&redirect&redirect=%2Fa&redirect=2", "/p?=&a=&&a=1", "/%252e%252e/", "/%2", "/a?..",
]
for i, p in enumerate(PATHS):
    put("path", "seed-%02d" % i, p)

# ---- cookies: byte 0 mode | port << 2, byte 1 time offset, "label\nvalue" ----
KEY = b"fuzz-cookie-secret"
NOW = 1781234567


def b64u(b, pad=True):
    s = base64.urlsafe_b64encode(b).decode()
    return s if pad else s.rstrip("=")


def v1(label, sid, expires, port):
    msg = "v1|daytona-sandbox-auth-%s|%s|%d" % (label, sid, expires)
    if label != sid:
        msg += "|port=%d" % port
    mac = b64u(hmac.new(KEY, msg.encode(), hashlib.sha256).digest(), pad=False)
    return "v1.%s.%d.%s" % (sid, expires, mac)


def gob_string(s):
    b = s.encode()
    body = bytes([0x0C, 0x00, len(b)]) + b
    return bytes([len(body)]) + body


def daytona(label, sid, ts):
    v = b64u(gob_string(sid))
    mac = hmac.new(KEY, ("daytona-sandbox-auth-%s|%d|%s" % (label, ts, v)).encode(), hashlib.sha256).digest()
    return b64u(("%d|%s|" % (ts, v)).encode() + mac).replace("=", "%3D")


T125 = 125  # data[1] = 125 -> dt = 0
COOKIES = [
    (0, 0, "sb1", v1("sb1", "sb1", NOW + 100, 3000)),
    (0, 0, "tok3n", v1("tok3n", "sb1", NOW + 100, 3000)),
    (0, 1, "tok3n", v1("tok3n", "sb1", NOW + 100, 3000)),
    (0, 0, "sb1", daytona("sb1", "sb1", NOW - 10)),
    (0, 1, "tok3n", daytona("tok3n", "sb1", NOW - 10)),
    (0, 0, "sb1", "MTc4MTIzNDU2N3xCZ3dBQTNOaU1RPT18KmcuNc_oDru7h-IETWpg0ZZxHp5qyX-yglbiAQbDFpI%3D"),
    (0, 0, "sb1", "v1..."),
    (1, 0, "sb1", gob_string("sb1")),
    (1, 0, "sb1", gob_string("4f1c0e2a-9c1d-4e55-b0a4-0c8d7e1f2a3b")),
    (1, 0, "sb1", b"\xff\x00\x01\x0c\x00\x03sb1"),
    (2, 0, "sb1", "sb1"),
    (2, 1, "tok3n", "sb1"),
    (2, 0, "abc", "sb.1|x"),
    (3, 0, "sb1", "a=1; daytona-sandbox-auth-sb1=\"" + v1("sb1", "sb1", NOW + 100, 3000) + "\"; b=2"),
]
for i, (mode, port, label, value) in enumerate(COOKIES):
    if isinstance(value, str):
        value = value.encode()
    put("cookie", "seed-%02d" % i, bytes([mode | port << 2, T125]) + label.encode() + b"\n" + value)

# ---- proxy.conf ----
CONFS = [
    open(os.path.join(HERE, "..", "proxy.conf")).read(),
    "listen 127.0.0.1:4000\nlisten [::1]:4443 tls\ntls_cert /nonexistent/c.pem /nonexistent/k.pem proxy.test *.proxy.test\n"
    "domains proxy.test .example.com\ntrusted_proxies 10.0.0.0/8 ::1/128 192.168.1.1\n",
    "redis 127.0.0.1:6379\nredis_db 2\nredis_username u\nredis_password p\ncookie_secret s\ncookie_domain .proxy.test\n"
    "cookie_format daytona\ncache_ttl 60\nlookup_rate 10 20\nlookup_client_rate 5\n",
    "api_url https://api.example.com/api\napi_key k\napi_timeout 5\ncors_credentials same-domain\n"
    "cors_origins https://app.example.com http://localhost:3000/\n",
    "max_body_size 10m\nmax_request_line 8k\nmax_header_size 64K\nmax_headers 50\nmax_connections 100\n"
    "upstream_keepalive 0\nworkers 2\nmetrics_listen 127.0.0.1:9100\nlog_level debug\n",
    "sandbox sb1 runner_url=http://10.0.0.5:3003 runner_key=rk auth_token=tok org=o1 state=stopped signing_key=sk wake=http\n"
    "sandbox sb2 runner_url=https://[::1]:3003/x runner_key=rk public=yes direct=1 addr=::1 ports=3000-3010,8080 warning=off\n"
    "domain app.example.com sb1 3000\n",
    "error_page 404 /dev/null\nerror_page 5xx /nonexistent\nupstream_ca /etc/ssl/certs/ca-certificates.crt\n",
    "listen 4000 tls\n",
    "redis /run/redis.sock\nredis example.com:6379\n",
    "bogus_directive 1\n",
    "connect_timeout 0\n",
    "max_body_size 4294967297\n",
]
for i, c in enumerate(CONFS):
    put("config", "seed-%02d" % i, c)

# ---- HTTP/2 frames after the connection preface (the driver sends the preface);
# byte 0 is the piece size the driver writes at a time (x8, 0 = all at once) ----


def hint(v, prefix, first=0):
    """HPACK integer (RFC 7541 5.1)."""
    m = (1 << prefix) - 1
    if v < m:
        return bytes([first | v])
    out = [first | m]
    v -= m
    while v >= 128:
        out.append(v % 128 + 128)
        v //= 128
    out.append(v)
    return bytes(out)


def hlit(name, value):
    """Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    n, v = name.encode(), value.encode()
    return b"\x00" + hint(len(n), 7) + n + hint(len(v), 7) + v


def block(hdrs):
    return b"".join(hlit(k, v) for k, v in hdrs)


def frame(ftype, flags, sid, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
ES, EH, PADDED, PRIO = 0x1, 0x4, 0x8, 0x20


def req(sid, method="GET", path="/", authority="3000-sb1.proxy.test", extra=(), flags=ES | EH, proto=None):
    h = [(":method", method), (":scheme", "https"), (":path", path), (":authority", authority)]
    if proto:
        h.append((":protocol", proto))
    return frame(HEADERS, flags, sid, block(h + list(extra)))


SET0 = frame(SETTINGS, 0, 0, b"")
SETACK = frame(SETTINGS, 1, 0, b"")
BROWSER = [("user-agent", "Mozilla/5.0 Chrome/120"), ("accept", "text/html,*/*"), ("sec-fetch-mode", "navigate")]
H2 = [
    SET0 + req(1),
    SET0 + SETACK + req(1, authority="3000-sb2.proxy.test"),
    SET0 + req(1, authority="3000-sb2.proxy.test", extra=[("x-daytona-preview-token", "tok")]),
    SET0 + req(1, path="/p?DAYTONA_SANDBOX_AUTH_KEY=tok&a=1", authority="3000-sb2.proxy.test"),
    SET0 + req(1, authority="3000-sb2.proxy.test", extra=[("cookie", "a=1"), ("cookie", "daytona-sandbox-auth-sb2=v1.sb2.9999999999.x")]),
    SET0 + req(1, authority="3000-sb1.proxy.test", extra=BROWSER),
    SET0 + req(1, path="/toolbox/sb1/files/list", authority="proxy.test"),
    SET0 + req(1, authority="app.example.com") + req(3, authority="3000-nosuch.proxy.test") + req(5, authority="bad..host"),
    SET0 + req(1, method="POST", flags=EH, extra=[("content-length", "5")]) + frame(DATA, ES, 1, b"hello"),
    SET0 + req(1, method="POST", flags=EH) + frame(DATA, 0, 1, b"abc") + frame(DATA, 0, 1, b"") + frame(DATA, ES, 1, b"def"),
    SET0 + req(1, method="POST", flags=EH) + frame(DATA, 0, 1, b"abc") + frame(HEADERS, ES | EH, 1, block([("x-trailer", "1")])),
    SET0 + req(1, method="CONNECT", path="/chat", proto="websocket", flags=EH, extra=[("sec-websocket-version", "13")]) + frame(DATA, 0, 1, b"\x81\x05hello"),
    SET0 + frame(HEADERS, EH | ES, 1, block([(":method", "CONNECT"), (":authority", "3000-sb1.proxy.test:443")])),
    SET0 + req(1, method="HEAD"),
    SET0 + req(1, flags=EH) + frame(RST, 0, 1, struct.pack(">I", 8)) + frame(PING, 0, 0, b"12345678") + frame(WINDOW, 0, 0, struct.pack(">I", 65536)) + frame(WINDOW, 0, 1, struct.pack(">I", 1)),
    SET0 + frame(HEADERS, ES, 1, block([(":method", "GET"), (":scheme", "https")])) + frame(CONT, EH, 1, block([(":path", "/"), (":authority", "3000-sb1.proxy.test")])),
    SET0 + frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 16)) + frame(HEADERS, ES | EH | PRIO, 3, struct.pack(">IB", 1, 16) + block([(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "3000-sb1.proxy.test")])),
    SET0 + frame(HEADERS, ES | EH | PADDED, 1, b"\x03" + block([(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "3000-sb1.proxy.test")]) + b"\x00\x00\x00"),
    SET0 + frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 1 << 20) + struct.pack(">HI", 1, 0) + struct.pack(">HI", 5, 1 << 14)) + req(1),
    SET0 + b"".join(req(2 * i + 1, path="/%d" % i) for i in range(8)),
    SET0 + req(1, flags=EH, extra=[("te", "trailers"), ("connection", "keep-alive")]),
    SET0 + req(1, path="/a/../b") + req(3, extra=[("host", "3000-sb1.proxy.test")]) + frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0)),
    SET0 + b"".join(frame(PING, 0, 0, b"pingping") for _ in range(120)),
    SET0 + req(1, method="POST", flags=EH, extra=[("content-length", "99999999")]) + frame(DATA, 0, 1, b"x" * 1000),
]
for i, h in enumerate(H2):
    put("h2", "seed-%02d" % i, bytes([0]) + h)
    put("h2", "seed-%02d-split" % i, bytes([1 + i % 4]) + h)

# ---- PROXY protocol headers (HAProxy doc/proxy-protocol.txt; test_proxyproto.c) ----
PP_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def pp2(ver_cmd, fam, body):
    return PP_SIG + bytes([ver_cmd, fam]) + struct.pack(">H", len(body)) + body


PP_V4 = bytes([192, 0, 2, 7, 10, 0, 0, 1]) + struct.pack(">HH", 56324, 443)
PP_V6 = bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack(">HH", 1, 2)
PP = [
    b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n\r\n",
    b"PROXY TCP6 2001:db8::1 ::1 65535 80\r\n",
    b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    b"PROXY TCP4 01.2.3.4 5.6.7.8 01 2\r\n",
    pp2(0x21, 0x11, PP_V4) + b"GET / HTTP/1.1\r\n\r\n",
    pp2(0x21, 0x21, PP_V6),
    pp2(0x21, 0x11, PP_V4 + b"\x01\x00\x02h2\x04\x00\x00\xea\x00\x03vpc"),
    pp2(0x20, 0x00, b""),
    pp2(0x20, 0x31, bytes(216)),
    pp2(0x21, 0x00, b""),
    pp2(0x21, 0x12, PP_V4),
    pp2(0x21, 0x11, PP_V4 + b"\x01\x00\x05h"),
]
for i, h in enumerate(PP):
    put("proxyproto", "seed-%02d" % i, h)

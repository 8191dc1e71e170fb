"""A recording upstream with a strict HTTP/1.1 request parser (RFC 9112), for
the differential framing tests (test_differential.py).

Runs in the test process: one listening socket, one thread per connection.
Each connection's bytes are framed strictly: Content-Length xor chunked, one
Host, CRLF line endings only, no obs-fold, field names that are tokens directly
followed by ':', no controls in values, strict chunk lines. Every complete
request is recorded (method, target, headers, body, raw bytes, connection) and
answered with a fixed 200 and Content-Length; the connection is kept alive. A
byte stream that is not a valid request is recorded as an "error" event
(answered 400, connection closed); a connection that ends in the middle of a
request is recorded as "incomplete".

Standard library only.
"""
import re
import socket
import threading

TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                  b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# request-line = method SP request-target SP HTTP-version (RFC 9112 3). The
# target is any visible ASCII or obs-text: its syntax is not a framing matter.
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([\x21-\x7e\x80-\xff]+) HTTP/1\.([01])")
QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# chunk = chunk-size [ chunk-ext ] CRLF; chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[ \t]*" + TOKEN + rb"(?:[ \t]*=[ \t]*(?:"
                        + TOKEN + rb"|" + QUOTED + rb"))?)*)")
MAX_HEAD = 128 * 1024
MAX_LINE = 16 * 1024

OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n"


class FrameError(Exception):
    pass


def _check_line_endings(buf, start, end):
    """Every CR in buf[start:end] is followed by LF and every LF preceded by CR
    (a CR as the very last byte may still get its LF)."""
    i = buf.find(b"\n", start, end)
    while i >= 0:
        if i == 0 or buf[i - 1] != 0x0D:
            raise FrameError("bare LF")
        i = buf.find(b"\n", i + 1, end)
    i = buf.find(b"\r", start, end)
    while i >= 0:
        if i + 1 < end and buf[i + 1] != 0x0A:
            raise FrameError("bare CR")
        i = buf.find(b"\r", i + 1, end)


def parse_field_line(line):
    """(name, value) of one field line (without its CRLF), strictly."""
    colon = line.find(b":")
    if colon <= 0:
        raise FrameError(f"field line without a name or colon: {line[:60]!r}")
    name = line[:colon]
    if not all(c in TCHAR for c in name):
        raise FrameError(f"field name is not a token: {name[:60]!r}")
    value = line[colon + 1:].strip(b" \t")
    for c in value:
        if (c < 0x20 and c != 0x09) or c == 0x7F:
            raise FrameError(f"control character in the value of {name!r}")
    return name.decode("latin-1"), value.decode("latin-1")


def parse_head(buf):
    """(method, target, minor, headers, head_len) of the request head at the
    start of buf, None if it is not complete yet; FrameError if it is not a
    strictly valid head."""
    end = buf.find(b"\r\n\r\n")
    limit = len(buf) if end < 0 else end + 4
    _check_line_endings(buf, 0, limit)
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise FrameError("head too large")
        return None
    lines = buf[:end].split(b"\r\n")
    m = REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise FrameError(f"bad request line: {lines[0][:100]!r}")
    headers = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise FrameError("obs-fold")
        headers.append(parse_field_line(line))
    return (m.group(1).decode("latin-1"), m.group(2).decode("latin-1"), int(m.group(3)),
            headers, end + 4)


def framing(headers, minor):
    """("length", n), ("chunked", None) or ("none", 0) from the fields;
    FrameError for anything ambiguous."""
    te = [v for k, v in headers if k.lower() == "transfer-encoding"]
    cl = [v for k, v in headers if k.lower() == "content-length"]
    hosts = [v for k, v in headers if k.lower() == "host"]
    if minor == 1 and len(hosts) != 1:
        raise FrameError(f"{len(hosts)} Host fields")
    if te and cl:
        raise FrameError("both Transfer-Encoding and Content-Length")
    if te:
        if minor == 0:
            raise FrameError("Transfer-Encoding in HTTP/1.0")
        codings = [c.strip(" \t").lower() for v in te for c in v.split(",")]
        if any(not re.fullmatch(TOKEN.decode(), c) for c in codings):
            raise FrameError(f"bad Transfer-Encoding {te!r}")
        if codings[-1] != "chunked" or codings.count("chunked") != 1:
            raise FrameError(f"Transfer-Encoding does not end in one chunked: {te!r}")
        return "chunked", None
    if cl:
        if len(cl) != 1 or not re.fullmatch(r"[0-9]{1,18}", cl[0]):
            raise FrameError(f"bad Content-Length {cl!r}")
        return "length", int(cl[0])
    return "none", 0


def parse_chunked(buf, pos):
    """(body, trailers, end) of a chunked body starting at buf[pos], None if not
    complete yet; FrameError if malformed."""
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        _check_line_endings(buf, pos, len(buf) if eol < 0 else eol + 2)
        if eol < 0:
            if len(buf) - pos > MAX_LINE:
                raise FrameError("chunk line too long")
            return None
        m = CHUNK_LINE.fullmatch(buf[pos:eol])
        if m is None:
            raise FrameError(f"bad chunk line {buf[pos:eol][:80]!r}")
        size = int(m.group(1), 16)
        pos = eol + 2
        if size == 0:
            break
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos:pos + size]
        if buf[pos + size:pos + size + 2] != b"\r\n":
            raise FrameError("chunk data not followed by CRLF")
        pos += size + 2
    trailers = []
    while True:
        eol = buf.find(b"\r\n", pos)
        _check_line_endings(buf, pos, len(buf) if eol < 0 else eol + 2)
        if eol < 0:
            if len(buf) - pos > MAX_LINE:
                raise FrameError("trailer line too long")
            return None
        line = buf[pos:eol]
        pos = eol + 2
        if not line:
            return bytes(body), trailers, pos
        if line[:1] in (b" ", b"\t"):
            raise FrameError("obs-fold in trailers")
        trailers.append(parse_field_line(line))


def parse_request(buf, continue_sent=None):
    """One request from the start of buf: (request dict, bytes used), None if
    incomplete, FrameError if invalid. continue_sent(head) is called once the
    head is known and the body not complete yet (for Expect: 100-continue)."""
    head = parse_head(buf)
    if head is None:
        return None
    method, target, minor, headers, hl = head
    kind, n = framing(headers, minor)
    if kind == "length":
        if len(buf) < hl + n:
            if continue_sent:
                continue_sent(headers)
            return None
        body, trailers, end = bytes(buf[hl:hl + n]), [], hl + n
    elif kind == "chunked":
        r = parse_chunked(buf, hl)
        if r is None:
            if continue_sent:
                continue_sent(headers)
            return None
        body, trailers, end = r
    else:
        body, trailers, end = b"", [], hl
    return ({"method": method, "target": target, "minor": minor, "headers": headers,
             "body": body, "trailers": trailers, "framing": kind,
             "raw": bytes(buf[:end])}, end)


def _wants_close(req):
    conn = ",".join(v for k, v in req["headers"] if k.lower() == "connection").lower()
    tokens = [t.strip() for t in conn.split(",")]
    if req["minor"] == 0:
        return "keep-alive" not in tokens
    return "close" in tokens


class Recorder:
    """Listens on 127.0.0.1 (an ephemeral port, self.port). events: dicts with
    kind "request" | "error" | "incomplete", conn (a number per connection)
    and, for requests, what parse_request returns; "raw" holds the bytes."""

    def __init__(self, name="recorder"):
        self.name = name
        self.lock = threading.Lock()
        self.events = []
        self.busy = set()          # connections holding part of a request
        self.nconn = 0
        self.stopping = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.thread = threading.Thread(target=self._accept, name=f"{name}-accept", daemon=True)
        self.thread.start()

    def take(self):
        """The events recorded since the last take()."""
        with self.lock:
            ev, self.events = self.events, []
        return ev

    def quiet(self):
        """True when no connection holds part of a request."""
        with self.lock:
            return not self.busy

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        for s in list(self.conns):
            try:
                s.close()
            except OSError:
                pass

    def _record(self, ev):
        with self.lock:
            self.events.append(ev)

    def _accept(self):
        while not self.stopping.is_set():
            try:
                s, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.nconn += 1
                cid = self.nconn
            self.conns.append(s)
            threading.Thread(target=self._serve, args=(s, cid), name=f"{self.name}-{cid}",
                             daemon=True).start()

    def _serve(self, s, cid):
        s.settimeout(0.2)
        buf = b""
        continued = [False]

        def send_continue(headers):
            if continued[0]:
                return
            if any(k.lower() == "expect" and v.lower() == "100-continue" for k, v in headers):
                continued[0] = True
                s.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

        try:
            while not self.stopping.is_set():
                try:
                    r = parse_request(buf, send_continue) if buf else None
                except FrameError as e:
                    self._record({"kind": "error", "conn": cid, "why": str(e), "raw": buf})
                    s.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                              b"Connection: close\r\n\r\n")
                    return
                if r is not None:
                    req, used = r
                    buf = buf[used:]
                    continued[0] = False
                    req.update(kind="request", conn=cid)
                    self._record(req)
                    s.sendall(OK_RESPONSE + (b"" if req["method"] == "HEAD" else b"ok"))
                    if _wants_close(req):
                        if buf:
                            self._record({"kind": "error", "conn": cid, "raw": buf,
                                          "why": "bytes after a request that closes"})
                        buf = b""
                        return
                    continue
                with self.lock:
                    (self.busy.add if buf else self.busy.discard)(cid)
                try:
                    data = s.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    data = b""
                if not data:
                    if buf:
                        self._record({"kind": "incomplete", "conn": cid, "raw": buf})
                    buf = b""
                    return
                buf += data
        except OSError:
            pass
        finally:
            with self.lock:
                self.busy.discard(cid)
            try:
                s.close()
            except OSError:
                pass

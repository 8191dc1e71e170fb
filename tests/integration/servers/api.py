#!/usr/bin/python3
"""A stand-in for the Daytona API (and a toy OIDC IdP), for the API-mode tests.

Implements ../shared/DAYTONA-API.md §9: calls C1-C13 under /api with the
response shapes of §2, a canned fixture, fault controls and a call log.
Raw-socket HTTP/1.1 (stdlib only, one thread per connection, serving.py's
accept loop). Keep-alive: every answer has a Content-Length and the connection
stays open unless the client asked for close (or HTTP/1.0) or a fault says so.

    /usr/bin/python3 api.py [--port N] --runner-url URL [--proxy-key pk]
                            [--runner-key rk-1] [--client-secret proxy-secret]
                            [--proxy-domain proxy.test]

Prints "PORT <n>" on stdout once listening. Base URL below: http://127.0.0.1:<n>.

Response formats (§2)
  booleans/strings  raw body (`true`, the ID, the key), text/html; charset=utf-8
  objects           application/json with every key the Go decoder requires
  errors            application/json {"path","timestamp","statusCode","error","message"}
  C7                201, empty body
  every answer      Content-Length, and X-Api-Seq: the seq of its /_ctl/log entry

Identity. Proxy-identity calls (C2 C4 C5 C6 C7 C10 C11 C12 C13; C8 when the
bearer is the proxy key) need `Authorization: Bearer <proxy key>`: missing or
unknown bearer -> 401 JSON; a user's bearer -> 403 "Invalid authentication
context". C1 is public. User-bearer calls (C3 C8 C9) record X-Forwarded-For in
the log entry ("xff"). Users: jwt-alice (JWT, member of o1), key-alice (API key,
member of o1), key-bob (API key, no organisation), anything else -> 401; with the
switch userinfo_url set, an unknown bearer is asked at that URL (a real OpenID
provider's userinfo): its sub and org make the user.
C8/C9 with a user JWT answer 403 (no organisation context, §2); with an API key:
200 if the user is a member of the sandbox's organisation, else 404.

Fixture (restored by /_ctl/reset)
  sandboxes  sb-pub (public), sb-priv (authToken tok-1, signing key
             testsigningkey1234567890abcdefgh), sb-stop (stopped, runner r-vm),
             sb-build (buildInfo.snapshotRef snap-ref-1), sb-norunner (no runner);
             all in organisation o1, runner r1 unless said otherwise
  runners    r1 (runnerClass container), r-vm (runnerClass vm): proxyUrl and
             apiUrl = --runner-url, apiKey = --runner-key (rk-1)
  snapshots  snap-1 (ref snap-ref-1, initialRunnerId r1)
  orgs       o1 (previewWarningEnabled false)
  tokens     abc123 port 3000 -> sb-priv (no expiry)

Routes
  GET  /api/config                              C1  DaytonaConfiguration
  GET  /api/preview/{label}/public              C2  200 true | 404
  GET  /api/preview/{label}/access              C3  200 true | 404 | 401 (user bearer)
  GET  /api/preview/{label}/validate/{token}    C4  200 true | 404
  GET  /api/preview/{token}/{port}/sandbox-id   C5  200 raw ID | 403 "Invalid or expired token"
  GET  /api/runners/by-sandbox/{id}             C6  RunnerFull | 404
  POST /api/sandbox/{id}/last-activity          C7  201 empty (not checked for existence)
  GET  /api/sandbox/{id}                        C8  SandboxDto | 404
  POST /api/sandbox/{id}/start                  C11 200 SandboxDto; stopped -> starting,
       started after start_delay_ms (or start_outcome); 404 unknown; 403 with v0190
  GET  /api/snapshots/{id}                      C9  SnapshotDto | 404
  GET  /api/runners/{id}/full                   C10 RunnerFull | 404
  GET  /api/preview/{id}/signing-key            C12 raw key | 404
  GET  /api/preview/{label}/preview-warning?port=P  C13 {"enabled": org flag} | 404
  GET  /idp/.well-known/openid-configuration    discovery; issuer = <base>/idp/ (or
       <base>/idp with issuer_slash=false); C1's oidc.issuer is the same string
  GET  /idp/authorize                           auto-approve: 302 redirect_uri?code=..&state=..
       (checks client_id proxy-test, response_type code, S256 challenge; idp_deny
       switch -> 302 with error=access_denied)
  POST /idp/token                               authorization_code + PKCE S256 check, client
       auth by HTTP Basic or form (client_id proxy-test, --client-secret); the code is
       single-use and bound to redirect_uri -> {"access_token":"jwt-alice",...}
Route names (for faults and the log): C1..C13, idp-discovery, idp-authorize, idp-token.

Control endpoints (never logged, never faulted; GET query or POST JSON body;
answers are JSON, Connection: close)
  /_ctl/ping
  /_ctl/reset        faults, log, switches and fixture back to the start state
  /_ctl/log          [{"seq","conn","conn_request","method","path","query","target",
                       "headers":[[k,v]...],"time","route","identity","xff","status",
                       "fault"}] in arrival order; status is filled in when answered
  /_ctl/fault        {"route": R, ...} adds or replaces the fault for R; R is a route
                     name (C2, idp-token) or an fnmatch glob on the path
                     ("/api/runners/*", "*"). Fields:
                       delay_ms=N        every matching request waits N ms first
                       fail_next=K       the next K matching requests fail with
                         status=S (default 503) and body=
                           json     error JSON (statusCode = body_status or S)
                           html     nginx-style HTML page, text/html
                           {}       the two bytes {} as application/json
                           garbage  invalid JSON as application/json
                           huge     a JSON object of huge_bytes (default 8 MiB)
                           reset    no answer: SO_LINGER 0 and close (TCP RST)
                           close    no answer: plain close (FIN)
                       down=true         every matching request is reset (as above)
                       close=true        answers carry Connection: close, then close
                     {"clear": true} (alone) removes every fault; {"route": R,
                     "clear": true} removes R's.
  /_ctl/faults       the current faults
  /_ctl/sandbox      {"id", ...SandboxDto-ish fields} creates or updates a sandbox:
                     public, authToken, organizationId, state, runnerId (null = none),
                     snapshotRef (gives buildInfo), signingKey
  /_ctl/sandboxes    the current sandboxes
  /_ctl/token        {"token","port","sandboxId","ttl_s"(optional)} adds a signed token;
                     {"token","port","revoke":true} removes it
  /_ctl/org          {"id","previewWarningEnabled"} creates or updates an organisation
  /_ctl/rotate/{id}  new signing key for sandbox id (or {"key": K}); answers {"key"}
  /_ctl/set          switches: v0190 (C11 403 to the proxy key), issuer_slash,
                     start_delay_ms (default 1000), start_outcome (started|error|
                     build_failed), idp_deny, proxy_key
  /_ctl/activity     {"sandboxId": count of C7 calls}
"""
import argparse
import base64
import copy
import datetime
import fnmatch
import hashlib
import json
import re
import secrets
import socket
import struct
import threading
import time
import urllib.request
from urllib.parse import parse_qs, unquote, unquote_plus, urlencode, urlsplit, urlunsplit

from serving import serve_tcp

ARGS = None
REASONS = {200: "OK", 201: "Created", 204: "No Content", 302: "Found", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 409: "Conflict", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}
HTML_TYPE = "text/html; charset=utf-8"
JSON_TYPE = "application/json; charset=utf-8"
TS = "2025-01-01T00:00:00.000Z"
CLIENT_ID = "proxy-test"
AUDIENCE = "daytona"

USERS = {
    "jwt-alice": {"id": "alice", "orgs": ["o1"], "jwt": True},
    "key-alice": {"id": "alice", "orgs": ["o1"], "jwt": False},
    "key-bob": {"id": "bob", "orgs": [], "jwt": False},
}


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def fixture():
    def sbx(id, **kw):
        s = {"id": id, "public": False, "authToken": f"tok-{id}", "organizationId": "o1",
             "state": "started", "runnerId": "r1", "snapshotRef": None,
             "signingKey": (id + "-signing-key-" + "x" * 32)[:32], "starting_until": None}
        s.update(kw)
        return s
    sandboxes = [
        sbx("sb-pub", public=True),
        sbx("sb-priv", authToken="tok-1", signingKey="testsigningkey1234567890abcdefgh"),
        sbx("sb-stop", state="stopped", runnerId="r-vm"),
        sbx("sb-build", snapshotRef="snap-ref-1"),
        sbx("sb-norunner", runnerId=None),
    ]
    return {
        "sandboxes": {s["id"]: s for s in sandboxes},
        "runners": {"r1": {"id": "r1", "runnerClass": "container"},
                    "r-vm": {"id": "r-vm", "runnerClass": "vm"}},
        "snapshots": {"snap-1": {"id": "snap-1", "ref": "snap-ref-1", "initialRunnerId": "r1"}},
        "orgs": {"o1": {"id": "o1", "previewWarningEnabled": False}},
        "tokens": {("abc123", "3000"): {"sandboxId": "sb-priv", "expires": None}},
    }


def default_switches():
    return {"v0190": False, "issuer_slash": True, "start_delay_ms": 1000,
            "start_outcome": "started", "idp_deny": False, "proxy_key": ARGS.proxy_key,
            "userinfo_url": None}


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()
        self.next_conn = 0

    def reset(self):
        self.data = fixture()
        self.switches = default_switches()
        self.faults = {}          # route pattern -> dict
        self.log = []
        self.seq = 0
        self.activity = {}
        self.codes = {}           # IdP code -> {challenge, redirect_uri}


STATE = None


class Closed(Exception):
    pass


class WasReset(Exception):
    """The connection was reset on purpose; its socket is already closed."""


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        with STATE.lock:
            STATE.next_conn += 1
            self.id = STATE.next_conn

    def fill(self):
        try:
            d = self.sock.recv(65536)
        except OSError:
            d = b""
        if not d:
            raise Closed()
        self.buf += d

    def readline(self):
        while b"\n" not in self.buf:
            if len(self.buf) > 1 << 20:
                raise Closed()
            self.fill()
        i = self.buf.index(b"\n") + 1
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, data):
        self.sock.sendall(data)

    def reset(self):
        """TCP reset: SO_LINGER 0, then close."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Answer:
    """What a route returns: status, headers, body; or an action without a response."""

    def __init__(self, status, body=b"", ctype=None, headers=(), action=None):
        self.status = status
        self.body = body if isinstance(body, bytes) else body.encode()
        self.ctype = ctype
        self.headers = list(headers)
        self.action = action      # None, "reset" or "close"


def plain(value, status=200):
    """A NestJS plain value (boolean or string): raw body, text/html."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return Answer(status, str(value), HTML_TYPE)


def obj(value, status=200):
    return Answer(status, json.dumps(value), JSON_TYPE)


def error(target, status, message, body_status=None):
    code = status if body_status is None else body_status
    return obj({"path": target, "timestamp": now_rfc3339(), "statusCode": code,
                "error": REASONS.get(code, "Error"), "message": message}, status)


def hdr(headers, name):
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def base_url(conn):
    return f"http://127.0.0.1:{conn.sock.getsockname()[1]}"


# ------------------------------------------------------------------ shapes --

def runner_full(r):
    url = ARGS.runner_url
    return {
        "id": r["id"], "domain": urlsplit(url).netloc, "apiUrl": url, "proxyUrl": url,
        "apiKey": ARGS.runner_key, "cpu": 4, "memory": 8, "disk": 50, "gpu": 0,
        "gpuType": "none", "class": "small", "sandboxClass": "small",
        "currentCpuUsagePercentage": 0, "currentMemoryUsagePercentage": 0,
        "currentDiskUsagePercentage": 0, "currentAllocatedCpu": 0,
        "currentAllocatedMemoryGiB": 0, "currentAllocatedDiskGiB": 0,
        "currentSnapshotCount": 0, "availabilityScore": 100, "region": "us",
        "regionType": "shared", "name": r["id"], "state": "ready",
        "lastChecked": TS, "unschedulable": False, "tags": [], "createdAt": TS,
        "updatedAt": TS, "version": "0", "apiVersion": "0", "appVersion": "v0.190.0",
        "runnerClass": r["runnerClass"],
    }


def sandbox_state(s):
    """The lazily advanced C11 state machine."""
    if s["starting_until"] is not None and time.monotonic() >= s["starting_until"]:
        s["state"] = STATE.switches["start_outcome"]
        s["starting_until"] = None
    return s["state"]


def sandbox_dto(s):
    state = sandbox_state(s)
    d = {
        "id": s["id"], "organizationId": s["organizationId"], "name": s["id"],
        "snapshot": "daytonaio/sandbox:0.4.3", "user": "daytona", "env": {}, "labels": {},
        "public": s["public"], "networkBlockAll": False, "networkAllowList": None,
        "target": "us", "cpu": 1, "gpu": 0, "memory": 1, "disk": 3, "state": state,
        "desiredState": "started" if state in ("started", "starting") else state,
        "errorReason": None, "backupState": "None", "autoStopInterval": 15,
        "autoArchiveInterval": 10080, "autoDeleteInterval": -1, "class": "small",
        "runnerId": s["runnerId"],
        "toolboxProxyUrl": f"http://{ARGS.proxy_domain}/toolbox",
        "createdAt": TS, "updatedAt": TS,
    }
    if s["snapshotRef"]:
        d["buildInfo"] = {"dockerfileContent": "FROM alpine", "contextHashes": [],
                          "createdAt": TS, "updatedAt": TS, "snapshotRef": s["snapshotRef"]}
    return d


def snapshot_dto(p):
    return {
        "id": p["id"], "organizationId": "o1", "general": False, "name": p["id"],
        "imageName": "alpine:3", "ref": p["ref"], "state": "active", "size": 0.1,
        "entrypoint": ["sleep", "infinity"], "cpu": 1, "gpu": 0, "mem": 1, "disk": 3,
        "errorReason": None, "createdAt": TS, "updatedAt": TS, "lastUsedAt": None,
        "initialRunnerId": p["initialRunnerId"], "buildInfo": None,
    }


def issuer(conn):
    return base_url(conn) + ("/idp/" if STATE.switches["issuer_slash"] else "/idp")


def configuration(conn):
    return {
        "version": "0.190.0",
        "oidc": {"issuer": issuer(conn), "clientId": CLIENT_ID, "audience": AUDIENCE},
        "linkedAccountsEnabled": False, "announcements": {},
        "proxyTemplateUrl": f"http://{{{{PORT}}}}-{{{{sandboxId}}}}.{ARGS.proxy_domain}",
        "proxyToolboxUrl": f"http://{ARGS.proxy_domain}/toolbox",
        "defaultSnapshot": "daytonaio/sandbox:0.4.3",
        "dashboardUrl": "http://dashboard.test", "maxAutoArchiveInterval": 43200,
        "maintananceMode": False, "environment": "test",
    }


# ------------------------------------------------------------------ routes --

def bearer(headers):
    a = hdr(headers, "authorization")
    if a is None or not a.startswith("Bearer "):
        return None
    return a[len("Bearer "):].strip()


def identity(headers):
    """"proxy", a user record, or None."""
    tok = bearer(headers)
    if tok is None or tok == "":
        return None
    if tok == STATE.switches["proxy_key"]:
        return "proxy"
    if tok not in USERS and STATE.switches["userinfo_url"]:
        return userinfo_user(tok)
    return USERS.get(tok)


def userinfo_user(tok):
    """A bearer issued by a real OpenID provider (tests/idp): the provider's
    userinfo endpoint names the user and its org, as the Daytona API learns
    them from the token. Unknown or refused tokens are nobody."""
    req = urllib.request.Request(STATE.switches["userinfo_url"],
                                 headers={"Authorization": "Bearer " + tok})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            info = json.loads(r.read(65536))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("sub"), str):
        return None
    org = info.get("org")
    return {"id": info["sub"], "orgs": [org] if isinstance(org, str) else [], "jwt": True}


def need_proxy(req):
    ident = identity(req["headers"])
    if ident == "proxy":
        return None
    if ident is None:
        return error(req["target"], 401, "Unauthorized")
    return error(req["target"], 403, "Invalid authentication context")


def need_user(req):
    ident = identity(req["headers"])
    if ident is None:
        return None, error(req["target"], 401, "Unauthorized")
    return ident, None


def token_sandbox(token, port):
    t = STATE.data["tokens"].get((token, str(port)))
    if t is None or (t["expires"] is not None and time.time() >= t["expires"]):
        return None
    return t["sandboxId"]


ROUTES = [
    ("C1", "GET", r"/api/config"),
    ("C5", "GET", r"/api/preview/([^/]+)/([^/]+)/sandbox-id"),
    ("C4", "GET", r"/api/preview/([^/]+)/validate/([^/]+)"),
    ("C2", "GET", r"/api/preview/([^/]+)/public"),
    ("C3", "GET", r"/api/preview/([^/]+)/access"),
    ("C12", "GET", r"/api/preview/([^/]+)/signing-key"),
    ("C13", "GET", r"/api/preview/([^/]+)/preview-warning"),
    ("C6", "GET", r"/api/runners/by-sandbox/([^/]+)"),
    ("C10", "GET", r"/api/runners/([^/]+)/full"),
    ("C7", "POST", r"/api/sandbox/([^/]+)/last-activity"),
    ("C11", "POST", r"/api/sandbox/([^/]+)/start"),
    ("C8", "GET", r"/api/sandbox/([^/]+)"),
    ("C9", "GET", r"/api/snapshots/([^/]+)"),
    ("idp-discovery", "GET", r"/idp/\.well-known/openid-configuration"),
    ("idp-authorize", "GET", r"/idp/authorize"),
    ("idp-token", "POST", r"/idp/token"),
]
ROUTES = [(n, m, re.compile(p + r"/?$")) for n, m, p in ROUTES]


def match_route(method, path):
    """(name, args) of the route for path (any method), or (None, ())."""
    for name, m, rx in ROUTES:
        mo = rx.match(path)
        if mo:
            return name, m, tuple(unquote(g) for g in mo.groups())
    return None, None, ()


def route(conn, req):
    """The Answer for one /api or /idp request (STATE.lock held)."""
    t = req["target"]
    name, method, args = req["route"], req["route_method"], req["args"]
    if name is None:
        return error(t, 404, f"Cannot {req['method']} {req['path']}")
    if req["method"] != method:
        return error(t, 404, f"Cannot {req['method']} {req['path']}")
    d = STATE.data
    sbx = d["sandboxes"]

    if name == "C1":
        return obj(configuration(conn))

    if name.startswith("idp-"):
        return idp(conn, req, name)

    if name == "C3":
        user, e = need_user(req)
        if e:
            return e
        if user == "proxy":
            return error(t, 403, "Invalid authentication context")
        s = sbx.get(args[0])
        if s is None or s["organizationId"] not in user["orgs"]:
            return error(t, 404, f"Sandbox with ID or name {args[0]} not found")
        return plain(True)

    if name in ("C8", "C9"):
        ident, e = need_user(req)
        if e:
            return e
        if ident != "proxy" and ident["jwt"]:
            return error(t, 403, "Organization ID is required")
        if name == "C8":
            s = sbx.get(args[0])
            if s is None or (ident != "proxy" and s["organizationId"] not in ident["orgs"]):
                return error(t, 404, f"Sandbox with ID or name {args[0]} not found")
            return obj(sandbox_dto(s))
        if ident == "proxy":
            return error(t, 403, "Invalid authentication context")
        p = d["snapshots"].get(args[0])
        if p is None or "o1" not in ident["orgs"]:
            return error(t, 404, f"Snapshot {args[0]} not found")
        return obj(snapshot_dto(p))

    e = need_proxy(req)
    if e:
        return e

    if name == "C2":
        s = sbx.get(args[0])
        if s is None or not s["public"]:
            return error(t, 404, f"Sandbox with ID {args[0]} not found")
        return plain(True)

    if name == "C4":
        s = sbx.get(args[0])
        if s is None or s["authToken"] != args[1]:
            return error(t, 404, "Invalid preview token")
        return plain(True)

    if name == "C5":
        sid = token_sandbox(args[0], args[1])
        if sid is None:
            return error(t, 403, "Invalid or expired token")
        return plain(sid)

    if name == "C6":
        s = sbx.get(args[0])
        if s is None:
            return error(t, 404, f"Sandbox with ID {args[0]} not found")
        if s["runnerId"] is None:
            return error(t, 404, f"Sandbox with ID {args[0]} does not have a runner")
        r = d["runners"].get(s["runnerId"])
        if r is None:
            return error(t, 404, "Runner not found")
        return obj(runner_full(r))

    if name == "C10":
        r = d["runners"].get(args[0])
        if r is None:
            return error(t, 404, "Runner not found")
        return obj(runner_full(r))

    if name == "C7":
        STATE.activity[args[0]] = STATE.activity.get(args[0], 0) + 1
        return Answer(201)

    if name == "C11":
        if STATE.switches["v0190"]:
            return error(t, 403, "Organization ID is required")
        s = sbx.get(args[0])
        if s is None:
            return error(t, 404, f"Sandbox with ID or name {args[0]} not found")
        if sandbox_state(s) == "stopped":
            s["state"] = "starting"
            s["starting_until"] = time.monotonic() + STATE.switches["start_delay_ms"] / 1000.0
        return obj(sandbox_dto(s))

    if name == "C12":
        s = sbx.get(args[0])
        if s is None:
            return error(t, 404, f"Sandbox with ID {args[0]} not found")
        return plain(s["signingKey"])

    if name == "C13":
        port = req["q"].get("port", "")
        sid = args[0] if args[0] in sbx else token_sandbox(args[0], port)
        if sid is None or sid not in sbx:
            return error(t, 404, f"Sandbox with ID {args[0]} not found")
        org = d["orgs"].get(sbx[sid]["organizationId"], {"previewWarningEnabled": False})
        return obj({"enabled": bool(org["previewWarningEnabled"])})

    return error(t, 404, "not implemented")


# -------------------------------------------------------------------- IdP --

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def idp(conn, req, name):
    base = base_url(conn) + "/idp"
    q = req["q"]
    if name == "idp-discovery":
        return obj({
            "issuer": issuer(conn),
            "authorization_endpoint": base + "/authorize",
            "token_endpoint": base + "/token",
            "device_authorization_endpoint": base + "/device/code",
            "userinfo_endpoint": base + "/userinfo",
            "jwks_uri": base + "/keys",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post"],
        })
    if name == "idp-authorize":
        ru = q.get("redirect_uri", "")
        problems = []
        if q.get("client_id") != CLIENT_ID:
            problems.append("client_id")
        if q.get("response_type") != "code":
            problems.append("response_type")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            problems.append("code_challenge")
        if not ru.startswith(("http://", "https://")):
            problems.append("redirect_uri")
        if problems:
            return obj({"error": "invalid_request", "error_description":
                        "bad or missing: " + ", ".join(problems)}, 400)
        params = {}
        if STATE.switches["idp_deny"]:
            params["error"] = "access_denied"
            params["error_description"] = "denied by the test"
        else:
            code = "code-" + secrets.token_hex(8)
            STATE.codes[code] = {"challenge": q["code_challenge"], "redirect_uri": ru}
            params["code"] = code
        if "state" in q:
            params["state"] = q["state"]
        u = urlsplit(ru)
        query = (u.query + "&" if u.query else "") + urlencode(params)
        loc = urlunsplit((u.scheme, u.netloc, u.path, query, ""))
        return Answer(302, "", None, [("Location", loc)])
    # idp-token
    ctype = (hdr(req["headers"], "content-type") or "").split(";")[0].strip().lower()
    form = {}
    if ctype == "application/x-www-form-urlencoded":
        form = {k: v[0] for k, v in parse_qs(req["body"].decode("latin-1"),
                                              keep_blank_values=True).items()}
    cid, csec = form.get("client_id"), form.get("client_secret")
    auth = hdr(req["headers"], "authorization") or ""
    if auth.startswith("Basic "):
        try:
            raw = base64.b64decode(auth[6:].strip()).decode()
            u, _, p = raw.partition(":")
            cid, csec = unquote_plus(u), unquote_plus(p)
        except (ValueError, UnicodeDecodeError):
            cid = csec = None
    if cid != CLIENT_ID or csec != ARGS.client_secret:
        return obj({"error": "invalid_client", "error_description": "bad client credentials"},
                   401)
    if form.get("grant_type") != "authorization_code":
        return obj({"error": "unsupported_grant_type"}, 400)
    c = STATE.codes.pop(form.get("code", ""), None)
    if c is None:
        return obj({"error": "invalid_grant", "error_description": "unknown or used code"}, 400)
    if form.get("redirect_uri") != c["redirect_uri"]:
        return obj({"error": "invalid_grant", "error_description": "redirect_uri mismatch"}, 400)
    verifier = form.get("code_verifier", "")
    if not verifier or b64url(hashlib.sha256(verifier.encode()).digest()) != c["challenge"]:
        return obj({"error": "invalid_grant", "error_description": "PKCE verification failed"},
                   400)
    idt = ".".join([b64url(b'{"alg":"none"}'),
                    b64url(json.dumps({"iss": issuer(conn), "sub": "alice",
                                       "aud": CLIENT_ID}).encode()), ""])
    return obj({"access_token": "jwt-alice", "token_type": "Bearer", "expires_in": 3600,
                "scope": "openid profile", "id_token": idt})


# ------------------------------------------------------------------ faults --

def fault_for(req):
    """The fault dict that applies to req, or None (most specific first: route name)."""
    fs = STATE.faults
    if req["route"] in fs:
        return fs[req["route"]]
    for pat, f in fs.items():
        if pat.startswith("/") or "*" in pat:
            if fnmatch.fnmatchcase(req["path"], pat):
                return f
    return None


def fault_answer(req, f):
    """An Answer if the fault fails this request (consumes one fail_next)."""
    if f.get("down"):
        return Answer(0, action="reset")
    if f.get("fail_next", 0) <= 0:
        return None
    f["fail_next"] -= 1
    status = int(f.get("status", 503))
    kind = f.get("body", "json")
    if kind == "reset":
        return Answer(0, action="reset")
    if kind == "close":
        return Answer(0, action="close")
    if kind == "html":
        reason = REASONS.get(status, "Error")
        return Answer(status, f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n"
                      f"<body>\r\n<center><h1>{status} {reason}</h1></center>\r\n"
                      "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n", "text/html")
    if kind == "{}":
        return Answer(status, "{}", JSON_TYPE)
    if kind == "garbage":
        return Answer(status, '{"statusCode": 50, "message": "trunc', JSON_TYPE)
    if kind == "huge":
        n = int(f.get("huge_bytes", 8 << 20))
        head = '{"statusCode":%d,"message":"' % status
        return Answer(status, head + "x" * max(0, n - len(head) - 2) + '"}', JSON_TYPE)
    return error(req["target"], status, f.get("message", f"injected {status}"),
                 f.get("body_status"))


# ----------------------------------------------------------------- control --

def ctl_params(query, body):
    p = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if body.strip():
        p.update(json.loads(body))
    for k, v in list(p.items()):          # query strings: coerce simple values
        if isinstance(v, str):
            if v.lower() in ("true", "false"):
                p[k] = v.lower() == "true"
            elif re.fullmatch(r"-?\d+", v) and k not in ("id", "token", "port", "route",
                                                          "authToken", "key", "body"):
                p[k] = int(v)
    return p


SANDBOX_FIELDS = ("public", "authToken", "organizationId", "state", "runnerId", "snapshotRef",
                  "signingKey")


def control(path, query, body):
    p = ctl_params(query, body)
    S = STATE
    with S.lock:
        if path == "/_ctl/ping":
            return {"ok": True}
        if path == "/_ctl/reset":
            S.reset()
            return {"ok": True}
        if path == "/_ctl/log":
            return copy.deepcopy(S.log)
        if path == "/_ctl/faults":
            return copy.deepcopy(S.faults)
        if path == "/_ctl/activity":
            return dict(S.activity)
        if path == "/_ctl/sandboxes":
            return {k: {f: v[f] for f in ("id",) + SANDBOX_FIELDS} | {"state": sandbox_state(v)}
                    for k, v in S.data["sandboxes"].items()}
        if path == "/_ctl/fault":
            if p.get("clear") and "route" not in p:
                S.faults = {}
                return {"ok": True}
            r = p.pop("route")
            if p.pop("clear", False):
                S.faults.pop(r, None)
            else:
                S.faults[r] = p
            return {"ok": True, "faults": copy.deepcopy(S.faults)}
        if path == "/_ctl/sandbox":
            sid = p.pop("id")
            s = S.data["sandboxes"].get(sid)
            if s is None:
                s = {"id": sid, "public": False, "authToken": "tok-" + secrets.token_hex(8),
                     "organizationId": "o1", "state": "started", "runnerId": "r1",
                     "snapshotRef": None, "signingKey": secrets.token_urlsafe(24)[:32],
                     "starting_until": None}
                S.data["sandboxes"][sid] = s
            for k in SANDBOX_FIELDS:
                if k in p:
                    s[k] = p[k]
            if "state" in p:
                s["starting_until"] = None
            return {f: s[f] for f in ("id",) + SANDBOX_FIELDS}
        if path == "/_ctl/token":
            key = (p["token"], str(p["port"]))
            if p.get("revoke"):
                S.data["tokens"].pop(key, None)
            else:
                ttl = p.get("ttl_s")
                S.data["tokens"][key] = {"sandboxId": p["sandboxId"],
                                         "expires": None if ttl is None else time.time() + ttl}
            return {"ok": True}
        if path == "/_ctl/org":
            o = S.data["orgs"].setdefault(p["id"], {"id": p["id"], "previewWarningEnabled": False})
            if "previewWarningEnabled" in p:
                o["previewWarningEnabled"] = bool(p["previewWarningEnabled"])
            return dict(o)
        if path.startswith("/_ctl/rotate/"):
            s = S.data["sandboxes"].get(unquote(path[len("/_ctl/rotate/"):]))
            if s is None:
                raise KeyError("no such sandbox")
            s["signingKey"] = p.get("key") or secrets.token_urlsafe(24)[:32]
            return {"key": s["signingKey"]}
        if path == "/_ctl/set":
            for k, v in p.items():
                if k not in S.switches:
                    raise KeyError(f"unknown switch {k}")
                S.switches[k] = v
            return dict(S.switches)
    raise KeyError(f"unknown control {path}")


# -------------------------------------------------------------- connection --

def send_answer(conn, a, keep, seq=None):
    hs = [("Content-Length", str(len(a.body)))]
    if a.ctype:
        hs.append(("Content-Type", a.ctype))
    hs += a.headers
    if seq is not None:
        hs.append(("X-Api-Seq", str(seq)))
    if not keep:
        hs.append(("Connection", "close"))
    out = f"HTTP/1.1 {a.status} {REASONS.get(a.status, 'Status')}\r\n"
    out += "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    conn.send(out.encode("latin-1") + a.body)


def read_body(conn, headers):
    te = (hdr(headers, "transfer-encoding") or "").lower()
    if "chunked" in te:
        body = b""
        while True:
            size = int(conn.readline().split(b";")[0].strip(), 16)
            if size == 0:
                break
            body += conn.read(size)
            conn.read(2)
        while conn.readline() not in (b"\r\n", b"\n"):
            pass
        return body
    cl = hdr(headers, "content-length")
    return conn.read(int(cl)) if cl else b""


def handle_one(conn, nreq, method, target, version, headers, body):
    """Returns True to keep the connection open."""
    path, _, query = target.partition("?")
    ctoks = [t.strip().lower() for t in (hdr(headers, "connection") or "").split(",")]
    keep = version == "HTTP/1.1" and "close" not in ctoks

    if path.startswith("/_ctl/"):
        try:
            res, status = control(path, query, body.decode("utf-8")), 200
        except (KeyError, ValueError, TypeError) as e:
            res, status = {"error": f"{type(e).__name__}: {e}"}, 400
        send_answer(conn, obj(res, status), False)
        return False

    name, rmethod, args = match_route(method, path)
    q = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    req = {"method": method, "target": target, "path": path, "q": q, "headers": headers,
           "body": body, "route": name, "route_method": rmethod, "args": args}
    with STATE.lock:
        STATE.seq += 1
        ident = identity(headers)
        user_call = name in ("C3", "C8", "C9") and ident != "proxy"
        entry = {"seq": STATE.seq, "conn": conn.id, "conn_request": nreq, "method": method,
                 "path": path, "query": query, "target": target,
                 "headers": [list(h) for h in headers], "time": time.time(), "route": name,
                 "identity": "proxy" if ident == "proxy" else (ident["id"] if ident else None),
                 "xff": hdr(headers, "x-forwarded-for") if user_call else None,
                 "status": None, "fault": None}
        STATE.log.append(entry)
        f = fault_for(req)
        delay = (f or {}).get("delay_ms", 0)
    if delay:
        time.sleep(delay / 1000.0)
    with STATE.lock:
        a = fault_answer(req, f) if f else None
        if a is not None:
            entry["fault"] = a.action or a.status
        else:
            a = route(conn, req)
        entry["status"] = a.status if a.action is None else a.action
        if f and f.get("close"):
            keep = False
    if a.action == "reset":
        conn.reset()
        raise WasReset()
    if a.action == "close":
        return False
    send_answer(conn, a, keep, entry["seq"])
    return keep


def serve_conn(sock, addr):
    conn = Conn(sock)
    nreq = 0
    try:
        while True:
            line = conn.readline()
            if line in (b"\r\n", b"\n"):
                continue
            parts = line.rstrip(b"\r\n").decode("latin-1").split(" ")
            if len(parts) != 3:
                send_answer(conn, Answer(400, "bad request line", "text/plain"), False)
                break
            method, target, version = parts
            headers = []
            while True:
                h = conn.readline()
                if h in (b"\r\n", b"\n"):
                    break
                k, _, v = h.rstrip(b"\r\n").partition(b":")
                headers.append((k.decode("latin-1").strip(), v.strip().decode("latin-1")))
            body = read_body(conn, headers)
            nreq += 1
            if not handle_one(conn, nreq, method, target, version, headers, body):
                break
    except WasReset:
        return
    except (Closed, OSError, ValueError):
        pass
    conn.close()


def main():
    global ARGS, STATE
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--runner-url", required=True)
    ap.add_argument("--runner-key", default="rk-1")
    ap.add_argument("--proxy-key", default="pk")
    ap.add_argument("--client-secret", default="proxy-secret")
    ap.add_argument("--proxy-domain", default="proxy.test")
    ARGS = ap.parse_args()
    STATE = State()
    serve_tcp(ARGS.port, serve_conn)


if __name__ == "__main__":
    main()

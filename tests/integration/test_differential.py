"""Differential framing tests (issue 12, part 2; LESSONS B2, B7).

The same raw bytes (differential_cases.py: a few hundred malformed or
ambiguous requests, each alone and with a GET pipelined after it) go to the
proxy, to nginx and to HAProxy (the Debian packages, started here), each in
front of its own recording upstream with a strict RFC 9112 parser
(recorder.py). Rules:

1. The proxy never forwards a request that both nginx and HAProxy refuse: for
   each case it forwards at most as many requests as the more lenient of them.
2. Whatever the proxy forwards is framed by the strict recorder without error
   and is a prefix of what the client meant, request by request (method,
   target, body): no request is ever split in two, merged, or smuggled.
3. Each case where the proxy forwards more than one of them (it is looser than
   nginx or HAProxy) is listed with its reason in tests/DIFFERENTIAL.md.
   Cases where the proxy is stricter are counted, not listed.

The table of every case goes to tests/artifacts/differential.txt.
"""
import concurrent.futures
import fnmatch
import os
import re
import shutil
import socket
import subprocess
import tempfile

import pytest

from conftest import CRASH_MARKERS, DEFAULT_SETTINGS, Proxy
from differential_cases import all_cases
from helpers import ConnectionClosed, RawConn, free_port, port_is_listening, stop_proc, wait_until
from recorder import FrameError, Recorder, parse_request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ARTIFACTS = os.path.join(REPO, "tests", "artifacts")
EXPECTED = os.path.join(REPO, "tests", "DIFFERENTIAL.md")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
TARGETS = ("proxy", "nginx", "haproxy")
READ_TIMEOUT = 1.5     # per response: a server still waiting for bytes answers nothing
WORKERS = 32

MARKER_RE = re.compile(rb"dt-(\d{4})")


# ------------------------------------------------------ the recorder itself --

def test_recorder_frames_strictly():
    """The referee first: valid requests frame, ambiguous ones are errors."""
    ok = (b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"5;x=\"y\"\r\nhello\r\n0\r\nT: 1\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    req, used = parse_request(ok)
    assert (req["method"], req["target"], req["body"], req["trailers"]) == \
        ("POST", "/a", b"hello", [("T", "1")])
    assert parse_request(ok[used:])[0]["target"] == "/b"
    assert parse_request(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhel") is None
    for bad in [b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: h\nX: a\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: h\r\nX : a\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00\r\n\r\n",
                b"GET / HTTP/1.1\r\nX: a\r\n\r\n",
                b"GET /  HTTP/1.1\r\nHost: h\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"]:
        with pytest.raises(FrameError):
            parse_request(bad)


# --------------------------------------------------------------- the fronts --

def _nginx_conf(d, port, up):
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    # The proxy's limits (SPEC 9: 64 KiB of head, no body limit by default),
    # so that size settings do not pass for parsing differences.
    large_client_header_buffers 4 64k;
    client_max_body_size 0;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream recorder {{
        server 127.0.0.1:{up};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://recorder;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def _haproxy_conf(port, up):
    # Default strictness (no accept-invalid-http-request); keep-alive both ways.
    return f"""global
    maxconn 4096
    # room for the proxy's 64 KiB of head (SPEC 9); HAProxy's default is 16 KiB
    tune.bufsize 131072
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout http-request 10s
    timeout http-keep-alive 10s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server recorder 127.0.0.1:{up}
"""


def _start(args, log, port, what):
    with open(log, "ab") as f:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=f)

    def ready():
        if proc.poll() is not None:
            with open(log, "rb") as f:
                raise AssertionError(f"{what} exited with {proc.returncode}: {f.read()[-2000:]!r}")
        return port_is_listening(port)
    wait_until(ready, timeout=10, what=f"{what} listening on {port}")
    return proc


class Fronts:
    """The three servers under comparison, each with its own recorder."""

    def __init__(self, proxy_bin, tmp):
        self.rec = {t: Recorder(t) for t in TARGETS}
        self.procs = []
        self.proxy = None
        self.tmp = tmp
        try:
            self._start_all(proxy_bin, tmp)
        except BaseException:
            self.stop()
            raise

    def _start_all(self, proxy_bin, tmp):
        self.port = {}
        up = self.rec["proxy"].port
        # Direct mode: the app path reaches the recorder as sent, with the
        # client's Host; the port in the Host selects the recorder.
        self.host = f"{up}-dsb.proxy.test"
        self.port["proxy"] = free_port()
        lines = ["# generated by test_differential.py", f"listen 127.0.0.1:{self.port['proxy']}"]
        lines += [f"{k} {v}" for k, v in DEFAULT_SETTINGS.items() if v is not None]
        lines.append(f"sandbox dsb runner_url=http://127.0.0.1:{free_port()} runner_key=k "
                     f"org=org1 state=started public=1 direct=1 addr=127.0.0.1 ports={up}")
        conf = os.path.join(tmp, "proxy.conf")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        self.proxy = Proxy(proxy_bin, conf, os.path.join(tmp, "proxy.stderr"), self.port["proxy"],
                           env)
        self.proxy.start()

        self.port["nginx"] = free_port()
        nd = os.path.join(tmp, "nginx")
        os.makedirs(nd)
        with open(os.path.join(nd, "nginx.conf"), "w") as f:
            f.write(_nginx_conf(nd, self.port["nginx"], self.rec["nginx"].port))
        self.procs.append(_start([NGINX, "-p", nd, "-e", f"{nd}/error.log", "-c",
                                  f"{nd}/nginx.conf"], f"{nd}/stdout.log", self.port["nginx"],
                                 "nginx"))

        self.port["haproxy"] = free_port()
        hcfg = os.path.join(tmp, "haproxy.cfg")
        with open(hcfg, "w") as f:
            f.write(_haproxy_conf(self.port["haproxy"], self.rec["haproxy"].port))
        self.procs.append(_start([HAPROXY, "-db", "-f", hcfg], os.path.join(tmp, "haproxy.log"),
                                 self.port["haproxy"], "haproxy"))

    def stop_fronts(self):
        """Stops the proxy, nginx and HAProxy; returns the proxy's problems."""
        problems = []
        for p in self.procs:
            stop_proc(p)
        self.procs = []
        if self.proxy is not None and self.proxy.proc is not None:
            crashed = self.proxy.stop()
            text = self.proxy.log()
            if crashed is not None and crashed < 0:
                problems.append(f"proxy died from signal {-crashed}")
            for marker in CRASH_MARKERS:
                if marker in text:
                    i = text.index(marker)
                    problems.append(f"proxy stderr: {text[max(0, i - 200):i + 3000]}")
                    break
            self.proxy = None
        return problems

    def stop(self):
        problems = self.stop_fronts()
        for r in self.rec.values():
            r.stop()
        return problems


# ------------------------------------------------------------------ running --

def exchange(port, data, nresp, head):
    """Sends data on a fresh connection; reads up to nresp responses. Returns
    their statuses, then "closed" or "timeout" if that ended the reading."""
    out = []
    try:
        c = RawConn(port, timeout=READ_TIMEOUT)
    except OSError as e:
        return [f"connect failed: {e}"]
    with c:
        try:
            c.send(data)
        except OSError:
            pass
        for i in range(max(nresp, 1)):
            try:
                r = c.read_response(head_request=head and i == 0)
            except ConnectionClosed:
                out.append("closed")
                break
            except socket.timeout:
                out.append("timeout")
                break
            except (OSError, ValueError, IndexError) as e:
                out.append(f"unreadable: {type(e).__name__}")
                break
            out.append(r.status)
    return out


def origin_form(target):
    """The path and query of an absolute-form target (HAProxy passes that
    form on; an origin must accept it, RFC 9112 3.2.2), else the target."""
    m = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?]*", target)
    if m is None:
        return target
    rest = target[m.end():]
    return rest if rest.startswith("/") else "/" + rest


class Result:
    def __init__(self, idx, case, data, intended):
        self.idx = idx
        self.case = case
        self.data = data
        self.intended = intended
        self.resp = {}
        self.events = {t: [] for t in TARGETS}

    def reqs(self, t):
        return [e for e in self.events[t] if e["kind"] == "request"]

    def match(self, t):
        """(indexes of the intended requests that target t forwarded, the
        forwarded requests that match none): each forwarded request must be
        the next intended one or a later one, never a piece or a mix."""
        fwd, extra, j = [], [], 0
        want = [(m, origin_form(tg), b) for m, tg, b in self.intended]
        for e in self.reqs(t):
            k = j
            while k < len(want) and want[k] != (e["method"], origin_form(e["target"]), e["body"]):
                k += 1
            if k == len(self.intended):
                extra.append(e)
            else:
                fwd.append(k)
                j = k + 1
        return fwd, extra

    def fwd(self, t):
        return set(self.match(t)[0])

    def refused(self, t, j):
        """Target t read request j and did not forward it. A request after one
        that t refused is not counted: t's connection policy after a refusal
        (close, or go on) is not a framing decision."""
        f = self.fwd(t)
        return j not in f and all(i in f for i in range(j))

    def kinds(self, t):
        """What reached target t's upstream: R per intended request, X per
        request that was not meant, E per framing error, I per incomplete one."""
        extra = [id(e) for e in self.match(t)[1]]
        return "".join("X" if id(e) in extra else {"request": "R", "error": "E", "incomplete": "I"}[
            e["kind"]] for e in self.events[t]) or "-"

    def looser(self):
        """Requests the proxy forwards that nginx or HAProxy refuses."""
        return [j for j in sorted(self.fwd("proxy"))
                if self.refused("nginx", j) or self.refused("haproxy", j)]

    def both_refuse(self):
        """Requests the proxy forwards that nginx and HAProxy both refuse."""
        return [j for j in sorted(self.fwd("proxy"))
                if self.refused("nginx", j) and self.refused("haproxy", j)]

    def partial(self):
        """The proxy passed on the head of a request whose body it then found
        bad (or never got) while nginx and HAProxy both refused it: streaming
        has no other way, but each such case is listed."""
        if not any(e["kind"] == "incomplete" for e in self.events["proxy"]):
            return False
        j = min(set(range(len(self.intended))) - self.fwd("proxy"), default=None)
        return j is not None and self.refused("nginx", j) and self.refused("haproxy", j)

    def fwd_or_err(self, t):
        """fwd(t), plus the first request t did not forward if t's upstream
        got bytes its strict parser refused (t passed on something bad)."""
        f = self.fwd(t)
        if any(e["kind"] == "error" for e in self.events[t]):
            f = f | {min(set(range(len(self.intended))) - f, default=0)}
        return f

    def verdict(self):
        if self.looser():
            return "LOOSER"
        if self.partial():
            return "PARTIAL"
        p = self.fwd("proxy")
        both = self.fwd_or_err("nginx") & self.fwd_or_err("haproxy")
        either = self.fwd_or_err("nginx") | self.fwd_or_err("haproxy")
        mine = [j for j in range(len(self.intended)) if self.refused("proxy", j)]
        if any(j in both for j in mine):
            return "stricter"
        if any(j in either for j in mine):
            return "stricter-than-one"
        return "same" if p == both else "same-request"


def run_corpus(fronts):
    cases = all_cases()
    results = []
    for i, case in enumerate(cases):
        data, intended = case.fill(f"dt-{i:04d}", fronts.host)
        results.append(Result(i, case, data, intended))
    jobs = [(r, t) for r in results for t in TARGETS]

    def one(job):
        r, t = job
        r.resp[t] = exchange(fronts.port[t], r.data, len(r.intended), r.case.head)

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, jobs))
    # Stopping the fronts closes their upstream connections: every recorder
    # then has all it will ever get (a partial request becomes "incomplete").
    problems = fronts.stop_fronts()
    for t in TARGETS:
        rec = fronts.rec[t]
        wait_until(rec.quiet, timeout=10, what=f"{t} recorder done")
        for ev in rec.take():
            ids = {int(m) for m in MARKER_RE.findall(ev["raw"])}
            if not ids:
                problems.append(f"{t} upstream got bytes of no case: {ev['raw'][:300]!r}")
            for i in ids:
                if i < len(results):
                    results[i].events[t].append(ev)
                else:
                    problems.append(f"{t} upstream got an unknown marker: {ev['raw'][:300]!r}")
    return results, problems


def load_expected():
    """Names (fnmatch patterns) listed in DIFFERENTIAL.md's table of cases
    where the proxy forwards what nginx or HAProxy refuses."""
    names = []
    in_section = False
    with open(EXPECTED) as f:
        for line in f:
            if line.startswith("## "):
                in_section = line.strip().lower().startswith("## looser")
            m = re.match(r"\|\s*`([^`]+)`\s*\|", line)
            if in_section and m:
                names.append(m.group(1))
    return names


def write_table(results, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    counts = {}
    for r in results:
        counts[r.verdict()] = counts.get(r.verdict(), 0) + 1
    with open(path, "w") as f:
        f.write(f"# differential framing run: {len(results)} cases; "
                + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "\n")
        f.write("# per target: responses to the client | upstream saw "
                "(R request, E framing error, I incomplete, - nothing)\n")
        for r in results:
            cols = [f"{t}={','.join(map(str, r.resp.get(t, [])))}|{r.kinds(t)}" for t in TARGETS]
            f.write(f"{r.case.name:45} {r.verdict():18} " + "  ".join(f"{c:28}" for c in cols)
                    + "\n")
    return counts


# ----------------------------------------------------------------- fixture --

@pytest.fixture(scope="module")
def corpus(proxy_bin):
    for exe in (NGINX, HAPROXY):
        if not os.access(exe, os.X_OK):
            pytest.fail(f"{exe} is missing (make test-deps installs nginx-light and haproxy)")
    tmp = tempfile.mkdtemp(prefix="differential-")
    fronts = Fronts(proxy_bin, tmp)
    try:
        results, problems = run_corpus(fronts)
    finally:
        problems_stop = fronts.stop()
    counts = write_table(results, os.path.join(ARTIFACTS, "differential.txt"))
    shutil.rmtree(tmp, ignore_errors=True)
    return results, problems + problems_stop, counts


def _show(r):
    return (f"{r.case.name}: sent {r.data[:300]!r}\n  "
            + "\n  ".join(f"{t}: responses {r.resp.get(t)} upstream {r.kinds(t)} "
                          f"{[(e.get('method'), e.get('target', '')[:80], e.get('body', b'')[:60], e.get('why')) for e in r.events[t]]}"
                          for t in TARGETS))


def test_fronts_healthy(corpus):
    """No crash, no stray bytes; the controls pass through all three."""
    results, problems, _ = corpus
    assert problems == []
    by_name = {r.case.name: r for r in results}
    for name in ("cl.plain", "te.lower", "pipe.two_gets", "pipe.post_then_get", "sem.head"):
        r = by_name[name]
        for t in TARGETS:
            assert r.fwd(t) == set(range(len(r.intended))), _show(r)


def test_never_forwards_what_both_refuse(corpus):
    results, _, _ = corpus
    bad = [r for r in results if r.both_refuse() or r.match("proxy")[1]]
    assert bad == [], "\n".join(_show(r) for r in bad)


def test_forwarded_requests_frame_as_meant(corpus):
    results, _, _ = corpus
    bad = []
    for r in results:
        errs = [e for e in r.events["proxy"] if e["kind"] == "error"]
        if errs or r.match("proxy")[1]:
            bad.append(_show(r) + f"\n  intended {r.intended}")
    assert bad == [], "\n".join(bad)


def test_disagreements_are_listed(corpus):
    results, _, counts = corpus
    expected = load_expected()
    looser = [r for r in results if r.verdict() in ("LOOSER", "PARTIAL")]
    unlisted = [r for r in looser if not any(fnmatch.fnmatchcase(r.case.name, p) for p in expected)]
    assert unlisted == [], ("the proxy forwards what nginx or HAProxy refuses; fix it or list it "
                            "in tests/DIFFERENTIAL.md:\n" + "\n".join(_show(r) for r in unlisted))
    with open(EXPECTED) as f:
        stated = re.search(r"^Cases: (\d+)$", f.read(), re.M)
    assert stated and int(stated.group(1)) == len(results), \
        f"tests/DIFFERENTIAL.md states the number of cases: now {len(results)}"
    stale = [p for p in expected if not any(fnmatch.fnmatchcase(r.case.name, p) for r in looser)]
    assert stale == [], f"listed in tests/DIFFERENTIAL.md but no longer looser: {stale}"
    print(f"differential: {len(results)} cases, {counts}")

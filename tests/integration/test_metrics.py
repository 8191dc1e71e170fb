"""The operator metrics on metrics_listen (issue 14 item 5): known traffic
moves exactly the counters it should (requests by route kind and status class,
the upstream latency histogram, auth outcomes, WebSockets, HTTP/2 streams,
Redis and API errors), label values come from a fixed set (no hosts, no
sandbox IDs), and a real Prometheus (Debian's `prometheus`) scrapes the
endpoint and answers PromQL queries with the counters the test generated.

Waits are bounded polls; nothing sleeps to synchronise."""
import asyncio
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import requests
import websockets

from helpers import (BASE_DOMAIN, PRIV, PRIV_TOKEN, PUB, PUB_TOKEN, free_port, host,
                     start_server, stop_proc, wait_until)
from tlsfix import H2Client

WSPUB = "wsmetrics"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def scrape(mport):
    r = requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=5)
    assert r.status_code == 200, r
    return r.text


def parse(text):
    """{(name, labels): value} and {family: type}; asserts the exposition is
    well formed: each sample's family has one # TYPE and one # HELP before it."""
    samples, types, helps = {}, {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, fam, typ = line.split(" ", 3)
            assert fam not in types, f"two TYPE lines for {fam}"
            types[fam] = typ
            continue
        if line.startswith("# HELP "):
            helps.add(line.split(" ", 3)[2])
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        fam = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
                fam = name[:-len(suffix)]
        assert fam in types, f"{name} has no # TYPE line before it"
        assert fam in helps, f"{name} has no # HELP line before it"
        assert name.startswith("preview_proxy_"), name
        assert (name, labels) not in samples, f"duplicate sample {name}{labels}"
        samples[(name, labels)] = float(value)
    return samples, types


def delta(before, after):
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def req(route, cls):
    return ("preview_proxy_requests_total", f'{{route="{route}",class="{cls}"}}')


def auth(outcome):
    return ("preview_proxy_auth_total", f'{{outcome="{outcome}"}}')


@pytest.fixture(scope="module")
def ws_echo():
    proc, port = start_server("ws_echo.py")
    yield port
    stop_proc(proc)


@pytest.fixture
def mproxy(proxy, dead_port):
    mport = free_port()
    common = f"runner_url=http://127.0.0.1:{dead_port} runner_key=rk org=org1 state=started direct=1"
    p = proxy(extra=[f"metrics_listen 127.0.0.1:{mport}"],
              sandboxes=[f"sandbox {WSPUB} {common} public=1 auth_token=tok-wsm-1"])
    p.mport = mport
    return p


async def ws_echo_once(port, hostname):
    async with websockets.connect(f"ws://{hostname}:{port}/echo", host="127.0.0.1", port=port,
                                  open_timeout=10, close_timeout=5, ping_interval=None,
                                  compression=None) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5) == "hello"


def histogram(samples, name):
    buckets = sorted(((float("inf") if m.group(1) == "+Inf" else float(m.group(1))), v)
                     for (n, lab), v in samples.items() if n == name + "_bucket"
                     for m in [re.match(r'\{le="([^"]+)"\}', lab)])
    return buckets, samples[(name + "_count", "")], samples[(name + "_sum", "")]


def test_known_traffic_moves_exact_counters(mproxy, runner, ws_echo):
    p = mproxy
    before, types = parse(scrape(p.mport))
    assert types["preview_proxy_upstream_response_seconds"] == "histogram"
    assert types["preview_proxy_requests_total"] == "counter"
    assert types["preview_proxy_open_connections"] == "gauge"

    assert p.get("/a", host=host(3000, PUB)).status_code == 200            # preview 2xx, public
    assert p.get("/nope").status_code == 404                                # no route: other 4xx
    assert p.get("/a", host=host(3000, PRIV)).status_code == 401            # preview 4xx, refused
    assert p.get("/a", host=host(3000, PRIV),
                 headers={"X-Daytona-Preview-Token": PRIV_TOKEN}).status_code == 200
    assert p.get(f"/a?DAYTONA_SANDBOX_AUTH_KEY={PRIV_TOKEN}",
                 host=host(3000, PRIV)).status_code == 200                  # token_query
    assert p.get(f"/toolbox/{PUB}/files", headers={"X-Daytona-Preview-Token": PUB_TOKEN}
                 ).status_code == 200                                       # toolbox 2xx
    assert p.get("/health").status_code == 200
    asyncio.run(asyncio.wait_for(ws_echo_once(p.port, host(ws_echo, WSPUB)), 30))
    with H2Client(p.port, tls=False) as c:                                  # one h2c stream
        st = c.get("/h2", host(3000, PUB), scheme="http")
        assert st.status == 200
        mid, _ = parse(scrape(p.mport))
        assert mid[("preview_proxy_open_connections", '{kind="h2"}')] == 1
    # The access log line (which counts) is written as the exchange ends: wait
    # for the last one instead of sleeping.
    wait_until(lambda: parse(scrape(p.mport))[0][req("preview", "2xx")]
               - before[req("preview", "2xx")] == 4, timeout=5, what="h2 request counted")
    after, _ = parse(scrape(p.mport))
    d = delta(before, after)

    assert d.get(req("preview", "2xx")) == 4, d   # PUB, PRIV header, PRIV query, h2
    assert d.get(req("preview", "4xx")) == 1, d
    assert d.get(req("preview", "1xx")) == 1, d   # the WebSocket's 101
    assert d.get(req("toolbox", "2xx")) == 1, d
    assert d.get(req("other", "4xx")) == 1, d
    assert d.get(req("health", "2xx")) == 1, d
    req_keys = {k for k in d if k[0] == "preview_proxy_requests_total"}
    assert req_keys == {req("preview", "2xx"), req("preview", "4xx"), req("preview", "1xx"),
                        req("toolbox", "2xx"), req("other", "4xx"), req("health", "2xx")}, d

    assert d.get(auth("public")) == 3, d          # PUB, the WebSocket, h2
    assert d.get(auth("token_header")) == 2, d    # PRIV and the toolbox call
    assert d.get(auth("token_query")) == 1, d
    assert d.get(auth("refused_401")) == 1, d
    assert {k for k in d if k[0] == "preview_proxy_auth_total"} == {
        auth("public"), auth("token_header"), auth("token_query"), auth("refused_401")}, d

    assert d.get(("preview_proxy_websockets_total", "")) == 1, d
    assert d.get(("preview_proxy_h2_streams_total", "")) == 1, d
    assert d.get(("preview_proxy_h2_connections_total", "")) == 1, d
    assert d.get(("preview_proxy_connections_accepted_total", "")) == 10, d  # 9 sockets + 1 stream
    # Six responses came from an upstream: 4 previews, the toolbox call, the 101.
    assert d.get(("preview_proxy_upstream_response_seconds_count", "")) == 6, d
    buckets, count, total = histogram(after, "preview_proxy_upstream_response_seconds")
    assert len(buckets) == 15 and buckets[-1][0] == float("inf")
    values = [v for _, v in buckets]
    assert values == sorted(values), buckets            # cumulative: never decreasing
    assert values[-1] == count and total > 0
    assert after[("preview_proxy_redis_failovers_total", "")] == 0
    # Gauges are back down once everything closed.
    wait_until(lambda: parse(scrape(p.mport))[0][("preview_proxy_open_connections",
                                                   '{kind="websocket"}')] == 0,
               timeout=5, what="the tunnel gone from the gauge")
    # Labels are a fixed vocabulary: nothing of the requests leaks into them.
    text = scrape(p.mport)
    for leak in (PUB, PRIV, WSPUB, BASE_DOMAIN, PRIV_TOKEN, "nope", "toolbox/"):
        assert leak not in text, leak


def test_redis_and_api_errors_are_counted(proxy, dead_port):
    """Redis unreachable: each lookup that needed it is an error; the API
    unreachable (API mode): each lookup that asked it is an API error."""
    mport = free_port()
    p = proxy(settings={"redis": f"127.0.0.1:{dead_port}"},
              extra=[f"metrics_listen 127.0.0.1:{mport}"], default_sandboxes_too=False)
    before, _ = parse(scrape(mport))
    assert p.get("/", host=host(3000, "nosuchsbx")).status_code == 503
    d = delta(before, parse(scrape(mport))[0])
    assert d.get(("preview_proxy_redis_errors_total", '{reason="error"}'), 0) >= 1, d
    assert d.get(auth("unavailable_503")) == 1, d

    mport2 = free_port()
    p2 = proxy(settings={"api_url": f"http://127.0.0.1:{dead_port}/api",
                         "api_key": "k-metrics-test"},
               extra=[f"metrics_listen 127.0.0.1:{mport2}"], default_sandboxes_too=False)
    before, _ = parse(scrape(mport2))
    assert p2.get("/", host=host(3000, "nosuchsbx")).status_code == 503
    d = delta(before, parse(scrape(mport2))[0])
    assert d.get(("preview_proxy_api_errors_total", ""), 0) >= 1, d
    assert d.get(auth("unavailable_503")) == 1, d


# ------------------------------------------------------------ prometheus --

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def test_real_prometheus_scrapes_and_answers_promql(mproxy, runner, tmp_path):
    """Debian's prometheus scrapes metrics_listen every second; its query API
    returns the counters the test generated."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.fail("prometheus is not installed (make test installs TEST_PKGS)")
    p = mproxy
    for _ in range(3):
        assert p.get("/a", host=host(3000, PUB)).status_code == 200
    assert p.get("/a", host=host(3000, PRIV)).status_code == 401
    want_2xx = parse(scrape(p.mport))[0][req("preview", "2xx")]
    assert want_2xx == 3

    port = free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: preview-proxy
    static_configs:
      - targets: ['127.0.0.1:{p.mport}']
""")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={conf}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}",
                             "--storage.tsdb.retention.time=1h"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    api = f"http://127.0.0.1:{port}/api/v1/query"

    def query(q):
        try:
            r = requests.get(api, params={"query": q}, timeout=2)
        except requests.RequestException:
            return None
        if r.status_code != 200:
            return None
        res = r.json()["data"]["result"]
        return float(res[0]["value"][1]) if res else None

    try:
        def answered():
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            return query('preview_proxy_requests_total{route="preview",class="2xx"}') == want_2xx
        wait_until(answered, timeout=30, interval=0.2, what="prometheus returning the counter")
        assert query('up{job="preview-proxy"}') == 1       # the exposition parsed
        assert query('preview_proxy_auth_total{outcome="refused_401"}') == 1
        assert query('preview_proxy_auth_total{outcome="public"}') == 3
        assert query('sum(preview_proxy_requests_total{route="preview"})') == 4
        assert query("preview_proxy_upstream_response_seconds_count") == 3
        q = 'histogram_quantile(0.5, preview_proxy_upstream_response_seconds_bucket)'
        v = query(q)
        assert v is not None and 0 < v <= 60, v
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()

#!/usr/bin/env bash
# bench/callgrind.sh — user-space instructions per request, the proxy and
# nginx doing the same routing, in the same run (issue 13's measure).
#
# For each server and case, the server runs twice under
# `valgrind --tool=callgrind`, once for N1 and once for N2 requests sent by
# bench/reqs.py; Ir per request = (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up,
# the first connections and shutdown cancel out. Instruction counts do not
# move with machine load the way req/s does (bench/README.md). System calls
# and the kernel's work are not counted.
#
# Cases: ka1k (keep-alive, 1 KiB), close1k (a new connection per request,
# Connection: close), ka1m (keep-alive, 1 MiB), h2c (HTTP/2 prior knowledge,
# one connection, 10 streams at a time, 1 KiB; h2load). Servers: proxy (file config,
# public direct sandbox, access_log off, workers 1) and nginx (one process,
# access_log off, the same headers set as bench/run.sh's nginx target,
# upstream keepalive 128). The upstream nginx runs natively.
#
# Environment: CG_N1 (500), CG_N2 (4500), CG_CASES ("ka1k close1k ka1m"),
# CG_SERVERS ("proxy nginx"), BENCH_PROXY (build/preview-proxy), CG_KEEP=1.
# ka1m uses N1/10 and N2/10 requests (each moves 1 MiB twice).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROXY_BIN=${BENCH_PROXY:-$ROOT/build/preview-proxy}
N1=${CG_N1:-500}
N2=${CG_N2:-4500}
read -r -a CASES <<<"${CG_CASES:-ka1k close1k ka1m h2c}"
read -r -a SERVERS <<<"${CG_SERVERS:-proxy nginx}"
RUNNER_KEY=benchkey
command -v nginx >/dev/null 2>&1 || PATH=$PATH:/usr/sbin
for c in valgrind nginx; do command -v $c >/dev/null || { echo "callgrind.sh: $c missing" >&2; exit 1; }; done
[ -x "$PROXY_BIN" ] || { echo "callgrind.sh: $PROXY_BIN missing (make)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/preview-cg.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${CG_KEEP:-0}" = 1 ]; then echo "[cg] work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((10000 + RANDOM % 20000))
        port_busy "$p" || { echo "$p"; return 0; }
    done
    echo "no free port" >&2; exit 1
}
# wait_port PORT PID — until PORT accepts or PID dies (valgrind starts slowly).
wait_port() {
    for _ in $(seq 600); do
        port_busy "$1" && return 0
        kill -0 "$2" 2>/dev/null || { echo "[cg] pid $2 died before listening on $1" >&2; return 1; }
        sleep 0.05
    done
    echo "[cg] nothing on port $1 after 30 s" >&2; return 1
}

# ---- upstream: nginx serving /1k.txt and /1m.txt, natively
UP_PORT=$(free_port)
mkdir -p "$WORK/up/www" "$WORK/up/logs"
head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/up/www/1k.txt"
head -c 1048576 /dev/zero | tr '\0' 'x' >"$WORK/up/www/1m.txt"
chmod -R a+rX "$WORK/up"
nginx_http_common="access_log off; default_type text/plain; sendfile on; tcp_nopush on;
    keepalive_requests 1000000; keepalive_timeout 60s;"
cat >"$WORK/up/nginx.conf" <<EOF
worker_processes 1; daemon off; master_process off;
pid $WORK/up/nginx.pid; error_log $WORK/up/logs/error.log warn;
events { worker_connections 4096; }
http { $nginx_http_common
    server { listen 127.0.0.1:$UP_PORT backlog=4096; root $WORK/up/www; location / { } } }
EOF
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" >"$WORK/up/stderr" 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT" $!
HOSTHDR="$UP_PORT-demo.proxy.localhost"

# ---- servers under test
# start_SERVER PORT OUTFILE — starts it under callgrind as a child of this
# shell (so `wait` works), its pid in SPID.
start_proxy() {
    cat >"$WORK/proxy.conf" <<EOF
listen 127.0.0.1:$1
access_log off
workers 1
sandbox demo runner_url=http://127.0.0.1:9 runner_key=$RUNNER_KEY public=1 direct=1 addr=127.0.0.1
EOF
    valgrind --tool=callgrind --callgrind-out-file="$2" "$PROXY_BIN" -c "$WORK/proxy.conf" \
        >"$2.log" 2>&1 &
    SPID=$!
}
start_nginx() {
    mkdir -p "$WORK/ngx/logs"
    cat >"$WORK/ngx/nginx.conf" <<EOF
worker_processes 1; daemon off; master_process off;
pid $WORK/ngx/nginx.pid; error_log $WORK/ngx/logs/error.log warn;
events { worker_connections 4096; }
http { $nginx_http_common
    upstream sb_$UP_PORT { server 127.0.0.1:$UP_PORT; keepalive 128;
        keepalive_requests 1000000; keepalive_timeout 30s; }
    server { listen 127.0.0.1:$1 default_server backlog=4096 $NGX_H2; return 404; }
    server {
        listen 127.0.0.1:$1 $NGX_H2;
        server_name ~^(?<port>\\d+)-(?<sb>[^.]+)\\.proxy\\.localhost\$;
        location / {
            proxy_pass http://sb_\$port;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Daytona-Authorization "Bearer $RUNNER_KEY";
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF
    valgrind --tool=callgrind --callgrind-out-file="$2" nginx -p "$WORK/ngx" \
        -c "$WORK/ngx/nginx.conf" >"$2.log" 2>&1 &
    SPID=$!
}

# ir SERVER CASE N — total Ir of one run of SERVER answering N requests
# (run in a subshell: the server is its child; cleanup below if it fails).
ir() {
    local server=$1 case=$2 n=$3 port out pid path mode
    port=$(free_port)
    out="$WORK/cg.$server.$case.$n"
    NGX_H2=; [ "$case" = h2c ] && NGX_H2=http2  # nginx 1.22: h2c prior knowledge only
    start_"$server" "$port" "$out"
    pid=$SPID
    wait_port "$port" "$pid" || { cat "$out.log" >&2; kill "$pid"; exit 1; }
    case $case in
    ka1k) path=/1k.txt mode=keepalive ;;
    close1k) path=/1k.txt mode=close ;;
    ka1m) path=/1m.txt mode=keepalive ;;
    h2c) path=/1k.txt mode=h2c ;;
    esac
    if [ "$mode" = h2c ]; then
        # one connection, 10 streams at a time, prior knowledge; every answer 2xx
        h2load -n "$n" -c 1 -m 10 -H ":authority: $HOSTHDR" "http://127.0.0.1:$port$path" \
            >"$out.client" 2>&1 && grep -q "succeeded, 0 failed, 0 errored" "$out.client" \
            && grep -q "status codes: $n 2xx" "$out.client" \
            || { echo "[cg] $server $case: h2load failed" >&2; cat "$out.client" >&2; kill "$pid"; exit 1; }
    else
        /usr/bin/python3 "$ROOT/bench/reqs.py" 127.0.0.1 "$port" "$HOSTHDR" "$path" "$n" "$mode" \
            || { echo "[cg] $server $case: client failed" >&2; kill "$pid"; exit 1; }
    fi
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true  # callgrind writes its file on exit
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

printf '%-8s %-8s %10s %10s %12s\n' server case N1 N2 Ir/request
for case in "${CASES[@]}"; do
    n1=$N1 n2=$N2
    [ "$case" = ka1m ] && n1=$((N1 / 10)) n2=$((N2 / 10))
    for server in "${SERVERS[@]}"; do
        a=$(ir "$server" "$case" "$n1")
        b=$(ir "$server" "$case" "$n2")
        printf '%-8s %-8s %10d %10d %12d\n' "$server" "$case" "$n1" "$n2" $(((b - a) / (n2 - n1)))
    done
done

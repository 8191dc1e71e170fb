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
# Environment: CG_N1 (500), CG_N2 (4500), CG_CASES ("ka1k close1k ka1m h2c"),
# CG_SERVERS ("proxy nginx"), BENCH_PROXY (build/preview-proxy), CG_KEEP=1.
# ka1m uses N1/10 and N2/10 requests (each moves 1 MiB twice).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROXY_BIN=${BENCH_PROXY:-$ROOT/build/preview-proxy}
N1=${CG_N1:-500}
N2=${CG_N2:-4500}
read -r -a CASES <<<"${CG_CASES:-ka1k close1k ka1m h2c}"
read -r -a SERVERS <<<"${CG_SERVERS:-proxy nginx}"
TAG=cg
. "$ROOT/bench/servers.sh"
for c in valgrind nginx; do command -v $c >/dev/null || { echo "callgrind.sh: $c missing" >&2; exit 1; }; done
[ -x "$PROXY_BIN" ] || { echo "callgrind.sh: $PROXY_BIN missing (make)" >&2; exit 1; }

bench_work "${CG_KEEP:-0}"

start_upstream

# ir SERVER CASE N — total Ir of one run of SERVER answering N requests
# (run in a subshell: the server is its child; cleanup below if it fails).
ir() {
    local server=$1 case=$2 n=$3 port out pid
    port=$(free_port)
    out="$WORK/cg.$server.$case.$n"
    WRAP=(valgrind --tool=callgrind --callgrind-out-file="$out")
    start_"$server" "$port" "$out" "$case"
    pid=$SPID
    wait_port "$port" "$pid" || { cat "$out.log" >&2; kill "$pid"; exit 1; }
    send_requests "$case" "$n" "$port" "$out" || { echo "[cg] $server $case failed" >&2; kill "$pid"; exit 1; }
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

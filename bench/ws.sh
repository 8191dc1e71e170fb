#!/usr/bin/env bash
# bench/ws.sh — WebSocket cost of the preview proxy: memory per idle tunnel and
# echo throughput through the proxy vs the same echo server reached directly.
#
# Starts on 127.0.0.1, in a temporary work dir, killed on exit:
#   - bench/ws_load.c (compiled here with cc): a C epoll echo server (101, then
#     echoes bytes) and the C load generator (raw sockets, masked frames);
#   - the proxy (access_log off, workers 1), sandbox in direct mode.
# Then
#   1. idle: opens WS_IDLE_CONNS (10000) WebSockets through the proxy, holds
#      them, and reports (VmRSS with N open − VmRSS before) / N — both sockets
#      of each tunnel included — and the proxy's descriptor count;
#   2. echo: WS_CONNS (50) connections, each sending a WS_SIZE-byte binary frame
#      and waiting for its echo, for WS_SECS (10) s, direct then proxy, repeated
#      WS_ROUNDS (1) times; prints messages/s, MB/s (payload one way) and
#      proxy/direct. The proxy runs on CPU WS_CPU_PROXY (0), the load generator
#      and the echo server on WS_CPU_LOAD (1) in both modes, so direct and
#      proxy runs give the load side the same CPU (set WS_PIN=0 to not pin).
# Every step is bounded by `timeout`. Targets: ≤ 5 KiB per idle WebSocket and
# ≥ 0.8 of direct throughput.
set -euo pipefail

IDLE_CONNS=${WS_IDLE_CONNS:-10000}
CONNS=${WS_CONNS:-50}
SECS=${WS_SECS:-10}
SIZE=${WS_SIZE:-1024}
ROUNDS=${WS_ROUNDS:-1}
PIN=${WS_PIN:-1}
CPU_PROXY=${WS_CPU_PROXY:-0}
CPU_LOAD=${WS_CPU_LOAD:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROXY_BIN=${BENCH_PROXY:-$ROOT/build/preview-proxy}

log() { printf '[ws-bench] %s\n' "$*" >&2; }
die() { printf '[ws-bench] FATAL: %s\n' "$*" >&2; exit 1; }

# 2 descriptors per tunnel in the proxy (and one each in client and server)
need_fds=$((IDLE_CONNS * 2 + 1024))
ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || ulimit -n "$need_fds" 2>/dev/null \
    || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WANTED_IDLE=$IDLE_CONNS
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need_fds" ]; then
    # the hard limit could not be raised (no CAP_SYS_RESOURCE): fit the proxy under it
    IDLE_CONNS=$(( ($(ulimit -n) - 200) / 2 ))
    [ "$IDLE_CONNS" -ge 100 ] || die "ulimit -n is $(ulimit -n): too low"
    log "ulimit -n is $(ulimit -n) and cannot be raised: $IDLE_CONNS idle WebSockets instead of $WANTED_IDLE"
fi

if [ ! -x "$PROXY_BIN" ]; then
    log "building $PROXY_BIN"
    make -C "$ROOT" build/preview-proxy >&2
fi
command -v cc >/dev/null || die "cc not found (apt-get install build-essential)"

WORK=$(mktemp -d /tmp/ws-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ "${WS_KEEP:-0}" = 1 ] && log "work dir kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

cc -O2 -Wall -o "$WORK/ws_load" "$ROOT/bench/ws_load.c" || die "cannot compile bench/ws_load.c"

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIN_LOAD=(); PIN_PROXY=()
if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -gt 1 ]; then
    PIN_LOAD=(taskset -c "$CPU_LOAD"); PIN_PROXY=(taskset -c "$CPU_PROXY")
else
    PIN=0
fi
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listening on $1"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
nfds() { ls "/proc/$1/fd" | wc -l; }

SRV_PORT=$(free_port)
PROXY_PORT=$(free_port)
"${PIN_LOAD[@]}" "$WORK/ws_load" server "$SRV_PORT" >"$WORK/server.log" 2>&1 &
PIDS+=($!)
wait_port "$SRV_PORT"

cat >"$WORK/proxy.conf" <<EOF
listen 127.0.0.1:$PROXY_PORT
domains proxy.test
access_log off
workers 1
preview_warning off
ws_idle_timeout 3600
sandbox bench runner_url=http://127.0.0.1:9 runner_key=benchkey public=1 direct=1 org=bench state=started
EOF
# (direct mode refuses the runner URL's own port, SPEC 9: 403 PORT_NOT_ALLOWED;
# port 9 is never contacted, as in bench/run.sh)
"${PIN_PROXY[@]}" "$PROXY_BIN" -c "$WORK/proxy.conf" >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=($PROXY_PID)
wait_port "$PROXY_PORT"
HOST="$SRV_PORT-bench.proxy.test"
DIRECT_HOST="127.0.0.1:$SRV_PORT"

# nginx as the same WebSocket proxy (1 worker, same CPU as ours), for context:
# what any proxy in the path costs on this machine and topology.
NGINX_PORT=""
if command -v nginx >/dev/null; then
    NGINX_PORT=$(free_port)
    mkdir -p "$WORK/nginx/logs"
    cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $WORK/nginx/error.log;
pid $WORK/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://127.0.0.1:$SRV_PORT;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }
    }
}
EOF
    "${PIN_PROXY[@]}" nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" >/dev/null 2>&1 &
    PIDS+=($!)
    wait_port "$NGINX_PORT"
fi

# one round trip each way, so both paths work before anything is measured
timeout 20 "$WORK/ws_load" echo "$PROXY_PORT" "$HOST" 2 1 64 >/dev/null || die "no echo through the proxy: $(tail -5 "$WORK/proxy.log")"
timeout 20 "$WORK/ws_load" echo "$SRV_PORT" "$DIRECT_HOST" 2 1 64 >/dev/null || die "no direct echo"

# ---------------------------------------------------------------- 1. idle
sleep 0.5
rss0=$(rss_kib "$PROXY_PID"); fd0=$(nfds "$PROXY_PID")
log "idle: opening $IDLE_CONNS WebSockets through the proxy (RSS before: $rss0 KiB, $fd0 fds)"
mkfifo "$WORK/hold"
timeout 180 "$WORK/ws_load" idle "$PROXY_PORT" "$HOST" "$IDLE_CONNS" <"$WORK/hold" >"$WORK/idle.out" 2>"$WORK/idle.err" &
IDLE_PID=$!
PIDS+=($IDLE_PID)
exec 7>"$WORK/hold"   # holds the connections open until closed
for _ in $(seq 1200); do
    grep -q READY "$WORK/idle.out" 2>/dev/null && break
    kill -0 "$IDLE_PID" 2>/dev/null || die "idle client failed: $(cat "$WORK/idle.err")"
    sleep 0.1
done
grep -q READY "$WORK/idle.out" || die "idle client not ready after 120 s: $(cat "$WORK/idle.err")"
sleep 2
rss1=$(rss_kib "$PROXY_PID"); fd1=$(nfds "$PROXY_PID")
open_secs=$(awk '/READY/ {print $3}' "$WORK/idle.out")
per_conn=$(awk -v a="$rss0" -v b="$rss1" -v n="$IDLE_CONNS" 'BEGIN {printf "%.2f", (b - a) / n}')
exec 7>&-
wait "$IDLE_PID" 2>/dev/null || true
for _ in $(seq 100); do [ "$(nfds "$PROXY_PID")" -le "$fd0" ] && break; sleep 0.1; done
rss2=$(rss_kib "$PROXY_PID"); fd2=$(nfds "$PROXY_PID")
kill -0 "$PROXY_PID" 2>/dev/null || die "proxy died during the idle test: $(tail -20 "$WORK/proxy.log")"

# ---------------------------------------------------------------- 2. echo
declare -A MSGS MBS
run_echo() { # run_echo NAME PORT HOST
    local out
    out=$(timeout $((SECS + 60)) "${PIN_LOAD[@]}" "$WORK/ws_load" echo "$2" "$3" "$CONNS" "$SECS" "$SIZE") \
        || die "echo run $1 failed: $out"
    local m b
    m=$(sed -n 's/.*msgs_per_s=\([0-9.]*\).*/\1/p' <<<"$out")
    b=$(sed -n 's/.*MB_per_s=\([0-9.]*\).*/\1/p' <<<"$out")
    log "echo $1: $m msg/s, $b MB/s"
    MSGS[$1]="${MSGS[$1]:-} $m"; MBS[$1]="${MBS[$1]:-} $b"
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
t_before=$(cpu_ticks "$PROXY_PID")
for _ in $(seq "$ROUNDS"); do
    run_echo direct "$SRV_PORT" "$DIRECT_HOST"
    run_echo proxy "$PROXY_PORT" "$HOST"
    if [ -n "$NGINX_PORT" ]; then run_echo nginx "$NGINX_PORT" "$HOST"; fi
done
t_after=$(cpu_ticks "$PROXY_PID")
kill -0 "$PROXY_PID" 2>/dev/null || die "proxy died during the echo test"

dm=$(median <<<"${MSGS[direct]}"); pm=$(median <<<"${MSGS[proxy]}")
db=$(median <<<"${MBS[direct]}"); pb=$(median <<<"${MBS[proxy]}")
ratio=$(awk -v a="$pm" -v b="$dm" 'BEGIN {printf "%.2f", a / b}')
nm=""; nb=""; nratio="n/a"; pn="n/a"
if [ -n "$NGINX_PORT" ]; then
    nm=$(median <<<"${MSGS[nginx]}"); nb=$(median <<<"${MBS[nginx]}")
    nratio=$(awk -v a="$nm" -v b="$dm" 'BEGIN {printf "%.2f", a / b}')
    pn=$(awk -v a="$pm" -v b="$nm" 'BEGIN {printf "%.2f", a / b}')
fi
hz=$(getconf CLK_TCK)
proxy_cpu=$(awk -v t=$((t_after - t_before)) -v hz="$hz" -v r="$ROUNDS" -v s="$SECS" 'BEGIN {printf "%.0f", 100 * t / hz / (r * s)}')

cat <<EOF
WebSocket benchmark, $(date -u +%Y-%m-%d), $(nproc) CPUs, $(uname -r)
idle WebSockets through the proxy:  $IDLE_CONNS open in ${open_secs}s (asked: $WANTED_IDLE; ulimit -n $(ulimit -n))
  proxy RSS before / with all open / after closing: $rss0 / $rss1 / $rss2 KiB
  proxy fds before / open / after:                 $fd0 / $fd1 / $fd2
  RSS per idle WebSocket:                          $per_conn KiB   (target <= 5)
echo, $CONNS connections, $SIZE-byte binary frames, ${SECS}s x $ROUNDS round(s) (medians):
  direct: $dm msg/s  $db MB/s
  proxy:  $pm msg/s  $pb MB/s   (proxy CPU while busy: ${proxy_cpu}% of one core)
  nginx:  ${nm:-n/a} msg/s  ${nb:-n/a} MB/s   (nginx as the same WebSocket proxy, same CPU)
  proxy/direct: $ratio   (target >= 0.8)   nginx/direct: $nratio   proxy/nginx: $pn
load generator: bench/ws_load.c (C, epoll, one thread) + its C echo server, pinned to CPU $CPU_LOAD (WS_PIN=$PIN); proxy on CPU $CPU_PROXY
EOF

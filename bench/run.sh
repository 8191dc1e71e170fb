#!/usr/bin/env bash
# bench/run.sh — throughput and tail latency of the preview proxy, against
# the same upstream reached directly and through nginx doing the same routing.
#
# One run starts everything it needs on 127.0.0.1 (an upstream nginx serving a
# 1 KiB file, our proxy in file, Redis and TLS configurations, nginx reverse
# proxies over HTTP/1.1, TLS + HTTP/2 and h2c, a redis-server), runs
# BENCH_ROUNDS interleaved rounds of wrk / h2load / openssl s_time against
# every target, prints one row per run, the medians and the ratios, and kills
# everything it started on exit. See bench/README.md.
#
# Environment (all optional):
#   BENCH_DURATION   wrk -d / h2load -D / s_time -time per run     (10s)
#   BENCH_ROUNDS     interleaved rounds                   (3)
#   BENCH_WARMUP     untimed warm-up per target, 0 = none (2s)
#   BENCH_THREADS    wrk -t                               (1)
#   BENCH_CONNS      wrk -c                               (50)
#   BENCH_NOISE_PCT  a run is "noisy" when processes not ours took more
#                    than this % of a pinned CPU                  (10)
#   BENCH_RETRIES    times a noisy run is repeated before it counts (1)
#   BENCH_H2_CLIENTS, BENCH_H2_STREAMS  h2load -c, -m                  (10, 10)
#   BENCH_HS_CLIENTS parallel `openssl s_time -new` loops (handshake)  (8)
#   BENCH_TARGETS    targets, in order                    ($DEFAULT_TARGETS: all 15)
#   BENCH_RATIOS     A/B pairs to report                  ($DEFAULT_RATIOS)
#   BENCH_CPU_SERVER   CPU for the proxy under test and nginx-as-proxy   (0)
#   BENCH_CPU_CLIENT   CPU for wrk                                       (1)
#   BENCH_CPU_UPSTREAM CPU for the upstream nginx                        (1)
#   BENCH_PROXY      proxy binary (build/preview-proxy; built with make if missing)
#   BENCH_KEEP=1     keep the work dir (configs, logs, raw wrk output)
#   BENCH_MANY       e.g. "1000 5000": instead of the targets, run the
#                    many-sandboxes case for each count (see "case: many")
#   BENCH_MANY_DURATION  wrk -d per count in that case            (5s)
#
# Adding a target NAME (see the "target:" sections below):
#   setup_NAME         start what it needs, once; may call other setup_*
#                      functions, which are idempotent
#   check_NAME         one request that must succeed, before and after load
#   load_NAME OUTFILE  one bounded load run, raw tool output to OUTFILE
#   parse_NAME OUTFILE (only if the tool is not wrk) print
#                      "rps p99_ms requests errors", like parse_wrk
#   optional: warm_NAME (untimed warm-up), pid_NAME (server pid, checked
#   for crashes after each run), log_NAME (server log shown on problems)
# then list NAME in BENCH_TARGETS (and pairs in BENCH_RATIOS).
#   BENCH_MODE=callgrind  instead of the load runs, instructions per request
#                    under callgrind, proxy and nginx (bench/callgrind.sh)
set -euo pipefail

if [ "${BENCH_MODE:-}" = callgrind ]; then
    exec "$(dirname "${BASH_SOURCE[0]}")/callgrind.sh" "$@"
fi

DURATION=${BENCH_DURATION:-10s}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-2s}
THREADS=${BENCH_THREADS:-1}
CONNS=${BENCH_CONNS:-50}
NOISE_PCT=${BENCH_NOISE_PCT:-10}
RETRIES=${BENCH_RETRIES:-1}
DEFAULT_TARGETS="direct proxy nginx public_redis private cookie api_mode h2tls nginx_h2tls h2c nginx_h2c handshake nginx_handshake resume nginx_resume"
DEFAULT_RATIOS="proxy/direct proxy/nginx public_redis/proxy private/public_redis cookie/public_redis api_mode/public_redis h2tls/nginx_h2tls h2c/nginx_h2c handshake/nginx_handshake resume/nginx_resume"
read -r -a TARGETS <<<"${BENCH_TARGETS:-$DEFAULT_TARGETS}"
read -r -a RATIOS <<<"${BENCH_RATIOS:-$DEFAULT_RATIOS}"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROXY_BIN=${BENCH_PROXY:-$ROOT/build/preview-proxy}
SANDBOX=demo
RUNNER_KEY=benchkey
# The sandboxes of the standalone targets are direct (SPEC 9): the proxy
# connects to addr (127.0.0.1) on the port named in Host (the upstream's) and
# refuses the runner's own port there (403 PORT_NOT_ALLOWED), so the runner
# URL must name another port; nothing is ever sent to it.
DIRECT_RUNNER_URL=http://127.0.0.1:9
FILE_PATH=/1k.txt
FILE_SIZE=1024
BIG_PATH=/1m.txt # the *_1m targets (issue 13: large bodies)
BIG_SIZE=1048576

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] FATAL: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
need_cmd() { # need_cmd CMD DEBIAN_PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    log "$1 missing: installing Debian package $2"
    local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "$2" >/dev/null
    command -v "$1" >/dev/null 2>&1 || die "could not install $2"
}
need_cmd wrk wrk
need_cmd curl curl
command -v nginx >/dev/null 2>&1 || PATH=$PATH:/usr/sbin
need_cmd nginx nginx-light

# ---------------------------------------------------------------- CPU pinning
# Two cores: the server under test (our proxy, or nginx as a proxy) gets CPU 0
# to itself; the load generator and the upstream share CPU 1. Both of those do
# the same work whatever the target, so the comparison stays fair, and the
# thing being compared is never disturbed by the client. CPU 1 is saturated in
# the "direct" runs, so direct is a ceiling, not a proxy-free cost; the
# srv_us/req column (CPU time of the server's own processes per request) is
# the cost measure that does not depend on which CPU is the bottleneck.
# BENCH_CPU_UPSTREAM=0 instead makes the proxy share CPU 0 with the upstream.
NCPU=$(nproc 2>/dev/null || echo 1)
CPU_SERVER=${BENCH_CPU_SERVER:-0}
CPU_CLIENT=${BENCH_CPU_CLIENT:-1}
CPU_UPSTREAM=${BENCH_CPU_UPSTREAM:-1}
if command -v taskset >/dev/null 2>&1 && [ "$NCPU" -ge 2 ]; then
    PINNED=1
    PINNING="server=cpu$CPU_SERVER wrk=cpu$CPU_CLIENT upstream=cpu$CPU_UPSTREAM"
else
    PINNED=0
    PINNING="none (taskset missing or fewer than 2 CPUs)"
fi

# ---------------------------------------------------------------- processes
WORK=$(mktemp -d /tmp/preview-bench.XXXXXX)
chmod 755 "$WORK"   # nginx workers run as nobody when started by root
PIDS=()             # each started with setsid: pid == process group id

cleanup() {
    local rc=$? pid _
    trap - EXIT INT TERM
    [ -z "${CLIENT_PID:-}" ] || kill -TERM "$CLIENT_PID" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ "${BENCH_KEEP:-0}" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# pinned CPU CMD... — run CMD on that CPU when pinning is on.
pinned() {
    local cpu=$1; shift
    if [ "$PINNED" = 1 ]; then taskset -c "$cpu" "$@"; else "$@"; fi
}

# spawn NAME LOGFILE CPU CMD... — start CMD pinned to CPU in its own process
# group, remember it (PID_NAME, and its CPU for the interference measure).
declare -A GROUP_CPU
PID_upstream='' PID_proxy='' PID_nginxproxy=''
spawn() {
    local name=$1 logf=$2 cpu=$3; shift 3
    if [ "$PINNED" = 1 ]; then set -- taskset -c "$cpu" "$@"; fi
    setsid "$@" >"$logf" 2>&1 </dev/null &   # setsid, taskset: exec, same pid
    local pid=$!
    PIDS+=("$pid")
    GROUP_CPU[$pid]=$cpu
    eval "PID_$name=$pid"
}

alive() { kill -0 "$1" 2>/dev/null; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port below the ephemeral range (so no outgoing connection can hold it)
# that no socket, listening or not, uses.
free_port() {
    local lo p _
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || lo=32768
    [ "$lo" -gt 12000 ] || lo=32768
    for _ in $(seq 200); do
        p=$((10000 + RANDOM % (lo - 10000)))
        if ! port_busy "$p" && ! ss -Htan 2>/dev/null | awk '{print $4}' | grep -q ":$p\$"; then
            echo "$p"; return 0
        fi
    done
    die "no free port found"
}

# wait_port PORT PID LOGFILE — until PORT accepts connections or PID dies.
wait_port() {
    local port=$1 pid=$2 logf=$3 _
    for _ in $(seq 100); do
        if port_busy "$port"; then
            sleep 0.2; alive "$pid" && return 0
        fi
        alive "$pid" || { tail -n 20 "$logf" >&2; die "process $pid exited before listening on $port"; }
        sleep 0.1
    done
    tail -n 20 "$logf" >&2
    die "nothing listening on $port after 10 s"
}

# ---------------------------------------------------------------- nginx helpers
# nginx_conf NAME LISTEN_PORT SERVER_BLOCKS — one worker, no daemon, no logs,
# keep-alive that does not expire during a run (the default keepalive_requests
# of 1000 would make every 1000th request reconnect).
nginx_conf() {
    local name=$1 port=$2 body=$3 dir=$WORK/$1
    mkdir -p "$dir/logs" "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
    access_log off;
    default_type text/plain;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
$body
}
EOF
}

start_nginx() { # start_nginx NAME PORT CPU
    local name=$1 port=$2 cpu=$3
    local dir=$WORK/$name
    nginx -t -q -c "$dir/nginx.conf" -p "$dir" 2>"$dir/logs/test.log" \
        || { cat "$dir/logs/test.log" >&2; die "nginx config $name rejected"; }
    spawn "$name" "$dir/logs/stderr.log" "$cpu" nginx -c "$dir/nginx.conf" -p "$dir"
    local pidvar=PID_$name
    wait_port "$port" "${!pidvar}" "$dir/logs/stderr.log"
    log "$name: nginx on 127.0.0.1:$port (pid ${!pidvar})"
}

# ---------------------------------------------------------------- upstream
UP_PORT=
setup_upstream() {
    [ -n "$UP_PORT" ] && return 0
    UP_PORT=$(free_port)
    mkdir -p "$WORK/upstream/www"
    head -c "$FILE_SIZE" /dev/zero | tr '\0' 'x' >"$WORK/upstream/www$FILE_PATH"
    head -c "$BIG_SIZE" /dev/zero | tr '\0' 'x' >"$WORK/upstream/www$BIG_PATH"
    chmod -R a+rX "$WORK/upstream"
    nginx_conf upstream "$UP_PORT" "
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        root $WORK/upstream/www;
        location / { }
    }"
    start_nginx upstream "$UP_PORT" "$CPU_UPSTREAM"
}

PREVIEW_HOST() { echo "$UP_PORT-$SANDBOX.proxy.localhost"; }

# ---------------------------------------------------------------- load tools
# client CMD... — run a load generator pinned to the client CPU, in the
# background so that a signal to this script is handled at once (bash defers
# traps while a foreground child runs); cleanup() kills it.
# CLIENT_TICKS: CPU ticks the last client used (from the shell's children
# rusage, which counts it once it has been waited for).
CLIENT_PID=
CLIENT_TICKS=0
children_ticks() { # `times` must run in this shell, not in a $(...) subshell
    awk -v hz="$CLK_TCK" 'NR == 2 { t = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
        printf "%d", t * hz }' "$1"
}
client() {
    local rc=0
    times >"$WORK/times.before"
    pinned "$CPU_CLIENT" "$@" &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=
    times >"$WORK/times.after"
    CLIENT_TICKS=$(( $(children_ticks "$WORK/times.after") - $(children_ticks "$WORK/times.before") ))
    return "$rc"
}

# run_wrk OUTFILE URL [wrk args...] — one measured run. wrk counts statuses
# >= 400 as "Non-2xx or 3xx responses"; a Lua response() hook would catch the
# rest but slows wrk down a lot, so instead every target also gets a full curl
# check (status 200 and the exact body size) before the load and after each run.
run_wrk() {
    local out=$1 url=$2; shift 2
    client wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@" "$url" >"$out" 2>&1
}

# snap FILE — CPU counters now: "cpu cpuN busy total" per CPU from /proc/stat
# and "pg PGID ticks" (user+system ticks of the live processes of each process
# group). run_stats BEFORE AFTER SERVER_PGID prints, for the time between:
#   busy%  of the server CPU and of the client CPU (which side was saturated)
#   ticks  used by the server's process group (master and workers): divided by
#          the requests, the server's CPU cost per request, meaningful even when
#          the server is not the bottleneck (though it rises a little when
#          other processes share its CPU and caches)
#   other% of each pinned CPU used (user+system, irq time left out) by
#          processes that are not ours: another
#          user of this shared machine disturbing the run ("-" on a CPU where
#          nothing of ours ran, e.g. the server CPU in "direct" runs)
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
snap() {
    {
        # cpu NAME busy total task: task = user + nice + system, without the
        # irq/softirq time that our own loopback traffic causes
        awk '/^cpu[0-9]/ { t = 0; for (i = 2; i <= NF; i++) t += $i
                          print "cpu", $1, t - $5 - $6, t, $2 + $3 + $4 }' /proc/stat
        { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
            s = $0; sub(/^.*\) /, "", s); split(s, f, " ")   # f[1] = field 3 (state)
            print "pg", f[3], f[12] + f[13] }'                  # pgrp, utime + stime
    } >"$1"
}
run_stats() { # run_stats BEFORE AFTER SERVER_PGID CLIENT_TICKS
    local before=$1 after=$2 spid=${3:-none} cticks=${4:-0} groups=" " pid
    for pid in "${PIDS[@]}"; do groups+="$pid:${GROUP_CPU[$pid]} "; done
    awk -v cs="cpu$CPU_SERVER" -v cc="cpu$CPU_CLIENT" -v spid="$spid" -v groups="$groups" \
        -v cticks="$cticks" -v pinned="$PINNED" '
        FNR == 1 { k++ }
        $1 == "cpu" { busy[k, $2] = $3; tot[k, $2] = $4; task[k, $2] = $5 }
        $1 == "pg"  { pg[k, $2] += $3 }
        function d(a, c) { x = a[2, c] - a[1, c]; return x > 0 ? x : 0 }
        function pct(c) { return d(tot, c) > 0 ? 100 * d(busy, c) / d(tot, c) : 0 }
        function other(c,   o, i, n, g, pc) {     # busy time on c not used by us
            if (!pinned || d(tot, c) == 0) return "-"
            n = split(groups, g, " "); o = 0
            for (i = 1; i <= n; i++) { split(g[i], pc, ":"); if ("cpu" pc[2] == c) o += d(pg, pc[1]) }
            if (c == cc) o += cticks
            if (100 * o / d(tot, c) < 2) return "-"   # nothing of ours ran there
            o = 100 * (d(task, c) - o) / d(tot, c)
            return sprintf("%.0f", o > 0 ? o : 0)
        }
        END { printf "%.0f %.0f %d %s %s\n", pct(cs), pct(cc), d(pg, spid), other(cs), other(cc) }' "$before" "$after"
}
# group_rss_mb PGID — resident memory of a process group now, in MiB (a
# server that grows from run to run is leaking).
PAGE_KB=$(( $(getconf PAGESIZE 2>/dev/null || echo 4096) / 1024 ))
group_rss_mb() {
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v g="$1" -v kb="$PAGE_KB" '{
        s = $0; sub(/^.*\) /, "", s); split(s, f, " ")
        if (f[3] == g) r += f[22] }                          # field 24: rss pages
        END { printf "%.1f", r * kb / 1024 }'
}
us_per_req() { # us_per_req TICKS REQUESTS
    awk -v d="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0 ? d * 1e6 / hz / n : 0) }'
}

warm_wrk() { # warm_wrk URL [wrk args...]
    [ "$WARMUP" = 0 ] && return 0
    local url=$1; shift
    client wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$@" "$url" >/dev/null 2>&1 || true
}

to_ms() { # wrk duration (123.45us, 1.2ms, 1.01s, 2m) -> milliseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}

# parse_wrk OUTFILE -> "rps p99_ms requests errors"; errors = non-2xx/3xx
# responses + socket errors (connect, read, write, timeout).
parse_wrk() {
    local f=$1 rps p99 reqs non2xx sock
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    p99=$(awk '$1 == "99%" {print $2}' "$f")
    reqs=$(awk '/requests in/ {print $1}' "$f")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f")
    sock=$(awk -F'[ ,]+' '/Socket errors:/ {print $4 + $6 + $8 + $10}' "$f")
    [ -n "$rps" ] && [ -n "$p99" ] || return 1
    echo "$rps $(to_ms "$p99") ${reqs:-0} $(( ${non2xx:-0} + ${sock:-0} ))"
}

# check_http NAME URL [curl args...] — one request must give 200 and the file
# (CHECK_SIZE bytes, FILE_SIZE unless set).
check_http() {
    local name=$1 url=$2; shift 2
    local out=$WORK/check-$name.body code size
    code=$(curl -sS -o "$out" -w '%{http_code}' --max-time 5 "$@" "$url") || code=000
    size=$(stat -c %s "$out" 2>/dev/null || echo 0)
    if [ "$code" != 200 ] || [ "$size" != "${CHECK_SIZE:-$FILE_SIZE}" ]; then
        log "$name: check failed: HTTP $code, $size bytes from $url"
        head -c 600 "$out" >&2 2>/dev/null || true; echo >&2
        return 1
    fi
}

# ---------------------------------------------------------------- target: direct
setup_direct() { setup_upstream; }
url_direct() { echo "http://127.0.0.1:$UP_PORT$FILE_PATH"; }
check_direct() { check_http direct "$(url_direct)"; }
load_direct() { run_wrk "$1" "$(url_direct)"; }
warm_direct() { warm_wrk "$(url_direct)"; }
pid_direct() { echo "$PID_upstream"; }
log_direct() { echo "$WORK/upstream/logs/error.log"; }

# ---------------------------------------------------------------- target: proxy
PROXY_PORT=
setup_proxy() {
    [ -n "$PROXY_PORT" ] && return 0
    setup_upstream
    if [ ! -x "$PROXY_BIN" ]; then
        [ -z "${BENCH_PROXY:-}" ] || die "BENCH_PROXY=$PROXY_BIN is not executable"
        log "building the proxy (make in $ROOT)"
        make -C "$ROOT" >"$WORK/make.log" 2>&1 || { tail -n 30 "$WORK/make.log" >&2; die "make failed"; }
        [ -x "$PROXY_BIN" ] || die "make did not produce $PROXY_BIN"
    fi
    PROXY_PORT=$(free_port)
    mkdir -p "$WORK/proxy"
    cat >"$WORK/proxy/proxy.conf" <<EOF
listen 127.0.0.1:$PROXY_PORT
access_log off
workers 1
sandbox $SANDBOX runner_url=$DIRECT_RUNNER_URL runner_key=$RUNNER_KEY public=1 direct=1 addr=127.0.0.1
EOF
    "$PROXY_BIN" -t -c "$WORK/proxy/proxy.conf" >"$WORK/proxy/configtest.log" 2>&1 \
        || { cat "$WORK/proxy/configtest.log" >&2; die "preview-proxy -t rejected the config"; }
    spawn proxy "$WORK/proxy/stderr.log" "$CPU_SERVER" "$PROXY_BIN" -c "$WORK/proxy/proxy.conf"
    wait_port "$PROXY_PORT" "$PID_proxy" "$WORK/proxy/stderr.log"
    log "proxy: $PROXY_BIN (built $(date -u -r "$PROXY_BIN" '+%Y-%m-%d %H:%M:%SZ'), tree at $(git -C "$ROOT" log -1 --format=%h 2>/dev/null || echo '?')) on 127.0.0.1:$PROXY_PORT (pid $PID_proxy)"
}
url_proxy() { echo "http://127.0.0.1:$PROXY_PORT$FILE_PATH"; }
check_proxy() { check_http proxy "$(url_proxy)" -H "Host: $(PREVIEW_HOST)"; }
load_proxy() { run_wrk "$1" "$(url_proxy)" -H "Host: $(PREVIEW_HOST)"; }
warm_proxy() { warm_wrk "$(url_proxy)" -H "Host: $(PREVIEW_HOST)"; }
pid_proxy() { echo "$PID_proxy"; }
log_proxy() { echo "$WORK/proxy/stderr.log"; }

# died_how PID — exit status or signal of a dead server we spawned.
died_how() {
    local rc=0
    wait "$1" 2>/dev/null || rc=$?
    if [ "$rc" -gt 128 ]; then echo "killed by signal $((rc - 128)) ($(kill -l "$((rc - 128))" 2>/dev/null))"
    else echo "exit status $rc"; fi
}

# ---------------------------------------------------------------- target: nginx
# nginx as the proxy: same host-based routing ({port}-{sandbox}.proxy.localhost
# -> 127.0.0.1:{port}) and the same request headers as ours (Host kept,
# X-Daytona-Authorization, X-Forwarded-*, X-Request-Id). proxy_pass to a
# named upstream block "sb_{port}" keeps the routing driven by the Host header
# while giving a keep-alive pool (proxy_pass http://127.0.0.1:$port has none).
NGINX_PORT=
setup_nginx() {
    [ -n "$NGINX_PORT" ] && return 0
    setup_upstream
    NGINX_PORT=$(free_port)
    nginx_conf nginxproxy "$NGINX_PORT" "
    upstream sb_$UP_PORT {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;  # = the proxy's upstream_keepalive default
        keepalive_requests 1000000;
        keepalive_timeout 30s;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT default_server backlog=4096;
        return 404;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        server_name ~^(?<port>\\d+)-(?<sb>[^.]+)\\.proxy\\.localhost\$;
        location / {
            proxy_pass http://sb_\$port;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Daytona-Authorization \"Bearer $RUNNER_KEY\";
            proxy_set_header X-Request-Id \$request_id;
        }
    }"
    start_nginx nginxproxy "$NGINX_PORT" "$CPU_SERVER"
}
url_nginx() { echo "http://127.0.0.1:$NGINX_PORT$FILE_PATH"; }
check_nginx() { check_http nginx "$(url_nginx)" -H "Host: $(PREVIEW_HOST)"; }
load_nginx() { run_wrk "$1" "$(url_nginx)" -H "Host: $(PREVIEW_HOST)"; }
warm_nginx() { warm_wrk "$(url_nginx)" -H "Host: $(PREVIEW_HOST)"; }
pid_nginx() { echo "$PID_nginxproxy"; }
log_nginx() { echo "$WORK/nginxproxy/logs/error.log"; }

# ---------------------------------------------------------------- targets: proxy_1m, nginx_1m, proxy_close, nginx_close
# The proxy and nginx targets above with a 1 MiB file over keep-alive (`_1m`),
# and with the 1 KiB file on a new connection per request (`_close`: wrk
# reconnects after each answer to `Connection: close`). Same servers.
# same_server NEW BASE — NEW runs on BASE's server: its setup, pid and log.
same_server() { eval "setup_$1() { setup_$2; }; pid_$1() { pid_$2; }; log_$1() { log_$2; }"; }
same_server proxy_1m proxy
same_server nginx_1m nginx
same_server proxy_close proxy
same_server nginx_close nginx
check_proxy_1m() { CHECK_SIZE=$BIG_SIZE check_http proxy_1m "http://127.0.0.1:$PROXY_PORT$BIG_PATH" -H "Host: $(PREVIEW_HOST)"; }
load_proxy_1m() { run_wrk "$1" "http://127.0.0.1:$PROXY_PORT$BIG_PATH" -H "Host: $(PREVIEW_HOST)"; }
warm_proxy_1m() { warm_wrk "http://127.0.0.1:$PROXY_PORT$BIG_PATH" -H "Host: $(PREVIEW_HOST)"; }
check_nginx_1m() { CHECK_SIZE=$BIG_SIZE check_http nginx_1m "http://127.0.0.1:$NGINX_PORT$BIG_PATH" -H "Host: $(PREVIEW_HOST)"; }
load_nginx_1m() { run_wrk "$1" "http://127.0.0.1:$NGINX_PORT$BIG_PATH" -H "Host: $(PREVIEW_HOST)"; }
warm_nginx_1m() { warm_wrk "http://127.0.0.1:$NGINX_PORT$BIG_PATH" -H "Host: $(PREVIEW_HOST)"; }
check_proxy_close() { check_proxy; }
load_proxy_close() { run_wrk "$1" "$(url_proxy)" -H "Host: $(PREVIEW_HOST)" -H 'Connection: close'; }
warm_proxy_close() { warm_wrk "$(url_proxy)" -H "Host: $(PREVIEW_HOST)" -H 'Connection: close'; }
check_nginx_close() { check_nginx; }
load_nginx_close() { run_wrk "$1" "$(url_nginx)" -H "Host: $(PREVIEW_HOST)" -H 'Connection: close'; }
warm_nginx_close() { warm_wrk "$(url_nginx)" -H "Host: $(PREVIEW_HOST)" -H 'Connection: close'; }

# ---------------------------------------------------------------- shared helpers for the targets below
# secs DURATION — wrk-style duration (10s, 2m, 10) in whole seconds, at least 1.
secs() {
    awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "m") n *= 60; else if (u == "h") n *= 3600; else if (u == "ms") n /= 1000
        n = int(n + 0.5); print (n < 1 ? 1 : n) }'
}

# check_proto NAME EXPECTED_HTTP_VERSION URL [curl args...] — like check_http,
# and the response must also have come over that HTTP version (2 for h2/h2c).
check_proto() {
    local name=$1 want=$2 url=$3; shift 3
    local out=$WORK/check-$name.body res code ver size
    res=$(curl -sS -o "$out" -w '%{http_code} %{http_version}' --max-time 5 "$@" "$url") || res="000 -"
    read -r code ver <<<"$res"
    size=$(stat -c %s "$out" 2>/dev/null || echo 0)
    if [ "$code" != 200 ] || [ "$ver" != "$want" ] || [ "$size" != "$FILE_SIZE" ]; then
        log "$name: check failed: HTTP $code over HTTP/$ver (want $want), $size bytes from $url"
        head -c 600 "$out" >&2 2>/dev/null || true; echo >&2
        return 1
    fi
}

# build_proxy — make build/preview-proxy if it is missing.
build_proxy() {
    [ -x "$PROXY_BIN" ] && return 0
    [ -z "${BENCH_PROXY:-}" ] || die "BENCH_PROXY=$PROXY_BIN is not executable"
    log "building the proxy (make in $ROOT)"
    make -C "$ROOT" build/preview-proxy >"$WORK/make.log" 2>&1 || { tail -n 30 "$WORK/make.log" >&2; die "make failed"; }
    [ -x "$PROXY_BIN" ] || die "make did not produce $PROXY_BIN"
}

# start_proxy NAME CONF WAIT_PORT — config test, then start pinned to the server CPU.
start_proxy() {
    local name=$1 conf=$2 port=$3 dir pidvar
    dir=$(dirname "$conf")
    build_proxy
    "$PROXY_BIN" -t -c "$conf" >"$dir/configtest.log" 2>&1 \
        || { cat "$dir/configtest.log" >&2; die "preview-proxy -t rejected $conf"; }
    spawn "$name" "$dir/stderr.log" "$CPU_SERVER" "$PROXY_BIN" -c "$conf"
    pidvar=PID_$name
    wait_port "$port" "${!pidvar}" "$dir/stderr.log"
    log "$name: preview-proxy on 127.0.0.1:$port (pid ${!pidvar})"
}

# ---------------------------------------------------------------- Redis (for public_redis, private, cookie)
REDIS_PORT=
PID_redis=''
setup_redis() {
    [ -n "$REDIS_PORT" ] && return 0
    need_cmd redis-server redis-server
    need_cmd redis-cli redis-tools
    setup_upstream
    REDIS_PORT=$(free_port)
    mkdir -p "$WORK/redis"
    # like the upstream: a backend, on the upstream's CPU
    spawn redis "$WORK/redis/stderr.log" "$CPU_UPSTREAM" redis-server --bind 127.0.0.1 \
        --port "$REDIS_PORT" --save '' --appendonly no --dir "$WORK/redis"
    wait_port "$REDIS_PORT" "$PID_redis" "$WORK/redis/stderr.log"
    local r=(redis-cli -h 127.0.0.1 -p "$REDIS_PORT")
    "${r[@]}" HSET sandbox:priv runner_url "$DIRECT_RUNNER_URL" addr 127.0.0.1 runner_key "$RUNNER_KEY" \
        public 0 auth_token "$PREVIEW_TOKEN" direct 1 >/dev/null
    "${r[@]}" HSET sandbox:demo runner_url "$DIRECT_RUNNER_URL" addr 127.0.0.1 runner_key "$RUNNER_KEY" \
        public 1 direct 1 >/dev/null
    "${r[@]}" SET "sandbox:signed-preview-url-token:$UP_PORT:$SIGNED_TOKEN" priv >/dev/null
    log "redis: redis-server on 127.0.0.1:$REDIS_PORT (pid $PID_redis): sandbox:priv (private), sandbox:demo (public), signed token for port $UP_PORT"
}
PREVIEW_TOKEN=benchtok
SIGNED_TOKEN=abcdefgh12345678

# ---------------------------------------------------------------- the Redis-mode proxy
# A second preview-proxy, configured from Redis (standalone mode) instead of
# `sandbox` lines: records are looked up in Redis and cached for cache_ttl
# (3 s), so in a run nearly every request is answered from the warm cache.
PROXYR_PORT=
PID_proxyr=''
setup_proxyr() {
    [ -n "$PROXYR_PORT" ] && return 0
    setup_redis
    PROXYR_PORT=$(free_port)
    mkdir -p "$WORK/proxyr"
    cat >"$WORK/proxyr/proxy.conf" <<EOF
listen 127.0.0.1:$PROXYR_PORT
access_log off
workers 1
redis 127.0.0.1:$REDIS_PORT
cookie_secret benchsecret
EOF
    start_proxy proxyr "$WORK/proxyr/proxy.conf" "$PROXYR_PORT"
}
url_proxyr() { echo "http://127.0.0.1:$PROXYR_PORT$FILE_PATH"; }
pid_proxyr() { echo "$PID_proxyr"; }
log_proxyr() { echo "$WORK/proxyr/stderr.log"; }

# ---------------------------------------------------------------- target: public_redis
# The public sandbox "demo", from Redis: the baseline of private and cookie.
setup_public_redis() { setup_proxyr; }
host_public_redis() { echo "$UP_PORT-demo.proxy.localhost"; }
check_public_redis() { check_http public_redis "$(url_proxyr)" -H "Host: $(host_public_redis)"; }
load_public_redis() { run_wrk "$1" "$(url_proxyr)" -H "Host: $(host_public_redis)"; }
warm_public_redis() { warm_wrk "$(url_proxyr)" -H "Host: $(host_public_redis)"; }
pid_public_redis() { pid_proxyr; }
log_public_redis() { log_proxyr; }

# ---------------------------------------------------------------- target: private
# The private sandbox "priv", authenticated by X-Daytona-Preview-Token.
setup_private() {
    setup_proxyr
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $(host_private)" "$(url_proxyr)") || code=000
    [ "$code" = 401 ] || die "private: without the token the proxy answered $code, not 401: the sandbox is not private"
}
host_private() { echo "$UP_PORT-priv.proxy.localhost"; }
check_private() {
    check_http private "$(url_proxyr)" -H "Host: $(host_private)" -H "X-Daytona-Preview-Token: $PREVIEW_TOKEN"
}
load_private() {
    run_wrk "$1" "$(url_proxyr)" -H "Host: $(host_private)" -H "X-Daytona-Preview-Token: $PREVIEW_TOKEN"
}
warm_private() {
    warm_wrk "$(url_proxyr)" -H "Host: $(host_private)" -H "X-Daytona-Preview-Token: $PREVIEW_TOKEN"
}
pid_private() { pid_proxyr; }
log_private() { log_proxyr; }

# ---------------------------------------------------------------- target: cookie
# The signed-preview-URL path: the host label is a signed token; one request
# without a cookie is authenticated by the token and gets the HMAC auth cookie
# daytona-sandbox-auth-{token}; the load then sends that cookie, which the
# proxy verifies (HMAC, revocation marker, the sandbox it names) on every
# request. A response carrying Set-Cookie again would mean the cookie was not
# what authenticated it, so the check refuses that.
COOKIE=
setup_cookie() {
    [ -n "$COOKIE" ] && return 0
    setup_proxyr
    COOKIE=$(curl -sS -D - -o /dev/null --max-time 5 -H "Host: $(host_cookie)" "$(url_proxyr)" | tr -d '\r' |
        sed -n "s/^[Ss]et-[Cc]ookie: \(daytona-sandbox-auth-$SIGNED_TOKEN=[^;]*\).*/\1/p" | head -n 1)
    [ -n "$COOKIE" ] || die "cookie: no Set-Cookie daytona-sandbox-auth-$SIGNED_TOKEN from the signed URL"
    log "cookie: got ${COOKIE%%=*}=<${#COOKIE} bytes>"
}
host_cookie() { echo "$UP_PORT-$SIGNED_TOKEN.proxy.localhost"; }
check_cookie() {
    check_http cookie "$(url_proxyr)" -H "Host: $(host_cookie)" -H "Cookie: $COOKIE" -D "$WORK/check-cookie.head" || return 1
    if grep -qi '^set-cookie:' "$WORK/check-cookie.head"; then
        log "cookie: check failed: the response set a cookie again (the cookie did not authenticate)"
        return 1
    fi
}
load_cookie() { run_wrk "$1" "$(url_proxyr)" -H "Host: $(host_cookie)" -H "Cookie: $COOKIE"; }
warm_cookie() { warm_wrk "$(url_proxyr)" -H "Host: $(host_cookie)" -H "Cookie: $COOKIE"; }
pid_cookie() { pid_proxyr; }
log_cookie() { log_proxyr; }

# ---------------------------------------------------------------- target: api_mode
# The proxy in API mode (api_url/api_key, i.e. DAYTONA_API_URL and
# PROXY_API_KEY) in front of the Daytona API stand-in
# tests/integration/servers/api.py, with a warm cache: the stand-in's public
# fixture sandbox sb-pub, whose runner (C6: proxyUrl, apiKey rk-1) is the same
# upstream nginx as every other target's. API mode forwards in runner-path
# form, GET /sandboxes/sb-pub/toolbox/proxy/3000/1k.txt with
# X-Daytona-Authorization: Bearer rk-1, so setup puts a copy of the 1 KiB
# file at that path under the upstream's root (same nginx, same location,
# same answer; nginx ignores the header). The baseline is public_redis: the
# same kind of lookup (a public sandbox from the proxy's cache) in standalone
# mode. load_api_mode counts the stand-in's logged API calls (/_ctl/log:
# every /api call, control endpoints excluded) just before and just after each
# timed run; the summary prints them, C7 (POST .../last-activity, at most one
# per activity interval per sandbox) apart from the rest (target 0).
API_PORT=
PID_api=''
API_SANDBOX=sb-pub
API_APP_PORT=3000
API_STANDIN=$ROOT/tests/integration/servers/api.py
setup_api() {
    [ -n "$API_PORT" ] && return 0
    [ -x /usr/bin/python3 ] || die "api_mode needs /usr/bin/python3 (for $API_STANDIN)"
    [ -f "$API_STANDIN" ] || die "api_mode: $API_STANDIN not found"
    setup_upstream
    local rp=/sandboxes/$API_SANDBOX/toolbox/proxy/$API_APP_PORT
    mkdir -p "$WORK/upstream/www$rp"
    cp "$WORK/upstream/www$FILE_PATH" "$WORK/upstream/www$rp$FILE_PATH"
    chmod -R a+rX "$WORK/upstream"
    API_PORT=$(free_port)
    mkdir -p "$WORK/api"
    # like redis: a backend, on the upstream's CPU
    spawn api "$WORK/api/stderr.log" "$CPU_UPSTREAM" /usr/bin/python3 "$API_STANDIN" --port "$API_PORT" \
        --runner-url "http://127.0.0.1:$UP_PORT" --proxy-key pk --runner-key rk-1
    wait_port "$API_PORT" "$PID_api" "$WORK/api/stderr.log"
    log "api: Daytona API stand-in on 127.0.0.1:$API_PORT (pid $PID_api), runners -> 127.0.0.1:$UP_PORT"
}
# api_calls — the stand-in's call log so far, one "ROUTE COUNT" line per route.
api_calls() {
    curl -sS --max-time 5 "http://127.0.0.1:$API_PORT/_ctl/log" |
        grep -o '"route": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' | sort | uniq -c | awk '{ print $2, $1 }'
}
# api_calls_diff BEFORE AFTER -> "total c7 detail" (detail: ROUTE=N,... or -)
api_calls_diff() {
    awk 'FNR == 1 { k++ } { n[k, $1] = $2; r[$1] = 1 }
        END { t = 0; c7 = 0; d = ""
            for (x in r) { v = n[2, x] - n[1, x]; if (v <= 0) continue
                if (x == "C7") c7 += v; else { t += v; d = d (d == "" ? "" : ",") x "=" v } }
            print t, c7, (d == "" ? "-" : d) }' "$1" "$2"
}
PROXYA_PORT=
PID_proxya=''
setup_api_mode() {
    [ -n "$PROXYA_PORT" ] && return 0
    setup_api
    PROXYA_PORT=$(free_port)
    mkdir -p "$WORK/proxya"
    cat >"$WORK/proxya/proxy.conf" <<EOF
listen 127.0.0.1:$PROXYA_PORT
access_log off
workers 1
api_url http://127.0.0.1:$API_PORT/api
api_key pk
EOF
    start_proxy proxya "$WORK/proxya/proxy.conf" "$PROXYA_PORT"
}
url_api_mode() { echo "http://127.0.0.1:$PROXYA_PORT$FILE_PATH"; }
host_api_mode() { echo "$API_APP_PORT-$API_SANDBOX.proxy.localhost"; }
check_api_mode() { check_http api_mode "$(url_api_mode)" -H "Host: $(host_api_mode)"; }
load_api_mode() {
    local rc=0 run
    run=$(basename "$1" .txt); run=${run#api_mode.}
    api_calls >"$1.api0"
    run_wrk "$1" "$(url_api_mode)" -H "Host: $(host_api_mode)" || rc=$?
    api_calls >"$1.api1"
    echo "$run $(api_calls_diff "$1.api0" "$1.api1")" >>"$WORK/api/calls.runs"
    [ -f "$WORK/api/calls.first" ] || cp "$1.api0" "$WORK/api/calls.first"
    return "$rc"
}
warm_api_mode() { warm_wrk "$(url_api_mode)" -H "Host: $(host_api_mode)"; }
pid_api_mode() { echo "$PID_proxya"; }
log_api_mode() { echo "$WORK/proxya/stderr.log"; }

# report_api_calls — the API calls made during each timed api_mode run.
report_api_calls() {
    [ -s "$WORK/api/calls.runs" ] || return 0
    echo
    echo "=== API calls during the timed api_mode runs (stand-in /_ctl/log, before/after each run; target 0) ==="
    printf '%-15s %10s %10s  %s\n' run api_calls C7_activity "other calls by route"
    awk '{ printf "%-15s %10d %10d  %s\n", $1, $2, $3, $4; t += $2; c += $3 }
        END { printf "%-15s %10d %10d\n", "total", t, c }' "$WORK/api/calls.runs"
    if [ -s "$WORK/api/calls.first" ]; then
        echo "before the first timed run (proxy start, checks, warm-up), by route: $(awk '{ printf "%s%s=%s", (NR > 1 ? "," : ""), $1, $2 }' "$WORK/api/calls.first")"
    fi
}

# ---------------------------------------------------------------- TLS certificate
# A self-signed ECDSA P-256 certificate for proxy.localhost and
# *.proxy.localhost, used by both our proxy and nginx.
CERT= KEY=
setup_certs() {
    [ -n "$CERT" ] && return 0
    need_cmd openssl openssl
    mkdir -p "$WORK/certs"
    CERT=$WORK/certs/cert.pem KEY=$WORK/certs/key.pem
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
        -keyout "$KEY" -out "$CERT" -subj /CN=proxy.localhost \
        -addext "subjectAltName=DNS:proxy.localhost,DNS:*.proxy.localhost" \
        >"$WORK/certs/openssl.log" 2>&1 || { cat "$WORK/certs/openssl.log" >&2; die "openssl req failed"; }
    chmod 644 "$KEY"   # nginx reads it as root in the master; harmless in a temp dir
}

# ---------------------------------------------------------------- the TLS + h2c proxy and nginx
# Our proxy with the same in-memory sandbox as `proxy`, a plaintext listener
# (HTTP/1.1 and h2c with prior knowledge) and a TLS listener (ALPN h2 and
# http/1.1; TLS 1.2/1.3, groups X25519:P-256:P-384, server cipher preference).
PROXYT_PORT= PROXYT_TLS_PORT=
PID_proxyt=''
setup_proxyt() {
    [ -n "$PROXYT_PORT" ] && return 0
    setup_upstream
    setup_certs
    PROXYT_PORT=$(free_port)
    PROXYT_TLS_PORT=$(free_port)
    mkdir -p "$WORK/proxyt"
    cat >"$WORK/proxyt/proxy.conf" <<EOF
listen 127.0.0.1:$PROXYT_PORT
listen 127.0.0.1:$PROXYT_TLS_PORT tls
tls_cert $CERT $KEY proxy.localhost
access_log off
workers 1
sandbox $SANDBOX runner_url=$DIRECT_RUNNER_URL runner_key=$RUNNER_KEY public=1 direct=1 addr=127.0.0.1
EOF
    start_proxy proxyt "$WORK/proxyt/proxy.conf" "$PROXYT_TLS_PORT"
    log "proxyt: h2c/HTTP/1.1 on 127.0.0.1:$PROXYT_PORT, TLS on 127.0.0.1:$PROXYT_TLS_PORT"
}

# nginx as the same proxy as `nginx`, with `listen ... ssl http2` (same
# certificate, the proxy's TLS settings: TLS 1.2/1.3, its TLS 1.2 ciphers,
# server preference, groups X25519:P-256:P-384, session tickets on as in ours)
# and `listen ... http2` without ssl, which in nginx 1.22 is h2c with prior
# knowledge only (no HTTP/1.1 on that port).
NGINXT_TLS_PORT= NGINXT_H2C_PORT=
PID_nginxt=''
setup_nginxt() {
    [ -n "$NGINXT_TLS_PORT" ] && return 0
    setup_upstream
    setup_certs
    NGINXT_TLS_PORT=$(free_port)
    NGINXT_H2C_PORT=$(free_port)
    nginx_conf nginxt "$NGINXT_TLS_PORT" "
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    ssl_ecdh_curve X25519:prime256v1:secp384r1;
    upstream sb_$UP_PORT {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;  # = the proxy's upstream_keepalive default
        keepalive_requests 1000000;
        keepalive_timeout 30s;
    }
    server {
        listen 127.0.0.1:$NGINXT_TLS_PORT ssl http2 default_server backlog=4096;
        listen 127.0.0.1:$NGINXT_H2C_PORT http2 default_server backlog=4096;
        return 404;
    }
    server {
        listen 127.0.0.1:$NGINXT_TLS_PORT ssl http2;
        listen 127.0.0.1:$NGINXT_H2C_PORT http2;
        server_name ~^(?<port>\\d+)-(?<sb>[^.]+)\\.proxy\\.localhost\$;
        location / {
            proxy_pass http://sb_\$port;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Daytona-Authorization \"Bearer $RUNNER_KEY\";
            proxy_set_header X-Request-Id \$request_id;
        }
    }"
    start_nginx nginxt "$NGINXT_TLS_PORT" "$CPU_SERVER"
    wait_port "$NGINXT_H2C_PORT" "$PID_nginxt" "$WORK/nginxt/logs/stderr.log"
}

# ---------------------------------------------------------------- h2load
# run_h2load OUTFILE URL CONNECT_TO — one duration-bounded h2load run:
# BENCH_H2_CLIENTS connections x BENCH_H2_STREAMS concurrent streams, for
# BENCH_DURATION. The URL's host is the preview host (h2load sends it as
# :authority and, over TLS, as SNI); --connect-to sends the connection to
# 127.0.0.1. h2load has no percentiles, so it writes one line per request
# (--log-file: start, status, duration in us) and parse_h2load takes the p99
# from that.
H2_CLIENTS=${BENCH_H2_CLIENTS:-10}
H2_STREAMS=${BENCH_H2_STREAMS:-10}
run_h2load() {
    local out=$1 url=$2 to=$3
    client h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS" -D "$(secs "$DURATION")" \
        --log-file="$out.reqlog" --connect-to "$to" "$url" >"$out" 2>&1
}
warm_h2load() { # warm_h2load URL CONNECT_TO
    [ "$WARMUP" = 0 ] && return 0
    client h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS" -D "$(secs "$WARMUP")" --connect-to "$2" "$1" \
        >/dev/null 2>&1 || true
}
# parse_h2load OUTFILE -> "rps p99_ms requests errors": requests = 2xx
# responses; errors = failed (status >= 400 or reset) + errored + timed out.
parse_h2load() {
    local f=$1 rps reqs errs p99
    rps=$(awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($(i + 1) == "req/s,") print $i }' "$f")
    reqs=$(awk '/^status codes:/ { print $3 }' "$f")
    errs=$(awk -F'[ ,]+' '/^requests:/ { for (i = 1; i <= NF; i++)
        if ($(i + 1) == "failed" || $(i + 1) == "errored" || $(i + 1) == "timeout") e += $i; print e + 0 }' "$f")
    p99=$(awk -F'\t' 'NF >= 3 { print $3 }' "$f.reqlog" 2>/dev/null | sort -n |
        awk '{ a[NR] = $1 } END { if (NR) { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f", a[i] / 1000 } }')
    [ -n "$rps" ] && [ -n "$reqs" ] || return 1
    rm -f "$f.reqlog"   # a few MB per run
    echo "$rps ${p99:-0} $reqs ${errs:-0}"
}

# ---------------------------------------------------------------- targets: h2tls, nginx_h2tls, h2c, nginx_h2c
host_demo() { echo "$UP_PORT-$SANDBOX.proxy.localhost"; }

setup_h2tls() { need_cmd h2load nghttp2-client; setup_proxyt; }
url_h2tls() { echo "https://$(host_demo):$PROXYT_TLS_PORT$FILE_PATH"; }
check_h2tls() {
    check_proto h2tls 2 "$(url_h2tls)" --http2 -k --resolve "$(host_demo):$PROXYT_TLS_PORT:127.0.0.1"
}
load_h2tls() { run_h2load "$1" "$(url_h2tls)" "127.0.0.1:$PROXYT_TLS_PORT"; }
warm_h2tls() { warm_h2load "$(url_h2tls)" "127.0.0.1:$PROXYT_TLS_PORT"; }
parse_h2tls() { parse_h2load "$1"; }
pid_h2tls() { echo "$PID_proxyt"; }
log_h2tls() { echo "$WORK/proxyt/stderr.log"; }

setup_nginx_h2tls() { need_cmd h2load nghttp2-client; setup_nginxt; }
url_nginx_h2tls() { echo "https://$(host_demo):$NGINXT_TLS_PORT$FILE_PATH"; }
check_nginx_h2tls() {
    check_proto nginx_h2tls 2 "$(url_nginx_h2tls)" --http2 -k --resolve "$(host_demo):$NGINXT_TLS_PORT:127.0.0.1"
}
load_nginx_h2tls() { run_h2load "$1" "$(url_nginx_h2tls)" "127.0.0.1:$NGINXT_TLS_PORT"; }
warm_nginx_h2tls() { warm_h2load "$(url_nginx_h2tls)" "127.0.0.1:$NGINXT_TLS_PORT"; }
parse_nginx_h2tls() { parse_h2load "$1"; }
pid_nginx_h2tls() { echo "$PID_nginxt"; }
log_nginx_h2tls() { echo "$WORK/nginxt/logs/error.log"; }

setup_h2c() { need_cmd h2load nghttp2-client; setup_proxyt; }
url_h2c() { echo "http://$(host_demo):$PROXYT_PORT$FILE_PATH"; }
check_h2c() { check_proto h2c 2 "http://127.0.0.1:$PROXYT_PORT$FILE_PATH" --http2-prior-knowledge -H "Host: $(host_demo)"; }
load_h2c() { run_h2load "$1" "$(url_h2c)" "127.0.0.1:$PROXYT_PORT"; }
warm_h2c() { warm_h2load "$(url_h2c)" "127.0.0.1:$PROXYT_PORT"; }
parse_h2c() { parse_h2load "$1"; }
pid_h2c() { echo "$PID_proxyt"; }
log_h2c() { echo "$WORK/proxyt/stderr.log"; }

setup_nginx_h2c() { need_cmd h2load nghttp2-client; setup_nginxt; }
url_nginx_h2c() { echo "http://$(host_demo):$NGINXT_H2C_PORT$FILE_PATH"; }
check_nginx_h2c() {
    check_proto nginx_h2c 2 "http://127.0.0.1:$NGINXT_H2C_PORT$FILE_PATH" --http2-prior-knowledge -H "Host: $(host_demo)"
}
load_nginx_h2c() { run_h2load "$1" "$(url_nginx_h2c)" "127.0.0.1:$NGINXT_H2C_PORT"; }
warm_nginx_h2c() { warm_h2load "$(url_nginx_h2c)" "127.0.0.1:$NGINXT_H2C_PORT"; }
parse_nginx_h2c() { parse_h2load "$1"; }
pid_nginx_h2c() { echo "$PID_nginxt"; }
log_nginx_h2c() { echo "$WORK/nginxt/logs/error.log"; }

# ---------------------------------------------------------------- targets: handshake, nginx_handshake
# Full TLS handshakes per second: BENCH_HS_CLIENTS parallel `openssl s_time
# -new` loops (each: TCP connect, a full TLS 1.3 handshake with X25519 and the
# P-256 certificate's signature, close; no HTTP request, since s_time's -www
# sends HTTP/1.0 without Host). s_time never resumes a session. wrk and
# h2load cannot be used for this: both resume the previous session (TLS 1.3
# PSK via the server's ticket) when they reconnect, so a "Connection: close"
# run measures resumed handshakes; that is the `resume` target below.
HS_CLIENTS=${BENCH_HS_CLIENTS:-8}
run_s_time() { # run_s_time OUTFILE PORT SECONDS CLIENTS
    local out=$1 port=$2 s=$3 n=$4
    client bash -c '
        port=$1 s=$2 n=$3 out=$4
        t0=$(date +%s.%N)
        for i in $(seq "$n"); do
            { openssl s_time -new -connect "127.0.0.1:$port" -time "$s" >"$out.$i" 2>&1; echo "rc $?" >>"$out.$i"; } &
        done
        wait
        t1=$(date +%s.%N)
        cat "$out".[0-9]*
        rm -f "$out".[0-9]*
        echo "wall $t0 $t1"' _ "$port" "$s" "$n" "$out" >"$out" 2>&1
}
# parse_s_time OUTFILE -> "conn/s 0 connections errors" (no latency figure).
parse_s_time() {
    awk '/connections in .* real seconds/ { c += $1 }
         /^rc / { if ($2 != 0) e++ }
         /ERROR|error:/ { e++ }
         /^wall / { w = $3 - $2 }
         END { if (w <= 0 || c == 0) exit 1; printf "%.1f 0 %d %d\n", c / w, c, e }' "$1"
}

setup_handshake() { setup_proxyt; }
check_handshake() { check_proto handshake 1.1 "https://$(host_demo):$PROXYT_TLS_PORT$FILE_PATH" --http1.1 -k --resolve "$(host_demo):$PROXYT_TLS_PORT:127.0.0.1"; }
load_handshake() { run_s_time "$1" "$PROXYT_TLS_PORT" "$(secs "$DURATION")" "$HS_CLIENTS"; }
warm_handshake() { [ "$WARMUP" = 0 ] || run_s_time "$WORK/warm.hs" "$PROXYT_TLS_PORT" "$(secs "$WARMUP")" "$HS_CLIENTS" || true; }
parse_handshake() { parse_s_time "$1"; }
pid_handshake() { echo "$PID_proxyt"; }
log_handshake() { echo "$WORK/proxyt/stderr.log"; }

setup_nginx_handshake() { setup_nginxt; }
check_nginx_handshake() { check_proto nginx_handshake 1.1 "https://$(host_demo):$NGINXT_TLS_PORT$FILE_PATH" --http1.1 -k --resolve "$(host_demo):$NGINXT_TLS_PORT:127.0.0.1"; }
load_nginx_handshake() { run_s_time "$1" "$NGINXT_TLS_PORT" "$(secs "$DURATION")" "$HS_CLIENTS"; }
warm_nginx_handshake() { [ "$WARMUP" = 0 ] || run_s_time "$WORK/warm.hs" "$NGINXT_TLS_PORT" "$(secs "$WARMUP")" "$HS_CLIENTS" || true; }
parse_nginx_handshake() { parse_s_time "$1"; }
pid_nginx_handshake() { echo "$PID_nginxt"; }
log_nginx_handshake() { echo "$WORK/nginxt/logs/error.log"; }

# ---------------------------------------------------------------- targets: resume, nginx_resume
# A new TLS connection for every request: wrk over https with
# "Connection: close" (HTTP/1.1 via ALPN-less TLS). wrk reuses the previous
# session of each connection slot, so these are resumed TLS 1.3 handshakes
# (PSK + X25519, no certificate signature) plus one proxied request each.
setup_resume() { setup_proxyt; }
url_resume() { echo "https://127.0.0.1:$PROXYT_TLS_PORT$FILE_PATH"; }
check_resume() { check_handshake; }
load_resume() { run_wrk "$1" "$(url_resume)" -H "Host: $(host_demo)" -H 'Connection: close'; }
warm_resume() { warm_wrk "$(url_resume)" -H "Host: $(host_demo)" -H 'Connection: close'; }
pid_resume() { echo "$PID_proxyt"; }
log_resume() { echo "$WORK/proxyt/stderr.log"; }

setup_nginx_resume() { setup_nginxt; }
url_nginx_resume() { echo "https://127.0.0.1:$NGINXT_TLS_PORT$FILE_PATH"; }
check_nginx_resume() { check_nginx_handshake; }
load_nginx_resume() { run_wrk "$1" "$(url_nginx_resume)" -H "Host: $(host_demo)" -H 'Connection: close'; }
warm_nginx_resume() { warm_wrk "$(url_nginx_resume)" -H "Host: $(host_demo)" -H 'Connection: close'; }
pid_nginx_resume() { echo "$PID_nginxt"; }
log_nginx_resume() { echo "$WORK/nginxt/logs/error.log"; }

# ---------------------------------------------------------------- case: many
# BENCH_MANY="1000 5000": for each count N, N public sandboxes in Redis and a
# fresh Redis-mode proxy with the default cache_ttl and lookup budgets; wrk
# (-c$CONNS, one client address) asks for a uniformly random one per request
# (Lua script), so the run starts with a cold cache and N distinct records.
# Prints the share of 429 answers (must be 0 %: lookups of sandboxes that exist
# are never refused) and the Redis lookup commands (HGETALL/GET/EXISTS, from
# INFO commandstats before and after) per request. wrk's response() hook slows
# wrk down, which is fine here: this case counts statuses, it is not a
# throughput comparison.
lookup_cmds() {
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO commandstats | tr -d '\r' |
        awk -F'[:=,]' '/^cmdstat_(hgetall|get|exists):/ { n += $3 } END { print n + 0 }'
}
run_many() {
    local n port dir r=(redis-cli -h 127.0.0.1 -p "$REDIS_PORT") c0 c1 out total n429 non2xx pidvar
    local dur=${BENCH_MANY_DURATION:-5s}
    echo
    echo "=== many sandboxes: wrk -t1 -c$CONNS -d$dur, uniform over N public sandboxes, cold cache, default budgets ==="
    printf '%-8s %10s %10s %8s %10s %14s\n' N requests 429 429_% non2xx redis_cmd/req
    for n in $BENCH_MANY; do
        "${r[@]}" FLUSHALL >/dev/null
        # direct mode to the upstream nginx: addr names it (SPEC 9), the runner
        # URL names nothing that listens.
        seq 1 "$n" | awk '{ printf "HSET sandbox:many%d runner_url http://127.0.0.1:9 runner_key k public 1 direct 1 addr 127.0.0.1 state started\n", $1 }' |
            "${r[@]}" >/dev/null
        port=$(free_port)
        dir=$WORK/many$n
        mkdir -p "$dir"
        cat >"$dir/proxy.conf" <<EOF
listen 127.0.0.1:$port
access_log off
workers 1
redis 127.0.0.1:$REDIS_PORT
cookie_secret benchsecret
EOF
        cat >"$dir/many.lua" <<EOF
math.randomseed(os.time())
c429 = 0
request = function()
    return wrk.format("GET", "$FILE_PATH", { Host = "$UP_PORT-many" .. math.random(1, $n) .. ".proxy.localhost" })
end
response = function(status, headers, body)
    if status == 429 then c429 = c429 + 1 end
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
    local t = 0
    for _, th in ipairs(threads) do t = t + th:get("c429") end
    io.write(string.format("COUNT429 %d\n", t))
end
EOF
        start_proxy "many$n" "$dir/proxy.conf" "$port"
        check_http "many$n" "http://127.0.0.1:$port$FILE_PATH" -H "Host: $UP_PORT-many1.proxy.localhost" ||
            die "many$n: the proxy does not serve sandbox many1"
        c0=$(lookup_cmds)
        out=$dir/wrk.out
        client wrk -t1 -c"$CONNS" -d"$dur" -s "$dir/many.lua" "http://127.0.0.1:$port$FILE_PATH" >"$out" 2>&1 ||
            die "many$n: wrk failed: $(tail -n 3 "$out")"
        c1=$(lookup_cmds)
        total=$(awk '/requests in/ { print $1 }' "$out")
        n429=$(awk '/^COUNT429/ { print $2 }' "$out")
        non2xx=$(awk '/Non-2xx/ { print $NF }' "$out")
        awk -v n="$n" -v t="${total:-0}" -v b="${n429:-0}" -v x="${non2xx:-0}" -v c=$((c1 - c0)) 'BEGIN {
            printf "%-8d %10d %10d %7.2f%% %10d %14.4f\n", n, t, b, (t > 0 ? 100 * b / t : 0), x, (t > 0 ? c / t : 0) }'
        pidvar=PID_many$n
        kill "${!pidvar}" 2>/dev/null || true
    done
}
if [ -n "${BENCH_MANY:-}" ]; then
    setup_redis
    run_many
    exit 0
fi

# ---------------------------------------------------------------- driver
has_fn() { declare -F "$1" >/dev/null; }

for t in "${TARGETS[@]}"; do
    has_fn "setup_$t" && has_fn "load_$t" || die "unknown target '$t'"
done

log "$(date -u '+%Y-%m-%d %H:%M:%SZ') host=$(uname -n) cpus=$NCPU load=$(cut -d' ' -f1-3 /proc/loadavg)"
log "wrk -t$THREADS -c$CONNS -d$DURATION --latency; h2load -t1 -c$H2_CLIENTS -m$H2_STREAMS -D $(secs "$DURATION"); $HS_CLIENTS x openssl s_time -new; $ROUNDS rounds, warm-up $WARMUP, pinning: $PINNING"
log "targets: ${TARGETS[*]}"

for t in "${TARGETS[@]}"; do "setup_$t"; done
for t in "${TARGETS[@]}"; do
    "check_$t" || die "target $t does not answer correctly; not benchmarking"
    if has_fn "warm_$t"; then "warm_$t"; fi
done

PROBLEMS=()
NOISY=0
declare -A RSS0
for t in "${TARGETS[@]}"; do has_fn "pid_$t" && RSS0[$t]=$(group_rss_mb "$("pid_$t")"); done
declare -A RPS P99 US

pct() { if [ "$1" = - ]; then echo -; else echo "$1%"; fi; }

# measure T R TRY — one load run of target T; prints its row, records
# problems; returns 3 if another user of the machine took more than
# NOISE_PCT % of a pinned CPU during the run (the caller may then repeat it),
# 4 if the server died.
measure() {
    local t=$1 r=$2 try=$3 out=$WORK/$1.round$2.try$3.txt spid='' parse=parse_wrk res load_rc=0
    local rps p99 reqs errs busy_s busy_c sticks other_s other_c us=- mark=
    has_fn "pid_$t" && spid=$("pid_$t")
    has_fn "parse_$t" && parse=parse_$t
    snap "$out.before"
    CLIENT_TICKS=0
    "load_$t" "$out" || load_rc=$?
    snap "$out.after"
    if [ "$load_rc" != 0 ] || ! res=$("$parse" "$out"); then
        PROBLEMS+=("$t round $r: load run failed (exit $load_rc): $(tr -s ' \n' ' ' <"$out" | cut -c1-300)")
        res="0 0 0 -1"
    fi
    read -r rps p99 reqs errs <<<"$res"
    read -r busy_s busy_c sticks other_s other_c \
        <<<"$(run_stats "$out.before" "$out.after" "${spid:-none}" "$CLIENT_TICKS")"
    [ -z "$spid" ] || us=$(us_per_req "$sticks" "$reqs")
    local noisy=0 o
    for o in "$other_s" "$other_c"; do
        [ "$o" != - ] && [ "$o" -gt "$NOISE_PCT" ] && noisy=1
    done
    if [ "$noisy" = 1 ] && [ "$try" -le "$RETRIES" ]; then mark="noisy: not counted, repeated"
    elif [ "$noisy" = 1 ]; then mark="noisy (counted)"; NOISY=$((NOISY + 1)); fi
    printf '%-15s %5s %10.0f %9.2f %10d %6d %7s %7s %8s %8s %10s%s\n' "$t" "$r" "$rps" "$p99" \
        "$reqs" "$errs" "$busy_s%" "$busy_c%" "$(pct "$other_s")" "$(pct "$other_c")" "$us" "${mark:+  $mark}"
    if [ "$errs" -gt 0 ]; then
        PROBLEMS+=("$t round $r: $errs errors of $reqs requests: $(grep -E 'Non-2xx|Socket errors' "$out" | tr -s ' \n' ' ')")
    fi
    if [ -n "$spid" ] && ! alive "$spid"; then
        PROBLEMS+=("$t round $r: server process $spid died ($(died_how "$spid"))")
        return 4
    fi
    "check_$t" || PROBLEMS+=("$t round $r: check request failed after the load run")
    if [ -n "$mark" ] && [ "$try" -le "$RETRIES" ]; then return 3; fi
    RPS[$t]+="$rps "; P99[$t]+="$p99 "; US[$t]+="$us "
}

printf '%-15s %5s %10s %9s %10s %6s %7s %7s %8s %8s %10s\n' target round req/s p99_ms requests errors \
    "cpu$CPU_SERVER" "cpu$CPU_CLIENT" "other$CPU_SERVER" "other$CPU_CLIENT" "srv_us/req"
NT=${#TARGETS[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((k = 0; k < NT; k++)); do
        t=${TARGETS[$(((k + r - 1) % NT))]}   # rotate the order each round
        for ((try = 1; ; try++)); do
            rc=0; measure "$t" "$r" "$try" || rc=$?
            [ "$rc" = 3 ] || break
        done
        [ "$rc" = 4 ] && break 2
    done
done

median() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{a[NR] = $1} END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

declare -A MRPS MP99 MUS
echo
echo "=== medians over $ROUNDS rounds (wrk -t$THREADS -c$CONNS, h2load -c$H2_CLIENTS -m$H2_STREAMS, $HS_CLIENTS x s_time -new; -d$DURATION; $PINNING) ==="
printf '%-15s %12s %12s %12s\n' target req/s p99_ms srv_us/req
for t in "${TARGETS[@]}"; do
    MRPS[$t]=$(median <<<"${RPS[$t]:-}")
    MP99[$t]=$(median <<<"${P99[$t]:-}")
    MUS[$t]=$(median <<<"${US[$t]:-}")
    printf '%-15s %12.0f %12.2f %12s\n' "$t" "${MRPS[$t]}" "${MP99[$t]}" "${MUS[$t]}"
done

echo
echo "=== server memory (RSS of the process group, MiB) after warm-up -> at the end ==="
for t in "${TARGETS[@]}"; do
    has_fn "pid_$t" || continue
    printf '%-15s %8s -> %s\n' "$t" "${RSS0[$t]}" "$(group_rss_mb "$("pid_$t")")"
done

echo
echo "=== ratios (medians) ==="
for pair in "${RATIOS[@]}"; do
    a=${pair%/*}; b=${pair#*/}
    [ -n "${MRPS[$a]:-}" ] && [ -n "${MRPS[$b]:-}" ] || continue
    awk -v p="$pair" -v ra="${MRPS[$a]}" -v rb="${MRPS[$b]}" -v la="${MP99[$a]}" -v lb="${MP99[$b]}" \
        -v ua="${MUS[$a]}" -v ub="${MUS[$b]}" 'BEGIN {
        printf "%-32s req/s %.3f", p, (rb > 0 ? ra / rb : 0)
        if (la > 0 && lb > 0) printf "   p99 %.3f", la / lb; else printf "   p99   -  "
        if (ua > 0 && ub > 0) printf "   srv_cpu/req %.3f", ua / ub
        printf "\n" }'
done

report_api_calls

if [ "$NOISY" -gt 0 ]; then
    echo
    echo "note: $NOISY counted run(s) were disturbed by other load on the machine (see 'noisy' rows)"
fi

if [ ${#PROBLEMS[@]} -gt 0 ]; then
    echo
    echo "=== problems ==="
    printf '%s\n' "${PROBLEMS[@]}"
    for t in "${TARGETS[@]}"; do
        has_fn "log_$t" || continue
        f=$("log_$t")
        if [ -s "$f" ]; then echo "--- last lines of $t's log $f"; tail -n 15 "$f"; fi
    done
    exit 2
fi

#!/usr/bin/env bash
# bench/run.sh — throughput and tail latency of the preview proxy, against
# the same upstream reached directly and through nginx doing the same routing.
#
# One run starts everything it needs on 127.0.0.1 (an upstream nginx serving a
# 1 KiB file, our proxy, an nginx reverse proxy), runs BENCH_ROUNDS interleaved
# rounds of wrk against every target, prints one row per run, the medians and
# the ratios, and kills everything it started on exit. See bench/README.md.
#
# Environment (all optional):
#   BENCH_DURATION   wrk -d per run                       (10s)
#   BENCH_ROUNDS     interleaved rounds                   (3)
#   BENCH_WARMUP     untimed warm-up per target, 0 = none (2s)
#   BENCH_THREADS    wrk -t                               (1)
#   BENCH_CONNS      wrk -c                               (50)
#   BENCH_TARGETS    targets, in order                    ("direct proxy nginx")
#   BENCH_RATIOS     A/B pairs to report                  ("proxy/direct proxy/nginx")
#   BENCH_CPU_SERVER   CPU for the proxy under test and nginx-as-proxy   (0)
#   BENCH_CPU_CLIENT   CPU for wrk                                       (1)
#   BENCH_CPU_UPSTREAM CPU for the upstream nginx                        (1)
#   BENCH_PROXY      proxy binary (build/preview-proxy; built with make if missing)
#   BENCH_KEEP=1     keep the work dir (configs, logs, raw wrk output)
#
# Adding a target NAME: write setup_NAME (start what it needs, once; may call
# other setup_* functions, which are idempotent), check_NAME (one request that
# must succeed before load) and load_NAME OUTFILE (bounded load run, raw output
# to OUTFILE). If the tool is not wrk, also write parse_NAME OUTFILE, printing
# "rps p99_ms total_requests errors" (see parse_wrk). Then list NAME in
# BENCH_TARGETS.
set -euo pipefail

DURATION=${BENCH_DURATION:-10s}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-2s}
THREADS=${BENCH_THREADS:-1}
CONNS=${BENCH_CONNS:-50}
read -r -a TARGETS <<<"${BENCH_TARGETS:-direct proxy nginx}"
read -r -a RATIOS <<<"${BENCH_RATIOS:-proxy/direct proxy/nginx}"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROXY_BIN=${BENCH_PROXY:-$ROOT/build/preview-proxy}
SANDBOX=demo
RUNNER_KEY=benchkey
FILE_PATH=/1k.txt
FILE_SIZE=1024

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
# thing being compared is never disturbed by the client.
NCPU=$(nproc 2>/dev/null || echo 1)
CPU_SERVER=${BENCH_CPU_SERVER:-0}
CPU_CLIENT=${BENCH_CPU_CLIENT:-1}
CPU_UPSTREAM=${BENCH_CPU_UPSTREAM:-1}
if command -v taskset >/dev/null 2>&1 && [ "$NCPU" -ge 2 ]; then
    PIN_SERVER=(taskset -c "$CPU_SERVER")
    PIN_CLIENT=(taskset -c "$CPU_CLIENT")
    PIN_UPSTREAM=(taskset -c "$CPU_UPSTREAM")
    PINNING="server=cpu$CPU_SERVER wrk=cpu$CPU_CLIENT upstream=cpu$CPU_UPSTREAM"
else
    PIN_SERVER=(); PIN_CLIENT=(); PIN_UPSTREAM=()
    PINNING="none (taskset missing or fewer than 2 CPUs)"
fi

# ---------------------------------------------------------------- processes
WORK=$(mktemp -d /tmp/preview-bench.XXXXXX)
chmod 755 "$WORK"   # nginx workers run as nobody when started by root
PIDS=()             # each started with setsid: pid == process group id

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    [ -z "${CLIENT_PID:-}" ] || kill -TERM "$CLIENT_PID" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ "${BENCH_KEEP:-0}" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# spawn NAME LOGFILE CMD... — start CMD in its own process group, remember it.
spawn() {
    local name=$1 logf=$2; shift 2
    setsid "$@" >"$logf" 2>&1 </dev/null &
    local pid=$!
    PIDS+=("$pid")
    eval "PID_$name=$pid"
}

alive() { kill -0 "$1" 2>/dev/null; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port below the ephemeral range (so no outgoing connection can hold it)
# that no socket, listening or not, uses.
free_port() {
    local lo hi p i
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || lo=32768
    [ "$lo" -gt 12000 ] || lo=32768
    for i in $(seq 200); do
        p=$((10000 + RANDOM % (lo - 10000)))
        if ! port_busy "$p" && ! ss -Htan 2>/dev/null | awk '{print $4}' | grep -q ":$p\$"; then
            echo "$p"; return 0
        fi
    done
    die "no free port found"
}

# wait_port PORT PID LOGFILE — until PORT accepts connections or PID dies.
wait_port() {
    local port=$1 pid=$2 logf=$3 i
    for i in $(seq 100); do
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

start_nginx() { # start_nginx NAME PORT PIN...
    local name=$1 port=$2; shift 2
    local dir=$WORK/$name
    nginx -t -q -c "$dir/nginx.conf" -p "$dir" 2>"$dir/logs/test.log" \
        || { cat "$dir/logs/test.log" >&2; die "nginx config $name rejected"; }
    spawn "$name" "$dir/logs/stderr.log" "$@" nginx -c "$dir/nginx.conf" -p "$dir"
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
    chmod -R a+rX "$WORK/upstream"
    nginx_conf upstream "$UP_PORT" "
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        root $WORK/upstream/www;
        location / { }
    }"
    start_nginx upstream "$UP_PORT" "${PIN_UPSTREAM[@]}"
}

PREVIEW_HOST() { echo "$UP_PORT-$SANDBOX.proxy.localhost"; }

# ---------------------------------------------------------------- load tools
# client CMD... — run a load generator pinned to the client CPU, in the
# background so that a signal to this script is handled at once (bash defers
# traps while a foreground child runs); cleanup() kills it.
CLIENT_PID=
client() {
    "${PIN_CLIENT[@]}" "$@" &
    CLIENT_PID=$!
    local rc=0
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=
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

# cpu_snap — "cpuN busy total" lines from /proc/stat; cpu_busy BEFORE AFTER CPU
# gives that CPU's busy percentage between two snapshots (shows which side,
# the server or the client+upstream, was the bottleneck of a run).
cpu_snap() { awk '/^cpu[0-9]/ { t = 0; for (i = 2; i <= NF; i++) t += $i; print $1, t - $5 - $6, t }' /proc/stat; }
cpu_busy() {
    awk -v c="cpu$3" 'NR == FNR { if ($1 == c) { b = $2; t = $3 } next }
        $1 == c { if ($3 > t) printf "%.0f", 100 * ($2 - b) / ($3 - t); else printf "0" }' "$1" "$2"
}
# cpu_us_per_req BEFORE AFTER CPU REQUESTS — busy CPU time of that CPU per
# request, in microseconds: the server's cost per request, meaningful even
# when the server is not the bottleneck.
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_us_per_req() {
    awk -v c="cpu$3" -v n="$4" -v hz="$CLK_TCK" 'NR == FNR { if ($1 == c) b = $2; next }
        $1 == c { printf "%.1f", (n > 0 ? ($2 - b) * 1e6 / hz / n : 0) }' "$1" "$2"
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

# check_http NAME URL [curl args...] — one request must give 200 and the file.
check_http() {
    local name=$1 url=$2; shift 2
    local out=$WORK/check-$name.body code size
    code=$(curl -sS -o "$out" -w '%{http_code}' --max-time 5 "$@" "$url") || code=000
    size=$(stat -c %s "$out" 2>/dev/null || echo 0)
    if [ "$code" != 200 ] || [ "$size" != "$FILE_SIZE" ]; then
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
sandbox $SANDBOX runner_url=http://127.0.0.1:$UP_PORT runner_key=$RUNNER_KEY public=1 direct=1
EOF
    "$PROXY_BIN" -t -c "$WORK/proxy/proxy.conf" >"$WORK/proxy/configtest.log" 2>&1 \
        || { cat "$WORK/proxy/configtest.log" >&2; die "preview-proxy -t rejected the config"; }
    spawn proxy "$WORK/proxy/stderr.log" "${PIN_SERVER[@]}" "$PROXY_BIN" -c "$WORK/proxy/proxy.conf"
    wait_port "$PROXY_PORT" "$PID_proxy" "$WORK/proxy/stderr.log"
    log "proxy: $PROXY_BIN on 127.0.0.1:$PROXY_PORT (pid $PID_proxy)"
}
url_proxy() { echo "http://127.0.0.1:$PROXY_PORT$FILE_PATH"; }
check_proxy() { check_http proxy "$(url_proxy)" -H "Host: $(PREVIEW_HOST)"; }
load_proxy() { run_wrk "$1" "$(url_proxy)" -H "Host: $(PREVIEW_HOST)"; }
warm_proxy() { warm_wrk "$(url_proxy)" -H "Host: $(PREVIEW_HOST)"; }
alive_proxy() { alive "$PID_proxy"; }
# died_how NAME — exit status or signal of a dead server, for the report.
died_how() {
    local pidvar=PID_$1 rc=0
    wait "${!pidvar}" 2>/dev/null || rc=$?
    if [ "$rc" -gt 128 ]; then echo "killed by signal $((rc - 128)) ($(kill -l "$((rc - 128))" 2>/dev/null))"
    else echo "exit status $rc"; fi
}

# ---------------------------------------------------------------- target: nginx
# nginx as the proxy: same host-based routing ({port}-{sandbox}.proxy.localhost
# -> 127.0.0.1:{port}) and the same request headers as ours. proxy_pass to a
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
        keepalive 32;
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
        }
    }"
    start_nginx nginxproxy "$NGINX_PORT" "${PIN_SERVER[@]}"
}
url_nginx() { echo "http://127.0.0.1:$NGINX_PORT$FILE_PATH"; }
check_nginx() { check_http nginx "$(url_nginx)" -H "Host: $(PREVIEW_HOST)"; }
load_nginx() { run_wrk "$1" "$(url_nginx)" -H "Host: $(PREVIEW_HOST)"; }
warm_nginx() { warm_wrk "$(url_nginx)" -H "Host: $(PREVIEW_HOST)"; }

# ---------------------------------------------------------------- driver
has_fn() { declare -F "$1" >/dev/null; }

for t in "${TARGETS[@]}"; do
    has_fn "setup_$t" && has_fn "load_$t" || die "unknown target '$t'"
done

log "$(date -u '+%Y-%m-%d %H:%M:%SZ') host=$(uname -n) cpus=$NCPU load=$(cut -d' ' -f1-3 /proc/loadavg)"
log "wrk -t$THREADS -c$CONNS -d$DURATION --latency, $ROUNDS rounds, warm-up $WARMUP, pinning: $PINNING"

for t in "${TARGETS[@]}"; do "setup_$t"; done
for t in "${TARGETS[@]}"; do
    "check_$t" || die "target $t does not answer correctly; not benchmarking"
    if has_fn "warm_$t"; then "warm_$t"; fi
done

PROBLEMS=()
printf '%-10s %5s %10s %9s %10s %6s %7s %7s %9s\n' target round req/s p99_ms requests errors \
    "cpu$CPU_SERVER" "cpu$CPU_CLIENT" "us/req"
declare -A RPS P99 US
NT=${#TARGETS[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((k = 0; k < NT; k++)); do
        t=${TARGETS[$(((k + r - 1) % NT))]}   # rotate the order each round
        out=$WORK/$t.round$r.txt
        cpu_snap >"$WORK/cpu.before"
        load_rc=0; "load_$t" "$out" || load_rc=$?
        cpu_snap >"$WORK/cpu.after"
        parse=parse_wrk; has_fn "parse_$t" && parse=parse_$t
        if [ "$load_rc" != 0 ] || ! res=$("$parse" "$out"); then
            PROBLEMS+=("$t round $r: load run failed (exit $load_rc): $(tr -s ' \n' ' ' <"$out" | cut -c1-300)")
            res="0 0 0 -1"
        fi
        read -r rps p99 reqs errs <<<"$res"
        busy_s=$(cpu_busy "$WORK/cpu.before" "$WORK/cpu.after" "$CPU_SERVER")
        busy_c=$(cpu_busy "$WORK/cpu.before" "$WORK/cpu.after" "$CPU_CLIENT")
        us=$(cpu_us_per_req "$WORK/cpu.before" "$WORK/cpu.after" "$CPU_SERVER" "$reqs")
        RPS[$t]+="$rps "; P99[$t]+="$p99 "; US[$t]+="$us "
        printf '%-10s %5d %10.0f %9.2f %10d %6d %6s%% %6s%% %9s\n' \
            "$t" "$r" "$rps" "$p99" "$reqs" "$errs" "$busy_s" "$busy_c" "$us"
        if [ "$errs" -gt 0 ]; then
            PROBLEMS+=("$t round $r: $errs errors of $reqs requests: $(grep -E 'Non-2xx|Socket errors' "$out" | tr -s ' \n' ' ')")
        fi
        if has_fn "alive_$t" && ! "alive_$t"; then
            PROBLEMS+=("$t round $r: server process died ($(died_how "$t"))")
            break 2
        fi
        "check_$t" || PROBLEMS+=("$t round $r: check request failed after the load run")
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

declare -A MRPS MP99 MUS
echo
echo "=== medians over $ROUNDS rounds (wrk -t$THREADS -c$CONNS -d$DURATION, $PINNING) ==="
printf '%-10s %12s %12s %16s\n' target req/s p99_ms "cpu$CPU_SERVER us/req"
for t in "${TARGETS[@]}"; do
    MRPS[$t]=$(median <<<"${RPS[$t]:-}")
    MP99[$t]=$(median <<<"${P99[$t]:-}")
    MUS[$t]=$(median <<<"${US[$t]:-}")
    printf '%-10s %12.0f %12.2f %16.1f\n' "$t" "${MRPS[$t]}" "${MP99[$t]}" "${MUS[$t]}"
done

echo
echo "=== ratios (medians) ==="
for pair in "${RATIOS[@]}"; do
    a=${pair%/*}; b=${pair#*/}
    [ -n "${MRPS[$a]:-}" ] && [ -n "${MRPS[$b]:-}" ] || continue
    awk -v p="$pair" -v ra="${MRPS[$a]}" -v rb="${MRPS[$b]}" -v la="${MP99[$a]}" -v lb="${MP99[$b]}" \
        -v ua="${MUS[$a]}" -v ub="${MUS[$b]}" 'BEGIN {
        printf "%-14s req/s %.3f   p99 %.3f", p, (rb > 0 ? ra / rb : 0), (lb > 0 ? la / lb : 0)
        if (ub >= 1) printf "   cpu/req %.3f", ua / ub
        printf "\n" }'
done

if [ ${#PROBLEMS[@]} -gt 0 ]; then
    echo
    echo "=== problems ==="
    printf '%s\n' "${PROBLEMS[@]}"
    for t in "${TARGETS[@]}"; do
        f=$WORK/$t/stderr.log
        [ "$t" = nginx ] && f=$WORK/nginxproxy/logs/error.log
        if [ -s "$f" ]; then echo "--- last lines of $f"; tail -n 15 "$f"; fi
    done
    exit 2
fi

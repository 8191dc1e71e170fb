#!/usr/bin/env bash
# bench/syscalls.sh — system calls and CPU per request, the proxy and nginx
# doing the same routing (issue 13's kernel side; bench/callgrind.sh counts the
# user-space instructions of the same setup, bench/servers.sh).
#
# 1. Syscalls: for each server and case the server runs twice under
#    `strace -f -qq -o FILE`, once for N1 and once for N2 requests; per request =
#    (count(N2) - count(N1)) / (N2 - N1), by syscall name, so start-up, the
#    first connections and shutdown cancel out. Counts do not depend on machine
#    load. Besides the name, a few calls are split by what they do:
#    epoll_ctl by op, ioctl by request, recvfrom/recv with MSG_PEEK, and calls
#    that failed with EAGAIN (a read that found nothing) are listed as
#    "NAME EAGAIN" in addition to their name's line.
# 2. CPU: the server runs without strace; after SC_WARM requests, SC_CPU_N more
#    are sent and the server's task-clock (perf stat -p, if perf works) and
#    utime/stime (/proc/PID/stat, 10 ms ticks) are read around them. One client
#    sends one request at a time, so this includes one wake-up per request
#    (a loaded server batches); compare the two servers, not with wrk's figures.
#
# Cases and servers as in callgrind.sh (bench/servers.sh: ka1k, close1k, ka1m,
# h2c, and ka1k50, 50 keep-alive connections at once; proxy, nginx).
# Environment: SC_N1 (500), SC_N2 (2500), SC_CASES ("ka1k close1k h2c"),
# SC_SERVERS ("proxy nginx"), SC_CPU_N (20000; 0 = no CPU run), SC_WARM (1000),
# SC_STRACE (1; 0 = the CPU runs only),
# BENCH_PROXY (build/preview-proxy), BENCH_PROXY2 (server "proxy2": another
# build, for before/after), SC_KEEP=1 (keep the traces). ka1m uses
# N/10. Every client run is under `timeout`; loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROXY_BIN=${BENCH_PROXY:-$ROOT/build/preview-proxy}
N1=${SC_N1:-500}
N2=${SC_N2:-2500}
CPU_N=${SC_CPU_N:-20000}
WARM=${SC_WARM:-1000}
STRACE=${SC_STRACE:-1}
read -r -a CASES <<<"${SC_CASES:-ka1k close1k h2c}"
read -r -a SERVERS <<<"${SC_SERVERS:-proxy nginx}"
TAG=sc
. "$ROOT/bench/servers.sh"
for c in strace nginx python3; do command -v $c >/dev/null || { echo "syscalls.sh: $c missing" >&2; exit 1; }; done
[ -x "$PROXY_BIN" ] || { echo "syscalls.sh: $PROXY_BIN missing (make)" >&2; exit 1; }
PERF=0
command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1 && PERF=1

bench_work "${SC_KEEP:-0}"

start_upstream

# count_trace FILE — "KEY COUNT" lines from an strace -f -o file: one per
# syscall name, plus the split keys described above. Resumed halves of
# interrupted calls, signals and exits are not calls.
count_trace() {
    awk '
    { sub(/^[0-9]+ +/, "") }
    /^<\.\.\. / || /^\+\+\+ / || /^--- / { next }
    match($0, /^[a-z_0-9]+\(/) {
        name = substr($0, 1, RLENGTH - 1)
        n[name]++
        if (name == "epoll_ctl" && match($0, /EPOLL_CTL_[A-Z]+/))
            n[name " " substr($0, RSTART + 10, RLENGTH - 10)]++
        if (name == "ioctl" && match($0, /, [A-Z][A-Z0-9_]+/))
            n[name " " substr($0, RSTART + 2, RLENGTH - 2)]++
        if ((name == "recvfrom" || name == "recv") && /MSG_PEEK/)
            n[name " MSG_PEEK"]++
        if (/= -1 EAGAIN/)
            n[name " EAGAIN"]++
    }
    END { for (k in n) print k "\t" n[k] }' "$1"
}

# server_child PID — the server started under strace (strace's child).
server_child() {
    local c
    for _ in $(seq 100); do
        c=$(ps -o pid= --ppid "$1" | head -n 1 | tr -d ' ')
        [ -n "$c" ] && { echo "$c"; return 0; }
        sleep 0.05
    done
    echo "[sc] no child of strace $1" >&2; return 1
}

# counts SERVER CASE N — writes $WORK/sc.SERVER.CASE.N.counts
counts() {
    local server=$1 case=$2 n=$3 port out pid child
    port=$(free_port)
    out="$WORK/sc.$server.$case.$n"
    WRAP=(strace -f -qq -o "$out")
    start_"$server" "$port" "$out" "$case"
    pid=$SPID
    PIDS+=("$pid")
    wait_port "$port" "$pid" || { cat "$out.log" >&2; exit 1; }
    child=$(server_child "$pid")
    send_requests "$case" "$n" "$port" "$out" || { kill "$child"; exit 1; }
    [ -d "/proc/$child" ] || { echo "[sc] $server died under strace" >&2; exit 1; }
    kill -TERM "$child"
    wait "$pid" 2>/dev/null || true # strace exits with the server
    count_trace "$out" >"$out.counts"
}

# cpu SERVER CASE — sets CPU_RES to "task_clock user sys", µs per request
cpu() {
    local server=$1 case=$2 n=$CPU_N warm=$WARM port out pid u0 s0 u1 s1 ppid tc=-
    [ "$case" = ka1m ] && n=$((n / 10)) warm=$((warm / 10))
    port=$(free_port)
    out="$WORK/cpu.$server.$case"
    WRAP=()
    start_"$server" "$port" "$out" "$case"
    pid=$SPID
    PIDS+=("$pid")
    wait_port "$port" "$pid" || { cat "$out.log" >&2; exit 1; }
    send_requests "$case" "$warm" "$port" "$out"
    if [ "$PERF" = 1 ]; then
        perf stat -x, -e task-clock -p "$pid" -o "$out.perf" &
        ppid=$!
        sleep 0.2 # perf attaching; idle server, nothing counted meanwhile
    fi
    read -r u0 s0 < <(awk '{ print $14, $15 }' "/proc/$pid/stat")
    send_requests "$case" "$n" "$port" "$out"
    read -r u1 s1 < <(awk '{ print $14, $15 }' "/proc/$pid/stat")
    if [ "$PERF" = 1 ]; then
        kill -INT "$ppid"
        wait "$ppid" 2>/dev/null || true
        tc=$(awk -F, -v n="$n" '$3 == "task-clock" { printf "%.1f", $1 * 1000 / n }' "$out.perf")
    fi
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    local hz
    hz=$(getconf CLK_TCK)
    CPU_RES=$(awk -v tc="$tc" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$n" -v hz="$hz" \
        'BEGIN { printf "%s %.1f %.1f\n", tc, u * 1e6 / hz / n, s * 1e6 / hz / n }')
}

# table CASE N1 N2 — the per-request syscall table of the counts() runs
table() {
    local case=$1 n1=$2 n2=$3
    echo "=== $case: syscalls per request, (count($n2) - count($n1)) / $((n2 - n1)) ==="
    # one column per server; rows: every key either server made, totals first
    for server in "${SERVERS[@]}"; do
        awk -F'\t' -v a="$WORK/sc.$server.$case.$n1.counts" -v d=$((n2 - n1)) -v s="$server" '
            BEGIN { while ((getline l < a) > 0) { split(l, f, "\t"); base[f[1]] = f[2] } }
            { v = ($2 - base[$1]) / d; if (v >= 0.005 || v <= -0.005) print s "\t" $1 "\t" v }
            END { }' "$WORK/sc.$server.$case.$n2.counts"
    done | awk -F'\t' -v servers="${SERVERS[*]}" -v tmp="$WORK/keys" '
        BEGIN { ns = split(servers, S, " ") }
        { v[$1, $2] = $3; keys[$2] = 1; if ($2 !~ / /) tot[$1] += $3 }
        END {
            printf "%-24s", "syscall"; for (i = 1; i <= ns; i++) printf " %10s", S[i]; printf "\n"
            printf "%-24s", "total"; for (i = 1; i <= ns; i++) printf " %10.2f", tot[S[i]]; printf "\n"
            n = 0 # sorted with sort(1): mawk has no asorti
            for (k in keys) print k > tmp
            close(tmp)
            while ((("LC_ALL=C sort " tmp) | getline k) > 0) K[++n] = k
            for (j = 1; j <= n; j++) {
                printf "%-24s", (K[j] ~ / / ? "  " : "") K[j]
                for (i = 1; i <= ns; i++) printf " %10.2f", v[S[i], K[j]]
                printf "\n"
            }
        }'
}

for case in "${CASES[@]}"; do
    n1=$N1 n2=$N2
    [ "$case" = ka1m ] && n1=$((N1 / 10)) n2=$((N2 / 10))
    echo
    if [ "$STRACE" = 1 ]; then
        for server in "${SERVERS[@]}"; do
            counts "$server" "$case" "$n1"
            counts "$server" "$case" "$n2"
        done
        table "$case" "$n1" "$n2"
    fi
    if [ "$CPU_N" -gt 0 ]; then
        echo "--- $case: CPU per request, µs (task-clock from perf; user/sys from /proc, 10 ms ticks)"
        for server in "${SERVERS[@]}"; do
            cpu "$server" "$case"
            read -r tc u s <<<"$CPU_RES"
            printf '%-8s task-clock %6s   user %6s   sys %6s\n' "$server" "$tc" "$u" "$s"
        done
    fi
done

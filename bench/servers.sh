# bench/servers.sh — sourced by bench/callgrind.sh and bench/syscalls.sh: the
# upstream, the two servers under test (the proxy and nginx 1.22 doing the same
# routing) and the exact-count clients, so that both scripts measure the same
# thing. Not a script of its own.
#
# The caller sets ROOT, PROXY_BIN, TAG (log prefix), calls bench_work, and
# sets WRAP: an array of words put in front of each server's command
# (valgrind …, strace …, or empty). Each server runs as one process (proxy
# `workers 1`, nginx `master_process off`).

RUNNER_KEY=benchkey

# bench_work KEEP — a private work dir in $WORK and an empty PIDS array; on
# exit every server in PIDS is stopped and the dir removed (kept and named
# when KEEP is 1).
bench_work() {
    WORK=$(mktemp -d "/tmp/preview-$TAG.XXXXXX")
    chmod 755 "$WORK"
    PIDS=()
    BENCH_KEEP_WORK=$1
    trap bench_cleanup EXIT
}
bench_cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$BENCH_KEEP_WORK" = 1 ]; then echo "[$TAG] work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
command -v nginx >/dev/null 2>&1 || PATH=$PATH:/usr/sbin

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
        kill -0 "$2" 2>/dev/null || { echo "[$TAG] pid $2 died before listening on $1" >&2; return 1; }
        sleep 0.05
    done
    echo "[$TAG] nothing on port $1 after 30 s" >&2; return 1
}

# ---- upstream: nginx serving /1k.txt and /1m.txt, natively; sets UP_PORT, HOSTHDR
nginx_http_common="access_log off; default_type text/plain; sendfile on; tcp_nopush on;
    keepalive_requests 1000000; keepalive_timeout 60s;"
start_upstream() {
    UP_PORT=$(free_port)
    mkdir -p "$WORK/up/www" "$WORK/up/logs"
    head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/up/www/1k.txt"
    head -c 1048576 /dev/zero | tr '\0' 'x' >"$WORK/up/www/1m.txt"
    chmod -R a+rX "$WORK/up"
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
}

# ---- servers under test
# start_SERVER PORT OUTFILE CASE — starts it (behind "${WRAP[@]}") as a child of
# the calling shell, so `wait` works; its pid (the wrapper's, if any) in SPID,
# its output in OUTFILE.log.
start_proxy() {
    cat >"$WORK/proxy.conf" <<EOF
listen 127.0.0.1:$1
access_log off
workers 1
sandbox demo runner_url=http://127.0.0.1:9 runner_key=$RUNNER_KEY public=1 direct=1 addr=127.0.0.1
EOF
    "${WRAP[@]}" "$PROXY_BIN" -c "$WORK/proxy.conf" >"$2.log" 2>&1 &
    SPID=$!
}
# proxy2: another proxy build (BENCH_PROXY2), for before/after in one run
start_proxy2() {
    local PROXY_BIN=${BENCH_PROXY2:?BENCH_PROXY2 names the second proxy binary}
    start_proxy "$@"
}
start_nginx() {
    local h2=
    [ "$3" = h2c ] && h2=http2 # nginx 1.22: h2c prior knowledge only
    mkdir -p "$WORK/ngx/logs"
    cat >"$WORK/ngx/nginx.conf" <<EOF
worker_processes 1; daemon off; master_process off;
pid $WORK/ngx/nginx.pid; error_log $WORK/ngx/logs/error.log warn;
events { worker_connections 4096; }
http { $nginx_http_common
    upstream sb_$UP_PORT { server 127.0.0.1:$UP_PORT; keepalive 128;
        keepalive_requests 1000000; keepalive_timeout 30s; }
    server { listen 127.0.0.1:$1 default_server backlog=4096 $h2; return 404; }
    server {
        listen 127.0.0.1:$1 $h2;
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
    "${WRAP[@]}" nginx -p "$WORK/ngx" -c "$WORK/ngx/nginx.conf" >"$2.log" 2>&1 &
    SPID=$!
}

# send_requests CASE N PORT OUT — exactly N requests of CASE, every answer a
# whole 200; returns non-zero (after printing why) otherwise.
#   ka1k: keep-alive, 1 KiB; close1k: a new connection per request
#   (Connection: close); ka1m: keep-alive, 1 MiB; h2c: HTTP/2 prior knowledge,
#   one connection, 10 streams at a time, 1 KiB (h2load); ka1k50: keep-alive,
#   1 KiB, 50 connections at once (h2load --h1, like bench/run.sh's wrk -c50).
send_requests() {
    local case=$1 n=$2 port=$3 out=$4 path mode
    case $case in
    ka1k) path=/1k.txt mode=keepalive ;;
    close1k) path=/1k.txt mode=close ;;
    ka1m) path=/1m.txt mode=keepalive ;;
    h2c) path=/1k.txt mode=h2c ;;
    ka1k50) path=/1k.txt mode=h1c50 ;;
    *) echo "[$TAG] unknown case $case" >&2; return 1 ;;
    esac
    if [ "$mode" = h2c ] || [ "$mode" = h1c50 ]; then
        # h2c: one connection, 10 streams at a time, prior knowledge; h1c50:
        # HTTP/1.1, 50 connections, one request at a time each; every answer 2xx
        local opts=(-c 1 -m 10)
        [ "$mode" = h1c50 ] && opts=(--h1 -c 50 -m 1)
        timeout 300 h2load -n "$n" "${opts[@]}" -H ":authority: $HOSTHDR" "http://127.0.0.1:$port$path" \
            >"$out.client" 2>&1 && grep -q "succeeded, 0 failed, 0 errored" "$out.client" \
            && grep -q "status codes: $n 2xx" "$out.client" \
            || { echo "[$TAG] $case: h2load failed" >&2; cat "$out.client" >&2; return 1; }
    else
        timeout 300 /usr/bin/python3 "$ROOT/bench/reqs.py" 127.0.0.1 "$port" "$HOSTHDR" "$path" "$n" "$mode" \
            || { echo "[$TAG] $case: client failed" >&2; return 1; }
    fi
}

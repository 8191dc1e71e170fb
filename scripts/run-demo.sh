#!/bin/sh
# Starts the demo sandbox's web server (demo/ on 127.0.0.1:8000) and the proxy on
# proxy.conf in the foreground. Ctrl-C stops both.
set -e
cd "$(dirname "$0")/.."
BIN=${1:-build/preview-proxy}
/usr/bin/python3 -m http.server 8000 --bind 127.0.0.1 --directory demo >/dev/null 2>&1 &
DEMO=$!
trap 'kill $DEMO 2>/dev/null' EXIT INT TERM
echo
echo "  Demo sandbox:   http://8000-demo.proxy.localhost:4000/"
echo "  Private one:    curl -H 'X-Daytona-Preview-Token: demo-token' http://8000-private-demo.proxy.localhost:4000/"
echo "  Health:         http://proxy.localhost:4000/health"
echo
"$BIN" -c proxy.conf

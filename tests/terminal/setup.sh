#!/bin/sh
# Installs what the web-terminal test (tests/integration/test_ws_terminal.py)
# needs on Debian 12: the distribution's Chromium, Node.js/npm, redis-server,
# python3-websockets, and from npm @xterm/xterm (served to the page) and
# playwright-core (drives Chromium). Never downloads a browser build of its own:
# playwright-core has no install script, and PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD is
# set anyway.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
need=
[ -x /usr/bin/chromium ] || need="$need chromium"
command -v node >/dev/null 2>&1 || need="$need nodejs"
command -v npm >/dev/null 2>&1 || need="$need npm"
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
/usr/bin/python3 -c 'import websockets' 2>/dev/null || need="$need python3-websockets"
/usr/bin/python3 -c 'import requests' 2>/dev/null || need="$need python3-requests"
/usr/bin/python3 -c 'import pytest' 2>/dev/null || need="$need python3-pytest"
if [ -n "$need" ]; then
    $SUDO apt-get update
    # shellcheck disable=SC2086
    $SUDO apt-get install -y --no-install-recommends $need fonts-dejavu-core
fi
cd "$HERE"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund
else
    npm install --no-audit --no-fund
fi
test -f node_modules/@xterm/xterm/lib/xterm.js
node -e "import('playwright-core').then(() => console.log('playwright-core ok'))"
/usr/bin/chromium --version

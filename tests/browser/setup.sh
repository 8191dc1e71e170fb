#!/bin/sh
# Installs what the browser test (tests/integration/test_browser_chromium.py)
# needs on Debian 12: the distribution's Chromium and playwright-core from npm.
# Never downloads a browser build of its own (playwright-core has no postinstall
# download; PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD is set anyway).
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
if [ -n "$need" ]; then
    $SUDO apt-get update
    # shellcheck disable=SC2086
    $SUDO apt-get install -y --no-install-recommends $need fonts-dejavu-core
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "setup.sh: playwright-core 1.65 needs Node.js >= 20 (found $(node --version))" >&2
    exit 1
fi
cd "$HERE"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund
else
    npm install --no-audit --no-fund
fi
node -e "require('playwright-core')" && /usr/bin/chromium --version

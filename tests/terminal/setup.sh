#!/bin/sh
# Installs what the web-terminal test (tests/integration/test_ws_terminal.py)
# needs on Debian 12: the distribution's Chromium, Node.js/npm, redis-server,
# python3-websockets, and from npm @xterm/xterm (served to the page) and
# playwright-core (drives Chromium). The shared steps are in tests/setup-common.sh.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/../setup-common.sh
. "$HERE/../setup-common.sh"
/usr/bin/python3 -c 'import websockets' 2>/dev/null || need="$need python3-websockets"
/usr/bin/python3 -c 'import requests' 2>/dev/null || need="$need python3-requests"
/usr/bin/python3 -c 'import pytest' 2>/dev/null || need="$need python3-pytest"
apt_install
npm_install
test -f node_modules/@xterm/xterm/lib/xterm.js
node -e "import('playwright-core').then(() => console.log('playwright-core ok'))"
/usr/bin/chromium --version

#!/bin/sh
# Installs what the browser test (tests/integration/test_browser_chromium.py)
# needs on Debian 12: the distribution's Chromium and playwright-core from npm
# (the shared steps are in tests/setup-common.sh).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/../setup-common.sh
. "$HERE/../setup-common.sh"
apt_install
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "setup.sh: playwright-core 1.65 needs Node.js >= 20 (found $(node --version))" >&2
    exit 1
fi
npm_install
node -e "require('playwright-core')" && /usr/bin/chromium --version

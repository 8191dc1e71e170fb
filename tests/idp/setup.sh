#!/bin/sh
# Installs what the OIDC tests' provider (tests/idp/idp.mjs, started by
# tests/integration/idpfix.py) needs on Debian 12: Node.js/npm and
# oidc-provider from npm, plus the Debian python3-jwt and python3-cryptography
# that tests/integration/test_idp_fixture.py verifies ID tokens with (the shared
# steps are in tests/setup-common.sh).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/../setup-common.sh
. "$HERE/../setup-common.sh"
for p in python3-jwt python3-cryptography; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
apt_install
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
    echo "setup.sh: oidc-provider 8 needs Node.js >= 18 (found $(node --version))" >&2
    exit 1
fi
npm_install
node -e "import('oidc-provider').then(() => console.log('oidc-provider ok'))"

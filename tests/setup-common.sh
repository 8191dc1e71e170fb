# shellcheck shell=sh
# Sourced (not run) by tests/browser/setup.sh, tests/idp/setup.sh and
# tests/terminal/setup.sh, with HERE set to the calling script's folder. On
# Debian 12 it collects in $need the packages these tests use (the
# distribution's Chromium, Node.js/npm, redis-server); apt_install installs
# $need, npm_install installs the folder's npm packages. Never downloads a
# browser build of its own: playwright-core has no install script, and
# PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD is set anyway.
export DEBIAN_FRONTEND=noninteractive
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
need=
[ -x /usr/bin/chromium ] || need="$need chromium"
command -v node >/dev/null 2>&1 || need="$need nodejs"
command -v npm >/dev/null 2>&1 || need="$need npm"
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"

apt_install() {
    if [ -n "$need" ]; then
        $SUDO apt-get update
        # shellcheck disable=SC2086
        $SUDO apt-get install -y --no-install-recommends $need fonts-dejavu-core
    fi
}

npm_install() {
    cd "$HERE" || exit 1
    export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
    if [ -f package-lock.json ]; then
        npm ci --no-audit --no-fund
    else
        npm install --no-audit --no-fund
    fi
}

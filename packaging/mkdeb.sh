#!/bin/sh
# mkdeb.sh ROOT VERSION OUTDIR — turns a `make install DESTDIR=ROOT PREFIX=/usr`
# tree into OUTDIR/preview-proxy_VERSION_ARCH.deb with dpkg-deb alone: no
# debhelper, no network. `make deb` runs it; packaging/README.md explains it.
# ROOT is WORK/debian/preview-proxy, where dpkg-shlibdeps looks for a package.
set -eu
root=$1 version=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
arch=$(dpkg --print-architecture)
pkg=preview-proxy
doc=$root/usr/share/doc/$pkg
umask 022

# A version without its changelog entry would ship a changelog that lies.
head -n1 "$here/deb/changelog" | grep -qF "$pkg ($version)" || {
    echo "mkdeb: packaging/deb/changelog has no entry for $version on top" >&2
    exit 1
}

# What dh_strip and dh_installman/dh_installdocs would do.
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    "$root/usr/sbin/preview-proxy" "$root/usr/sbin/proxyctl"
gzip -9nf "$root"/usr/share/man/man5/*.5 "$root"/usr/share/man/man8/*.8
install -d "$doc"
install -m 644 "$here/deb/copyright" "$doc/copyright"
# A native package (the version has no Debian revision): changelog.gz.
gzip -9nc "$here/deb/changelog" > "$doc/changelog.gz"
chmod 644 "$doc/changelog.gz"

# Depends: what dpkg-shlibdeps finds in the binaries, plus adduser (postinst).
# It wants a debian/control naming the package beside the tree, and finds the
# package's root by its DEBIAN directory.
install -d "$root/DEBIAN"
work=$(dirname "$(dirname "$root")")
[ "$root" -ef "$work/debian/$pkg" ] || { echo "mkdeb: ROOT must be WORK/debian/$pkg" >&2; exit 1; }
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$pkg" "$pkg" > "$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O -e"debian/$pkg/usr/sbin/preview-proxy" \
    -e"debian/$pkg/usr/sbin/proxyctl" | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "mkdeb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

for s in postinst prerm postrm; do
    install -m 755 "$here/deb/$s" "$root/DEBIAN/$s"
done
find "$root/etc" -type f | sed "s|^$root||" | sort > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: ${MAINTAINER:-Seed db51c34f maintainers <maintainers@users.noreply.r-seed-db51c34f.example>}
Installed-Size: $size
Depends: $shlibs, adduser
Recommends: logrotate
Suggests: redis-server
Section: net
Priority: optional
Description: edge proxy for sandbox previews
 preview-proxy routes a request for the host PORT-SANDBOX.DOMAIN to that
 port of a sandbox through the runner that hosts it: authentication (API keys,
 preview tokens, auth cookies, signed preview URLs), HTTP/1.1, HTTP/2,
 WebSockets and TLS termination, with records from Redis, a Daytona API
 or its configuration file.
 .
 This package holds the proxy, its admin tool proxyctl, a systemd
 unit (Type=notify, reload on SIGHUP), a default configuration and a
 logrotate file.
CONTROL
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | sort |
    xargs md5sum) > "$root/DEBIAN/md5sums"
chmod 644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

deb=$out/${pkg}_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb"

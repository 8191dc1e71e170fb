"""The Debian package and `make install` (issue 14).

`make deb` is run here (a few seconds once build/ is built) with the normal
build, whatever PROXY_BIN says: the package never holds the sanitizer build.
It is unpacked with dpkg-deb -x into a scratch root; nothing is installed on
this machine and no maintainer script runs.

systemd-analyze verify runs with --root on that scratch root. The container has
no running systemd, and verify needs the units the service depends on
(sysinit.target...) and ExecReload's /bin/kill inside the root, so those are
copied from this machine's systemd into the scratch root: what is verified is
the packaged unit on a Debian 12 system, not on an empty directory.

The installed `preview-proxy -t` checks the installed configuration as is: it
names no certificate, and -t does not open log files, so no path needs the
root prefix. A second test then serves with that configuration, with only the
listen port and the /var/log paths moved into the test's own directory."""
import glob
import gzip
import os
import re
import shutil
import signal
import subprocess

import pytest
import requests

from helpers import BASE_DOMAIN, free_port, wait_until

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = "lib/systemd/system/preview-proxy.service"
CONF = "etc/preview-proxy/proxy.conf"


def clean_env():
    """No MAKEFLAGS from a calling `make SAN=1 test-integration`: it would pass
    SAN=1 down and package the sanitizer build."""
    return {k: v for k, v in os.environ.items()
            if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "SAN", "BUILD",
                         "PREFIX", "DESTDIR", "VERSION")
            and not k.startswith("ASAN") and not k.startswith("UBSAN")}


def run(args, **kw):
    kw.setdefault("timeout", 120)
    return subprocess.run(args, capture_output=True, text=True, env=kw.pop("env", clean_env()),
                          stdin=subprocess.DEVNULL, **kw)


def need(tool):
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (make test-deps installs it)")


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    need("dpkg-deb")
    r = run(["make", "-C", REPO, "--no-print-directory", "deb"], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    debs = glob.glob(os.path.join(REPO, "build", "preview-proxy_*.deb"))
    version = run(["sed", "-n", 's/.*PX_VERSION "\\(.*\\)"/\\1/p', "proxy/px.h"],
                  cwd=REPO).stdout.strip()
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    path = os.path.join(REPO, "build", f"preview-proxy_{version}_{arch}.deb")
    assert path in debs, (path, debs)
    return path


@pytest.fixture(scope="module")
def root(deb, tmp_path_factory):
    d = tmp_path_factory.mktemp("scratch-root")
    r = run(["dpkg-deb", "-x", deb, str(d)])
    assert r.returncode == 0, r.stderr
    return d


def test_control_fields(deb):
    info = run(["dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Depends"]).stdout
    assert "Package: preview-proxy" in info
    depends = re.search(r"^Depends: (.*)$", info, re.M).group(1)
    # computed by dpkg-shlibdeps from what the binaries link
    for lib in ("libc6", "libevent-2.1-7", "libssl3", "libnghttp2-14", "libhiredis0.14",
                "libjansson4", "libhttp-parser2.9", "libsystemd0", "adduser"):
        assert lib in depends, (lib, depends)
    ctl = run(["dpkg-deb", "--ctrl-tarfile", deb]).returncode
    assert ctl == 0


def test_files_in_place(deb, root):
    listing = run(["dpkg-deb", "-c", deb]).stdout
    for line in listing.splitlines():
        assert " root/root " in line, line  # --root-owner-group
    for rel, mode in [("usr/sbin/preview-proxy", 0o755), ("usr/sbin/proxyctl", 0o755),
                      (UNIT, 0o644), (CONF, 0o644), ("etc/logrotate.d/preview-proxy", 0o644),
                      ("usr/share/man/man8/preview-proxy.8.gz", 0o644),
                      ("usr/share/man/man8/proxyctl.8.gz", 0o644),
                      ("usr/share/man/man5/proxy.conf.5.gz", 0o644),
                      ("usr/share/doc/preview-proxy/copyright", 0o644),
                      ("usr/share/doc/preview-proxy/changelog.gz", 0o644)]:
        p = root / rel
        assert p.is_file(), rel
        assert p.stat().st_mode & 0o7777 == mode, (rel, oct(p.stat().st_mode))
    ctl = root.parent / (root.name + "-control")
    assert run(["dpkg-deb", "-e", deb, str(ctl)]).returncode == 0
    assert (ctl / "conffiles").read_text().split() == [
        "/etc/logrotate.d/preview-proxy", "/etc/preview-proxy/proxy.conf"]
    for s in ("postinst", "prerm", "postrm"):
        assert os.access(ctl / s, os.X_OK)
        assert run(["sh", "-n", str(ctl / s)]).returncode == 0


def test_unit_verifies(root):
    need("systemd-analyze")
    units = root / "lib" / "systemd" / "system"
    for f in os.listdir("/lib/systemd/system"):
        src = os.path.join("/lib/systemd/system", f)
        if not (units / f).exists() and not os.path.isdir(src):
            shutil.copy(src, units / f, follow_symlinks=True)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy("/bin/kill", root / "bin" / "kill")
    env = clean_env()
    env["MANPATH"] = str(root / "usr" / "share" / "man")  # Documentation=man:... resolves
    r = run(["systemd-analyze", "verify", f"--root={root}", "/" + UNIT], env=env)
    # verify exits 0 on unknown keys and bad values too: any output is a failure.
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr


def test_unit_and_config_agree(root):
    unit = (root / UNIT).read_text()
    conf = (root / CONF).read_text()
    for line in ("Type=notify",
                 "ExecStartPre=/usr/sbin/preview-proxy -t -c /etc/preview-proxy/proxy.conf",
                 "ExecStart=/usr/sbin/preview-proxy -c /etc/preview-proxy/proxy.conf",
                 "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM", "KillMode=mixed",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "LogsDirectory=preview-proxy",
                 "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"):
        assert line in unit.splitlines(), line
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
    drain = int(re.search(r"^shutdown_timeout (\d+)", conf, re.M).group(1))
    assert stop > drain  # systemd must not SIGKILL a drain the proxy would finish
    for m in re.finditer(r"^(?:access_log|error_log) (\S+)", conf, re.M):
        assert m.group(1).startswith("/var/log/preview-proxy/")  # LogsDirectory, logrotate


def test_installed_binary_checks_installed_config(root):
    r = run([str(root / "usr/sbin/preview-proxy"), "-t", "-c", str(root / CONF)])
    assert r.returncode == 0 and "is good" in r.stderr, r.stderr
    r = run([str(root / "usr/sbin/proxyctl"), "--help"])
    assert r.returncode == 0 and "usage: proxyctl" in r.stdout + r.stderr


def test_installed_binary_serves_installed_config(root, tmp_path):
    port = free_port()
    logs = tmp_path / "log"
    logs.mkdir()
    conf = (root / CONF).read_text()
    conf = conf.replace("listen 127.0.0.1:8080", f"listen 127.0.0.1:{port}")
    conf = conf.replace("/var/log/preview-proxy/", f"{logs}/")
    path = tmp_path / "proxy.conf"
    path.write_text(conf)
    p = subprocess.Popen([str(root / "usr/sbin/preview-proxy"), "-c", str(path)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=clean_env())
    try:
        def health():
            try:
                return requests.get(f"http://127.0.0.1:{port}/health",
                                    headers={"Host": BASE_DOMAIN}, timeout=1).status_code == 200
            except requests.RequestException:
                assert p.poll() is None, (logs / "error.log").read_text()
                return False
        wait_until(health, timeout=10, what="installed proxy /health")
        # no records: a preview host is refused, and the refusal is logged
        r = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": "3000-nobody.example.com"},
                         timeout=5)
        assert r.status_code in (401, 404)
        wait_until(lambda: f"status={r.status_code} " in (logs / "access.log").read_text(),
                   timeout=5, what="access line")
        assert "serving" in (logs / "error.log").read_text()
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_man_pages_render_without_warnings(root):
    need("groff")
    pages = sorted(glob.glob(str(root / "usr/share/man/man*/*.gz")))
    assert len(pages) == 3
    for page in pages:
        src = gzip.open(page).read()
        r = subprocess.run(["groff", "-man", "-ww", "-z"], input=src, capture_output=True,
                           timeout=30)
        assert r.returncode == 0 and r.stderr == b"", (page, r.stderr)
        r = run(["man", "--warnings", "-l", page], env=dict(clean_env(), MANWIDTH="80"))
        assert r.returncode == 0 and r.stderr == "", (page, r.stderr)
        assert "SEE ALSO" in re.sub(".\x08", "", r.stdout)  # bold/underline by overstrike


def test_logrotate_config_parses(root, tmp_path):
    need("logrotate")
    r = run(["logrotate", "--debug", "--state", str(tmp_path / "state"),
             str(root / "etc/logrotate.d/preview-proxy")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "error" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


def test_lintian_has_no_errors_or_warnings(deb):
    need("lintian")
    r = run(["lintian", "--allow-root", "--display-level", ">=warning", deb], timeout=300)
    tags = [ln for ln in r.stdout.splitlines() if re.match(r"^[EW]: ", ln)]
    assert tags == [], r.stdout + r.stderr  # packaging/README.md explains what remains


def test_make_install_prefix_destdir(tmp_path):
    dest = tmp_path / "dest"
    r = run(["make", "-C", REPO, "--no-print-directory", "install", f"DESTDIR={dest}",
             "PREFIX=/usr/local"], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for rel in ("usr/local/sbin/preview-proxy", "usr/local/sbin/proxyctl",
                "usr/local/share/man/man8/preview-proxy.8", "usr/local/share/man/man8/proxyctl.8",
                "usr/local/share/man/man5/proxy.conf.5", "etc/logrotate.d/preview-proxy",
                "etc/preview-proxy/proxy.conf",
                "usr/local/lib/systemd/system/preview-proxy.service"):
        assert (dest / rel).is_file(), rel
    unit = (dest / "usr/local/lib/systemd/system/preview-proxy.service").read_text()
    assert "ExecStart=/usr/local/sbin/preview-proxy -c /etc/preview-proxy/proxy.conf" in unit
    assert "/usr/sbin/" not in unit
    # an existing configuration is the administrator's: never replaced
    (dest / "etc/preview-proxy/proxy.conf").write_text("listen 127.0.0.1:9\n")
    r = run(["make", "-C", REPO, "--no-print-directory", "install", f"DESTDIR={dest}",
             "PREFIX=/usr/local"], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (dest / "etc/preview-proxy/proxy.conf").read_text() == "listen 127.0.0.1:9\n"

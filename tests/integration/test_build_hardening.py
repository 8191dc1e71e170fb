"""Issue 12 item 5: the binaries are built hardened — a position-independent
executable, relocations read-only and bound at start (full RELRO), stack
canaries, and (outside the sanitizer build, where ASan replaces them) the
checked libc calls of _FORTIFY_SOURCE. Read off the ELF files with readelf."""
import os
import subprocess

import pytest




def readelf(args, path):
    return subprocess.run(["readelf", *args, path], capture_output=True, text=True,
                          check=True).stdout


def binaries(proxy_bin):
    ctl = os.environ.get("PROXYCTL_BIN") or os.path.join(os.path.dirname(proxy_bin), "proxyctl")
    return [proxy_bin, ctl]


@pytest.mark.parametrize("which", [0, 1], ids=["preview-proxy", "proxyctl"])
def test_hardened_elf(proxy_bin, which):
    path = binaries(proxy_bin)[which]
    assert os.path.isfile(path), path
    head = readelf(["-h"], path)
    assert "DYN (Position-Independent Executable" in head, head
    dyn = readelf(["-d"], path)
    assert "BIND_NOW" in dyn and "PIE" in dyn, dyn
    assert "GNU_RELRO" in readelf(["-lW"], path)
    syms = readelf(["--dyn-syms", "-W"], path)
    assert "__stack_chk_fail" in syms
    if "__asan_init" not in syms:
        assert "_chk" in syms.replace("__stack_chk_fail", ""), "no _FORTIFY_SOURCE checked calls"

"""Helpers for the overlay and sandbox tests: a tiny busybox root filesystem, leftovers.

The root filesystem is made by hand from Debian's static /usr/bin/busybox (one
symlink per applet we use), so these tests need nothing but root, overlayfs and
runc.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

BUSYBOX = Path("/usr/bin/busybox")
APPLETS = [
    "sh", "echo", "cat", "id", "ls", "touch", "mkdir", "hostname", "wget", "sleep",
    "grep", "test", "true", "false", "pwd", "env", "rm", "stat", "kill", "wc",
]  # fmt: skip
PASSWD = """root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app user:/home/app:/bin/sh
"""
GROUP = """root:x:0:
staff:x:50:app
app:x:1000:
"""


def make_busybox_rootfs(root: Path, *, with_etc: bool = True) -> Path:
    """A minimal busybox system in ``root``: /bin, and with_etc /etc/passwd, /etc/group
    and the /dev, /proc, /sys mount points real images have."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    if with_etc:
        (root / "etc").mkdir()
        (root / "etc" / "passwd").write_text(PASSWD)
        (root / "etc" / "group").write_text(GROUP)
        for mount_point in ("dev", "proc", "sys"):
            (root / mount_point).mkdir()
    return root


def needs_root_and_runc():
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts, runc)")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (scripts/install-deps.sh installs it)")



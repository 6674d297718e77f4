"""A Debian root filesystem from ``debootstrap``, made once per machine.

The tarball is cached under /var/cache/imgbuild-tests (or
$IMGBUILD_TEST_CACHE), named by a hash of everything that decides its
content: suite, variant, the extra packages (``--include``) and what is
removed afterwards. A lock keeps two test runs on one machine from both
running debootstrap. Used by tests/interop (as a base other tools pack) and
tests/apps (imported as the examples' Debian base).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from comparetools import mounts_under, run_tool

CACHE_DIR = Path(os.environ.get("IMGBUILD_TEST_CACHE", "/var/cache/imgbuild-tests"))
DEBIAN_SUITE = "bookworm"
DEBIAN_VARIANT = "minbase"
# What a Docker image of Debian leaves out of a debootstrap tree (as the
# official images' debuerreotype does): device nodes, the host's name and
# resolver, apt's downloaded package lists and caches.
DEBIAN_REMOVED = (
    "dev/*", "etc/hostname", "etc/resolv.conf", "var/lib/apt/lists/*",
    "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/log/bootstrap.log",
)  # fmt: skip


def debian_cache_key(packages: tuple[str, ...] = ()) -> str:
    """Everything that decides the cached tree's content."""
    recipe = {
        "suite": DEBIAN_SUITE,
        "variant": DEBIAN_VARIANT,
        "removed": DEBIAN_REMOVED,
        "tar": "--numeric-owner --xattrs",
    }
    if packages:  # absent when empty: the key of the plain minbase tree stays what it was
        recipe["include"] = sorted(packages)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def debian_rootfs_tar(packages: tuple[str, ...] = ()) -> Path:
    """A tarball of ``debootstrap --variant=minbase [--include=...] bookworm``, cached or made now."""
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed; run scripts/install-deps.sh --test")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    name = f"debootstrap-{DEBIAN_SUITE}-{DEBIAN_VARIANT}-{debian_cache_key(packages)}.tar"
    cached = CACHE_DIR / name
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cached.exists():
            _make_debian_tar(cached, packages)
    return cached


def _make_debian_tar(destination: Path, packages: tuple[str, ...]) -> None:
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=destination.parent))
    rootfs = work / "rootfs"
    include = [f"--include={','.join(sorted(packages))}"] if packages else []
    try:
        completed = subprocess.run(
            ["debootstrap", f"--variant={DEBIAN_VARIANT}", *include, DEBIAN_SUITE, str(rootfs)],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if completed.returncode != 0:
            pytest.fail(
                f"debootstrap failed ({completed.returncode}); it needs Debian's mirror:\n"
                f"{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
            )
        for pattern in DEBIAN_REMOVED:
            for path in rootfs.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        partial = work / "rootfs.tar"
        run_tool("tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), ".")
        os.replace(partial, destination)
    finally:
        # debootstrap mounts /proc and /sys in the tree while it works; a failed
        # run can leave them. Never delete through a mount point.
        for point in mounts_under(work):
            subprocess.run(["umount", point], capture_output=True)
        if not mounts_under(work):
            shutil.rmtree(work)

"""A Debian root filesystem from ``debootstrap``, made once per machine.

The recipe is the benchmark's (bench/debian.py: what debootstrap makes, what
is removed, the tar, the image settings), so that the tests and the
benchmark build on the same base. The tarball is cached under
/var/cache/imgbuild-tests (or $IMGBUILD_TEST_CACHE), named by a hash of
everything that decides its content; a lock keeps two test runs on one
machine from both running debootstrap. Used by tests/interop (as a base
other tools pack) and tests/apps (imported as the examples' Debian base).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CACHE_DIR = Path(os.environ.get("IMGBUILD_TEST_CACHE", "/var/cache/imgbuild-tests"))
BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench_recipe():
    """bench/debian.py, imported as bench/run.py imports it (bench/ on the path,
    for that import only: bench/profile.py must not hide the standard library's)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("debian")
    finally:
        sys.path.remove(str(BENCH))


recipe = _bench_recipe()


def debian_rootfs_tar() -> Path:
    """A tarball of ``debootstrap --variant=minbase bookworm``, cached or made now."""
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed; run scripts/install-deps.sh --test")
    return recipe.cached_rootfs_tar(CACHE_DIR, _run)


def unpack_like_docker_images(tar: Path, tree: Path) -> None:
    """The tar as a tree, with what Docker's official Debian images add (bench/debian.py)."""
    recipe.unpack(tar, tree, _run)


def _run(argv: list[str]) -> None:
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if completed.returncode != 0:
        pytest.fail(
            f"{argv[0]} failed ({completed.returncode}); debootstrap needs Debian's mirror:\n"
            f"{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
        )

"""Fixtures for the fault tests: a small file system to fill, and a summary line of the kill -9 runs."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.faulttools import FAULTS, FILESYSTEM_BYTES, FaultStats, mounts_under


@pytest.fixture(autouse=True)
def _needs_root_and_runc():
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts, runc)")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (scripts/install-deps.sh installs it)")


def _is_mounted(point: Path) -> bool:
    return str(point) in mounts_under(point)


@pytest.fixture
def small_fs(tmp_path) -> Iterator[Path]:
    """A fresh 64 MiB ext4 (no blocks reserved for root) mounted on a directory of its own."""
    image = tmp_path / "disk.img"
    point = tmp_path / "small"
    point.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(FILESYSTEM_BYTES)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(point)], check=True, capture_output=True)
    try:
        yield point
    finally:
        for point_below in sorted(mounts_under(point), key=len, reverse=True):
            if point_below != str(point):  # a leftover of the test's own failure
                subprocess.run(["umount", "-l", point_below], capture_output=True)
        gc.collect()  # the test's Store objects hold index.db and lock files open there
        if _is_mounted(point) and subprocess.run(["umount", str(point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
            raise AssertionError(f"{point} was busy after the test; detached it lazily")


@pytest.fixture(scope="session")
def fault_stats() -> FaultStats:
    return FAULTS


def pytest_terminal_summary(terminalreporter):
    if FAULTS.runs:
        terminalreporter.write_line(FAULTS.summary())

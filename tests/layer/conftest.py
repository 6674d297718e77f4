"""Fixtures for the layer tests: real overlayfs mounts, unmounted by us at the end."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator:
    """mount(lowers, upper=None, options="") -> merged dir; lowers top first, like lowerdir=."""
    mounted: list[Path] = []
    counter = 0

    def mount(lowers: list[Path], upper: Path | None = None, options: str = "") -> Path:
        nonlocal counter
        counter += 1
        merged = tmp_path / f"merged-{counter}"
        merged.mkdir()
        all_options = "lowerdir=" + ":".join(os.fspath(p) for p in lowers)
        if upper is not None:
            work = tmp_path / f"work-{counter}"
            work.mkdir()
            all_options += f",upperdir={upper},workdir={work}"
        if options:
            all_options += "," + options
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", all_options, os.fspath(merged)],
            check=True,
            capture_output=True,
        )
        mounted.append(merged)
        return merged

    def unmount(merged: Path) -> None:
        subprocess.run(["umount", os.fspath(merged)], check=True)
        mounted.remove(merged)

    mount.unmount = unmount  # type: ignore[attr-defined]
    yield mount
    for merged in reversed(mounted):
        subprocess.run(["umount", os.fspath(merged)], check=False)

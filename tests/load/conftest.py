"""Fixtures for the load test: root and runc, and one summary line."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import pytest


@pytest.fixture(autouse=True)
def _needs_root_and_runc():
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts, runc)")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (scripts/install-deps.sh installs it)")


@dataclass
class LoadStats:
    rounds: int = 0
    builds: int = 0
    succeeded: int = 0
    pushes: int = 0
    collections: int = 0
    collections_skipped: int = 0  # a build held the writer lease: untagged only
    fsck_runs: int = 0  # while the builds ran
    mismatches: int = 0
    duplicates: int = 0
    fsck_problems: int = 0
    leftovers: int = 0
    steps_run: int = 0  # by all builds of all rounds
    distinct_steps: int = 0  # what one build of each Dockerfile runs: the rest raced on a cache key


_stats = LoadStats()


@pytest.fixture(scope="session")
def load_stats() -> LoadStats:
    return _stats


def pytest_terminal_summary(terminalreporter):
    s = _stats
    if not s.rounds:
        return
    fsck = "fsck clean" if not s.fsck_problems else f"{s.fsck_problems} fsck problems"
    terminalreporter.write_line(
        f"load: {s.rounds} round(s) of 8 concurrent builds (+ {s.pushes} pushes, "
        f"{s.collections} garbage collections of which {s.collections_skipped} deferred while builds wrote, "
        f"{s.fsck_runs} fsck), "
        f"{s.succeeded}/{s.builds} builds succeeded ({s.steps_run - s.distinct_steps} steps run twice at once), "
        f"{s.mismatches} digest mismatches, "
        f"{s.duplicates} duplicate layers, {s.leftovers} leftovers, {fsck}"
    )

"""Fixtures for the load test: root and runc, and one summary line."""

from __future__ import annotations

import pytest
from imagetools import require_root_and_runc
from load.loadtools import LOAD, LoadStats


@pytest.fixture(autouse=True)
def _needs_root_and_runc():
    require_root_and_runc()


@pytest.fixture(scope="session")
def load_stats() -> LoadStats:
    return LOAD


def pytest_terminal_summary(terminalreporter):
    s = LOAD
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

"""Fixtures for the fault tests: what a killed build may leave, and a summary line."""

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
class FaultStats:
    runs: int = 0
    leftovers: int = 0
    mismatches: int = 0
    finished_first: int = 0  # builds that ended before their kill came


_stats = FaultStats()


@pytest.fixture(scope="session")
def fault_stats() -> FaultStats:
    return _stats


def pytest_terminal_summary(terminalreporter):
    if _stats.runs:
        terminalreporter.write_line(
            f"faults: {_stats.runs} kill -9 runs, {_stats.leftovers} leftovers, "
            f"{_stats.mismatches} digest mismatches"
            + (f" ({_stats.finished_first} builds ended before the kill)" if _stats.finished_first else "")
        )

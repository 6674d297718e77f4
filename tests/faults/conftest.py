"""Fixtures for the fault tests: what a killed build may leave, and a summary line."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import pytest


@pytest.fixture(autouse=True)
def _needs_root_and_runc():
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts, runc)")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (scripts/install-deps.sh installs it)")


@dataclass
class FaultStats:
    runs: dict[str, int] = field(default_factory=dict)  # kill -9 runs by kind: builds, pulls, pushes
    leftovers: int = 0
    mismatches: int = 0
    finished_first: int = 0  # operations that ended before their kill came

    def add(self, kind: str, leftovers: list[str], mismatch: bool, finished_first: bool) -> None:
        """Count one kill -9 run of ``kind`` and what the check after it found."""
        self.runs[kind] = self.runs.get(kind, 0) + 1
        self.leftovers += len(leftovers)
        self.mismatches += bool(mismatch)
        self.finished_first += bool(finished_first)

    def summary(self) -> str:
        total = sum(self.runs.values())
        kinds = ", ".join(f"{count} {kind}" for kind, count in self.runs.items())
        line = (
            f"faults: {total} kill -9 runs ({kinds}), {self.leftovers} leftovers, "
            f"{self.mismatches} digest mismatches"
        )
        if self.finished_first:
            line += f" ({self.finished_first} ended before the kill)"
        return line


_stats = FaultStats()


@pytest.fixture(scope="session")
def fault_stats() -> FaultStats:
    return _stats


def pytest_terminal_summary(terminalreporter):
    if _stats.runs:
        terminalreporter.write_line(_stats.summary())

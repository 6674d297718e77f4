"""Fixtures for the fault tests: a small file system to fill, and a summary line of the kill -9 runs."""

from __future__ import annotations

import pytest
from faults.faulttools import FAULTS, FaultStats
from imagetools import require_root_and_runc


@pytest.fixture(autouse=True)
def _needs_root_and_runc():
    require_root_and_runc()


@pytest.fixture(scope="session")
def fault_stats() -> FaultStats:
    return FAULTS


def pytest_terminal_summary(terminalreporter):
    if FAULTS.runs:
        terminalreporter.write_line(FAULTS.summary())

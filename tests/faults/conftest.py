"""Fixtures for the fault tests: a small file system to fill, and a summary line of the kill -9 runs."""

from __future__ import annotations

import os
import shutil

import pytest
from faults.faulttools import FAULTS, FaultStats


@pytest.fixture(autouse=True)
def _needs_root_and_runc():
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts, runc)")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (scripts/install-deps.sh installs it)")


@pytest.fixture(scope="session")
def fault_stats() -> FaultStats:
    return FAULTS


def pytest_terminal_summary(terminalreporter):
    if FAULTS.runs:
        terminalreporter.write_line(FAULTS.summary())

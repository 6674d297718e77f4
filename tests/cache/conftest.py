"""Fixtures for the cache tests: they build with overlay mounts and runc."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture(autouse=True)
def _needs_root_and_runc():
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts, runc)")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (scripts/install-deps.sh installs it)")

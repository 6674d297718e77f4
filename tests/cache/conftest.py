"""Fixtures for the cache tests: root and runc, and the session's own dockerd (tests/dockertools.py)."""

from __future__ import annotations

import os
import shutil

import pytest
from dockertools import running_dockerd


@pytest.fixture(autouse=True)
def _needs_root_and_runc():
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts, runc, dockerd)")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (scripts/install-deps.sh installs it)")


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory):
    with running_dockerd(tmp_path_factory.mktemp("dockerd")) as docker:
        yield docker

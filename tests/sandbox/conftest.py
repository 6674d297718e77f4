"""Fixtures for the overlay and sandbox tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from sandbox.sandboxtools import make_busybox_rootfs


@pytest.fixture
def busybox(tmp_path) -> Path:
    """A busybox root filesystem with /etc/passwd and /etc/group (see sandboxtools)."""
    return make_busybox_rootfs(tmp_path / "busybox")

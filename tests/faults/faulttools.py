"""Helpers for the fault tests: what a killed build may leave under a store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def mounts_under(root: Path) -> list[str]:
    """Mount points in /proc/self/mountinfo at or below ``root``."""
    prefix = str(Path(root).resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def containers_under(root: Path) -> list[str]:
    """runc containers whose bundle lies under ``root``."""
    listing = subprocess.run(["runc", "list", "--format", "json"], check=True, capture_output=True, text=True)
    prefix = str(Path(root).resolve()) + "/"
    return [c["id"] for c in json.loads(listing.stdout or "null") or [] if c.get("bundle", "").startswith(prefix)]


def clear_leftovers(root: Path) -> None:
    """After a failed check: delete what a killed build left, so later tests run."""
    for container in containers_under(root):
        subprocess.run(["runc", "delete", "--force", container], capture_output=True)
    for point in sorted(mounts_under(root), key=lambda p: p.count("/"), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)

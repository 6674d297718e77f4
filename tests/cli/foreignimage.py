"""Images made by other tools (umoci, then skopeo), loaded into the test's store,
with their digests as the other tools compute them."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class ForeignImage:
    name: str
    archive: Path  # an OCI archive written by skopeo
    config_digest: str  # sha256 of the raw config bytes skopeo reads
    manifest_digest: str  # sha256 of the raw manifest bytes skopeo reads
    regular_bytes: int  # the bytes of the regular files in its layer


def _tool(*argv: str) -> bytes:
    if shutil.which(argv[0]) is None:
        pytest.fail(f"{argv[0]} is not installed (scripts/install-deps.sh --test installs it)")
    return subprocess.run(argv, check=True, capture_output=True).stdout


def umoci_image(
    work: Path, name: str, *, env=(), cmd=(), entrypoint=(), labels=None, files=None, executables=()
) -> ForeignImage:
    """``umoci new/config/insert`` into a layout, then ``skopeo copy`` to an OCI archive named ``name``."""
    layout, tree = work / "layout", work / "tree"
    files = files if files is not None else {"etc/motd": b"made by umoci\n"}
    for relative, data in files.items():
        path = tree / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if relative in executables else 0o644)
    (tree / "link").symlink_to("etc/motd")  # symlinks have no size in Docker's count
    _tool("umoci", "init", "--layout", str(layout))
    _tool("umoci", "new", "--image", f"{layout}:1")
    config = ["umoci", "config", "--image", f"{layout}:1"]
    config += [arg for value in env for arg in ("--config.env", value)]
    config += [arg for value in cmd for arg in ("--config.cmd", value)]
    config += [arg for value in entrypoint for arg in ("--config.entrypoint", value)]
    config += [arg for key, value in (labels or {}).items() for arg in ("--config.label", f"{key}={value}")]
    _tool(*config)
    _tool("umoci", "insert", "--image", f"{layout}:1", str(tree), "/")
    archive = work / "image.tar"
    _tool("skopeo", "--insecure-policy", "copy", f"oci:{layout}:1", f"oci-archive:{archive}:{name}")
    raw_config = _tool("skopeo", "inspect", "--config", "--raw", f"oci-archive:{archive}")
    raw_manifest = _tool("skopeo", "inspect", "--raw", f"oci-archive:{archive}")
    return ForeignImage(
        name,
        archive,
        "sha256:" + hashlib.sha256(raw_config).hexdigest(),
        "sha256:" + hashlib.sha256(raw_manifest).hexdigest(),
        sum(len(data) for data in files.values()),
    )


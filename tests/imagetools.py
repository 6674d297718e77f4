"""Test helpers that make real base images without any registry or Dockerfile.

No public registry is reachable from the build machines, so the tests make
their base image from Debian's static busybox: a root filesystem with
/bin/busybox, a symlink per applet, /etc/passwd and /etc/group.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from imgbuild.image import Image, Platform, new_config
from imgbuild.layer.write import write_layer
from imgbuild.store import Store

BUSYBOX = Path("/usr/bin/busybox")

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
app:x:1000:1000:app user:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
staff:x:50:app
app:x:1000:
nogroup:x:65534:
"""


def busybox_applets() -> list[str]:
    output = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True).stdout
    return sorted(name for name in output.split() if name and "/" not in name)


def make_busybox_rootfs(root: Path) -> Path:
    """Fill ``root`` with a minimal busybox system and return it."""
    for directory in ("bin", "etc", "tmp", "root", "home/app", "usr/bin", "var"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    os.chown(root / "home/app", 1000, 1000)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    for applet in busybox_applets():
        link = root / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def make_busybox_image(store: Store, tag: str = "busybox:latest") -> Image:
    """Write a one-layer busybox image into ``store`` and tag it."""
    with tempfile.TemporaryDirectory(dir=store.tmp_dir) as work:
        rootfs = make_busybox_rootfs(Path(work) / "rootfs")
        with store.blob_writer() as blob:
            digests = write_layer(rootfs, blob, compression="gzip", source_date_epoch=0)
        store.record_layer(digests.digest, digests.diff_id, digests.media_type, digests.size)
    config = new_config(Platform.host())
    config["config"] = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"],
    }
    config["rootfs"]["diff_ids"] = [digests.diff_id]
    config["created"] = "1970-01-01T00:00:00Z"
    config["history"] = [{"created": "1970-01-01T00:00:00Z", "created_by": "imgbuild test: busybox rootfs"}]
    from imgbuild.image import Descriptor

    layer = Descriptor(digests.media_type, digests.digest, digests.size)
    image = store.write_image(config, [layer])
    store.tag(tag, image.manifest_descriptor)
    return image


def temp_leftovers(store: Store) -> list[str]:
    """What is in the store's tmp/ besides the processes' own (empty) owner directories.

    Every process that wrote to the store keeps ``tmp/owner-*/`` and its lock
    file until it exits (see imgbuild.store.owner); what matters is what is in them.
    """
    from imgbuild.store.owner import is_owner_entry

    found = []
    for entry in sorted(store.tmp_dir.iterdir()):
        if not is_owner_entry(entry.name):
            found.append(entry.name)
        elif entry.is_dir():
            found.extend(f"{entry.name}/{inner.name}" for inner in sorted(entry.iterdir()))
    return found


def recorded_diff_id(store: Store, digest: str) -> str | None:
    """The diff_id the store's index records for blob ``digest`` (None: not recorded)."""
    rows = store.db.query("SELECT diff_id FROM layers WHERE digest=?", (digest,))
    return rows[0]["diff_id"] if rows else None


def require_root_and_runc(needs: str = "overlay mounts, runc") -> None:
    """Skip the calling test unless it runs as root with runc installed."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root ({needs})")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (scripts/install-deps.sh installs it)")


def read_terminal(leader: int, timeout: float = 120) -> bytes:
    """Everything a child writes to the pseudo-terminal ``leader`` until it closes
    it (or writes nothing for ``timeout`` seconds); closes ``leader``."""
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return b"".join(chunks)

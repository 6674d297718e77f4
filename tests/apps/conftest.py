"""The examples/ applications, built and run on a Debian base made here.

The base is ``debootstrap --variant=minbase bookworm`` (tests/debiantools.py:
made once per machine and cached, keyed by its package list), imported with
``imgbuild import`` once per session into a store all tests here share, so
each example's apt layer is built once per run.

Our machines reach PyPI and npm through a TLS-intercepting proxy whose CA
the host trusts (/usr/local/share/ca-certificates). The fixture puts those
certificates into the base's /usr/local/share/ca-certificates before the
import, where Debian's ca-certificates package (which each example installs,
as it must on a Debian image) adds them to the trust store. The examples
themselves stay as a user would write them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from apps.apptools import BASE, DEBIAN_PATH, HOST_CA_DIR, Apps, tail
from debiantools import debian_rootfs_tar
from imagetools import require_root_and_runc


@pytest.fixture(scope="session")
def apps(tmp_path_factory) -> Apps:
    """A store with the Debian base imported as debian:bookworm; removed at the end."""
    require_root_and_runc("overlay mounts, runc, debootstrap")
    work = tmp_path_factory.mktemp("apps")
    root = work / "store"
    tree = work / "debian"
    tree.mkdir()
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "-xf", str(debian_rootfs_tar()), "-C", str(tree)],
        check=True, capture_output=True,
    )  # fmt: skip
    _add_host_certificates(tree)
    apps = Apps(root, work)
    started = time.monotonic()
    imported = apps.imgbuild(
        "import", "--compression", "zstd", "-m", "debootstrap --variant=minbase bookworm",
        "--change", f"ENV PATH={DEBIAN_PATH}", "--change", 'CMD ["bash"]', str(tree), BASE,
    )  # fmt: skip
    assert imported.returncode == 0, tail(imported)
    print(f"\napps: Debian base imported in {time.monotonic() - started:.1f}s")
    shutil.rmtree(tree)
    yield apps
    shutil.rmtree(root)


def _add_host_certificates(tree: Path) -> None:
    target = tree / "usr" / "local" / "share" / "ca-certificates"
    target.mkdir(parents=True, exist_ok=True)
    for certificate in sorted(HOST_CA_DIR.glob("*.crt")):
        if certificate.is_file() and not certificate.is_symlink():
            shutil.copyfile(certificate, target / certificate.name)
            os.chmod(target / certificate.name, 0o644)

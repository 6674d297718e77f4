"""The examples/ applications, built and run on a Debian base made here.

The base is ``debootstrap --variant=minbase bookworm`` (tests/debiantools.py:
made once per machine and cached, keyed by its package list), imported with
``imgbuild import`` once per session into a store all tests here share, so
each example's apt layer is built once per run. Like Docker's official Debian
images, the base keeps no .deb files after apt runs and dpkg does not fsync.

Our machines reach PyPI and npm through a TLS-intercepting proxy whose CA
the host trusts (/usr/local/share/ca-certificates). The builds here pass those
certificates with ``--ca-cert``, as a user behind such a proxy would: RUN
steps trust them while they run, and neither the base nor the examples hold
them.
"""

from __future__ import annotations

import gc
import shutil
import time

import pytest
from apps.apptools import BASE, DEBIAN_PATH, Apps, tail
from comparetools import mounts_under, runc_containers_under
from debiantools import debian_rootfs_tar, unpack_like_docker_images
from imagetools import require_root_and_runc


@pytest.fixture(scope="session")
def apps(tmp_path_factory) -> Apps:
    """A store with the Debian base imported as debian:bookworm; removed at the end."""
    require_root_and_runc("overlay mounts, runc, debootstrap")
    work = tmp_path_factory.mktemp("apps")
    root = work / "store"
    tree = work / "debian"
    unpack_like_docker_images(debian_rootfs_tar(), tree)
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
    gc.collect()  # in-process runs' Store objects: their SQLite files go when they are collected
    # Every `imgbuild run` and build ended (servers by Ctrl-C): nothing may be left
    # running or mounted, and nothing is ever deleted through a mount point.
    left = mounts_under(root) + runc_containers_under(root)
    assert not left, f"left behind under {root}: {left}"
    shutil.rmtree(root)

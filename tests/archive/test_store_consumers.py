"""Real OCI tools read the store directly: umoci unpacks the exact tree, runc runs it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from imagetools import make_busybox_rootfs

from imgbuild.image import Descriptor, Platform, new_config
from imgbuild.layer.write import write_layer
from imgbuild.store import Store

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="umoci unpack and runc run need root"),
]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; .ci/run installs the test dependencies")
    return path


def make_tree(root: Path) -> Path:
    """A busybox system plus one of each kind of entry a layer must carry."""
    make_busybox_rootfs(root)
    (root / "srv/data").mkdir(parents=True)
    (root / "srv/data/binary").write_bytes(bytes(range(256)) * 64)
    os.chown(root / "srv/data/binary", 1000, 1000)
    os.chmod(root / "srv/data/binary", 0o640)
    (root / "usr/bin/setuid-tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "usr/bin/setuid-tool", 0o4755)
    os.link(root / "srv/data/binary", root / "srv/data/hardlink")
    os.mkfifo(root / "srv/fifo", 0o600)
    os.mknod(root / "srv/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "srv/absolute-link").symlink_to("/bin/busybox")
    (root / "srv/relative-link").symlink_to("../bin/busybox")
    long_dir = root / "srv" / ("d" * 120) / ("e" * 120)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 200)).write_text("a long path")
    (root / "srv/private").mkdir(mode=0o700)
    os.chown(root / "srv/private", 1, 1)
    return root


def describe_tree(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, content digest / link target / device)."""
    entries = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            info = path.lstat()
            kind = stat.S_IFMT(info.st_mode)
            if stat.S_ISREG(info.st_mode):
                detail = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                detail = (os.major(info.st_rdev), os.minor(info.st_rdev))
            else:
                detail = None
            entries[str(path.relative_to(root))] = (
                kind,
                stat.S_IMODE(info.st_mode),
                info.st_uid,
                info.st_gid,
                detail,
            )
    return entries


def image_from_tree(store: Store, tree: Path, tag: str) -> None:
    with store.writer_lease():
        with store.blob_writer() as blob:
            digests = write_layer(tree, blob, compression="gzip", source_date_epoch=0)
        store.record_layer(digests.digest, digests.diff_id, digests.media_type, digests.size)
        config = new_config(Platform.host())
        config["config"] = {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]}
        config["rootfs"]["diff_ids"] = [digests.diff_id]
        image = store.write_image(
            config, [Descriptor(digests.media_type, digests.digest, digests.size)]
        )
        store.tag(tag, image.manifest_descriptor)


@pytest.fixture
def unpacked(store_root, tmp_path):
    """(source tree, umoci bundle) for an image made from the tree."""
    store = Store(store_root)
    tree = make_tree(tmp_path / "tree")
    image_from_tree(store, tree, "busybox:latest")
    bundle = tmp_path / "bundle"
    result = subprocess.run(
        [need("umoci"), "unpack", "--image", f"{store.layout}:busybox:latest", str(bundle)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return tree, bundle


def test_umoci_unpacks_exactly_the_tree_the_image_was_made_from(unpacked):
    tree, bundle = unpacked
    expected, actual = describe_tree(tree), describe_tree(bundle / "rootfs")
    assert actual.keys() == expected.keys()
    differences = {
        path: (expected[path], actual[path]) for path in expected if expected[path] != actual[path]
    }
    assert differences == {}
    rootfs = bundle / "rootfs"
    assert (rootfs / "srv/data/binary").stat().st_ino == (
        rootfs / "srv/data/hardlink"
    ).stat().st_ino


def test_runc_runs_echo_hello_in_the_unpacked_bundle(unpacked, tmp_path):
    _, bundle = unpacked
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/echo", "hello"]
    config_path.write_text(json.dumps(config))
    state = tmp_path / "runc-state"
    result = subprocess.run(
        [
            need("runc"),
            "--root",
            str(state),
            "run",
            "--bundle",
            str(bundle),
            f"imgbuild-store-test-{os.getpid()}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"

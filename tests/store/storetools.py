"""Helpers for the store, archive and image-verb tests: small real images, store snapshots."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from imgbuild.image import Descriptor, Image, Platform, new_config
from imgbuild.layer.write import write_layer
from imgbuild.store import Store

PROJECT = Path(__file__).resolve().parents[2]


def write_tree(root: Path, files: dict[str, bytes | str]) -> Path:
    """Create ``files`` (relative path -> content) under ``root``."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def add_layer(
    store: Store, files: dict[str, bytes | str], compression: str = "gzip"
) -> tuple[Descriptor, str]:
    """Write a layer holding ``files`` into the store; returns (descriptor, diff_id)."""
    with tempfile.TemporaryDirectory(dir=store.tmp_dir) as work:
        tree = write_tree(Path(work) / "tree", files)
        with store.blob_writer() as blob:
            digests = write_layer(tree, blob, compression=compression, source_date_epoch=0)
    store.record_layer(digests.digest, digests.diff_id, digests.media_type, digests.size)
    return Descriptor(digests.media_type, digests.digest, digests.size), digests.diff_id


def image_from_layers(
    store: Store,
    layers: list[tuple[Descriptor, str]],
    tag: str | None,
    history: list[dict] | None = None,
    created: str = "2024-01-02T03:04:05Z",
) -> Image:
    """Write a config and manifest over existing layers and tag it (``None``: keep untagged)."""
    config = new_config(Platform.host())
    config["config"] = {"Cmd": ["sh"]}
    config["created"] = created
    config["rootfs"]["diff_ids"] = [diff_id for _, diff_id in layers]
    config["history"] = history or [
        {"created": created, "created_by": f"layer {i}"} for i in range(len(layers))
    ]
    image = store.write_image(config, [descriptor for descriptor, _ in layers])
    if tag:
        store.tag(tag, image.manifest_descriptor)
    else:
        store.keep_untagged(image.manifest_descriptor)
    return image


def make_small_image(
    store: Store, tag: str | None, files: dict[str, bytes | str], **kwargs
) -> Image:
    """A one-layer image holding ``files``; with the writer lease held throughout, as builds do."""
    compression = kwargs.pop("compression", "gzip")
    with store.writer_lease():
        layer = add_layer(store, files, compression)
        return image_from_layers(store, [layer], tag, **kwargs)


def blob_files(store: Store) -> set[str]:
    return {path.name for path in store.blobs_dir.iterdir()}


def run_python(script: str, *args: str, **kwargs) -> subprocess.Popen:
    """Start ``python3 -c script args...`` with imgbuild and the test helpers importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), str(PROJECT / "tests")])
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, **kwargs)


def snapshot_of(store, image):
    """A snapshot of ``image``'s first layer (an empty directory stands for its tree)."""
    return store.add_snapshot(image.diff_ids[0], image.diff_ids[0], store.make_temp_dir("snap-"))

"""``load`` unpacks each layer into the snapshot of its place in the stack as it
arrives, as ``docker load`` does, so the first build on the image extracts nothing."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from imagetools import recorded_diff_id, temp_leftovers
from ocitools import LayerBlob, compress_layer, python_tar, sha256_digest, write_layout
from store.storetools import add_layer, image_from_layers

from imgbuild.archive.load import load
from imgbuild.archive.save import save
from imgbuild.errors import DigestMismatch
from imgbuild.image import chain_ids
from imgbuild.store import Store
from imgbuild.store.fsck import check_store


@pytest.fixture
def stack_store(store_root):
    """An image whose bottom layer comes again on top: [a, b, a]."""
    store = Store(store_root)
    a = add_layer(store, {"a/file": "a\n", "a/link-target": "t\n"})
    b = add_layer(store, {"b": "b\n"})
    return store, image_from_layers(store, [a, b, a], "stack:1")


@pytest.mark.parametrize("archive_format", ["oci", "docker"])
def test_load_unpacks_every_layer_at_its_place_in_the_stack(stack_store, tmp_path, archive_format):
    source, _ = stack_store
    archive = tmp_path / "stack.tar"
    save(source, ["stack:1"], archive, format=archive_format)
    store = Store(tmp_path / "loaded")

    load(store, archive)

    image = store.load_image("stack:1")
    chain = chain_ids(image.diff_ids)
    snapshots = [store.snapshot_path(chain_id) for chain_id in chain]
    assert None not in snapshots
    assert len(set(snapshots)) == 3  # one directory per place, though layers 0 and 2 are one blob
    assert (snapshots[0] / "a" / "file").read_text() == "a\n"
    assert (snapshots[1] / "b").read_text() == "b\n"
    assert (snapshots[2] / "a" / "file").read_text() == "a\n"
    for blob, diff_id in zip(image.layers, image.diff_ids, strict=True):
        assert recorded_diff_id(store, blob.digest) == diff_id
    assert check_store(store).ok
    assert temp_leftovers(store) == []


def test_loading_again_extracts_nothing(stack_store, tmp_path):
    source, _ = stack_store
    archive = tmp_path / "stack.tar"
    save(source, ["stack:1"], archive, format="oci")
    store = Store(tmp_path / "loaded")
    load(store, archive)
    before = {row["chain_id"]: row["id"] for row in store.db.snapshot_rows()}
    assert len(before) == 3

    load(store, archive)

    assert {row["chain_id"]: row["id"] for row in store.db.snapshot_rows()} == before


def test_a_layer_that_lies_about_its_diff_id_leaves_no_snapshot(tmp_path):
    tar = python_tar({"f": b"real\n"})
    lying = compress_layer(tar, "gzip")
    lying.diff_id = sha256_digest(b"something else")
    archive = _layout_archive(tmp_path, [compress_layer(python_tar({"g": b"good\n"}), "gzip"), lying])
    store = Store(tmp_path / "store")

    with pytest.raises(DigestMismatch, match="does not match the image config"):
        load(store, archive)

    # The good bottom layer got its snapshot; the liar got none, and no tag.
    rows = store.db.snapshot_rows()
    assert [row["diff_id"] for row in rows] == [sha256_digest(python_tar({"g": b"good\n"}))]
    assert store.refs() == []
    assert temp_leftovers(store) == []


def _layout_archive(tmp_path: Path, layers: list[LayerBlob]) -> Path:
    layout = tmp_path / "layout"
    write_layout(layout, "liar:1", layers, "test")
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(layout / name, arcname=name)
    return archive

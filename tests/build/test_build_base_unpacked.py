"""A base image is unpacked when it enters the store (load, import), not by the
first build on it: that build only adds the snapshots of its own layers."""

from __future__ import annotations

from imagetools import make_busybox_image, temp_leftovers

from imgbuild.archive.load import load
from imgbuild.archive.save import save
from imgbuild.builder.importimage import ImportOptions, import_image
from imgbuild.image import chain_ids
from imgbuild.store import Store
from imgbuild.store.fsck import check_store


def _snapshots(store: Store) -> dict[str, int]:
    return {row["chain_id"]: row["id"] for row in store.db.snapshot_rows()}


def test_a_build_on_a_loaded_image_extracts_none_of_its_layers(build_df, tmp_path):
    source = Store(tmp_path / "source")
    make_busybox_image(source, "busybox:latest")
    archive = tmp_path / "busybox.tar"
    save(source, ["busybox:latest"], archive, format="oci")
    store = Store(tmp_path / "store")
    load(store, archive)
    base = store.load_image("busybox:latest")
    base_chain = chain_ids(base.diff_ids)[-1]
    loaded = _snapshots(store)
    assert set(loaded) == {base_chain}

    built = build_df("FROM busybox\nRUN echo hi > /hi\n", store=store)

    after = _snapshots(store)
    assert after[base_chain] == loaded[base_chain]  # the same directory, not extracted again
    assert set(after) == {base_chain, chain_ids(built.image.diff_ids)[-1]}
    assert built.tree()["hi"].data == b"hi\n"
    assert check_store(store).ok
    assert temp_leftovers(store) == []


def test_an_imported_directory_is_unpacked_by_the_import(tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "motd").write_text("imported\n")
    store = Store(tmp_path / "store")

    image = import_image(store, ImportOptions(source=str(rootfs), name="imported:1"))

    snapshot = store.snapshot_path(image.diff_ids[0])
    assert snapshot is not None
    assert (snapshot / "etc" / "motd").read_text() == "imported\n"
    assert temp_leftovers(store) == []

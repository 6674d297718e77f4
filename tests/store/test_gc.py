"""Garbage collection after untagging: what goes, what stays."""

from __future__ import annotations

import time

from store.storetools import add_layer, blob_files, image_from_layers, make_small_image, snapshot_of

from imgbuild.store import Store
from imgbuild.store.fsck import check_store
from imgbuild.store.gc import collect_garbage, referenced_blobs
from imgbuild.store.lock import FENCE_MARGIN


def digests_of(image) -> set[str]:
    return {image.digest, image.config_descriptor.digest, *(layer.digest for layer in image.layers)}


def hexes(digests: set[str]) -> set[str]:
    return {d.split(":", 1)[1] for d in digests}


def test_untag_then_collect_removes_only_what_no_other_image_uses(store_root):
    store = Store(store_root)
    shared = add_layer(store, {"etc/shared": "shared by both"})
    own = add_layer(store, {"etc/own": "only in b"})
    image_a = image_from_layers(store, [shared], "a:1")
    image_b = image_from_layers(store, [shared, own], "b:1")
    assert blob_files(store) == hexes(digests_of(image_a) | digests_of(image_b))

    store.untag("a:1")
    result = collect_garbage(store)

    assert set(result.removed) == {image_a.digest, image_a.config_descriptor.digest}
    assert result.freed_bytes == image_a.manifest_descriptor.size + image_a.config_descriptor.size
    assert blob_files(store) == hexes(digests_of(image_b))
    assert store.load_image("b:1").layers == image_b.layers

    store.untag("b:1")
    collect_garbage(store)
    assert blob_files(store) == set()
    assert store.db.query("SELECT * FROM layers") == []  # rows of removed blobs go too
    assert check_store(store).ok


def test_untagged_images_and_other_tags_keep_their_blobs(store_root):
    store = Store(store_root)
    untagged = make_small_image(store, None, {"x": "untagged"})
    image = make_small_image(store, "app:1", {"y": "tagged twice"})
    store.tag("app:2", image.manifest_descriptor)
    store.untag("app:1")

    assert collect_garbage(store).removed == []
    assert digests_of(untagged) | digests_of(image) == referenced_blobs(store)


def test_build_cache_pins_layers_and_unused_snapshots_go(store_root):
    """A cache entry keeps its layer blob (and that layer's snapshot); a
    snapshot whose layer no image and no cache entry uses goes with its blob,
    as ``docker rmi`` frees an image's layers; a tagged image keeps its own."""
    store = Store(store_root)
    cached = make_small_image(store, "cached:1", {"c": "cached layer"})
    dropped = make_small_image(store, "snap:1", {"s": "snapshot layer"})
    tagged = make_small_image(store, "kept:1", {"k": "kept layer"})
    cached_layer = cached.layers[0]
    now = time.time()
    store.db.execute(
        "INSERT INTO cache(key, layer_digest, created_by, created, last_used) VALUES (?,?,?,?,?)",
        ("sha256:" + "1" * 64, cached_layer.digest, "RUN true", now, now),
    )
    cached_snapshot, dropped_snapshot, tagged_snapshot = (snapshot_of(store, i) for i in (cached, dropped, tagged))

    store.untag("cached:1")
    store.untag("snap:1")
    result = collect_garbage(store)

    assert blob_files(store) == hexes({cached_layer.digest} | digests_of(tagged))
    assert set(result.removed) == digests_of(dropped) | {cached.digest, cached.config_descriptor.digest}
    assert result.snapshots == 1
    assert cached_snapshot.is_dir() and tagged_snapshot.is_dir() and not dropped_snapshot.exists()
    assert {row["diff_id"] for row in store.db.snapshot_rows()} == {cached.diff_ids[0], tagged.diff_ids[0]}
    assert check_store(store).ok


def test_a_running_build_keeps_the_snapshots_it_may_use(store_root):
    store = Store(store_root)
    image = make_small_image(store, "base:1", {"b": "base layer"})
    with store.build_lease():  # a build that resolved base:1 and is unpacking it
        snapshot = snapshot_of(store, image)
        store.untag("base:1")
        result = collect_garbage(store)
        assert snapshot.is_dir() and result.snapshots == 0
        assert image.layers[0].digest in {"sha256:" + name for name in blob_files(store)}
    assert collect_garbage(store).snapshots == 1
    assert not snapshot.exists()


def test_a_snapshot_a_running_build_used_stays_though_nothing_else_keeps_it(store_root):
    """A snapshot made long before the build started, of an image untagged
    since, but mounted by the build after it started (its last_used is past
    the build's fence): no image, cache entry or blob written since names it,
    so only the running-build rule keeps it until the build ends."""
    store = Store(store_root)
    image = make_small_image(store, "old:1", {"o": "old layer"})
    snapshot = snapshot_of(store, image)
    store.untag("old:1")
    time.sleep(FENCE_MARGIN + 0.2)  # all of it older than the build's fence
    with store.build_lease():
        store.db.touch_snapshot(image.diff_ids[0])  # the build mounts it
        result = collect_garbage(store)
        assert snapshot.is_dir() and result.snapshots == 0
    assert collect_garbage(store).snapshots == 1
    assert not snapshot.exists()


def test_collection_is_skipped_while_a_writer_holds_the_lease(store_root):
    store = Store(store_root)
    image = make_small_image(store, "app:1", {"f": "x"})
    store.untag("app:1")
    with store.writer_lease():  # a build in progress whose blobs are not tagged yet
        result = collect_garbage(store)
    assert result.skipped_reason
    assert result.removed == []
    assert blob_files(store) == hexes(digests_of(image))

    assert set(collect_garbage(store).removed) == digests_of(image)


def test_stray_names_in_blobs_dir_are_left_for_fsck(store_root):
    store = Store(store_root)
    (store.blobs_dir / "not-a-digest").write_text("x")
    assert collect_garbage(store).removed == []
    assert (store.blobs_dir / "not-a-digest").exists()


def test_collection_refuses_to_guess_when_a_tagged_manifest_is_missing(store_root):
    store = Store(store_root)
    broken = make_small_image(store, "broken:1", {"f": "x"})
    store.blob_path(broken.digest).unlink()
    result = collect_garbage(store)
    assert "missing" in result.skipped_reason and "fsck" in result.skipped_reason
    # Its config and layer may be all that is left of the image: they stay.
    assert store.has_blob(broken.config_descriptor.digest) and store.has_blob(
        broken.layers[0].digest
    )
    store.untag("broken:1")
    assert set(collect_garbage(store).removed) == {
        broken.config_descriptor.digest,
        broken.layers[0].digest,
    }

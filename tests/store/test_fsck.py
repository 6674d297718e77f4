"""fsck finds real damage in a real store, and repairs only what is safe to remove."""

from __future__ import annotations

import time

from imagetools import make_busybox_image
from store.storetools import make_small_image

from imgbuild.image import Descriptor
from imgbuild.store import Store
from imgbuild.store.fsck import check_store


def kinds(report) -> list[tuple[str, str]]:
    return sorted((p.kind, p.subject) for p in report.problems)


def test_a_healthy_store_is_clean(store_root):
    store = Store(store_root)
    make_busybox_image(store, "busybox:latest")
    make_small_image(store, None, {"f": "untagged"})
    report = check_store(store)
    assert report.ok, report.problems
    assert report.blobs_checked == len(store.all_blobs()) == 6
    assert report.refs_checked == 2


def test_a_flipped_byte_in_a_layer_blob_is_found_and_repair_removes_the_blob(store_root):
    store = Store(store_root)
    image = make_busybox_image(store, "busybox:latest")
    layer = image.layers[0]
    path = store.blob_path(layer.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    report = check_store(store)
    assert kinds(report) == [("corrupt-blob", layer.digest)]
    assert report.problems[0].repairable

    repaired = check_store(store, repair=True)
    assert repaired.repaired == [f"removed corrupt-blob {layer.digest}"]
    assert not path.exists()
    # The tag still needs the layer: that is left for the user (pull/build again, or rmi).
    assert kinds(repaired) == [("missing-blob", layer.digest)]
    assert "busybox:latest" in repaired.problems[0].message


def test_a_missing_config_blob_is_reported_with_the_tag(store_root):
    store = Store(store_root)
    image = make_small_image(store, "app:1", {"f": "x"})
    store.blob_path(image.config_descriptor.digest).unlink()
    report = check_store(store)
    assert kinds(report) == [("missing-blob", image.config_descriptor.digest)]
    assert "app:1" in report.problems[0].message
    assert not report.problems[0].repairable


def test_a_wrong_size_in_a_descriptor_is_reported(store_root):
    store = Store(store_root)
    image = make_small_image(store, None, {"f": "x"})
    layer = image.layers[0]
    wrong = Descriptor(layer.media_type, layer.digest, layer.size + 1)
    bad = store.write_image(image.config, [wrong])
    store.tag("bad:1", bad.manifest_descriptor)
    report = check_store(store)
    assert kinds(report) == [("size-mismatch", layer.digest)]


def test_an_unparseable_index_json_is_reported(store_root):
    store = Store(store_root)
    (store.layout / "index.json").write_text('{"manifests": [')
    report = check_store(store)
    assert [p.kind for p in report.problems] == ["bad-layout"]
    assert "index.json" in report.problems[0].subject


def test_a_manifest_that_is_not_json_is_reported(store_root):
    store = Store(store_root)
    digest = store.write_blob(b"this is not json")
    store.tag("broken:1", Descriptor("application/vnd.oci.image.manifest.v1+json", digest, 16))
    report = check_store(store)
    assert kinds(report) == [("bad-document", digest)]


def test_snapshot_table_and_directory_disagreements_are_repaired(store_root):
    store = Store(store_root)
    kept = store.add_snapshot("sha256:" + "a" * 64, "sha256:" + "a" * 64, store.make_temp_dir("snap-"))
    gone = store.add_snapshot("sha256:" + "b" * 64, "sha256:" + "b" * 64, store.make_temp_dir("snap-"))
    gone.rmdir()
    orphan = store.snapshots_dir / "999"
    (orphan / "etc").mkdir(parents=True)

    report = check_store(store)
    assert kinds(report) == [
        ("snapshot-missing", f"snapshot {gone.name}"),
        ("snapshot-orphan", str(orphan)),
    ]

    repaired = check_store(store, repair=True)
    assert repaired.ok, repaired.problems
    assert len(repaired.repaired) == 2
    assert kept.is_dir() and not orphan.exists()
    assert [row["id"] for row in store.db.query("SELECT id FROM snapshots")] == [int(kept.name)]


def test_leftover_temp_files_are_reported_and_removed_but_not_while_a_writer_runs(store_root):
    store = Store(store_root)
    leftover = store.tmp_dir / "blob-killed"
    leftover.write_bytes(b"half a blob")
    with store.writer_lease():
        busy = check_store(store, repair=True)
    assert busy.ok and leftover.exists()
    assert "another imgbuild process" in busy.notes[0]

    report = check_store(store)
    assert kinds(report) == [("leftover-temp", str(leftover))]
    assert check_store(store, repair=True).ok
    assert not leftover.exists()


def test_stray_files_and_cache_rows_without_layers_are_repaired(store_root):
    store = Store(store_root)
    stray = store.blobs_dir / "notes.txt"
    stray.write_text("not a blob")
    now = time.time()
    store.db.execute(
        "INSERT INTO cache(key, layer_digest, created_by, created, last_used) VALUES (?,?,?,?,?)",
        ("key-1", "sha256:" + "c" * 64, "RUN true", now, now),
    )
    report = check_store(store)
    assert kinds(report) == [("cache-missing-layer", "key-1"), ("stray-file", str(stray))]
    assert check_store(store, repair=True).ok
    assert not stray.exists()
    assert store.db.query("SELECT * FROM cache") == []

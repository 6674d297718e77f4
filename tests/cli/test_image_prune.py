"""``imgbuild image prune`` and ``imgbuild system df``: dangling images by default, all with -a,
until=, and the same numbers as the cache verbs (one measurement code)."""

from __future__ import annotations

import json
import os
import re

import pytest
from cli.foreignimage import umoci_image
from imagetools import make_busybox_image

from imgbuild.store import Store
from imgbuild.store.gc import disk_usage


def _on_disk(store: Store, digests) -> int:
    return sum(os.lstat(store.blob_path(d)).st_blocks * 512 for d in digests)


def _blobs(store: Store) -> set[str]:
    return {"sha256:" + path.name for path in store.blobs_dir.iterdir()}


@pytest.fixture
def stocked(cli, store_root, tmp_path):
    """busybox (tagged, created 1970); a tagged umoci image; a dangling umoci image
    (its tag moved away); an image built without -t (dangling, with a cache entry)."""
    store = Store(store_root)
    make_busybox_image(store, "busybox:latest")
    kept = umoci_image(tmp_path / "kept", "team/kept:1", files={"k": os.urandom(20000)})
    old = umoci_image(tmp_path / "old", "team/old:1", files={"o": os.urandom(30000)})
    for image in (kept, old):
        assert cli("load", "-i", str(image.archive)).exit_code == 0
    store.keep_untagged(store.untag("team/old:1"))  # dangling, as Docker leaves a moved tag's image
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "payload").write_bytes(os.urandom(50000))
    (context / "Dockerfile").write_text("FROM busybox\nCOPY payload /payload\n")
    built = cli("build", "-q", "--progress", "plain", str(context))
    assert built.exit_code == 0, built.stderr
    return store, kept, old, built.stdout.strip()


def _dangling(store: Store) -> list:
    return [d for name, d in store.refs() if name is None]


def test_prune_removes_dangling_images_and_only_their_blobs(cli, stocked):
    store, kept, old, built_id = stocked
    dangling = _dangling(store)
    assert len(dangling) == 2
    # The loaded image's layers go with it, snapshots (`load` unpacked them)
    # included, as `docker image prune` frees them; the built image's layer
    # stays with the build cache's entry (`cache prune` removes it).
    old_blobs = {old.manifest_digest, old.config_digest}
    old_layers = {layer["digest"] for layer in store.read_json(old.manifest_digest)["layers"]}
    old_diff_ids = set(store.load_image(old.manifest_digest).diff_ids)
    old_snapshots = [row["id"] for row in store.db.snapshot_rows() if row["diff_id"] in old_diff_ids]
    assert old_snapshots, "load unpacks every layer"
    built = store.load_image(next(d for d in dangling if d.digest != old.manifest_digest))
    expected_gone = old_blobs | old_layers | {built.digest, built.config_descriptor.digest}
    expected_bytes = _on_disk(store, expected_gone) + sum(
        disk_usage(store.snapshots_dir / str(sid)) for sid in old_snapshots
    )
    before = _blobs(store)
    df = json.loads(cli("system", "df", "--format", "json").stdout)

    result = cli("image", "prune", "-f")
    assert result.exit_code == 0, result.stderr
    assert before - _blobs(store) == expected_gone
    assert set(re.findall(r"^deleted: (sha256:\w+)$", result.stdout, re.M)) == expected_gone
    assert sorted(re.findall(r"^untagged: (sha256:\w+)$", result.stdout, re.M)) == sorted(d.digest for d in dangling)
    from imgbuild.units import human_size

    assert result.stdout.endswith(f"Total reclaimed space: {human_size(expected_bytes)}\n")
    assert df["images"]["reclaimable_bytes"] == expected_bytes  # system df said so beforehand
    assert sorted(name for name, _ in store.refs()) == ["busybox:latest", "team/kept:1"]
    assert built.layers[0].digest in _blobs(store)
    assert not {row["id"] for row in store.db.snapshot_rows()} & set(old_snapshots)
    assert not any((store.snapshots_dir / str(sid)).exists() for sid in old_snapshots)
    assert cli("fsck").exit_code == 0

    again = cli("image", "prune", "-f")
    assert again.stdout == "Total reclaimed space: 0B\n"


def test_prune_all_with_until_keeps_what_is_newer(cli, stocked):
    store, kept, old, _ = stocked
    result = cli("image", "prune", "-a", "-f", "--filter", "until=24h")
    assert result.exit_code == 0, result.stderr
    assert "untagged: busybox:latest" in result.stdout  # created in 1970; the rest today
    assert sorted(name or "<none>" for name, _ in store.refs()) == ["<none>", "<none>", "team/kept:1"]
    everything = cli("image", "prune", "-a", "-f", "--format", "json")
    assert everything.exit_code == 0 and store.refs() == []
    report = json.loads(everything.stdout)
    assert "team/kept:1" in report["untagged"] and kept.config_digest in report["deleted"]
    assert report["freed_bytes"] > 0 and report["skipped_reason"] == ""
    assert kept.config_digest not in _blobs(store)


def test_prune_asks_and_refuses_without_a_terminal(cli, stocked):
    store = stocked[0]
    refs = store.refs()
    result = cli("image", "prune")
    assert result.exit_code == 2 and "add -f" in result.stderr
    assert store.refs() == refs
    bad = cli("image", "prune", "-f", "--filter", "label=x")
    assert bad.exit_code == 2 and "until=DURATION" in bad.stderr


def test_system_df_adds_up_to_cache_du(cli, stocked):
    store, *_ = stocked
    du = json.loads(cli("cache", "du", "--format", "json").stdout)
    df = json.loads(cli("system", "df", "--format", "json").stdout)
    assert df["build_cache"]["total_bytes"] == du["total_bytes"]
    assert df["build_cache"]["reclaimable_bytes"] == du["reclaimable_bytes"]
    assert df["images"]["size_bytes"] == du["shared_bytes"]
    assert df["images"]["images"] == 4 and df["images"]["active"] == 2
    assert df["build_cache"]["entries"] == du["entries"] >= 1

    table = cli("system", "df").stdout.splitlines()
    assert re.split(r"\s{2,}", table[0]) == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    from imgbuild.units import human_size

    images_row = re.split(r"\s{2,}", table[1])
    assert images_row[:4] == ["Images", "4", "2", human_size(du["shared_bytes"])]
    cache_row = re.split(r"\s{2,}", table[2])
    assert cache_row == ["Build Cache", str(du["entries"]), str(sum(e["shared"] for e in du["entry_list"])),
                         human_size(du["total_bytes"] - du["shared_bytes"]), human_size(du["reclaimable_bytes"])]

    by_name = {row["repository"]: row for row in df["images"]["image_list"]}
    kept = by_name["team/kept"]
    assert kept["size_bytes"] == kept["unique_bytes"] > 20000 and kept["shared_bytes"] == 0
    busybox = by_name["busybox"]  # its layer (blob and snapshot) is the built image's too
    assert 0 < busybox["shared_bytes"] < busybox["size_bytes"]
    assert sum(row["unique_bytes"] for row in by_name.values()) <= df["images"]["size_bytes"]
    verbose = cli("system", "df", "-v").stdout
    assert "Images space usage:" in verbose and "Build cache usage:" in verbose
    assert "team/kept" in verbose and "UNIQUE SIZE" in verbose and "HITS" in verbose

"""``imgbuild cache du`` against a real store: every figure checked with GNU du."""

from __future__ import annotations

import re
import shlex
import sqlite3
import subprocess

import pytest
from cache.prunetools import big_run, build, cli, cli_json, measured_bytes, new_store, rows
from load.loadtools import cli_command, cli_env

from imgbuild.image import chain_ids
from imgbuild.store import Store
from imgbuild.units import human_size, parse_duration, parse_size

pytestmark = pytest.mark.root


def _du(*paths) -> int:
    done = subprocess.run(["du", "-s", "-c", "-B1", *map(str, paths)], capture_output=True, text=True, check=True)
    return int(done.stdout.splitlines()[-1].split()[0])


def _store(tmp_path):
    root = tmp_path / "store"
    new_store(root)
    build(root, tmp_path / "kept", "FROM busybox\n" + big_run("kept", 200), "-t", "kept:1")
    build(root, tmp_path / "gone", "FROM busybox\n" + big_run("gone", 300), "-t", "gone:1")
    cli(root, "rmi", "gone:1")
    return root


def _image_paths(root) -> list:
    """The blob files and snapshot directories the images in the store use."""
    store = Store(root)
    paths = []
    for name in ("busybox:latest", "kept:1"):
        image = store.load_image(name)
        for digest in (image.digest, image.config_descriptor.digest, *(layer.digest for layer in image.layers)):
            paths.append(store.blob_path(digest))
        for chain_id in chain_ids(image.diff_ids):
            paths.append(store.snapshot_path(chain_id))
    return paths


def test_du_measures_total_shared_and_reclaimable(tmp_path):
    root = _store(tmp_path)
    report = cli_json(root, "cache", "du")

    assert report["entries"] == len(rows(root, "SELECT key FROM cache")) == 2
    assert report["total_bytes"] == measured_bytes(root)
    assert report["shared_bytes"] == _du(*_image_paths(root))
    assert report["reclaimable_bytes"] > 300 * 1024
    # Reclaimable is what a prune then frees, and --all frees exactly the rest
    # of what the images do not use.
    freed = cli_json(root, "cache", "prune")["freed_bytes"]
    assert freed == report["reclaimable_bytes"]
    assert cli_json(root, "cache", "prune", "--all")["freed_bytes"] == report["reclaimable_all_bytes"] - freed
    assert measured_bytes(root) == report["shared_bytes"]


def test_du_verbose_lists_every_entry_with_its_measured_layer(tmp_path):
    root = _store(tmp_path)
    report = cli_json(root, "cache", "du", "--verbose")
    store = Store(root)
    by_instruction = {entry["created_by"]: entry for entry in report["entry_list"]}
    kept = next(entry for text, entry in by_instruction.items() if "/kept" in text)
    gone = next(entry for text, entry in by_instruction.items() if "/gone" in text)
    assert kept["shared"] and not gone["shared"]
    for entry in (kept, gone):
        assert entry["size"] == _du(store.blob_path(entry["layer_digest"]))
    assert report["entry_list"][0]["last_used"] <= report["entry_list"][1]["last_used"]  # LRU first

    table = cli(root, "cache", "du", "--verbose").stdout
    assert "RECLAIMABLE" in table and "CREATED BY" in table
    for entry in (kept, gone):
        assert entry["key"].split(":")[1][:12] in table


def test_du_of_an_empty_store(tmp_path):
    root = tmp_path / "store"
    Store(root)
    report = cli_json(root, "cache", "du")
    assert (report["entries"], report["total_bytes"], report["reclaimable_bytes"]) == (0, 0, 0)


def test_du_on_a_terminal_is_a_rich_table_of_the_same_facts(tmp_path):
    root = _store(tmp_path)
    report = cli_json(root, "cache", "du")
    command = " ".join(shlex.quote(part) for part in cli_command(root, "cache", "du", "--verbose"))
    done = subprocess.run(  # script(1) gives the command a pseudo-terminal
        ["script", "-qec", command, "/dev/null"], capture_output=True, text=True, env=cli_env(), timeout=120
    )
    assert done.returncode == 0, done.stdout
    assert "\x1b[" in done.stdout  # rich's styling: a terminal table, not the plain columns
    plain = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)
    assert re.search(rf"\b2\s+{re.escape(human_size(report['total_bytes']))}\s", plain)
    assert human_size(report["reclaimable_bytes"]) in plain


def test_bad_sizes_durations_and_filters_are_usage_errors(tmp_path):
    root = tmp_path / "store"
    Store(root)
    for args, message in [
        (("--keep-storage", "lots"), "--keep-storage 'lots' is not a size"),
        (("--filter", "until=tomorrow"), "--filter until 'tomorrow' is not a duration"),
        (("--filter", "label=x"), "the filter this prune knows is until=DURATION"),
    ]:
        done = subprocess.run(
            cli_command(root, "cache", "prune", *args), capture_output=True, text=True, env=cli_env(), timeout=120
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_sizes_and_durations_read_as_docker_reads_them():
    assert [parse_size(text) for text in ("512", "1KB", "1k", "1.5GB", "2MiB", "10g")] == [
        512, 1024, 1024, 3 * 2**29, 2 * 2**20, 10 * 2**30,
    ]
    assert [parse_duration(text) for text in ("90s", "24h", "1h30m", "7d")] == [90, 86400, 5400, 7 * 86400]


def test_a_snapshot_is_measured_once_and_its_size_kept(tmp_path):
    """A snapshot never changes once made: the first measurement (a build's limits
    check, ``cache du``) keeps its size in the index, and later ones read it there
    instead of walking the tree again (on a full disk every build would)."""
    root = _store(tmp_path)
    assert rows(root, "SELECT COUNT(*) FROM snapshots WHERE disk_bytes IS NOT NULL") == [(0,)]

    first = cli_json(root, "cache", "du")

    kept = dict(rows(root, "SELECT id, disk_bytes FROM snapshots"))
    assert kept and all(size == _du(root / "snapshots" / str(sid)) for sid, size in kept.items())
    assert first["total_bytes"] == measured_bytes(root)
    # What is kept is what the next measurement uses: a changed figure in the
    # index moves the report by exactly that much.
    some_id = next(iter(kept))
    with sqlite3.connect(root / "index.db") as db:
        db.execute("UPDATE snapshots SET disk_bytes = disk_bytes + 4096 WHERE id = ?", (some_id,))
    assert cli_json(root, "cache", "du")["total_bytes"] == first["total_bytes"] + 4096


def test_a_snapshot_row_without_its_directory_is_not_measured_as_empty(tmp_path):
    """The row comes just before the directory's rename: a measurement in between
    counts nothing, but must not keep 0 as the snapshot's size for good."""
    root = _store(tmp_path)
    sid = rows(root, "SELECT MAX(id) FROM snapshots")[0][0]
    directory = root / "snapshots" / str(sid)
    aside = root / "tmp" / "aside"
    directory.rename(aside)
    try:
        cli_json(root, "cache", "du")
        assert rows(root, "SELECT disk_bytes FROM snapshots WHERE id = ?", (sid,)) == [(None,)]
    finally:
        aside.rename(directory)
    cli_json(root, "cache", "du")
    assert rows(root, "SELECT disk_bytes FROM snapshots WHERE id = ?", (sid,)) == [(_du(directory),)]

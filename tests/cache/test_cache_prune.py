"""``imgbuild cache prune`` and automatic collection against a real store.

Images are built by real ``imgbuild build`` processes (overlay mounts, runc);
what the store takes is measured by GNU ``du -B1``, never by the code under
test, and the reported figure must equal what left the disk, to the byte.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time

import pytest
from cache.prunetools import (
    big_run,
    build,
    cli,
    cli_json,
    entries_by_instruction,
    fsck_clean,
    measured_bytes,
    new_store,
    rows,
)
from imagetools import temp_leftovers
from load.loadtools import cli_command, cli_env
from store.storetools import make_small_image, snapshot_of

from imgbuild.cache.prune import Limits, collect_if_over, collection_target, prune
from imgbuild.store import Store
from imgbuild.store.lock import FENCE_MARGIN

pytestmark = pytest.mark.root

KEPT = "FROM busybox\n" + big_run("kept", 200)
GONE = "FROM busybox\n" + big_run("gone", 300) + big_run("gone2", 100)


def _kept_and_gone(tmp_path, root=None):
    """A store with kept:1 tagged and gone:1 built, then untagged: its cache entries,
    layer blobs and snapshots stay behind."""
    root = root or tmp_path / "store"
    new_store(root)
    build(root, tmp_path / "kept", KEPT, "-t", "kept:1")
    build(root, tmp_path / "gone", GONE, "-t", "gone:1")
    cli(root, "rmi", "gone:1")
    return root


def _kept_image_blobs(root) -> list[str]:
    image = Store(root).load_image("kept:1")
    return [image.digest, image.config_descriptor.digest, *(layer.digest for layer in image.layers)]


def test_prune_frees_what_it_reports_and_keeps_what_images_need(tmp_path):
    root = _kept_and_gone(tmp_path)
    entries = entries_by_instruction(root)
    gone_steps = [created_by for created_by in entries if "/gone" in created_by]
    assert len(gone_steps) == 2
    snapshots_before = len(rows(root, "SELECT id FROM snapshots"))
    before = measured_bytes(root)

    result = cli_json(root, "cache", "prune")

    after = measured_bytes(root)
    assert not result["skipped_reason"]
    assert result["freed_bytes"] == before - after  # to the byte: du counts the same blocks
    assert result["freed_bytes"] > 300 * 1024  # the 300 KiB layer, in its blob and its snapshot
    assert sorted(entry["created_by"] for entry in result["entries"]) == sorted(gone_steps)
    assert set(entries_by_instruction(root)) == set(entries) - set(gone_steps)
    assert result["snapshots"] == 2 and len(rows(root, "SELECT id FROM snapshots")) == snapshots_before - 2
    store = Store(root)
    assert all(store.has_blob(digest) for digest in _kept_image_blobs(root))
    fsck_clean(root)
    # kept:1 is still fully cached; gone:1 runs its steps again.
    assert build(root, tmp_path / "kept", KEPT, "-t", "kept:1") == (1, 0)
    assert build(root, tmp_path / "gone", GONE, "-t", "gone:1") == (0, 2)


def test_prune_all_removes_the_entries_images_use_but_never_the_images(tmp_path):
    root = _kept_and_gone(tmp_path)
    kept_blobs = _kept_image_blobs(root)
    before = measured_bytes(root)

    result = cli_json(root, "cache", "prune", "--all")

    assert result["freed_bytes"] == before - measured_bytes(root)
    assert entries_by_instruction(root) == {}
    store = Store(root)
    assert all(store.has_blob(digest) for digest in kept_blobs)
    # The image's snapshots stay too (they are its layers, extracted).
    assert len(rows(root, "SELECT id FROM snapshots")) == 2  # busybox and kept's layer
    fsck_clean(root)
    cli(root, "run", "kept:1", "sh", "-c", "test -s /kept")
    assert build(root, tmp_path / "kept", KEPT, "-t", "kept:1") == (0, 1)


def test_dry_run_removes_nothing_and_predicts_the_real_prune(tmp_path):
    root = _kept_and_gone(tmp_path)
    before = measured_bytes(root)
    entries = entries_by_instruction(root)

    predicted = cli_json(root, "cache", "prune", "--dry-run")

    assert measured_bytes(root) == before and entries_by_instruction(root) == entries
    assert predicted["dry_run"] and predicted["freed_bytes"] > 0
    real = cli_json(root, "cache", "prune")
    assert real["freed_bytes"] == predicted["freed_bytes"] == before - measured_bytes(root)
    assert [e["key"] for e in real["entries"]] == [e["key"] for e in predicted["entries"]]


def test_keep_storage_removes_least_recently_used_first(tmp_path):
    root = tmp_path / "store"
    new_store(root)
    dockerfiles = {name: "FROM busybox\n" + big_run(name, 100) for name in ("x", "y", "z")}
    for name, text in dockerfiles.items():
        build(root, tmp_path / name, text, "-t", f"{name}:1")
        cli(root, "rmi", f"{name}:1")
    time.sleep(0.05)
    assert build(root, tmp_path / "x", dockerfiles["x"]) == (1, 0)  # x is used again: y is the oldest
    cli(root, "rmi", _untagged(root))  # else an image would use x's layer
    before = measured_bytes(root)

    result = cli_json(root, "cache", "prune", "--keep-storage", str(before - 1))

    assert [e["created_by"] for e in result["entries"]] == [_instruction(root, result, "y")]
    assert result["freed_bytes"] == before - measured_bytes(root)
    remaining = " ".join(entries_by_instruction(root))
    assert "/x" in remaining and "/z" in remaining and "/y" not in remaining
    # A limit above what the store takes removes no entry.
    assert cli_json(root, "cache", "prune", "--keep-storage", "1GB")["entries"] == []


def _untagged(root) -> str:
    """The digest of the one untagged image in the store."""
    (digest,) = [d.digest for name, d in Store(root).refs() if name is None]
    return digest


def _instruction(root, result, name) -> str:
    return next(e["created_by"] for e in result["entries"] if f"/{name}" in e["created_by"])


def test_filter_until_only_removes_entries_unused_for_that_long(tmp_path):
    root = _kept_and_gone(tmp_path)
    entries = entries_by_instruction(root)
    old = next(created_by for created_by in entries if "/gone2" in created_by)
    with sqlite3.connect(root / "index.db") as conn:  # as if unused for two days
        conn.execute("UPDATE cache SET last_used=? WHERE created_by=?", (time.time() - 2 * 86400, old))

    result = cli_json(root, "cache", "prune", "--filter", "until=24h")

    assert [e["created_by"] for e in result["entries"]] == [old]
    assert set(entries_by_instruction(root)) == set(entries) - {old}
    fsck_clean(root)


def test_prune_forgets_stat_cache_rows_that_can_never_hit_again(tmp_path):
    root = tmp_path / "store"
    new_store(root)
    for name in ("stays", "goes", "changes"):
        context = tmp_path / name
        context.mkdir()
        (context / "file.txt").write_text(name)
        os.utime(context / "file.txt", (1, 1))  # not "racily clean": remembered
        build(root, context, "FROM busybox\nCOPY file.txt /file.txt\n")
    (tmp_path / "changes" / "file.txt").write_text("changed")
    subprocess.run(["rm", "-r", str(tmp_path / "goes")], check=True)
    paths = {path for (path,) in rows(root, "SELECT path FROM statcache")}
    assert {str(tmp_path / n / "file.txt") for n in ("stays", "goes", "changes")} <= paths

    result = cli_json(root, "cache", "prune")

    left = {path for (path,) in rows(root, "SELECT path FROM statcache")}
    assert str(tmp_path / "stays" / "file.txt") in left
    assert not {str(tmp_path / n / "file.txt") for n in ("goes", "changes")} & left
    assert result["statcache_rows"] >= 2


def test_prune_forgets_remembered_selections_of_contexts_that_are_gone(tmp_path):
    root = tmp_path / "store"
    new_store(root)
    for name in ("stays", "goes"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file.txt").write_text(name)
    time.sleep(0.2)  # files changed within 50 ms of a build are not remembered
    for name in ("stays", "goes"):
        build(root, tmp_path / name, "FROM busybox\nCOPY file.txt /file.txt\n")
    remembered = {path for (path,) in rows(root, "SELECT root FROM selection_digests")}
    assert {str(tmp_path / "stays"), str(tmp_path / "goes")} <= remembered
    subprocess.run(["rm", "-r", str(tmp_path / "goes")], check=True)

    cli_json(root, "cache", "prune")

    left = {path for (path,) in rows(root, "SELECT root FROM selection_digests")}
    assert str(tmp_path / "stays") in left and str(tmp_path / "goes") not in left


def test_a_build_over_max_cache_collects_the_cache_afterwards(tmp_path):
    root = _kept_and_gone(tmp_path)
    entries = entries_by_instruction(root)
    build(root, tmp_path / "other", "FROM busybox\n" + big_run("other", 10))  # default limits: nothing goes
    assert set(entries) < set(entries_by_instruction(root))

    build(root, tmp_path / "kept", KEPT, "-t", "kept:1", env={"IMGBUILD_MAX_CACHE": "1KB"})

    # Down to what the images need: the cache entries went (the last pass with
    # --all too), the images' blobs and snapshots stayed.
    assert entries_by_instruction(root) == {}
    store = Store(root)
    assert all(store.has_blob(digest) for digest in _kept_image_blobs(root))
    fsck_clean(root)
    cli(root, "run", "kept:1", "sh", "-c", "test -s /kept")


def test_max_cache_flag_beats_the_environment_and_bad_sizes_are_usage_errors(tmp_path):
    root = _kept_and_gone(tmp_path)
    entries = entries_by_instruction(root)
    build(root, tmp_path / "kept", KEPT, "-t", "kept:1", "--max-cache", "100GB", env={"IMGBUILD_MAX_CACHE": "1KB"})
    assert entries_by_instruction(root) == entries
    done = subprocess.run(
        cli_command(root, "build", "--max-cache", "lots", str(tmp_path / "kept")),
        capture_output=True, text=True, env=cli_env(), timeout=300,
    )
    assert done.returncode == 2 and "--max-cache 'lots' is not a size" in done.stderr


def test_low_free_space_collects_down_to_what_frees_it(tmp_path, small_fs):
    # The store on a file system of its own: no other writer moves its free space.
    root = _kept_and_gone(tmp_path, small_fs / "store")
    store = Store(root)
    info = os.statvfs(root)
    disk = info.f_blocks * info.f_frsize
    free = info.f_bavail * info.f_frsize
    used = measured_bytes(root)
    # Ask for 200 KiB more free space than there is: the store must give them up.
    limits = Limits(max_cache=disk, min_free=free + 200 * 1024, reserve=0)
    target = collection_target(store, limits, used)
    assert target is not None and used - 210 * 1024 < target < used - 190 * 1024
    # With a reserve above the store's size, a full disk collects nothing.
    assert collection_target(store, Limits(disk, free + 200 * 1024, used), used) is None

    result = collect_if_over(store, limits)

    assert result is not None and not result.skipped_reason
    assert result.freed_bytes == used - measured_bytes(root) >= 200 * 1024


def test_prunes_and_collections_while_builds_run_never_break_them(tmp_path):
    """Four real builds at once on one store, each collecting afterwards
    (IMGBUILD_MAX_CACHE=1KB), while ``cache prune --all`` runs again and again:
    every build succeeds, its image is whole and runs, fsck is clean, nothing
    is left in tmp/, and a prune with nothing running really prunes."""
    root = _kept_and_gone(tmp_path)
    names = [f"c{i}" for i in range(4)]
    dockerfiles = {
        name: "FROM busybox\nRUN echo common > /common\n" + big_run(name, 50) + "COPY own.txt /own.txt\n"
        for name in names
    }
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "own.txt").write_text(name)
        (tmp_path / name / "Dockerfile").write_text(dockerfiles[name])
    env = {**cli_env(), "IMGBUILD_MAX_CACHE": "1KB"}
    prunes = []

    def prune_once():
        done = subprocess.run(
            cli_command(root, "cache", "prune", "--all", "--format", "json"),
            capture_output=True, text=True, env=cli_env(), timeout=300,
        )
        assert done.returncode == 0, done.stderr
        prunes.append(json.loads(done.stdout))

    prune_once()  # the store has reclaimable entries: this one prunes
    builds = []
    for name in names:
        builds.append(
            subprocess.Popen(
                cli_command(root, "build", "--progress", "plain", "-t", f"{name}:1", str(tmp_path / name)),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            )
        )
        prune_once()
    # And in this process, as fast as it goes (a CLI process takes longer to start
    # than a build takes to write its blobs).
    while any(process.poll() is None for process in builds):
        result = prune(Store(root), all_entries=True)
        prunes.append({"skipped_reason": result.skipped_reason, "entries": result.entries})
    outputs = [process.communicate(timeout=300)[0] for process in builds]

    assert [process.returncode for process in builds] == [0] * 4, "\n".join(outputs)
    assert not prunes[0]["skipped_reason"] and prunes[0]["entries"]
    print(f"{len(prunes)} prunes, {sum(bool(p['skipped_reason']) for p in prunes)} deferred to the builds")
    fsck_clean(root)
    store = Store(root)
    for name in names:
        image = store.load_image(f"{name}:1")
        assert all(store.has_blob(layer.digest) for layer in image.layers)
        cli(root, "run", f"{name}:1", "sh", "-c", f"test -s /{name} && test $(cat /own.txt) = {name}")
    assert temp_leftovers(store) == []
    last = cli_json(root, "cache", "prune", "--all")
    assert not last["skipped_reason"]
    fsck_clean(root)


def test_a_bad_limit_in_the_environment_fails_before_the_build(tmp_path):
    root = tmp_path / "store"
    new_store(root)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM busybox\n" + big_run("never", 1))
    done = subprocess.run(
        cli_command(root, "build", "--progress", "plain", str(tmp_path / "ctx")),
        capture_output=True, text=True, env={**cli_env(), "IMGBUILD_MAX_CACHE": "half"}, timeout=300,
    )
    assert done.returncode == 2 and "IMGBUILD_MAX_CACHE 'half' is not a size" in done.stderr, done.stderr
    assert rows(root, "SELECT key FROM cache") == []  # nothing ran


class HeldEndpoint:
    """An HTTP endpoint on 127.0.0.1 that a RUN step calls and that answers
    only when the test lets it: the build is then running, in that step."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.arrived = threading.Event()
        self.release = threading.Event()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                held.arrived.set()
                held.release.wait(300)
                body = b"released\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_prune_keeps_a_snapshot_a_running_build_mounted(tmp_path):
    """The prune's side of the running-build rule (``protect_live_builds``): a
    snapshot made before the build started and used by it since stays, though
    no cache entry, image or blob written since keeps it; after the build it goes."""
    store = Store(tmp_path / "root")
    image = make_small_image(store, "old:1", {"o": "old layer"})
    snapshot = snapshot_of(store, image)
    store.untag("old:1")
    time.sleep(FENCE_MARGIN + 0.2)  # all of it older than the build's fence
    with store.build_lease():
        store.db.touch_snapshot(image.diff_ids[0])  # the build mounts it
        assert prune(store, all_entries=True, wait=5).snapshots == 0
        assert snapshot.is_dir()
    assert prune(store, all_entries=True, wait=5).snapshots == 1
    assert not snapshot.exists()


def test_a_prune_while_a_build_runs_frees_what_it_cannot_need(tmp_path):
    """A build is held inside a RUN step (it calls a loopback endpoint that
    does not answer yet) while ``cache prune --all`` runs on the same store:
    the prune frees the entries and blobs of an untagged image nothing runs
    on, keeps the entry the build hit (reclaimable too, but just used) and
    every blob of the build, and the build then finishes whole: fsck clean."""
    root = _kept_and_gone(tmp_path)
    # The build's first step hits an entry no image uses (its image was removed).
    shared_step = big_run("shared", 50)
    build(root, tmp_path / "earlier", "FROM busybox\n" + shared_step, "-t", "earlier:1")
    cli(root, "rmi", "earlier:1")
    entries = entries_by_instruction(root)
    gone_keys = {key for created_by, key in entries.items() if "/gone" in created_by}
    shared_key = next(key for created_by, key in entries.items() if "/shared" in created_by)
    shared_blob = rows(root, "SELECT layer_digest FROM cache WHERE key=?", (shared_key,))[0][0]
    assert len(gone_keys) == 2
    # What was used before a build started is old to it (imgbuild.store.lock.FENCE_MARGIN).
    time.sleep(FENCE_MARGIN + 0.5)

    endpoint = HeldEndpoint()
    try:
        context = tmp_path / "live"
        context.mkdir()
        (context / "own.txt").write_text("own\n")
        (context / "Dockerfile").write_text(
            "FROM busybox\n" + shared_step
            + f"RUN wget -q -O /answer http://{endpoint.host}/wait\n"
            + "COPY own.txt /own.txt\n"
        )
        running = subprocess.Popen(
            cli_command(root, "build", "--progress", "plain", "-t", "live:1", str(context)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(),
        )
        assert endpoint.arrived.wait(120), "the build never reached its RUN step"
        before = measured_bytes(root)
        pruned = cli_json(root, "cache", "prune", "--all")
        after = measured_bytes(root)
        endpoint.release.set()
        output = running.communicate(timeout=300)[0]
    finally:
        endpoint.close()

    assert not pruned["skipped_reason"], pruned
    pruned_keys = {entry["key"] for entry in pruned["entries"]}
    assert gone_keys <= pruned_keys, "the unrelated old entries went"
    assert shared_key not in pruned_keys, "the entry the running build hit stayed"
    assert pruned["freed_bytes"] == before - after >= 400 * 1024, pruned
    assert any("build(s) running" in note for note in pruned["notes"]), pruned["notes"]
    left = {key for (key,) in rows(root, "SELECT key FROM cache")}
    assert not gone_keys & left and shared_key in left
    assert Store(root).has_blob(shared_blob)

    assert running.returncode == 0, output
    assert "1 cached, 2 run" in output, output
    store = Store(root)
    image = store.load_image("live:1")
    assert all(store.has_blob(layer.digest) for layer in image.layers)
    cli(root, "run", "live:1", "sh", "-c", "test -s /shared && test $(cat /answer) = released && test -f /own.txt")
    fsck_clean(root)
    assert temp_leftovers(store) == []

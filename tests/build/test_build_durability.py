"""A step's tree reaches the disk before its snapshot enters the index.

Steps run on volatile overlays (an unmount syncs nothing, an fsync in a step
does nothing), so ``commit_directory`` syncs the store's file system itself,
beside the layer's write, and only then records the upperdir as the layer's
snapshot. The syncs below are the real syncfs(2), watched; the failing ones
stand in for a disk error, which cannot be made here.
"""

from __future__ import annotations

import errno
import os

import pytest
from imagetools import temp_leftovers

from imgbuild.errors import DiskFull, ImgbuildError
from imgbuild.store import Store, atomic

pytestmark = pytest.mark.root


def test_a_step_runs_on_a_volatile_overlay(build_df):
    built = build_df("FROM busybox\nRUN grep ' / ' /proc/self/mountinfo > /root-mount\n")
    root_mount = built.tree()["root-mount"].data.decode()
    assert " - overlay " in root_mount, root_mount
    assert "volatile" in root_mount.split(" - ")[1], root_mount


def test_the_tree_is_synced_before_its_snapshot_is_recorded(build_df, store, monkeypatch):
    events = []
    real_sync = atomic.sync_file_system
    real_add_snapshot = Store.add_snapshot

    def watched_sync(fd):
        events.append("sync started")
        real_sync(fd)
        events.append("synced")

    def watched_add_snapshot(self, chain_id, diff_id, directory):
        events.append("snapshot recorded")
        return real_add_snapshot(self, chain_id, diff_id, directory)

    monkeypatch.setattr(atomic, "sync_file_system", watched_sync)
    monkeypatch.setattr(Store, "add_snapshot", watched_add_snapshot)
    built = build_df(
        "FROM busybox\nRUN echo one > /one\nCOPY two /two\nRUN echo three > /three\n",
        {"two": "two\n"},
        store=store,
    )
    assert built.tree()["three"].data == b"three\n"
    # the base layer is extracted (not a step's tree); each of the three steps syncs first
    steps = events[events.index("sync started") :]
    assert steps == ["sync started", "synced", "snapshot recorded"] * 3, events


@pytest.mark.parametrize(
    ("code", "error_class", "message"),
    [
        (errno.EIO, ImgbuildError, "cannot sync the file system under .* while committing a layer: Input/output error"),
        (errno.ENOSPC, DiskFull, "No space left on device while committing a layer, under .*: that filesystem is full"),
    ],
)
def test_a_failed_sync_fails_the_step_and_records_no_snapshot(build_df, store, monkeypatch, code, error_class, message):
    def failing_sync(fd):
        raise OSError(code, os.strerror(code))

    build_df("FROM busybox\nRUN true\n", store=store)  # the base's snapshot is made here
    snapshots_before = store.db.query("SELECT count(*) FROM snapshots")[0][0]
    monkeypatch.setattr(atomic, "sync_file_system", failing_sync)
    with pytest.raises(error_class, match=message) as raised:
        build_df("FROM busybox\nRUN echo lost > /lost\n", store=store)
    assert "Dockerfile:2" in str(raised.value)  # the step that failed
    assert store.db.query("SELECT count(*) FROM snapshots")[0][0] == snapshots_before
    assert temp_leftovers(store) == []  # the step's upperdir went with its workspace


def test_a_build_leaves_its_index_written_into_index_db(store, tmp_path, imgbuild_cli):
    # The CLI freezes what it imported away from the collector, so the build
    # closes its connections to index.db itself: the last close writes the WAL
    # into the database and removes it (a connection nobody closed would leave
    # the build's rows in index.db-wal until the next process).
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo x > /x\nCOPY f /f\n")
    (context / "f").write_text("f\n")
    store.db.close()  # this test's own connection, so that the CLI's is the last
    built = imgbuild_cli(store.root, "build", "-t", "closed:1", "--progress", "plain", str(context))
    assert built.returncode == 0, built.stderr
    assert "0 cached, 2 run" in built.stderr
    assert not (store.root / "index.db-wal").exists()
    assert store.db.query("SELECT count(*) FROM cache")[0][0] >= 2  # the rows are in index.db

"""A step's tree reaches the disk before its snapshot enters the index.

Steps run on volatile overlays (an unmount syncs nothing, an fsync in a step
does nothing), so ``commit_directory`` syncs the step's tree itself, beside
the layer's write, and only then records the upperdir as the layer's
snapshot: a small tree file by file, a big one with syncfs(2) of its file
system (``store.atomic.TreeSync``). The syncs below are the real ones,
watched; the failing ones stand in for a disk error, which cannot be made here.
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


# More entries than a tree synced file by file may have (atomic.FILE_BY_FILE_LIMIT).
MANY_FILES = f"mkdir /many && for i in $(seq 1 {atomic.FILE_BY_FILE_LIMIT + 8}); do echo $i > /many/$i; done"


def test_the_tree_is_synced_before_its_snapshot_is_recorded(build_df, store, monkeypatch):
    events = []
    real_sync_files = atomic.sync_tree_files
    real_sync_file_system = atomic.sync_file_system
    real_add_snapshot = Store.add_snapshot

    def watched_sync_files(fd, limit):
        events.append("sync started")
        synced = real_sync_files(fd, limit)
        events.append("files synced" if synced else "too many files")
        return synced

    def watched_sync_file_system(fd):
        real_sync_file_system(fd)
        events.append("file system synced")

    def watched_add_snapshot(self, chain_id, diff_id, directory):
        events.append("snapshot recorded")
        return real_add_snapshot(self, chain_id, diff_id, directory)

    monkeypatch.setattr(atomic, "sync_tree_files", watched_sync_files)
    monkeypatch.setattr(atomic, "sync_file_system", watched_sync_file_system)
    monkeypatch.setattr(Store, "add_snapshot", watched_add_snapshot)
    built = build_df(
        f"FROM busybox\nRUN echo one > /one\nCOPY two /two\nRUN {MANY_FILES}\nRUN echo three > /three\n",
        {"two": "two\n"},
        store=store,
    )
    assert built.tree()["three"].data == b"three\n"
    assert len([name for name in built.tree() if name.startswith("many/")]) == atomic.FILE_BY_FILE_LIMIT + 8
    # the base layer is extracted (not a step's tree); each of the four steps syncs first:
    # the small trees file by file, the big one with its file system
    small = ["sync started", "files synced", "snapshot recorded"]
    big = ["sync started", "too many files", "file system synced", "snapshot recorded"]
    steps = events[events.index("sync started") :]
    assert steps == small + small + big + small, events


@pytest.mark.parametrize(
    ("code", "error_class", "message"),
    [
        (errno.EIO, ImgbuildError, "cannot sync the files under .* while committing a layer: Input/output error"),
        (errno.ENOSPC, DiskFull, "No space left on device while committing a layer, under .*: that filesystem is full"),
    ],
)
@pytest.mark.parametrize(
    ("failing", "step"),
    [("sync_tree_files", "RUN echo lost > /lost"), ("sync_file_system", f"RUN {MANY_FILES}")],
    ids=["file-by-file", "file-system"],
)
def test_a_failed_sync_fails_the_step_and_records_no_snapshot(
    build_df, store, monkeypatch, code, error_class, message, failing, step
):
    def failing_sync(*arguments):
        raise OSError(code, os.strerror(code))

    build_df("FROM busybox\nRUN true\n", store=store)  # the base's snapshot is made here
    snapshots_before = store.db.query("SELECT count(*) FROM snapshots")[0][0]
    monkeypatch.setattr(atomic, failing, failing_sync)
    with pytest.raises(error_class, match=message) as raised:
        build_df(f"FROM busybox\n{step}\n", store=store)
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

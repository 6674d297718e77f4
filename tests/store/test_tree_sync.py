"""store.atomic's tree sync, on real trees: what a small tree's file-by-file sync
touches (and what it must not: a symlink's target, a special file), and when a
tree is too big for it and its file system is synced instead."""

from __future__ import annotations

import os

import pytest

from imgbuild.errors import DiskFull, StoreError
from imgbuild.store import atomic


@pytest.fixture
def fsyncs(monkeypatch):
    """(st_dev, st_ino) of everything fsynced, by any code, while the test runs (the real fsync still runs)."""
    synced = []
    real_fsync = os.fsync

    def watched(fd):
        info = os.fstat(fd)
        synced.append((info.st_dev, info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", watched)
    return synced


def identity(path) -> tuple[int, int]:
    info = os.lstat(path)
    return info.st_dev, info.st_ino


def make_small_tree(root):
    """A changeset as a step leaves one: files, nested directories, a symlink
    out of the tree, a FIFO and (as root) an overlay whiteout."""
    (root / "app" / "lib").mkdir(parents=True)
    (root / "app" / "main.py").write_text("print('hello')\n")
    (root / "app" / "lib" / "util.py").write_text("x = 1\n")
    (root / "empty").mkdir()
    (root / "link").symlink_to(root.parent / "outside")
    os.mkfifo(root / "fifo")
    if os.geteuid() == 0:
        os.mknod(root / "deleted", 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout: char device 0/0


def test_a_small_tree_is_synced_file_by_file(tmp_path, fsyncs):
    outside = tmp_path / "outside"
    outside.write_text("not part of the tree\n")
    root = tmp_path / "tree"
    root.mkdir()
    make_small_tree(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert atomic.sync_tree_files(fd, 16) is True  # 6 or 8 entries
    finally:
        os.close(fd)
    wanted = {
        identity(path)
        for path in (root, root / "app", root / "app" / "lib", root / "empty",
                     root / "app" / "main.py", root / "app" / "lib" / "util.py")
    }  # fmt: skip
    assert set(fsyncs) == wanted
    # the symlink's target, the FIFO and the whiteout are never opened (the FIFO would
    # have blocked a plain open); their entries are in their directory, which was synced
    assert identity(outside) not in fsyncs
    assert identity(root / "fifo") not in fsyncs


def test_a_tree_past_the_limit_is_left_to_the_file_system_sync(tmp_path, fsyncs):
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    for number in range(atomic.FILE_BY_FILE_LIMIT):  # with sub/: one entry too many
        (root / "sub" / f"file{number}").write_text(f"{number}\n")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    descriptors_before = len(os.listdir("/proc/self/fd"))
    try:
        assert atomic.sync_tree_files(fd, atomic.FILE_BY_FILE_LIMIT) is False
        assert len(os.listdir("/proc/self/fd")) == descriptors_before  # sub/ was opened, and closed again
    finally:
        os.close(fd)
    assert fsyncs == []  # nothing synced by halves: the caller syncs the file system


@pytest.mark.parametrize("entries", [3, atomic.FILE_BY_FILE_LIMIT + 1])
def test_tree_sync_takes_the_way_the_tree_size_calls_for(tmp_path, monkeypatch, fsyncs, entries):
    file_system_syncs = []
    real_sync_file_system = atomic.sync_file_system

    def watched(fd):
        file_system_syncs.append(fd)
        real_sync_file_system(fd)

    monkeypatch.setattr(atomic, "sync_file_system", watched)
    root = tmp_path / "tree"
    root.mkdir()
    for number in range(entries):
        (root / f"file{number}").write_text(f"{number}\n")
    descriptors_before = len(os.listdir("/proc/self/fd"))
    with atomic.TreeSync(root, "testing") as synced:
        synced.wait()
    assert len(os.listdir("/proc/self/fd")) == descriptors_before
    if entries <= atomic.FILE_BY_FILE_LIMIT:
        assert file_system_syncs == []
        assert identity(root / "file0") in fsyncs
    else:
        assert len(file_system_syncs) == 1
        assert fsyncs == []


@pytest.mark.parametrize(
    ("code", "error_class", "message"),
    [
        (5, StoreError, r"cannot sync the files under .*tree while testing: Input/output error; .*dmesg"),
        (28, DiskFull, r"No space left on device while testing, under .*tree: that filesystem is full"),
    ],
)
def test_a_failed_fsync_is_raised_by_wait_with_the_tree_named(tmp_path, monkeypatch, code, error_class, message):
    def failing(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing)
    root = tmp_path / "tree"
    root.mkdir()
    (root / "file").write_text("x\n")
    with atomic.TreeSync(root, "testing") as synced, pytest.raises(error_class, match=message):
        synced.wait()

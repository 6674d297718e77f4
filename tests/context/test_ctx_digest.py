"""Content digests of COPY sources, and the stat cache that avoids re-reading files."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from imgbuild.context.dockerignore import IgnoreMatcher
from imgbuild.context.source import BuildContext
from imgbuild.context.statcache import StatCache
from imgbuild.store.index_db import SCHEMA_VERSION, IndexDB


def make_tree(root, files):
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "ctx"
    make_tree(
        root,
        {
            "app/main.py": b"print('hello')\n",
            "app/lib/util.py": b"X = 1\n",
            "app/data.bin": bytes(range(256)),
            "ignored.log": b"log",
        },
    )
    os.symlink("lib/util.py", root / "app" / "util-link")
    return root


def digest_of(root, source="app", *, patterns=(), exclude=(), rootfs=False):
    if rootfs:
        ctx = BuildContext.for_rootfs(root)
    else:
        ctx = BuildContext(root, IgnoreMatcher(list(patterns)))
    return ctx.digest(ctx.select(source, exclude))


def test_digest_is_stable_and_ignores_mtimes(tree):
    before = digest_of(tree)
    assert before.startswith("sha256:") and len(before) == 71
    assert digest_of(tree) == before
    os.utime(tree / "app" / "main.py", (1, 1))
    os.utime(tree / "app" / "lib", (2, 2))
    os.utime(tree / "app" / "util-link", (3, 3), follow_symlinks=False)
    assert digest_of(tree) == before


@pytest.mark.parametrize(
    "change",
    [
        "one_byte",
        "mode",
        "setuid",
        "rename",
        "symlink_target",
        "new_empty_dir",
        "hardlink",
        "xattr",
        "dir_mode",
    ],
)
def test_digest_changes_with_what_the_copy_reads(tree, change):
    before = digest_of(tree)
    main = tree / "app" / "main.py"
    if change == "one_byte":
        main.write_bytes(b"print('hellO')\n")  # same size
    elif change == "mode":
        os.chmod(main, 0o755)
    elif change == "setuid":
        os.chmod(main, 0o4644)
    elif change == "rename":
        main.rename(tree / "app" / "main2.py")
    elif change == "symlink_target":
        os.unlink(tree / "app" / "util-link")
        os.symlink("lib/./util.py", tree / "app" / "util-link")
    elif change == "new_empty_dir":
        (tree / "app" / "empty").mkdir()
    elif change == "hardlink":
        os.link(main, tree / "app" / "main-hard.py")
        after_link = digest_of(tree)
        # a hardlink and an independent copy of the same bytes differ too
        os.unlink(tree / "app" / "main-hard.py")
        (tree / "app" / "main-hard.py").write_bytes(main.read_bytes())
        assert digest_of(tree) != after_link
    elif change == "xattr":
        os.setxattr(main, "user.origin", b"test")
    elif change == "dir_mode":
        os.chmod(tree / "app" / "lib", 0o700)
    assert digest_of(tree) != before


def test_uid_counts_where_the_copy_keeps_it(tree):
    before_rootfs = digest_of(tree, "/app", rootfs=True)
    before_context = digest_of(tree)
    os.chown(tree / "app" / "main.py", 1000, 1000)
    # COPY --from keeps owners: the digest must change
    assert digest_of(tree, "/app", rootfs=True) != before_rootfs
    # from the build context every file becomes 0:0, so the host uid is not read
    assert digest_of(tree) == before_context


def test_digest_ignores_what_is_not_copied(tree):
    before = digest_of(tree, ".", patterns=["*.log"], exclude=["app/data.bin"])
    (tree / "ignored.log").write_bytes(b"changed")
    (tree / "app" / "data.bin").write_bytes(b"changed")
    assert digest_of(tree, ".", patterns=["*.log"], exclude=["app/data.bin"]) == before


def test_digest_covers_names_at_the_destination(tree):
    # the same bytes under a different source name land under a different name
    os.symlink("app/main.py", tree / "alias.py")
    assert digest_of(tree, "app/main.py") != digest_of(tree, "alias.py")
    # but a directory's own name is not copied, only its contents
    os.symlink("app", tree / "app-alias")
    assert digest_of(tree, "app-alias") == digest_of(tree, "app")


def test_stat_cache_table_is_wal_sqlite(tmp_path):
    db = tmp_path / "index.db"
    with StatCache(IndexDB(db)):
        pass
    connection = sqlite3.connect(db)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    columns = [row[1] for row in connection.execute("PRAGMA table_info(statcache)")]
    assert columns == ["path", "dev", "ino", "size", "mtime_ns", "ctime_ns", "sha256"]


def test_racily_clean_files_are_not_remembered(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    st = os.lstat(path)
    with StatCache(IndexDB(tmp_path / "db")) as cache:
        cache.remember(str(path), st, "aa", hashed_at_ns=st.st_ctime_ns)
        cache.flush()
        assert cache.lookup(str(path), st) is None
        cache.remember(str(path), st, "bb", hashed_at_ns=st.st_ctime_ns + 10**9)
        cache.flush()
        assert cache.lookup(str(path), st) == "bb"


def test_warm_rehash_of_a_20000_file_context_reads_nothing(tmp_path):
    root = tmp_path / "big"
    total_bytes = 0
    for d in range(200):
        directory = root / f"d{d:03}"
        directory.mkdir(parents=True)
        for f in range(100):
            data = f"file {d}/{f}\n".encode()
            (directory / f"f{f:03}.txt").write_bytes(data)
            total_bytes += len(data)
    # Files changed in the last few milliseconds are "racily clean" and never
    # remembered; let the newest ones age out of that window first.
    time.sleep(0.2)
    db = tmp_path / "index.db"

    def rehash():
        with StatCache(IndexDB(db)) as cache:
            ctx = BuildContext(root, IgnoreMatcher([]), cache)
            return ctx.digest(ctx.select(".")), ctx.read_stats

    cold_digest, cold = rehash()
    assert (cold.files, cold.bytes) == (20000, total_bytes)

    warm_digest, warm = rehash()
    assert warm_digest == cold_digest
    assert (warm.files, warm.bytes) == (0, 0)

    changed = root / "d123" / "f045.txt"
    old = changed.read_bytes()
    changed.write_bytes(old.replace(b"file", b"FILE"))
    one_digest, one = rehash()
    assert one_digest != cold_digest
    assert (one.files, one.bytes) == (1, len(old))


def test_same_size_rewrite_with_restored_mtime_is_noticed(tmp_path):
    root = tmp_path / "ctx"
    make_tree(root, {"f.txt": b"aaaa"})
    time.sleep(0.2)
    db = tmp_path / "db"

    def rehash():
        with StatCache(IndexDB(db)) as cache:
            ctx = BuildContext(root, IgnoreMatcher([]), cache)
            return ctx.digest(ctx.select("f.txt")), ctx.read_stats.files

    first, _ = rehash()
    _, reads = rehash()
    assert reads == 0
    st = os.lstat(root / "f.txt")
    (root / "f.txt").write_bytes(b"bbbb")
    os.utime(root / "f.txt", ns=(st.st_atime_ns, st.st_mtime_ns))  # ctime still moves
    second, reads = rehash()
    assert reads == 1 and second != first


# --- remembered selection digests (digest.RememberedSelection) ------------------------


def remembered_digest(db, root, source="app", *, rootfs=False):
    """The digest with the store's stat cache, and whether the remembered one was taken."""
    with StatCache(IndexDB(db)) as cache:
        ctx = BuildContext(root, IgnoreMatcher([]), cache, rootfs=rootfs)
        digest = ctx.digest(ctx.select(source))
        return digest, cache.selection_hits == 1


def fresh_digest(root, source="app", *, rootfs=False):
    """The digest from nothing remembered: what every cached answer must equal."""
    ctx = BuildContext(root, IgnoreMatcher([]), None, rootfs=rootfs)
    return ctx.digest(ctx.select(source))


@pytest.fixture
def aged_tree(tree):
    # Entries changed in the last 50 ms are racily clean: nothing is remembered.
    time.sleep(0.2)
    return tree


def test_an_unchanged_selection_is_taken_as_remembered(aged_tree, tmp_path):
    db = tmp_path / "index.db"
    first, reused = remembered_digest(db, aged_tree)
    assert not reused
    with StatCache(IndexDB(db)) as cache:
        ctx = BuildContext(aged_tree, IgnoreMatcher([]), cache)
        second = ctx.digest(ctx.select("app"))
        # no file read, no stat-cache row looked up: only the walk
        assert cache.selection_hits == 1 and cache.hits + cache.misses == 0
        assert ctx.read_stats.files == 0
    assert first == second == fresh_digest(aged_tree)


def _restoring_times(path, change):
    """Run ``change`` on ``path``, then put its atime and mtime back (as ``touch -d``)."""
    before = os.lstat(path)
    change()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)


@pytest.mark.parametrize(
    "change",
    [
        "same_size_bytes_mtime_restored",
        "xattr_mtime_restored",
        "dir_xattr_mtime_restored",
        "mode",
        "file_replaced_by_symlink",
        "symlink_retargeted",
        "new_file",
        "removed_file",
    ],
)
def test_a_remembered_selection_is_not_taken_after_a_change(aged_tree, tmp_path, change):
    db = tmp_path / "index.db"
    before, _ = remembered_digest(db, aged_tree)
    assert remembered_digest(db, aged_tree) == (before, True)  # the shortcut is in use
    app = aged_tree / "app"
    main = app / "main.py"
    if change == "same_size_bytes_mtime_restored":
        _restoring_times(main, lambda: main.write_bytes(b"print('hellO')\n"))
    elif change == "xattr_mtime_restored":
        _restoring_times(main, lambda: os.setxattr(main, "user.x", b"1"))
    elif change == "dir_xattr_mtime_restored":
        _restoring_times(app / "lib", lambda: os.setxattr(app / "lib", "user.x", b"1"))
    elif change == "mode":
        os.chmod(main, 0o600)
    elif change == "file_replaced_by_symlink":
        main.unlink()
        os.symlink("lib/util.py", main)
    elif change == "symlink_retargeted":
        os.unlink(app / "util-link")
        os.symlink("lib/./util.py", app / "util-link")
    elif change == "new_file":
        (app / "new.txt").write_bytes(b"")
    elif change == "removed_file":
        (app / "data.bin").unlink()
    after, reused = remembered_digest(db, aged_tree)
    assert not reused
    assert after == fresh_digest(aged_tree) != before


def test_a_remembered_rootfs_selection_is_not_taken_after_a_chown(aged_tree, tmp_path):
    # COPY --from keeps owners: the owner is in the digest there
    db = tmp_path / "index.db"
    before, _ = remembered_digest(db, aged_tree, rootfs=True)
    assert remembered_digest(db, aged_tree, rootfs=True) == (before, True)
    main = aged_tree / "app" / "main.py"
    _restoring_times(main, lambda: os.chown(main, 1000, 1000))
    after, reused = remembered_digest(db, aged_tree, rootfs=True)
    assert not reused
    assert after == fresh_digest(aged_tree, rootfs=True) != before


def test_a_recently_changed_selection_is_not_remembered(tree, tmp_path):
    # written just now: a change within the same clock tick might not move its ctime
    db = tmp_path / "index.db"
    remembered_digest(db, tree)
    assert remembered_digest(db, tree)[1] is False


def test_a_file_swapped_while_the_digest_is_made_is_not_taken_next_time(aged_tree, tmp_path, monkeypatch):
    """The fingerprint is taken before the digest: a file swapped in between
    (same size, same mtime) is hashed in its new state, and the next build
    sees a fingerprint that is not the remembered one."""
    from imgbuild.context import digest as digest_module

    main = aged_tree / "app" / "main.py"
    spare = aged_tree / "spare"
    spare.write_bytes(b"print('hellO')\n")
    os.utime(spare, ns=(os.lstat(main).st_atime_ns, os.lstat(main).st_mtime_ns))
    real_fingerprint = digest_module.selection_fingerprint

    def fingerprint_then_swap(context, selected):
        result = real_fingerprint(context, selected)
        if spare.exists():
            os.rename(spare, main)
        return result

    monkeypatch.setattr(digest_module, "selection_fingerprint", fingerprint_then_swap)
    db = tmp_path / "index.db"
    raced, _ = remembered_digest(db, aged_tree)
    monkeypatch.undo()
    time.sleep(0.2)
    after, reused = remembered_digest(db, aged_tree)
    assert after == fresh_digest(aged_tree)
    assert not reused


def test_a_version_3_index_gets_the_remembered_selections_table(tmp_path):
    db_path = tmp_path / "index.db"
    IndexDB(db_path)
    with sqlite3.connect(db_path) as connection:  # as imgbuild before it had the table left it
        connection.execute("DROP TABLE selection_digests")
        connection.execute("PRAGMA user_version = 3")
    db = IndexDB(db_path)
    assert db.schema_version() == SCHEMA_VERSION
    assert db.selection_digest("no such key") is None  # the table is there

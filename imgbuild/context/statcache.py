"""The stat cache: file content digests remembered by stat identity.

A file whose (device, inode, size, mtime, ctime) is unchanged since it was
hashed is not read again, so a warm rebuild of a large context reads
(almost) nothing. Files changed within ``RACY_WINDOW_NS`` of being hashed
are not remembered (git's "racily clean").
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

# A file whose ctime is this close to the moment we hash it could still be
# changed within the same filesystem timestamp tick without its stat changing
# (git calls this "racily clean"). Such files are hashed but not remembered.
RACY_WINDOW_NS = 50_000_000


@dataclass
class ReadStats:
    """How much file content a BuildContext actually read to hash it."""

    files: int = 0
    bytes: int = 0


class StatCache:
    """Remembers the sha256 of file contents, keyed by path and stat identity.

    Persisted in its own table of an SQLite database (WAL mode). A file whose
    (device, inode, size, mtime, ctime) is unchanged since it was hashed is not
    read again. Safe to share between threads.
    """

    def __init__(self, db_path: Path):
        self._db = sqlite3.connect(
            str(db_path), timeout=30, check_same_thread=False, isolation_level=None
        )
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[int, int, int, int, int, str]] = {}
        self._loaded: dict[str, tuple[int, int, int, int, int, str]] = {}
        self._preloaded_dirs: list[str] = []
        self.hits = 0
        self.misses = 0
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS statcache ("
                " path TEXT PRIMARY KEY, dev INTEGER NOT NULL, ino INTEGER NOT NULL,"
                " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
                " sha256 TEXT NOT NULL)"
            )

    def preload(self, directory: str) -> None:
        """Read every entry below ``directory`` in one query (a warm rehash of a
        large context then does no per-file queries)."""
        low = directory.rstrip("/") + "/"
        high = low[:-1] + chr(ord("/") + 1)  # every path that starts with low
        with self._lock:
            if any(low.startswith(done) for done in self._preloaded_dirs):
                return
            rows = self._db.execute(
                "SELECT path, dev, ino, size, mtime_ns, ctime_ns, sha256 FROM statcache"
                " WHERE path >= ? AND path < ?",
                (low, high),
            )
            for path, *values in rows:
                self._loaded[path] = tuple(values)
            self._preloaded_dirs.append(low)

    def lookup(self, path: str, st: os.stat_result) -> str | None:
        """The remembered sha256 of ``path`` if its stat identity is unchanged, else None."""
        identity = stat_identity(st)
        with self._lock:
            row = self._pending.get(path) or self._loaded.get(path)
            if row is None and not any(path.startswith(done) for done in self._preloaded_dirs):
                row = self._db.execute(
                    "SELECT dev, ino, size, mtime_ns, ctime_ns, sha256"
                    " FROM statcache WHERE path = ?",
                    (path,),
                ).fetchone()
            if row is not None and tuple(row[:5]) == identity:
                self.hits += 1
                return row[5]
            self.misses += 1
            return None

    def remember(self, path: str, st: os.stat_result, sha256: str, hashed_at_ns: int) -> None:
        """Queue an entry (written by ``flush``); racily clean files are skipped."""
        if st.st_ctime_ns >= hashed_at_ns - RACY_WINDOW_NS:
            return
        with self._lock:
            self._pending[path] = (*stat_identity(st), sha256)

    def flush(self) -> None:
        """Write the queued entries in one transaction."""
        with self._lock:
            if not self._pending:
                return
            rows = [(path, *values) for path, values in self._pending.items()]
            self._loaded.update(self._pending)
            self._pending.clear()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO statcache"
                    " (path, dev, ino, size, mtime_ns, ctime_ns, sha256)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()

    def __enter__(self) -> StatCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def stat_identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

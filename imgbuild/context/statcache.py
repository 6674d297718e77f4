"""The stat cache: file content digests remembered by stat identity.

A file whose (device, inode, size, mtime, ctime) is unchanged since it was
hashed is not read again, so a warm rebuild of a large context reads
(almost) nothing. Files changed within ``RACY_WINDOW_NS`` of being hashed
are not remembered (git's "racily clean").
"""

from __future__ import annotations

import os
import threading

from imgbuild.dataclass import dataclass

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from imgbuild.store.index_db import IndexDB

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

    Persisted in the ``statcache`` table of the store's index (``IndexDB``). A file whose
    (device, inode, size, mtime, ctime) is unchanged since it was hashed is not
    read again. Safe to share between threads.
    """

    def __init__(self, db: IndexDB):
        self._db = db
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[int, int, int, int, int, str]] = {}
        self._loaded: dict[str, tuple[int, int, int, int, int, str]] = {}
        self._preloaded_dirs: list[str] = []
        self._selections: list[tuple[str, str, str, str]] = []  # (key, root, fingerprint, digest)
        self.hits = 0
        self.misses = 0
        self.selection_hits = 0  # whole selections taken as remembered (``known_selection``)

    def preload(self, directory: str) -> None:
        """Read every entry below ``directory`` in one query (a warm rehash of a
        large context then does no per-file queries)."""
        low = directory.rstrip("/") + "/"
        high = low[:-1] + chr(ord("/") + 1)  # every path that starts with low
        with self._lock:
            if any(low.startswith(done) for done in self._preloaded_dirs):
                return
            for row in self._db.statcache_rows(low, high):
                self._loaded[row[0]] = tuple(row[1:])
            self._preloaded_dirs.append(low)

    def lookup(self, path: str, st: os.stat_result) -> str | None:
        """The remembered sha256 of ``path`` if its stat identity is unchanged, else None."""
        identity = stat_identity(st)
        with self._lock:
            row = self._pending.get(path) or self._loaded.get(path)
            if row is None and not any(path.startswith(done) for done in self._preloaded_dirs):
                found = self._db.statcache_row(path)
                row = tuple(found[1:]) if found is not None else None
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

    def known_selection(self, key: str, fingerprint: str) -> str | None:
        """The digest remembered for selection ``key`` if its fingerprint is
        ``fingerprint`` (``digest.RememberedSelection``), else None."""
        with self._lock:
            queued = [row for row in self._selections if row[0] == key]
            row = (queued[-1][2], queued[-1][3]) if queued else self._db.selection_digest(key)
        if row is None or row[0] != fingerprint:
            return None
        self.selection_hits += 1
        return row[1]

    def remember_selection(self, key: str, root: str, fingerprint: str, digest: str) -> None:
        """Queue a selection's digest under its fingerprint (written by ``flush``)."""
        with self._lock:
            self._selections.append((key, root, fingerprint, digest))

    def flush(self) -> None:
        """Write the queued entries in one transaction."""
        with self._lock:
            if not self._pending and not self._selections:
                return
            rows = [(path, *values) for path, values in self._pending.items()]
            self._loaded.update(self._pending)
            self._pending.clear()
            selections, self._selections = self._selections, []
            self._db.write_statcache(rows, selections)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> StatCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def stat_identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

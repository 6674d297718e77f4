"""The content digest of a selection: what a COPY's cache key knows of the files it reads.

For each selected item in order: its kind and, for a file, the name it gets
at a directory destination (a directory's own name is not used: its contents
are copied); then for every entry its path, type, mode bits (with
setuid/setgid/sticky), owner as the copy sets it, size and content sha256 (or
the earlier path it is a hardlink of), symlink target, device numbers and
xattrs. Never times. Options such as --chown, --chmod and the destination are
not here: they are in the instruction text, which the key also covers.

File contents are hashed once and remembered twice: for the build
(``ContentHasher``'s memo, by stat identity) and across builds (the stat
cache, by path and stat identity).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from imgbuild.context.statcache import ReadStats, StatCache, stat_identity

if TYPE_CHECKING:
    from imgbuild.context.source import BuildContext, Entry, Selected

READ_CHUNK = 1 << 20

# A listing kept for ``cache inspect`` (not for the key) stops after this many
# entries: the key still covers them all, the listing says how many it left out.
MAX_LISTED_ENTRIES = 10_000


class ContentHasher:
    """sha256 of regular files' bytes, read at most once per stat identity."""

    def __init__(self, stat_cache: StatCache | None, root: Path):
        self.stat_cache = stat_cache
        self.root = root
        self.read_stats = ReadStats()
        self._memo: dict[tuple[int, int, int, int, int], str] = {}
        self._stats_lock = threading.Lock()

    def content_sha256(self, entry: Entry, open_for_reading: Callable[[Entry], AbstractContextManager[int]]) -> str:
        """sha256 of a regular file's bytes, from the caches when its stat is unchanged."""
        st = entry.st
        identity = stat_identity(st)
        known = self._memo.get(identity)
        if known is not None:
            return known
        key = _cache_key(entry.path)
        if self.stat_cache is not None and key is not None:
            known = self.stat_cache.lookup(key, st)
            if known is not None:
                self._memo[identity] = known
                return known
        hashed_at = time.time_ns()
        with open_for_reading(entry) as fd:
            digest, size, opened_st = _hash_file(fd)
        with self._stats_lock:
            self.read_stats.files += 1
            self.read_stats.bytes += size
        if stat_identity(opened_st) == identity:
            # Only remember a hash for the stat it was read under.
            self._memo[identity] = digest
            if self.stat_cache is not None and key is not None:
                self.stat_cache.remember(key, st, digest, hashed_at)
        return digest


def selection_digest(context: BuildContext, selected: Sequence[Selected], listing: Listing | None = None) -> str:
    """sha256 over exactly what copying ``selected`` from ``context`` reads (see the module doc).

    ``listing``, if given, gets one row per entry from the same pass (no file
    is read twice), for the record of the key's inputs.
    """
    hasher = context.hasher
    digest = hashlib.sha256()
    if hasher.stat_cache is not None:
        hasher.stat_cache.preload(str(hasher.root.absolute()))
    try:
        for item in selected:
            item_record = os.fsencode("item\0dir" if item.is_dir else f"item\0file\0{item.name}")
            digest.update(b"%d:" % len(item_record) + item_record + b"\n")
            seen_inodes: dict[tuple[int, int], str] = {}
            for entry in item.entries():
                digest.update(_entry_record(context, entry, seen_inodes, listing))
    finally:
        if hasher.stat_cache is not None:
            hasher.stat_cache.flush()
    return "sha256:" + digest.hexdigest()


def _entry_record(
    context: BuildContext, entry: Entry, seen_inodes: dict[tuple[int, int], str], listing: Listing | None
) -> bytes:
    st = entry.st
    uid, gid = context.owner(st)
    fields = [entry.rel, _kind(st.st_mode), oct(stat.S_IMODE(st.st_mode)), str(uid), str(gid)]
    sha256 = ""
    if stat.S_ISREG(st.st_mode):
        inode = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and inode in seen_inodes:
            fields += ["hardlink", seen_inodes[inode]]
        else:
            seen_inodes[inode] = entry.rel
            sha256 = context.content_sha256(entry)
            fields += [str(st.st_size), sha256]
    if listing is not None:
        listing.add(entry.relpath or entry.rel, _kind(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, sha256)
    elif stat.S_ISLNK(st.st_mode):
        fields.append(entry.link or "")
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        fields += [str(os.major(st.st_rdev)), str(os.minor(st.st_rdev))]
    # None of these fields can hold a NUL (paths, numbers, link targets);
    # xattr values can, so they are length-prefixed.
    record = os.fsencode("\0".join(fields))
    for name, value in entry.xattrs:
        record += b"\0xattr\0" + os.fsencode(name) + b"\0%d:" % len(value) + value
    return b"%d:" % len(record) + record + b"\n"


class Listing:
    """The entries a selection digest covered: (path, type, mode, size, sha256), bounded.

    ``path`` is below the root of the context the files came from; ``size``
    and ``sha256`` are those of regular files (a hardlink's sha256 is empty:
    its first path has it).
    """

    def __init__(self, limit: int = MAX_LISTED_ENTRIES):
        self.limit = limit
        self.files: list[list] = []
        self.left_out = 0

    def add(self, path: str, kind: str, mode: int, size: int, sha256: str) -> None:
        if len(self.files) >= self.limit:
            self.left_out += 1
            return
        self.files.append([path, kind, mode, size if kind == "file" else 0, sha256])

    def as_document(self) -> dict:
        return {"files": self.files, "left_out": self.left_out}


def _hash_file(fd: int) -> tuple[str, int, os.stat_result]:
    hasher = hashlib.sha256()
    size = 0
    while chunk := os.read(fd, READ_CHUNK):
        hasher.update(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size, os.fstat(fd)


def _cache_key(path: str) -> str | None:
    """The stat cache's key for a path; None for names SQLite TEXT cannot hold."""
    text = os.path.abspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),  # copied as an empty file
    ):
        if test(mode):
            return kind
    return "other"

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

A whole selection's digest is remembered too (``RememberedSelection``),
under a fingerprint of what a walk with ``lstat`` alone sees of it: names,
types, modes, owners, sizes, inodes, link counts and times of every entry.
Whatever else the digest reads changes one of those: new bytes change the
size or mtime and always the ctime, as does a changed xattr; a symlink
target only changes with a new inode. So when the fingerprint is the one
remembered, the digest is too, and a warm rebuild of a large context reads
no xattr, no symlink and no stat-cache row: one ``lstat`` per entry.
"""

from __future__ import annotations

import gc
import hashlib
import marshal
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from imgbuild.context.statcache import RACY_WINDOW_NS, ReadStats, StatCache, stat_identity

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from imgbuild.context.source import BuildContext, Entry, Selected

READ_CHUNK = 1 << 20

# A listing kept for ``cache inspect`` (not for the key) stops after this many
# entries: the key still covers them all, the listing says how many it left out.
MAX_LISTED_ENTRIES = 10_000

# Part of every remembered selection's key: bump it when the records that
# ``selection_digest`` hashes change, so no digest of the old records is reused.
RECORDS_VERSION = 1


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


def selection_digest(
    context: BuildContext,
    selected: Sequence[Selected],
    listing: Listing | None = None,
    remembered: RememberedSelection | None = None,
    *,
    hand_on: bool = False,
) -> str:
    """sha256 over exactly what copying ``selected`` from ``context`` reads (see the module doc).

    ``listing``, if given, gets one row per entry from the same pass (no file
    is read twice), for the record of the key's inputs; ``remembered``, if
    given, keeps the digest under its fingerprint for the next build;
    ``hand_on`` leaves the walk for the copy that follows (``BuildContext.entries``).
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
            for entry in item.entries(hand_on=hand_on):
                digest.update(_entry_record(context, entry, seen_inodes, listing))
        if remembered is not None:
            remembered.remember("sha256:" + digest.hexdigest())
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


class RememberedSelection:
    """A selection's digest as an earlier build left it, if nothing it reads changed since.

    Made before the digest is computed: the fingerprint is of the tree as
    it was then. ``known()`` is the remembered digest when the fingerprint is
    the same; ``remember(digest)`` keeps a new one, unless an entry changed
    within ``RACY_WINDOW_NS`` of the walk (a change within the same clock
    tick could leave its ctime as it was, as the stat cache's rule says).
    A file that changes while the digest is computed gets a newer ctime
    than the fingerprint holds, so the next build does not take the digest.
    """

    def __init__(self, context: BuildContext, selected: Sequence[Selected]):
        self.stat_cache = context.stat_cache
        self.started_ns = time.time_ns()
        self.root = os.path.abspath(context.root)
        self.key = selection_key(context, selected, self.root)
        self.fingerprint, self.newest_ctime_ns = selection_fingerprint(context, selected)

    def known(self) -> str | None:
        return self.stat_cache.known_selection(self.key, self.fingerprint)

    def remember(self, digest: str) -> None:
        if self.settled():
            self.stat_cache.remember_selection(self.key, self.root, self.fingerprint, digest)

    def settled(self) -> bool:
        """Whether no entry changed so shortly before the walk that a change in
        the same clock tick could have left the fingerprint as it is."""
        window = RACY_WINDOW_NS
        if self.newest_ctime_ns % 1_000_000_000 == 0:
            window = 1_000_000_000  # a file system that keeps whole seconds: a tick is a second
        return self.newest_ctime_ns < self.started_ns - window


def selection_key(context: BuildContext, selected: Sequence[Selected], root: str) -> str:
    """What names a selection across builds: the context's root and how it is
    read (ignore patterns, owners), and each selected item with its --exclude."""

    def patterns(matcher) -> list:
        return [(pattern.text, pattern.exclusion) for pattern in matcher.patterns]

    document = (
        RECORDS_VERSION,
        root,
        context.rootfs,
        patterns(context.ignore),
        [(item.relpath, item.name, item.is_dir, patterns(item.exclude)) for item in selected],
    )
    return hashlib.sha256(repr(document).encode("utf-8", "surrogatepass")).hexdigest()


def selection_fingerprint(context: BuildContext, selected: Sequence[Selected]) -> tuple[str, int]:
    """sha256 over every entry's path and lstat (never its content), and the newest ctime among them."""
    with _no_collection():
        return _fingerprint(context, selected)


@contextmanager
def _no_collection():
    """A walk makes a few tuples per entry, tens of thousands, and no reference
    cycles: the garbage collector would only walk them again and again meanwhile."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _fingerprint(context: BuildContext, selected: Sequence[Selected]) -> tuple[str, int]:
    rows = []
    newest = 0
    for item in selected:
        rows.append((item.relpath, item.is_dir))
        for rel, _, st, *_ in context.entries(item, details=False):
            ctime = st.st_ctime_ns
            # st[:7] is (mode, ino, dev, nlink, uid, gid, size), in one call
            rows.append((rel, st[:7], st.st_mtime_ns, ctime, st.st_rdev))
            if ctime > newest:
                newest = ctime
    # marshal format 2 has no back-references: the same rows give the same bytes
    return hashlib.sha256(marshal.dumps(rows, 2)).hexdigest(), newest


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

"""Garbage collection: remove the blobs that nothing needs any more.

A blob is kept when it is reachable from index.json (a tag or an untagged
image: index ▶ manifests ▶ config and layers), when the build cache points at
it (``cache.layer_digest``), or when it is the layer of an extracted snapshot.
Everything else under ``blobs/sha256`` is removed.

``rmi`` and ``image prune`` first remove the snapshots whose layer no image
and no cache entry uses any more (``sweep_unused``): pull and load unpack
every layer as it arrives, so without that an image's layers would outlive
the image until ``cache prune``, where ``docker rmi`` frees them at once.

Safety against other imgbuild processes: writers hold ``Store.writer_lease()``
(a shared flock on ``ROOT/gc.lock``) from their first blob until their tag is
written. The collector takes that lock exclusively, waiting a few seconds at
most; if a writer still holds it, collection is skipped rather than pruning
blobs a running pull or push is about to tag or read. It then marks and
sweeps under the store lock, so no tag changes between the mark and the sweep.

Builds are the exception (``imgbuild.store.lock``, "live builds"): they take
the writer lease only around each blob write and cache lookup, and register
for their whole life instead. A collection while builds run keeps, besides
the above, every blob written (or written again) since the oldest of them
started, and every blob of the images they resolved (``live_blobs``).

``imgbuild cache prune`` (imgbuild.cache.prune) decides which cache entries
go, under the same exclusive lease, and then uses the sweeps here: snapshots
whose layer no remaining cache entry or image uses (``sweep_snapshots``),
blobs (``sweep_blobs``), and stat-cache rows that can never hit again
(``sweep_statcache``). Sizes are measured on disk (``disk_usage``); a
snapshot's once, then kept in the index, since it never changes
(``snapshot_sizes``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import field

from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError, MountedError, StoreError
from imgbuild.image import INDEX_TYPES, MANIFEST_TYPES, Descriptor, media_type_of
from imgbuild.store import Store
from imgbuild.store.atomic import fsync_dir
from imgbuild.store.lock import LiveBuilds
from imgbuild.store.mounts import DIR_FLAGS, mounts_under, remove_tree
from imgbuild.units import plural

HEX = frozenset("0123456789abcdef")


@dataclass
class GcResult:
    """What a blob collection removed, or why it did not run."""

    removed: list[str] = field(default_factory=list)  # digests of the removed blobs
    freed_bytes: int = 0
    skipped_reason: str = ""  # set when the collection did not run
    snapshots: int = 0  # snapshot directories removed


def is_digest_name(name: str) -> bool:
    """True for a file name under blobs/sha256 that is a sha256 hex digest."""
    return len(name) == 64 and all(c in HEX for c in name)


# How long a collection waits for the writer lease: builds hold it only while
# they write a blob or look up a key, pulls and pushes for their whole transfer.
# ``cache prune`` is asked for; rmi's collection and a build's are by-products.
LEASE_WAIT_SECONDS = 10.0
SIDE_LEASE_WAIT_SECONDS = 2.0
LEASE_POLL_SECONDS = 0.05


@contextmanager
def exclusive_lease(store: Store, wait: float = 0.0) -> Iterator[bool]:
    """Try to take the writer lease exclusively, waiting at most ``wait`` seconds.

    Yields True when no writer holds ``Store.writer_lease()``; until the block
    ends, new writers wait. Yields False when some writer is still active.
    (flock has no queue: a blocking request could wait behind a stream of
    shared holders for ever, so this polls.)
    """
    fd = os.open(store.lease_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(LEASE_POLL_SECONDS)
        yield True
    finally:
        os.close(fd)


def child_descriptors(store: Store, descriptor: Descriptor) -> list[Descriptor]:
    """The descriptors a manifest or index refers to; [] for configs and layers.

    Raises ImgbuildError when the document is missing, corrupt or not JSON.
    """
    if not _may_have_children(descriptor):
        return []
    document = store.read_json(descriptor.digest, "manifest")
    media_type = media_type_of(document, descriptor.media_type)
    if media_type in INDEX_TYPES:
        return [Descriptor.from_json(entry) for entry in document.get("manifests") or []]
    children = []
    if "config" in document:
        children.append(Descriptor.from_json(document["config"]))
    children.extend(Descriptor.from_json(layer) for layer in document.get("layers") or [])
    return children


def referenced_blobs(store: Store) -> set[str]:
    """Every digest reachable from index.json.

    Raises ImgbuildError when a manifest or index is missing or unreadable:
    then we cannot know what it refers to, and a collector must not guess.
    """
    seen: set[str] = set()
    pending = [descriptor for _, descriptor in store.refs()]
    while pending:
        descriptor = pending.pop()
        if descriptor.digest in seen:
            continue
        seen.add(descriptor.digest)
        if store.has_blob(descriptor.digest):
            pending.extend(child_descriptors(store, descriptor))
        elif _may_have_children(descriptor):
            raise StoreError(f"manifest {descriptor.digest} is referenced but missing")
    return seen


def _may_have_children(descriptor: Descriptor) -> bool:
    return not descriptor.media_type or descriptor.media_type in INDEX_TYPES + MANIFEST_TYPES


def reachable_blobs(store: Store, digests: Iterable[str]) -> set[str]:
    """Every digest reachable from the manifests ``digests`` that the store has
    (a live build's pins: one that is gone pins nothing)."""
    seen: set[str] = set()
    pending = [Descriptor("", digest, 0) for digest in digests]
    while pending:
        descriptor = pending.pop()
        if descriptor.digest in seen or not store.has_blob(descriptor.digest):
            continue
        seen.add(descriptor.digest)
        try:
            pending.extend(child_descriptors(store, descriptor))
        except ImgbuildError:
            continue  # a layer or config (not JSON of a manifest): no children
    return seen


def blob_times(store: Store) -> dict[str, float]:
    """Digest -> modification time of every blob file (a blob written again is touched)."""
    times = {}
    for path in store.blobs_dir.iterdir():
        if is_digest_name(path.name):
            try:
                times["sha256:" + path.name] = path.lstat().st_mtime
            except FileNotFoundError:
                continue
    return times


def live_blobs(store: Store, live: LiveBuilds) -> set[str]:
    """What the builds running now may need of the blobs: those written since
    the oldest started, and those of the images they resolved."""
    if live.fence is None:
        return set()
    fresh = {digest for digest, mtime in blob_times(store).items() if mtime >= live.fence}
    return fresh | reachable_blobs(store, live.pinned)


def pinned_blobs(store: Store) -> set[str]:
    """Blobs that the build cache or a snapshot still uses, tagged or not."""
    return cache_layer_blobs(store) | store.db.snapshot_blobs()


def collect_garbage(store: Store) -> GcResult:
    """Remove the snapshots and blobs that nothing uses (see the module doc)."""
    with exclusive_lease(store, SIDE_LEASE_WAIT_SECONDS) as got_lease:
        if not got_lease:
            return GcResult(skipped_reason="another imgbuild process is writing to the store")
        with store.lock():
            try:
                return sweep_unused(store)
            except ImgbuildError as error:
                return GcResult(skipped_reason=f"{error}; run `imgbuild fsck`")


def sweep_unused(store: Store, measure=None) -> GcResult:
    """Remove the snapshots no image, cache entry or running build uses, then
    every blob that is neither referenced nor pinned. The caller holds the
    exclusive lease and the store lock."""
    live = store.live_builds()
    used = referenced_blobs(store) | cache_layer_blobs(store) | live_blobs(store, live)
    rows = store.db.snapshot_rows()
    unused = unused_snapshots(rows, used_diff_ids(store, used), live.fence)
    sizes = snapshot_sizes(store, [row for row in rows if row["id"] in set(unused)])
    swept = sweep_snapshots(store, unused, sizes, live.work_dirs)
    result = sweep_blobs(store, used | store.db.snapshot_blobs(), measure)
    result.snapshots = len(swept.removed)
    result.freed_bytes += swept.freed_bytes
    return result


def cache_layer_blobs(store: Store) -> set[str]:
    """The layer blobs the build cache points at."""
    return {row["layer_digest"] for row in store.db.cache_layer_rows()}


def used_diff_ids(store: Store, used_blobs: set[str], images: Iterable[Descriptor] | None = None) -> set[str]:
    """The diff_ids of the layers that ``used_blobs`` and the images (default:
    every stored image) name."""
    known = store.db.layer_diff_ids()
    return {known[digest] for digest in used_blobs if digest in known} | image_diff_ids(store, images)


def image_diff_ids(store: Store, images: Iterable[Descriptor] | None = None) -> set[str]:
    """Every diff_id the configs of ``images`` (default: every stored image) list."""
    diff_ids: set[str] = set()
    if images is None:
        images = [descriptor for _, descriptor in store.refs()]
    for descriptor in images:
        try:
            diff_ids.update(store.load_image(descriptor).diff_ids)
        except ImgbuildError:
            continue  # an index for another platform, or broken: its blobs are kept anyway
    return diff_ids


def unused_snapshots(rows: Iterable, used: set[str], fence: float | None) -> list[int]:
    """Ids of the snapshots whose layer is not in ``used`` (diff_ids), leaving
    those a running build may use."""
    return sorted(
        row["id"] for row in rows if row["diff_id"] not in used and not maybe_in_use(row, fence)
    )


def maybe_in_use(row, fence: float | None) -> bool:
    """May a running build use this snapshot (a ``snapshot_rows`` row)? Yes if it
    was made or used since ``fence``, when the oldest running build started
    (``Store.live_builds``); None: no build runs."""
    return fence is not None and max(row["created"], row["last_used"]) >= fence


def sweep_blobs(store: Store, keep: set[str], measure=None, only: set[str] | None = None) -> GcResult:
    """Unlink every blob not in ``keep`` (and, if given, in ``only``); ``freed_bytes``
    adds up st_size, or ``measure(path)``."""
    result = GcResult()
    mounted = set(mounts_under(store.blobs_dir))  # never unlink a mount point
    for path in sorted(store.blobs_dir.iterdir()):
        digest = "sha256:" + path.name
        if only is not None and digest not in only:
            continue
        if not is_digest_name(path.name) or digest in keep or not path.is_file() or os.path.realpath(path) in mounted:
            continue  # names that are not digests are fsck's business
        size = measure(path) if measure else path.stat().st_size
        path.unlink()
        result.removed.append(digest)
        result.freed_bytes += size
    if result.removed:
        fsync_dir(store.blobs_dir)
        store.db.forget_layers(result.removed)
    return result


# --- measuring, and the sweeps of cache prune -------------------------------------------


def file_usage(path: os.PathLike) -> int:
    """Bytes a file takes on disk (its allocated blocks, as ``du -B1`` counts them)."""
    return os.lstat(path).st_blocks * 512


def disk_usage(path: os.PathLike) -> int:
    """Bytes a directory tree takes on disk: allocated blocks of every entry, the
    directories too, a hard-linked file once, as ``du -s -B1`` counts them.

    Walked fd-relative without following symlinks; an entry removed meanwhile
    counts as nothing.
    """
    return _tree_usage(path) or 0


def snapshot_sizes(store: Store, rows: Iterable) -> dict[int, int]:
    """Snapshot id -> bytes on disk, for the snapshot ``rows`` (``snapshot_rows``).

    A snapshot's directory never changes once it has its row, so its size is
    measured once and kept in the index: a build's limits check (and ``cache
    du``) walks only the snapshots made since. A row whose directory is not
    there yet (the rename follows the row) or any more counts as nothing and
    is measured again next time.
    """
    sizes: dict[int, int] = {}
    measured: dict[int, int] = {}
    for row in rows:
        if row["disk_bytes"] is not None:
            sizes[row["id"]] = row["disk_bytes"]
            continue
        size = _tree_usage(store.snapshots_dir / str(row["id"]))
        sizes[row["id"]] = size or 0
        if size is not None:
            measured[row["id"]] = size
    store.db.record_snapshot_sizes(measured)
    return sizes


def _tree_usage(path: os.PathLike) -> int | None:
    """``disk_usage``, but None when ``path`` is not there."""
    seen: set[tuple[int, int]] = set()
    try:
        top = os.open(path, DIR_FLAGS)
    except FileNotFoundError:
        return None
    total = 0
    pending = [top]
    while pending:
        fd = pending.pop()
        try:
            info = os.fstat(fd)
            total += info.st_blocks * 512
            for name in os.listdir(fd):
                total += _entry_usage(fd, name, seen, pending)
        finally:
            os.close(fd)
    return total


def _entry_usage(fd: int, name: str, seen: set, pending: list[int]) -> int:
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            pending.append(os.open(name, DIR_FLAGS, dir_fd=fd))
            return 0
    except FileNotFoundError:
        return 0
    if info.st_nlink > 1:
        if (info.st_dev, info.st_ino) in seen:
            return 0
        seen.add((info.st_dev, info.st_ino))
    return info.st_blocks * 512


@dataclass
class SnapshotSweep:
    """Which unused snapshot directories a sweep removed."""

    removed: list[int] = field(default_factory=list)  # snapshot ids
    freed_bytes: int = 0
    kept_reason: str = ""  # set when snapshots that could go were kept


def sweep_snapshots(
    store: Store, snapshot_ids: Iterable[int], sizes: dict[int, int], live_work_dirs: Iterable[str] = ()
) -> SnapshotSweep:
    """Remove the snapshots ``snapshot_ids`` (rows and directories); the caller holds
    the exclusive lease and the store lock. ``sizes`` are their measured sizes.

    A snapshot is a lowerdir of every overlay a build or ``imgbuild run`` has
    mounted on it, and mountinfo names lowerdirs only by the short links of
    imgbuild.sandbox.overlay: so while anything is mounted under the root (a
    leftover of a killed process, or a process that takes no lease), no
    snapshot is removed. Mounts in ``live_work_dirs`` (the work directories
    of live builds) are the exception: the caller has kept every snapshot
    those builds may use (imgbuild.cache.prune). Each goes in two steps:
    renamed into this process's work directory with its row deleted (so
    nothing finds a half removed tree), then removed, never across a mount.
    """
    result = SnapshotSweep()
    ids = list(snapshot_ids)
    if not ids:
        return result
    live = [os.path.realpath(directory).rstrip("/") + "/" for directory in live_work_dirs]
    mounted = [point for point in mounts_under(store.root) if not any(point.startswith(d) for d in live)]
    if mounted:
        result.kept_reason = f"{plural(len(ids), 'snapshot')} kept: {mounted[0]} is mounted in the store"
        return result
    for snapshot_id in ids:
        holder = store.make_temp_dir("pruned-snapshot-")
        try:
            os.rename(store.snapshots_dir / str(snapshot_id), holder / "tree")
        except FileNotFoundError:
            pass  # row without directory: fsck's snapshot-missing; the row goes anyway
        store.db.delete_snapshot_row(snapshot_id)
        try:
            remove_tree(holder)
        except MountedError as error:
            result.kept_reason = str(error)
            continue
        result.removed.append(snapshot_id)
        result.freed_bytes += sizes.get(snapshot_id, 0)
    fsync_dir(store.snapshots_dir)
    return result


def sweep_statcache(store: Store) -> int:
    """Forget stat-cache rows that can never hit again; returns how many.

    A row hits only while its file has the same (device, inode, size, mtime,
    ctime); a file that is gone or changed would be hashed again anyway (and
    its row rewritten). So the table is bounded by the context files that
    exist now, without a clock. Only ``lstat`` is used: nothing is opened.
    """
    stale = []
    for row in store.db.statcache_identities():
        try:
            info = os.lstat(row["path"])
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
                stale.append(row["path"])
            continue  # EACCES and friends: not ours to judge
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if identity != (row["dev"], row["ino"], row["size"], row["mtime_ns"], row["ctime_ns"]):
            stale.append(row["path"])
    if stale:
        store.db.delete_statcache_rows(stale)
    # Remembered selection digests of contexts that are gone (the rest are
    # replaced when their context changes, so they stay one per selection).
    gone = []
    for root in store.db.selection_roots():
        try:
            os.lstat(root)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
                gone.append(root)
    if gone:
        store.db.delete_selections_of(gone)
    return len(stale)

"""Garbage collection: remove the blobs that nothing needs any more.

A blob is kept when it is reachable from index.json (a tag or an untagged
image: index ▶ manifests ▶ config and layers), when the build cache points at
it (``cache.layer_digest``), or when it is the layer of an extracted snapshot.
Everything else under ``blobs/sha256`` is removed.

Safety against other imgbuild processes: writers hold ``Store.writer_lease()``
(a shared flock on ``ROOT/gc.lock``) from their first blob until their tag is
written. The collector takes that lock exclusively *without waiting*; if any
writer holds it, collection is skipped rather than pruning blobs a running
build or pull is about to tag. It then marks and sweeps under the store lock,
so no tag changes between the mark and the sweep.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from imgbuild.errors import ImgbuildError, StoreError
from imgbuild.image import INDEX_TYPES, MANIFEST_TYPES, Descriptor, media_type_of
from imgbuild.store import Store
from imgbuild.store.atomic import fsync_dir
from imgbuild.store.mounts import mounts_under

HEX = frozenset("0123456789abcdef")


@dataclass
class GcResult:
    removed: list[str] = field(default_factory=list)  # digests of the removed blobs
    freed_bytes: int = 0
    skipped_reason: str = ""  # set when the collection did not run


def is_digest_name(name: str) -> bool:
    """True for a file name under blobs/sha256 that is a sha256 hex digest."""
    return len(name) == 64 and all(c in HEX for c in name)


@contextmanager
def exclusive_lease(store: Store) -> Iterator[bool]:
    """Try to take the writer lease exclusively, without waiting.

    Yields True when no writer holds ``Store.writer_lease()``; until the block
    ends, new writers wait. Yields False when some writer is active.
    """
    fd = os.open(store.lease_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
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


def pinned_blobs(store: Store) -> set[str]:
    """Blobs that the build cache or a snapshot still uses, tagged or not."""
    pinned = {row["layer_digest"] for row in store.db.cache_layer_rows()}
    return pinned | store.db.snapshot_blobs()


def collect_garbage(store: Store) -> GcResult:
    """Remove every blob that is neither referenced nor pinned (see the module doc)."""
    with exclusive_lease(store) as got_lease:
        if not got_lease:
            return GcResult(skipped_reason="another imgbuild process is writing to the store")
        with store.lock():
            try:
                keep = referenced_blobs(store) | pinned_blobs(store)
            except ImgbuildError as error:
                return GcResult(skipped_reason=f"{error}; run `imgbuild fsck`")
            return _sweep(store, keep)


def _sweep(store: Store, keep: set[str]) -> GcResult:
    result = GcResult()
    mounted = set(mounts_under(store.blobs_dir))  # never unlink a mount point
    for path in sorted(store.blobs_dir.iterdir()):
        digest = "sha256:" + path.name
        if not is_digest_name(path.name) or digest in keep or not path.is_file() or os.path.realpath(path) in mounted:
            continue  # names that are not digests are fsck's business
        size = path.stat().st_size
        path.unlink()
        result.removed.append(digest)
        result.freed_bytes += size
    if result.removed:
        fsync_dir(store.blobs_dir)
        store.db.forget_layers(result.removed)
    return result

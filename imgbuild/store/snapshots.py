"""Snapshots: each layer extracted once into a directory, keyed by the chain ID of its stack.

A snapshot is made in one of two ways that give the same tree: extracting a
pulled or loaded layer's blob (``ensure_snapshot``), or adopting the upperdir
a build step wrote, whose times the layer writer has set to what its tar
records (``imgbuild.builder.rootfs.commit_directory``). Either way it enters
the store through ``add_snapshot``.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgbuild.dataclass import dataclass
from imgbuild.errors import DigestMismatch, MountedError
from imgbuild.image import Descriptor
from imgbuild.store.mounts import remove_tree

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from typing import BinaryIO

    from imgbuild.store import Store


def snapshot_path(store: Store, chain_id: str) -> Path | None:
    """The snapshot directory of a layer at the top of the stack ``chain_id`` names."""
    snapshot_id = store.db.snapshot_id(chain_id)
    if snapshot_id is None:
        return None
    path = store.snapshots_dir / str(snapshot_id)
    return path if path.is_dir() else None

def ensure_snapshot(store: Store, layer: Descriptor, diff_id: str, chain_id: str, image: str = "") -> Path:
    """The extracted directory of a layer, extracting the blob if it has none yet.

    Snapshots are keyed by chain ID, not diff_id: overlayfs refuses a stack
    that names one directory twice, and images with two identical layers
    exist. ``diff_id`` is what the image config claims; the extraction
    checks it (``image`` names the image in the error) and only then is it
    recorded for the blob.

    A pull, a load or an import calls this as each layer arrives (as Docker
    and containerd unpack on pull), so a build on the image finds every
    snapshot there; a build calls it too, for a store filled before that.
    """
    existing = snapshot_path(store, chain_id)
    if existing is not None:
        store.db.touch_snapshot(chain_id)
        return existing
    with store.open_blob(layer.digest) as blob:
        staged = stage_snapshot(store, blob, layer.media_type or None)
    return keep_snapshot(store, staged, layer, diff_id, chain_id, image)


@dataclass
class StagedSnapshot:
    """A layer extracted into the process's work directory, not yet checked or recorded."""

    directory: Path
    diff_id: str  # what the extracted stream hashed to


def stage_snapshot(store: Store, stream: BinaryIO, media_type: str | None) -> StagedSnapshot:
    """Extract a layer stream (compressed or not) into a new directory of the work dir.

    The directory is removed if the extraction fails; after a ``kill -9`` the
    next process sweeps the dead one's work dir (``store/owner.py``).
    """
    from imgbuild.layer.extract import apply_layer  # only here: a cache hit extracts nothing

    staging = store.make_temp_dir("snap-")
    try:
        # A layer without a root entry says nothing of "/": give it the mode
        # Docker's layers have (mkdtemp's is 0700), whatever our umask.
        os.chmod(staging, 0o755)
        stats = apply_layer(stream, staging, media_type=media_type)
    except BaseException:
        remove_tree(staging)
        raise
    return StagedSnapshot(staging, stats.diff_id)


def keep_snapshot(
    store: Store, staged: StagedSnapshot, layer: Descriptor, diff_id: str, chain_id: str, image: str = ""
) -> Path:
    """Check a staged extraction against the config's ``diff_id``, then record the
    blob's diff_id and adopt the directory as the snapshot of ``chain_id``.

    The blob must be in the store already. A mismatch removes the directory
    and raises ``DigestMismatch`` naming ``image``.
    """
    try:
        if staged.diff_id != diff_id:
            raise DigestMismatch(_diff_id_mismatch(image, layer.digest, diff_id, staged.diff_id))
        store.record_layer(layer.digest, diff_id, layer.media_type, layer.size)
        return add_snapshot(store, chain_id, diff_id, staged.directory)
    finally:
        if staged.directory.exists():
            remove_tree(staged.directory)


def discard_staged(staged: StagedSnapshot | None) -> None:
    if staged is not None and staged.directory.exists():
        remove_tree(staged.directory)


def add_snapshot(store: Store, chain_id: str, diff_id: str, directory: Path) -> Path:
    """Adopt ``directory`` (on the store's filesystem, holding layer ``diff_id``) as
    the snapshot of ``chain_id``.

    If another process got there first, theirs is returned and ``directory``
    stays where it is, for the caller to remove with its scratch space: it
    may be the lower layer of a step still running (``builder/pending.py``).
    """
    with store.lock():
        existing = snapshot_path(store, chain_id)
        if existing is not None:
            return existing
        snapshot_id = store.db.add_snapshot_row(chain_id, diff_id)
        target = store.snapshots_dir / str(snapshot_id)
        os.rename(directory, target)
        return target

def drop_legacy_snapshots(store: Store) -> None:
    """Upgrade a store whose snapshots were keyed by diff_id (index.db version 1).

    Their directories move to tmp/ and are removed; layers are extracted
    again, under their chain IDs, when a build first needs them. A
    directory that cannot be removed (still mounted by an older imgbuild)
    stays in tmp/ for ``imgbuild fsck --repair``.
    """
    moved: list[Path] = []

    def move(snapshot_id: int) -> None:
        holder = store.make_temp_dir("legacy-snapshot-")
        try:
            os.rename(store.snapshots_dir / str(snapshot_id), holder / "tree")
        except FileNotFoundError:
            pass
        moved.append(holder)

    with store.lock():
        store.db.drop_legacy_snapshots(move)
    for holder in moved:
        try:
            remove_tree(holder)
        except (MountedError, OSError):
            pass


def _diff_id_mismatch(image: str, digest: str, claimed: str, actual: str) -> str:
    where = f"image {image}" if image else "an image"
    return (
        f"{where}: layer {digest} does not match the image config: the config claims diff_id "
        f"{claimed}, but the layer's content is {actual}. The image is broken (or was tampered "
        "with); the layer was not used. Rebuild the image or push it again."
    )

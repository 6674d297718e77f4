"""A step's root filesystem: the parent layers' snapshots under a fresh overlay upperdir.

A ``Workspace`` mounts the stack and gives the merged tree (where RUN and COPY
work); its upperdir *is* the step's changeset. ``commit`` turns that changeset
into a layer blob and adopts the upperdir as the new layer's snapshot, so
nothing is extracted again on the next step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imgbuild.errors import DigestMismatch
from imgbuild.image import Descriptor, Image, LayerRef, chain_ids
from imgbuild.store import Store, remove_tree
from imgbuild.store.atomic import TreeSync

# The layer writer, the decompressors and overlayfs are imported where they
# are used: a fully cached build needs none of them (tests/perf).


def image_layers(image: Image, name: str) -> list[LayerRef]:
    """The layers of a stored image, each knowing the image's name for error messages."""
    return [
        LayerRef(diff_id, blob, origin=name)
        for diff_id, blob in zip(image.diff_ids, image.layers, strict=True)
    ]


def snapshot_dirs(store: Store, layers: list[LayerRef]) -> list[Path]:
    """The layers' snapshot directories, top-most first as overlayfs wants them.

    One directory per chain ID, so a stack with two identical layers still
    names every directory once (overlayfs refuses it otherwise, with ELOOP).
    """
    chain = chain_ids([layer.diff_id for layer in layers])
    directories = [
        store.ensure_snapshot(layer.blob, layer.diff_id, chain_id, layer.origin)
        for layer, chain_id in zip(layers, chain, strict=True)
    ]
    return directories[::-1]


class Workspace:
    """Scratch space of one step: an upperdir over the parent layers, mounted on demand."""

    def __init__(self, store: Store, layers: list[LayerRef], scratch: Path):
        self.store = store
        self.scratch = scratch
        self.parent_chain_id = chain_ids([layer.diff_id for layer in layers])[-1] if layers else None
        self.lowerdirs = snapshot_dirs(store, layers)
        self.upper = scratch / "upper"
        self.work = scratch / "work"
        self.merged = scratch / "merged"
        for directory in (self.upper, self.work, self.merged):
            directory.mkdir()
            # The upperdir's mode is the mode of the container's /: 0755, as
            # Docker's overlay2 makes it, whatever the caller's umask.
            directory.chmod(0o755)

    @contextmanager
    def mounted(self) -> Iterator[Path]:
        from imgbuild.sandbox.overlay import mount_overlay

        with mount_overlay(self.lowerdirs, self.upper, self.work, self.merged) as merged:
            yield merged

    def commit(self, *, compression: str, level: int | None, source_date_epoch: int | None) -> LayerRef | None:
        """After unmounting: the upperdir as a layer, or None when nothing changed."""
        from imgbuild.sandbox.overlay import prune_copied_up_dirs

        prune_copied_up_dirs(self.upper, self.lowerdirs)
        return commit_directory(
            self.store,
            self.upper,
            parent_chain_id=self.parent_chain_id,
            compression=compression,
            level=level,
            source_date_epoch=source_date_epoch,
        )


@contextmanager
def workspace(store: Store, layers: list[LayerRef], prefix: str = "step-") -> Iterator[Workspace]:
    """A step's workspace, removed (never left mounted) when the block ends.

    It lives in the store's tmp/ so the upperdir is on the snapshots'
    filesystem and ``commit`` can rename it into place.
    """
    scratch = store.make_temp_dir(prefix)
    try:
        yield Workspace(store, layers, scratch)
    finally:
        remove_tree(scratch)


@contextmanager
def mounted_layers(store: Store, layers: list[LayerRef]) -> Iterator[Path]:
    """The merged tree of ``layers`` for reading (COPY --from, type=local); writes are discarded."""
    with workspace(store, layers, prefix="view-") as space, space.mounted() as merged:
        yield merged


def layers_opener(store: Store, layers: list[LayerRef]):
    """``mounted_layers`` for later: a context manager factory a step opens when it runs."""

    @contextmanager
    def opener():
        with mounted_layers(store, layers) as merged:
            yield merged

    return opener


def commit_directory(
    store: Store,
    changes: Path,
    *,
    parent_chain_id: str | None,
    compression: str,
    level: int | None,
    source_date_epoch: int | None,
) -> LayerRef | None:
    """Write ``changes`` (an unmounted upperdir) as a layer and adopt it as the
    snapshot of that layer on top of ``parent_chain_id`` (None: at the bottom),
    with the times its tar records: the tree a pull of the layer would extract."""
    from imgbuild.layer.changeset import changeset_is_empty
    from imgbuild.layer.write import write_layer

    if changeset_is_empty(changes):
        return None
    # The tree becomes the layer's snapshot, so it must be on the disk before
    # the snapshot's row is in the index. Its overlay was mounted volatile (no
    # sync when unmounted, sandbox/overlay.py): the tree is synced here, while
    # the layer is written (the sync waits on the disk, the writer on the CPU).
    with TreeSync(changes, "committing a layer") as synced:
        with store.blob_writer() as blob:
            # set_times: in the same walk, not a second one over a big upperdir
            digests = write_layer(
                changes,
                blob,
                compression=compression,
                level=level,
                source_date_epoch=source_date_epoch,
                set_times=True,
            )
        store.record_layer(digests.digest, digests.diff_id, digests.media_type, digests.size)
        synced.wait()
    parent = [parent_chain_id] if parent_chain_id else []
    store.add_snapshot(chain_ids([*parent, digests.diff_id])[-1], digests.diff_id, changes)
    return LayerRef(digests.diff_id, Descriptor(digests.media_type, digests.digest, digests.size))


def recompress(store: Store, layer: LayerRef, compression: str, level: int | None) -> LayerRef:
    """The same layer content as a blob with another compression (written once, then reused).

    The layer's own tar is decompressed and compressed again, so the diff_id
    stays what it was whatever SOURCE_DATE_EPOCH or layer writer made it; the
    blob is kept only if it does (otherwise it fails, and nothing is left).
    The ``layers`` table holds only verified diff_ids, so a blob found there
    is the same content.
    """
    if compressed_as(layer.blob.media_type, compression):
        return layer
    for row in store.db.blobs_of(layer.diff_id):
        media_type = row["media_type"]
        if compressed_as(media_type, compression) and store.has_blob(row["digest"]):
            return LayerRef(layer.diff_id, Descriptor(media_type, row["digest"], row["size"]), layer.origin)
    from imgbuild.layer.decompress import open_tar_stream
    from imgbuild.layer.write import compress_tar

    with store.open_blob(layer.blob.digest) as source, store.blob_writer() as blob:
        digests = compress_tar(open_tar_stream(source, layer.blob.media_type or None), blob, compression, level)
        if digests.diff_id != layer.diff_id:
            raise DigestMismatch(
                f"cannot recompress layer {layer.blob.digest}: its content is {digests.diff_id}, "
                f"but the image says {layer.diff_id}; run `imgbuild fsck`"
            )
    store.record_layer(digests.digest, digests.diff_id, digests.media_type, digests.size)
    return LayerRef(layer.diff_id, Descriptor(digests.media_type, digests.digest, digests.size), layer.origin)


def compressed_as(media_type: str, compression: str) -> bool:
    """Does a layer media type name this compression (gzip, zstd, uncompressed)?"""
    if compression == "uncompressed":
        return not media_type.endswith(("gzip", "zstd"))
    return media_type.endswith(compression)

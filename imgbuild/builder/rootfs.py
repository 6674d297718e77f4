"""A step's root filesystem: the parent layers' snapshots under a fresh overlay upperdir.

A ``Workspace`` mounts the stack and gives the merged tree (where RUN and COPY
work); its upperdir *is* the step's changeset. ``commit`` turns that changeset
into a layer blob and adopts the upperdir as the new layer's snapshot, so
nothing is extracted again on the next step. A step that a RUN follows does
that in two parts: ``ready`` makes the changeset final, the RUN mounts it,
and ``write`` makes the layer while the RUN's container runs (``pending.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imgbuild.errors import DigestMismatch
from imgbuild.image import Descriptor, Image, LayerRef, chain_ids
from imgbuild.store import Store, remove_tree
from imgbuild.store.atomic import TreeSync

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from imgbuild.builder.pending import PendingLayer

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
    """Scratch space of one step: an upperdir over the parent layers, mounted on demand.

    ``below`` is the previous step's layer when that is still to be written
    (``pending.py``): its changeset is the top lower layer until then, and
    this step's container runs while it is written (``meanwhile``).
    """

    def __init__(self, store: Store, layers: list[LayerRef], scratch: Path, below: PendingLayer | None = None):
        self.store = store
        self.scratch = scratch
        self.layers = list(layers)  # a copy: the stage's own list gains the pending layer once written
        self.below = below
        self.lowerdirs = snapshot_dirs(store, layers)
        if below is not None:
            self.lowerdirs.insert(0, below.changes)
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

    def meanwhile(self) -> None:
        """While the step's container runs: write the layer below, if it is
        pending (else once the step's work is done, ``layerstep.worked_space``)."""
        if self.below is not None:
            self.below.finish()

    def below_replaced(self) -> bool:
        """Is the pending layer below, now written, another than the one the
        step ran on? (Another build recorded its key first, ``pending.py``.)"""
        return self.below is not None and self.below.replaced

    def parent_layers(self) -> list[LayerRef]:
        """The layers under the upperdir: the pending one below among them once written."""
        if self.below is None or self.below.layer is None:
            return self.layers
        return [*self.layers, self.below.layer]

    def commit(self, *, compression: str, level: int | None, source_date_epoch: int | None) -> LayerRef | None:
        """After unmounting (and ``meanwhile``): the upperdir as a layer, or
        None when nothing changed."""
        from imgbuild.sandbox.overlay import prune_copied_up_dirs

        prune_copied_up_dirs(self.upper, self._lowerdirs_now())
        return self._write(compression=compression, level=level, source_date_epoch=source_date_epoch, times_set=False)

    def ready(self, *, source_date_epoch: int | None) -> bool:
        """After unmounting (and ``meanwhile``), for a layer written later
        (``write``): the upperdir pruned and given the times its tar will
        record, so that the next step can mount it as it will be; False when
        the step changed nothing."""
        from imgbuild.layer.changeset import changeset_is_empty, set_times_as_written
        from imgbuild.sandbox.overlay import prune_copied_up_dirs

        prune_copied_up_dirs(self.upper, self._lowerdirs_now())
        if changeset_is_empty(self.upper):
            return False
        set_times_as_written(self.upper, source_date_epoch)
        return True

    def write(self, *, compression: str, level: int | None, source_date_epoch: int | None) -> LayerRef:
        """The upperdir ``ready`` readied, as a layer (its times are set already)."""
        return self._write(compression=compression, level=level, source_date_epoch=source_date_epoch, times_set=True)

    def _write(self, *, compression: str, level: int | None, source_date_epoch: int | None, times_set: bool):
        return commit_directory(
            self.store,
            self.upper,
            parent_chain_id=self._parent_chain_id(),
            compression=compression,
            level=level,
            source_date_epoch=source_date_epoch,
            times_set=times_set,
        )

    def _parent_chain_id(self) -> str | None:
        parents = self.parent_layers()
        return chain_ids([layer.diff_id for layer in parents])[-1] if parents else None

    def _lowerdirs_now(self) -> list[Path]:
        """The lowerdirs as they are now: a pending changeset mounted below has
        since become its layer's snapshot (or met the same snapshot another
        build made first, and stayed in its scratch space)."""
        if self.below is None or self.below.layer is None:
            return self.lowerdirs
        top = self.below.layer
        snapshot = self.store.ensure_snapshot(top.blob, top.diff_id, self._parent_chain_id(), top.origin)
        return [snapshot, *self.lowerdirs[1:]]


@contextmanager
def workspace(
    store: Store, layers: list[LayerRef], prefix: str = "step-", below: PendingLayer | None = None,
    *, keep: bool = False,
) -> Iterator[Workspace]:
    """A step's workspace, removed (never left mounted) when the block ends;
    with ``keep``, only when it fails (the caller removes it after).

    It lives in the store's tmp/ so the upperdir is on the snapshots'
    filesystem and ``commit`` can rename it into place. A pending layer
    ``below`` is written by the block's end (when the block fails too,
    unless the build is interrupted) and what is left of it removed.
    """
    scratch = None
    kept = False
    try:
        scratch = store.make_temp_dir(prefix)
        yield Workspace(store, layers, scratch, below)
        kept = keep
    except BaseException as error:
        if below is not None:
            below.finish_despite(error)
        raise
    finally:
        try:
            if scratch is not None and not kept:
                remove_tree(scratch)
        finally:
            if below is not None:
                below.release()


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
    times_set: bool = False,
) -> LayerRef | None:
    """Write ``changes`` (an unmounted upperdir) as a layer and adopt it as the
    snapshot of that layer on top of ``parent_chain_id`` (None: at the bottom),
    with the times its tar records (``times_set``: they are already): the tree
    a pull of the layer would extract."""
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
                set_times=not times_set,
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

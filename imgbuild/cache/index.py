"""The store's ``cache`` table: which layer each step key stands for.

A key found in the table is a hit: its layer is reused and nothing runs
(``keys.py`` says how keys are made; they never include secrets or mtimes).

A key found only in an imported cache (``--cache-from``) is a hit too, but
its layer blob is fetched only when something reads the layer. Until then
the entry is *pending*: it lives in this build's memory, not in the table,
so a build that fails (or never needs the layer) leaves no entry whose
layer is missing; it is recorded, with its inputs, once its blob is here.
"""

from __future__ import annotations

import threading

from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError
from imgbuild.image import Descriptor, LayerRef
from imgbuild.store import Store


@dataclass
class PendingEntry:
    """An imported entry whose layer blob is not in the store yet."""

    columns: dict  # the ``cache`` columns record_cache_entry takes
    inputs: tuple | None = None  # (place, inputs, listings), as keep_inputs takes them


@dataclass
class CacheEntry:
    """A cache index row: the layer a step key stands for."""

    key: str
    layer: LayerRef | None  # None: the step ran and changed nothing
    created_by: str
    hits: int
    # As the lookup read them from the store's row (None: ask again), so a
    # hit costs one query: when the entry was first built, whether it keeps
    # the inputs of its key.
    created: float | None = None
    keeps_inputs: bool | None = None


class BuildCache:
    def __init__(self, store: Store, sources: list | None = None):
        self.store = store
        # --cache-from (imgbuild.cache.share): asked when the store misses;
        # their layers come only when needed (fetch_layers).
        self.sources = list(sources or [])
        self.imported: dict[str, object] = {}  # blob digest -> the source that has it
        self.used: dict[int, list[str]] = {}  # stage index -> the keys its steps looked up (--cache-to)
        self.pending: dict[str, PendingEntry] = {}  # key -> imported entry waiting for its blob
        self.lock = threading.Lock()

    def lookup(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` if its layer blob is still in the store, or
        one an imported cache has (its blob comes later, see ``fetch_layers``).

        Under the writer lease: a hit is touched (``last_used``) before a
        collection can judge the entry, which then keeps it for this build."""
        with self.store.writer_lease():
            return self._lookup(key)

    def _lookup(self, key: str) -> CacheEntry | None:
        row = self.store.db.cache_entry(key)
        layer = _layer_of(row) if row is not None else None
        if row is None or (layer is not None and not self.store.has_blob(layer.blob.digest)):
            # unknown, or pruned behind our back: an imported cache may have it, else rebuild the step
            return self._lookup_imported(key)
        self.store.db.count_cache_hit(key)
        return CacheEntry(
            key, layer, row["created_by"], row["hits"] + 1, created=row["created"], keeps_inputs=row["inputs"] is not None
        )

    def _lookup_imported(self, key: str) -> CacheEntry | None:
        for source in self.sources:
            step = source.lookup(key)
            if step is None:
                continue
            if step.layer is not None and not self.store.has_blob(step.layer.blob.digest):
                with self.lock:
                    self.imported[step.layer.blob.digest] = source
                    self.pending[key] = PendingEntry(
                        _columns(key, step.parent_key, step.layer, step.created_by, step.created)
                    )
                return CacheEntry(key, step.layer, step.created_by, 1)
            layer = self.record(key, step.parent_key, step.layer, step.created_by, replace=True, created=step.created)
            self.store.db.count_cache_hit(key)
            return CacheEntry(key, layer, step.created_by, 1)
        return None

    def fetch_layers(self, layers: list[LayerRef]) -> None:
        """Bring the blobs of imported layers into the store, verified, before
        anything reads them; layers already here cost nothing."""
        for layer in layers:
            with self.lock:
                source = self.imported.get(layer.blob.digest)
            if source is not None and not self.store.has_blob(layer.blob.digest):
                try:
                    source.fetch(self.store, layer.blob)
                except ImgbuildError as error:
                    from imgbuild.cache.share import CacheShareError  # only with --cache-from

                    raise CacheShareError(
                        f"cannot take layer {layer.blob.digest} from the imported cache {source.where}: {error}. "
                        "Export it again with --cache-to, or build without this --cache-from"
                    ) from None
            self.settle(layer.blob.digest)

    def settle(self, digest: str | None = None) -> None:
        """Record the pending entries whose blob is in the store now (those of
        the blob ``digest``, or all), with the inputs this build kept for them."""
        with self.lock:
            ready = [
                (key, entry)
                for key, entry in self.pending.items()
                if digest in (None, entry.columns["layer_digest"]) and self.store.has_blob(entry.columns["layer_digest"])
            ]
            for key, _ in ready:
                del self.pending[key]
        for key, entry in ready:
            self.store.db.record_cache_entry(entry.columns, keep_existing=self._keeps_existing(False))
            self.store.db.count_cache_hit(key)
            if entry.inputs is not None and not self.store.db.cache_has_inputs(key):
                self.store.db.record_cache_inputs(key, entry.inputs[0].as_columns(), *entry.inputs[1:])

    def in_registry(self, digest: str) -> bool:
        """Whether the blob ``digest`` comes from an imported cache in a registry."""
        with self.lock:
            source = self.imported.get(digest)
        return bool(getattr(source, "remote", False))

    def pending_layers(self, keys: list[str]) -> list[LayerRef]:
        """The layers of the pending entries among ``keys``."""
        with self.lock:
            entries = [self.pending[key].columns for key in keys if key in self.pending]
        return [_layer_of(columns) for columns in entries]

    def pending_records(self, keys: list[str]) -> dict:
        """key -> ``share.EntryRecord`` of the pending entries among ``keys`` (for --cache-to)."""
        from imgbuild.cache.share import EntryRecord

        with self.lock:
            pending = {key: self.pending[key] for key in keys if key in self.pending}
        records = {}
        for key, entry in pending.items():
            row, inputs, listings = dict(entry.columns), None, {}
            if entry.inputs is not None:
                place, inputs, listings = entry.inputs
                row.update(place.as_columns())
            records[key] = EntryRecord(row, inputs, listings.get)
        return records

    def pending_entry(self, key: str) -> PendingEntry | None:
        with self.lock:
            return self.pending.get(key)

    def note_used(self, stage_index: int, key: str) -> None:
        with self.lock:
            self.used.setdefault(stage_index, []).append(key)

    def record(
        self,
        key: str,
        parent_key: str,
        layer: LayerRef | None,
        created_by: str,
        *,
        replace: bool = False,
        created: float | None = None,
    ) -> LayerRef | None:
        """Record the layer a step made under ``key``; return the layer ``key`` stands for.

        Two builds (or stages) that miss one key at once both run the step.
        The first to record it wins: the others get its layer back and must
        build on that one, not on their own. A step whose result differs from
        run to run (a download) would otherwise leave the key naming the last
        build's layer while the next step's key already names a layer made on
        top of the first's: later builds would get an image no build made.
        ``replace`` (``--no-cache``) records ours whatever is there; so does a
        recorded entry whose layer blob is gone. ``created``: when the step was
        first built, for an imported entry (default: now).
        """

        entry = _columns(key, parent_key, layer, created_by, created)
        existing = self.store.db.record_cache_entry(entry, keep_existing=self._keeps_existing(replace))
        return layer if existing is None else _layer_of(existing)

    def _keeps_existing(self, replace: bool):
        def keep_existing(row) -> bool:
            recorded = _layer_of(row)
            return not replace and (recorded is None or self.store.has_blob(recorded.blob.digest))

        return keep_existing

    def needs_inputs(self, key: str) -> bool:
        """True if ``key`` has an entry that does not keep its inputs yet: an
        entry keeps the first record (``keep_inputs``)."""
        pending = self.pending_entry(key)
        if pending is not None:
            return pending.inputs is None
        return self.store.db.cache_entry(key) is not None and not self.store.db.cache_has_inputs(key)

    def keep_inputs(self, key: str, place, inputs: dict, listings: dict) -> None:
        """Keep what ``key`` was made of (``inputs.py``); ask ``needs_inputs`` first.
        ``listings`` maps the source digests in the document to the files they covered.
        A pending entry keeps them until it is recorded."""
        with self.lock:
            pending = self.pending.get(key)
            if pending is not None:
                pending.inputs = (place, inputs, listings)
                return
        self.store.db.record_cache_inputs(key, place.as_columns(), inputs, listings)


def _columns(key: str, parent_key: str, layer: LayerRef | None, created_by: str, created: float | None = None) -> dict:
    return {
        "created": created,
        "key": key,
        "parent_key": parent_key,
        "diff_id": layer.diff_id if layer else None,
        "layer_digest": layer.blob.digest if layer else None,
        "layer_media_type": layer.blob.media_type if layer else None,
        "layer_size": layer.blob.size if layer else 0,
        "created_by": created_by,
    }


def _layer_of(row) -> LayerRef | None:
    """The layer of a ``cache`` row; None for a step that made no layer."""
    if not row["diff_id"]:
        return None
    return LayerRef(row["diff_id"], Descriptor(row["layer_media_type"], row["layer_digest"], row["layer_size"]))

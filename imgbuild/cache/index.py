"""The store's ``cache`` table: which layer each step key stands for.

A key found in the table is a hit: its layer is reused and nothing runs
(``keys.py`` says how keys are made; they never include secrets or mtimes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from imgbuild.image import Descriptor, LayerRef
from imgbuild.store import Store


@dataclass
class CacheEntry:
    key: str
    layer: LayerRef | None  # None: the step ran and changed nothing
    created_by: str
    hits: int


class BuildCache:
    def __init__(self, store: Store):
        self.store = store

    def lookup(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` if its layer blob is still in the store."""
        rows = self.store.db.query("SELECT * FROM cache WHERE key=?", (key,))
        if not rows:
            return None
        row = rows[0]
        layer = _layer_of(row)
        if layer is not None and not self.store.has_blob(layer.blob.digest):
            return None  # pruned behind our back: rebuild the step
        self.store.db.execute(
            "UPDATE cache SET hits = hits + 1, last_used = ? WHERE key = ?", (time.time(), key)
        )
        return CacheEntry(key, layer, row["created_by"], row["hits"] + 1)

    def record(
        self, key: str, parent_key: str, layer: LayerRef | None, created_by: str, *, replace: bool = False
    ) -> LayerRef | None:
        """Record the layer a step made under ``key``; return the layer ``key`` stands for.

        Two builds (or stages) that miss one key at once both run the step.
        The first to record it wins: the others get its layer back and must
        build on that one, not on their own. A step whose result differs from
        run to run (a download) would otherwise leave the key naming the last
        build's layer while the next step's key already names a layer made on
        top of the first's: later builds would get an image no build made.
        ``replace`` (``--no-cache``) records ours whatever is there; so does a
        recorded entry whose layer blob is gone.
        """
        with self.store.db.transaction() as conn:
            row = conn.execute("SELECT * FROM cache WHERE key=?", (key,)).fetchone()
            if row is not None and not replace:
                recorded = _layer_of(row)
                if recorded is None or self.store.has_blob(recorded.blob.digest):
                    return recorded
            now = time.time()
            conn.execute(
                "INSERT OR REPLACE INTO cache(key, parent_key, diff_id, layer_digest, layer_media_type,"
                " layer_size, created_by, created, last_used, hits) VALUES (?,?,?,?,?,?,?,?,?,0)",
                (
                    key,
                    parent_key,
                    layer.diff_id if layer else None,
                    layer.blob.digest if layer else None,
                    layer.blob.media_type if layer else None,
                    layer.blob.size if layer else 0,
                    created_by,
                    now,
                    now,
                ),
            )
        return layer


def _layer_of(row) -> LayerRef | None:
    """The layer of a ``cache`` row; None for a step that made no layer."""
    if not row["diff_id"]:
        return None
    return LayerRef(row["diff_id"], Descriptor(row["layer_media_type"], row["layer_digest"], row["layer_size"]))

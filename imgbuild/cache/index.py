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
        layer = None
        if row["diff_id"]:
            blob = Descriptor(row["layer_media_type"], row["layer_digest"], row["layer_size"])
            if not self.store.has_blob(blob.digest):
                return None  # pruned behind our back: rebuild the step
            layer = LayerRef(row["diff_id"], blob)
        self.store.db.execute(
            "UPDATE cache SET hits = hits + 1, last_used = ? WHERE key = ?", (time.time(), key)
        )
        return CacheEntry(key, layer, row["created_by"], row["hits"] + 1)

    def record(self, key: str, parent_key: str, layer: LayerRef | None, created_by: str) -> None:
        now = time.time()
        self.store.db.execute(
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

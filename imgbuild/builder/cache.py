"""The build cache: step cache keys and the store's ``cache`` table.

A step's key is a sha256 over a JSON document of everything that can change
what the step produces (docs/build.md, "The cache key"): the parent step's key, the instruction
after expansion, the image config it runs in (env, user, workdir, shell, ...),
the build args it sees, and digests of the files it reads. A key found in the
table is a hit: its layer is reused and nothing runs. Keys never include
secrets or mtimes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

from imgbuild.image import Descriptor
from imgbuild.store import Store


def cache_key(document: dict) -> str:
    data = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


@dataclass(frozen=True)
class LayerRef:
    """A layer of an image being built: its uncompressed digest and its blob."""

    diff_id: str
    blob: Descriptor
    origin: str = field(default="", compare=False)  # the image it came from, for error messages


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

"""Where blobs came from: which registry repositories are known to hold a blob.

A push asks a registry to mount a blob from another repository it already has
it in (``POST .../uploads/?mount=<digest>&from=<repo>``) instead of uploading it
again. The registry does not tell us where it has a blob, so we remember every
repository we pulled a blob from or pushed it to, in the store's SQLite index.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from imgbuild.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS blob_sources (
    digest      TEXT NOT NULL,
    registry    TEXT NOT NULL,   -- as in references: "docker.io", "127.0.0.1:5000"
    repository  TEXT NOT NULL,   -- "library/busybox"
    last_seen   REAL NOT NULL,
    PRIMARY KEY (digest, registry, repository)
)
"""

MAX_MOUNT_SOURCES = 3  # mount attempts per blob before uploading it


def remember_blobs(store: Store, registry: str, repository: str, digests: Iterable[str]) -> None:
    """Record that ``registry``/``repository`` holds each of ``digests``."""
    now = time.time()
    rows = [(digest, registry, repository, now) for digest in set(digests)]
    _ensure_table(store)
    with store.db.transaction() as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO blob_sources(digest, registry, repository, last_seen) VALUES (?,?,?,?)",
            rows,
        )


def mount_sources(store: Store, registry: str, digest: str, exclude: str) -> list[str]:
    """Repositories of ``registry`` other than ``exclude`` known to hold ``digest``, newest first."""
    _ensure_table(store)
    rows = store.db.query(
        "SELECT repository FROM blob_sources WHERE digest=? AND registry=? AND repository<>? "
        "ORDER BY last_seen DESC LIMIT ?",
        (digest, registry, exclude, MAX_MOUNT_SOURCES),
    )
    return [row["repository"] for row in rows]


def _ensure_table(store: Store) -> None:
    # Our own table in the store's index; IF NOT EXISTS makes this cheap and safe
    # for several processes.
    store.db.connection().execute(SCHEMA)

"""Where blobs came from: which registry repositories are known to hold a blob.

A push asks a registry to mount a blob from another repository it already has
it in (``POST .../uploads/?mount=<digest>&from=<repo>``) instead of uploading it
again. The registry does not tell us where it has a blob, so we remember every
repository we pulled a blob from or pushed it to, in the store's SQLite index
(the ``blob_sources`` table of ``imgbuild.store.index_db``).
"""

from __future__ import annotations

from collections.abc import Iterable

from imgbuild.store import Store

MAX_MOUNT_SOURCES = 3  # mount attempts per blob before uploading it


def remember_blobs(store: Store, registry: str, repository: str, digests: Iterable[str]) -> None:
    """Record that ``registry``/``repository`` holds each of ``digests``."""
    store.db.record_blob_sources(registry, repository, set(digests))


def mount_sources(store: Store, registry: str, digest: str, exclude: str) -> list[str]:
    """Repositories of ``registry`` other than ``exclude`` known to hold ``digest``, newest first."""
    return store.db.blob_source_repositories(registry, digest, exclude, MAX_MOUNT_SOURCES)

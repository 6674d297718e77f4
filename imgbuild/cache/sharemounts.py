"""``RUN --mount=type=cache`` directories in an exported cache (``cache-mounts=true``).

Each directory under the store's ``cache-mounts/`` goes into the cache as one
more layer blob (a tar of its contents), named in the index by the
directory's name (a digest of the mount id, ``runmounts.cache_mount_dir``).
An importing build seeds a cache mount it does not have yet from it, before
its first step; one it has is left alone (it is at least as warm).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from imgbuild.image import Descriptor
from imgbuild.store import Store, remove_tree

MOUNT_NAME = re.compile(r"^[0-9a-f]{24}$")  # runmounts.cache_mount_dir's names


def cache_mount_layers(store: Store, compression: str) -> list[dict]:
    """Every cache mount directory of the store as a layer blob in the store."""
    found = []
    for directory in sorted(store.cache_mounts_dir.iterdir()):
        if not MOUNT_NAME.match(directory.name) or directory.is_symlink() or not directory.is_dir():
            continue  # lock files, private copies
        from imgbuild.layer.write import write_layer

        with store.blob_writer() as blob:
            digests = write_layer(directory, blob, compression=compression)
        layer = Descriptor(digests.media_type, digests.digest, digests.size)
        found.append({"name": directory.name, "layer": layer.to_json()})
    return found


def seed_cache_mounts(store: Store, source) -> int:
    """Make the cache mounts ``source`` has and the store lacks; returns how many."""
    made = 0
    for name, layer in source.cache_mounts():
        target = store.cache_mounts_dir / name
        if not MOUNT_NAME.match(name) or os.path.lexists(target):
            continue
        if not store.has_blob(layer.digest):
            source.fetch(store, layer)
        staging = Path(store.make_temp_dir("cache-mount-"))
        try:
            os.chmod(staging, 0o755)  # as a new cache mount; the layer's root entry may say otherwise
            from imgbuild.layer.extract import apply_layer

            with store.open_blob(layer.digest) as blob:
                apply_layer(blob, staging, media_type=layer.media_type or None)
            try:
                os.rename(staging, target)  # another build may have made it meanwhile: keep theirs
                made += 1
            except OSError:
                pass
        finally:
            if staging.exists():
                remove_tree(staging)
    return made

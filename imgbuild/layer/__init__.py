"""Layers: changeset directory to tar blob (``write``) and tar blob to snapshot (``extract``).

The only tar code of the package. ``tarformat`` holds the tar encoding shared
by both; ``decompress`` opens gzip, zstd and plain layer blobs (and bzip2 and
xz for ADD). ``untar`` extracts ADD's local archives by Docker's rules;
``fdtree`` holds the no-symlink-followed file operations both extractors use.
"""

from imgbuild.layer.extract import ApplyStats, apply_layer
from imgbuild.layer.write import LayerDigests, changeset_is_empty, write_layer

__all__ = ["ApplyStats", "LayerDigests", "apply_layer", "changeset_is_empty", "write_layer"]

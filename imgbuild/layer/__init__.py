"""Layers: changeset directory to tar blob (``write``) and tar blob to snapshot (``extract``).

``tarformat`` holds the tar encoding shared by both; ``decompress`` opens gzip,
zstd and plain layer blobs.
"""

from imgbuild.layer.extract import ApplyStats, apply_layer
from imgbuild.layer.write import LayerDigests, changeset_is_empty, write_layer

__all__ = ["ApplyStats", "LayerDigests", "apply_layer", "changeset_is_empty", "write_layer"]

"""Layers: changeset directory to tar blob (``write``) and tar blob to snapshot (``extract``).

The only tar code of the package. ``tarformat`` holds the tar encoding shared
by both; ``decompress`` opens gzip, zstd and plain layer blobs (and bzip2 and
xz for ADD). ``untar`` extracts ADD's local archives by Docker's rules;
``fdtree`` holds the no-symlink-followed file operations both extractors use;
``changeset`` walks a step's upperdir as the writer does and sets its times.
"""

import importlib

# name -> module: loaded on first use, so that importing one submodule (untar
# for ADD, tarformat) or a cache hit does not load the extractor, the writer
# and their compressors.
_EXPORTS = {
    "ApplyStats": "extract",
    "apply_layer": "extract",
    "LayerDigests": "write",
    "changeset_is_empty": "changeset",
    "write_layer": "write",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"imgbuild.layer.{_EXPORTS[name]}"), name)

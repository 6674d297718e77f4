"""Layer compressions: their media types and levels, and the check of a requested level.

Kept apart from the writer (``write.py``): every build checks its flags,
cached or not, and this check must not load the writer and its compressors.
"""

from __future__ import annotations

from imgbuild.errors import UsageError

MEDIA_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "uncompressed": "application/vnd.oci.image.layer.v1.tar",
}
DEFAULT_LEVELS = {"gzip": 6, "zstd": 3}  # the levels the docs and --help name
LEVEL_RANGES = {"gzip": range(0, 10), "zstd": range(1, 23)}


def check_compression(compression: str, level: int | None) -> None:
    """Raise UsageError unless ``level`` suits ``compression``: for flags, before any work."""
    check_options(compression, level, None)


def check_options(compression: str, level: int | None, source_date_epoch: int | None) -> int | None:
    """The level to write with (None: gzip's threaded default, see layer/write.py),
    or UsageError for an unknown compression, a level out of its range, a level
    for uncompressed layers, or a negative SOURCE_DATE_EPOCH."""
    if compression not in MEDIA_TYPES:
        raise UsageError(
            f"unknown layer compression {compression!r}; use gzip, zstd or uncompressed"
        )
    if source_date_epoch is not None and source_date_epoch < 0:
        raise UsageError(f"SOURCE_DATE_EPOCH must not be negative, got {source_date_epoch}")
    if compression == "uncompressed":
        if level is not None:
            raise UsageError("a compression level makes no sense for uncompressed layers")
        return 0
    if level is None:
        return None if compression == "gzip" else DEFAULT_LEVELS[compression]
    allowed = LEVEL_RANGES[compression]
    if level not in allowed:
        raise UsageError(
            f"{compression} compression level must be {allowed.start}..{allowed.stop - 1}, "
            f"not {level}"
        )
    return level

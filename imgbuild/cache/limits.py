"""The limits of automatic cache collection after a build (``--max-cache``,
``--min-free``): read on every build, so kept apart from the prune itself
(``prune.py``), which a build loads only when its store is over them.
"""

from __future__ import annotations

import os

from imgbuild.dataclass import dataclass
from imgbuild.errors import UsageError

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from imgbuild.store import Store

# BuildKit's defaults (buildkitd config, gcpolicy_unix.go): keep at most
# min(80% of the disk, 100GB), keep 20% of the disk free, but never collect
# below a reserve of min(10% of the disk, 10GB).
DEFAULT_MAX_CACHE = "80%"
MAX_CACHE_CAP = 100 * 10**9
DEFAULT_MIN_FREE = "20%"
RESERVE_PERCENT = 10
RESERVE_CAP = 10 * 10**9


@dataclass
class Limits:
    """How much disk the store may take, in bytes, after the percentages were worked out."""

    max_cache: int  # bytes the store's blobs and snapshots may take
    min_free: int  # bytes to keep free on the store's filesystem
    reserve: int  # a full disk never collects the store below this


def parse_limit(text: str, disk_bytes: int, what: str) -> int:
    """A size (``10GB``) or a share of the store's filesystem (``80%``)."""
    from imgbuild.units import parse_size

    text = text.strip()
    if text.endswith("%"):
        number = text[:-1].strip()
        if not number.isdigit() or int(number) > 100:
            raise UsageError(f"{what} {text!r}: a percentage is a whole number from 0% to 100%")
        return disk_bytes * int(number) // 100
    return parse_size(text, what)


def limits_for(store: Store, max_cache: str | None = None, min_free: str | None = None) -> Limits:
    """The limits of automatic collection: the flags, else IMGBUILD_MAX_CACHE and
    IMGBUILD_MIN_FREE, else BuildKit's defaults (see the constants above)."""
    info = os.statvfs(store.root)
    disk = info.f_blocks * info.f_frsize
    max_text, max_what = _setting(max_cache, "--max-cache", "IMGBUILD_MAX_CACHE", DEFAULT_MAX_CACHE)
    free_text, free_what = _setting(min_free, "--min-free", "IMGBUILD_MIN_FREE", DEFAULT_MIN_FREE)
    max_bytes = parse_limit(max_text, disk, max_what)
    if max_what == "the default":
        max_bytes = min(max_bytes, MAX_CACHE_CAP)
    reserve = min(disk * RESERVE_PERCENT // 100, RESERVE_CAP, max_bytes)
    return Limits(max_bytes, parse_limit(free_text, disk, free_what), reserve)


def _setting(flag_value: str | None, flag: str, variable: str, default: str) -> tuple[str, str]:
    """(the text, where it came from) of one limit: the flag, the environment, the default."""
    if flag_value:
        return flag_value, flag
    if os.environ.get(variable):
        return os.environ[variable], variable
    return default, "the default"


def within_limits(store: Store, limits: Limits) -> bool:
    """True when the store cannot be over ``limits``: it cannot take more than
    its filesystem uses, and the filesystem has the free space asked for (no walk)."""
    info = os.statvfs(store.root)
    used_on_disk = (info.f_blocks - info.f_bfree) * info.f_frsize
    return used_on_disk <= limits.max_cache and info.f_bavail * info.f_frsize >= limits.min_free


def collect_after_build(store: Store, limits: Limits, progress) -> None:
    """Prune the cache when the store passes its limits (--max-cache, --min-free)."""
    if within_limits(store, limits):
        return  # the usual case: the prune code is not even loaded
    from imgbuild.cache.prune import collect_if_over
    from imgbuild.units import human_size, plural

    result = collect_if_over(store, limits)
    if result is None:
        return
    if result.skipped_reason:
        progress.info(f"cache limits not checked ({result.skipped_reason}); the next build checks them")
        return
    progress.info(
        f"cache over its limits: pruned {plural(len(result.entries), 'entry')}, freed {human_size(result.freed_bytes)}"
    )

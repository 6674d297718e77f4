"""Bounding the build cache: what it takes on disk (``cache du``), pruning it
(``cache prune``) and collecting it after a build when it passes a limit.

Every size here is measured on disk: the blob files under
``oci/blobs/sha256`` and the snapshot trees under ``snapshots/``, in allocated
bytes as ``du -B1`` counts them. A snapshot never changes, so its size is
measured once and kept in the index (imgbuild.store.gc.snapshot_sizes). The
layers' sizes in the index are what their descriptors say, not what the store
takes, and are not used here.

What a prune keeps, after it has chosen the cache entries to remove:

- every blob an image in index.json reaches (tagged or untagged): images are
  never broken by a prune, ``--all`` included;
- the layer blob of every remaining cache entry;
- every snapshot whose layer (diff_id) a remaining cache entry or an image
  has, and the blob it was extracted from.

Everything else under blobs/ and snapshots/ goes. Without ``--all``, a cache
entry whose layer an image references is never chosen: it costs nothing the
image does not already keep. Entries go least recently used first.

While builds run on the store (``imgbuild.store.lock``, "live builds"), a
prune goes on, but keeps what any of them may need: every entry used since
the oldest of them started (a hit is touched under the writer lease, so
before the prune judges it), every blob written since then, every snapshot
made or used since then, and every blob of the images they resolved.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, field

from imgbuild.cache.limits import (  # noqa: F401 (limits_for, parse_limit: here too, as before)
    Limits,
    limits_for,
    parse_limit,
    within_limits,
)
from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError
from imgbuild.store import Store
from imgbuild.store.gc import (
    LEASE_WAIT_SECONDS,
    SIDE_LEASE_WAIT_SECONDS,
    exclusive_lease,
    file_usage,
    image_diff_ids,
    is_digest_name,
    live_blobs,
    maybe_in_use,
    referenced_blobs,
    snapshot_sizes,
    sweep_blobs,
    sweep_snapshots,
    sweep_statcache,
)


@dataclass
class Entry:
    """One cache entry as ``du --verbose`` and ``prune`` report it."""

    key: str
    created_by: str
    layer_digest: str | None
    size: int  # bytes its layer blob takes on disk (0: no layer, or the blob is gone)
    created: float
    last_used: float
    hits: int
    shared: bool  # an image references its layer


@dataclass
class StoreUsage:
    """The store as measured now."""

    blobs: dict[str, int]  # digest -> bytes on disk
    snapshots: dict[int, tuple[str, int]]  # id -> (diff_id, bytes on disk)
    layer_diff_ids: dict[str, str]  # blob digest -> diff_id
    image_blobs: set[str]
    image_diff_ids: set[str]
    entries: list[Entry]  # least recently used first
    # What live builds may need (``protect_live_builds``): nothing when none runs.
    fence: float | None = None  # entries and snapshots used since then stay
    live_blobs: set[str] = field(default_factory=set)
    live_snapshots: set[int] = field(default_factory=set)
    live_builds: int = 0
    live_work_dirs: set[str] = field(default_factory=set)

    def kept(self, remaining: list[Entry]) -> tuple[set[str], set[int]]:
        """(blobs, snapshot ids) a store with only ``remaining`` cache entries keeps."""
        diff_ids = set(self.image_diff_ids)
        blobs = set(self.image_blobs) | self.live_blobs
        diff_ids |= {self.layer_diff_ids.get(digest, "") for digest in self.live_blobs}
        for entry in remaining:
            if entry.layer_digest:
                blobs.add(entry.layer_digest)
                diff_ids.add(self.layer_diff_ids.get(entry.layer_digest, ""))
        snapshots = {sid for sid, (diff_id, _) in self.snapshots.items() if diff_id in diff_ids}
        snapshots |= self.live_snapshots & set(self.snapshots)
        kept_diff_ids = {self.snapshots[sid][0] for sid in snapshots}
        blobs |= {digest for digest, diff_id in self.layer_diff_ids.items() if diff_id in kept_diff_ids}
        return blobs & set(self.blobs), snapshots

    def size_of(self, blobs: set[str], snapshots: set[int]) -> int:
        return sum(self.blobs[d] for d in blobs) + sum(self.snapshots[s][1] for s in snapshots)

    @property
    def total(self) -> int:
        return sum(self.blobs.values()) + sum(size for _, size in self.snapshots.values())


@dataclass
class PrunePlan:
    """What a prune will remove, worked out before anything is removed."""

    entries: list[Entry]  # the cache entries to remove
    blobs: set[str]  # blob digests to remove
    snapshots: set[int]  # snapshot ids to remove
    freed_bytes: int


@dataclass
class PruneResult:
    """What a prune removed, and the store's size before and after."""

    entries: list[Entry] = field(default_factory=list)
    blobs: int = 0  # blob files removed
    snapshots: int = 0  # snapshot directories removed
    statcache_rows: int = 0
    freed_bytes: int = 0  # measured on disk before removal
    before_bytes: int = 0
    after_bytes: int = 0
    dry_run: bool = False
    skipped_reason: str = ""  # set when nothing ran
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        data = asdict(self)
        data["entries"] = [asdict(entry) for entry in self.entries]
        return data


# --- measuring ---------------------------------------------------------------------


def measure(store: Store) -> StoreUsage:
    """Measure blobs and snapshots and relate them to the cache and the images.

    Raises ImgbuildError when an image's manifest is unreadable: then what it
    needs is unknown, and nothing may be judged reclaimable.
    """
    blobs = _blob_usage(store)
    rows = store.db.snapshot_rows()
    sizes = snapshot_sizes(store, rows)
    snapshots = {row["id"]: (row["diff_id"], sizes[row["id"]]) for row in rows}
    image_blobs = referenced_blobs(store)
    entries = [
        Entry(
            key=row["key"],
            created_by=row["created_by"],
            layer_digest=row["layer_digest"],
            size=blobs.get(row["layer_digest"], 0) if row["layer_digest"] else 0,
            created=row["created"],
            last_used=row["last_used"],
            hits=row["hits"],
            shared=row["layer_digest"] in image_blobs,
        )
        for row in store.db.cache_rows_lru()
    ]
    return StoreUsage(blobs, snapshots, store.db.layer_diff_ids(), image_blobs, image_diff_ids(store), entries)


def protect_live_builds(store: Store, usage: StoreUsage) -> None:
    """Mark in ``usage`` what the builds running now may need (see the module doc)."""
    live = store.live_builds()
    if live.fence is None:
        return
    usage.fence = live.fence
    usage.live_builds = len(live.started)
    usage.live_work_dirs = live.work_dirs
    usage.live_blobs = live_blobs(store, live)
    usage.live_snapshots = {row["id"] for row in store.db.snapshot_rows() if maybe_in_use(row, live.fence)}


def _blob_usage(store: Store) -> dict[str, int]:
    """Digest -> bytes on disk of every blob file (``cache du`` runs without locks:
    a blob an ``rmi`` removes meanwhile is not counted)."""
    blobs = {}
    for path in store.blobs_dir.iterdir():
        if not is_digest_name(path.name) or not path.is_file():
            continue
        try:
            blobs["sha256:" + path.name] = file_usage(path)
        except FileNotFoundError:
            continue
    return blobs


# --- choosing ----------------------------------------------------------------------


def plan_prune(
    usage: StoreUsage,
    *,
    all_entries: bool = False,
    keep_storage: int | None = None,
    until: float | None = None,
    now: float | None = None,
) -> PrunePlan:
    """What a prune removes: entries least recently used first, until what stays
    takes at most ``keep_storage`` bytes (None: every candidate goes). ``until``:
    only entries unused for that many seconds are candidates."""
    now = time.time() if now is None else now
    candidates = [
        entry
        for entry in usage.entries
        if (all_entries or not entry.shared)
        and (until is None or entry.last_used <= now - until)
        and (usage.fence is None or entry.last_used < usage.fence)  # a live build may use it
    ]
    # What stays only shrinks as more candidates go, so the fewest that bring
    # the store down to ``keep_storage`` are found by bisection.
    count = len(candidates)
    if keep_storage is not None:
        low, high = 0, len(candidates)
        while low < high:
            middle = (low + high) // 2
            if usage.size_of(*usage.kept(_without(usage.entries, candidates[:middle]))) <= keep_storage:
                high = middle
            else:
                low = middle + 1
        count = low
    chosen = candidates[:count]
    remaining = _without(usage.entries, chosen)
    blobs, snapshots = usage.kept(remaining)
    gone_blobs = set(usage.blobs) - blobs
    gone_snapshots = set(usage.snapshots) - snapshots
    return PrunePlan(chosen, gone_blobs, gone_snapshots, usage.size_of(gone_blobs, gone_snapshots))


def _without(entries: list[Entry], gone: list[Entry]) -> list[Entry]:
    keys = {entry.key for entry in gone}
    return [entry for entry in entries if entry.key not in keys]


# --- pruning -----------------------------------------------------------------------


def prune(
    store: Store,
    *,
    all_entries: bool = False,
    keep_storage: int | None = None,
    until: float | None = None,
    dry_run: bool = False,
    wait: float = LEASE_WAIT_SECONDS,
) -> PruneResult:
    """Remove cache entries and what only they kept; see the module doc.

    Runs under the writer lease of imgbuild.store.gc, taken exclusively: a
    pull, push or save holds it throughout, and while one runs (for longer
    than the lease wait) nothing is done and ``skipped_reason`` says so.
    Builds hold it only around a blob write or a cache lookup; while builds
    run, the prune keeps what they may need (``protect_live_builds``), so it
    never removes what a running build looked up, wrote, resolved or mounted.
    """
    with exclusive_lease(store, wait) as no_writers:
        if not no_writers:
            return PruneResult(dry_run=dry_run, skipped_reason="another imgbuild process is using the store")
        with store.lock():
            try:
                usage = measure(store)
                protect_live_builds(store, usage)
            except ImgbuildError as error:
                return PruneResult(dry_run=dry_run, skipped_reason=f"{error}; run `imgbuild fsck`")
            plan = plan_prune(usage, all_entries=all_entries, keep_storage=keep_storage, until=until)
            result = PruneResult(entries=plan.entries, before_bytes=usage.total, dry_run=dry_run)
            if usage.live_builds:
                result.notes.append(
                    f"{usage.live_builds} build(s) running: kept what they may use "
                    "(entries, blobs and snapshots used or made since the oldest started, and their base images)"
                )
            if dry_run:
                result.blobs, result.snapshots = len(plan.blobs), len(plan.snapshots)
                result.freed_bytes = plan.freed_bytes
                result.after_bytes = usage.total - plan.freed_bytes
                return result
            _apply(store, usage, plan, result)
    return result


def _apply(store: Store, usage: StoreUsage, plan: PrunePlan, result: PruneResult) -> None:
    store.db.delete_cache_entries([entry.key for entry in plan.entries])
    sizes = {sid: size for sid, (_, size) in usage.snapshots.items()}
    swept = sweep_snapshots(store, sorted(plan.snapshots), sizes, usage.live_work_dirs)
    if swept.kept_reason:
        result.notes.append(swept.kept_reason)
    # A snapshot that stayed keeps the blob it came from.
    kept_diff_ids = {usage.snapshots[sid][0] for sid in plan.snapshots if sid not in swept.removed}
    keep = {digest for digest, diff_id in usage.layer_diff_ids.items() if diff_id in kept_diff_ids}
    # Only what was measured and chosen goes: never a blob that came after the measuring.
    blobs = sweep_blobs(store, keep, measure=file_usage, only=plan.blobs - keep)
    result.blobs, result.snapshots = len(blobs.removed), len(swept.removed)
    result.freed_bytes = blobs.freed_bytes + swept.freed_bytes
    result.statcache_rows = sweep_statcache(store)
    result.after_bytes = result.before_bytes - result.freed_bytes


# --- automatic collection after a build ----------------------------------------------


def collection_target(store: Store, limits: Limits, used: int) -> int | None:
    """The size to prune the store down to, or None when it is within its limits."""
    info = os.statvfs(store.root)
    free = info.f_bavail * info.f_frsize
    target = None
    if used > limits.max_cache:
        target = limits.max_cache
    if free < limits.min_free:
        wanted = max(used - (limits.min_free - free), limits.reserve)
        target = wanted if target is None else min(target, wanted)
    if target is not None and target >= used:
        return None  # the reserve: a full disk is not ours to fix below it
    return target


def would_collect(store: Store, limits: Limits) -> bool:
    """True when the collection after a build would prune: the store passes a
    limit and is above the reserve (a disk filled by something else is not)."""
    return not within_limits(store, limits) and _target_now(store, limits) is not None


def _target_now(store: Store, limits: Limits) -> int | None:
    """``collection_target`` for the store as measured now."""
    with store.lock():
        used = _store_bytes(store)
    return collection_target(store, limits, used)


def collect_if_over(store: Store, limits: Limits) -> PruneResult | None:
    """After a build: prune least recently used entries when the store passes its
    limits (first those no image uses, then, if that is not enough, with
    ``--all``). None when within limits; skipped while other writers run."""
    if within_limits(store, limits):
        return None
    with exclusive_lease(store, SIDE_LEASE_WAIT_SECONDS) as no_writers:
        if not no_writers:
            return PruneResult(skipped_reason="another imgbuild process is using the store")
        target = _target_now(store, limits)
    if target is None:
        return None
    result = prune(store, keep_storage=target, wait=SIDE_LEASE_WAIT_SECONDS)
    if not result.skipped_reason and result.after_bytes > target:
        more = prune(store, all_entries=True, keep_storage=target, wait=SIDE_LEASE_WAIT_SECONDS)
        result.entries += more.entries
        result.blobs += more.blobs
        result.snapshots += more.snapshots
        result.freed_bytes += more.freed_bytes
        result.after_bytes = more.after_bytes or result.after_bytes
    return result


def _store_bytes(store: Store) -> int:
    blobs = sum(_blob_usage(store).values())
    return blobs + sum(snapshot_sizes(store, store.db.snapshot_rows()).values())

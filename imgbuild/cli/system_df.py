"""``imgbuild system df [-v] [--format table|json]``: what the store takes, as ``docker system df``.

    TYPE          TOTAL     ACTIVE    SIZE      RECLAIMABLE
    Images        3         2         48.2MB    1.1MB (2%)
    Build Cache   12        4         20.3MB    18.9MB

Measured as ``imgbuild cache du`` measures (allocated bytes on disk, the same
code): the Images SIZE is what images use of the store (``cache du``'s
SHARED), the Build Cache SIZE the rest, so the two add up to ``cache du``'s
TOTAL. Images RECLAIMABLE is what ``imgbuild image prune`` would free now
(blobs only dangling images use, and no cache entry), Build Cache
RECLAIMABLE what ``imgbuild cache prune`` would (``cache du``'s
RECLAIMABLE). Images TOTAL counts image IDs, ACTIVE those with a tag; Build
Cache TOTAL counts entries, ACTIVE those whose layer an image uses.

``-v`` lists the images (SIZE on disk: blobs and the snapshots of their
layers; SHARED SIZE: what other images use too; UNIQUE SIZE: the rest) and
the cache entries, as ``cache du -v`` does.
"""

from __future__ import annotations

import argparse
import json

from imgbuild.cache.prune import StoreUsage, measure
from imgbuild.cli.cache_du import disk_usage_report, print_entries, print_rows
from imgbuild.cli.image_prune import choose, reachable
from imgbuild.cli.images import created_since, short_id
from imgbuild.errors import ImgbuildError
from imgbuild.store import Store
from imgbuild.store.gc import cache_layer_blobs, unused_snapshots, used_diff_ids
from imgbuild.units import human_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="list every image and cache entry")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or JSON")


def run(args: argparse.Namespace) -> int:
    store = Store(args.root)
    usage = measure(store)
    cache = disk_usage_report(store, usage)
    images = image_report(store, usage, cache["shared_bytes"])
    if args.format == "json":
        print(json.dumps({"images": images, "build_cache": cache}, sort_keys=True, indent=2))
        return 0
    summary = [
        ["Images", str(images["images"]), str(images["active"]), human_size(images["size_bytes"]),
         f"{human_size(images['reclaimable_bytes'])} ({_percent(images['reclaimable_bytes'], images['size_bytes'])})"],
        ["Build Cache", str(cache["entries"]), str(sum(1 for e in cache["entry_list"] if e["shared"])),
         human_size(cache["total_bytes"] - cache["shared_bytes"]), human_size(cache["reclaimable_bytes"])],
    ]
    print_rows(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], summary)
    if args.verbose:
        print("\nImages space usage:\n")
        rows = [
            [row["repository"], row["tag"], short_id(row["id"]), created_since(row["created"]),
             human_size(row["size_bytes"]), human_size(row["shared_bytes"]), human_size(row["unique_bytes"])]
            for row in images["image_list"]
        ]
        print_rows(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE", "UNIQUE SIZE"], rows)
        print("\nBuild cache usage:\n")
        print_entries(cache)
    return 0


def image_report(store: Store, usage: StoreUsage, shared_bytes: int) -> dict:
    """Images' figures in bytes on disk (see the module doc); ``shared_bytes`` is
    ``cache du``'s SHARED, what images use of the store."""
    from imgbuild.archive.names import split_tag

    listing = []
    for name, descriptor in store.refs():
        repository, tag = split_tag(name) if name else ("<none>", "<none>")
        diff_ids: set[str] = set()
        try:
            image = store.load_image(descriptor)
            image_id, created = image.config_descriptor.digest, str(image.config.get("created") or "")
            diff_ids = set(image.diff_ids)
        except ImgbuildError:
            image_id, created = descriptor.digest, ""
        # What the image takes: its blobs, and the snapshots of its layers.
        parts = {("blob", d) for d in reachable(store, [descriptor]) if d in usage.blobs}
        parts |= {("snapshot", sid) for sid, (diff_id, _) in usage.snapshots.items() if diff_id in diff_ids}
        listing.append({"repository": repository, "tag": tag, "id": image_id, "created": created, "parts": parts})
    rows = []
    for entry in listing:
        others = set().union(*(other["parts"] for other in listing if other["id"] != entry["id"]))
        size = _size(usage, entry["parts"])
        shared = _size(usage, entry["parts"] & others)
        rows.append({"repository": entry["repository"], "tag": entry["tag"], "id": entry["id"],
                     "created": entry["created"], "size_bytes": size, "shared_bytes": shared,
                     "unique_bytes": size - shared})
    return {
        "images": len({row["id"] for row in rows}),
        "active": len({row["id"] for row in rows if row["repository"] != "<none>"}),
        "size_bytes": shared_bytes,
        "reclaimable_bytes": _prune_would_free(store, usage),
        "image_list": rows,
    }


def _size(usage: StoreUsage, parts: set[tuple[str, object]]) -> int:
    return sum(usage.blobs[key] if kind == "blob" else usage.snapshots[key][1] for kind, key in parts)


def _prune_would_free(store: Store, usage: StoreUsage) -> int:
    """The bytes ``image prune`` (dangling images) would free now."""
    gone = choose(store, all_images=False, until=None)
    if not gone.descriptors:
        return 0
    going = set(zip(gone.names, (d.digest for d in gone.descriptors), strict=True))
    staying = [d for name, d in store.refs() if (name, d.digest) not in going]
    used = reachable(store, staying) | cache_layer_blobs(store)
    # image prune removes the snapshots no staying image or cache entry uses, then the blobs
    freed_snapshots = set(unused_snapshots(store.db.snapshot_rows(), used_diff_ids(store, used, staying), None))
    kept_diff_ids = {diff_id for sid, (diff_id, _) in usage.snapshots.items() if sid not in freed_snapshots}
    keep = used | {digest for digest, diff_id in usage.layer_diff_ids.items() if diff_id in kept_diff_ids}
    freed = reachable(store, gone.descriptors) - keep
    return sum(usage.blobs.get(digest, 0) for digest in freed) + sum(
        usage.snapshots[sid][1] for sid in freed_snapshots if sid in usage.snapshots
    )


def _percent(part: int, whole: int) -> str:
    return f"{round(100 * part / whole) if whole else 0}%"

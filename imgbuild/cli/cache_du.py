"""``imgbuild cache du``: what the build cache takes on disk, like ``docker buildx du``.

    ENTRIES   TOTAL     SHARED    RECLAIMABLE
    12        48.2MB    4.1MB     44.1MB

TOTAL is measured on disk: every blob under oci/blobs and every snapshot
tree, images included. SHARED is what images in index.json (tagged or not)
use of it; RECLAIMABLE what ``imgbuild cache prune`` would free now.
``--verbose`` lists every entry, least recently used first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from imgbuild.cache.prune import StoreUsage, measure, plan_prune
from imgbuild.cli.images import human_duration
from imgbuild.store import Store
from imgbuild.units import human_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="list every cache entry")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or JSON")


def run(args: argparse.Namespace) -> int:
    report = disk_usage_report(Store(args.root))
    if args.format == "json":
        print(json.dumps(report, sort_keys=True, indent=2))
        return 0
    if args.verbose:
        print_entries(report)
        print()
    summary = [str(report["entries"]), human_size(report["total_bytes"]), human_size(report["shared_bytes"]),
               human_size(report["reclaimable_bytes"])]
    print_rows(["ENTRIES", "TOTAL", "SHARED", "RECLAIMABLE"], [summary])
    return 0


def print_entries(report: dict) -> None:
    """The ``--verbose`` table of cache entries (``system df -v`` shows it too)."""
    rows = [
        [e["key"].split(":")[-1][:12], e["created_by"][:50], human_size(e["size"]), _ago(e["last_used"]),
         str(e["hits"]), "yes" if e["shared"] else "no"]
        for e in report["entry_list"]
    ]
    print_rows(["KEY", "CREATED BY", "SIZE", "LAST USED", "HITS", "SHARED"], rows)


def disk_usage_report(store: Store, usage: StoreUsage | None = None) -> dict:
    """The facts both formats show; sizes in bytes on disk. ``usage``: a measurement
    already made (``system df`` measures once for images and cache)."""
    usage = usage or measure(store)
    shared_snapshots = {sid for sid, (diff_id, _) in usage.snapshots.items() if diff_id in usage.image_diff_ids}
    shared = usage.size_of(usage.image_blobs & set(usage.blobs), shared_snapshots)
    reclaimable = plan_prune(usage).freed_bytes
    return {
        "entries": len(usage.entries),
        "blobs": len(usage.blobs),
        "snapshots": len(usage.snapshots),
        "total_bytes": usage.total,
        "shared_bytes": shared,
        "reclaimable_bytes": reclaimable,
        "reclaimable_all_bytes": plan_prune(usage, all_entries=True).freed_bytes,
        "entry_list": [vars(entry) for entry in usage.entries],
    }


def print_rows(headers: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; Docker-style columns otherwise (CI logs, pipes)."""
    if not sys.stdout.isatty():
        from imgbuild.cli.images import print_table

        print_table(headers, rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _ago(moment: float) -> str:
    return human_duration(time.time() - moment) + " ago"

"""``imgbuild cache prune``: remove build-cache entries, least recently used first,
and the blobs, snapshots and stat-cache rows nothing needs any more.

As ``docker buildx prune``: ``--all`` also removes entries whose layer an
image uses (the image's own blobs always stay), ``--keep-storage SIZE``
stops once what is left takes at most SIZE, ``--filter until=DURATION``
only removes entries unused for that long. What it prints as freed is what
left the disk (measured before removal, in allocated bytes).
"""

from __future__ import annotations

import argparse
import json
import sys

from imgbuild.cache.prune import prune
from imgbuild.cli.cache_du import print_rows
from imgbuild.store import Store
from imgbuild.units import human_size, parse_size, parse_until_filter, plural


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", "--all", action="store_true", help="also remove entries images use (not the images)")
    parser.add_argument("--keep-storage", metavar="SIZE", help="keep this much cache (10GB, 512MB)")
    parser.add_argument(
        "--filter", action="append", default=[], metavar="until=DURATION", help="only entries unused for DURATION (24h)"
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or JSON")


def run(args: argparse.Namespace) -> int:
    keep = parse_size(args.keep_storage, "--keep-storage") if args.keep_storage else None
    result = prune(
        Store(args.root), all_entries=args.all, keep_storage=keep, until=parse_until_filter(args.filter), dry_run=args.dry_run
    )
    if args.format == "json":
        print(json.dumps(result.to_json(), sort_keys=True, indent=2))
    else:
        _print(result)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if result.skipped_reason:
        print(f"note: nothing pruned: {result.skipped_reason}; try again when it is done", file=sys.stderr)
    return 0



def _print(result) -> None:
    if result.entries:
        rows = [[e.key.split(":")[-1][:12], e.created_by[:60], human_size(e.size)] for e in result.entries]
        print_rows(["KEY", "CREATED BY", "SIZE"], rows)
    verb = "Would free" if result.dry_run else "Total reclaimed space"
    print(
        f"{verb}: {human_size(result.freed_bytes)} ({plural(len(result.entries), 'entry')}, "
        f"{plural(result.blobs, 'blob')}, {plural(result.snapshots, 'snapshot')})"
    )

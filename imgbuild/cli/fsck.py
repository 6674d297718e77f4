"""``imgbuild fsck [--repair]``: verify every blob and reference in the store.

Prints one line per problem and exits 1 if any remain; ``--repair`` first
removes what is safe to remove (corrupt blobs, leftover temp files, orphaned
snapshots, stale index rows). See imgbuild.store.fsck for the checks.
"""

from __future__ import annotations

import argparse

from imgbuild.store import Store
from imgbuild.store.fsck import check_store
from imgbuild.units import plural


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repair",
        action="store_true",
        help="remove corrupt blobs, leftover temp files and orphaned snapshots",
    )


def run(args: argparse.Namespace) -> int:
    report = check_store(Store(args.root), repair=args.repair)
    for line in report.repaired:
        print(f"repaired: {line}")
    for problem in report.problems:
        print(f"problem: {problem}")
    for note in report.notes:
        print(f"note: {note}")
    summary = f"checked {plural(report.blobs_checked, 'blob')} and {plural(report.refs_checked, 'image')}"
    if report.ok:
        print(f"{summary}: no problems")
        return 0
    print(f"{summary}: {plural(len(report.problems), 'problem')}")
    if any(p.repairable for p in report.problems):
        print("run `imgbuild fsck --repair` to remove what can be removed safely")
    if any(p.kind in ("missing-blob", "corrupt-blob", "size-mismatch") for p in report.problems):
        print(
            "images with missing or corrupt blobs must be pulled or built again "
            "(or removed with `imgbuild rmi`)"
        )
    return 1

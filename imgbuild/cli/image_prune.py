"""``imgbuild image prune [-a] [--filter until=DURATION] [-f]``: remove unused images.

As ``docker image prune``: without ``-a`` only dangling images go (the
``<none>`` ones, built without ``-t`` or left behind when their tag moved);
with ``-a`` every image goes, since nothing here runs containers from them
(an ``imgbuild run`` in progress keeps its image's blobs: the collection waits
for it). ``--filter until=24h`` keeps images created less than that long ago.
On a terminal it asks first; elsewhere it needs ``-f``.

Then the snapshots and blobs nothing needs any more are removed, as after
``imgbuild rmi``; layers the build cache still uses stay (``imgbuild cache
prune`` removes those). "Total reclaimed space" is what left the disk,
measured as ``imgbuild cache du`` measures (allocated bytes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, field

from imgbuild.cli.images import parse_created
from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError, UsageError
from imgbuild.image import Descriptor
from imgbuild.store import Store
from imgbuild.store.gc import child_descriptors, exclusive_lease, file_usage, sweep_unused
from imgbuild.units import human_size, parse_until_filter


@dataclass
class PruneChoice:
    """The index.json entries ``image prune`` chose, and their descriptors."""

    names: list[str | None]  # index.json entries to remove: a tag, or None for an untagged entry
    descriptors: list[Descriptor]


@dataclass
class ImagePruneResult:
    """What ``image prune`` untagged, deleted and freed, or why it did nothing."""

    untagged: list[str] = field(default_factory=list)  # "untagged: NAME" lines
    deleted: list[str] = field(default_factory=list)  # digests of the removed blobs
    freed_bytes: int = 0
    skipped_reason: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", "--all", action="store_true", help="remove every image, not only dangling ones")
    parser.add_argument(
        "--filter", action="append", default=[], metavar="until=DURATION",
        help="only images created at least DURATION ago (24h, 90m, 7d)",
    )
    parser.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or JSON")


def run(args: argparse.Namespace) -> int:
    until = parse_until_filter(args.filter)
    if not args.force and not _confirmed(args.all):
        return 0
    result = prune_images(Store(args.root), all_images=args.all, until=until)
    if args.format == "json":
        print(json.dumps(asdict(result), sort_keys=True, indent=2))
    else:
        _print(result)
    if result.skipped_reason:
        print(f"note: unreferenced blobs kept for now ({result.skipped_reason})", file=sys.stderr)
    return 0


def _print(result: ImagePruneResult) -> None:
    if result.untagged or result.deleted:
        print("Deleted Images:")
        for name in result.untagged:
            print(f"untagged: {name}")
        for digest in result.deleted:
            print(f"deleted: {digest}")
        print()
    print(f"Total reclaimed space: {human_size(result.freed_bytes)}")



def _confirmed(all_images: bool) -> bool:
    what = "all images" if all_images else "all dangling images"
    if not sys.stdin.isatty():
        raise UsageError(f"imgbuild image prune removes {what}: add -f to do so without a terminal to confirm on")
    answer = input(f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def choose(store: Store, *, all_images: bool, until: float | None, now: float | None = None) -> PruneChoice:
    """The index.json entries a prune removes (see the module doc)."""
    cutoff = None if until is None else (time.time() if now is None else now) - until
    names, descriptors = [], []
    refs = store.refs()
    tagged = {descriptor.digest for name, descriptor in refs if name is not None}
    for name, descriptor in refs:
        # An untagged entry of an image that also has a tag is not dangling.
        if not all_images and (name is not None or descriptor.digest in tagged):
            continue
        if cutoff is not None and not _created_before(store, descriptor, cutoff):
            continue
        names.append(name)
        descriptors.append(descriptor)
    return PruneChoice(names, descriptors)


def _created_before(store: Store, descriptor: Descriptor, cutoff: float) -> bool:
    try:
        created = parse_created(str(store.load_image(descriptor).config.get("created") or ""))
    except ImgbuildError:
        return False  # unreadable: fsck's business, not a prune's
    return created is not None and created.timestamp() <= cutoff


def reachable(store: Store, descriptors: list[Descriptor]) -> set[str]:
    """Every digest these descriptors reach (manifests, indexes, configs, layers);
    what cannot be read is left out (fsck reports it)."""
    seen: set[str] = set()
    pending = list(descriptors)
    while pending:
        descriptor = pending.pop()
        if descriptor.digest in seen:
            continue
        seen.add(descriptor.digest)
        try:
            pending.extend(child_descriptors(store, descriptor))
        except ImgbuildError:
            continue
    return seen


def prune_images(store: Store, *, all_images: bool, until: float | None) -> ImagePruneResult:
    result = ImagePruneResult()
    choice = choose(store, all_images=all_images, until=until)
    for name, descriptor in zip(choice.names, choice.descriptors, strict=True):
        try:
            store.untag(name or descriptor.digest)
        except ImgbuildError:
            continue  # removed meanwhile by another process
        result.untagged.append(name or descriptor.digest)
    if not choice.names:
        return result
    with exclusive_lease(store) as no_writers:
        if not no_writers:
            result.skipped_reason = "another imgbuild process is using the store"
            return result
        with store.lock():
            try:
                swept = sweep_unused(store, measure=file_usage)
            except ImgbuildError as error:
                result.skipped_reason = f"{error}; run `imgbuild fsck`"
                return result
    result.deleted, result.freed_bytes = swept.removed, swept.freed_bytes
    return result

"""``imgbuild rmi NAME...``: remove tags and the blobs only they needed.

As ``docker rmi``: a tag is untagged; an image ID or digest removes every entry
for that image, but only with ``--force`` when several tags share it. Then the
blobs that no tag, untagged image, build-cache entry or snapshot needs are
removed (``--no-prune`` keeps them). Each name is tried; the exit code is 1 if
any of them was not found.
"""

from __future__ import annotations

import argparse
import sys

from imgbuild.errors import ImageNotFound, ImgbuildError, StoreError
from imgbuild.store import Store, normalise_tag
from imgbuild.store.gc import collect_garbage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help="a tag, image ID or digest")
    parser.add_argument(
        "-f", "--force", action="store_true", help="remove an image ID even if several tags name it"
    )
    parser.add_argument(
        "--no-prune", action="store_true", help="keep the blobs that are no longer referenced"
    )


def run(args: argparse.Namespace) -> int:
    store = Store(args.root)
    failed = False
    for name in args.names:
        try:
            for line in remove_image(store, name, force=args.force):
                print(line)
        except ImgbuildError as error:
            print(f"error: {error}", file=sys.stderr)
            failed = True
    if not args.no_prune:
        result = collect_garbage(store)
        for digest in result.removed:
            print(f"Deleted: {digest}")
        if result.skipped_reason:
            print(
                f"note: unreferenced blobs kept for now ({result.skipped_reason})", file=sys.stderr
            )
    return 1 if failed else 0


def remove_image(store: Store, name: str, force: bool = False) -> list[str]:
    """Untag ``name`` (or every entry of an image ID); returns Docker-style ``Untagged:`` lines."""
    tags = {tag for tag, _ in store.refs() if tag}
    if normalise_tag(name) in tags:
        store.untag(name)
        return [f"Untagged: {normalise_tag(name)}"]
    try:
        descriptor = store.resolve(name)
    except ImageNotFound:
        raise ImageNotFound(f"no such image: {name} (see `imgbuild images`)") from None
    names = [tag for tag, d in store.refs() if d.digest == descriptor.digest and tag]
    if len(names) > 1 and not force:
        raise StoreError(
            f"unable to delete {name}: the image is tagged {', '.join(sorted(names))}; "
            "remove the tags one by one, or use --force"
        )
    try:
        store.untag(descriptor.digest)
    except ImageNotFound:  # resolved from a digest that is a blob but no entry of index.json
        raise ImageNotFound(f"no such image: {name} (see `imgbuild images`)") from None
    return [f"Untagged: {tag}" for tag in sorted(names)] or [f"Untagged: {descriptor.digest}"]

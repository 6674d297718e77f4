"""``imgbuild tag SOURCE TARGET``: give an image another name, as ``docker tag`` does."""

from __future__ import annotations

import argparse

from imgbuild.errors import UsageError
from imgbuild.registry.reference import parse_reference
from imgbuild.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="an image name, ID or digest in the store")
    parser.add_argument("target", metavar="TARGET", help="the new name, [HOST[:PORT]/]NAME[:TAG]")


def run(args: argparse.Namespace) -> int:
    store = Store(args.root)
    descriptor = store.resolve(args.source)
    store.tag(target_name(args.target), descriptor)
    return 0


def target_name(text: str) -> str:
    """The store name for a new tag: ``docker.io/library/app`` is ``app:latest``.

    Raises UsageError for an invalid name or a digest.
    """
    reference = parse_reference(text)
    if reference.digest:
        raise UsageError(f"cannot tag with a digest ({text!r}): give a tag, e.g. app:1")
    return reference.store_name

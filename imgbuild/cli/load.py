"""``imgbuild load -i FILE``: load the images of an OCI archive or docker-archive.

The format is detected; every blob is verified against its digest and every
layer against the config's diff_ids; the images get the archive's tags. Reads
standard input when no file is given (``imgbuild save app | imgbuild load``).
"""

from __future__ import annotations

import argparse
import sys

from imgbuild.archive.load import load
from imgbuild.errors import UsageError
from imgbuild.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i", "--input", metavar="FILE", help="read from FILE (default: standard input)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    store = Store(args.root)
    if args.input in (None, "-"):
        if sys.stdin.isatty():
            raise UsageError("no archive given: use -i FILE or pipe one into standard input")
        loaded = load(store, sys.stdin.buffer)
    else:
        loaded = load(store, args.input)
    if args.quiet:
        return 0
    for item in loaded:
        for name in item.names:
            print(f"Loaded image: {name}")
        if not item.names:
            print(f"Loaded image ID: {store.image_id(item.descriptor)}")
    return 0

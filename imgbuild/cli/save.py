"""``imgbuild save NAME... -o FILE [--format oci|docker]``: write images to an archive.

``oci`` (the default) writes an OCI image layout tar (``skopeo``'s and
``podman``'s ``oci-archive:``); ``docker`` writes a docker-archive for
``docker load`` / ``podman load``. See imgbuild.archive and docs/store.md.
Without ``-o`` the archive goes to standard output, unless that is a terminal.
"""

from __future__ import annotations

import argparse
import sys

from imgbuild.archive.save import FORMATS, images_to_save, save, write_archive
from imgbuild.errors import UsageError
from imgbuild.image import Platform
from imgbuild.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help="a tag, a repository (all its tags), an image ID or digest",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE (default: standard output)"
    )
    parser.add_argument("--format", choices=FORMATS, default="oci", help="oci (default) or docker")
    parser.add_argument(
        "--platform", help="for a multi-platform image: os/arch[/variant] (default: this host)"
    )


def run(args: argparse.Namespace) -> int:
    store = Store(args.root)
    platform = Platform.parse(args.platform) if args.platform else None
    if args.output and args.output != "-":
        save(store, args.names, args.output, format=args.format, platform=platform)
        return 0
    if sys.stdout.isatty():
        raise UsageError(
            "refusing to write an archive to a terminal: use -o FILE or redirect the output"
        )
    images = images_to_save(store, args.names, platform)
    write_archive(store, images, sys.stdout.buffer, args.format)
    sys.stdout.buffer.flush()
    return 0

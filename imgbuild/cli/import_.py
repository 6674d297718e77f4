"""``imgbuild import SOURCE NAME[:TAG]``: a root filesystem as a one-layer image, like ``docker import``.

SOURCE is a directory, a tar file (plain, gzip or zstd) or ``-`` for a tar on
standard input. Prints the new image's ID.
"""

from __future__ import annotations

import os
import sys

from imgbuild.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument(
        "-c", "--change", action="append", default=[], metavar="INSTRUCTION",
        help="apply a Dockerfile instruction to the config (CMD, ENTRYPOINT, ENV, EXPOSE, "
        "HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR); repeatable",
    )  # fmt: skip
    parser.add_argument("-m", "--message", help="the history comment (default: 'Imported from SOURCE')")
    parser.add_argument("--platform", help="os/arch[/variant] the config names (default: this machine's)")
    parser.add_argument(
        "--compression", default="gzip", choices=("gzip", "zstd", "uncompressed"),
        help="layer compression (default gzip)",
    )  # fmt: skip
    parser.add_argument("--compression-level", type=int, default=None, help="compression level")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    parser.add_argument("source", metavar="SOURCE", help="a root filesystem directory, a tar file, or - for standard input")
    parser.add_argument("name", metavar="NAME[:TAG]")


def run(args) -> int:
    from imgbuild.builder.importimage import ImportOptions, import_image
    from imgbuild.cli.tag import target_name
    from imgbuild.image import Platform
    from imgbuild.store import Store

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None and not epoch.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH must be a whole number of seconds, not {epoch!r}")
    if args.source == "-" and sys.stdin.isatty():
        raise UsageError("import -: pipe a tar into standard input, or give a directory or tar file")
    options = ImportOptions(
        source=args.source,
        name=target_name(args.name),  # checked before the tree is read
        changes=list(args.change),
        platform=Platform.parse(args.platform) if args.platform else None,
        message=args.message,
        compression=args.compression,
        compression_level=args.compression_level,
        source_date_epoch=int(epoch) if epoch is not None else None,
    )
    store = Store(args.root)
    image = import_image(store, options, sys.stdin.buffer)
    if not args.quiet:
        print(image.config_descriptor.digest)
    return 0

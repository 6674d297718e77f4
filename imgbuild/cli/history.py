"""``imgbuild history NAME``: the steps that made an image, newest first, as ``docker history``.

    IMAGE          CREATED        CREATED BY                                      SIZE      COMMENT
    e10671464cbb   56 years ago   CMD ["sh"]                                      0B
    <missing>      56 years ago   COPY rootfs / # buildkit                        1.04MB

Only the top row has an ID (the image's config digest), as with pulled images
in Docker. SIZE is the layer unpacked (its regular files), as Docker shows
it, 0B for a step that made no layer. ``--format`` takes ``json`` (Docker's
keys: ID, CreatedAt, CreatedSince, CreatedBy, Size, Comment, the same style
as ``images --format json``) or a Go template (``{{.CreatedBy}}``).
"""

from __future__ import annotations

import argparse

from imgbuild.cli.images import (
    LayerSizes,
    created_at,
    created_since,
    human_size,
    print_formatted,
    print_table,
    short_id,
)
from imgbuild.dataclass import dataclass
from imgbuild.gotemplate import Struct, Template
from imgbuild.image import Platform
from imgbuild.store import Store

TRUNCATE_AT = 45  # docker history's width for CREATED BY


@dataclass
class HistoryRow:
    """One row of ``imgbuild history``, as ``docker history`` prints it."""

    image_id: str  # "sha256:..." for the newest row, "<missing>" for the others
    created: str  # RFC 3339 or ""
    created_by: str
    size: int
    comment: str
    empty_layer: bool


def image_history(store: Store, name: str, platform: Platform | None = None) -> list[HistoryRow]:
    image = store.load_image(name, platform)
    layers = image.layers
    sizes = LayerSizes(store)
    rows = []
    for entry in image.config.get("history") or []:
        empty = bool(entry.get("empty_layer"))
        size = 0
        if not empty and layers:
            layer = layers.pop(0)
            size = sizes.layer_size(layer.digest, layer.media_type)
        rows.append(
            HistoryRow(
                "<missing>",
                str(entry.get("created") or ""),
                str(entry.get("created_by") or ""),
                size,
                str(entry.get("comment") or ""),
                empty,
            )
        )
    # Layers the history does not account for (images made without history) still show.
    rows.extend(
        HistoryRow("<missing>", "", "", sizes.layer_size(layer.digest, layer.media_type), "", False)
        for layer in layers
    )
    sizes.save()
    rows.reverse()
    if rows:
        rows[0].image_id = image.config_descriptor.digest
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="a tag, image ID or digest")
    parser.add_argument(
        "--no-trunc", action="store_true", help="do not truncate IDs and CREATED BY"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only show the image ID")
    parser.add_argument(
        "--format",
        default="table",
        metavar="FORMAT",
        help="table (default), json (one object per line, the keys of images --format json), "
        "or a Go template: '{{.CreatedBy}}'",
    )
    parser.add_argument(
        "-H", "--human", default="true", choices=("true", "false"),
        help="sizes and dates in human-readable form (default true); false prints bytes and RFC 3339",
    )
    parser.add_argument(
        "--platform", help="for a multi-platform image: os/arch[/variant] (default: this host)"
    )


HISTORY_HEADERS = {
    "ID": "IMAGE",
    "CreatedAt": "CREATED AT",
    "CreatedSince": "CREATED",
    "CreatedBy": "CREATED BY",
    "Size": "SIZE",
    "Comment": "COMMENT",
}


def run(args: argparse.Namespace) -> int:
    if args.format not in ("table", "json"):
        Template(args.format)  # a bad template fails before any work
    platform = Platform.parse(args.platform) if args.platform else None
    rows = image_history(Store(args.root), args.name, platform)
    if args.quiet:
        for row in rows:
            print(
                row.image_id
                if row.image_id == "<missing>"
                else short_id(row.image_id, args.no_trunc)
            )
        return 0
    if args.format != "table" or args.human == "false":
        human = args.human == "true"
        table_format = "table {{.ID}}\t{{.CreatedAt}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
        formatted = [_formatted(row, args.no_trunc, human) for row in rows]
        print_formatted(formatted, table_format if args.format == "table" else args.format, HISTORY_HEADERS)
        return 0
    table = [
        [
            row.image_id if row.image_id == "<missing>" else short_id(row.image_id, args.no_trunc),
            created_since(row.created),
            _created_by(row.created_by, args.no_trunc),
            human_size(row.size),
            row.comment,
        ]
        for row in rows
    ]
    print_table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], table)
    return 0


def _formatted(row: HistoryRow, no_trunc: bool, human: bool) -> Struct:
    """A row with Docker's keys and values (``docker history --format``)."""
    image_id = row.image_id if row.image_id == "<missing>" else short_id(row.image_id, no_trunc)
    return Struct(
        ID=image_id,
        CreatedAt=created_at(row.created) if human else (row.created or "N/A"),
        CreatedSince=created_since(row.created),
        CreatedBy=_created_by(row.created_by, no_trunc),
        Size=human_size(row.size) if human else str(row.size),
        Comment=row.comment,
    )


def _created_by(text: str, no_trunc: bool) -> str:
    text = text.replace("\t", " ")
    if no_trunc:
        return text
    text = text.replace("\n", " ")
    return text if len(text) <= TRUNCATE_AT else text[: TRUNCATE_AT - 1] + "…"

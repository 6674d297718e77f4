"""``imgbuild cache ls``: one row per build-cache entry.

    KEY            STAGE   LINE   INSTRUCTION         SIZE     CREATED         LAST USED       HITS   IN IMAGE
    3f2a9c1b07de   0       3      COPY data /data     1.2kB    2 minutes ago   2 minutes ago   1      yes

``--format json`` prints one JSON object per line with the same facts, in full.
"""

from __future__ import annotations

import argparse
import json
import sys

from imgbuild.builder.terminal import safe_chars
from imgbuild.cache.inspection import FILTERS, list_entries, matches, parse_filters
from imgbuild.cli.images import created_since, print_table
from imgbuild.store import Store
from imgbuild.units import human_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or JSON lines")
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"only entries that match; NAME is one of {', '.join(FILTERS)} (repeatable: all must match)",
    )


def run(args: argparse.Namespace) -> int:
    filters = parse_filters(args.filter)
    entries = [entry for entry in list_entries(Store(args.root)) if matches(entry, filters)]
    if args.format == "json":
        for entry in entries:
            print(json.dumps(entry.as_dict(), sort_keys=True))
        return 0
    headers = ["KEY", "STAGE", "LINE", "INSTRUCTION", "SIZE", "CREATED", "LAST USED", "HITS", "IN IMAGE"]
    rows = [
        [
            entry.short_key,
            stage_label(entry.stage_index, entry.stage_name),
            "" if entry.line is None else str(entry.line),
            shorten(entry.instruction, 60),
            human_size(entry.layer_size) if entry.layer_digest else "-",
            created_since(entry.created),
            created_since(entry.last_used),
            str(entry.hits),
            "yes" if entry.in_image else "no",
        ]
        for entry in entries
    ]
    show_table(headers, rows)
    return 0


def stage_label(index: int | None, name: str | None) -> str:
    if index is None:
        return "?"  # recorded before the store kept where steps stood
    return f"{index} ({name})" if name else str(index)


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def show_table(headers: list[str], rows: list[list[str]], title: str | None = None) -> None:
    """A rich table on a terminal; Docker's plain columns for pipes and CI logs."""
    rows = [[safe_chars(cell) for cell in row] for row in rows]
    title = safe_chars(title) if title else title
    if not sys.stdout.isatty():
        if title:
            print(title)
        print_table(headers, rows)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*headers, title=title, box=None, header_style="bold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # paths and instructions are not markup
    Console().print(table)

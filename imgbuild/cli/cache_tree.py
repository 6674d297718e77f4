"""``imgbuild cache tree [IMAGE]``: the chains of cache entries, as a tree.

Each root is where a chain starts (a base image digest, or ``scratch``);
below each entry are the entries built on top of it. With IMAGE, only the
entries behind that image's layers. ``--format json`` prints the same tree.
"""

from __future__ import annotations

import argparse
import json
import sys

from imgbuild.builder.terminal import safe_chars
from imgbuild.cache.inspection import entry_tree
from imgbuild.store import Store
from imgbuild.units import human_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", metavar="IMAGE", help="only the entries behind this image")
    parser.add_argument("--format", choices=("tree", "json"), default="tree", help="tree (default) or JSON")


def run(args: argparse.Namespace) -> int:
    roots = entry_tree(Store(args.root), args.image)
    if args.format == "json":
        print(json.dumps(roots, sort_keys=True, indent=2))
        return 0
    if sys.stdout.isatty():
        _print_rich(roots)
    else:
        _print_plain(roots)
    return 0


def _label(node: dict) -> str:
    size = human_size(node["layer_size"]) if node["layer_digest"] else "no layer"
    used = ", in an image" if node["in_image"] else ""
    return safe_chars(f"{node['short_key']}  {node['instruction']}  ({size}{used})")


def _print_plain(roots: list[dict]) -> None:
    for root in roots:
        print(root["base"])
        _print_children(root["children"], "")


def _print_children(children: list[dict], indent: str) -> None:
    for position, child in enumerate(children):
        last = position == len(children) - 1
        print(indent + ("└── " if last else "├── ") + _label(child))
        _print_children(child["children"], indent + ("    " if last else "│   "))


def _print_rich(roots: list[dict]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.tree import Tree

    console = Console()
    for root in roots:
        tree = Tree(escape(root["base"]))
        _add_rich(tree, root["children"], escape)
        console.print(tree)


def _add_rich(parent, children: list[dict], escape) -> None:
    for child in children:
        _add_rich(parent.add(escape(_label(child))), child["children"], escape)

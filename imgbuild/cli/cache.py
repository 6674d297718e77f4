"""``imgbuild cache SUBCOMMAND``: look into the build cache, explain it, bound it.

One module per subcommand (``cache_ls.py``, ...), each with
``add_arguments(parser)`` and ``run(args) -> int`` like a verb.
"""

from __future__ import annotations

import argparse
import importlib

from imgbuild.errors import UsageError

# subcommand -> (module under imgbuild.cli, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "ls": ("cache_ls", "list the build-cache entries"),
    "inspect": ("cache_inspect", "show every input of a cache key, its layer and the files it changes"),
    "tree": ("cache_tree", "show the chains of cache entries (behind an image, or all) as a tree"),
    "du": ("cache_du", "show what the build cache takes on disk"),
    "prune": ("cache_prune", "remove build cache, least recently used first"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=type(parser))
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(f"imgbuild.cli.{module_name}")
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run_subcommand=module.run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "_run_subcommand", None) is None:
        raise UsageError("imgbuild cache: give a subcommand (" + ", ".join(SUBCOMMANDS) + "); see 'imgbuild cache --help'")
    return args._run_subcommand(args)

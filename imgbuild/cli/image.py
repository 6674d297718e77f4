"""``imgbuild image SUBCOMMAND``: Docker's ``docker image`` group; for now ``prune``.

Subcommand groups (``image``, ``system``) share ``add_group`` and ``run_group``:
one module per subcommand, each with ``add_arguments(parser)`` and ``run(args)``,
as ``imgbuild cache`` has them.
"""

from __future__ import annotations

import argparse
import importlib

from imgbuild.errors import UsageError

# subcommand -> (module under imgbuild.cli, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prune": ("image_prune", "remove dangling images (all images with -a) and the blobs only they used"),
}


def add_group(parser: argparse.ArgumentParser, subcommands: dict[str, tuple[str, str]]) -> None:
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=type(parser))
    for name, (module_name, help_text) in subcommands.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(f"imgbuild.cli.{module_name}")
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run_subcommand=module.run)


def run_group(args: argparse.Namespace, group: str, subcommands: dict[str, tuple[str, str]]) -> int:
    if getattr(args, "_run_subcommand", None) is None:
        raise UsageError(
            f"imgbuild {group}: give a subcommand ({', '.join(subcommands)}); see 'imgbuild {group} --help'"
        )
    return args._run_subcommand(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_group(parser, SUBCOMMANDS)


def run(args: argparse.Namespace) -> int:
    return run_group(args, "image", SUBCOMMANDS)

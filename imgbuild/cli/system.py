"""``imgbuild system SUBCOMMAND``: Docker's ``docker system`` group; for now ``df``."""

from __future__ import annotations

import argparse

from imgbuild.cli.image import add_group, run_group

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "df": ("system_df", "show what images and the build cache take on disk, and what a prune frees"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_group(parser, SUBCOMMANDS)


def run(args: argparse.Namespace) -> int:
    return run_group(args, "system", SUBCOMMANDS)

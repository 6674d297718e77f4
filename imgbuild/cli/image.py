"""``imgbuild image SUBCOMMAND``: Docker's ``docker image`` group.

``prune`` is its own; ``ls``, ``rm``, ``inspect``, ``history``, ``tag``,
``save``, ``load``, ``pull``, ``push`` and ``import`` are the verbs of the same names
(``images``, ``rmi``, ...), for hands used to ``docker image ls``.

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
    "ls": ("images", "the same as imgbuild images"),
    "rm": ("rmi", "the same as imgbuild rmi"),
    "inspect": ("inspect", "the same as imgbuild inspect"),
    "history": ("history", "the same as imgbuild history"),
    "tag": ("tag", "the same as imgbuild tag"),
    "save": ("save", "the same as imgbuild save"),
    "load": ("load", "the same as imgbuild load"),
    "pull": ("pull", "the same as imgbuild pull"),
    "push": ("push", "the same as imgbuild push"),
    "import": ("import_", "the same as imgbuild import"),
}


def add_group(parser: argparse.ArgumentParser, subcommands: dict[str, tuple[str, str]]) -> None:
    """One subparser per subcommand; a subcommand's module is imported only when
    that subcommand is used (``image prune`` need not load the registry client)."""
    lazy = _lazy_parser_class(type(parser))
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=lazy)
    for name, (module_name, help_text) in subcommands.items():
        sub.add_parser(name, help=help_text, description=help_text, module_name=module_name)


def _lazy_parser_class(base: type[argparse.ArgumentParser]) -> type[argparse.ArgumentParser]:
    class LazyParser(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args, module_name: str = "", **kwargs):
            super().__init__(*args, **kwargs)
            self._module_name = module_name

        def _load(self) -> None:
            if self._module_name:
                module = importlib.import_module(f"imgbuild.cli.{self._module_name}")
                self._module_name = ""
                module.add_arguments(self)
                self.set_defaults(_run_subcommand=module.run)

        def parse_known_args(self, args=None, namespace=None):
            self._load()
            return super().parse_known_args(args, namespace)

        def format_help(self) -> str:
            self._load()
            return super().format_help()

    return LazyParser


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

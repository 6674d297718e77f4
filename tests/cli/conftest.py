"""Run imgbuild verbs in-process, through the same entry point users get."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

import pytest

from imgbuild.errors import ImgbuildError


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(store_root, capsys):
    """cli("images", "-q") -> CliResult, on the test's store root.

    Goes through imgbuild.cli.main when the verb is registered there; until
    then, through the verb module with the same error handling main() has.
    """

    def run(*argv: str) -> CliResult:
        from imgbuild.cli import VERBS, main

        capsys.readouterr()
        if argv[0] in VERBS:
            code = main(["--root", str(store_root), *argv])
        else:
            code = _run_module(str(store_root), argv)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def _run_module(root: str, argv: tuple[str, ...]) -> int:
    module = importlib.import_module(f"imgbuild.cli.{argv[0]}")
    parser = argparse.ArgumentParser(prog=f"imgbuild {argv[0]}", exit_on_error=False)
    module.add_arguments(parser)
    try:
        args = parser.parse_args(argv[1:])
        args.root = root
        return module.run(args)
    except argparse.ArgumentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ImgbuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code

"""``imgbuild outline``: show what a build would do, without building.

Parses and plans the Dockerfile and prints its stages (base images after
expansion, which ones the target needs and in what order), the build args each
stage reads with their values, defaults and descriptions, and each stage's steps.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from imgbuild.context.buildfiles import read_build_file, read_dockerfile_stdin
from imgbuild.dockerfile import parse, plan
from imgbuild.dockerfile.outline import render_json, render_text
from imgbuild.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument(
        "context",
        nargs="?",
        default=".",
        metavar="CONTEXT",
        help="build context directory (default: .)",
    )
    parser.add_argument(
        "-f",
        "--file",
        default=None,
        metavar="DOCKERFILE",
        help="Dockerfile to read (default: CONTEXT/Dockerfile; - reads stdin)",
    )
    parser.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="set a build arg; NAME alone takes the value from the environment",
    )
    parser.add_argument(
        "--target", default=None, metavar="STAGE", help="stage to build (default: the last one)"
    )
    parser.add_argument(
        "--platform",
        default=None,
        metavar="OS/ARCH[/VARIANT]",
        help="target platform (default: this machine)",
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default: text)"
    )


def run(args) -> int:
    text, filename = read_dockerfile(args.file, args.context)
    dockerfile = parse(text, filename)
    result = plan(
        dockerfile,
        build_args=parse_build_args(args.build_arg),
        target=args.target,
        platform=args.platform,
    )
    output = render_json(result) if args.format == "json" else render_text(result)
    _write_utf8(output)
    return 0


def _write_utf8(text: str) -> None:
    # UTF-8 whatever the locale says, so any Dockerfile text can be printed.
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    buffer.write(text.encode("utf-8"))
    buffer.flush()


def parse_build_args(values: list[str], environ=None) -> dict[str, str]:
    """``NAME=VALUE`` pairs; ``NAME`` alone takes the environment's value and is
    skipped when the environment has none (as ``docker build`` does)."""
    environ = os.environ if environ is None else environ
    result: dict[str, str] = {}
    for value in values:
        name, has_value, setting = value.partition("=")
        if name == "":
            raise UsageError(f"--build-arg {value!r}: the name is empty (use NAME=VALUE)")
        if has_value:
            result[name] = setting
        elif name in environ:
            result[name] = environ[name]
    return result


def read_dockerfile(path: str | None, context: str) -> tuple[str, str]:
    if path == "-":
        data = read_dockerfile_stdin()
        filename = "Dockerfile"
    else:
        filename = path if path is not None else os.path.join(context, "Dockerfile")
        try:
            data = read_build_file(Path(context), Path(filename), "Dockerfile")
        except OSError as error:
            raise UsageError(f"cannot read Dockerfile {filename}: {error.strerror}") from None
    # Invalid UTF-8 becomes U+FFFD rather than an error, so any file can be shown.
    return data.decode("utf-8", errors="replace"), filename

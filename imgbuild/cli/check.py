"""``imgbuild check [-f Dockerfile] [--format text|json] [CONTEXT]``: BuildKit's build checks.

The same as ``imgbuild build --check`` and ``docker build --check``: the
Dockerfile is parsed, planned and checked, nothing is built. Each warning is
``Dockerfile:LINE: Rule: message`` with the line; ``--format json`` gives
``{"warnings": [{"rule", "file", "line", "message", "description", "url"}],
"error": null}``. Exit code 0 with warnings, unless the check config says
``error=true`` (then 1, as the build would fail).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from imgbuild.errors import DockerfileError, ImgbuildError


def add_arguments(parser) -> None:
    parser.add_argument("context", nargs="?", default=".", metavar="CONTEXT", help="build context directory (default: .)")
    parser.add_argument("-f", "--file", default=None, metavar="DOCKERFILE",
                        help="Dockerfile to check (default: CONTEXT/Dockerfile; - reads stdin)")
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME[=VALUE]",
                        help="set a build arg (BUILDKIT_DOCKERFILE_CHECK=skip=...;error=true sets the checks)")
    parser.add_argument("--target", default=None, metavar="STAGE",
                        help="check what this stage needs (default: every stage)")
    parser.add_argument("--platform", default=None, metavar="OS/ARCH[/VARIANT]", help="target platform")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")


def run(args) -> int:
    from imgbuild.cli.outline import parse_build_args, read_dockerfile

    text, filename = read_dockerfile(args.file, args.context)
    dockerfile_path = None if args.file == "-" else Path(filename)
    return check_and_report(
        text,
        args.file if args.file not in (None, "-") else "Dockerfile",
        Path(args.context),
        dockerfile_path,
        build_args=parse_build_args(args.build_arg),
        target=args.target,
        platform=args.platform,
        root=args.root,
        output_format=args.format,
    )


def check_build(options, root: str) -> int:
    """``imgbuild build --check``: check what the build would build, and stop."""
    if options.dockerfile_text is not None:
        text, filename, path = options.dockerfile_text, "Dockerfile", None
    else:
        from imgbuild.builder.builder import default_dockerfile
        from imgbuild.cli.outline import read_dockerfile

        path = options.dockerfile or default_dockerfile(options.context)
        text, _ = read_dockerfile(str(path), str(options.context))
        filename = str(options.dockerfile) if options.dockerfile else path.name
    return check_and_report(
        text,
        filename,
        options.context,
        path,
        build_args=options.build_args,
        target=options.target,
        platform=options.platform,
        root=root,
        output_format="json" if options.progress == "json" else "text",
    )


def check_and_report(text, filename, context: Path, dockerfile_path, *, build_args, target, platform, root,
                     output_format: str) -> int:
    """Parse, plan and check; print the warnings; raise the plan's error or
    CheckFailed (``error=true``) after them."""
    result, failure = check_dockerfile(
        text, filename, context, dockerfile_path, build_args=build_args, target=target, platform=platform,
        base_config=_store_lookup(root, platform),
    )
    _print(result, failure, output_format)
    if failure is not None:
        raise failure
    return 0


def check_dockerfile(text, filename, context: Path, dockerfile_path, *, build_args=None, target=None,
                     platform=None, base_config=None):
    """The checks' result, and the error the Dockerfile fails with (a parse,
    plan or expansion error, or CheckFailed with ``error=true``) or None.
    After a parse error, only the instructions before it are checked."""
    from imgbuild.context.buildfiles import load_ignore_patterns
    from imgbuild.context.dockerignore import IgnoreMatcher
    from imgbuild.dockerfile import parse, plan
    from imgbuild.dockerfile.checks import check, warnings_before

    try:
        dockerfile = parse(text, filename)
    except DockerfileError as error:
        return warnings_before(text, error, build_args), error
    failure: ImgbuildError | None = None
    try:
        planned = plan(dockerfile, build_args, target, platform)
    except DockerfileError as error:  # a duplicate stage name, say: still check what can be
        planned, failure = None, error
    ignore = IgnoreMatcher(load_ignore_patterns(context, dockerfile_path))
    stages = None if not target or planned is None else planned.needed
    # A base image found in the store is the one the build would use: compare its
    # platform, as BuildKit's --check does with the images it resolves.
    result = check(dockerfile, planned, build_args=build_args, stages=stages, ignore=ignore,
                   base_config=base_config, base_platforms=base_config is not None)
    return result, failure or result.error()


def json_report(result, failure) -> dict:
    return {
        "warnings": [warning.to_json() for warning in result.warnings],
        "error": str(failure) if failure is not None else None,
    }


def _store_lookup(root: str | None, platform: str | None):
    """Base image configs from the local store only: a check never pulls."""
    if not root or not os.path.isdir(root):
        return None
    from imgbuild.builder.baseimage import local_names
    from imgbuild.image import Platform
    from imgbuild.store import Store

    store = Store(root)

    def lookup(stage) -> dict | None:
        want = Platform.parse(stage.platform or platform) if (stage.platform or platform) else Platform.host()
        for name in local_names(stage.base):
            try:
                return store.load_image(name, want).config
            except (ImgbuildError, OSError, ValueError):
                continue
        return None

    return lookup


def _print(result, failure, output_format: str) -> None:
    if output_format == "json":
        sys.stdout.write(json.dumps(json_report(result, failure), indent=2) + "\n")
        return
    for warning in result.warnings:
        sys.stdout.write(warning.format() + "\n")
    count = len(result.warnings)
    if count == 0:
        sys.stdout.write("Check complete, no warnings found.\n")
    else:
        sys.stdout.write(f"Check complete, {count} warning{'s' if count != 1 else ''} "
                         f"{'have' if count != 1 else 'has'} been found!\n")

"""Command-line entry point: one module per verb in this package.

Each verb module has ``add_arguments(parser)`` and ``run(args) -> int``.
``imgbuild ARGS`` without a known verb means ``imgbuild build ARGS``, as
``docker build`` users expect from a builder.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from imgbuild.errors import ImgbuildError, UsageError

# verb -> (module under imgbuild.cli, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "build": ("build", "build an image from a Dockerfile"),
    "outline": ("outline", "show the stages, build args and steps a build would run"),
    "run": ("run", "run an image once, attached, like docker run --rm"),
    "images": ("images", "list the images in the local store"),
    "tag": ("tag", "give an image another name"),
    "rmi": ("rmi", "remove image names and the blobs only they used"),
    "inspect": ("inspect", "show an image's manifest and config as JSON"),
    "history": ("history", "show the steps an image was built with"),
    "pull": ("pull", "pull an image from a registry"),
    "push": ("push", "push an image to a registry"),
    "save": ("save", "write images to an OCI or docker-archive tar"),
    "load": ("load", "read images from an OCI or docker-archive tar"),
    "fsck": ("fsck", "verify every blob and reference in the store"),
    "cache": ("cache", "inspect, explain and prune the build cache"),
    "pin": ("pin", "pin a Dockerfile's base images to the digests their registries serve"),
    "image": ("image", "manage images: prune (and ls, rm, inspect, ... as docker image has them)"),
    "system": ("system", "show what the store takes on disk: df"),
}


def default_root() -> str:
    if os.environ.get("IMGBUILD_ROOT"):
        return os.environ["IMGBUILD_ROOT"]
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "imgbuild")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 2) instead of exiting by itself."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def make_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI; with ``only``, just that verb's module is imported.

    Importing every verb would load what only some need (requests for pull
    and push, ...); that start-up time is most of a warm no-op rebuild.
    """
    parser = _Parser(prog="imgbuild", description="Build OCI images from Dockerfiles, no daemon.")
    parser.add_argument("--root", default=None, help="store root (default $IMGBUILD_ROOT or ~/.local/share/imgbuild)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="verb", parser_class=_Parser)
    for verb, (module_name, help_text) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        if only is None or verb == only:
            module = importlib.import_module(f"imgbuild.cli.{module_name}")
            module.add_arguments(verb_parser)
            verb_parser.set_defaults(_run=module.run)
    return parser


def _verb_of(argv: list[str]) -> str | None:
    """The verb in an argv that ``_with_default_verb`` has completed."""
    return next((word for word in argv if word in VERBS), None)


def _with_default_verb(argv: list[str]) -> list[str]:
    """Insert ``build`` unless the first non-global word is a verb."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--root":
            i += 2
            continue
        if word.startswith("--root=") or word in ("--version", "-h", "--help"):
            i += 1
            continue
        break
    if i < len(argv) and argv[i] in VERBS:
        return argv
    if i >= len(argv) and any(w in ("--version", "-h", "--help") for w in argv):
        return argv
    return argv[:i] + ["build"] + argv[i:]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = _with_default_verb(argv)
        # no verb (--version, --help): import no verb module at all
        args = make_parser(only=_verb_of(argv) or "").parse_args(argv)
        if args.version:
            from imgbuild import __version__

            print(f"imgbuild {__version__}")
            return 0
        if args.root is None:
            args.root = default_root()
        return args._run(args)
    except ImgbuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1

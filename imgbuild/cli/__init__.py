"""Command-line entry point: one module per verb in this package.

Each verb module has ``add_arguments(parser)`` and ``run(args) -> int``;
``VERBS`` lists them (a new verb is one line there). ``imgbuild FLAGS
CONTEXT`` without a verb means ``imgbuild build FLAGS CONTEXT``, as
``docker build`` users expect from a builder; a first word that is neither a
verb, a flag nor a context path is an unknown verb (exit 2). A bare
``imgbuild`` prints the help. Usage errors end with ``see 'imgbuild VERB
--help'`` and exit 2.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import signal
import sys
import threading

from imgbuild.errors import ImgbuildError, Terminated, UsageError, exit_code_of

# verb -> (module under imgbuild.cli, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "build": ("build", "build an image from a Dockerfile"),
    "outline": ("outline", "show the stages, build args and steps a build would run"),
    "check": ("check", "run BuildKit's build checks on a Dockerfile, without building"),
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
    "import": ("import_", "make a one-layer image from a root filesystem directory or tar"),
    "fsck": ("fsck", "verify every blob and reference in the store"),
    "cache": ("cache", "inspect, explain and prune the build cache"),
    "pin": ("pin", "pin a Dockerfile's base images to the digests their registries serve"),
    "image": ("image", "manage images: prune (and ls, rm, inspect, ... as docker image has them)"),
    "system": ("system", "show what the store takes on disk: df"),
    "layers": ("layers", "show what each layer of an image adds, changes and removes, and wasted space"),
    "diff": ("diff", "show the config, file and package differences between two images"),
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
    and push, ...); that start-up time is most of a warm no-op rebuild. With
    ``only`` naming a verb, the other verbs get no parser at all: only the
    top-level help lists them, and it is not shown then.
    """
    parser = _Parser(prog="imgbuild", description="Build OCI images from Dockerfiles, no daemon.")
    parser.add_argument("--root", default=None, help="store root (default $IMGBUILD_ROOT or ~/.local/share/imgbuild)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="verb", parser_class=_Parser)
    for verb, (module_name, help_text) in VERBS.items():
        if only and verb != only:
            continue
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        if only is None or verb == only:
            module = importlib.import_module(f"imgbuild.cli.{module_name}")
            module.add_arguments(verb_parser)
            verb_parser.set_defaults(_run=module.run)
    return parser


def _verb_of(argv: list[str]) -> str | None:
    """The verb in an argv that ``_with_default_verb`` has completed."""
    i = _first_word(argv)
    return argv[i] if i < len(argv) and argv[i] in VERBS else None


def _first_word(argv: list[str]) -> int:
    """The index of the first word after the global flags (``--root DIR``, ``--version``, ``-h``)."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--root":
            i += 2
        elif word.startswith("--root=") or word in ("--version", "-h", "--help"):
            i += 1
        else:
            break
    return i


def _looks_like_context(word: str) -> bool:
    """A build context given without the verb: ``.``, ``-`` (a tar on stdin), a path, a directory."""
    return word in (".", "..", "-") or "/" in word or os.path.isdir(word)


def _with_default_verb(argv: list[str]) -> list[str]:
    """Insert ``build`` before build flags or a context; refuse any other word."""
    i = _first_word(argv)
    if i >= len(argv) or argv[i] in VERBS:
        return argv
    word = argv[i]
    if word.startswith("-") or _looks_like_context(word):
        return argv[:i] + ["build"] + argv[i:]
    raise UsageError(f"{word!r} is not an imgbuild command; see 'imgbuild --help'")


def _with_help_hint(error: UsageError, verb: str | None) -> UsageError:
    """End a usage error with where to read the right usage, once."""
    message = str(error)
    if not message.endswith("--help'"):
        where = f"imgbuild {verb} --help" if verb else "imgbuild --help"
        error.args = (f"{message}; see '{where}'",)
    return error


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # `imgbuild ...` or `python -m imgbuild ...`, not a caller's
    argv = list(sys.argv[1:] if argv is None else argv)
    # Importing a verb makes many objects and no garbage: the collector would
    # only walk them again and again (a tenth of a cached build's time).
    collecting = gc.isenabled()
    gc.disable()
    verb = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        try:
            argv = _with_default_verb(argv)
            verb = _verb_of(argv)
            # no verb (--version, --help): import no verb module at all
            parser = make_parser(only=verb or "")
            args = parser.parse_args(argv)
            if args.version:
                from imgbuild import __version__

                print(f"imgbuild {__version__}")
                return 0
            if args.verb is None:  # a bare `imgbuild` (or only --root)
                parser.print_help()
                return 0
            if args.root is None:
                args.root = default_root()
            _collect_from_now_on(collecting, freeze=own_process)
            return args._run(args)
        except UsageError as error:
            raise _with_help_hint(error, verb) from None
    except ImgbuildError as error:
        if not error.reported:  # --progress json: it was the build_failed event
            print(f"error: {_for_stderr(str(error))}", file=sys.stderr)
        return exit_code_of(error)
    except KeyboardInterrupt as interrupt:  # Ctrl-C: 130; SIGTERM (Terminated): 143
        print("error: interrupted", file=sys.stderr)
        return exit_code_of(interrupt)
    except BrokenPipeError:
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if collecting:
            gc.enable()


def _collect_from_now_on(collecting: bool, *, freeze: bool) -> None:
    """Turn the collector back on for the verb's own work. In a process of its
    own, what start-up made stays out of its way for good (``gc.freeze``: never
    walked, never collected: a tenth of a cached build's time); a caller's
    objects are not frozen with them."""
    global _start_up_frozen
    if collecting:
        if freeze:
            gc.freeze()
            _start_up_frozen = True
        gc.enable()


_start_up_frozen = False  # main() froze what start-up made: this is a process of imgbuild's own


def freeze_late_imports() -> None:
    """What a verb imported after start-up (the builder, when a build is not
    taken from its record) joins what start-up made, out of the collector's
    way; in a process of its own only. Without it, every collection during the
    build and the last one at exit walk the builder's ~50 modules (2-3 ms of a
    one-file rebuild). Everything the verb made so far is frozen with them, so
    what must be closed is closed explicitly, not when collected (the store's
    index: ``cli/build.py``)."""
    if _start_up_frozen and gc.isenabled():
        gc.freeze()


def _for_stderr(message: str) -> str:
    """An error as a terminal shows it: a message can quote what came from
    outside (a RUN step's last lines, a layer's file names), whose escape
    sequences must not drive the user's terminal. A log keeps it as it is."""
    if not sys.stderr.isatty():
        return message
    from imgbuild.builder.terminal import printable

    return "\n".join(printable(line) for line in message.split("\n"))


def _terminate(signum, frame):
    """SIGTERM unwinds like Ctrl-C (mounts and containers are cleaned up), then exits 143."""
    raise Terminated

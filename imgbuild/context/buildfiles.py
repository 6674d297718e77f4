"""The files a build itself reads from the context: the Dockerfile and the ignore file.

Each is read as a regular file reached inside the context without following
a symlink out of it, and at most ``MAX_BUILD_FILE`` bytes: a FIFO would hang
the build, a symlink to ``/dev/zero`` would feed it forever.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from imgbuild import safeopen
from imgbuild.context.dockerignore import IgnoreMatcher, read_ignore_file
from imgbuild.context.source import BuildContext, MissingSource
from imgbuild.errors import ContextError, UsageError

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from typing import BinaryIO

# The most imgbuild reads of a Dockerfile or an ignore file: 16 MiB, the
# largest gRPC message BuildKit's client takes by default (containerd's
# DefaultMaxRecvMsgSize), which a Dockerfile BuildKit reads must fit in.
MAX_BUILD_FILE = 16 << 20


def read_build_file(context_dir: Path, path: Path, what: str) -> bytes:
    """The bytes of the Dockerfile or an ignore file, read safely.

    Inside the build context it is hostile like any context file: symlinks
    are followed only while they stay inside the context, and the file is
    opened without following anything (``safeopen``). Outside the context
    (``-f /elsewhere/Dockerfile``) the user named it, so its path is
    followed. Either way it must be a regular file (a FIFO would block, a
    device feed bytes forever) of at most ``MAX_BUILD_FILE`` bytes.

    FileNotFoundError if there is nothing there; UsageError (exit 2) if it
    is refused.
    """
    rel = _relative_inside(context_dir, path)
    try:
        if rel is None:
            return safeopen.read_user_file(path, MAX_BUILD_FILE)
        context = BuildContext(context_dir, IgnoreMatcher([]), label="build context")
        # stricter than COPY sources: a build file led out of the context is refused
        relpath = context.resolve(rel, f"reading the {what}", confine=False)
        fd = context.open_item(relpath)
        try:
            return safeopen.read_capped(fd, MAX_BUILD_FILE)
        finally:
            os.close(fd)
    except (MissingSource, FileNotFoundError):
        raise FileNotFoundError(2, "not found", str(path)) from None
    except safeopen.NotRegularFile as error:
        raise UsageError(
            f"the {what} {path} is {error.kind}, not a regular file: imgbuild reads only"
            " regular files (a FIFO or device could block or never end); replace it with a file"
        ) from None
    except safeopen.TooLarge:
        raise UsageError(
            f"the {what} {path} is larger than {MAX_BUILD_FILE >> 20} MiB, the most imgbuild"
            " reads (BuildKit's limit too): shorten it"
        ) from None
    except ContextError as error:
        reason = str(error).split(" failed: ", 1)[-1]
        raise UsageError(
            f"refusing to read the {what} {path}: {reason}; inside the build context it must be"
            " a regular file reached without leaving the context: replace the symlink with the"
            " file itself (a Dockerfile kept elsewhere can be given with -f PATH)"
        ) from None


def _relative_inside(context_dir: Path, path: Path) -> str | None:
    """``path`` relative to the context if it lies inside it (by name, no
    symlink resolved), else None."""
    root = os.path.abspath(context_dir)
    full = os.path.abspath(path)
    if full == root:
        return ""
    if full.startswith(root.rstrip("/") + "/"):
        return full[len(root.rstrip("/")) + 1 :]
    return None


def read_dockerfile_stdin(stream: BinaryIO | None = None) -> bytes:
    """``-f -``: the Dockerfile from standard input, at most ``MAX_BUILD_FILE`` bytes."""
    data = (stream or sys.stdin.buffer).read(MAX_BUILD_FILE + 1)
    if len(data) > MAX_BUILD_FILE:
        raise UsageError(
            f"the Dockerfile on standard input (-f -) is larger than {MAX_BUILD_FILE >> 20} MiB,"
            " the most imgbuild reads: shorten it"
        )
    return data


def default_dockerfile(context: Path) -> Path:
    """CONTEXT/Dockerfile, or CONTEXT/dockerfile if only that exists (BuildKit's fallback)."""
    path = Path(context) / "Dockerfile"
    lower = Path(context) / "dockerfile"
    if not os.path.lexists(path) and os.path.lexists(lower):
        return lower
    return path


def _candidates(context_dir: Path, dockerfile: Path | None) -> list[Path]:
    """The ignore files that may apply, the winner first: ``<Dockerfile>.dockerignore``
    next to the Dockerfile wins over ``CONTEXT/.dockerignore``."""
    candidates = []
    if dockerfile is not None:
        candidates.append(dockerfile.parent / (dockerfile.name + ".dockerignore"))
    candidates.append(Path(context_dir) / ".dockerignore")
    return candidates


def _read_ignore_file(context_dir: Path, dockerfile: Path | None) -> tuple[Path, bytes] | None:
    """The ignore file that applies and its bytes, None if there is none.

    Read like the Dockerfile (``read_build_file``): inside the context only
    as a regular file reached without leaving it, at most 16 MiB.
    """
    for path in _candidates(context_dir, dockerfile):
        try:
            return path, read_build_file(Path(context_dir), path, "ignore file")
        except FileNotFoundError:
            continue
        except OSError as error:
            raise ContextError(f"cannot read {path}: {error.strerror}") from None
    return None


def applying_ignore_file(context_dir: Path, dockerfile: Path | None) -> tuple[Path, bytes] | None:
    """The ignore file that applies (see ``_candidates``) and its bytes; None if there is neither."""
    return _read_ignore_file(context_dir, dockerfile)


def ignore_file_for(context_dir: Path, dockerfile: Path | None) -> Path | None:
    """The ignore file that applies (see ``_candidates``); None if there is neither."""
    found = _read_ignore_file(context_dir, dockerfile)
    return None if found is None else found[0]


def load_ignore_patterns(context_dir: Path, dockerfile: Path | None) -> list[str]:
    """Read the patterns of the ignore file that applies to this build ([] if none)."""
    found = _read_ignore_file(context_dir, dockerfile)
    if found is None:
        return []
    return read_ignore_file(found[1].decode("utf-8", errors="surrogateescape"))

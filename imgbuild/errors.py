"""The one exception hierarchy of imgbuild.

Every error a user can cause or meet is an ``ImgbuildError``. Each class carries
the exit code the CLI returns for it (CI users rely on these: 1 means the build
or operation failed, 2 means the input was wrong), and its message says what
went wrong and, where it can, what to do. The CLI prints ``str(error)`` and
never a traceback.
"""

from __future__ import annotations

import errno
import os

from imgbuild.dataclass import dataclass


@dataclass
class SourceLocation:
    """Where in a Dockerfile something is: file name, 1-based line, the line's text."""

    filename: str
    line: int
    text: str = ""


SNIPPET_LINES = 12  # of an instruction's lines, the error quotes at most these (a long heredoc)


def format_located(location: SourceLocation, message: str) -> str:
    """``Dockerfile:LINE: message`` and the lines of the instruction, as BuildKit prints errors.

    An instruction continued over several lines is quoted whole, each line
    with its number.
    """
    text = f"{location.filename}:{location.line}: {message}"
    lines = location.text.splitlines()
    for number, line in enumerate(lines[:SNIPPET_LINES], start=location.line):
        text += f"\n  {number:>4} | {line.rstrip()}"
    if len(lines) > SNIPPET_LINES:
        text += f"\n       | ... {_lines(len(lines) - SNIPPET_LINES)} more"
    return text


def _lines(count: int) -> str:
    return f"{count} line" if count == 1 else f"{count} lines"


class ImgbuildError(Exception):
    """Base class. Exit code 1: the operation failed."""

    exit_code = 1
    location: SourceLocation | None = None
    # Already shown as a ``build_failed`` event (--progress json): the CLI
    # does not print it again, so the JSON stream stays JSON.
    reported = False

    def located(self, location: SourceLocation) -> ImgbuildError:
        """Prefix the message with the Dockerfile line it came from, once."""
        if self.location is None:
            self.location = location
            self.args = (format_located(location, str(self)),)
        return self


class UsageError(ImgbuildError):
    """Bad command-line usage or a bad argument value. Exit code 2."""

    exit_code = 2




class DockerfileError(ImgbuildError):
    """The Dockerfile is wrong: syntax, an unknown instruction, a bad flag, ...

    Printed as ``Dockerfile:LINE: message`` followed by the offending line, as
    BuildKit does, so the user can jump straight to it. Exit code 2.
    """

    exit_code = 2

    def __init__(self, message: str, location: SourceLocation | None = None):
        self.message = message
        self.location = location
        super().__init__(self._format())

    def _format(self) -> str:
        if self.location is None:
            return self.message
        return format_located(self.location, self.message)


class ExpansionError(DockerfileError):
    """A word could not be expanded (``${x:?msg}`` unset, bad substitution, ...)."""


class PlanError(DockerfileError):
    """The stages do not form a buildable plan: unknown stage, cycle, bad target."""


class CheckFailed(DockerfileError):
    """Build checks found warnings and the check config says ``error=true``
    (``# check=error=true`` or ``--build-arg BUILDKIT_DOCKERFILE_CHECK=error=true``).

    Exit code 1: the Dockerfile is valid, but the policy it or the build asks
    for failed, as BuildKit fails such a build."""

    exit_code = 1


class ContextError(ImgbuildError):
    """The build context is unusable: a source outside it, a missing file, ..."""


class BuildError(ImgbuildError):
    """A build step failed. Exit code 1."""


class RunError(BuildError):
    """A RUN step exited non-zero; the message carries the command and its output tail."""

    def __init__(self, message: str, *, exit_status: int, output_tail: str = ""):
        self.exit_status = exit_status
        self.output_tail = output_tail
        super().__init__(message)


class NotADirectory(BuildError):
    """Something must be created below a path that is not a directory in the image."""

    def __init__(self, path: str, kind: str):
        self.path = path
        super().__init__(f"{path} is not a directory (it is {kind})")


class UntarError(BuildError):
    """ADD cannot extract a local tar archive: it is damaged, or an entry
    would land outside the destination or below something not a directory."""


class SandboxError(BuildError):
    """The sandbox could not be set up or torn down (mounts, runtime)."""


class StoreError(ImgbuildError):
    """The local store is damaged, locked, or missing something asked for."""


class DiskFull(StoreError):
    """A write failed for lack of space (ENOSPC) or of quota (EDQUOT).

    What was being written is gone again (a partial blob is removed, a step's
    work directory too); the store is as it was before.
    """


_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _FULL


FREE_SPACE_HINT = (
    "Free space on it (`imgbuild rmi` removes images you no longer need) or use a store on a "
    "bigger filesystem (--root or $IMGBUILD_ROOT)"
)


def disk_full(error: OSError, doing: str, path: os.PathLike | str, hint: str = FREE_SPACE_HINT) -> DiskFull:
    """The DiskFull for ``error``, met while ``doing`` something under ``path``."""
    return DiskFull(
        f"{os.strerror(error.errno)} while {doing}, under {path}: that filesystem is full. "
        f"Nothing of the failed write was kept. {hint}"
    )


class ImageNotFound(StoreError):
    """No image by that name in the local store."""


class DigestMismatch(StoreError):
    """Content did not hash to the digest it was announced with."""


class MountedError(StoreError):
    """A directory to remove is, or holds, a mount point; nothing was removed through it."""


class ArchiveError(ImgbuildError):
    """An image archive (OCI archive, docker-archive) is malformed or unsafe."""


class LayerError(ImgbuildError):
    """A layer tar is malformed or unsafe (escapes its target, too big, truncated)."""


class RegistryError(ImgbuildError):
    """A registry refused or failed a request. Never carries credentials."""


class AuthError(RegistryError):
    """The registry wants credentials we do not have, or rejected the ones we sent."""


class ManifestNotFound(RegistryError):
    """The registry has no such repository, tag or digest."""


class Interrupted(ImgbuildError):
    """The user stopped the build (SIGINT/SIGTERM). Exit code 130, as shells use;
    143 when SIGTERM stopped it (``exit_code_of``)."""

    exit_code = 130


class Terminated(KeyboardInterrupt):  # noqa: N818 - named as the signal's effect, like KeyboardInterrupt
    """SIGTERM, raised in the main thread: the same cleanup as Ctrl-C runs, then
    the CLI exits 143 (128 + SIGTERM), as Docker does."""


SIGTERM_EXIT = 143
SIGINT_EXIT = 130


def exit_code_of(error: BaseException) -> int:
    """The CLI's exit code for ``error``: its class's, but 143 for a build that
    SIGTERM stopped (its ``Interrupted`` was raised while handling ``Terminated``)."""
    if isinstance(error, Terminated):
        return SIGTERM_EXIT
    if isinstance(error, KeyboardInterrupt):
        return SIGINT_EXIT
    if isinstance(error, Interrupted):
        cause = error.__context__
        while cause is not None:
            if isinstance(cause, Terminated):
                return SIGTERM_EXIT
            cause = cause.__context__
    return getattr(error, "exit_code", 1)


class CommandNotFound(ImgbuildError):
    """``imgbuild run``: the command is not in the image. Exit code 127, as ``docker run``
    and shells return it."""

    exit_code = 127


class CommandNotExecutable(ImgbuildError):
    """``imgbuild run``: the command exists but cannot be executed. Exit code 126, as
    ``docker run`` and shells return it."""

    exit_code = 126

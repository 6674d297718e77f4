"""File locks that make one store safe for several imgbuild processes at once,
and the registrations of the builds running on it."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import field
from pathlib import Path

from imgbuild.dataclass import dataclass


@contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if missing) for the ``with`` block.

    flock locks belong to the open file description, so two threads of one
    process that each open the file exclude each other too; the kernel drops the
    lock when a process dies, so a killed build never leaves the store locked.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --- live builds -----------------------------------------------------------------------
#
# A build does not hold the writer lease (gc.lock) from start to end: a prune
# would then have to wait for every build, or skip. Instead it registers as a
# live build, one file in ROOT/builds/ that it flocks for its whole life, and
# takes the writer lease only around each step that must not interleave with
# a collection (a cache lookup and its touch, a blob write). The file holds
# the time the build started and the manifests it resolved (its base images):
# a collection keeps everything used, written or resolved since the oldest
# live build started (imgbuild.cache.prune, imgbuild.store.gc).

BUILDS_DIR = "builds"
BUILD_SUFFIX = ".build"
MAX_LEASE_BYTES = 1 << 20  # a build's file: its start and the digests it pinned
# A file's times come from the kernel's coarse clock (one tick, a few ms,
# behind time.time()): a collection looks this much further back than the
# oldest build's start.
FENCE_MARGIN = 1.0


class BuildLease:
    """This build's registration; ``pin`` adds the digests of manifests it uses."""

    def __init__(self, fd: int, started: float):
        self._fd = fd
        self.started = started
        self._lock = threading.Lock()

    def pin(self, digest: str) -> None:
        with self._lock:
            os.write(self._fd, f"pin {digest}\n".encode())


@contextmanager
def build_lease(root: Path, work_dir: Path) -> Iterator[BuildLease]:
    """Register a live build in ``root`` for the ``with`` block; ``work_dir``
    is its own directory in tmp/, where all it mounts is (store/owner.py).

    The file is made under a temporary name, locked, and only then renamed
    into place, so a collection never sees it unlocked while the build lives;
    the kernel drops the lock when the build dies (``kill -9`` too), and the
    next collection removes the file.
    """
    directory = root / BUILDS_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    token = os.urandom(8).hex()  # as secrets.token_hex, without importing secrets into every build
    temporary = directory / f".{token}.new"
    final = directory / f"{os.getpid()}-{token}{BUILD_SUFFIX}"
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.time()
        os.write(fd, f"started {started!r}\nworkdir {work_dir}\n".encode())
        os.rename(temporary, final)
        try:
            yield BuildLease(fd, started)
        finally:
            final.unlink(missing_ok=True)
    finally:
        temporary.unlink(missing_ok=True)
        os.close(fd)


@dataclass
class LiveBuilds:
    """What the builds running now may need (see ``build_lease``)."""

    started: list[float] = field(default_factory=list)
    pinned: set[str] = field(default_factory=set)  # manifest digests
    work_dirs: set[str] = field(default_factory=set)  # where they mount their steps

    @property
    def fence(self) -> float | None:
        """Everything used or made at or after this time may be a live build's; None: no build runs."""
        return min(self.started) - FENCE_MARGIN if self.started else None


def live_builds(root: Path) -> LiveBuilds:
    """The builds running in ``root``; files of builds that died are removed."""
    found = LiveBuilds()
    directory = root / BUILDS_DIR
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found
    for name in names:
        if name.endswith(BUILD_SUFFIX) and not name.startswith("."):
            _read_lease(directory / name, found)
    return found


def _read_lease(path: Path, found: LiveBuilds) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, OSError):
        return  # ended meanwhile, or not a file of ours (a symlink): nothing to keep for it
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            _parse_lease(os.read(fd, MAX_LEASE_BYTES), found)
            return
        if os.fstat(fd).st_nlink:  # its build died: the file is ours to remove
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _parse_lease(data: bytes, found: LiveBuilds) -> None:
    started = None
    for line in data.decode("ascii", "replace").splitlines():
        word, _, value = line.partition(" ")
        if word == "started":
            try:
                started = float(value)
            except ValueError:
                started = None
        elif word == "pin" and value.startswith("sha256:"):
            found.pinned.add(value.strip())
        elif word == "workdir" and value.startswith("/"):
            found.work_dirs.add(value)
    # A file that does not say when its build started keeps everything.
    found.started.append(started if started is not None else 0.0)

"""Work directories in ``ROOT/tmp`` that say whether the process that made them lives.

Each process that needs scratch space in a store makes one owner directory,
``tmp/owner-PID-TOKEN/``, and puts all its work directories (step upperdirs,
mounted step roots, runc bundles, blobs being written) inside it. Beside it,
``tmp/owner-PID-TOKEN.lock`` is flock'ed for the life of the process; the
kernel drops the lock when the process dies, ``kill -9`` included. Anyone who
can take that lock therefore knows the owner is gone.

No race between making and locking: the lock file is created unnamed
(O_TMPFILE), locked, and only then linked under its name, so it is never seen
unlocked while its owner lives; and the directory is made after the lock file
and removed before it, so a directory is never seen without its lock file.

``sweep_dead_owners`` cleans up after dead owners: it deletes runc containers
whose bundle lies in their directories, unmounts what is mounted there
(deepest first), and removes the directories. It touches nothing of a live
process, and nothing outside this store's tmp directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import weakref
from pathlib import Path

from imgbuild.dataclass import dataclass
from imgbuild.errors import MountedError, StoreError, disk_full, is_disk_full
from imgbuild.store.mounts import remove_tree, unmount_all_under

_OWNER_NAME = re.compile(r"owner-[0-9]+-[0-9a-f]{16}")
_LOCK_SUFFIX = ".lock"


class WorkOwner:
    """This process's owner directory in one store's tmp/, with its lock held."""

    def __init__(self, tmp_dir: Path):
        name = f"owner-{os.getpid()}-{os.urandom(8).hex()}"  # as secrets.token_hex(8)
        self.lock_path = tmp_dir / (name + _LOCK_SUFFIX)
        self.path = tmp_dir / name
        try:
            self._fd = _create_locked(tmp_dir, self.lock_path)
        except OSError as error:
            if is_disk_full(error):
                raise disk_full(error, "making this process's lock file", tmp_dir) from None
            raise StoreError(
                f"cannot make this process's lock file in {tmp_dir}: {error.strerror} "
                "(the store needs a filesystem with O_TMPFILE, such as ext4, xfs, btrfs or tmpfs)"
            ) from None
        try:
            self.path.mkdir(mode=0o700)
        except OSError as error:
            # the lock file is named already: without this it would look like a killed process's work
            os.unlink(self.lock_path)
            os.close(self._fd)
            if is_disk_full(error):
                raise disk_full(error, "making this process's work directory", tmp_dir) from None
            raise StoreError(f"cannot make this process's work directory {self.path}: {error.strerror}") from None
        # Stores are opened in-process by tests and the API too: release with
        # the object, and at interpreter exit at the latest.
        self._finalizer = weakref.finalize(self, _release, self.path, self.lock_path, self._fd)

    def release(self) -> None:
        self._finalizer()


def _create_locked(tmp_dir: Path, lock_path: Path) -> int:
    directory = os.open(tmp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=directory)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A dir_fd makes Python call linkat(2), which with AT_SYMLINK_FOLLOW
            # links the unnamed file the /proc link stands for.
            os.link(f"/proc/self/fd/{fd}", lock_path.name, dst_dir_fd=directory, follow_symlinks=True)
        except BaseException:
            os.close(fd)
            raise
    finally:
        os.close(directory)
    return fd


def _release(path: Path, lock_path: Path, fd: int) -> None:
    """At the end of a process that cleaned up after itself: the directory is empty."""
    try:
        os.rmdir(path)
        os.unlink(lock_path)
    except OSError:
        pass  # something is left in it (or it is gone): the next sweep decides
    finally:
        os.close(fd)


@dataclass
class SweepResult:
    """What cleaning up after dead builds removed, and what it could not."""

    removed: list[str]  # owner directories removed
    containers: list[str]  # runc containers deleted
    unmounted: list[str]  # mount points unmounted
    left: list[str]  # what could not be cleaned, with the reason


def dead_owners(tmp_dir: Path) -> list[Path]:
    """Owner directories (or lone lock files) in ``tmp_dir`` whose process is gone."""
    dead = []
    for lock_path in _lock_files(tmp_dir):
        fd = _try_lock(lock_path)
        if fd is not None:
            os.close(fd)
            dead.append(lock_path.with_name(lock_path.name[: -len(_LOCK_SUFFIX)]))
    return dead


def is_owner_entry(name: str) -> bool:
    """Is this tmp/ entry an owner directory or its lock file?"""
    return _OWNER_NAME.fullmatch(name.removesuffix(_LOCK_SUFFIX)) is not None


def sweep_dead_owners(tmp_dir: Path, runtime: str = "runc") -> SweepResult:
    """Clean up the work of every dead process in this store's ``tmp_dir``."""
    result = SweepResult([], [], [], [])
    for lock_path in _lock_files(tmp_dir):
        fd = _try_lock(lock_path)
        if fd is None:
            continue  # alive, or another sweeper is at it
        try:
            directory = lock_path.with_name(lock_path.name[: -len(_LOCK_SUFFIX)])
            if _clean(directory, runtime, result):
                os.unlink(lock_path)  # last: a directory never outlives its lock file
        finally:
            os.close(fd)
    return result


def _lock_files(tmp_dir: Path) -> list[Path]:
    return sorted(
        tmp_dir / name
        for name in os.listdir(tmp_dir)
        if name.endswith(_LOCK_SUFFIX) and is_owner_entry(name)
    )


def _try_lock(lock_path: Path) -> int | None:
    """The lock file's descriptor, locked, if nobody holds it; None otherwise."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # released or swept meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    # Between our open and our lock, the owner may have ended normally, or
    # another sweeper cleaned up after it: both unlink the file before they
    # let go of the lock. The lock we got is then on a file with no name, and
    # the owner is no one's business any more.
    if os.fstat(fd).st_nlink == 0:
        os.close(fd)
        return None
    return fd


def _clean(directory: Path, runtime: str, result: SweepResult) -> bool:
    """Remove a dead owner's directory and what runs or is mounted in it; True when gone."""
    if not os.path.lexists(directory):
        return True
    result.containers.extend(_delete_containers_under(directory, runtime))
    try:
        result.unmounted.extend(unmount_all_under(directory))
        remove_tree(directory)
    except (MountedError, OSError) as error:
        result.left.append(f"{directory}: {error}")
        return False
    result.removed.append(str(directory))
    return True




def _delete_containers_under(directory: Path, runtime: str) -> list[str]:
    """``runtime delete -f`` every container whose bundle lies in ``directory``."""
    import subprocess  # only after a killed build: a build's start-up does not load it

    if shutil.which(runtime) is None:
        return []
    listing = subprocess.run([runtime, "list", "--format", "json"], capture_output=True, text=True)
    if listing.returncode != 0:
        return []
    try:
        containers = json.loads(listing.stdout) or []
    except json.JSONDecodeError:
        return []
    prefix = os.path.realpath(directory) + "/"
    deleted = []
    for container in containers:
        bundle = container.get("bundle") if isinstance(container, dict) else None
        if isinstance(bundle, str) and os.path.realpath(bundle).startswith(prefix):
            subprocess.run([runtime, "delete", "--force", container["id"]], capture_output=True)
            deleted.append(container["id"])
    return deleted

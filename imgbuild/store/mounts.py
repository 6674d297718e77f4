"""Mount points, as /proc/self/mountinfo lists them, and removing trees without crossing one.

Nothing imgbuild removes may be a mount or hold one: ``rm -r`` through a live
overlay deletes files out of a running container (and out of the snapshots
under it), and through a bind mount, files of the host.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
from pathlib import Path

from imgbuild.errors import MountedError

# How the store opens a directory it walks: never through a symlink (also store/gc.py, store/atomic.py).
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount_points() -> list[str]:
    """Every mount point of this process's mount namespace, in mountinfo order."""
    with open("/proc/self/mountinfo", "rb") as file:
        lines = file.read().splitlines()
    # Field 5 is the mount point, with space, tab, newline and backslash
    # written as octal escapes (\040 ...).
    return [os.fsdecode(_unescape(line.split(b" ")[4])) for line in lines if line]


def _unescape(field: bytes) -> bytes:
    return re.sub(rb"\\([0-7]{3})", lambda match: bytes([int(match.group(1), 8)]), field)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, in the order /proc/self/mountinfo lists them."""
    base = os.path.realpath(path)
    prefix = base.rstrip("/") + "/"
    return [point for point in mount_points() if point == base or point.startswith(prefix)]


def remove_tree(path: Path) -> None:
    """Remove a directory tree imgbuild made, refusing to cross into a mount.

    Checked twice: mountinfo first (it also sees bind mounts of the same
    filesystem), then every directory's st_dev on the way down (a mount that
    appears meanwhile). Raises MountedError, leaving what it has not yet
    removed, when either finds one. The walk is fd-relative and never follows
    a symlink. Snapshots hold whiteout devices and read-only directories;
    imgbuild runs as root, so unlink and rmdir cope with both.
    """
    points = mounts_under(path)
    if points:
        raise MountedError(f"not removing {path}: {', '.join(points)} is mounted there (still in use?)")
    top = os.open(path, DIR_FLAGS)
    frames = [(top, os.listdir(top), "")]  # (fd, names left to remove, path below ``path``)
    device = os.fstat(top).st_dev
    try:
        while frames:
            fd, names, relative = frames[-1]
            if not names:
                frames.pop()
                os.close(fd)
                if frames:
                    os.rmdir(os.path.basename(relative), dir_fd=frames[-1][0])
                continue
            name = names.pop()
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode):
                os.unlink(name, dir_fd=fd)
                continue
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
            if os.fstat(child).st_dev != device:
                os.close(child)
                raise MountedError(f"not removing {path}: something is mounted on {path / relative / name}")
            frames.append((child, os.listdir(child), os.path.join(relative, name)))
    finally:
        for fd, _names, _relative in frames:
            os.close(fd)
    os.rmdir(path)


def umount2(target: Path, flags: int) -> int:
    """umount2(2); returns 0 or the errno."""
    if _libc.umount2(os.fsencode(target), flags) == 0:
        return 0
    return ctypes.get_errno()


def unmount_all_under(path: Path) -> list[str]:
    """Unmount every mount at or below ``path`` (a directory we own), deepest first.

    For cleanup after an interrupt or a crash. Busy mounts are detached lazily.
    Returns the mount points unmounted; raises MountedError if some remain.
    """
    unmounted = []
    while True:
        points = mounts_under(path)
        if not points:
            return unmounted
        # Deepest first; among equal depths, the most recently mounted first
        # (a later mount can be stacked on an earlier one at the same point).
        order = sorted(enumerate(points), key=lambda item: (item[1].count("/"), item[0]))
        progressed = False
        for _, point in reversed(order):
            error = umount2(Path(point), 0)
            if error == errno.EBUSY:
                error = umount2(Path(point), MNT_DETACH)
            if error == 0:
                unmounted.append(point)
                progressed = True
        if not progressed:
            raise MountedError(f"cannot unmount {', '.join(points)}")

"""A changeset directory (an overlay upperdir) as the layer writer walks it.

The walk is the layer's entry order: depth first, each directory's names
sorted bytewise. ``set_times_as_written`` gives the tree the mtimes its tar
records, which is what turns a step's upperdir into the snapshot its blob
would extract to. Kept apart from the writer (``write.py``) so that a step can
ready its changeset for the next step without loading the writer and its
compressors: the layer itself is written while the next step runs
(``builder/pending.py``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from imgbuild.dataclass import dataclass
from imgbuild.errors import LayerError
from imgbuild.layer.fdtree import DIR_FLAGS

_SECOND = 1_000_000_000


def changeset_is_empty(changeset: Path) -> bool:
    """True when the changeset has no entries: the step changed nothing and adds no layer."""
    with os.scandir(changeset) as entries:
        return next(entries, None) is None


def set_times_as_written(root: Path | str, source_date_epoch: int | None) -> None:
    """Give every entry below ``root`` the mtime its tar entry records: whole
    seconds, and no later than ``source_date_epoch``.

    A built layer's changeset is kept as its snapshot; with this it is the
    tree its blob extracts to, so a later step sees the same times whether
    its base was built here, pulled or loaded.
    """
    for found in walk(os.fsencode(root)):
        set_time_as_written(found, source_date_epoch)


def set_time_as_written(found: Found, source_date_epoch: int | None) -> None:
    wanted = entry_mtime(found.info, source_date_epoch)
    if found.info.st_mtime_ns != wanted:
        os.utime(found.name, ns=(wanted, wanted), dir_fd=found.dir_fd, follow_symlinks=False)


def entry_mtime(info: os.stat_result, source_date_epoch: int | None) -> int:
    """The mtime a tar entry records for a file: whole seconds, clamped to SOURCE_DATE_EPOCH."""
    seconds = info.st_mtime_ns // _SECOND
    if source_date_epoch is not None:
        seconds = min(seconds, source_date_epoch)
    return seconds * _SECOND


@dataclass(slots=True)  # not frozen: one per entry, and a frozen init costs twice as much
class Found:
    """One entry of the walk, reachable as ``name`` in the open directory ``dir_fd``."""

    relative: bytes
    info: os.stat_result
    dir_fd: int
    name: bytes


def walk(root: bytes) -> Iterator[Found]:
    """Everything under root, depth first, names sorted bytewise.

    Every directory is opened with O_NOFOLLOW from its parent's descriptor
    and every entry is looked at relative to that, so a symlink (in the
    tree, or swapped in while we read it) is never followed. An entry's
    ``dir_fd`` stays open until the caller asks for the next one.
    """
    root_fd = os.open(root, DIR_FLAGS)
    stack = [(root_fd, b"", iter(_sorted_names(root_fd)))]
    try:
        while stack:
            dir_fd, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(stack.pop()[0])
                continue
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            yield Found(prefix + name, info, dir_fd, name)
            if stat.S_ISDIR(info.st_mode):
                child = _open_walked_directory(root, prefix + name, dir_fd, info)
                stack.append((child, prefix + name + b"/", iter(_sorted_names(child))))
    finally:
        for dir_fd, _, _ in stack:
            os.close(dir_fd)


def _open_walked_directory(root: bytes, relative: bytes, dir_fd: int, info: os.stat_result) -> int:
    """The directory just walked, refused if something else is there now."""
    name = relative.rsplit(b"/", 1)[-1]
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        fd = None
    if fd is not None:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) == (info.st_dev, info.st_ino):
            return fd
        os.close(fd)
    raise LayerError(
        f"{os.fsdecode(os.path.join(root, relative))} changed while it was written into the "
        "layer (it is no longer the directory that was read); is something still changing it?"
    )


def _sorted_names(dir_fd: int) -> list[bytes]:
    return sorted(os.fsencode(name) for name in os.listdir(dir_fd))

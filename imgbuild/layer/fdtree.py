"""Writing a tree below a directory descriptor, never following a symlink.

Shared by the two tar extractors of the package: ``extract`` (a layer onto a
snapshot) and ``untar`` (ADD's archive into a destination). Every call takes
a directory descriptor and one name in it; the directory was opened with
O_NOFOLLOW from its own parent's descriptor, so whatever the tar or the disk
holds, the kernel never resolves a symlink on our behalf.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from imgbuild.layer.tarformat import TarEntry
    from imgbuild.layer.tarread import TarReader

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1 << 20
MAX_SYMLINKS = 40  # what Linux follows in one path walk (ELOOP beyond)


def lstat_at(dir_fd: int, name: str | bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove_entry(dir_fd: int, name: str | bytes, existing: os.stat_result | None) -> None:
    """Make room for a new entry: in a tar, a later entry replaces an earlier one."""
    if existing is None:
        return
    if stat.S_ISDIR(existing.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)  # fd-based, does not follow symlinks
    else:
        os.unlink(name, dir_fd=dir_fd)


def proc_path(dir_fd: int, name: str | bytes) -> bytes:
    """A path for the calls that have no dir_fd form (xattrs): the parent is
    reached through its descriptor; the caller must not follow the last component."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, os.fsencode(name))


def chmod_nofollow(dir_fd: int, name: str | bytes, mode: int) -> None:
    """chmod the entry ``name`` itself; a symlink is left as it is.

    Python's chmod cannot combine dir_fd with not following, so the entry is
    opened as an O_PATH descriptor without following, checked, and changed
    through that descriptor: what was checked is what changes.
    """
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if not stat.S_ISLNK(os.fstat(fd).st_mode):
            os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def open_directory(dir_fd: int, parts: list[str] | list[bytes]) -> int:
    """A descriptor of dir_fd/parts[0]/..., each component opened with O_NOFOLLOW
    (a symlink on the way is ELOOP, a non-directory ENOTDIR)."""
    fd = os.open(".", DIR_FLAGS, dir_fd=dir_fd)
    try:
        for part in parts:
            next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def resolve_beneath(root_fd: int, path: str) -> list[str]:
    """The components of ``path`` resolved as in a chroot to ``root_fd``.

    A symlink on the way is read and its target walked from here (an absolute
    one from ``root_fd``); ``..`` never climbs above ``root_fd``. Components
    that do not exist are kept as they are, for the caller to create. The
    kernel never follows a link: each directory is opened with O_NOFOLLOW
    from its parent's descriptor, and the walk reads links itself.
    """
    pending = _components(path)
    resolved: list[str] = []
    # The descriptor of each resolved component; None where it is not an
    # existing directory (nothing below it exists then).
    fds: list[int | None] = []
    followed = 0
    try:
        while pending:
            part = pending.pop(0)
            if part == "..":
                if resolved:
                    resolved.pop()
                    _close(fds.pop())
                continue
            parent = fds[-1] if fds else root_fd
            info = lstat_at(parent, part) if parent is not None else None
            if info is not None and stat.S_ISLNK(info.st_mode):
                followed += 1
                if followed > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                target = os.readlink(part, dir_fd=parent)
                if target.startswith("/"):
                    resolved.clear()
                    while fds:
                        _close(fds.pop())
                pending = _components(target) + pending
                continue
            resolved.append(part)
            is_dir = info is not None and stat.S_ISDIR(info.st_mode)
            fds.append(os.open(part, DIR_FLAGS, dir_fd=parent) if is_dir else None)
    finally:
        while fds:
            _close(fds.pop())
    return resolved


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def write_entry_data(fd: int, entry: TarEntry, reader: TarReader) -> None:
    """The current entry's data into the new file ``fd``.

    A sparse file's data regions go to their offsets and the rest stays a
    hole, which costs no disk (so a huge sparse size is no bomb).
    """
    if entry.sparse is None:
        while chunk := reader.read_data(CHUNK):
            _write_all(fd, chunk)
        return
    for offset, length in entry.sparse:
        position = offset
        while position < offset + length:
            chunk = reader.read_data(min(CHUNK, offset + length - position))
            view = memoryview(chunk)
            while view:
                written = os.pwrite(fd, view, position)
                view, position = view[written:], position + written
    os.ftruncate(fd, entry.size)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]

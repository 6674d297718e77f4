"""``--output type=local``: the image's root filesystem written into a directory of the host.

The image is hostile and the destination is the user's own directory on the
host, written as root. So nothing already in the destination is followed or
written through: the destination directory is opened once, and every entry
is made below that descriptor with ``*at`` calls and ``O_NOFOLLOW``. A
destination entry in the way is unlinked and made anew (a directory where
the image has a directory is merged), so a symlink or hardlink left there by
an earlier export, or by anyone, never leads out of the destination.

What would give privileges on the host is not made by default (see
docs/security.md, "Exports"): device nodes are skipped, setuid/setgid bits
of files are cleared and ``security.capability`` is dropped. ``unsafe=True``
(``unsafe-special-files=true``) makes them as the image has them.

Ownership, modes, times, user.* and security.* xattrs and hardlinks within
the image are kept, as ``cp -a`` kept them. File data is copied in the
kernel (copy_file_range, else sendfile), holes stay holes.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import shutil
import stat
from collections.abc import Iterator
from dataclasses import field
from pathlib import Path

from imgbuild import safeopen
from imgbuild.dataclass import dataclass
from imgbuild.errors import BuildError

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SETID = stat.S_ISUID | stat.S_ISGID
_CAPABILITY = "security.capability"
# As for layers (imgbuild/layer/extract.py): overlay internals never travel.
_COPIED_XATTR_PREFIXES = ("user.", "security.")
_SKIPPED_XATTR_PREFIXES = ("user.overlay.",)
_XATTR_UNSUPPORTED = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP)
_COPY_FALLBACK = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF)
_CHUNK = 1 << 30
_SHOWN = 200


@dataclass
class Withheld:
    """Entries of one kind the export did not make as the image has them."""

    count: int = 0
    first: str = ""

    def add(self, path: str) -> None:
        self.count += 1
        self.first = self.first or path


@dataclass
class ExportReport:
    """What an export wrote, and what it held back from the host."""

    entries: int = 0
    devices: Withheld = field(default_factory=Withheld)  # device nodes not made
    setid: Withheld = field(default_factory=Withheld)  # files whose setuid/setgid bits were cleared
    capabilities: Withheld = field(default_factory=Withheld)  # files whose security.capability was dropped

    def warnings(self, destination: str) -> list[str]:
        """One line per kind of thing held back, saying how to ask for it."""
        hint = "add unsafe-special-files=true to the --output to make them (see docs/security.md)"
        lines = []
        if self.devices.count:
            lines.append(
                f"type=local: {self.devices.count} device node(s) of the image not created in "
                f"{destination} (first: {self.devices.first}); {hint}"
            )
        if self.setid.count or self.capabilities.count:
            lines.append(
                f"type=local: setuid/setgid bits cleared on {self.setid.count} file(s) and file "
                f"capabilities dropped from {self.capabilities.count} in {destination} (first: "
                f"{self.setid.first or self.capabilities.first}); {hint}"
            )
        return lines


def export_tree(source: Path, destination: Path, *, unsafe: bool = False) -> ExportReport:
    """Copy the tree ``source`` (an overlay view of the image) into ``destination``.

    ``destination`` is the user's path and is resolved as named (a symlink
    the user gave as the destination itself is followed); it is created if
    missing, and then takes the mode and owner of the view's root (0755,
    root, as a container's ``/``). Below it, nothing is followed.
    """
    _raise_open_files_limit()
    created = not destination.exists()
    destination.mkdir(parents=True, exist_ok=True)
    target_fd = os.open(destination, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        source_fd = os.open(source, _DIR_FLAGS)
        try:
            exporter = _Exporter(target_fd, str(destination), unsafe)
            exporter.copy_tree(source_fd, root_metadata=created)
        finally:
            os.close(source_fd)
    finally:
        os.close(target_fd)
    return exporter.report


@dataclass
class _Directory:
    """A directory being copied: both descriptors, and the listing still to do."""

    source: int
    target: int
    parts: tuple[str, ...]
    info: os.stat_result
    names: Iterator[os.DirEntry]
    set_times: bool = True

    def close(self) -> None:
        self.names.close()
        os.close(self.source)
        os.close(self.target)


@dataclass
class _Linked:
    """The first copy of a multiply-linked inode, for the next names of it to link to."""

    parts: tuple[str, ...]
    made: tuple[int, int] | None  # (st_dev, st_ino) in the destination; None: not made


class _Exporter:
    def __init__(self, root_fd: int, destination: str, unsafe: bool):
        self._root_fd = root_fd
        self._destination = destination
        self._unsafe = unsafe
        self._links: dict[tuple[int, int], _Linked] = {}
        self.report = ExportReport()

    def copy_tree(self, source_fd: int, *, root_metadata: bool) -> None:
        """Depth-first with an explicit stack: image trees can be deeper than Python's recursion."""
        info = os.fstat(source_fd)
        names = os.scandir(source_fd)
        root = _Directory(os.dup(source_fd), os.dup(self._root_fd), (), info, names, root_metadata)
        stack = [root]
        try:
            if root_metadata:
                self._guard((), self._set_directory_metadata, root.source, root.target, info, ())
            while stack:
                current = stack[-1]
                entry = self._guard(current.parts, next, current.names, None)
                if entry is None:
                    stack.pop()
                    try:
                        self._guard(current.parts, self._finish_directory, current)
                    finally:
                        current.close()
                    continue
                child = self._guard(current.parts + (entry.name,), self._copy_entry, current, entry.name)
                if child is not None:
                    stack.append(child)
        finally:
            for directory in stack:
                directory.close()

    def _guard(self, parts: tuple[str, ...], action, *args):
        """Run one step; an OSError becomes an error naming the image path."""
        try:
            return action(*args)
        except OSError as error:
            raise BuildError(
                f"cannot write the local output to {self._destination}: {_show(parts)}: "
                f"{error.strerror or error}"
            ) from None

    # -- one entry -----------------------------------------------------------

    def _copy_entry(self, parent: _Directory, name: str) -> _Directory | None:
        info = os.stat(name, dir_fd=parent.source, follow_symlinks=False)
        parts = parent.parts + (name,)
        self.report.entries += 1
        kind = stat.S_IFMT(info.st_mode)
        if kind == stat.S_IFDIR:
            return self._directory(parent, name, parts, info)
        if info.st_nlink > 1 and self._link_again(parent, name, parts, info):
            return None
        made = None
        if kind == stat.S_IFREG:
            made = self._regular_file(parent, name, parts, info)
        elif kind == stat.S_IFLNK:
            made = self._symlink(parent, name, info)
        elif kind == stat.S_IFIFO or (kind in (stat.S_IFCHR, stat.S_IFBLK) and self._unsafe):
            made = self._node(parent, name, parts, info)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            self.report.devices.add(_show(parts))
        else:  # a socket: a layer cannot carry one, cp -a made it, nothing uses it
            log.debug("type=local: skipping socket %s", _show(parts))
        if info.st_nlink > 1:
            self._links[(info.st_dev, info.st_ino)] = _Linked(parts, made)
        return None

    def _directory(
        self, parent: _Directory, name: str, parts: tuple[str, ...], info: os.stat_result
    ) -> _Directory:
        if not _make_room(parent.target, name, keep_directory=True):
            os.mkdir(name, 0o700, dir_fd=parent.target)
        # O_NOFOLLOW: whatever is there now must be the directory we made or kept.
        target = os.open(name, _DIR_FLAGS, dir_fd=parent.target)
        try:
            source = os.open(name, _DIR_FLAGS, dir_fd=parent.source)
        except BaseException:
            os.close(target)
            raise
        try:
            self._set_directory_metadata(source, target, info, parts)
            return _Directory(source, target, parts, info, os.scandir(source))
        except BaseException:
            os.close(source)
            os.close(target)
            raise

    def _set_directory_metadata(self, source: int, target: int, info: os.stat_result, parts) -> None:
        os.fchown(target, info.st_uid, info.st_gid)
        # A setgid directory only passes its group on: it stays.
        os.fchmod(target, stat.S_IMODE(info.st_mode))
        self._copy_xattrs(source, target, parts)

    def _finish_directory(self, directory: _Directory) -> None:
        # Making entries changes a directory's mtime: its times are set last.
        if directory.set_times:
            info = directory.info
            os.utime(directory.target, ns=(info.st_atime_ns, info.st_mtime_ns))

    def _regular_file(
        self, parent: _Directory, name: str, parts: tuple[str, ...], info: os.stat_result
    ) -> tuple[int, int]:
        source = os.open(name, _READ_FLAGS, dir_fd=parent.source)
        try:
            if not stat.S_ISREG(os.fstat(source).st_mode):
                raise OSError(errno.EAGAIN, "changed while it was being exported")
            _make_room(parent.target, name, keep_directory=False)
            target = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=parent.target)
            try:
                _copy_data(source, target, info.st_size)
                # chown clears setuid/setgid and security.capability: it goes first.
                os.fchown(target, info.st_uid, info.st_gid)
                os.fchmod(target, self._file_mode(info, parts))
                self._copy_xattrs(source, target, parts)
                os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
                made = os.fstat(target)
            finally:
                os.close(target)
        finally:
            os.close(source)
        return (made.st_dev, made.st_ino)

    def _symlink(self, parent: _Directory, name: str, info: os.stat_result) -> tuple[int, int]:
        # The target is text for whoever reads the export; it is never resolved here.
        link_target = os.readlink(name, dir_fd=parent.source)
        _make_room(parent.target, name, keep_directory=False)
        os.symlink(link_target, name, dir_fd=parent.target)
        os.chown(name, info.st_uid, info.st_gid, dir_fd=parent.target, follow_symlinks=False)
        times = (info.st_atime_ns, info.st_mtime_ns)
        os.utime(name, ns=times, dir_fd=parent.target, follow_symlinks=False)
        made = os.stat(name, dir_fd=parent.target, follow_symlinks=False)
        return (made.st_dev, made.st_ino)

    def _node(
        self, parent: _Directory, name: str, parts: tuple[str, ...], info: os.stat_result
    ) -> tuple[int, int]:
        """A FIFO, or (asked for) a device node; its metadata set through an O_PATH descriptor."""
        _make_room(parent.target, name, keep_directory=False)
        kind = stat.S_IFMT(info.st_mode)
        os.mknod(name, kind | 0o600, info.st_rdev, dir_fd=parent.target)
        # O_PATH never opens the node itself (no device driver is reached), and
        # the /proc/self/fd path below leads to exactly this inode.
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.target)
        try:
            made = os.fstat(fd)
            if stat.S_IFMT(made.st_mode) != kind:
                raise OSError(errno.EAGAIN, "replaced while it was being exported")
            path = f"/proc/self/fd/{fd}"
            os.chown(path, info.st_uid, info.st_gid)
            os.chmod(path, self._file_mode(info, parts))
            os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
        finally:
            os.close(fd)
        return (made.st_dev, made.st_ino)

    def _link_again(
        self, parent: _Directory, name: str, parts: tuple[str, ...], info: os.stat_result
    ) -> bool:
        """A further name of an inode already exported: a hardlink to the first copy."""
        first = self._links.get((info.st_dev, info.st_ino))
        if first is None:
            return False
        if first.made is None:
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                self.report.devices.add(_show(parts))
            return True
        same_directory = first.parts[:-1] == parent.parts
        directory = parent.target if same_directory else self._open_target(first.parts[:-1])
        try:
            existing = _lstat(directory, first.parts[-1])
            if existing is None or (existing.st_dev, existing.st_ino) != first.made:
                raise OSError(errno.EAGAIN, f"its first name {_show(first.parts)} changed while exporting")
            _make_room(parent.target, name, keep_directory=False)
            # linkat without AT_SYMLINK_FOLLOW: a symlink is linked, never followed.
            os.link(
                first.parts[-1], name, src_dir_fd=directory, dst_dir_fd=parent.target, follow_symlinks=False
            )
        finally:
            if not same_directory:
                os.close(directory)
        return True

    def _open_target(self, parts: tuple[str, ...]) -> int:
        """A directory of the destination, opened below its root following no symlink."""
        return safeopen.open_beneath(self._root_fd, "/".join(parts), _DIR_FLAGS)

    # -- what would give privileges on the host ------------------------------

    def _file_mode(self, info: os.stat_result, parts: tuple[str, ...]) -> int:
        mode = stat.S_IMODE(info.st_mode)
        if mode & _SETID and not self._unsafe:
            self.report.setid.add(_show(parts))
            mode &= ~_SETID
        return mode

    def _copy_xattrs(self, source: int, target: int, parts: tuple[str, ...]) -> None:
        for key in os.listxattr(source):
            if key == _CAPABILITY and not self._unsafe:
                self.report.capabilities.add(_show(parts))
                continue
            if not key.startswith(_COPIED_XATTR_PREFIXES) or key.startswith(_SKIPPED_XATTR_PREFIXES):
                continue
            value = os.getxattr(source, key)
            try:
                os.setxattr(target, key, value)
            except OSError as error:
                # As cp -a: a file system that cannot hold it (security.selinux
                # without SELinux) loses the attribute, not the export.
                if error.errno not in _XATTR_UNSUPPORTED:
                    raise
                log.debug("type=local: %s: cannot set xattr %s: %s", _show(parts), key, error)


def _make_room(dir_fd: int, name: str, *, keep_directory: bool) -> bool:
    """Clear the way for a new entry; True when a directory is there and stays (merged).

    What is there is removed, never opened: a symlink is unlinked, not
    followed, and a directory in the way goes with rmtree, which works on
    descriptors and does not follow symlinks either.
    """
    existing = _lstat(dir_fd, name)
    if existing is None:
        return False
    if stat.S_ISDIR(existing.st_mode):
        if keep_directory:
            return True
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)
    return False


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _copy_data(source: int, target: int, size: int) -> None:
    """The data regions of ``source``, each at its offset; holes stay holes."""
    position = 0
    while position < size:
        try:
            start = os.lseek(source, position, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:  # only a hole is left
                break
            if error.errno != errno.EINVAL:
                raise
            start = position  # no SEEK_DATA here: all of it is data
            end = size
        else:
            end = min(os.lseek(source, start, os.SEEK_HOLE), size)
        _copy_range(source, target, start, end - start)
        position = end
    os.ftruncate(target, size)


def _copy_range(source: int, target: int, offset: int, length: int) -> None:
    copied = 0
    while copied < length:
        count = min(_CHUNK, length - copied)
        done = _copy_chunk(source, target, offset + copied, count)
        if done == 0:
            raise OSError(errno.EIO, "the file shrank while it was being exported")
        copied += done


def _copy_chunk(source: int, target: int, offset: int, count: int) -> int:
    try:
        return os.copy_file_range(source, target, count, offset, offset)
    except OSError as error:
        if error.errno not in _COPY_FALLBACK:
            raise
    os.lseek(target, offset, os.SEEK_SET)
    try:
        return os.sendfile(target, source, offset, count)
    except OSError as error:
        if error.errno not in _COPY_FALLBACK:
            raise
    data = os.pread(source, min(count, 1 << 20), offset)
    view = memoryview(data)
    while view:
        view = view[os.pwrite(target, view, offset + len(data) - len(view)) :]
    return len(data)


def _raise_open_files_limit() -> None:
    """The walk holds three descriptors per directory level: as Go programs
    (Docker, BuildKit) do at start, let the soft limit be the hard one, so a
    deep tree of thousands of levels exports."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _show(parts: tuple[str, ...]) -> str:
    """An image path for a message: undecodable bytes escaped, at most _SHOWN characters."""
    text = "/" + "/".join(os.fsencode(part).decode("utf-8", "backslashreplace") for part in parts)
    if len(text) <= _SHOWN:
        return text
    return f"{text[: _SHOWN // 2]}...{text[-_SHOWN // 2 :]}"

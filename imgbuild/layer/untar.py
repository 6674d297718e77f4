"""Docker's archive.Untar as ADD applies it: a local tar archive into a directory.

ADD (not COPY) unpacks a local tar archive, plain or compressed with gzip,
bzip2, xz or zstd and recognised by content, never by name, the way Docker's
``archive.Untar`` does when run in a chroot of the destination (BuildKit's
file-op backend calls it so):

- entry names are cleaned from the destination as from a root: an absolute
  name, or one that climbs out with ``..``, lands inside (``../x`` is ``x``),
  as Docker's breakout check finds nothing to refuse in a chroot of the
  destination (BuildKit's chrootarchive);
- symlinks are stored as written, whatever they point at (in the image they
  resolve inside its root); a hardlink's target is taken from the
  destination as from a root (``../x`` is ``x``); a hardlink to the
  destination itself is refused;
- an entry's parent directories are found as in a chroot of the
  destination: a symlink there (planted by an earlier entry, say) is
  followed, but never above the destination; missing ones are created
  0755, owned by ``chown`` or root (``createImpliedDirectories``);
- an existing entry is replaced, unless both are directories (merged);
- owners from the archive unless ``chown`` is given; modes with
  setuid/setgid/sticky; mtimes; directory times last; xattrs best effort;
  a hardlink's header sets the shared inode's owner and mode, not its times.

Everything happens relative to a descriptor of the destination. Each
directory is opened with O_NOFOLLOW from its parent's descriptor; where the
chroot rule follows a symlink, the walk reads the link and goes on from the
destination's descriptor itself, so the kernel never follows one. FIFOs and
devices are created with mknod, never opened. The tar is read by the
package's own ``TarReader``, the one layers are read with.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from pathlib import Path
from typing import BinaryIO

from imgbuild.errors import LayerError, UntarError
from imgbuild.gopath import go_clean, go_dir
from imgbuild.layer.decompress import open_archive_stream, read_up_to
from imgbuild.layer.fdtree import (
    DIR_FLAGS,
    NEW_FILE_FLAGS,
    chmod_nofollow,
    lstat_at,
    open_directory,
    proc_path,
    remove_entry,
    resolve_beneath,
    write_entry_data,
)
from imgbuild.layer.tarformat import (
    BLOCK_DEVICE,
    BLOCK_SIZE,
    CHAR_DEVICE,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    TarEntry,
)
from imgbuild.layer.tarread import TarReader, is_tar_header

IMPLIED_DIR_MODE = 0o755
_NODE_KINDS = {CHAR_DEVICE: stat.S_IFCHR, BLOCK_DEVICE: stat.S_IFBLK, FIFO: stat.S_IFIFO}


def archive_compression(raw: BinaryIO) -> str | None:
    """If ``raw`` (read from its start) is a tar archive ADD extracts, its
    compression ("none", "gzip", "bzip2", "xz", "zstd"); else None.

    Like BuildKit's isArchivePath: the (decompressed) start is a valid tar
    header. An empty archive does not count.
    """
    try:
        kind, stream = open_archive_stream(raw)
        block = read_up_to(stream, BLOCK_SIZE)
    except (OSError, LayerError):
        return None
    return kind if is_tar_header(block) else None


def untar(raw: BinaryIO, dest: Path, *, chown: tuple[int, int] | None, source: str) -> None:
    """Extract the archive ``raw`` into the existing directory ``dest``.

    ``source`` names the archive in messages. Raises UntarError for a damaged
    archive or an entry that would leave ``dest``; OSError as the file system
    reports it.
    """
    dest_fd = os.open(dest, DIR_FLAGS)
    try:
        _, stream = open_archive_stream(raw)
        _Untar(dest_fd, chown, source).run(TarReader(stream.read))
    except LayerError as error:
        # The reader and decompressors are the layer ones; their messages
        # start with "layer ", which this archive is not.
        detail = str(error).removeprefix("layer ")
        raise UntarError(f"{source} is a damaged archive: {detail}") from None
    finally:
        os.close(dest_fd)


class _Untar:
    def __init__(self, dest_fd: int, chown: tuple[int, int] | None, source: str):
        self.dest_fd = dest_fd
        self.chown = chown
        self.source = source
        # Each directory entry's resolved path and mtime, set once all is in.
        self.directories: list[tuple[list[str], int]] = []

    def breakout(self, what: str) -> UntarError:
        return UntarError(f"{self.source}: {what} is outside of the destination")

    def run(self, reader: TarReader) -> None:
        while (entry := reader.next_entry()) is not None:
            self.extract(entry, reader)
        # Directory times last, or creating their children would change them.
        for parts, mtime_ns in self.directories:
            self.set_directory_time(parts, mtime_ns)

    def extract(self, entry: TarEntry, reader: TarReader) -> None:
        name = os.fsdecode(entry.name)
        if entry.type == DIRECTORY:
            name = name.rstrip("/")
        rel = _entry_path(name)
        if rel is None:
            raise self.breakout(repr(name))
        if rel == ".":
            return  # the destination itself: Docker leaves it alone
        parent_rel, leaf = go_dir(rel), posixpath.basename(rel)
        parent_parts = resolve_beneath(self.dest_fd, parent_rel)
        parent_fd = self.make_parents(parent_parts, name)
        try:
            self.place(entry, reader, name, parent_rel, parent_fd, leaf)
            if entry.type == DIRECTORY:
                self.directories.append((parent_parts + [leaf], entry.mtime_ns))
        finally:
            os.close(parent_fd)

    def make_parents(self, parts: list[str], name: str) -> int:
        """Open (creating what is missing) the resolved parent directory of an entry."""
        fd = os.open(".", DIR_FLAGS, dir_fd=self.dest_fd)
        try:
            for depth, part in enumerate(parts):
                try:
                    next_fd = self.open_or_create(fd, part)
                except OSError as error:
                    if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    # its path is relative to the destination, not to the image's root
                    raise UntarError(
                        f"{self.source}: cannot extract {name}: "
                        f"{'/'.join(parts[: depth + 1])} below the destination is not a directory"
                    ) from None
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_or_create(self, dir_fd: int, part: str) -> int:
        try:
            return os.open(part, DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        os.mkdir(part, IMPLIED_DIR_MODE, dir_fd=dir_fd)
        fd = os.open(part, DIR_FLAGS, dir_fd=dir_fd)
        try:
            os.fchmod(fd, IMPLIED_DIR_MODE)  # not subject to the umask
            owner = self.chown or (0, 0)
            if os.fstat(fd)[4:6] != owner:
                os.fchown(fd, *owner)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def place(
        self,
        entry: TarEntry,
        reader: TarReader,
        name: str,
        parent_rel: str,
        parent_fd: int,
        leaf: str,
    ) -> None:
        linkname = os.fsdecode(entry.linkname)
        linked = self.check_link(entry, name, parent_rel, linkname)
        existing = lstat_at(parent_fd, leaf)
        is_dir = entry.type == DIRECTORY
        if existing is not None and not (stat.S_ISDIR(existing.st_mode) and is_dir):
            # Docker replaces whatever is there, unless both are directories (merge).
            remove_entry(parent_fd, leaf, existing)
            existing = None
        if is_dir:
            if existing is None:
                os.mkdir(leaf, 0o700, dir_fd=parent_fd)
            self.finish_opened(os.open(leaf, DIR_FLAGS, dir_fd=parent_fd), entry)
        elif entry.type == REGULAR:
            fd = os.open(leaf, NEW_FILE_FLAGS, 0o600, dir_fd=parent_fd)
            try:
                write_entry_data(fd, entry, reader)
            except BaseException:
                os.close(fd)
                raise
            self.finish_opened(fd, entry)
        else:
            if entry.type == SYMLINK:
                os.symlink(linkname, leaf, dir_fd=parent_fd)
            elif entry.type == HARDLINK:
                self.hardlink(linked, parent_fd, leaf)
            else:
                device = os.makedev(entry.devmajor, entry.devminor)
                os.mknod(leaf, _NODE_KINDS[entry.type] | 0o600, device, dir_fd=parent_fd)
            self.finish_named(parent_fd, leaf, entry)

    def check_link(self, entry: TarEntry, name: str, parent_rel: str, linkname: str) -> str:
        """Docker's breakout check of a link's target; for a hardlink, the
        target's path relative to the destination."""
        if entry.type == SYMLINK and _join_inside(parent_rel, linkname) is None:
            raise self.breakout(f"symlink {name} -> {linkname}")
        if entry.type != HARDLINK:
            return ""
        linked = _join_inside(".", linkname)
        if linked is None or linked == ".":
            raise self.breakout(f"hardlink {name} -> {linkname}")
        return linked

    def hardlink(self, linked: str, parent_fd: int, leaf: str) -> None:
        source_fd = open_directory(self.dest_fd, resolve_beneath(self.dest_fd, go_dir(linked)))
        try:
            # linkat without AT_SYMLINK_FOLLOW: a symlink is linked, not followed.
            os.link(
                posixpath.basename(linked),
                leaf,
                src_dir_fd=source_fd,
                dst_dir_fd=parent_fd,
                follow_symlinks=False,
            )
        finally:
            os.close(source_fd)

    def owner(self, entry: TarEntry) -> tuple[int, int]:
        return self.chown or (entry.uid, entry.gid)

    def finish_opened(self, fd: int, entry: TarEntry) -> None:
        """Owner, xattrs, mode and (files) time of a file or directory we hold open; closes ``fd``."""
        try:
            os.fchown(fd, *self.owner(entry))  # first: it clears setuid/setgid
            for key, value in entry.xattrs.items():
                _set_xattr(fd, key, value)
            os.fchmod(fd, entry.mode)
            if entry.type != DIRECTORY:
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def finish_named(self, parent_fd: int, leaf: str, entry: TarEntry) -> None:
        """The same for a symlink, node or hardlink, which are not opened.

        As Docker's createTarFile: a hardlink's header also sets the shared
        inode's owner and mode (tar writers repeat the target's), not its times.
        """
        uid, gid = self.owner(entry)
        os.chown(leaf, uid, gid, dir_fd=parent_fd, follow_symlinks=False)
        for key, value in entry.xattrs.items():
            _set_xattr(proc_path(parent_fd, leaf), key, value)
        chmod_nofollow(parent_fd, leaf, entry.mode)
        if entry.type != HARDLINK:
            times = (entry.mtime_ns, entry.mtime_ns)
            os.utime(leaf, ns=times, dir_fd=parent_fd, follow_symlinks=False)

    def set_directory_time(self, parts: list[str], mtime_ns: int) -> None:
        try:
            parent_fd = open_directory(self.dest_fd, parts[:-1])
        except OSError as error:
            # A later entry replaced a directory on the way (with a file, or a
            # symlink that must not be followed): that entry wins.
            if error.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
                return
            raise
        try:
            os.utime(parts[-1], ns=(mtime_ns, mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
        finally:
            os.close(parent_fd)


def _set_xattr(target: int | bytes, key: str, value: bytes) -> None:
    try:
        if isinstance(target, int):
            os.setxattr(target, key, value)
        else:
            os.setxattr(target, key, value, follow_symlinks=False)
    except OSError:
        pass  # BestEffortXattrs, as BuildKit asks of archive.Untar


def _entry_path(name: str) -> str | None:
    """An archive entry's path relative to the destination, cleaned from it as
    from a root (``/x``, ``/../x`` and ``../x`` are all ``x``)."""
    return go_clean("/" + name)[1:] or "."


def _join_inside(base: str, link: str) -> str | None:
    """``filepath.Join(base, link)`` in a chroot of the destination: relative
    to it, never above it (an absolute ``link`` is below ``base``, as Docker joins)."""
    return go_clean(f"/{base}/{link}")[1:] or "."

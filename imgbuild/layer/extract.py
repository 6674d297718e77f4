"""Apply a layer tar onto a snapshot directory that overlayfs will use as a lowerdir.

Layer tars come from registries, so they are hostile until proven otherwise.
Safety holds by construction, not by checking path strings: every file-system
operation is relative to a directory file descriptor that was opened component
by component from the target with O_NOFOLLOW, so no symlink, whether it was in
the tar or already on disk, is ever followed. On top of that, names that climb
above the root with ``..``, hardlinks that leave the layer, too many entries or
bytes, and truncated or corrupt streams are refused with ``LayerError``; what
Go's archive/tar and containerd accept is accepted (docs/store.md lists the
rules). After a refusal the target is half-written; the caller discards it.

OCI whiteouts become overlay whiteouts so that stacked snapshots show the right
tree: ``.wh.NAME`` becomes a character device 0/0 named NAME, and
``.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on its directory. As the OCI
spec says, a whiteout only hides what lower layers have; an entry of the same
layer at the same path stays (and, if it is a directory, becomes opaque).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

from imgbuild.dataclass import dataclass
from imgbuild.errors import LayerError, disk_full, is_disk_full
from imgbuild.layer.decompress import Readable, open_tar_stream
from imgbuild.layer.fdtree import (
    CHUNK,
    DIR_FLAGS,
    NEW_FILE_FLAGS,
    lstat_at,
    proc_path,
    remove_entry,
    write_entry_data,
)
from imgbuild.layer.tarformat import (
    BLOCK_DEVICE,
    CHAR_DEVICE,
    DIRECTORY,
    FIFO,
    HARDLINK,
    OPAQUE_WHITEOUT,
    REGULAR,
    SYMLINK,
    WHITEOUT_META_PREFIX,
    WHITEOUT_PREFIX,
    TarEntry,
    show_name,
)
from imgbuild.layer.tarread import TarReader

log = logging.getLogger(__name__)

_PATH_MAX = 4096
_OVERLAY_OPAQUE = "trusted.overlay.opaque"
# A layer may set these xattr namespaces. trusted.* (overlayfs internals such as
# trusted.overlay.redirect) and user.overlay.* must never come from a download;
# system.* (ACLs) is not supported.
_ALLOWED_XATTR_PREFIXES = ("user.", "security.")
_FORBIDDEN_XATTR_PREFIXES = ("user.overlay.",)


@dataclass
class ApplyStats:
    """What applying a layer did.

    ``bytes`` is the size of the uncompressed tar stream and ``diff_id`` its
    sha256, to be checked against the image config's ``rootfs.diff_ids``.
    """

    entries: int
    bytes: int
    diff_id: str


def apply_layer(
    blob: BinaryIO,
    target: Path,
    *,
    media_type: str | None = None,
    max_entries: int = 1_000_000,
    max_bytes: int | None = None,
) -> ApplyStats:
    """Extract the layer ``blob`` (gzip, zstd or plain tar) into the directory ``target``.

    ``media_type`` is an optional hint: it must be a known OCI or Docker layer
    type, but the compression is taken from the blob's magic bytes. ``max_entries``
    and ``max_bytes`` (uncompressed tar bytes) bound what a hostile layer can
    make us do. Raises ``LayerError`` for anything unsafe or malformed.
    """
    source = _CountingSource(open_tar_stream(blob, media_type), max_bytes)
    reader = TarReader(source.read)
    root_fd = os.open(target, DIR_FLAGS)
    applier = _Applier(root_fd)
    try:
        entries = 0
        while (entry := reader.next_entry()) is not None:
            entries += 1
            if entries > max_entries:
                raise LayerError(
                    f"layer has more than {max_entries} entries; refusing it as a tar bomb"
                )
            applier.apply(entry, reader)
        source.drain()
        applier.set_directory_times()
    finally:
        applier.close()
        os.close(root_fd)
    return ApplyStats(entries=entries, bytes=source.total, diff_id=f"sha256:{source.hexdigest()}")


class _CountingSource:
    """The uncompressed tar stream, read in big chunks, hashed and counted."""

    def __init__(self, stream: Readable, max_bytes: int | None):
        self._stream = stream
        self._max_bytes = max_bytes
        self._sha256 = hashlib.sha256()
        self._buffer = b""
        self._position = 0
        self.total = 0

    def read(self, size: int) -> bytes:
        if self._position == len(self._buffer):
            self._buffer, self._position = self._fill(), 0
        chunk = self._buffer[self._position : self._position + size]
        self._position += len(chunk)
        return chunk

    def drain(self) -> None:
        """Read (and hash) the rest: the diff_id covers the padding after the tar's end."""
        self._buffer, self._position = b"", 0
        while self._fill():
            pass

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()

    def _fill(self) -> bytes:
        chunk = self._stream.read(CHUNK)
        self._sha256.update(chunk)
        self.total += len(chunk)
        if self._max_bytes is not None and self.total > self._max_bytes:
            raise LayerError(
                f"layer is bigger than {self._max_bytes} bytes uncompressed; refusing it"
            )
        return chunk


class _Applier:
    """Creates entries under the directory ``root_fd``, never following a symlink."""

    def __init__(self, root_fd: int):
        self._root_fd = root_fd
        self._directory_times: list[tuple[list[bytes], int]] = []
        # The parent directory of the last entry, kept open: layers list a
        # directory's entries together, and walking to it again for each one
        # cost most of an extraction's syscalls. It stays right: only an entry
        # whose parent is a proper ancestor of it can remove or replace it,
        # and that entry moves this cache away first.
        self._parent: tuple[tuple[bytes, ...], int] | None = None

    def close(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    def apply(self, entry: TarEntry, reader: TarReader) -> None:
        try:
            self._apply(entry, reader)
        except (OSError, ValueError, OverflowError) as error:
            if is_disk_full(error):
                where = os.readlink(f"/proc/self/fd/{self._root_fd}")
                raise disk_full(error, f"extracting layer entry {show_name(entry.name)}", where) from None
            raise LayerError(
                f"cannot apply layer entry {show_name(entry.name)}: {error}"
            ) from error

    def set_directory_times(self) -> None:
        # Creating entries inside a directory changes its mtime, so directory
        # times are set once everything is in place.
        for parts, mtime_ns in self._directory_times:
            try:
                fd = self._open_directory(parts, create=False, entry_name=b"")
            except (OSError, LayerError):
                continue  # replaced by a later entry of the layer
            try:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)

    def _apply(self, entry: TarEntry, reader: TarReader) -> None:
        parts = _split_name(entry.name, entry.name, "name")
        if not parts:
            # The root entry ("/", "./"): containerd skips it, and the snapshot
            # directory is ours, so its mode and owner stay ours.
            return
        name = parts[-1]
        parent_fd = self._parent_directory(parts[:-1], entry.name)
        if name == OPAQUE_WHITEOUT:
            os.setxattr(parent_fd, _OVERLAY_OPAQUE, b"y")
        elif name.startswith(WHITEOUT_META_PREFIX):
            log.debug("skipping AUFS metadata entry %s", show_name(entry.name))
        elif name.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent_fd, name[len(WHITEOUT_PREFIX) :], entry)
        elif entry.type == DIRECTORY:
            self._directory(parent_fd, name, entry, parts)
        elif entry.type == REGULAR:
            self._regular_file(parent_fd, name, entry, reader)
        elif entry.type == HARDLINK:
            self._hardlink(parent_fd, name, entry)
        else:
            self._special_file(parent_fd, name, entry)

    def _parent_directory(self, parts: list[bytes], entry_name: bytes) -> int:
        """The (cached) descriptor of the directory an entry goes in, created if missing."""
        key = tuple(parts)
        if self._parent is not None and self._parent[0] == key:
            return self._parent[1]
        fd = self._open_directory(parts, create=True, entry_name=entry_name)
        self.close()
        self._parent = (key, fd)
        return fd

    # -- entry kinds ---------------------------------------------------------

    def _whiteout(self, parent_fd: int, hidden: bytes, entry: TarEntry) -> None:
        if hidden in (b"", b".", b".."):
            raise LayerError(f"layer entry {show_name(entry.name)}: invalid whiteout name")
        existing = lstat_at(parent_fd, hidden)
        if existing is None:
            os.mknod(hidden, stat.S_IFCHR, 0, dir_fd=parent_fd)
            os.chown(hidden, entry.uid, entry.gid, dir_fd=parent_fd, follow_symlinks=False)
            # Invisible through overlayfs, but kept so the snapshot written back
            # as a layer gives the same bytes.
            times = (entry.mtime_ns, entry.mtime_ns)
            os.utime(hidden, ns=times, dir_fd=parent_fd, follow_symlinks=False)
        elif stat.S_ISDIR(existing.st_mode):
            # This layer has its own directory there: it hides the lower one's content.
            _set_opaque(parent_fd, hidden)
        # Any other entry of this layer already hides whatever lower layers have.

    def _directory(self, parent_fd: int, name: bytes, entry: TarEntry, parts: list[bytes]) -> None:
        existing = lstat_at(parent_fd, name)
        replaces_whiteout = existing is not None and _is_whiteout(existing)
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            remove_entry(parent_fd, name, existing)
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        try:
            if replaces_whiteout:
                os.setxattr(fd, _OVERLAY_OPAQUE, b"y")
            os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, entry.mode)
            _set_xattrs(fd, entry)
        finally:
            os.close(fd)
        self._directory_times.append((parts, entry.mtime_ns))

    def _regular_file(
        self, parent_fd: int, name: bytes, entry: TarEntry, reader: TarReader
    ) -> None:
        fd = _replacing(parent_fd, name, lambda: os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=parent_fd))
        try:
            write_entry_data(fd, entry, reader)
            # chown clears setuid/setgid and security.capability, so it goes first.
            os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, entry.mode)
            _set_xattrs(fd, entry)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def _hardlink(self, parent_fd: int, name: bytes, entry: TarEntry) -> None:
        target_parts = _split_name(entry.linkname, entry.name, "hardlink target")
        if not target_parts:
            raise LayerError(f"layer entry {show_name(entry.name)}: hardlink to the layer root")
        try:
            source_fd = self._open_directory(target_parts[:-1], create=False, entry_name=entry.name)
        except FileNotFoundError:
            raise _missing_link_target(entry) from None
        try:
            source = lstat_at(source_fd, target_parts[-1])
            if source is None:
                raise _missing_link_target(entry)
            if stat.S_ISDIR(source.st_mode):
                raise LayerError(f"layer entry {show_name(entry.name)}: hardlink to a directory")
            remove_entry(parent_fd, name, lstat_at(parent_fd, name))
            # linkat without AT_SYMLINK_FOLLOW: a symlink target is linked, not followed.
            os.link(
                target_parts[-1],
                name,
                src_dir_fd=source_fd,
                dst_dir_fd=parent_fd,
                follow_symlinks=False,
            )
        finally:
            os.close(source_fd)

    def _special_file(self, parent_fd: int, name: bytes, entry: TarEntry) -> None:
        if entry.type == SYMLINK:
            if not entry.linkname:
                raise LayerError(f"layer entry {show_name(entry.name)}: symlink with no target")
            # The target is stored as is: we never follow it, overlayfs resolves
            # it inside the container's root.
            _replacing(parent_fd, name, lambda: os.symlink(entry.linkname, name, dir_fd=parent_fd))
        elif entry.type in (CHAR_DEVICE, BLOCK_DEVICE, FIFO):
            kind = {CHAR_DEVICE: stat.S_IFCHR, BLOCK_DEVICE: stat.S_IFBLK, FIFO: stat.S_IFIFO}
            device = os.makedev(entry.devmajor, entry.devminor)
            _replacing(parent_fd, name, lambda: os.mknod(name, kind[entry.type] | 0o600, device, dir_fd=parent_fd))
        os.chown(name, entry.uid, entry.gid, dir_fd=parent_fd, follow_symlinks=False)
        if entry.type != SYMLINK:
            # We just created this node ourselves, so it is not a symlink.
            os.chmod(name, entry.mode, dir_fd=parent_fd)
        _set_xattrs(proc_path(parent_fd, name), entry)
        os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)

    # -- directories ---------------------------------------------------------

    def _open_directory(self, parts: list[bytes], *, create: bool, entry_name: bytes) -> int:
        """A descriptor for the directory root/parts[0]/..., walked with O_NOFOLLOW.

        Missing directories are created (mode 0755, root-owned, as Docker does)
        when ``create``; a symlink or non-directory on the way is refused.
        """
        fd = os.open(".", DIR_FLAGS, dir_fd=self._root_fd)
        try:
            for depth, part in enumerate(parts):
                try:
                    next_fd = _open_component(fd, part, create)
                except OSError as error:
                    if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    on_the_way = show_name(b"/".join(parts[: depth + 1]))
                    existing = lstat_at(fd, part)
                    is_link = existing is not None and stat.S_ISLNK(existing.st_mode)
                    problem = "a symlink" if is_link else "not a directory"
                    raise LayerError(
                        f"layer entry {show_name(entry_name)}: {on_the_way} on its path is "
                        f"{problem}; refusing to go through it"
                    ) from None
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd


def _open_component(dir_fd: int, part: bytes, create: bool) -> int:
    """Open (or create, then open) one directory below dir_fd; O_NOFOLLOW refuses symlinks."""
    if part in (b"", b".", b"..") or b"/" in part:  # _split_name guarantees this; belt and braces
        raise LayerError(f"invalid path component {show_name(part)} in a layer entry")
    try:
        return os.open(part, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    os.mkdir(part, 0o755, dir_fd=dir_fd)
    return os.open(part, DIR_FLAGS, dir_fd=dir_fd)


def _replacing(parent_fd: int, name: bytes, create):
    """``create()`` (which makes ``name`` and fails if it exists), after removing what
    is there if anything is: in a tar a later entry replaces an earlier one.
    Trying first saves an lstat per entry, most of which are new."""
    try:
        return create()
    except FileExistsError:
        pass
    remove_entry(parent_fd, name, lstat_at(parent_fd, name))
    return create()


def _split_name(raw: bytes, entry_name: bytes, what: str) -> list[bytes]:
    """The path components of a tar name, cleaned and taken relative to the root.

    As containerd does (Go's filepath.Clean, then relative to the root):
    ``/x``, ``./x`` and ``x`` are one entry, ``a/../b`` is ``b``, and ``/`` or
    ``./`` is the root itself (no components). A name that climbs above the
    root is refused rather than clamped: no honest producer writes one.
    """
    problem = None
    if b"\x00" in raw:
        problem = "contains a NUL byte"
    elif len(raw) > _PATH_MAX:
        problem = f"is longer than {_PATH_MAX} bytes"
    parts: list[bytes] = []
    for part in raw.split(b"/"):
        if part in (b"", b"."):
            continue
        if part != b"..":
            parts.append(part)
        elif parts:
            parts.pop()
        elif problem is None:
            problem = "has a '..' component that climbs above the root"
    if problem is not None:
        subject = "" if raw == entry_name else f" ({what} {show_name(raw)})"
        raise LayerError(
            f"unsafe layer entry {show_name(entry_name)}{subject}: the {what} {problem}; "
            "refusing the layer"
        )
    return parts


def _missing_link_target(entry: TarEntry) -> LayerError:
    return LayerError(
        f"layer entry {show_name(entry.name)}: hardlink target {show_name(entry.linkname)} "
        "is not an earlier entry of the layer"
    )



def _is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0



def _set_opaque(parent_fd: int, name: bytes) -> None:
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        os.setxattr(fd, _OVERLAY_OPAQUE, b"y")
    finally:
        os.close(fd)


def _set_xattrs(target: int | bytes, entry: TarEntry) -> None:
    for key, value in sorted(entry.xattrs.items()):
        if not key.startswith(_ALLOWED_XATTR_PREFIXES) or key.startswith(_FORBIDDEN_XATTR_PREFIXES):
            log.warning("layer entry %s: ignoring xattr %s", show_name(entry.name), key)
            continue
        try:
            if isinstance(target, int):
                os.setxattr(target, key, value)
            else:
                os.setxattr(target, key, value, follow_symlinks=False)
        except OSError as error:
            # Like Docker: a file system that cannot hold the attribute (or
            # user.* on a symlink) loses it with a warning, not the whole layer.
            if error.errno not in (errno.EPERM, errno.ENOTSUP):
                raise
            log.warning(
                "layer entry %s: cannot set xattr %s: %s", show_name(entry.name), key, error
            )


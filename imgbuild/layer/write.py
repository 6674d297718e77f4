"""Write a changeset directory (an overlay upperdir) as a reproducible layer blob.

One streaming pass: the tar bytes are hashed (the diff_id) on their way into the
compressor, whose output is hashed (the blob digest) on its way to ``out`` (by
``out`` itself when it is a store blob, which hashes what it writes). File
contents are copied in chunks, so memory does not grow with the layer.

The tar is reproducible: entries in a depth-first walk with each directory's
names sorted bytewise (parents before children, as Go's filepath.Walk, which
Docker and BuildKit use), numeric uid/gid with empty user/group names, no
atime/ctime, whole-second mtimes (clamped to SOURCE_DATE_EPOCH when given), and
compressors with fixed parameters (gzip without name and with mtime 0).

gzip without an explicit level is ISA-L's level 1 (the ``isal`` package),
compressed by worker threads while the tar is written, pigz-style: the tar is
cut into 1 MiB blocks at fixed offsets, each block deflated with the 32 KiB
before it as its dictionary. The output is one standard gzip member, and its
bytes depend only on the tar bytes (not on the thread count or on how the tar
was written), so the same tree still gives the same blob. It is 5-10 times
faster than zlib's level 6 here at about the same size. A tar shorter than
a block is deflated in the caller's thread (``_OneBlockGzip``), into the
bytes the threaded writer gives for it. An explicit
``--compression-level`` 0-9 keeps zlib's single-threaded gzip at that level.

Overlay whiteouts (character device 0/0) become ``.wh.NAME`` entries and opaque
directories (``trusted.overlay.opaque=y``) get a ``.wh..wh..opq`` entry, as
Docker's overlay2 driver writes them. Reading ``trusted.*`` xattrs needs root
(CAP_SYS_ADMIN); without it opaque directories cannot be seen.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import stat
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from isal import isal_zlib

from imgbuild.dataclass import dataclass
from imgbuild.errors import LayerError
from imgbuild.layer.changeset import Found, entry_mtime, set_time_as_written, walk

# check_compression, MEDIA_TYPES and DEFAULT_LEVELS are named here too, for callers of this module
from imgbuild.layer.compression import DEFAULT_LEVELS, MEDIA_TYPES, check_compression  # noqa: F401
from imgbuild.layer.compression import check_options as _check_options
from imgbuild.layer.fdtree import proc_path
from imgbuild.layer.tarformat import (
    BLOCK_DEVICE,
    BLOCK_SIZE,
    CHAR_DEVICE,
    DIRECTORY,
    END_OF_ARCHIVE,
    FIFO,
    HARDLINK,
    OPAQUE_WHITEOUT,
    OVERLAY_OPAQUE_XATTRS,
    REGULAR,
    SYMLINK,
    WHITEOUT_PREFIX,
    TarEntry,
)
from imgbuild.layer.tarwrite import encode_header

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from queue import SimpleQueue
    from typing import BinaryIO

# gzip without a level: ISA-L level 1 (of 0-3), in blocks of this size,
# which is also the size of the pieces the tar is handed on in.
_FAST_GZIP_LEVEL = 1
_BLOCK = 1 << 20
# ISA-L's threaded writer's gzip header at level 1: no name, mtime 0, XFL 0xff, OS 0
_ISAL_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\xff\x00"
_BUFFERS = 4  # the tar's buffers: one being filled, the others waiting for their hash
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_ZEROS = bytes(BLOCK_SIZE)
# xattrs a layer carries: user.* (minus overlayfs' own user.overlay.*) and
# security.* (security.capability above all). trusted.* holds overlay internals.
_KEPT_XATTR_PREFIXES = ("user.", "security.")
_DROPPED_XATTR_PREFIXES = ("user.overlay.",)


@dataclass(frozen=True)
class LayerDigests:
    """The identity of a written layer, as an image config and manifest need it."""

    diff_id: str  # "sha256:..." of the uncompressed tar
    digest: str  # "sha256:..." of the blob written to ``out``
    size: int  # bytes of the blob
    uncompressed_size: int
    media_type: str


def write_layer(
    changeset: Path,
    out: BinaryIO,
    *,
    compression: str = "gzip",
    level: int | None = None,
    source_date_epoch: int | None = None,
    set_times: bool = False,
) -> LayerDigests:
    """Write the changeset directory as a layer blob to ``out`` and return its digests.

    ``compression`` is "gzip", "zstd" or "uncompressed"; without ``level``, gzip
    is ISA-L's fast level in threads (module docstring) and zstd is level 3.
    With ``source_date_epoch``, mtimes newer than it are clamped to it. With
    ``set_times``, each entry is also given the mtime its tar entry records,
    as ``changeset.set_times_as_written`` does, in the same walk.
    """
    level = _check_options(compression, level, source_date_epoch)
    root = os.fsencode(changeset)
    if os.path.islink(root) or not os.path.isdir(root):
        raise LayerError(f"changeset {changeset} is not a directory")
    with _tar_stream(compression, level, out) as (tar, blob):
        for entry, source in _layer_entries(root, source_date_epoch, set_times):
            tar.write(encode_header(entry))
            if source is not None:
                _copy_contents(root, source, entry.size, tar)
        tar.write(END_OF_ARCHIVE)
    return _digests(tar, blob, compression)


def compress_tar(tar_stream, out: BinaryIO, compression: str, level: int | None = None) -> LayerDigests:
    """Compress an uncompressed layer tar (anything with ``read(size)``) into ``out``.

    The tar bytes pass through unchanged, so the diff_id is that of the stream;
    only the blob differs. For giving an existing layer another compression.
    """
    level = _check_options(compression, level, None)
    with _tar_stream(compression, level, out) as (tar, blob):
        while chunk := tar_stream.read(_BLOCK):
            tar.write(chunk)
    return _digests(tar, blob, compression)


def _digests(tar: _TarStream, blob: _HashingWriter | _HashedByOut | None, compression: str) -> LayerDigests:
    # An uncompressed blob is the tar itself: one hash serves as both digests.
    return LayerDigests(
        diff_id=tar.digest(),
        digest=blob.digest() if blob is not None else tar.digest(),
        size=blob.size if blob is not None else tar.size,
        uncompressed_size=tar.size,
        media_type=MEDIA_TYPES[compression],
    )


class _HashingWriter:
    """Passes bytes on to ``sink`` while counting and hashing them."""

    def __init__(self, sink):
        self._sink = sink
        self._sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._sha256.update(data)
        self.size += len(data)
        self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        pass  # nothing buffered here; the sink is flushed by its owner

    def digest(self) -> str:
        return f"sha256:{self._sha256.hexdigest()}"


class _HashedByOut:
    """Passes bytes on to an ``out`` that hashes what it writes itself (the
    store's BlobWriter, via ``content_digest``): its digest is the blob's,
    and hashing the blob here as well would do the same work twice."""

    def __init__(self, out):
        self._out = out
        self.write = out.write

    @property
    def size(self) -> int:
        return self._out.size  # empty when it was handed over: all of it is the blob

    def flush(self) -> None:
        pass  # nothing buffered here; the sink is flushed by its owner

    def digest(self) -> str:
        return self._out.content_digest()


class _ReadFailed(Exception):
    """Reading a file's data failed (not writing the layer): its OSError is the cause."""


def _new_buffer() -> mmap.mmap:
    """A buffer of ``_BLOCK`` bytes. A private anonymous mapping, not a
    bytearray: its pages are the kernel's zero page until written, so a layer
    of a few small files does not pay for clearing a whole block (a bytearray
    is cleared when made: 0.3-1.4 ms a layer in a build)."""
    return mmap.mmap(-1, _BLOCK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class _TarStream:
    """The tar on its way out: gathered in reused buffers of ``_BLOCK`` bytes,
    each handed to the sink when full (``open_sink`` makes it for the first)
    and then hashed (the diff_id) by a thread.

    Every piece the sink gets but the last is exactly ``_BLOCK`` bytes, cut at
    fixed offsets of the tar, however the tar was written (write_layer's
    headers and file data, compress_tar's reads): the threaded gzip writer
    deflates each piece it gets as one block, so this keeps its output a
    function of the tar alone. It also means a few hundred hash updates and
    writes per layer instead of three per file, and file data read straight
    into the buffer (``read_from``), without a bytes object per read.

    The sink is written from the caller's thread, in order and at once: what
    the sink has been given is all the tar written so far up to a whole
    block. Only hashing, which releases the GIL, runs beside the walk; a
    buffer is filled again once its hash is done. The sink must not keep the
    memoryview it is given past its write call.
    """

    def __init__(self, open_sink):
        # The sink is opened when the first block is handed on, told whether
        # that block is the whole tar (``_open_compressor``'s one_block).
        self._open_sink = open_sink
        self.sink = None
        self._sha256 = hashlib.sha256()
        # Made on the first full buffer (``_start_hasher``): a layer of a few
        # files needs neither the thread and its queues nor more than one buffer.
        self._free: SimpleQueue[mmap.mmap] | None = None
        self._to_hash: SimpleQueue[tuple[mmap.mmap, int] | None] | None = None
        self._hasher: threading.Thread | None = None
        self._buffers = 1
        self._buffer = _new_buffer()
        self._view = memoryview(self._buffer)
        self._used = 0
        self.size = 0  # bytes written so far

    def write(self, data: bytes) -> None:
        used = self._used
        end = used + len(data)
        if end < _BLOCK:
            self._buffer[used:end] = data
            self._used = end
            self.size += len(data)
            return
        with memoryview(data) as rest:
            while rest:
                room = _BLOCK - self._used
                piece = rest[:room]
                self._buffer[self._used : self._used + len(piece)] = piece
                self._used += len(piece)
                self.size += len(piece)
                rest = rest[room:]
                if self._used == _BLOCK:
                    self._hand_on()

    def read_from(self, fd: int, size: int) -> int:
        """Append up to ``size`` bytes read from ``fd``; the count read (less only at
        end of file). A failed read is _ReadFailed, a failed write of the sink itself."""
        left = size
        while left:
            used = self._used
            wanted = min(_BLOCK - used, left)
            try:
                got = os.readv(fd, [self._view[used : used + wanted]])
            except OSError as error:
                raise _ReadFailed(error) from error
            if not got:
                break
            self._used = used + got
            self.size += got
            left -= got
            if self._used == _BLOCK:
                self._hand_on()
        return size - left

    def finish(self) -> None:
        """Hand on what is left (the last, shorter piece) and wait for the hash."""
        if self._used:
            self._hand_on(last=True)
        elif self.sink is None:  # an empty tar still gets its compressor's header and trailer
            self.sink = self._open_sink(True)
        self.stop()

    def stop(self) -> None:
        """End the hashing thread (also after an error: it must not outlive the layer)."""
        if self._hasher is not None and self._hasher.is_alive():
            self._to_hash.put(None)
            self._hasher.join()

    def _hand_on(self, last: bool = False) -> None:
        if self.sink is None:
            self.sink = self._open_sink(last)
        self.sink.write(self._view[: self._used])
        self._view.release()
        if last and self._hasher is None:  # the whole tar fit in one buffer
            with memoryview(self._buffer) as view:
                self._sha256.update(view[: self._used])
            return
        if self._hasher is None:
            self._start_hasher()
        self._to_hash.put((self._buffer, self._used))
        self._used = 0
        if not last:
            self._buffer = self._next_buffer()
            self._view = memoryview(self._buffer)

    def _start_hasher(self) -> None:
        from queue import SimpleQueue

        self._free = SimpleQueue()
        self._to_hash = SimpleQueue()
        self._hasher = threading.Thread(target=self._hash_blocks, name="layer-diff-id", daemon=True)
        self._hasher.start()

    def _next_buffer(self) -> mmap.mmap:
        # Only the hasher puts buffers back: one seen in the queue is there to take.
        if not self._free.empty() or self._buffers == _BUFFERS:
            return self._free.get()  # a hashed one, or wait for the hash of the oldest
        self._buffers += 1
        return _new_buffer()

    def _hash_blocks(self) -> None:
        while (item := self._to_hash.get()) is not None:
            buffer, length = item
            with memoryview(buffer) as view:
                self._sha256.update(view[:length])
            self._free.put(buffer)

    def digest(self) -> str:
        return f"sha256:{self._sha256.hexdigest()}"


class _Unchanged:
    """The sink of an uncompressed layer: the tar goes to ``out`` as it is."""

    def __init__(self, out: BinaryIO):
        self.write = out.write

    def close(self) -> None:
        pass


@contextmanager
def _tar_stream(compression: str, level: int | None, out: BinaryIO) -> Iterator[tuple[_TarStream, _HashingWriter | _HashedByOut | None]]:
    """The tar stream into its compressor into ``out``, and the hashing writer
    of the blob (None when uncompressed: the blob is the tar then).

    The compressor, opened with the first block, is closed when the block
    ends, on an error too: the threaded gzip writer's threads must not
    outlive the layer (they would keep the process from exiting); that
    close's own error is dropped for the first one."""
    if compression == "uncompressed":
        blob = None
        tar = _TarStream(lambda _one_block: _Unchanged(out))
    else:
        blob = _blob_hasher(out)
        tar = _TarStream(lambda one_block: _open_compressor(compression, level, blob, one_block=one_block))
    try:
        yield tar, blob
        tar.finish()
    except BaseException:
        tar.stop()
        if tar.sink is not None:
            try:
                tar.sink.close()
            except Exception:  # noqa: S110 - the error being raised says what went wrong
                pass
        raise
    tar.sink.close()


def _blob_hasher(out: BinaryIO) -> _HashingWriter | _HashedByOut:
    """What hashes the compressed blob: ``out`` itself when it hashes what it
    writes from its first byte (a store blob), else a writer of our own."""
    if getattr(out, "size", None) == 0 and callable(getattr(out, "content_digest", None)):
        return _HashedByOut(out)
    return _HashingWriter(out)


def _open_compressor(compression: str, level: int | None, blob: _HashingWriter | _HashedByOut, *, one_block: bool):
    if compression == "gzip" and level is None and one_block:
        return _OneBlockGzip(blob)
    if compression == "gzip" and level is None:
        # Threads compress while the walk goes on; the output does not depend
        # on their number (see the module docstring), so any machine gives
        # the same blob. ISA-L's header has no name and mtime 0.
        from isal import igzip_threaded  # its imports (typing, gzip) cost ~5 ms: not for one block

        threads = max(1, len(os.sched_getaffinity(0)))
        # _TarStream hands it whole blocks of this size, one deflate block each.
        return igzip_threaded.open(
            blob, "wb", compresslevel=_FAST_GZIP_LEVEL, threads=threads, block_size=_BLOCK
        )
    if compression == "gzip":
        import gzip

        # No file name and mtime 0 in the gzip header: the same tar gives the same bytes.
        return gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=blob, mtime=0)
    # zstd: multi-threaded zstd gives the same bytes for any number of workers >= 1
    # (threads=-1 is one worker on a 1-CPU machine), so blobs match across
    # machines; memory is a few buffers per worker, not per layer size.
    import zstandard  # only when asked for: it loads platform too, ~3 ms of every build

    compressor = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
    return compressor.stream_writer(blob, closefd=False)


class _OneBlockGzip:
    """The gzip of a tar that fits in one block, byte for byte what ISA-L's
    threaded writer makes of it (its header, the block deflated with an
    empty dictionary as its worker does, an empty final block, the trailer),
    in this thread and without loading that writer: its module imports
    typing and gzip, some 5 ms of a build whose layers are all small, and
    it starts a thread per layer."""

    def __init__(self, out):
        self._out = out
        self._crc = 0
        self._size = 0
        out.write(_ISAL_GZIP_HEADER)

    def write(self, data) -> None:
        # _TarStream's only piece: the whole tar, less than a block
        compressor = isal_zlib._ParallelCompress(buffersize=_BLOCK + _BLOCK // 10, level=_FAST_GZIP_LEVEL)
        compressed, self._crc = compressor.compress_and_crc(data, memoryview(b""))
        self._size = len(data)
        self._out.write(compressed)

    def close(self) -> None:
        self._out.write(isal_zlib.compress(b"", wbits=-15))
        self._out.write(struct.pack("<II", self._crc, self._size))


# ---------------------------------------------------------------------------
# The changeset's entries (its walk: changeset.py)


def _layer_entries(
    root: bytes, source_date_epoch: int | None, set_times: bool = False
) -> Iterator[tuple[TarEntry, Found | None]]:
    """The tar entries for the changeset, each with the file to copy its data from.
    With ``set_times``, an entry gets its recorded mtime once its data is written."""
    first_paths: dict[tuple[int, int], bytes] = {}  # (dev, ino) -> first path, for hardlinks
    try:
        for found in walk(root):
            try:
                yield from _entries_for(found, first_paths, source_date_epoch)
                if set_times:
                    set_time_as_written(found, source_date_epoch)
            except OSError as error:
                raise LayerError(
                    f"cannot read {_shown(root, found)} for the layer: {error}"
                ) from error
    except OSError as error:
        raise LayerError(f"cannot read the changeset {os.fsdecode(root)}: {error}") from error


def _shown(root: bytes, found: Found) -> str:
    return os.fsdecode(os.path.join(root, found.relative))


def _entries_for(
    found: Found,
    first_paths: dict[tuple[int, int], bytes],
    source_date_epoch: int | None,
) -> Iterator[tuple[TarEntry, Found | None]]:
    relative, info = found.relative, found.info
    mode = info.st_mode
    entry = TarEntry(
        name=relative,
        type=REGULAR,
        mode=stat.S_IMODE(mode),
        uid=info.st_uid,
        gid=info.st_gid,
        mtime_ns=entry_mtime(info, source_date_epoch),
    )
    if stat.S_ISCHR(mode) and info.st_rdev == 0:
        # An overlay whiteout. Overlayfs may hardlink whiteouts to one shared
        # inode, so they never take part in hardlink detection.
        parent, _, name = relative.rpartition(b"/")
        entry.name = _join(parent, WHITEOUT_PREFIX + name)
        entry.mode = 0o600
        yield entry, None
        return
    if stat.S_ISSOCK(mode):
        import logging  # only here: few layers hold a socket, and loading logging costs every build ~3 ms

        logging.getLogger(__name__).warning(
            "skipping socket %s: sockets cannot be stored in a layer", os.fsdecode(relative)
        )
        return
    all_xattrs = _read_xattrs(proc_path(found.dir_fd, found.name))
    _refuse_overlay_references(relative, all_xattrs)
    if stat.S_ISDIR(mode):
        entry.type = DIRECTORY
        entry.name = relative + b"/"
        entry.xattrs = _layer_xattrs(all_xattrs)
        yield entry, None
        if any(all_xattrs.get(key) == b"y" for key in OVERLAY_OPAQUE_XATTRS):
            marker = TarEntry(
                name=_join(relative, OPAQUE_WHITEOUT),
                type=REGULAR,
                mode=entry.mode,
                uid=entry.uid,
                gid=entry.gid,
                mtime_ns=entry.mtime_ns,
            )
            yield marker, None
        return
    inode = (info.st_dev, info.st_ino)
    if info.st_nlink > 1 and inode in first_paths:
        entry.type = HARDLINK
        entry.linkname = first_paths[inode]
        yield entry, None
        return
    if info.st_nlink > 1:
        first_paths[inode] = relative
    entry.xattrs = _layer_xattrs(all_xattrs)
    if stat.S_ISREG(mode):
        entry.size = info.st_size
        yield entry, found
    elif stat.S_ISLNK(mode):
        entry.type = SYMLINK
        entry.linkname = os.readlink(found.name, dir_fd=found.dir_fd)
        yield entry, None
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        entry.type = CHAR_DEVICE if stat.S_ISCHR(mode) else BLOCK_DEVICE
        entry.devmajor = os.major(info.st_rdev)
        entry.devminor = os.minor(info.st_rdev)
        yield entry, None
    elif stat.S_ISFIFO(mode):
        entry.type = FIFO
        yield entry, None


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _read_xattrs(path: bytes) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    values = {}
    for name in names:
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as error:
            if error.errno != errno.ENODATA:  # removed since listxattr
                raise
    return values


def _refuse_overlay_references(relative: bytes, xattrs: dict[str, bytes]) -> None:
    # With redirect_dir or metacopy, an upperdir entry points at lower-layer
    # data instead of holding it, so the upperdir alone is not the diff.
    for feature in ("redirect", "metacopy"):
        if f"trusted.overlay.{feature}" in xattrs or f"user.overlay.{feature}" in xattrs:
            raise LayerError(
                f"{os.fsdecode(relative)} is an overlayfs {feature} entry: its content lives in a "
                "lower layer, so the changeset cannot be written as a layer; mount the "
                "overlay with redirect_dir=off,metacopy=off"
            )


def _layer_xattrs(xattrs: dict[str, bytes]) -> dict[str, bytes]:
    if not xattrs:  # most entries
        return {}
    return {
        name: value
        for name, value in sorted(xattrs.items())
        if name.startswith(_KEPT_XATTR_PREFIXES) and not name.startswith(_DROPPED_XATTR_PREFIXES)
    }


def _copy_contents(root: bytes, found: Found, size: int, tar: _TarStream) -> None:
    """Stream exactly ``size`` bytes of the file (the size its header announced).

    The file is opened without following a symlink and without blocking (a
    FIFO swapped in would hang a plain open), then checked to be the regular
    file that was walked: a special file's contents are never read.
    """
    try:
        fd = os.open(found.name, _FILE_FLAGS, dir_fd=found.dir_fd)
    except OSError as error:
        raise LayerError(f"cannot read {_shown(root, found)} for the layer: {error}") from error
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or opened.st_ino != found.info.st_ino:
            raise LayerError(
                f"{_shown(root, found)} changed while it was written into the layer; "
                "is something still changing the directory?"
            )
        try:
            got = tar.read_from(fd, size)
        except _ReadFailed as failed:
            error = failed.__cause__
            raise LayerError(f"cannot read {_shown(root, found)} for the layer: {error}") from error
        if got < size:
            raise LayerError(
                f"{_shown(root, found)} shrank while it was written into the layer; "
                "is something still changing the changeset?"
            )
    finally:
        os.close(fd)
    if size % BLOCK_SIZE:
        tar.write(_ZEROS[: BLOCK_SIZE - size % BLOCK_SIZE])

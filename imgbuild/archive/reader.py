"""Random access to the members of an untrusted archive, by name, without extracting it.

One pass over the tar (``imgbuild.layer.tarread.TarReader``, which reads as
Go's archive/tar does) records where each member's data lies; members are then
read by seeking there. The archive may be a plain tar or a gzip-, bzip2- or
xz-compressed one (``docker save | gzip``); compressed archives are read
through a seekable decompressor, as Python's tarfile did before.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import posixpath
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from imgbuild.dataclass import dataclass
from imgbuild.errors import ArchiveError, LayerError
from imgbuild.layer.decompress import BZIP2_MAGIC, GZIP_MAGIC, XZ_MAGIC
from imgbuild.layer.tarformat import HARDLINK, REGULAR, SYMLINK, TarEntry
from imgbuild.layer.tarread import TarReader
from imgbuild.store import Store

CHUNK = 1 << 20
MAX_MEMBERS = 100_000  # a real archive has a few entries per layer
MAX_JSON_BYTES = 16 << 20  # manifests and configs; anything bigger is not one
MAX_LINK_HOPS = 40
# What a decompressor raises on damaged input (gzip.BadGzipFile and bz2's
# "Invalid data stream" are OSErrors; truncation is an EOFError).
_DECOMPRESSION_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)


@dataclass
class Member:
    """One entry of the archive: what it is and where its data lies in the tar stream."""

    type: bytes
    size: int
    linkname: str
    offset: int  # of the data in the (decompressed) tar stream
    # A GNU sparse file's data regions (offset, length); the stream holds only them.
    sparse: list[tuple[int, int]] | None = None


@contextmanager
def open_archive(store: Store, source: str | os.PathLike | BinaryIO) -> Iterator[ArchiveReader]:
    """The archive at a path, or in a binary file object (a pipe is spooled into the store)."""
    if isinstance(source, (str, os.PathLike)):
        label = str(source)
        try:
            handle = open(source, "rb")
        except OSError as error:
            raise ArchiveError(f"cannot open archive {label}: {error.strerror}") from None
    else:
        label = getattr(source, "name", "the input")
        label = "standard input" if label in ("<stdin>", 0) else str(label)
        handle = source if _seekable(source) else _spool(store, source)
    try:
        stream = _decompressed(handle, label)
        try:
            yield ArchiveReader(stream, label)
        finally:
            if stream is not handle:
                stream.close()
    finally:
        if handle is not source:
            handle.close()


def _seekable(handle: BinaryIO) -> bool:
    try:
        return handle.seekable()
    except (AttributeError, ValueError):
        return False


def _spool(store: Store, source: BinaryIO) -> BinaryIO:
    """Copy a pipe into an anonymous temp file in the store (same disk, gone on close)."""
    spool = tempfile.TemporaryFile(dir=store.tmp_dir)
    shutil.copyfileobj(source, spool, CHUNK)
    spool.seek(0)
    return spool


def _decompressed(handle: BinaryIO, label: str) -> BinaryIO:
    """The tar stream in ``handle``, told by its first bytes: plain, gzip, bzip2 or xz."""
    try:
        start = handle.tell()
        head = handle.read(6)
        handle.seek(start)
    except OSError as error:
        raise ArchiveError(f"cannot read archive {label}: {error.strerror}") from None
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=handle, mode="rb")
    if head.startswith(BZIP2_MAGIC):
        return bz2.BZ2File(handle, "rb")
    if head.startswith(XZ_MAGIC):
        return lzma.LZMAFile(handle, "rb")
    return handle


class ArchiveReader:
    """Random access to the members of an untrusted tar, by normalised name.

    Entries whose names are absolute or contain ``..``, and symlinks or
    hardlinks whose targets leave the archive, make the whole archive refused:
    a loader that follows them (or an extracting tool) could read or write
    outside, and no tool we know writes them.
    """

    def __init__(self, stream: BinaryIO, label: str):
        self.stream = stream
        self.label = label
        self._start = stream.tell()  # a file handed over may not be at its start
        self.members: dict[str, Member] = {}
        self._index()

    def _index(self) -> None:
        reader = TarReader(self._read_for_index)
        count = 0
        while True:
            try:
                entry = reader.next_entry()
            except (LayerError, _Damaged) as error:
                raise self._unreadable(error, first=count == 0) from None
            if entry is None:
                break
            count += 1
            if count > MAX_MEMBERS:
                raise ArchiveError(
                    f"{self.label} has more than {MAX_MEMBERS} entries; refusing it as a tar bomb"
                )
            self._add(entry, reader.offset)
        if reader.offset == 0:  # no bytes at all; zero blocks alone are an empty tar
            raise ArchiveError(f"{self.label} is not a tar archive (or a gzip-compressed one): it is empty")

    def _read_for_index(self, size: int) -> bytes:
        try:
            return self.stream.read(size)
        except _DECOMPRESSION_ERRORS as error:
            raise _Damaged(str(error)) from None

    def _unreadable(self, error: Exception, first: bool) -> ArchiveError:
        # TarReader speaks of layers; here the tar is the archive itself.
        detail = str(error).removeprefix("layer ")
        if first:
            return ArchiveError(f"{self.label} is not a tar archive (or a gzip-compressed one): {detail}")
        return ArchiveError(f"{self.label} is damaged: {detail}")

    def _add(self, entry: TarEntry, offset: int) -> None:
        raw_name = entry.name.decode("utf-8", "surrogateescape")
        linkname = entry.linkname.decode("utf-8", "surrogateescape")
        name = self._safe_name(raw_name, f"entry {raw_name!r}")
        if entry.type == SYMLINK:
            self._check_symlink(name, linkname)
        elif entry.type == HARDLINK:
            self._safe_name(linkname, f"hardlink {raw_name!r} -> {linkname!r}")
        if name:  # a later entry replaces an earlier one, as on extraction
            self.members[name] = Member(entry.type, entry.size, linkname, offset, entry.sparse)

    def _safe_name(self, name: str, what: str) -> str:
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if name.startswith("/") or ".." in parts:
            raise ArchiveError(
                f"{self.label} has an unsafe {what}: it points outside the archive; "
                "refusing to load it"
            )
        return "/".join(parts)

    def _check_symlink(self, name: str, target: str) -> None:
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise ArchiveError(
                f"{self.label} has an unsafe symlink {name!r} -> {target!r}: it points outside the "
                "archive; refusing to load it"
            )

    def has(self, name: str) -> bool:
        return name in self.members

    def resolve(self, reference: str, hops: int = 0) -> Member:
        """The regular-file member ``reference`` names, following links inside the archive."""
        name = self._safe_name(reference, f"reference {reference!r}")
        parts = name.split("/")
        for end in range(1, len(parts) + 1):
            member = self.members.get("/".join(parts[:end]))
            if member is not None and member.type in (SYMLINK, HARDLINK):
                if hops >= MAX_LINK_HOPS:
                    raise ArchiveError(
                        f"{self.label}: too many levels of links resolving {reference!r}"
                    )
                if member.type == SYMLINK:
                    base = posixpath.dirname("/".join(parts[:end]))
                    target = posixpath.normpath(posixpath.join(base, member.linkname))
                else:
                    target = member.linkname
                return self.resolve("/".join([target, *parts[end:]]), hops + 1)
        member = self.members.get(name)
        if member is None:
            raise ArchiveError(
                f"{self.label} has no entry {reference!r}, which its manifest refers to"
            )
        if member.type != REGULAR:
            raise ArchiveError(f"{self.label}: entry {reference!r} is not a regular file")
        return member

    def open(self, reference: str) -> tuple[MemberReader, int]:
        member = self.resolve(reference)
        return MemberReader(self, member), member.size

    def read_bytes(self, reference: str, what: str) -> bytes:
        member, size = self.open(reference)
        if size > MAX_JSON_BYTES:
            raise ArchiveError(
                f"{self.label}: {what} {reference!r} is {size} bytes, too big for a JSON document"
            )
        with member:
            return member.read()

    def read_json(self, reference: str, what: str) -> dict | list:
        data = self.read_bytes(reference, what)
        try:
            return json.loads(data)
        except ValueError as error:
            raise ArchiveError(
                f"{self.label}: {what} {reference!r} is not valid JSON: {error}"
            ) from None

    def read_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the tar stream at ``offset``; ArchiveError if they are not all there."""
        try:
            self.stream.seek(self._start + offset)
            data = self.stream.read(size)
        except _DECOMPRESSION_ERRORS as error:
            raise ArchiveError(f"{self.label} is damaged: {error}") from None
        if len(data) != size:
            raise ArchiveError(f"{self.label} is damaged: unexpected end of data")
        return data


class _Damaged(Exception):
    """The decompressor refused the archive's bytes."""


class MemberReader:
    """Reads one member's data (``read(n)``), holes of a sparse member as zeros.

    Each read seeks first, so readers of several members may be interleaved.
    """

    def __init__(self, archive: ArchiveReader, member: Member):
        self._archive = archive
        self._member = member
        self._position = 0
        # (start in the file, length, start in the member's stored data)
        self._regions: list[tuple[int, int, int]] = []
        stored = 0
        for start, length in member.sparse if member.sparse is not None else [(0, member.size)]:
            self._regions.append((start, length, stored))
            stored += length

    def read(self, size: int = -1) -> bytes:
        left = self._member.size - self._position
        size = left if size < 0 else min(size, left)
        if size <= 0:
            return b""
        chunk = self._chunk_at(self._position, size)
        self._position += len(chunk)
        return chunk

    def _chunk_at(self, position: int, size: int) -> bytes:
        for start, length, stored in self._regions:
            if position < start:  # in the hole before this region
                return bytes(min(size, start - position))
            if position < start + length:
                count = min(size, start + length - position)
                offset = self._member.offset + stored + position - start
                return self._archive.read_at(offset, count)
        return bytes(size)  # the hole after the last region

    def close(self) -> None:
        pass

    def __enter__(self) -> MemberReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

"""Opening a layer blob as an uncompressed tar stream: gzip, zstd or plain.

ADD's local archives (``open_archive_stream``) may also be bzip2 or xz, as
Docker's archive package reads them; layers may not.

The compression is detected from the blob's first bytes; a media type, when the
caller has one, is only checked to be a layer type we know. Truncated or corrupt
streams raise ``LayerError`` (the zstd library does not notice truncation by
itself, see ``_ZstdFrameChecker``). Output is produced in bounded pieces, so a
decompression bomb cannot make us buffer more than one read's worth.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from typing import BinaryIO, Protocol

import zstandard

from imgbuild.errors import LayerError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
_UNSUPPORTED_MAGIC = {BZIP2_MAGIC: "bzip2", XZ_MAGIC: "xz"}
# Docker's archive.DetectCompression, which ADD uses: its gzip magic includes
# the deflate method byte.
_ARCHIVE_MAGIC = (
    (GZIP_MAGIC + b"\x08", "gzip"),
    (BZIP2_MAGIC, "bzip2"),
    (XZ_MAGIC, "xz"),
    (ZSTD_MAGIC, "zstd"),
)

# Layer media types we accept (OCI and Docker). Which decompressor to use is
# decided from the content's magic bytes, as containerd does.
LAYER_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)

_READ_SIZE = 1 << 20


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def open_tar_stream(blob: BinaryIO, media_type: str | None = None) -> Readable:
    """The uncompressed tar stream inside ``blob``; its ``read`` raises LayerError on damage."""
    if media_type is not None and media_type not in LAYER_MEDIA_TYPES:
        raise LayerError(
            f"unsupported layer media type {media_type!r} (encrypted or non-layer blob?); "
            "expected an OCI or Docker tar layer"
        )
    head = read_up_to(blob, 6)
    source = _Prefixed(head, blob)
    if head.startswith(GZIP_MAGIC):
        return _LibraryStream(gzip.GzipFile(fileobj=source, mode="rb"), "gzip")
    if head.startswith(ZSTD_MAGIC):
        return _ZstdStream(source)
    for magic, name in _UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            raise LayerError(
                f"layer is {name}-compressed; only gzip, zstd and plain tar are supported"
            )
    return source


def open_archive_stream(raw: BinaryIO) -> tuple[str, Readable]:
    """For ADD only: a local archive's compression ("none", "gzip", "bzip2",
    "xz" or "zstd", from its first bytes) and its uncompressed stream, whose
    ``read`` raises LayerError on damage."""
    head = read_up_to(raw, 6)
    source = _Prefixed(head, raw)
    kind = next((name for magic, name in _ARCHIVE_MAGIC if head.startswith(magic)), "none")
    if kind == "gzip":
        return kind, _LibraryStream(gzip.GzipFile(fileobj=source, mode="rb"), kind)
    if kind == "bzip2":
        return kind, _LibraryStream(bz2.BZ2File(source), kind)  # type: ignore[arg-type]
    if kind == "xz":
        return kind, _LibraryStream(lzma.LZMAFile(source), kind)  # type: ignore[arg-type]
    if kind == "zstd":
        return kind, _ZstdStream(source)
    return kind, source


def read_up_to(stream: Readable, size: int) -> bytes:
    """``size`` bytes of ``stream``, fewer only where it ends."""
    parts = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


class _Prefixed:
    """A stream whose first bytes (read to sniff the format) are put back in front."""

    def __init__(self, prefix: bytes, rest: BinaryIO):
        self._prefix = prefix
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size < 0:
                size = len(self._prefix)
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            return chunk
        return self._rest.read(size)


# What each standard-library reader raises for damaged data. bz2 says
# "Invalid data stream" with a plain OSError, so for bzip2 (ADD only) an I/O
# error reads as damage too.
_DAMAGE: dict[str, tuple[type[Exception], ...]] = {
    "gzip": (EOFError, gzip.BadGzipFile, zlib.error),
    "bzip2": (EOFError, OSError),
    "xz": (EOFError, lzma.LZMAError),
}


class _LibraryStream:
    """A gzip, bzip2 or xz reader of the standard library. Each reads
    multi-member streams, checks every member's checksum, and raises EOFError
    when the stream ends early."""

    def __init__(self, reader: gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile, name: str):
        self._reader = reader
        self._name = name
        self._damage = _DAMAGE[name]

    def read(self, size: int) -> bytes:
        try:
            return self._reader.read(size)
        except self._damage as error:
            raise LayerError(f"layer {self._name} stream is truncated or corrupt: {error}") from error


class _ZstdStream:
    def __init__(self, source: _Prefixed):
        self._frames = _ZstdFrameChecker()
        self._source = source
        # The zstd reader pulls compressed bytes through _pull, so the frame
        # checker sees every one of them.
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            _Puller(self._pull), read_size=_READ_SIZE, read_across_frames=True, closefd=False
        )

    def read(self, size: int) -> bytes:
        try:
            chunk = self._reader.read(size)
        except zstandard.ZstdError as error:
            raise LayerError(f"layer zstd stream is corrupt: {error}") from error
        if not chunk:
            self._frames.check_complete()
        return chunk

    def _pull(self, size: int) -> bytes:
        chunk = self._source.read(size)
        self._frames.feed(chunk)
        return chunk


class _Puller:
    """The file-like object zstandard reads compressed input from."""

    def __init__(self, pull):
        self.read = pull


# States of the zstd frame walk, each with the size of the header it waits for.
_MAGIC = "magic"  # 4 bytes: a frame or a skippable frame starts
_SKIPPABLE_SIZE = "skippable-size"  # 4 bytes
_DESCRIPTOR = "frame-descriptor"  # 1 byte
_FRAME_HEADER_REST = "frame-header-rest"  # 0-13 bytes, from the descriptor
_BLOCK_HEADER = "block-header"  # 3 bytes


class _ZstdFrameChecker:
    """Walks the zstd frame structure of the compressed bytes to notice truncation.

    zstandard's stream reader reports a clean end of stream when its input stops
    in the middle of a frame. This follows the frame and block headers (RFC 8878
    section 3.1) of the bytes as they pass, without decompressing them, so that
    at the end we know whether the last frame was complete.
    """

    def __init__(self):
        self._state = _MAGIC
        self._want = 4  # header bytes the current state needs
        self._header = b""  # header bytes collected so far
        self._skip = 0  # payload bytes to pass over before the next header
        self._last_block = False
        self._has_checksum = False
        self._frames = 0

    def feed(self, data: bytes) -> None:
        position = 0
        while position < len(data):
            if self._skip:
                step = min(self._skip, len(data) - position)
                self._skip -= step
                position += step
            else:
                take = min(self._want - len(self._header), len(data) - position)
                self._header += data[position : position + take]
                position += take
            if not self._skip and len(self._header) == self._want:
                header, self._header = self._header, b""
                self._on_header(header)

    def check_complete(self) -> None:
        if self._frames == 0 or self._state != _MAGIC or self._header or self._skip:
            raise LayerError("layer zstd stream is truncated: it ends inside a frame")

    def _expect(self, state: str, size: int) -> None:
        self._state, self._want = state, size

    def _on_header(self, header: bytes) -> None:
        if self._state == _MAGIC:
            magic = int.from_bytes(header, "little")
            if magic == 0xFD2FB528:
                self._expect(_DESCRIPTOR, 1)
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._expect(_SKIPPABLE_SIZE, 4)
            else:
                raise LayerError("layer zstd stream has trailing data that is not a zstd frame")
        elif self._state == _SKIPPABLE_SIZE:
            self._skip = int.from_bytes(header, "little")
            self._expect(_MAGIC, 4)
        elif self._state == _DESCRIPTOR:
            descriptor = header[0]
            single_segment = bool(descriptor & 0x20)
            self._has_checksum = bool(descriptor & 0x04)
            content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
            dictionary_id_bytes = (0, 1, 2, 4)[descriptor & 0x03]
            window_bytes = 0 if single_segment else 1
            self._expect(
                _FRAME_HEADER_REST, window_bytes + dictionary_id_bytes + content_size_bytes
            )
            if self._want == 0:
                self._expect(_BLOCK_HEADER, 3)
        elif self._state == _FRAME_HEADER_REST:
            self._expect(_BLOCK_HEADER, 3)
        elif self._state == _BLOCK_HEADER:
            self._on_block_header(int.from_bytes(header, "little"))

    def _on_block_header(self, value: int) -> None:
        last, block_type, size = value & 1, (value >> 1) & 3, value >> 3
        if block_type == 3:
            raise LayerError("layer zstd stream is corrupt: reserved block type")
        self._skip = 1 if block_type == 1 else size  # an RLE block stores one byte
        if not last:
            self._expect(_BLOCK_HEADER, 3)
            return
        # After the last block: the optional 4-byte checksum, then the next frame.
        self._frames += 1
        self._skip += 4 if self._has_checksum else 0
        self._expect(_MAGIC, 4)

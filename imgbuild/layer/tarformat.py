"""The tar format as image layers use it: POSIX ustar headers plus PAX records.

Shared by the layer writer and the layer extractor. We encode and decode headers
ourselves rather than through ``tarfile`` so that (a) the bytes we write are fully
under our control (reproducible layers: no atime/ctime, no user names, raw binary
xattr values as Go's archive/tar writes them) and (b) reading an untrusted layer
has hard limits on everything it makes us buffer.

Names, link targets and xattr values are ``bytes`` throughout: Linux file names
are bytes, and a layer may carry names that are not valid UTF-8.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from imgbuild.errors import LayerError

BLOCK_SIZE = 512
END_OF_ARCHIVE = bytes(2 * BLOCK_SIZE)

# OCI whiteouts (image-spec layer.md): ".wh.NAME" hides NAME of lower layers,
# ".wh..wh..opq" hides everything the lower layers have in its directory.
WHITEOUT_PREFIX = b".wh."
OPAQUE_WHITEOUT = b".wh..wh..opq"
# Other ".wh..wh.*" names are AUFS bookkeeping; Docker skips them and so do we.
WHITEOUT_META_PREFIX = b".wh..wh."

# Overlayfs marks an opaque directory with this xattr (the "user." form is used
# by overlay mounts with the userxattr option, e.g. rootless ones).
OVERLAY_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")

# Typeflags (POSIX ustar, plus the GNU and PAX extensions we understand).
REGULAR = b"0"
REGULAR_OLD = b"\0"
CONTIGUOUS = b"7"
HARDLINK = b"1"
SYMLINK = b"2"
CHAR_DEVICE = b"3"
BLOCK_DEVICE = b"4"
DIRECTORY = b"5"
FIFO = b"6"
PAX_HEADER = b"x"
PAX_GLOBAL_HEADER = b"g"
GNU_LONG_NAME = b"L"
GNU_LONG_LINK = b"K"
GNU_VOLUME_LABEL = b"V"
GNU_SPARSE = b"S"  # old GNU sparse file: the map is in the header blocks

ENTRY_TYPES = (REGULAR, HARDLINK, SYMLINK, CHAR_DEVICE, BLOCK_DEVICE, DIRECTORY, FIFO)
# Entries of these types never have data blocks, whatever their size field says
# (as in Go's archive/tar, which wrote most layers in the wild).
_HEADER_ONLY_TYPES = (HARDLINK, SYMLINK, CHAR_DEVICE, BLOCK_DEVICE, DIRECTORY, FIFO)

# The most we buffer for one PAX or GNU long-name header (Go's limit too).
MAX_META_SIZE = 1 << 20
# The most data regions one sparse file may list (each costs a Python tuple).
MAX_SPARSE_REGIONS = 1 << 18

_XATTR_KEY_PREFIX = b"SCHILY.xattr."
_USTAR_MAGIC = b"ustar\x0000"
_GNU_MAGIC = b"ustar  \x00"


@dataclass
class TarEntry:
    """One file-system entry of a tar stream (after PAX/GNU extensions are merged)."""

    name: bytes
    type: bytes
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    # A GNU sparse file: its data regions (offset, length) in the file of
    # ``size`` bytes; the data read for the entry is theirs, in order, and
    # everything between them is a hole.
    sparse: list[tuple[int, int]] | None = None


def padding(size: int) -> bytes:
    """The zero bytes that round ``size`` up to a whole block."""
    return bytes(-size % BLOCK_SIZE)


# ---------------------------------------------------------------------------
# Writing


def encode_header(entry: TarEntry) -> bytes:
    """The header block(s) for ``entry``.

    A field that does not fit ustar (long or non-ASCII name or link target, big
    uid/size, sub-second or negative mtime) and every xattr go into one PAX
    extended header in front of the ustar block, its records sorted by key.
    """
    return _encode(entry, _pax_header_name(entry.name), device_fields=True)


def encode_archive_header(entry: TarEntry) -> bytes:
    """The header block(s) for a member of an image archive (``imgbuild save``).

    Image archives were first written with Python's tarfile, and keep its header
    layout so that the same images still give the same archive bytes: the device
    number fields stay empty unless the entry is a device, and a PAX header is
    named ``././@PaxHeader``. Everything else is as ``encode_header`` writes it.
    """
    is_device = entry.type in (CHAR_DEVICE, BLOCK_DEVICE)
    return _encode(entry, b"././@PaxHeader", device_fields=is_device)


def _encode(entry: TarEntry, pax_name: bytes, *, device_fields: bool) -> bytes:
    records: dict[bytes, bytes] = {}
    if len(entry.name) > 100 or not entry.name.isascii():
        records[b"path"] = entry.name
    if len(entry.linkname) > 100 or not entry.linkname.isascii():
        records[b"linkpath"] = entry.linkname
    for key, value, digits in (
        (b"uid", entry.uid, 7),
        (b"gid", entry.gid, 7),
        (b"size", entry.size, 11),
    ):
        if not _fits_octal(value, digits):
            records[key] = str(value).encode()
    seconds, nanos = divmod(entry.mtime_ns, 1_000_000_000)
    if nanos or not _fits_octal(seconds, 11):
        records[b"mtime"] = _format_pax_time(entry.mtime_ns)
    for name, value in entry.xattrs.items():
        records[_XATTR_KEY_PREFIX + name.encode("utf-8", "surrogateescape")] = value

    header = b""
    if records:
        payload = b"".join(_pax_record(key, records[key]) for key in sorted(records))
        pax = TarEntry(name=pax_name, type=PAX_HEADER, size=len(payload))
        header = _ustar_block(pax, device_fields) + payload + padding(len(payload))
    return header + _ustar_block(entry, device_fields)


def _fits_octal(value: int, digits: int) -> bool:
    return 0 <= value < 8**digits


def _format_pax_time(mtime_ns: int) -> bytes:
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    if not nanos:
        return str(seconds).encode()
    if seconds < 0:  # PAX times are sign + seconds + fraction, not floor-based
        seconds, nanos = seconds + 1, 1_000_000_000 - nanos
        sign = "-" if seconds == 0 else ""
        return f"{sign}{seconds}.{nanos:09d}".rstrip("0").encode()
    return f"{seconds}.{nanos:09d}".rstrip("0").encode()


def _pax_record(key: bytes, value: bytes) -> bytes:
    # "LEN KEY=VALUE\n" where LEN counts the whole record, its own digits included.
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _pax_header_name(name: bytes) -> bytes:
    # Like Go: readers without PAX support extract the header as a plain file,
    # so give it a recognisable name. Deterministic (GNU tar puts its pid here).
    base = name.rstrip(b"/").rsplit(b"/", 1)[-1]
    return (b"PaxHeaders.0/" + base)[:100]


def _ustar_block(entry: TarEntry, device_fields: bool = True) -> bytes:
    block = bytearray(BLOCK_SIZE)

    def put(offset: int, width: int, value: bytes) -> None:
        block[offset : offset + len(value[:width])] = value[:width]

    def put_octal(offset: int, width: int, value: int) -> None:
        # Values that do not fit were moved to PAX records; ustar gets 0 then.
        value = value if _fits_octal(value, width - 1) else 0
        put(offset, width, b"%0*o\x00" % (width - 1, value))

    put(0, 100, entry.name)
    put_octal(100, 8, entry.mode & 0o7777)
    put_octal(108, 8, entry.uid)
    put_octal(116, 8, entry.gid)
    put_octal(124, 12, entry.size)
    put_octal(136, 12, entry.mtime_ns // 1_000_000_000)
    put(156, 1, entry.type)
    put(157, 100, entry.linkname)
    put(257, 8, _USTAR_MAGIC)
    # uname and gname (265, 297) stay empty: ids are numeric in layers.
    if device_fields:  # else left NUL, as Python's tarfile leaves them on non-devices
        put_octal(329, 8, entry.devmajor)
        put_octal(337, 8, entry.devminor)
    block[148:156] = b" " * 8
    put(148, 8, b"%06o\x00 " % sum(block))
    return bytes(block)


# ---------------------------------------------------------------------------
# Reading


class TarReader:
    """Reads entries from a tar stream, one block at a time; never seeks.

    ``read`` is a function like ``file.read(n)``: up to n bytes, ``b""`` at the
    end. Every inconsistency (bad checksum, bad number, truncation, oversized
    extension header, a sparse map that does not add up) raises ``LayerError``.
    GNU sparse files are read in all the forms GNU tar writes (old GNU, PAX
    0.0, 0.1 and 1.0), as Go's reader reads them.
    """

    def __init__(self, read: Callable[[int], bytes]):
        self._read = read
        self._data_left = 0  # data bytes of the current entry not yet read
        self._padding_left = 0
        self.offset = 0  # position in the stream, for error messages

    def next_entry(self) -> TarEntry | None:
        """The next entry, or None at the end of the archive.

        The end is what Go's archive/tar (which containerd and Docker use)
        takes for one: the two zero blocks, one zero block then the end of the
        stream, or the end of the stream where a header or the last entry's
        padding would start. umoci, for one, writes no end blocks at all.
        """
        self._skip(self._data_left)
        self._data_left = 0
        if not self._skip_padding():
            return None
        extensions: dict[bytes, bytes] = {}
        long_name = long_link = None
        while True:
            block_offset = self.offset
            block = self._read_block()
            if block is None or block == bytes(BLOCK_SIZE):
                if extensions or long_name is not None or long_link is not None:
                    raise LayerError(
                        f"layer tar: extension header at byte {block_offset} has no entry after it"
                    )
                if block is not None:
                    self._check_second_end_block()
                return None
            entry = _decode_ustar(block, block_offset)
            if entry.type in (PAX_HEADER, GNU_LONG_NAME, GNU_LONG_LINK):
                payload = self._read_meta(entry, block_offset)
                if entry.type == PAX_HEADER:
                    extensions.update(_parse_pax(payload, block_offset))
                elif entry.type == GNU_LONG_NAME:
                    long_name = payload.split(b"\x00", 1)[0]
                else:
                    long_link = payload.split(b"\x00", 1)[0]
                continue
            if entry.type in (PAX_GLOBAL_HEADER, GNU_VOLUME_LABEL):
                # Global defaults are not used by layer writers; skip like Go does.
                self._skip(entry.size + len(padding(entry.size)))
                continue
            break

        if long_name is not None:
            entry.name = long_name
        if long_link is not None:
            entry.linkname = long_link
        _merge_pax(entry, extensions, block_offset)
        old_sparse = None
        if entry.type == GNU_SPARSE:
            old_sparse = self._old_gnu_sparse_map(block, block_offset)
            entry.type = REGULAR
        if entry.type in (REGULAR_OLD, CONTIGUOUS):
            entry.type = DIRECTORY if entry.name.endswith(b"/") else REGULAR
        if entry.type not in ENTRY_TYPES:
            raise LayerError(
                f"layer tar entry {show_name(entry.name)}: unsupported entry type "
                f"{entry.type!r} at byte {block_offset}"
            )
        if entry.type in _HEADER_ONLY_TYPES:
            entry.size = 0
        self._data_left = entry.size  # what the stream holds for the entry
        self._padding_left = len(padding(entry.size))
        if old_sparse is not None:
            entry.sparse, entry.size = old_sparse
        elif entry.type == REGULAR:
            self._pax_sparse(entry, extensions, block_offset)
        if entry.sparse is not None:
            _check_sparse(entry, self._data_left, block_offset)
        return entry

    def _old_gnu_sparse_map(self, block: bytes, offset: int) -> tuple[list[tuple[int, int]], int]:
        """The map and real size of an old GNU sparse entry ('S'), its extension blocks read.

        The header holds 4 regions (offset and length, 12 bytes each) from byte
        386, an "extended" flag at 482 and the real size at 483; each
        extension block holds 21 more regions and its own flag at byte 504.
        """
        regions = _sparse_regions(block[386:482], 4, offset)
        extended = block[482]
        while extended:
            if len(regions) > MAX_SPARSE_REGIONS:
                raise _too_many_regions(offset)
            extension = self._read_exact(BLOCK_SIZE)
            regions += _sparse_regions(extension[:504], 21, offset)
            extended = extension[504]
        return regions, _parse_number(block[483:495], "sparse real size", offset)

    def _pax_sparse(self, entry: TarEntry, records: dict[bytes, bytes], offset: int) -> None:
        """Apply the GNU.sparse.* PAX records (formats 0.0, 0.1 and 1.0) to ``entry``."""
        version = (records.get(b"GNU.sparse.major"), records.get(b"GNU.sparse.minor"))
        if version == (b"1", b"0"):
            in_data = True
        elif version in ((b"0", b"0"), (b"0", b"1")) or (version == (None, None) and b"GNU.sparse.map" in records):
            in_data = False
        else:
            return  # not a sparse entry (or a version Go does not know either)
        if records.get(b"GNU.sparse.name"):
            entry.name = records[b"GNU.sparse.name"]
        size = records.get(b"GNU.sparse.size") or records.get(b"GNU.sparse.realsize")
        if size is not None:
            if not size.isdigit():
                raise LayerError(f"layer tar: bad GNU sparse size {size!r} at byte {offset}")
            entry.size = int(size)
        if in_data:
            entry.sparse = self._sparse_map_in_data(offset)
        else:
            entry.sparse = _pairs(records.get(b"GNU.sparse.map", b"").split(b","), offset)

    def _sparse_map_in_data(self, offset: int) -> list[tuple[int, int]]:
        """Format 1.0: the map opens the entry's data, as decimal lines padded to a block:
        the number of regions, then each region's offset and length."""
        text = b""
        numbers: list[bytes] = []
        wanted = None
        while wanted is None or len(numbers) < wanted:
            if len(text) >= MAX_META_SIZE or self._data_left < BLOCK_SIZE:
                raise LayerError(f"layer tar: bad GNU sparse map in the entry at byte {offset}")
            text += self._read_exact(BLOCK_SIZE)
            self._data_left -= BLOCK_SIZE
            *complete, text = text.split(b"\n")
            numbers += complete
            if wanted is None and numbers:
                if not numbers[0].isdigit() or int(numbers[0]) > MAX_SPARSE_REGIONS:
                    raise LayerError(f"layer tar: bad GNU sparse map in the entry at byte {offset}")
                wanted = 1 + 2 * int(numbers[0])
        return _pairs(numbers[1:wanted], offset)

    def read_data(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the current entry's data; b"" once all is read."""
        wanted = min(limit, self._data_left)
        if wanted <= 0:
            return b""
        chunk = self._read(wanted)
        if not chunk:
            raise _truncated(self.offset)
        self.offset += len(chunk)
        self._data_left -= len(chunk)
        return chunk

    def _read_meta(self, header: TarEntry, offset: int) -> bytes:
        if header.size > MAX_META_SIZE:
            raise LayerError(
                f"layer tar: extension header at byte {offset} is {header.size} bytes, "
                f"more than the {MAX_META_SIZE} allowed"
            )
        payload = self._read_exact(header.size)
        self._skip(len(padding(header.size)))
        return payload

    def _skip_padding(self) -> bool:
        """Skip the current entry's padding; False if the stream ends inside it (a clean end)."""
        left, self._padding_left = self._padding_left, 0
        while left:
            chunk = self._read(left)
            if not chunk:
                return False
            left -= len(chunk)
            self.offset += len(chunk)
        return True

    def _read_block(self) -> bytes | None:
        """The next header block, or None if the stream ends exactly here."""
        first = self._read(BLOCK_SIZE)
        if not first:
            return None
        self.offset += len(first)
        if len(first) == BLOCK_SIZE:
            return first
        return first + self._read_exact(BLOCK_SIZE - len(first))

    def _check_second_end_block(self) -> None:
        # After one zero block, Go accepts the end of the stream or a second
        # zero block, and refuses anything else as a corrupt header.
        offset = self.offset
        block = self._read_block()
        if block is not None and block != bytes(BLOCK_SIZE):
            raise LayerError(
                f"layer tar: invalid header at byte {offset}: a header after a zero block "
                "(the end-of-archive marker); the tar is corrupt"
            )

    def _read_exact(self, size: int) -> bytes:
        parts = []
        left = size
        while left:
            chunk = self._read(left)
            if not chunk:
                raise _truncated(self.offset)
            parts.append(chunk)
            left -= len(chunk)
            self.offset += len(chunk)
        return b"".join(parts)

    def _skip(self, size: int) -> None:
        while size:
            chunk = self._read(min(size, 1 << 20))
            if not chunk:
                raise _truncated(self.offset)
            size -= len(chunk)
            self.offset += len(chunk)


def is_tar_header(block: bytes) -> bool:
    """Whether ``block`` is one valid header block (checksum and number fields
    right). The zero block that ends an archive is not one."""
    if len(block) != BLOCK_SIZE or block == bytes(BLOCK_SIZE):
        return False
    try:
        _decode_ustar(block, 0)
    except LayerError:
        return False
    return True


def show_name(name: bytes) -> str:
    """A name as it should appear in a message (undecodable bytes escaped)."""
    return repr(name.decode("utf-8", "backslashreplace"))


def _truncated(offset: int) -> LayerError:
    return LayerError(f"layer tar is truncated: the stream ends at byte {offset}, inside an entry")


def _decode_ustar(block: bytes, offset: int) -> TarEntry:
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for byte in block[:148] + block[156:] if byte > 127)
    try:
        stored = _parse_number(block[148:156], "checksum", offset)
    except LayerError:
        stored = None
    if stored not in (unsigned, signed):
        raise LayerError(
            f"layer tar: invalid header at byte {offset} (bad checksum): "
            "not a tar stream, or corrupt"
        )
    name = _nul_terminated(block[0:100])
    if block[257:265] == _USTAR_MAGIC:  # POSIX ustar: names may be split into a prefix
        prefix = _nul_terminated(block[345:500])
        if prefix:
            name = prefix + b"/" + name
    return TarEntry(
        name=name,
        type=block[156:157],
        mode=_parse_number(block[100:108], "mode", offset) & 0o7777,
        uid=_parse_number(block[108:116], "uid", offset),
        gid=_parse_number(block[116:124], "gid", offset),
        size=_parse_number(block[124:136], "size", offset),
        mtime_ns=_parse_number(block[136:148], "mtime", offset) * 1_000_000_000,
        linkname=_nul_terminated(block[157:257]),
        devmajor=_parse_number(block[329:337], "devmajor", offset),
        devminor=_parse_number(block[337:345], "devminor", offset),
    )


def _nul_terminated(raw: bytes) -> bytes:
    return raw.split(b"\x00", 1)[0]


def _parse_number(raw: bytes, what: str, offset: int) -> int:
    if raw[:1] == b"\xff":  # GNU base-256, negative
        return int.from_bytes(raw, "big", signed=True)
    if raw[:1] == b"\x80":  # GNU base-256, positive
        return int.from_bytes(raw[1:], "big")
    text = raw.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    if not all(48 <= byte <= 55 for byte in text):
        raise LayerError(f"layer tar: bad {what} field {raw!r} in the header at byte {offset}")
    return int(text, 8)


def _sparse_regions(raw: bytes, count: int, offset: int) -> list[tuple[int, int]]:
    """Old GNU sparse regions: ``count`` (offset, length) fields of 12 bytes; a
    region whose offset field starts with NUL ends the list (as in Go)."""
    regions = []
    for index in range(count):
        field_start = index * 24
        if raw[field_start] == 0:
            break
        region_offset = _parse_number(raw[field_start : field_start + 12], "sparse offset", offset)
        length = _parse_number(raw[field_start + 12 : field_start + 24], "sparse length", offset)
        regions.append((region_offset, length))
    return regions


def _pairs(numbers: list[bytes], offset: int) -> list[tuple[int, int]]:
    if len(numbers) % 2 or len(numbers) > 2 * MAX_SPARSE_REGIONS or not all(n.isdigit() for n in numbers):
        raise LayerError(f"layer tar: bad GNU sparse map in the entry at byte {offset}")
    values = [int(n) for n in numbers]
    return list(zip(values[::2], values[1::2], strict=True))


def _check_sparse(entry: TarEntry, stored: int, offset: int) -> None:
    """Go's rules: regions in order, not overlapping, inside the file; and the
    stream holds exactly their data."""
    end = 0
    for region_offset, length in entry.sparse:
        if region_offset < end or region_offset + length > entry.size:
            raise LayerError(
                f"layer tar entry {show_name(entry.name)}: bad GNU sparse map at byte {offset} "
                "(regions overlap, are out of order or lie beyond the file's size)"
            )
        end = region_offset + length
    if sum(length for _, length in entry.sparse) != stored:
        raise LayerError(
            f"layer tar entry {show_name(entry.name)}: its GNU sparse map lists other data "
            f"than the entry holds (at byte {offset})"
        )


def _too_many_regions(offset: int) -> LayerError:
    return LayerError(
        f"layer tar: the sparse file at byte {offset} lists more than {MAX_SPARSE_REGIONS} regions"
    )


def _parse_pax(payload: bytes, offset: int) -> dict[bytes, bytes]:
    """The records of a PAX header. As in Go, the repeated GNU.sparse.offset and
    GNU.sparse.numbytes records of sparse format 0.0 become one GNU.sparse.map."""
    records: dict[bytes, bytes] = {}
    sparse_map: list[bytes] = []
    position = 0
    while position < len(payload):
        if payload[position] == 0:  # some writers pad the payload with NULs
            break
        space = payload.find(b" ", position, position + 20)
        length_text = payload[position:space]
        if space < 0 or not length_text.isdigit():
            raise LayerError(f"layer tar: malformed PAX record in the header at byte {offset}")
        end = position + int(length_text)
        record = payload[space + 1 : end]
        if end > len(payload) or not record.endswith(b"\n") or b"=" not in record:
            raise LayerError(f"layer tar: malformed PAX record in the header at byte {offset}")
        key, _, value = record[:-1].partition(b"=")
        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            expected = b"GNU.sparse.offset" if len(sparse_map) % 2 == 0 else b"GNU.sparse.numbytes"
            if key != expected or len(sparse_map) >= 2 * MAX_SPARSE_REGIONS:
                raise LayerError(f"layer tar: malformed GNU sparse records in the header at byte {offset}")
            sparse_map.append(value)
        else:
            records[key] = value
        position = end
    if sparse_map:
        records[b"GNU.sparse.map"] = b",".join(sparse_map)
    return records


def _merge_pax(entry: TarEntry, records: dict[bytes, bytes], offset: int) -> None:
    for key, value in records.items():
        if key == b"path":
            entry.name = value
        elif key == b"linkpath":
            entry.linkname = value
        elif key in (b"uid", b"gid", b"size"):
            if not value.isdigit():
                raise LayerError(f"layer tar: bad PAX {key.decode()} {value!r} at byte {offset}")
            setattr(entry, key.decode(), int(value))
        elif key == b"mtime":
            entry.mtime_ns = _parse_pax_time(value, offset)
        elif key.startswith(_XATTR_KEY_PREFIX):
            name = key[len(_XATTR_KEY_PREFIX) :].decode("utf-8", "surrogateescape")
            entry.xattrs[name] = value
        # GNU.sparse.* records are read by TarReader._pax_sparse. Anything else
        # (atime, ctime, uname, gname, comment, charset, ...) is either ignored
        # on purpose (times, names) or informational.


def _parse_pax_time(value: bytes, offset: int) -> int:
    text = value.decode("ascii", "replace")
    negative = text.startswith("-")
    whole, _, fraction = text.lstrip("-").partition(".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()):
        raise LayerError(f"layer tar: bad PAX mtime {value!r} at byte {offset}")
    nanos = int(whole) * 1_000_000_000 + int((fraction + "000000000")[:9])
    return -nanos if negative else nanos

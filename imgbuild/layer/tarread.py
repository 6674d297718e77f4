"""Reading untrusted tar streams as Go's archive/tar does, with a hard limit on
everything a stream makes us buffer (see docs/store.md, "Reading layers").
"""

from __future__ import annotations

from collections.abc import Callable

from imgbuild.errors import LayerError
from imgbuild.layer.tarformat import (
    BLOCK_SIZE,
    CONTIGUOUS,
    DIRECTORY,
    ENTRY_TYPES,
    GNU_LONG_LINK,
    GNU_LONG_NAME,
    GNU_SPARSE,
    GNU_VOLUME_LABEL,
    HEADER_ONLY_TYPES,
    MAX_META_SIZE,
    MAX_SPARSE_REGIONS,
    PAX_GLOBAL_HEADER,
    PAX_HEADER,
    REGULAR,
    REGULAR_OLD,
    USTAR_MAGIC,
    XATTR_KEY_PREFIX,
    TarEntry,
    padding,
    show_name,
)


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
        if entry.type in HEADER_ONLY_TYPES:
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


def _truncated(offset: int) -> LayerError:
    return LayerError(f"layer tar is truncated: the stream ends at byte {offset}, inside an entry")


def _decode_ustar(block: bytes, offset: int) -> TarEntry:
    # The checksum field counts as eight spaces. Some old writers summed
    # signed bytes: that sum is only worked out when the usual one fails.
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    try:
        stored = _parse_number(block[148:156], "checksum", offset)
    except LayerError:
        stored = None
    if stored != unsigned and stored != _signed_checksum(block, unsigned):
        raise LayerError(
            f"layer tar: invalid header at byte {offset} (bad checksum): "
            "not a tar stream, or corrupt"
        )
    name = _nul_terminated(block[0:100])
    if block[257:265] == USTAR_MAGIC:  # POSIX ustar: names may be split into a prefix
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


def _signed_checksum(block: bytes, unsigned: int) -> int:
    high = block[:148] + block[156:]
    return unsigned - 256 * (len(high) - len(high.translate(None, _HIGH_BYTES)))


_HIGH_BYTES = bytes(range(128, 256))
_OCTAL_DIGITS = b"01234567"


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
    if text.translate(None, _OCTAL_DIGITS):  # anything but octal digits left
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
        elif key.startswith(XATTR_KEY_PREFIX):
            name = key[len(XATTR_KEY_PREFIX) :].decode("utf-8", "surrogateescape")
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

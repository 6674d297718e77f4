"""Encoding tar headers: ustar blocks, with PAX records for what ustar cannot hold.

The bytes are fully under our control, for reproducible layers: no atime or
ctime, no user names, raw binary xattr values as Go's archive/tar writes them.
"""

from __future__ import annotations

import struct

from imgbuild.layer.tarformat import (
    BLOCK_DEVICE,
    BLOCK_SIZE,
    CHAR_DEVICE,
    PAX_HEADER,
    USTAR_MAGIC,
    XATTR_KEY_PREFIX,
    TarEntry,
    padding,
)


def encode_header(entry: TarEntry) -> bytes:
    """The header block(s) for ``entry``.

    A field that does not fit ustar (long or non-ASCII name or link target, big
    uid/size, sub-second or negative mtime) and every xattr go into one PAX
    extended header in front of the ustar block, its records sorted by key.
    """
    return _encode(entry, None, device_fields=True)


def encode_archive_header(entry: TarEntry) -> bytes:
    """The header block(s) for a member of an image archive (``imgbuild save``).

    Image archives were first written with Python's tarfile, and keep its header
    layout so that the same images still give the same archive bytes: the device
    number fields stay empty unless the entry is a device, and a PAX header is
    named ``././@PaxHeader``. Everything else is as ``encode_header`` writes it.
    """
    is_device = entry.type in (CHAR_DEVICE, BLOCK_DEVICE)
    return _encode(entry, b"././@PaxHeader", device_fields=is_device)


def _encode(entry: TarEntry, pax_name: bytes | None, *, device_fields: bool) -> bytes:
    # Most entries of a layer fit ustar as they are: checked first, in one go.
    name, linkname = entry.name, entry.linkname
    if (
        not entry.xattrs
        and len(name) <= 100
        and len(linkname) <= 100
        and name.isascii()
        and linkname.isascii()
        and 0 <= entry.uid < _MAX_7
        and 0 <= entry.gid < _MAX_7
        and 0 <= entry.size < _MAX_11
        and 0 <= entry.mtime_ns < _MAX_MTIME_NS
        and not entry.mtime_ns % 1_000_000_000
    ):
        return _ustar_block(entry, device_fields)
    records: dict[bytes, bytes] = {}
    if len(name) > 100 or not name.isascii():
        records[b"path"] = name
    if len(linkname) > 100 or not linkname.isascii():
        records[b"linkpath"] = linkname
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
    for xattr, value in entry.xattrs.items():
        records[XATTR_KEY_PREFIX + xattr.encode("utf-8", "surrogateescape")] = value

    header = b""
    if records:
        payload = b"".join(_pax_record(key, records[key]) for key in sorted(records))
        pax = TarEntry(name=pax_name or _pax_header_name(name), type=PAX_HEADER, size=len(payload))
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


# The ustar header's fields, in order; each ``s`` field is NUL-padded (and cut)
# to its width. One struct.pack per entry: a layer of 20,000 small files
# spent a quarter of its time filling header blocks field by field.
_USTAR = struct.Struct(
    "100s"  # name
    "48s"  # mode, uid, gid (8 each), size, mtime (12 each): _NUMBERS
    "8s"  # checksum
    "1s"  # type
    "100s"  # linkname
    "8s"  # magic and version
    "64x"  # uname, gname: empty, ids are numeric in layers
    "16s"  # devmajor, devminor (8 each)
    "167x"  # prefix (unused: long names go to PAX) and the block's padding
)
assert _USTAR.size == BLOCK_SIZE
_NUMBERS = b"%07o\x00%07o\x00%07o\x00%011o\x00%011o\x00"
_DEVICES = b"%07o\x00%07o\x00"
_MAX_7 = 8**7
_MAX_11 = 8**11
_MAX_MTIME_NS = _MAX_11 * 1_000_000_000
# The checksum is the byte sum of the block with its own field as spaces; the
# NUL padding adds nothing, so only the fields' own bytes are summed.
_CHECKSUM_PLACEHOLDER = b" " * 8
_CONSTANT_SUM = sum(_CHECKSUM_PLACEHOLDER) + sum(USTAR_MAGIC)


def _fit(value: int, limit: int) -> int:
    # Values that do not fit were moved to PAX records; ustar gets 0 then.
    return value if 0 <= value < limit else 0


def _ustar_block(entry: TarEntry, device_fields: bool = True) -> bytes:
    name, linkname, kind = entry.name[:100], entry.linkname[:100], entry.type
    numbers = _NUMBERS % (
        entry.mode & 0o7777,
        _fit(entry.uid, _MAX_7),
        _fit(entry.gid, _MAX_7),
        _fit(entry.size, _MAX_11),
        _fit(entry.mtime_ns // 1_000_000_000, _MAX_11),
    )
    # else left NUL, as Python's tarfile leaves them on non-devices
    devices = _DEVICES % (_fit(entry.devmajor, _MAX_7), _fit(entry.devminor, _MAX_7)) if device_fields else b""
    checksum = _CONSTANT_SUM + sum(name) + sum(numbers) + sum(kind[:1]) + sum(linkname) + sum(devices)
    return _USTAR.pack(name, numbers, b"%06o\x00 " % checksum, kind, linkname, USTAR_MAGIC, devices)

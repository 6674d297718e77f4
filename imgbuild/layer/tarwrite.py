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
        records[XATTR_KEY_PREFIX + name.encode("utf-8", "surrogateescape")] = value

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


# The ustar header's fields, in order; each ``s`` field is NUL-padded (and cut)
# to its width. One struct.pack per entry: a layer of 20,000 small files
# spent a quarter of its time filling header blocks field by field.
_USTAR = struct.Struct(
    "100s"  # name
    "8s8s8s12s12s"  # mode, uid, gid, size, mtime
    "8s"  # checksum
    "1s"  # type
    "100s"  # linkname
    "8s"  # magic and version
    "32s32s"  # uname, gname: empty, ids are numeric in layers
    "8s8s"  # devmajor, devminor
    "167x"  # prefix (unused: long names go to PAX) and the block's padding
)
assert _USTAR.size == BLOCK_SIZE
_CHECKSUM_PLACEHOLDER = b" " * 8


def _octal(value: int, width: int) -> bytes:
    # Values that do not fit were moved to PAX records; ustar gets 0 then.
    return b"%0*o\x00" % (width - 1, value if _fits_octal(value, width - 1) else 0)


def _ustar_block(entry: TarEntry, device_fields: bool = True) -> bytes:
    # else left NUL, as Python's tarfile leaves them on non-devices
    devmajor = _octal(entry.devmajor, 8) if device_fields else b""
    devminor = _octal(entry.devminor, 8) if device_fields else b""
    fields = [
        entry.name,
        _octal(entry.mode & 0o7777, 8),
        _octal(entry.uid, 8),
        _octal(entry.gid, 8),
        _octal(entry.size, 12),
        _octal(entry.mtime_ns // 1_000_000_000, 12),
        _CHECKSUM_PLACEHOLDER,
        entry.type,
        entry.linkname,
        USTAR_MAGIC,
        b"",
        b"",
        devmajor,
        devminor,
    ]
    # the checksum is the byte sum of the block with its own field as spaces
    fields[6] = b"%06o\x00 " % sum(_USTAR.pack(*fields))
    return _USTAR.pack(*fields)

"""The tar format as image layers use it: POSIX ustar headers plus PAX records.

The definitions shared by ``tarwrite.py`` (encoding headers) and
``tarread.py`` (reading untrusted streams). We encode and decode headers
ourselves rather than through ``tarfile`` so that (a) the bytes we write are fully
under our control (reproducible layers: no atime/ctime, no user names, raw binary
xattr values as Go's archive/tar writes them) and (b) reading an untrusted layer
has hard limits on everything it makes us buffer.

Names, link targets and xattr values are ``bytes`` throughout: Linux file names
are bytes, and a layer may carry names that are not valid UTF-8.
"""

from __future__ import annotations

from dataclasses import field

from imgbuild.dataclass import dataclass

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
HEADER_ONLY_TYPES = (HARDLINK, SYMLINK, CHAR_DEVICE, BLOCK_DEVICE, DIRECTORY, FIFO)

# The most we buffer for one PAX or GNU long-name header (Go's limit too).
MAX_META_SIZE = 1 << 20
# The most data regions one sparse file may list (each costs a Python tuple).
MAX_SPARSE_REGIONS = 1 << 18

XATTR_KEY_PREFIX = b"SCHILY.xattr."
USTAR_MAGIC = b"ustar\x0000"


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


def show_name(name: bytes) -> str:
    """A name as it should appear in a message (undecodable bytes escaped)."""
    return repr(name.decode("utf-8", "backslashreplace"))

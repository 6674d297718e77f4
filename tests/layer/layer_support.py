"""Helpers for the layer tests: building real trees, reading them back, writing layers.

Everything here works on real files (the tests run as root, so devices, chown
and security.* xattrs are real), and trees are compared by what a container
would see: type, mode, owner, mtime, content, link target, device, xattrs and
which paths share an inode.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import socket
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

from imgbuild.layer import apply_layer, write_layer

# A valid VFS_CAP_REVISION_2 security.capability value: cap_net_raw, effective.
# The kernel checks the format, so a made-up value would not even be settable.
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def set_times(path: Path | bytes, seconds: int) -> None:
    os.utime(path, (seconds, seconds), follow_symlinks=False)


def build_every_kind(root: Path) -> None:
    """A changeset with every kind of entry a layer can carry, with awkward metadata."""
    root.mkdir(parents=True, exist_ok=True)
    for directory in ("bin", "etc", "data", "other", "dev", "run", "opaque"):
        (root / directory).mkdir()
    (root / "tmp").mkdir(mode=0o777)
    os.chmod(root / "tmp", 0o1777)

    (root / "etc" / "hostname").write_bytes(b"box\n")
    tool = root / "bin" / "tool"
    tool.write_bytes(b"\x7fELF pretend binary\n")
    os.chmod(tool, 0o4755)
    os.setxattr(tool, "security.capability", CAP_NET_RAW)
    os.setxattr(tool, "user.comment", b"binary \x00\xff value")
    sgid = root / "bin" / "sgid"
    sgid.write_bytes(b"#!/bin/sh\n")
    os.chown(sgid, 1000, 2000)
    os.chmod(sgid, 0o2711)  # after chown, which clears setgid
    os.setxattr(root / "etc", "user.dir-note", b"on a directory")

    big = root / "data" / "big"
    # Several 1 MiB chunks; seeded, so that two builds have the same content.
    big.write_bytes(random.Random(7).randbytes(3 * 1024 * 1024 + 123))
    os.link(big, root / "data" / "big-link")
    os.link(big, root / "other" / "big-link2")
    (root / "data" / "empty").write_bytes(b"")
    locked = root / "data" / "no-permissions"
    locked.write_bytes(b"x")
    os.chmod(locked, 0)
    far = root / "data" / "far-uid"
    far.write_bytes(b"uid does not fit ustar's 7 octal digits")
    os.chown(far, 3_000_000, 3_000_001)
    old = root / "data" / "before-1970"
    old.write_bytes(b"old")
    set_times(old, -86400 * 365)
    future = root / "data" / "year-2100"
    future.write_bytes(b"new")
    set_times(future, 4102444800)
    (root / "data" / "name with spaces").write_bytes(b"s")
    (root / "data" / "ünïcödé").write_bytes(b"u")
    with open(os.path.join(os.fsencode(root / "data"), b"latin1-\xe9"), "wb") as f:
        f.write(b"not utf-8 name")

    os.symlink("data/big", root / "relative-link")
    os.symlink("/etc/passwd", root / "absolute-link")
    os.symlink("nowhere/at/all", root / "dangling-link")
    os.chown(root / "relative-link", 33, 44, follow_symlinks=False)

    os.mkfifo(root / "run" / "fifo", 0o600)
    os.mknod(root / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "dev" / "loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mknod(root / "dev" / "big-minor", stat.S_IFCHR | 0o600, os.makedev(250, 300000))
    os.chmod(root / "dev" / "null", 0o666)  # mknod's mode went through the umask
    os.chmod(root / "dev" / "loop0", 0o660)

    make_whiteout(root / "removed")
    (root / "opaque" / "kept").write_bytes(b"kept")
    os.setxattr(root / "opaque", "trusted.overlay.opaque", b"y")

    # Directory mtimes last: creating entries above changed them.
    for index, directory in enumerate(sorted(p for p in root.rglob("*") if p.is_dir())):
        set_times(directory, 1_600_000_000 + index)


def make_whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


def add_socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(os.fspath(path))
    server.close()


def read_tree(root: Path, *, with_mtimes: bool = True) -> dict[bytes, tuple]:
    """Every path under root (bytes, relative) with what a container sees of it.

    The last field names the first path (in sorted order) of the hardlink group
    the path belongs to, counting only links visible in this tree, or is None.
    """
    tree: dict[bytes, tuple] = {}
    paths_of_inode: dict[tuple[int, int], list[bytes]] = {}
    base = os.fsencode(root)

    def visit(relative: bytes) -> None:
        path = os.path.join(base, relative) if relative else base
        for name in sorted(os.listdir(path)):
            child = relative + b"/" + name if relative else name
            full = os.path.join(base, child)
            info = os.lstat(full)
            if not stat.S_ISDIR(info.st_mode):
                paths_of_inode.setdefault((info.st_dev, info.st_ino), []).append(child)
            tree[child] = (
                stat.filemode(info.st_mode),
                info.st_uid,
                info.st_gid,
                info.st_mtime_ns // 1_000_000_000 if with_mtimes else None,
                _content_digest(full, info),
                os.readlink(full) if stat.S_ISLNK(info.st_mode) else None,
                (os.major(info.st_rdev), os.minor(info.st_rdev))
                if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else None,
                _visible_xattrs(full),
            )
            if stat.S_ISDIR(info.st_mode):
                visit(child)

    visit(b"")
    groups = {p: paths[0] for paths in paths_of_inode.values() if len(paths) > 1 for p in paths}
    return {path: fields + (groups.get(path),) for path, fields in tree.items()}


def _content_digest(path: bytes, info: os.stat_result) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _visible_xattrs(path: bytes) -> tuple:
    names = os.listxattr(path, follow_symlinks=False)
    kept = [n for n in names if not n.startswith("trusted.") or n == "trusted.overlay.opaque"]
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in kept))


def write_blob(changeset: Path, blob: Path, **options):
    with open(blob, "wb") as out:
        return write_layer(changeset, out, **options)


def apply_blob(blob: Path | bytes, target: Path, **options):
    target.mkdir(parents=True, exist_ok=True)
    if isinstance(blob, bytes):
        return apply_layer(io.BytesIO(blob), target, **options)
    with open(blob, "rb") as f:
        return apply_layer(f, target, **options)


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes | None], end: bool = True) -> bytes:
    """A tar stream written by Python's tarfile (an independent writer), for hand-made layers.

    With ``end=False`` the end-of-archive blocks are cut off, as in a truncated download.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
        entries_end = archive.offset
    return buffer.getvalue() if end else buffer.getvalue()[:entries_end]


def member(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes | None = None, **fields):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = fields.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
    info.mtime = fields.pop("mtime", 1_700_000_000)
    for key, value in fields.items():
        setattr(info, key, value)
    if data is not None:
        info.size = len(data)
    return info, data


def list_with_python_tarfile(blob: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(blob) as archive:  # auto-detects gzip; zstd is not supported there
        return archive.getmembers()


def decompress_with_cli(blob: Path, compression: str) -> bytes:
    """The uncompressed tar as Debian's gzip/zstd tools see it."""
    if compression == "uncompressed":
        return blob.read_bytes()
    command = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dcq"]}[compression]
    return subprocess.run([*command, os.fspath(blob)], check=True, capture_output=True).stdout

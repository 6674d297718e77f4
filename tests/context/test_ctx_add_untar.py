"""ADD's archive extraction against real tar writers and hostile archives.

Archives made by GNU tar and bsdtar (long names, a sparse file, hardlinks,
xattrs, each compression) are added with imgbuild and extracted with
``tar -x`` into a scratch directory; the two trees must match in names,
types, modes, owners, times, contents, link targets, devices, xattrs and
hardlink groups. Hostile archives plant a symlink with one entry and write
through it with a later one: nothing outside the destination may change.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from layer.layer_support import CAP_NET_RAW, read_tree, set_times

from imgbuild.builder.copy import archive_compression, copy_into
from imgbuild.context.dockerignore import IgnoreMatcher
from imgbuild.context.source import BuildContext
from imgbuild.errors import BuildError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for owners, devices and xattrs"),
]

LONG_DIR = "d" * 60 + "/" + "e" * 60  # a path over ustar's 100 bytes
LONG_NAME = "f" * 150  # a name over 100 bytes by itself


def packed_tree(root: Path) -> Path:
    """What the archives hold: every kind of entry, with metadata that needs extensions."""
    root.mkdir()
    (root / "bin").mkdir()
    tool = root / "bin" / "tool"
    tool.write_bytes(b"#!tool\n")
    os.chown(tool, 1000, 2000)
    os.chmod(tool, 0o4755)  # after chown, which clears setuid
    os.setxattr(tool, "user.note", b"binary \x00\xff value")
    # Not on a hardlinked file: as in Docker, a hardlink's header chowns the
    # shared inode, and chown drops security.capability (tar -x keeps it).
    capable = root / "bin" / "capable"
    capable.write_bytes(b"ping\n")
    os.setxattr(capable, "security.capability", CAP_NET_RAW)
    os.setxattr(root / "bin", "user.dir-note", b"on a directory")
    os.link(tool, root / "bin" / "tool-hardlink")
    far = root / "far-uid"
    far.write_bytes(b"uid over ustar's 7 octal digits")
    os.chown(far, 3_000_000, 3_000_001)

    long_dir = root / LONG_DIR
    long_dir.mkdir(parents=True)
    (long_dir / LONG_NAME).write_bytes(b"long name")
    os.link(long_dir / LONG_NAME, root / "hardlink-to-long-name")
    os.symlink("../" * 2 + LONG_DIR + "/" + LONG_NAME, long_dir / "long-target")
    os.symlink("bin/tool", root / "relative-link")
    os.symlink("/etc/passwd", root / "absolute-link")

    with open(root / "sparse.img", "wb") as image:
        image.write(b"start" * 1000)
        image.seek(3 << 20)
        image.write(b"middle")
        image.truncate(5 << 20)

    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(root / "null", 0o666)  # mknod's mode went through the umask
    os.chmod(root / "fifo", 0o640)
    private = root / "private"
    private.mkdir()
    os.chown(private, 33, 44)
    os.chmod(private, 0o2750)
    (private / "empty").write_bytes(b"")

    for index, path in enumerate(sorted(root.rglob("*"), reverse=True)):
        set_times(path, 1_600_000_000 + index)  # children before their directories
    return root


# GNU tar writes GNU long names ('L'/'K') in gnu format and PAX records in
# posix format; xattrs only in posix. bsdtar the same with its own writer.
WRITERS = {
    "gnu-tar-gnu": ["tar", "--format=gnu", "--sparse"],
    "gnu-tar-posix": ["tar", "--format=posix", "--sparse", "--xattrs", "--xattrs-include=*"],
    "bsdtar-gnutar": ["bsdtar", "--format", "gnutar"],
    "bsdtar-pax": ["bsdtar", "--format", "pax", "--xattrs", "--read-sparse"],
}
COMPRESSORS = {
    "none": None,
    "gzip": ["gzip", "-c"],
    "bzip2": ["bzip2", "-c"],
    "xz": ["xz", "-c"],
    "zstd": ["zstd", "-c", "-q"],
}


def make_archive(source: Path, writer: str, compression: str, out: Path) -> None:
    tar = subprocess.run(
        [*WRITERS[writer], "-C", source, "-cf", "-", "."], check=True, capture_output=True
    ).stdout
    if COMPRESSORS[compression] is not None:
        tar = subprocess.run(
            COMPRESSORS[compression], input=tar, check=True, capture_output=True
        ).stdout
    out.write_bytes(tar)


# Each archive is extracted by the program that wrote it, as root: owners,
# modes, xattrs and times as the archive says.
EXTRACTORS = {
    "tar": ["tar", "--xattrs", "--xattrs-include=*", "--same-owner", "--same-permissions",
            "--numeric-owner", "-x"],
    "bsdtar": ["bsdtar", "--xattrs", "--same-owner", "-p", "--numeric-owner", "-x"],
}  # fmt: skip


def tar_extract(program: str, archive: Path, target: Path) -> None:
    target.mkdir()
    command = [*EXTRACTORS[program], "-C", target, "-f", archive]
    subprocess.run(command, check=True, capture_output=True)


def context_with(tmp_path: Path, name: str, data: bytes) -> BuildContext:
    root = tmp_path / "ctx"
    root.mkdir(exist_ok=True)
    (root / name).write_bytes(data)
    return BuildContext(root, IgnoreMatcher([]))


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_add_extracts_what_tar_extracts(tmp_path: Path, writer: str, compression: str):
    source = packed_tree(tmp_path / "src")
    archive = tmp_path / "ctx" / "bundle"  # no suffix: detected by content
    archive.parent.mkdir()
    make_archive(source, writer, compression, archive)
    if writer.startswith("gnu-tar"):
        assert LONG_NAME.encode() in archive.read_bytes() or compression != "none"
    assert archive_compression(archive) == compression

    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    ctx = BuildContext(tmp_path / "ctx", IgnoreMatcher([]))
    copy_into(rootfs, ctx.select("bundle"), "/dest", is_add=True)
    reference = tmp_path / "reference"
    tar_extract(WRITERS[writer][0], archive, reference)

    added = read_tree(rootfs / "dest")
    assert added == read_tree(reference)
    # The tree is what was packed (the writers dropped nothing we compare).
    expected = read_tree(source)
    if writer.startswith("gnu-tar-gnu") or writer == "bsdtar-gnutar":
        # gnu format carries no xattrs
        expected = {path: fields[:7] + ((),) + fields[8:] for path, fields in expected.items()}
    assert added == expected
    sparse = rootfs / "dest" / "sparse.img"
    if writer != "bsdtar-gnutar":  # bsdtar writes sparse entries in pax format only
        assert sparse.stat().st_blocks * 512 < 1 << 20  # the hole stayed a hole


# -- hostile archives ---------------------------------------------------------------


def tar_bytes(*members: tuple[dict, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for fields, data in members:
            fields = dict(fields)
            info = tarfile.TarInfo(fields.pop("name"))
            info.mtime = 1_234_567_890
            for key, value in fields.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def symlink(name: str, target: str) -> tuple[dict, None]:
    return {"name": name, "type": tarfile.SYMTYPE, "linkname": target}, None


def directory(name: str, mode: int = 0o700) -> tuple[dict, None]:
    return {"name": name, "type": tarfile.DIRTYPE, "mode": mode}, None


def file(name: str, data: bytes, mode: int = 0o644) -> tuple[dict, bytes]:
    return {"name": name, "mode": mode}, data


class Outside:
    """A directory beside the rootfs with a secret file and a subdirectory, and
    everything about it that an escaping write would change."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "outside"
        self.root.mkdir()
        (self.root / "secret").write_bytes(b"secret")
        (self.root / "sub").mkdir()
        for path in (self.root / "secret", self.root / "sub", self.root):
            set_times(path, 1_000_000_000)
        self.before = self.state()

    def state(self) -> list[tuple]:
        result = []
        for path in sorted([self.root, *self.root.rglob("*")]):
            info = os.lstat(path)
            content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
            result.append((str(path), info.st_mode, info.st_uid, info.st_gid, info.st_nlink,
                           info.st_mtime_ns, content))  # fmt: skip
        return result


def add(tmp_path: Path, data: bytes) -> Path:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(exist_ok=True)
    ctx = context_with(tmp_path, "evil.tar", data)
    copy_into(rootfs, ctx.select("evil.tar"), "/dest", is_add=True)
    return rootfs / "dest"


def test_writes_through_planted_symlinks_stay_inside(tmp_path: Path):
    outside = Outside(tmp_path)
    host = str(outside.root)
    data = tar_bytes(
        symlink("a", host),  # the destination's own /<host path>, not the host's
        file("a/x", b"via a", 0o4777),
        file("a/secret", b"overwritten?"),
        directory("a/sub", 0o777),
        symlink("deep", host + "/sub/new"),
        file("deep/y", b"via deep"),
        symlink("root", "/"),
        symlink("up", "root/.."),  # ".." of the destination's root is the root
        file("up/z", b"via up"),
        symlink("leaf", host + "/secret"),
        file("leaf", b"replaces the link, not the secret"),
        symlink("dirlink", host),
        directory("dirlink", 0o777),  # replaces the link; the host dir keeps its mode
    )
    dest = add(tmp_path, data)
    assert outside.state() == outside.before
    inside = dest / host.lstrip("/")
    assert (inside / "x").read_bytes() == b"via a"
    assert (inside / "secret").read_bytes() == b"overwritten?"
    assert stat.S_IMODE(os.lstat(inside / "sub").st_mode) == 0o777
    assert (inside / "sub" / "new" / "y").read_bytes() == b"via deep"
    assert (dest / "z").read_bytes() == b"via up"
    assert not os.path.islink(dest / "leaf") and (dest / "leaf").read_bytes().startswith(b"replaces")
    assert os.path.isdir(dest / "dirlink") and not os.path.islink(dest / "dirlink")


def test_hardlink_through_a_planted_symlink_does_not_reach_out(tmp_path: Path):
    outside = Outside(tmp_path)
    data = tar_bytes(
        symlink("a", str(outside.root)),
        ({"name": "stolen", "type": tarfile.LNKTYPE, "linkname": "a/secret"}, None),
    )
    with pytest.raises(BuildError, match="No such file or directory"):
        add(tmp_path, data)  # a/secret is looked up inside the destination: not there
    assert outside.state() == outside.before


def test_directory_times_are_not_set_through_a_later_symlink(tmp_path: Path):
    # "d/sub" gets its time after all entries are in; by then "d" is a symlink
    # to the host directory that has a "sub" of its own.
    outside = Outside(tmp_path)
    data = tar_bytes(
        directory("d"),
        directory("d/sub"),
        symlink("d", str(outside.root)),
    )
    dest = add(tmp_path, data)
    assert outside.state() == outside.before
    assert os.readlink(dest / "d") == str(outside.root)


DAMAGED = {
    "ends inside data": lambda whole: whole[: 512 + 2000],
    "gzip cut short": lambda whole: gzip.compress(whole)[:-30],
    # Python's tarfile took a bad header after the first for the end of the
    # archive and dropped the rest; Go's reader (Docker's) and ours refuse it.
    "corrupt second header": lambda whole: whole[: 11 * 512] + b"\x01" * 512 + whole[12 * 512 :],
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_a_damaged_archive_is_refused_with_its_name(tmp_path: Path, damage: str):
    whole = tar_bytes(file("big", b"x" * 5000), file("after", b"y"))  # "after" at block 11
    with pytest.raises(BuildError, match=r"ADD failed: evil.tar is a damaged archive: "):
        add(tmp_path, DAMAGED[damage](whole))

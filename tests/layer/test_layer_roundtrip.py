"""Changeset directory -> layer blob -> snapshot directory gives back the same tree."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from layer.layer_support import (
    CAP_NET_RAW,
    add_socket,
    apply_blob,
    build_every_kind,
    decompress_with_cli,
    member,
    read_tree,
    set_times,
    tar_bytes,
    write_blob,
)

from imgbuild.errors import LayerError, UsageError
from imgbuild.layer import changeset_is_empty, write_layer

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for devices, chown and xattrs"),
]
COMPRESSIONS = ["gzip", "zstd", "uncompressed"]
MEDIA_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "uncompressed": "application/vnd.oci.image.layer.v1.tar",
}


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_every_entry_type_round_trips(tmp_path: Path, compression: str):
    changeset = tmp_path / "changeset"
    build_every_kind(changeset)
    add_socket(changeset / "run" / "socket")  # sockets cannot be in a layer
    blob = tmp_path / "layer"

    digests = write_blob(changeset, blob, compression=compression)
    stats = apply_blob(blob, tmp_path / "snapshot")

    expected = read_tree(changeset)
    del expected[b"run/socket"]
    got = read_tree(tmp_path / "snapshot")
    assert got == expected
    # Spot checks of what matters most, so a failure says what broke.
    assert got[b"bin/tool"][0] == "-rwsr-xr-x"
    assert ("security.capability", CAP_NET_RAW) in got[b"bin/tool"][7]
    assert got[b"removed"][0].startswith("c") and got[b"removed"][6] == (0, 0)
    assert ("trusted.overlay.opaque", b"y") in got[b"opaque"][7]
    assert got[b"data/big-link"][8] == got[b"other/big-link2"][8] == b"data/big"
    assert got[b"data/far-uid"][1:3] == (3_000_000, 3_000_001)
    assert stats.diff_id == digests.diff_id
    assert stats.bytes == digests.uncompressed_size


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_digests_describe_the_blob(tmp_path: Path, compression: str):
    changeset = tmp_path / "changeset"
    build_every_kind(changeset)
    blob = tmp_path / "layer"

    digests = write_blob(changeset, blob, compression=compression)

    data = blob.read_bytes()
    tar = decompress_with_cli(blob, compression)  # Debian's gzip/zstd, not our code
    assert digests.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert digests.size == len(data)
    assert digests.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert digests.uncompressed_size == len(tar)
    assert digests.media_type == MEDIA_TYPES[compression]
    if compression != "uncompressed":
        assert digests.size < digests.uncompressed_size


def test_long_names_and_link_targets(tmp_path: Path):
    changeset = tmp_path / "changeset"
    deep = changeset / ("d" * 120) / ("e" * 200)  # path of 321+ bytes
    deep.mkdir(parents=True)
    long_file = deep / ("f" * 255)  # the longest name a component can have
    long_file.write_bytes(b"long")
    os.link(long_file, changeset / "link-to-long")
    os.symlink("t" * 150, changeset / "symlink-over-100")
    os.symlink("/".join(["u" * 200] * 20), changeset / "symlink-over-4000")
    blob = tmp_path / "layer"

    write_blob(changeset, blob)
    apply_blob(blob, tmp_path / "snapshot")

    assert read_tree(tmp_path / "snapshot") == read_tree(changeset)
    names = [m.name for m in tarfile.open(blob).getmembers()]  # Python's reader agrees
    assert str(long_file.relative_to(changeset)) in names


def test_apply_reads_tars_written_by_gnu_tar(tmp_path: Path):
    """Our reader against an independent writer: GNU tar, PAX and GNU long-name formats."""
    source = tmp_path / "source"
    build_every_kind(source)
    # Not overlay metadata here: GNU tar would store the whiteout as a real
    # device, and a layer must not be able to set trusted.* xattrs.
    (source / "removed").unlink()
    os.removexattr(source / "opaque", "trusted.overlay.opaque")
    deep = source / ("x" * 150) / ("y" * 150)
    deep.mkdir(parents=True)
    (deep / "file").write_bytes(b"deep")
    os.symlink("z" * 300, source / "long-target")
    set_times(source, 1_600_000_000)
    for directory in (deep, deep.parent):
        set_times(directory, 1_600_000_001)
    expected = read_tree(source)

    for tar_format in ("pax", "gnu"):
        blob = tmp_path / f"{tar_format}.tar.gz"
        subprocess.run(
            [
                "tar",
                f"--format={tar_format}",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-czf",
                os.fspath(blob),
                "-C",
                os.fspath(source),
                ".",
            ],
            check=True,
        )
        snapshot = tmp_path / f"snapshot-{tar_format}"
        apply_blob(blob, snapshot)
        got = read_tree(snapshot)
        if tar_format == "gnu":  # GNU format has no xattrs
            expected_here = {p: v[:7] + v[8:] for p, v in expected.items()}
            got = {p: v[:7] + v[8:] for p, v in got.items()}
        else:
            expected_here = expected
        assert got == expected_here, tar_format


def test_python_tarfile_reads_our_headers_without_atime_ctime_or_user_names(tmp_path: Path):
    changeset = tmp_path / "changeset"
    build_every_kind(changeset)
    blob = tmp_path / "layer.tar"

    write_blob(changeset, blob, compression="uncompressed")

    members = tarfile.open(blob).getmembers()
    assert members, "no entries"
    allowed = {"path", "linkpath", "uid", "gid", "size", "mtime"}
    for info in members:
        assert info.uname == "" and info.gname == "", info.name
        extra = {k for k in info.pax_headers if not k.startswith("SCHILY.xattr.")}
        assert extra <= allowed, (info.name, extra)
    by_name = {info.name: info for info in members}
    assert by_name["bin/tool"].mode == 0o4755
    assert by_name["tmp"].mode == 0o1777 and by_name["tmp"].isdir()
    assert "removed" not in by_name  # the whiteout device itself is not stored
    assert ".wh.removed" in by_name and by_name[".wh.removed"].isfile()
    assert "opaque/.wh..wh..opq" in by_name
    assert by_name["data/before-1970"].mtime == -86400 * 365
    # Directories are named with a trailing "/" in the raw header, as Docker writes them.
    raw = blob.read_bytes()
    assert b"etc/\x00" in raw


def test_later_entries_replace_earlier_ones(tmp_path: Path):
    layer = tar_bytes(
        member("a", data=b"file first"),
        member("a", tarfile.DIRTYPE, mode=0o700),
        member("a/inside", data=b"in"),
        member("b", tarfile.DIRTYPE),
        member("b/child", data=b"gone with b"),
        member("b", data=b"now a file"),
        member("c", tarfile.SYMTYPE, linkname="/etc"),
        member("c", tarfile.DIRTYPE, mode=0o750),
        member("d", tarfile.DIRTYPE, mode=0o755, uid=1),
        member("d", tarfile.DIRTYPE, mode=0o711, uid=2),  # updates metadata only
        member("d/x", data=b"x"),
    )
    target = tmp_path / "snapshot"
    apply_blob(layer, target)

    tree = read_tree(target)
    assert tree[b"a"][0] == "drwx------"
    assert tree[b"a/inside"][4] == hashlib.sha256(b"in").hexdigest()
    assert tree[b"b"][0] == "-rw-r--r--" and b"b/child" not in tree
    assert tree[b"c"][0] == "drwxr-x---"
    assert tree[b"d"][:2] == ("drwx--x--x", 2) and b"d/x" in tree


def test_leading_dot_slash_names_and_root_entry_are_accepted(tmp_path: Path):
    layer = tar_bytes(
        member("./", tarfile.DIRTYPE, mode=0o700),
        member("./etc", tarfile.DIRTYPE),
        member("./etc/motd", data=b"hi"),
        member("implicit/parent/file", data=b"p"),
    )
    target = tmp_path / "snapshot"
    apply_blob(layer, target)

    tree = read_tree(target)
    assert tree[b"etc/motd"][4] == hashlib.sha256(b"hi").hexdigest()
    assert tree[b"implicit"][0] == "drwxr-xr-x"  # created like Docker: 0755, root
    assert (target.stat().st_mode & 0o777) == 0o755  # the root entry is ignored


def test_media_type_is_a_hint_but_must_be_a_layer_type(tmp_path: Path):
    changeset = tmp_path / "changeset"
    changeset.mkdir()
    (changeset / "f").write_bytes(b"f")
    blob = tmp_path / "layer"
    write_blob(changeset, blob, compression="zstd")

    # Docker's gzip media type on a zstd blob: the magic bytes decide.
    apply_blob(blob, tmp_path / "a", media_type="application/vnd.docker.image.rootfs.diff.tar.gzip")
    assert (tmp_path / "a" / "f").read_bytes() == b"f"
    with pytest.raises(LayerError, match="unsupported layer media type"):
        apply_blob(
            blob, tmp_path / "b", media_type="application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
        )


def test_compression_levels(tmp_path: Path):
    changeset = tmp_path / "changeset"
    changeset.mkdir()
    (changeset / "text").write_bytes(b"the same line again\n" * 20000)
    sizes = {}
    for compression, level in [("gzip", 1), ("gzip", 9), ("zstd", 1), ("zstd", 19)]:
        digests = write_blob(changeset, tmp_path / "layer", compression=compression, level=level)
        sizes[compression, level] = digests.size
        assert apply_blob(tmp_path / "layer", tmp_path / f"x{compression}{level}").diff_id == (
            digests.diff_id
        )
    assert sizes["gzip", 9] < sizes["gzip", 1]
    assert sizes["zstd", 19] < sizes["zstd", 1]


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "bzip2"},
        {"compression": "gzip", "level": 10},
        {"compression": "zstd", "level": 0},
        {"compression": "uncompressed", "level": 1},
        {"source_date_epoch": -1},
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, options: dict):
    with pytest.raises(UsageError):
        write_layer(tmp_path, io.BytesIO(), **options)


def test_changeset_is_empty(tmp_path: Path):
    assert changeset_is_empty(tmp_path)
    (tmp_path / "tmp").mkdir()  # a directory copied up is a change, as in Docker
    assert not changeset_is_empty(tmp_path)


def test_missing_changeset_is_a_layer_error(tmp_path: Path):
    with pytest.raises(LayerError, match="not a directory"):
        write_layer(tmp_path / "nope", io.BytesIO())

"""Layers that Go's archive/tar and containerd read are read by us too.

Most layers in the wild were written by Go programs (Docker, containerd,
buildah, umoci, skopeo) or by GNU tar and libarchive, and each has its quirks:
umoci writes a "/" root entry and no end-of-archive blocks, GNU tar prefixes
names with "./", Go leaves the padding of the last entry to Close. The rules
(docs/store.md, "Reading layers") follow Go's reader and containerd's applier;
these tests pin each one, then extract the output of real tar writers and
compare the tree with the one they packed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from layer.layer_support import apply_blob, member, read_tree, set_times, tar_bytes

from imgbuild.errors import LayerError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for chown and devices"),
]


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE):
    return member(name, kind, linkname=target)


# -- where a stream ends ----------------------------------------------------


def test_no_end_blocks_is_a_complete_archive(tmp_path: Path):
    blob = tar_bytes(member("a", data=b"A" * 600), member("b", data=b"B"), end=False)
    assert len(blob) % 512 == 0 and not blob.endswith(bytes(1024))
    stats = apply_blob(blob, tmp_path / "t")
    assert (tmp_path / "t" / "a").read_bytes() == b"A" * 600
    assert (tmp_path / "t" / "b").read_bytes() == b"B"
    assert stats.entries == 2
    assert stats.diff_id == "sha256:" + hashlib.sha256(blob).hexdigest()


def test_stream_ending_inside_the_last_padding(tmp_path: Path):
    blob = tar_bytes(member("a", data=b"xyz"), end=False)
    apply_blob(blob[: 512 + 3 + 7], tmp_path / "t")  # header, data, 7 of 509 padding bytes
    assert (tmp_path / "t" / "a").read_bytes() == b"xyz"


def test_one_zero_block_then_the_end(tmp_path: Path):
    blob = tar_bytes(member("a", data=b"x"), end=False) + bytes(512)
    apply_blob(blob, tmp_path / "t")
    assert (tmp_path / "t" / "a").read_bytes() == b"x"


def test_data_after_the_end_marker_is_ignored_but_hashed(tmp_path: Path):
    blob = tar_bytes(member("a", data=b"x")) + b"trailing junk, not a header" + bytes(100)
    stats = apply_blob(blob, tmp_path / "t")
    assert sorted(os.listdir(tmp_path / "t")) == ["a"]
    assert stats.diff_id == "sha256:" + hashlib.sha256(blob).hexdigest()


def test_an_empty_stream_is_an_empty_layer(tmp_path: Path):
    stats = apply_blob(b"", tmp_path / "t")
    assert stats.entries == 0 and os.listdir(tmp_path / "t") == []


def test_gzip_of_several_members(tmp_path: Path):
    whole = tar_bytes(member("a", data=b"first"), member("b", data=b"second"))
    blob = gzip.compress(whole[:1024]) + gzip.compress(whole[1024:])
    stats = apply_blob(blob, tmp_path / "t")
    assert (tmp_path / "t" / "b").read_bytes() == b"second"
    assert stats.diff_id == "sha256:" + hashlib.sha256(whole).hexdigest()


def test_zstd_of_several_frames(tmp_path: Path):
    whole = tar_bytes(member("a", data=b"first"), member("b", data=b"second"))
    compressor = zstandard.ZstdCompressor()
    blob = compressor.compress(whole[:1024]) + compressor.compress(whole[1024:])
    apply_blob(blob, tmp_path / "t")
    assert (tmp_path / "t" / "a").read_bytes() == b"first"


# -- names ------------------------------------------------------------------


@pytest.mark.parametrize("root_name", ["/", "./", ".", "//"])
def test_the_root_entry_is_skipped(tmp_path: Path, root_name: str):
    target = tmp_path / "t"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    blob = tar_bytes(
        member(root_name, tarfile.DIRTYPE, mode=0o700, uid=1234), member("/f", data=b"f")
    )
    apply_blob(blob, target)
    info = target.stat()
    assert (info.st_mode & 0o7777, info.st_uid) == (0o755, 0)
    assert (target / "f").read_bytes() == b"f"


def test_absolute_dot_and_plain_names_are_one_entry(tmp_path: Path):
    blob = tar_bytes(
        member("/etc", tarfile.DIRTYPE),
        member("/etc/conf", data=b"one"),
        member("./etc/conf", data=b"two"),
        member("etc//conf", data=b"three"),
        member("etc/sub/../other", data=b"cleaned"),
    )
    apply_blob(blob, tmp_path / "t")
    assert sorted(os.listdir(tmp_path / "t" / "etc")) == ["conf", "other"]
    assert (tmp_path / "t" / "etc" / "conf").read_bytes() == b"three"


def test_absolute_hardlink_target_resolves_inside_the_root(tmp_path: Path):
    blob = tar_bytes(
        member("/bin", tarfile.DIRTYPE),
        member("/bin/busybox", data=b"\x7fELF", mode=0o755),
        link("/bin/sh", "/bin/busybox", tarfile.LNKTYPE),
        link("./bin/ls", "./bin/busybox", tarfile.LNKTYPE),
    )
    apply_blob(blob, tmp_path / "t")
    busybox = (tmp_path / "t" / "bin" / "busybox").stat()
    assert busybox.st_nlink == 3
    assert (tmp_path / "t" / "bin" / "sh").stat().st_ino == busybox.st_ino


# -- a later entry replaces an earlier one ------------------------------------


def test_later_duplicates_replace_earlier_entries(tmp_path: Path):
    blob = tar_bytes(
        member("file", data=b"old"),
        member("file", data=b"new"),
        member("was-file", data=b"x"),
        member("was-file", tarfile.DIRTYPE, mode=0o750),
        member("was-file/inside", data=b"i"),
        member("was-dir", tarfile.DIRTYPE),
        member("was-dir/child", data=b"c"),
        member("was-dir", data=b"now a file"),
        link("was-link", "file"),
        member("was-link", data=b"not a link"),
        member("dir", tarfile.DIRTYPE, mode=0o755, uid=1),
        member("dir", tarfile.DIRTYPE, mode=0o700, uid=2),
    )
    target = tmp_path / "t"
    apply_blob(blob, target)
    assert (target / "file").read_bytes() == b"new"
    assert (target / "was-file" / "inside").read_bytes() == b"i"
    assert (target / "was-file").stat().st_mode & 0o777 == 0o750
    assert (target / "was-dir").read_bytes() == b"now a file"
    assert not (target / "was-link").is_symlink()
    assert (target / "was-link").read_bytes() == b"not a link"
    info = (target / "dir").stat()
    assert (info.st_mode & 0o777, info.st_uid) == (0o700, 2)


# -- real tar writers ---------------------------------------------------------


def packed_tree(root: Path) -> Path:
    """A tree that every tar format can hold: long (ustar-splittable) names, links, set-id bits."""
    root.mkdir()
    deep = root / "usr" / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / "long-file-name").write_bytes(b"deep")
    (root / "bin").mkdir()
    busybox = root / "bin" / "busybox"
    busybox.write_bytes(b"\x7fELF pretend")
    os.chmod(busybox, 0o4755)
    os.link(busybox, root / "bin" / "sh")
    os.symlink("busybox", root / "bin" / "ls")
    os.symlink("/etc/nowhere", root / "dangling")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    os.chown(root / "etc" / "passwd", 0, 42)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    for directory, names, files in os.walk(root, topdown=False):
        for name in names + files:
            set_times(os.path.join(directory, name), 1_600_000_000)
    return root


WRITERS = {
    "gnu-tar gnu ./": ["tar", "--format=gnu", "-C", "{src}", "-cf", "{out}", "."],
    "gnu-tar posix ./": ["tar", "--format=posix", "-C", "{src}", "-cf", "{out}", "."],
    "gnu-tar ustar ./": ["tar", "--format=ustar", "-C", "{src}", "-cf", "{out}", "."],
    "gnu-tar gnu plain names": ["tar", "--format=gnu", "-C", "{src}", "-cf", "{out}", "{names}"],
    "gnu-tar posix absolute names": [
        "tar", "--format=posix", "--absolute-names", r"--transform=s,^\./,/,",
        "-C", "{src}", "-cf", "{out}", ".",
    ],
    "bsdtar pax ./": ["bsdtar", "--format", "pax", "-C", "{src}", "-cf", "{out}", "."],
    "bsdtar ustar plain names": ["bsdtar", "--format", "ustar", "-C", "{src}", "-cf", "{out}", "{names}"],
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_real_tar_writers(tmp_path: Path, writer: str):
    program = WRITERS[writer][0]
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed (scripts/install-deps.sh --test installs it)")
    source = packed_tree(tmp_path / "src")
    out = tmp_path / "layer.tar"
    command = []
    for word in WRITERS[writer]:
        if word == "{names}":
            command += sorted(os.listdir(source))
        else:
            command.append(word.format(src=source, out=out))
    subprocess.run(command, check=True, capture_output=True)
    target = tmp_path / "t"
    target.mkdir()
    apply_blob(out, target)
    assert read_tree(target) == read_tree(source)


def test_python_tarfile_gnu_format(tmp_path: Path):
    source = packed_tree(tmp_path / "src")
    out = tmp_path / "layer.tar"
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as archive:
        archive.add(source, arcname="/")
    apply_blob(out, tmp_path / "t")
    assert read_tree(tmp_path / "t") == read_tree(source)


# -- GNU sparse files -----------------------------------------------------------


def sparse_tree(root: Path) -> Path:
    """A file with data, a 3 MiB hole, more data and a trailing hole; and a plain file."""
    root.mkdir()
    with open(root / "disk.img", "wb") as image:
        image.write(b"start" * 1000)
        image.seek(3 << 20)
        image.write(b"middle")
        image.truncate(5 << 20)
    (root / "plain").write_bytes(b"plain")
    return root


@pytest.mark.parametrize(
    "options",
    [
        ["--format=gnu", "--sparse"],  # old GNU 'S' entries, the map in the header
        ["--format=posix", "--sparse", "--sparse-version=0.0"],
        ["--format=posix", "--sparse", "--sparse-version=0.1"],
        ["--format=posix", "--sparse", "--sparse-version=1.0"],
    ],
    ids=["gnu", "pax-0.0", "pax-0.1", "pax-1.0"],
)
def test_gnu_tar_sparse_files(tmp_path: Path, options: list[str]):
    source = sparse_tree(tmp_path / "src")
    out = tmp_path / "layer.tar"
    subprocess.run(["tar", *options, "-C", source, "-cf", out, "."], check=True)
    written = out.read_bytes()
    assert b"GNU.sparse" in written or options[0] == "--format=gnu"  # really sparse entries
    target = tmp_path / "t"
    target.mkdir()
    apply_blob(out, target)
    assert read_tree(target) == read_tree(source)
    assert (target / "disk.img").stat().st_blocks * 512 < 1 << 20  # the hole stayed a hole


def test_bsdtar_sparse_file(tmp_path: Path):
    source = sparse_tree(tmp_path / "src")
    out = tmp_path / "layer.tar"
    subprocess.run(["bsdtar", "--format", "pax", "-C", source, "-cf", out, "."], check=True)
    target = tmp_path / "t"
    target.mkdir()
    apply_blob(out, target)
    assert read_tree(target) == read_tree(source)


def sparse_member(regions: list[tuple[int, int]], size: int, data: bytes):
    info, _ = member("sparse", data=data)
    info.pax_headers = {
        "GNU.sparse.major": "0",
        "GNU.sparse.minor": "1",
        "GNU.sparse.size": str(size),
        "GNU.sparse.map": ",".join(f"{offset},{length}" for offset, length in regions),
    }
    return info, data


def test_a_huge_hole_costs_no_disk(tmp_path: Path):
    blob = tar_bytes(sparse_member([(0, 2), (1 << 40, 2)], (1 << 40) + 2, b"abcd"))
    apply_blob(blob, tmp_path / "t")
    info = (tmp_path / "t" / "sparse").stat()
    assert info.st_size == (1 << 40) + 2 and info.st_blocks * 512 < 1 << 20
    with open(tmp_path / "t" / "sparse", "rb") as file:
        assert file.read(4) == b"ab\0\0"
        file.seek(1 << 40)
        assert file.read() == b"cd"


@pytest.mark.parametrize(
    "regions, size, match",
    [
        ([(0, 4), (2, 4)], 100, "overlap"),
        ([(10, 4), (0, 4)], 100, "overlap"),
        ([(0, 4), (98, 4)], 100, "beyond"),
        ([(0, 3)], 100, "other data"),
    ],
    ids=["overlapping", "out-of-order", "beyond-the-size", "data-not-listed"],
)
def test_bad_sparse_maps_are_refused(tmp_path: Path, regions, size, match):
    data = b"x" * 8 if match != "other data" else b"x" * 4
    with pytest.raises(LayerError, match=match):
        apply_blob(tar_bytes(sparse_member(regions, size, data)), tmp_path / "t")


def _with_checksum(header: bytes, checksum: int) -> bytes:
    return header[:148] + b"%06o\x00 " % checksum + header[156:]


@pytest.mark.parametrize("form", ["unsigned", "signed"])
def test_header_checksums_as_go_takes_them(tmp_path: Path, form: str):
    # Go accepts the checksum summed over unsigned or over signed bytes (old
    # Sun tar); a name with bytes above 127 tells the two apart.
    name = "caf\xe9-\xff".encode("latin-1")
    info, data = member(name.decode("latin-1"), data=b"x")
    header = info.tobuf(tarfile.USTAR_FORMAT, encoding="latin-1", errors="strict")
    archive = bytearray(header + data.ljust(512, b"\0") + bytes(1024))
    blank = header[:148] + b" " * 8 + header[156:]
    unsigned = sum(blank)
    signed = unsigned - 256 * sum(1 for byte in blank if byte > 127)
    assert unsigned != signed
    archive[:512] = _with_checksum(header, unsigned if form == "unsigned" else signed)
    apply_blob(bytes(archive), tmp_path)
    assert os.listdir(tmp_path) == [name.decode("utf-8", "surrogateescape")]

    archive[:512] = _with_checksum(header, unsigned + 1)
    with pytest.raises(LayerError, match="bad checksum"):
        apply_blob(bytes(archive), tmp_path / "again")

"""The same directory written twice, in two different places, gives byte-identical blobs."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
from layer.layer_support import apply_blob, build_every_kind, set_times, write_blob

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for devices, chown and xattrs"),
]
COMPRESSIONS = ["gzip", "zstd", "uncompressed"]
NAMES = [f"n{i:02d}" for i in range(30)]


def build(root: Path, *, reverse: bool) -> None:
    """build_every_kind plus a directory whose entries are created in a chosen order."""
    build_every_kind(root)
    order = list(reversed(NAMES)) if reverse else NAMES
    (root / "order").mkdir()
    for name in order:
        (root / "order" / name).write_bytes(name.encode())


def paths_of(root: Path) -> list[Path]:
    return sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True)  # deepest first


def copy_times(source: Path, target: Path, *, atime: int) -> None:
    """Same mtimes as ``source``, but a different atime (and, inevitably, ctime)."""
    for path in paths_of(source):
        other = target / path.relative_to(source)
        mtime_ns = path.lstat().st_mtime_ns
        os.utime(other, ns=(atime * 10**9, mtime_ns), follow_symlinks=False)


def all_times(root: Path, seconds: int) -> None:
    for path in paths_of(root):
        set_times(path, seconds)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_same_tree_in_two_roots_gives_identical_blobs(tmp_path: Path, compression: str):
    first, second = tmp_path / "machine-a" / "upper", tmp_path / "elsewhere" / "b" / "upper"
    build(first, reverse=False)
    build(second, reverse=True)
    set_times(first / "data" / "big", 1_500_000_000)
    copy_times(first, second, atime=2_000_000_000)
    assert first.stat().st_ino != second.stat().st_ino

    one = write_blob(first, tmp_path / "one", compression=compression)
    two = write_blob(second, tmp_path / "two", compression=compression)

    assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()
    assert one == two


def test_different_mtimes_are_clamped_to_source_date_epoch(tmp_path: Path):
    epoch = 1_700_000_000
    first, second = tmp_path / "a", tmp_path / "b"
    build(first, reverse=False)
    build(second, reverse=True)
    all_times(first, epoch + 1000)  # both newer than the epoch, but not equal
    all_times(second, epoch + 99999)
    for root in (first, second):  # an old file keeps its own mtime
        set_times(root / "etc" / "hostname", 1_000_000_000)
        set_times(root / "etc", epoch + 5)

    for compression in COMPRESSIONS:
        one = write_blob(first, tmp_path / "one", compression=compression, source_date_epoch=epoch)
        two = write_blob(second, tmp_path / "two", compression=compression, source_date_epoch=epoch)
        assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes(), compression
        assert one == two

    write_blob(first, tmp_path / "layer.tar", compression="uncompressed", source_date_epoch=epoch)
    mtimes = {m.name: m.mtime for m in tarfile.open(tmp_path / "layer.tar")}
    assert mtimes["etc/hostname"] == 1_000_000_000
    assert mtimes["bin/tool"] == mtimes["etc"] == mtimes["data"] == epoch
    # Without the epoch the two trees differ, so the clamping above did the work.
    write_blob(first, tmp_path / "one", compression="uncompressed")
    write_blob(second, tmp_path / "two", compression="uncompressed")
    assert (tmp_path / "one").read_bytes() != (tmp_path / "two").read_bytes()


def test_gzip_header_carries_no_name_and_no_time(tmp_path: Path):
    (tmp_path / "changeset").mkdir()
    (tmp_path / "changeset" / "f").write_bytes(b"f")
    write_blob(tmp_path / "changeset", tmp_path / "layer.gz")

    header = (tmp_path / "layer.gz").read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] & 0x08 == 0  # FNAME flag not set
    assert header[4:8] == b"\x00\x00\x00\x00"  # MTIME 0


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_extracted_snapshot_written_again_gives_the_same_blob(tmp_path: Path, compression: str):
    """write(changeset) == write(apply(write(changeset))): nothing is lost or invented."""
    changeset = tmp_path / "changeset"
    build(changeset, reverse=False)

    first = write_blob(changeset, tmp_path / "one", compression=compression)
    apply_blob(tmp_path / "one", tmp_path / "snapshot")
    second = write_blob(tmp_path / "snapshot", tmp_path / "two", compression=compression)

    assert first == second

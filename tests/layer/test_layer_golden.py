"""The writer's bytes are pinned: a fixed tree gives the digests it gave before
the writer was rewritten for speed (issue 12), in every compression.

The digests below were written by the writer of main at a28b4a2 (one ``bytes``
object per header and per chunk, hashed piece by piece). A change to the tar
layout, the header encoding, the cutting into gzip blocks or the compressor
parameters changes them, and every image built from the same tree would get
new digests: if that is ever meant, it needs its own decision, not a speed fix.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
from pathlib import Path

import pytest
from layer.layer_support import build_every_kind, set_times

from imgbuild.layer import write_layer
from imgbuild.store import Store

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for devices, chown and xattrs"),
]

BLOCK = 1 << 20  # the writer's gzip block; files below straddle and fill it
DIFF_ID = "sha256:7192430c50c89a1f76e007d00a169a7cfe9f231abbca43c24a9078d2c91623bc"
PINNED = {  # compression -> the blob's digest
    "uncompressed": DIFF_ID,
    "gzip": "sha256:564d533d2968c45c3c8be60a9bee851952ebc79a33a3cdd3704f1418ff761f86",
    "zstd": "sha256:d1d0257818bbc6041f145f8cab559496483fa5c4a17effb28cefe9ee73b03017",
}


def build_pinned_tree(root: Path) -> None:
    """build_every_kind plus many files of awkward sizes: empty, one byte, whole
    512-byte blocks, exactly the writer's 1 MiB block, a little over it, and
    hundreds of small ones so that headers and data fall across block edges;
    long and non-ASCII names (PAX records) and xattrs on small files."""
    old_umask = os.umask(0o022)
    try:
        build_every_kind(root)
        rng = random.Random(2026)
        many = root / "many"
        many.mkdir()
        for index in range(700):
            size = rng.choice([0, 1, 511, 512, 513, 1023, 4096, rng.randint(1, 20000)])
            (many / f"f{index:04}").write_bytes(rng.randbytes(size))
        for size in (BLOCK - 512, BLOCK, BLOCK + 1, 2 * BLOCK + 513):
            (root / f"exact-{size}").write_bytes(rng.randbytes(size))
        deep = root / ("d" * 90) / ("e" * 90)
        deep.mkdir(parents=True)
        (deep / "long-name-over-100-bytes").write_bytes(b"long")
        (root / "naïve").write_bytes(b"non-ascii name")
        noted = many / "f0003"
        os.setxattr(noted, "user.note", rng.randbytes(300))
        os.chmod(noted, 0o640)
        os.chown(noted, 12, 34)
    finally:
        os.umask(old_umask)
    for path in [*root.rglob("*"), root]:
        set_times(path, 1_650_000_000)


@pytest.mark.parametrize("compression", sorted(PINNED))
def test_pinned_tree_gives_the_pinned_digests(tmp_path: Path, compression: str):
    build_pinned_tree(tmp_path / "tree")
    out = io.BytesIO()

    digests = write_layer(tmp_path / "tree", out, compression=compression, source_date_epoch=1_700_000_000)

    assert f"sha256:{hashlib.sha256(out.getvalue()).hexdigest()}" == digests.digest
    assert (digests.diff_id, digests.digest) == (DIFF_ID, PINNED[compression])


@pytest.mark.parametrize("compression", sorted(PINNED))
def test_pinned_tree_written_into_the_store_gives_the_pinned_blob(tmp_path: Path, compression: str):
    # Into a store blob, the writer takes the blob's digest from the store's
    # own hash of what it wrote: it must still be the pinned one, and the name
    # and size of the file the store keeps.
    build_pinned_tree(tmp_path / "tree")
    store = Store(tmp_path / "store")

    with store.blob_writer() as blob:
        digests = write_layer(tmp_path / "tree", blob, compression=compression, source_date_epoch=1_700_000_000)

    assert (digests.diff_id, digests.digest) == (DIFF_ID, PINNED[compression])
    stored = store.blob_path(digests.digest).read_bytes()
    assert f"sha256:{hashlib.sha256(stored).hexdigest()}" == digests.digest
    assert len(stored) == digests.size


def test_set_times_gives_every_entry_the_mtime_its_tar_entry_records(tmp_path: Path):
    """write_layer(set_times=True) leaves the changeset as its blob extracts:
    whole-second mtimes clamped to SOURCE_DATE_EPOCH, on every kind of entry,
    and the blob is the one written without it (times change after each entry)."""
    tree = tmp_path / "tree"
    build_pinned_tree(tree)
    epoch = 1_700_000_000
    later = epoch + 500
    os.utime(tree / "many" / "f0001", ns=(0, later * 10**9 + 123))
    os.utime(tree / "etc", ns=(0, (epoch - 9) * 10**9 + 999_999_999))
    os.utime(tree / "relative-link", ns=(0, epoch * 10**9 + 5), follow_symlinks=False)
    os.utime(tree / "removed", ns=(0, -(10**9) * 7 - 7), follow_symlinks=False)  # before 1970
    plain = write_layer(tree, io.BytesIO(), compression="uncompressed", source_date_epoch=epoch)

    written = write_layer(tree, io.BytesIO(), compression="uncompressed", source_date_epoch=epoch, set_times=True)

    assert written == plain
    times = {path.relative_to(tree): path.lstat().st_mtime_ns for path in tree.rglob("*")}
    assert times[Path("many/f0001")] == epoch * 10**9
    assert times[Path("etc")] == (epoch - 9) * 10**9
    assert times[Path("relative-link")] == epoch * 10**9
    assert times[Path("removed")] == -8 * 10**9  # whole seconds round down
    assert all(mtime % 10**9 == 0 and mtime <= epoch * 10**9 for mtime in times.values())


@pytest.mark.parametrize("files", [0, 1, 1020, 1025])
def test_diff_id_is_the_tars_digest_below_and_above_one_buffer(tmp_path: Path, files: int):
    """A tar that fits the writer's first 1 MiB buffer is hashed there and then;
    a longer one by its hashing thread (a one-byte file takes a header and a
    data block, 1 KiB: 1020 of them and the end blocks just fit, 1025 do not).
    Both must be the digest of the tar itself."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for index in range(files):
        (tree / f"f{index:04}").write_bytes(b"x")
    out = io.BytesIO()
    digests = write_layer(tree, out, compression="gzip")
    tar = gzip.decompress(out.getvalue())
    assert len(tar) == digests.uncompressed_size
    assert digests.diff_id == f"sha256:{hashlib.sha256(tar).hexdigest()}"

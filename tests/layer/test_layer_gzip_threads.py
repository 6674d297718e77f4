"""gzip layers compressed by threads (ISA-L, issue 12): standard gzip whose
bytes depend only on the tar, and no thread left behind when writing fails."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import random
import subprocess
import threading
from pathlib import Path

import pytest
from isal import igzip_threaded

from imgbuild.layer import write_layer
from imgbuild.layer.write import compress_tar


def make_tree(root: Path) -> None:
    """Over 5 MiB, so the tar spans several of the writer's 1 MiB blocks:
    text that compresses, random bytes that do not, and many small files."""
    rng = random.Random(12)
    (root / "src").mkdir(parents=True)
    text = rng.randbytes(64 * 1024).hex().encode()
    for index in range(300):
        size = rng.randint(100, 9000)
        (root / "src" / f"f{index:03}.txt").write_bytes(text[index : index + size])
    (root / "blob.bin").write_bytes(rng.randbytes(3 * 1024 * 1024 + 77))
    (root / "big.txt").write_bytes(text * 20)


class ReadsOf:
    """A tar stream that hands out pieces of one odd size."""

    def __init__(self, data: bytes, size: int):
        self._stream = io.BytesIO(data)
        self._size = size

    def read(self, _size: int) -> bytes:
        return self._stream.read(self._size)


def test_same_tar_gives_the_same_gzip_blob_however_it_is_written(tmp_path: Path):
    make_tree(tmp_path / "tree")
    blob = io.BytesIO()
    written = write_layer(tmp_path / "tree", blob, compression="gzip", source_date_epoch=0)
    tar = gzip.decompress(blob.getvalue())
    assert f"sha256:{hashlib.sha256(tar).hexdigest()}" == written.diff_id
    assert len(tar) > 5 * 1024 * 1024

    # recompressing the tar, read in pieces that never match the tar's own
    # entries, gives byte for byte the blob write_layer gave
    for piece in (4093, 1 << 20, 3 << 20):
        again = io.BytesIO()
        digests = compress_tar(ReadsOf(tar, piece), again, "gzip")
        assert digests.digest == written.digest, f"read in pieces of {piece}"
        assert again.getvalue() == blob.getvalue()


def threaded_gzip(data: bytes, threads: int) -> bytes:
    """ISA-L's threaded writer at level 1 in 1 MiB blocks: write_layer's gzip without a level."""
    out = io.BytesIO()
    with igzip_threaded.open(out, "wb", compresslevel=1, threads=threads, block_size=1 << 20) as writer:
        writer.write(data)
    return out.getvalue()


def test_a_layer_of_one_block_gives_the_bytes_of_two_compressing_threads(tmp_path: Path, monkeypatch):
    # A tar that fits in one block is compressed without ISA-L's threaded
    # writer (write.py's _OneBlockGzip): the blob must still be the one that
    # writer gives with two threads, or a machine's layer would differ.
    asked = []  # the thread counts write_layer opens ISA-L's writer with
    real_open = igzip_threaded.open
    monkeypatch.setattr(igzip_threaded, "open", lambda *a, **kw: asked.append(kw["threads"]) or real_open(*a, **kw))
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "app.py").write_text("print('hello')\n" * 200)
    blob = io.BytesIO()
    written = write_layer(tmp_path / "tree", blob, compression="gzip", source_date_epoch=0)
    tar = gzip.decompress(blob.getvalue())
    assert len(tar) < 1 << 20 and asked == []
    assert blob.getvalue() == threaded_gzip(tar, threads=2)
    assert written.digest == f"sha256:{hashlib.sha256(blob.getvalue()).hexdigest()}"
    asked.clear()  # threaded_gzip's own
    make_tree(tmp_path / "big")  # several blocks: a thread per core
    write_layer(tmp_path / "big", io.BytesIO(), compression="gzip")
    assert asked == [max(1, len(os.sched_getaffinity(0)))]


@pytest.mark.parametrize("size", [1024, 10 * 1024, (1 << 20) - 512])
@pytest.mark.parametrize("content", ["text", "random"])
def test_one_block_gzip_matches_the_threaded_writer_up_to_a_block(size: int, content: str):
    # up to the largest tar below a block (tars grow in 512-byte records),
    # for data that deflates and for data that does not (stored blocks)
    rng = random.Random(size)
    data = rng.randbytes(size) if content == "random" else rng.randbytes(size // 2 + 1).hex().encode()[:size]
    out = io.BytesIO()
    digests = compress_tar(io.BytesIO(data), out, "gzip")
    assert out.getvalue() == threaded_gzip(data, threads=2) == threaded_gzip(data, threads=1)
    assert digests.diff_id == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert gzip.decompress(out.getvalue()) == data


def test_threaded_gzip_is_standard_gzip_for_gnu_gzip(tmp_path: Path):
    make_tree(tmp_path / "tree")
    layer = tmp_path / "layer.tar.gz"
    with open(layer, "wb") as out:
        written = write_layer(tmp_path / "tree", out, compression="gzip")
    subprocess.run(["gzip", "-t", str(layer)], check=True)
    tar = subprocess.run(["gzip", "-dc", str(layer)], check=True, capture_output=True).stdout
    assert f"sha256:{hashlib.sha256(tar).hexdigest()}" == written.diff_id


def test_an_explicit_level_is_zlib_at_that_level(tmp_path: Path):
    make_tree(tmp_path / "tree")
    fast, best = io.BytesIO(), io.BytesIO()
    one = write_layer(tmp_path / "tree", fast, compression="gzip", level=1)
    nine = write_layer(tmp_path / "tree", best, compression="gzip", level=9)
    assert one.diff_id == nine.diff_id
    assert nine.size < one.size
    # zlib's header marks level 9 as "maximum compression" (XFL 2), level 1 as "fastest" (XFL 4)
    assert best.getvalue()[8] == 2 and fast.getvalue()[8] == 4


class FullDisk:
    """A blob file whose disk fills up after ``room`` bytes."""

    def __init__(self, room: int):
        self.room = room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)


def test_a_failed_write_stops_the_compressor_threads(tmp_path: Path):
    make_tree(tmp_path / "tree")
    before = set(threading.enumerate())
    with pytest.raises(OSError) as raised:
        write_layer(tmp_path / "tree", FullDisk(room=512 * 1024), compression="gzip")
    assert raised.value.errno == errno.ENOSPC  # the store's disk-full handling sees ENOSPC
    left = [thread for thread in threading.enumerate() if thread not in before and thread.is_alive()]
    for thread in left:
        thread.join(timeout=5)
    assert [thread for thread in left if thread.is_alive()] == []

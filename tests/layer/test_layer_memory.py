"""Writing and applying a big layer streams: peak memory does not grow with the layer.

Each side runs in its own Python process, which resets its peak resident set
(VmHWM, via /proc/self/clear_refs) before the work and reads it after: a child
of a big pytest process would otherwise inherit the parent's high-water mark
(subprocess forks with vfork), so ru_maxrss would measure pytest, not the layer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root, like real extraction"),
]
PROJECT = Path(__file__).resolve().parents[2]
LAYER_SIZE = 300 << 20
PEAK_LIMIT_KIB = 100 << 10
GROWTH_LIMIT_KIB = 16 << 10

MEASURE = """
import sys
from pathlib import Path
from imgbuild.layer import apply_layer, write_layer

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # reset VmHWM to what is resident now

side, compression, source, destination = sys.argv[1:]
if side == "write":
    level = 1 if compression == "gzip" else None  # gzip -1: the test stays quick
    with open(destination, "wb") as out:
        digests = write_layer(Path(source), out, compression=compression, level=level)
    size = digests.uncompressed_size
else:
    Path(destination).mkdir()
    with open(source, "rb") as blob:
        size = apply_layer(blob, Path(destination)).bytes
print(size, peak_kib())
"""


def measure(side: str, compression: str, source: Path, destination: Path) -> tuple[int, int]:
    """(uncompressed layer bytes, peak RSS in KiB) of one side, in a fresh process."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE,
            side,
            compression,
            os.fspath(source),
            os.fspath(destination),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.fspath(PROJECT)},
    )
    size, peak = result.stdout.split()
    return int(size), int(peak)


def make_changeset(root: Path, size: int) -> None:
    root.mkdir()
    with open(root / "big", "wb") as f:
        # Sparse-ish: mostly holes (cheap to make and to compress), with real
        # random data scattered through it so the compressor has work to do.
        f.truncate(size)
        for offset in range(0, size, 30 << 20):
            f.seek(offset)
            f.write(os.urandom(1 << 20))
    (root / "small").write_bytes(b"small")


def peaks(tmp_path: Path, compression: str, size: int) -> tuple[int, int]:
    """Peak RSS (KiB) of writing and of applying a layer with a ``size``-byte file."""
    changeset = tmp_path / f"changeset-{size}"
    make_changeset(changeset, size)
    blob = tmp_path / f"layer-{size}"
    written, write_peak = measure("write", compression, changeset, blob)
    applied, apply_peak = measure("apply", compression, blob, tmp_path / f"snapshot-{size}")
    assert written == applied > size  # the whole layer really went through
    assert (tmp_path / f"snapshot-{size}" / "big").stat().st_size == size
    return write_peak, apply_peak


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_peak_memory_does_not_grow_with_the_layer(tmp_path: Path, compression: str):
    try:
        small_write, small_apply = peaks(tmp_path, compression, LAYER_SIZE // 10)
        big_write, big_apply = peaks(tmp_path, compression, LAYER_SIZE)
    finally:
        # pytest keeps recent tmp dirs; do not leave ~700 MB behind.
        for child in tmp_path.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    assert big_write - small_write < GROWTH_LIMIT_KIB, (small_write, big_write)
    assert big_apply - small_apply < GROWTH_LIMIT_KIB, (small_apply, big_apply)
    assert big_apply < PEAK_LIMIT_KIB, f"apply peaked at {big_apply // 1024} MiB"
    if compression == "gzip":
        # zstd's worker buffers scale with the number of CPUs (threads=-1), so
        # its absolute peak is machine-dependent; its growth is checked above.
        assert big_write < PEAK_LIMIT_KIB, f"write peaked at {big_write // 1024} MiB"

"""The layer writer reads a tree that may change under it (``imgbuild import``
of a directory someone else can write to): a directory swapped for a symlink
is never followed, a file swapped for a FIFO is never opened for reading.

The swap happens at the worst moment, deterministically: while the writer
hands the tar header of the entry to its output, before it reads what the
header announced. The writer hands its output the tar in whole pieces of
1 MiB, so a filler file first puts that header at the very end of the first
piece.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from imgbuild.errors import LayerError
from imgbuild.layer.write import write_layer

PIECE = 1 << 20  # what the writer hands its output at a time (layer/write.py _BLOCK)
HEADER = 512


def add_filler(tree: Path) -> None:
    """A file sorted first whose header and data fill the first piece but one
    header: the next entry's header ends that piece."""
    (tree / "0-filler").write_bytes(bytes(PIECE - 2 * HEADER))


class _SwapOnHeader(io.BytesIO):
    """An output that runs ``swap`` once, when a piece ending with the header naming ``name`` passes."""

    def __init__(self, name: bytes, swap):
        super().__init__()
        self._name = name
        self._swap = swap

    def write(self, data) -> int:
        if self._swap is not None and bytes(data[-HEADER:][:100]).rstrip(b"\0") == self._name:
            swap, self._swap = self._swap, None
            swap()
        return super().write(data)


def _write_in_thread(tree: Path, out: io.BytesIO) -> tuple[threading.Thread, list]:
    outcome: list = []

    def target():
        try:
            outcome.append(write_layer(tree, out, compression="uncompressed"))
        except Exception as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=20)
    return thread, outcome


def test_a_directory_swapped_for_a_symlink_is_not_followed(tmp_path):
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "inside").write_text("mine\n")
    add_filler(tree)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "host-secret").write_text("not yours\n")

    def swap():
        os.rename(tree / "d", tmp_path / "d-moved")
        os.symlink(outside, tree / "d")

    out = _SwapOnHeader(b"d/", swap)
    thread, outcome = _write_in_thread(tree, out)
    assert not thread.is_alive()
    if not isinstance(outcome[0], LayerError):
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
            pytest.fail(f"the writer went on through the symlink: {tar.getnames()}")
    assert "d changed while it was written" in str(outcome[0])


def test_a_file_swapped_for_a_fifo_is_not_opened_for_reading(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "victim").write_text("regular\n")
    add_filler(tree)

    def swap():
        os.rename(tree / "victim", tmp_path / "victim-moved")
        os.mkfifo(tree / "victim")

    thread, outcome = _write_in_thread(tree, _SwapOnHeader(b"victim", swap))
    if thread.is_alive():  # blocked opening the FIFO: unblock it so the thread can end
        with open(tree / "victim", "wb"):
            pass
        thread.join(timeout=10)
        pytest.fail("the writer blocked opening a FIFO that replaced a regular file")
    assert isinstance(outcome[0], LayerError), outcome
    assert "changed while it was written" in str(outcome[0])

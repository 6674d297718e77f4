"""``imgbuild build - < context.tar``: the build context (or just a Dockerfile) on stdin.

As ``docker build -``: standard input is a tar archive (plain, gzip, bzip2,
xz or zstd, recognised by content) that becomes the context, its
``Dockerfile`` included; anything else is a Dockerfile, built with an empty
context. The archive is hostile input: it is spooled into the store's work
directory and extracted there by the same code ADD uses (``layer/untar.py``),
so no entry lands outside the directory; both are removed after the build.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from imgbuild.context.buildfiles import MAX_BUILD_FILE
from imgbuild.dataclass import dataclass
from imgbuild.errors import ContextError, UntarError, UsageError, disk_full, is_disk_full
from imgbuild.layer.untar import archive_compression, untar
from imgbuild.store import Store, remove_tree

CHUNK = 1 << 20


@dataclass
class StdinContext:
    """A build context read from stdin: an archive unpacked, or a lone Dockerfile."""

    directory: Path  # the context: the archive's entries, or empty
    dockerfile_text: str | None  # the Dockerfile when stdin was one, not an archive


@contextmanager
def context_from_stdin(store: Store, stream: BinaryIO | None = None) -> Iterator[StdinContext]:
    """The context that came on ``stream`` (default: stdin), removed afterwards."""
    work = store.make_temp_dir("stdin-context-")
    try:
        spool = work / "stdin"
        _spool(stream or sys.stdin.buffer, spool, store)
        directory = work / "context"
        directory.mkdir(mode=0o755)
        with open(spool, "rb") as raw:
            if archive_compression(raw) is None:
                text = _dockerfile_text(raw)
                yield StdinContext(directory, text)
                return
            raw.seek(0)
            try:
                untar(raw, directory, chown=None, source="the build context on standard input")
            except UntarError as error:
                raise ContextError(str(error)) from None
        os.unlink(spool)  # the extracted copy is what the build reads
        yield StdinContext(directory, None)
    finally:
        remove_tree(work)


def _spool(stream: BinaryIO, path: Path, store: Store) -> None:
    """Copy stdin to ``path``: the archive is read twice (what it is, then its entries)."""
    try:
        with open(path, "wb") as out:
            while chunk := stream.read(CHUNK):
                out.write(chunk)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full(error, "reading the build context from standard input", store.root) from None
        raise


def _dockerfile_text(raw: BinaryIO) -> str:
    raw.seek(0)
    data = raw.read(MAX_BUILD_FILE + 1)
    if not data.strip():
        raise UsageError("standard input is empty: give a context tar archive or a Dockerfile (build - < FILE)")
    if len(data) > MAX_BUILD_FILE:
        raise UsageError(
            f"standard input is not a tar archive, and larger than {MAX_BUILD_FILE >> 20} MiB for a Dockerfile"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(
            "standard input is neither a tar archive (plain, gzip, bzip2, xz, zstd) nor a UTF-8 Dockerfile"
        ) from None

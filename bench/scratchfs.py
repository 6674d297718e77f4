"""A journaled ext4 on a loop device, for the benchmark's work directory.

On ext4 without a journal (the root filesystem of our machines), the kernel
does not reuse an inode freed less than 60 s ago, or less than 360 s ago while
the inode's table block is dirty (fs/ext4/ialloc.c: recently_deleted). Until
then, every file created in that block group scans past each such inode. With
a journal the kernel makes no such check.

This skews the benchmark:
- The cold cases delete each tool's old state, some 150,000 files a run.
- The next builds then took 1.5-2.5x as long, all of it kernel time. Under
  perf, some 40 % of the busy samples of an apt-get RUN were recently_deleted
  and the block lookups under it.
- A `sync` and 61 s of settle were not enough. The first new inode written
  into a table block dirties it again, and that gives the block's other freed
  inodes the six-minute window.

So by default the benchmark makes its own ext4 on such a disk: Debian's
default filesystem, with a journal, on a sparse file beside the work
directory, the same for every tool. Only the scratch filesystem is ours to
unmount and detach; nothing below it is touched here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tools import BenchError

DEFAULT_SIZE_GIB = 48


class ScratchUnavailable(BenchError):
    """The scratch filesystem could not be made: the run goes on without it."""


@contextmanager
def scratch_filesystem(parent: Path, size_gib: int, log: Path) -> Iterator[Path]:
    """Mount a new journaled ext4 of size_gib (a sparse file in parent) and
    yield its mount point; unmount it, detach its loop device and delete the
    file afterwards."""
    # Short: dockerd's containerd puts its socket five levels below the work
    # dir, and a socket's path has at most 107 bytes.
    stem = parent / f"imgbuild-fs-{os.getpid()}"
    image, mountpoint = stem.with_suffix(".img"), stem
    _check_room(parent, size_gib)
    try:
        with open(image, "xb") as file:
            file.truncate(size_gib << 30)
    except OSError as error:
        raise ScratchUnavailable(f"cannot make {image}: {error.strerror}") from error
    device, made = "", None
    try:
        # Inode tables and journal written now: no ext4lazyinit writing in
        # the background of the timed builds.
        _run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
              str(image)], log)
        # Direct I/O: one page cache (the scratch filesystem's), as on a disk.
        device = _run(["losetup", "--find", "--show", "--direct-io=on", str(image)], log).strip()
        mountpoint.mkdir()
        made = mountpoint
        _run(["mount", "-t", "ext4", device, str(mountpoint)], log)
    except BaseException as error:
        _release(image, made, device, log)
        if isinstance(error, OSError):
            raise ScratchUnavailable(f"cannot make {mountpoint}: {error.strerror}") from error
        raise
    try:
        yield mountpoint
    finally:
        # If this fails, the device and the file stay for the user to release
        # (the error says how): nothing is detached under a mounted filesystem.
        _unmount(mountpoint, device, log)
        _release(image, mountpoint, device, log)


def _release(image: Path, mountpoint: Path | None, device: str, log: Path) -> None:
    if device:
        _run(["losetup", "--detach", device], log)
    if mountpoint is not None:
        mountpoint.rmdir()
    image.unlink()


def _check_room(parent: Path, size_gib: int) -> None:
    try:
        free = shutil.disk_usage(parent).free
    except OSError as error:
        raise ScratchUnavailable(f"cannot use {parent}: {error.strerror}") from error
    if free < size_gib << 30:
        raise ScratchUnavailable(
            f"{parent} has {free / 2**30:.0f} GiB free, the scratch filesystem needs "
            f"{size_gib} GiB: pass a smaller --scratch-gib, or --scratch-fs off"
        )


def _unmount(mountpoint: Path, device: str, log: Path) -> None:
    try:
        _run(["umount", str(mountpoint)], log)
    except ScratchUnavailable as error:
        raise BenchError(
            f"could not unmount the scratch filesystem {mountpoint} ({error}); once nothing "
            f"uses it: umount {mountpoint} && losetup --detach {device}"
        ) from error


def _run(argv: list[str], log: Path) -> str:
    try:
        process = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ScratchUnavailable(f"{argv[0]}: {error}") from error
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n{process.stdout}{process.stderr}")
    if process.returncode != 0:
        raise ScratchUnavailable(f"{' '.join(argv)} failed: {process.stderr.strip()}")
    return process.stdout

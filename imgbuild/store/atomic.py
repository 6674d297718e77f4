"""Atomic file writes (temp file in the same directory tree, fsync, rename),
and a file system's sync beside other work."""

from __future__ import annotations

import ctypes
import os
import tempfile
import threading
from pathlib import Path

from imgbuild.errors import StoreError, disk_full, is_disk_full

_libc = ctypes.CDLL(None, use_errno=True)


def write_file_atomic(path: Path, data: bytes, tmp_dir: Path | None = None, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix."""
    tmp_dir = tmp_dir or path.parent
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        _remove_quietly(tmp_name)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


class FileSystemSync:
    """syncfs(2) of the file system that holds ``directory``, started at once in
    a thread of its own: the caller goes on (the sync waits on the disk, not on
    the CPU, and releases the GIL) and calls ``wait`` where what was written
    before the start must be on the disk. A ``with`` block waits for the thread
    whatever happens in it."""

    def __init__(self, directory: Path, doing: str):
        self.directory = directory
        self.doing = doing
        self.error: OSError | None = None
        self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._sync, name="syncfs")
        try:
            self._thread.start()
        except BaseException:
            os.close(self._fd)
            raise

    def __enter__(self) -> FileSystemSync:
        return self

    def __exit__(self, *exc_info) -> None:
        self._join()

    def wait(self) -> None:
        """Return once the sync is done; its failure (a disk error, a full disk) raised here."""
        self._join()
        if self.error is not None:
            if is_disk_full(self.error):
                raise disk_full(self.error, self.doing, self.directory)
            raise StoreError(
                f"cannot sync the file system under {self.directory} while {self.doing}: "
                f"{self.error.strerror}; what was written there may not be on the disk (check `dmesg`)"
            )

    def _join(self) -> None:
        if self._fd < 0:
            return
        self._thread.join()
        os.close(self._fd)
        self._fd = -1

    def _sync(self) -> None:
        try:
            sync_file_system(self._fd)
        except OSError as error:
            self.error = error


def sync_file_system(fd: int) -> None:
    """syncfs(2): everything written to the file system that holds ``fd`` reaches the disk."""
    if _libc.syncfs(fd) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))

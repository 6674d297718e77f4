"""Open paths below a directory without following a symlink anywhere on the way.

A build context is hostile and can change while a build reads it: a
directory checked a moment ago may be a symlink to ``/etc`` by the time the
file below it is opened. So a path below a root is never handed to the
kernel as one string to resolve. Instead:

- ``open_beneath(dir_fd, relpath, flags)`` resolves ``relpath`` below
  ``dir_fd`` with ``openat2(2)`` and ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
  | RESOLVE_NO_MAGICLINKS`` where the kernel has it (Linux 5.6+), else one
  component at a time with ``openat(O_PATH | O_DIRECTORY | O_NOFOLLOW)``.
  A symlink as a directory on the way is ELOOP; the last component is never
  followed either (with ``O_PATH`` a symlink opens as itself); ``..`` and
  absolute paths are EXDEV before the kernel sees them.
- ``open_object`` returns an ``O_PATH`` descriptor and its fstat: the
  caller checks *that* stat and keeps using *that* descriptor, so what was
  checked is what is read (``reopen_for_reading``, ``read_link``,
  ``xattrs``).
- ``reopen_for_reading`` opens an ``O_PATH`` descriptor of a regular file
  for reading through ``/proc/self/fd``; anything else (FIFO, device,
  socket, directory) is ``NotRegularFile``, never opened for reading: it
  could block forever or feed bytes without end.
- ``read_capped`` reads a descriptor to its end, refusing more than a limit.

``resolve_in_root`` is the other half, for trees imgbuild itself owns and
changes (a step's root filesystem): it resolves a path as a chroot would,
symlinks followed but never above the root, and returns the host path for
the caller to create or open.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from pathlib import Path

from imgbuild.errors import BuildError

# The openat2 system call number is 437 on every architecture that has it
# in the unified table; only these two are checked here.
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_EAGAIN_RETRIES = 16  # openat2 asks for a retry when a rename raced the walk

_AT_FDCWD = -100
_SYSCALL = _SYS_OPENAT2.get(os.uname().machine)  # what platform.machine() says, without importing it

# None until probed; a test may set it to False to run the fallback walk.
openat2_works: bool | None = None
_probe_lock = threading.Lock()


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class NotRegularFile(OSError):
    """The path is there but is not a regular file (``kind`` says what it is)."""

    def __init__(self, kind: str):
        super().__init__(errno.EINVAL, f"not a regular file but {kind}")
        self.kind = kind


def kind_of(mode: int) -> str:
    kinds = {
        stat.S_IFREG: "a regular file", stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symbolic link",
        stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO",
        stat.S_IFSOCK: "a socket",
    }  # fmt: skip
    return kinds.get(stat.S_IFMT(mode), "a special file")


def _openat2(dir_fd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(
        ctypes.c_long(_SYSCALL),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


def _openat2_available() -> bool:
    """Probe once: an old kernel says ENOSYS, a seccomp filter may say EPERM."""
    global openat2_works
    with _probe_lock:
        if openat2_works is None:
            openat2_works = False
            if _SYSCALL is not None:
                try:
                    os.close(_openat2(_AT_FDCWD, "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0))
                    openat2_works = True
                except OSError:
                    pass
        return openat2_works


def _components(relpath: str) -> list[str]:
    parts = [part for part in relpath.split("/") if part not in ("", ".")]
    if relpath.startswith("/") or ".." in parts:
        raise OSError(errno.EXDEV, "path leads outside its root", relpath)
    return parts


def open_beneath(dir_fd: int, relpath: str, flags: int = os.O_RDONLY) -> int:
    """Open ``relpath`` below ``dir_fd`` following no symlink (see the module doc)."""
    parts = _components(relpath)
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    if not parts:
        return os.open(".", flags, dir_fd=dir_fd)
    if _openat2_available():
        resolve = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
        for _ in range(_EAGAIN_RETRIES):
            try:
                return _openat2(dir_fd, "/".join(parts), flags, resolve)
            except OSError as error:
                if error.errno != errno.EAGAIN:
                    raise
        raise OSError(errno.EAGAIN, "the path kept changing while it was opened", relpath)
    return _walk(dir_fd, parts, flags, relpath)


def _walk(dir_fd: int, parts: list[str], flags: int, relpath: str) -> int:
    current = dir_fd
    try:
        for part in parts[:-1]:
            try:
                next_fd = os.open(
                    part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current
                )
            except NotADirectoryError:
                # O_PATH|O_NOFOLLOW opens a symlink as itself, so O_DIRECTORY
                # says ENOTDIR; report it as openat2 does.
                if stat.S_ISLNK(os.stat(part, dir_fd=current, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), relpath) from None
                raise
            if current != dir_fd:
                os.close(current)
            current = next_fd
        return os.open(parts[-1], flags, dir_fd=current)
    finally:
        if current != dir_fd:
            os.close(current)


def open_object(dir_fd: int, relpath: str) -> tuple[int, os.stat_result]:
    """An ``O_PATH`` descriptor of whatever is at ``relpath`` (a symlink as
    itself) and its stat. The caller closes the descriptor."""
    fd = open_beneath(dir_fd, relpath, os.O_PATH)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def reopen_for_reading(path_fd: int, st: os.stat_result) -> int:
    """Open the regular file behind an ``O_PATH`` descriptor for reading.

    ``st`` is that descriptor's fstat; anything but a regular file is
    ``NotRegularFile`` and is not opened.
    """
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(kind_of(st.st_mode))
    return os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC)


def read_link(path_fd: int) -> str:
    """The target of the symlink an ``O_PATH | O_NOFOLLOW`` descriptor holds."""
    return os.readlink("", dir_fd=path_fd)


def xattr_path(path_fd: int) -> str:
    """A path naming exactly the object behind ``path_fd`` (a symlink as
    itself), for the xattr calls that only take paths."""
    return f"/proc/self/fd/{path_fd}"


class TooLarge(OSError):
    def __init__(self, limit: int):
        super().__init__(errno.EFBIG, f"larger than {limit} bytes")
        self.limit = limit


def read_capped(fd: int, limit: int) -> bytes:
    """All bytes of ``fd`` up to EOF; ``TooLarge`` past ``limit`` bytes."""
    chunks = []
    total = 0
    while True:
        chunk = os.read(fd, min(1 << 20, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise TooLarge(limit)


def read_regular_file(dir_fd: int, relpath: str, limit: int) -> bytes:
    """The bytes of the regular file at ``relpath`` below ``dir_fd`` (no
    symlinks followed, nothing special opened, at most ``limit`` bytes)."""
    path_fd, st = open_object(dir_fd, relpath)
    return _read_and_close(path_fd, st, limit)


def read_user_file(path: str | os.PathLike, limit: int) -> bytes:
    """A file the user named explicitly (``-f FILE`` outside the context):
    symlinks on its path are followed, as the user chose it, but it must be a
    regular file and at most ``limit`` bytes."""
    path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    return _read_and_close(path_fd, os.fstat(path_fd), limit)


def _read_and_close(path_fd: int, st: os.stat_result, limit: int) -> bytes:
    """Read the regular file behind an O_PATH descriptor (closed here) up to ``limit``."""
    try:
        fd = reopen_for_reading(path_fd, st)
    finally:
        os.close(path_fd)
    try:
        return read_capped(fd, limit)
    finally:
        os.close(fd)


def open_root(path: str | os.PathLike) -> int:
    """An ``O_PATH`` descriptor of a root directory the user gave (followed:
    it is their choice); everything below it goes through ``open_beneath``."""
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


# --- resolving a path as a chroot would ------------------------------------------

MAX_SYMLINKS = 40  # what Linux allows in one path walk (ELOOP beyond)


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """Return the host path of ``path`` as seen from inside ``root`` (a chroot-style walk).

    Symlinks are resolved relative to ``root``: an absolute target restarts at
    ``root`` and ``..`` never climbs above it, so the result is always ``root``
    or below it. Components that do not exist are kept as they are (the caller
    may be about to create them). With ``follow_last=False`` a symlink in the
    last component is returned itself, not its target. More than 40 symlinks
    is an error, as in the kernel.
    """
    root = Path(root)
    pending = _chroot_components(path)
    resolved: list[str] = []
    symlinks_followed = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        if not pending and not follow_last:
            resolved.append(part)
            break
        candidate = root.joinpath(*resolved, part)
        try:
            is_symlink = stat.S_ISLNK(os.lstat(candidate).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            is_symlink = False
        except OSError as error:
            if error.errno != errno.ENAMETOOLONG:
                raise
            raise BuildError(
                f"the path {path[:80]!r}... is too long for the image's file system "
                f"({len(path)} characters; Linux takes at most 4096 in a path): use a shorter one"
            ) from None
        if not is_symlink:
            resolved.append(part)
            continue
        symlinks_followed += 1
        if symlinks_followed > MAX_SYMLINKS:
            raise BuildError(f"too many levels of symbolic links resolving {path!r} in the image")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending = _chroot_components(target) + pending
    return root.joinpath(*resolved)


def _chroot_components(path: str) -> list[str]:
    return [part for part in path.split("/") if part and part != "."]

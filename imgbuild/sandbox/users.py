"""Users inside an image's root filesystem, read the way a container sees them.

The root filesystem is untrusted image content: ``/etc`` may be a symlink to
``/../../host``. ``/etc/passwd`` and ``/etc/group`` are found like a chroot
would (``safeopen.resolve_in_root``), so a lookup never leaves the root, and
only regular files are read, within bounds.

``resolve_user`` follows Docker's rules (moby/sys/user ``GetExecUser``) for the
``USER`` instruction: ``name``, ``uid``, ``name:group``, ``uid:gid`` and mixes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import field
from pathlib import Path

from imgbuild import safeopen
from imgbuild.dataclass import dataclass
from imgbuild.errors import BuildError

MAX_ID = 2**31 - 1  # Docker's range for uids and gids
# /etc/passwd and /etc/group are image content: read line by line, within
# bounds. 64 KiB a line is the longest line Docker's parser (Go's
# bufio.Scanner) takes; 64 MiB is far beyond any real user database.
MAX_LINE_BYTES = 64 * 1024
MAX_TABLE_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 1024 * 1024
_NUMBER = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.Atoi accepts


@dataclass(frozen=True)
class ResolvedUser:
    """The numeric identity a process runs as, and its home directory."""

    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)
    home: str = "/"


ROOT = ResolvedUser()


@dataclass
class _PasswdEntry:
    """A line of the image's /etc/passwd."""

    name: str
    uid: int
    gid: int
    home: str


@dataclass
class _GroupEntry:
    """A line of the image's /etc/group."""

    name: str
    gid: int
    members: list[str]


def resolve_user(rootfs: Path, user: str) -> ResolvedUser:
    """Resolve a Dockerfile ``USER`` value against the image's /etc/passwd and /etc/group.

    Docker's rules: "" is root. A user given by number needs no passwd entry
    (its gid is then 0); a user given by name must have one. With an explicit
    group (``user:group``) the process gets only that group; without one it
    also gets the supplementary groups that list the user in /etc/group.
    """
    user_part, _, group_part = user.partition(":")
    passwd = _passwd_entries(rootfs)  # read only as far as the first match

    uid, gid, home = 0, 0, "/"
    matched: _PasswdEntry | None = None
    if user_part == "":
        matched = next((entry for entry in passwd if entry.uid == 0), None)
    elif _NUMBER.fullmatch(user_part):
        wanted_uid = int(user_part)
        matched = next((entry for entry in passwd if entry.uid == wanted_uid), None)
        uid = _checked_id(wanted_uid)
    else:
        matched = next((entry for entry in passwd if entry.name == user_part), None)
        if matched is None:
            raise BuildError(f"unable to find user {user_part}: no matching entries in passwd file")
    if matched is not None:
        # an id out of range in the file is an error, as in Docker (ErrRange)
        uid, gid, home = _checked_id(matched.uid), _checked_id(matched.gid), matched.home

    if group_part:
        return ResolvedUser(uid, _explicit_gid(rootfs, group_part), [], home)
    if matched is None:
        return ResolvedUser(uid, gid, [], home)
    supplementary = [_checked_id(group.gid) for group in _group_entries(rootfs) if matched.name in group.members]
    return ResolvedUser(uid, gid, supplementary, home)


def _explicit_gid(rootfs: Path, group: str) -> int:
    if _NUMBER.fullmatch(group):
        return _checked_id(int(group))
    for entry in _group_entries(rootfs):
        if entry.name == group:
            return _checked_id(entry.gid)
    raise BuildError(f"unable to find group {group}: no matching entries in group file")


def id_in_range(number: int) -> bool:
    """Docker's range for uids and gids (``USER``, ``--chown``, passwd and group files)."""
    return 0 <= number <= MAX_ID


def _checked_id(number: int) -> int:
    if not id_in_range(number):
        raise BuildError(
            f"uids and gids must be in range 0-{MAX_ID}, got {number}; "
            "use an id in that range in USER and in the image's /etc/passwd and /etc/group"
        )
    return number


def _passwd_entries(rootfs: Path) -> Iterator[_PasswdEntry]:
    for fields in image_table(rootfs, "/etc/passwd"):
        # name:password:uid:gid:gecos:home:shell; lines with a non-numeric
        # uid or gid are malformed and skipped rather than read as uid 0.
        fields += [""] * (7 - len(fields))
        if _NUMBER.fullmatch(fields[2]) and _NUMBER.fullmatch(fields[3]):
            yield _PasswdEntry(fields[0], int(fields[2]), int(fields[3]), fields[5])


def _group_entries(rootfs: Path) -> Iterator[_GroupEntry]:
    for fields in image_table(rootfs, "/etc/group"):
        # name:password:gid:member,member,...
        fields += [""] * (4 - len(fields))
        if _NUMBER.fullmatch(fields[2]):
            members = [name.strip() for name in fields[3].split(",") if name.strip()]
            yield _GroupEntry(fields[0], int(fields[2]), members)


def image_table(rootfs: Path, path: str) -> Iterator[list[str]]:
    """The colon-separated fields of each non-empty line of /etc/passwd or /etc/group.

    Streamed, so a huge file costs no memory, and bounded: a file larger
    than MAX_TABLE_BYTES or a line longer than MAX_LINE_BYTES is an error,
    not minutes of reading. A missing file has no lines.
    """
    fd = _open_image_file(rootfs, path)
    if fd is None:
        return
    with os.fdopen(fd, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > MAX_TABLE_BYTES:
            raise _too_big(path, size)
        total = 0
        pending = b""
        # Chunks, split in C: a file of millions of empty lines stays fast.
        while chunk := file.read(_READ_CHUNK):
            total += len(chunk)
            if total > MAX_TABLE_BYTES:
                raise _too_big(path, total)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            _check_line_lengths(path, [*lines, pending])
            yield from _split_lines(lines)
        yield from _split_lines([pending])


def _check_line_lengths(path: str, lines: list[bytes]) -> None:
    if max(map(len, lines), default=0) > MAX_LINE_BYTES:
        raise BuildError(
            f"{path} in the image has a line longer than {MAX_LINE_BYTES // 1024} KiB "
            "(the most imgbuild reads, as Docker's parser); fix the file in an earlier step"
        )


def _split_lines(lines: list[bytes]) -> Iterator[list[str]]:
    for line in filter(None, lines):
        text = line.strip()
        if text:
            yield text.decode("utf-8", errors="replace").split(":")


def _too_big(path: str, size: int) -> BuildError:
    return BuildError(
        f"{path} in the image is larger than {MAX_TABLE_BYTES // (1024 * 1024)} MiB "
        f"({size} bytes), the most imgbuild reads to look up users and groups; "
        "shrink it in an earlier step"
    )


def _open_image_file(rootfs: Path, path: str) -> int | None:
    """A read-only descriptor of a regular file of the image, or None if there is none.

    The path is resolved like a chroot would, then opened again from
    ``rootfs`` with no symlink followed (``safeopen``), so nothing that
    changed since is followed out of the root. Only a regular file is opened:
    a FIFO would block, and a device would be a host device read by root.
    """
    host_path = safeopen.resolve_in_root(rootfs, path)
    relative = str(host_path.relative_to(rootfs))
    if relative == ".":
        raise BuildError(f"{path} in the image is not a regular file (it is the root directory)")
    root_fd = safeopen.open_root(rootfs)
    try:
        path_fd, info = safeopen.open_object(root_fd, relative)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise BuildError(f"cannot read {path} in the image: {error.strerror}") from error
    finally:
        os.close(root_fd)
    try:
        return safeopen.reopen_for_reading(path_fd, info)
    except safeopen.NotRegularFile:
        raise BuildError(f"{path} in the image is not a regular file; make it one in an earlier step") from None
    except OSError as error:
        raise BuildError(f"cannot read {path} in the image: {error.strerror}") from error
    finally:
        os.close(path_fd)

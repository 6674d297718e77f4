"""Paths and users inside an image's root filesystem, read the way a container sees them.

The root filesystem is untrusted image content: ``/etc`` may be a symlink to
``/../../host``. Everything here resolves paths like a chroot would, so a lookup
never leaves the root, and reads only regular files.

``resolve_user`` follows Docker's rules (moby/sys/user ``GetExecUser``) for the
``USER`` instruction: ``name``, ``uid``, ``name:group``, ``uid:gid`` and mixes.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from imgbuild.errors import BuildError

MAX_SYMLINKS = 40  # what Linux allows in one path walk (ELOOP beyond)
MAX_ID = 2**31 - 1  # Docker's range for uids and gids
_NUMBER = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.Atoi accepts


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
    pending = _components(path)
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
        if not is_symlink:
            resolved.append(part)
            continue
        symlinks_followed += 1
        if symlinks_followed > MAX_SYMLINKS:
            raise BuildError(f"too many levels of symbolic links resolving {path!r} in the image")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending = _components(target) + pending
    return root.joinpath(*resolved)


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part and part != "."]


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
    name: str
    uid: int
    gid: int
    home: str


@dataclass
class _GroupEntry:
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
    passwd = _read_passwd(rootfs)

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
        uid, gid, home = matched.uid, matched.gid, matched.home

    if group_part:
        return ResolvedUser(uid, _explicit_gid(rootfs, group_part), [], home)
    if matched is None:
        return ResolvedUser(uid, gid, [], home)
    supplementary = [group.gid for group in _read_group(rootfs) if matched.name in group.members]
    return ResolvedUser(uid, gid, supplementary, home)


def _explicit_gid(rootfs: Path, group: str) -> int:
    groups = _read_group(rootfs)
    if _NUMBER.fullmatch(group):
        return _checked_id(int(group))
    for entry in groups:
        if entry.name == group:
            return entry.gid
    raise BuildError(f"unable to find group {group}: no matching entries in group file")


def _checked_id(number: int) -> int:
    if not 0 <= number <= MAX_ID:
        raise BuildError(f"uids and gids must be in range 0-{MAX_ID}, got {number}")
    return number


def _read_passwd(rootfs: Path) -> list[_PasswdEntry]:
    entries = []
    for fields in _colon_lines(_read_image_file(rootfs, "/etc/passwd")):
        # name:password:uid:gid:gecos:home:shell; lines with a non-numeric
        # uid or gid are malformed and skipped rather than read as uid 0.
        fields += [""] * (7 - len(fields))
        if _NUMBER.fullmatch(fields[2]) and _NUMBER.fullmatch(fields[3]):
            entries.append(_PasswdEntry(fields[0], int(fields[2]), int(fields[3]), fields[5]))
    return entries


def _read_group(rootfs: Path) -> list[_GroupEntry]:
    entries = []
    for fields in _colon_lines(_read_image_file(rootfs, "/etc/group")):
        # name:password:gid:member,member,...
        fields += [""] * (4 - len(fields))
        if _NUMBER.fullmatch(fields[2]):
            members = [name.strip() for name in fields[3].split(",") if name.strip()]
            entries.append(_GroupEntry(fields[0], int(fields[2]), members))
    return entries


def _colon_lines(text: str) -> list[list[str]]:
    return [line.strip().split(":") for line in text.splitlines() if line.strip()]


def _read_image_file(rootfs: Path, path: str) -> str:
    """Read a small text file of the image; "" if it does not exist."""
    host_path = resolve_in_root(rootfs, path)
    # O_NOFOLLOW: the path is already resolved, a symlink here would be a race.
    # O_NONBLOCK: a FIFO planted at /etc/passwd must not hang the build.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(host_path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return ""
    except OSError as error:
        raise BuildError(f"cannot read {path} in the image: {error.strerror}") from error
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise BuildError(f"{path} in the image is not a regular file")
        return file.read().decode("utf-8", errors="replace")

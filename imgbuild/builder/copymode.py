"""``COPY/ADD --chmod``: an octal mode or a symbolic one, as BuildKit applies it.

BuildKit (dockerfile2llb and tonistiigi/fsutil's copy) reads ``--chmod`` so:

- octal (``644``, ``0755``, ``4755``): up to 07777, else the error
  "invalid chmod parameter: '64a'. it should be octal string and between 0
  and 07777" (also for anything that starts like a number but is not one).
  Every copied file and directory gets exactly that mode, setuid, setgid and
  sticky bits included (the source's own are dropped); the directories the
  copy creates for its destination get its permission bits (dockerfile
  syntax >= 1.15);
- symbolic, as chmod(1) with a umask of 0 (``go-w``, ``u=rwX,go=rX``,
  ``a+x``, ``u+s``, ``g=u``): applied to each copied file's and directory's
  own mode (``X`` is x for directories and for files that had an x bit
  before the change);
  created directories keep the default 0755.
"""

from __future__ import annotations

import re
import stat

from imgbuild.builder.copy import DEFAULT_DIR_MODE
from imgbuild.dataclass import dataclass
from imgbuild.errors import BuildError

_WHO_BITS = {"u": 0o4700, "g": 0o2070, "o": 0o0007}
_PERM_BITS = {"r": 0o444, "w": 0o222, "x": 0o111}
_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=](?:[ugo]|[rwxXst]*))+)")
_ACTION = re.compile(r"([-+=])([ugo]|[rwxXst]*)")


@dataclass(frozen=True)
class _Action:
    """One operator of a symbolic ``--chmod`` clause, as in ``+x`` or ``=rw``."""

    op: str  # "+", "-" or "="
    perms: str  # letters of rwxXst, or one of u/g/o (copy that class's bits)


@dataclass(frozen=True)
class _Clause:
    """One comma-separated part of a symbolic ``--chmod``: who, then what to change."""

    who: str  # letters of ugo; "" means all (with a umask of 0, as "a")
    actions: tuple[_Action, ...]


@dataclass(frozen=True)
class Chmod:
    """A parsed ``--chmod`` value."""

    text: str
    octal: int | None = None
    clauses: tuple[_Clause, ...] = ()

    @property
    def created_dir_mode(self) -> int:
        """The mode of a directory the copy creates on the way to its destination."""
        return self.octal & 0o777 if self.octal is not None else DEFAULT_DIR_MODE

    def apply(self, mode: int) -> int:
        """The new permission bits (with setuid/setgid/sticky) for a file of ``mode`` (st_mode)."""
        if self.octal is not None:
            return self.octal
        bits = stat.S_IMODE(mode)
        # X asks whether the file had an x bit before any of the changes (as
        # BuildKit's dchapes-mode does; busybox chmod looks at the mode so far)
        x_ok = stat.S_ISDIR(mode) or bool(bits & 0o111)
        for clause in self.clauses:
            for action in clause.actions:
                bits = _apply_action(bits, x_ok, clause.who or "ugo", action, all_who=not clause.who or clause.who == "ugo")
        return bits


def parse_chmod(text: str) -> Chmod:
    """Read a ``--chmod`` value; BuildError with BuildKit's message if it is neither form."""
    if text[:1].isdigit():
        try:
            value = int(text, 8)
        except ValueError:
            value = -1
        if not 0 <= value <= 0o7777 or not text.isascii():
            raise BuildError(
                f"invalid chmod parameter: '{text}'. it should be octal string and between 0 and 07777"
            )
        return Chmod(text, octal=value)
    clauses = []
    for part in text.split(","):
        match = _CLAUSE.fullmatch(part)
        if match is None:
            raise BuildError(
                f"invalid chmod parameter: '{text}': use an octal mode (0 to 07777) "
                "or a symbolic one like u=rwX,go=rX"
            )
        who = "ugo" if "a" in match.group(1) else "".join(dict.fromkeys(match.group(1)))
        actions = tuple(_Action(op, perms) for op, perms in _ACTION.findall(match.group(2)))
        clauses.append(_Clause(who, actions))
    return Chmod(text, clauses=tuple(clauses))


def _apply_action(bits: int, x_ok: bool, who: str, action: _Action, *, all_who: bool) -> int:
    mask = 0
    for letter in who:
        mask |= _WHO_BITS[letter]
    if action.perms in _WHO_BITS:  # g=u: copy the rwx of another class
        source = (bits >> {"u": 6, "g": 3, "o": 0}[action.perms]) & 0o7
        wanted = source * 0o111 & 0o777
    else:
        wanted = 0
        for letter in action.perms:
            if letter in _PERM_BITS:
                wanted |= _PERM_BITS[letter]
            elif letter == "X":
                if x_ok:
                    wanted |= 0o111
            elif letter == "s":
                wanted |= stat.S_ISUID | stat.S_ISGID
            elif letter == "t" and (all_who or "o" in who):
                wanted |= stat.S_ISVTX
    if all_who:
        mask |= stat.S_ISVTX
    wanted &= mask if action.perms not in _WHO_BITS else mask & 0o777
    if action.op == "+":
        return bits | wanted
    if action.op == "-":
        return bits & ~wanted
    # "=": clear the class's rwx (and its setuid/setgid), then set
    cleared = mask & ~stat.S_ISVTX if not all_who else mask
    return (bits & ~cleared) | wanted

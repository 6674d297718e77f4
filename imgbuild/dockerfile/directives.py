"""Parser directives: ``# syntax=``, ``# escape=`` and ``# check=``.

BuildKit's rules, which we follow: directives are comment lines of the form
``# key=value`` at the very top of the file. The first line that is not such a
directive (an instruction, a blank line, an ordinary comment, or an unknown
key) ends the directive section for good, so a directive further down is just a
comment. Each directive may appear once. Keys are case-insensitive.
"""

from __future__ import annotations

import re

from imgbuild.dataclass import dataclass
from imgbuild.dockerfile.shell import is_space

# After the "#" and leading spaces: key = value. Go's \s is [\t\n\f\r ] only.
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
_KNOWN = ("syntax", "escape", "check")


class DirectiveError(Exception):
    """A directive is repeated or has a bad value; the caller adds the location."""


@dataclass
class Directives:
    """The parser directives of a Dockerfile, as written (``None`` if absent)."""

    syntax: str | None = None
    escape: str = "\\"  # the escape character: \\ (default) or `
    check: str | None = None
    escape_line: int | None = None  # where ``# escape=`` was, if present


class DirectiveScanner:
    """Feeds the top lines of a file one at a time and collects directives."""

    def __init__(self) -> None:
        self.directives = Directives()
        self.done = False
        self._seen: set[str] = set()

    def feed(self, line: str, line_number: int) -> bool:
        """Look at one line (leading spaces already removed); True if it is a directive.

        Raises DirectiveError for a repeated directive or an invalid escape
        character.
        """
        if self.done:
            return False
        if not line.startswith("#"):
            self.done = True
            return False
        body = _lstrip_go_space(line[1:])
        match = _DIRECTIVE.match(body)
        if match is None or match.group(1).lower() not in _KNOWN:
            self.done = True
            return False
        key, value = match.group(1).lower(), match.group(2)
        if key in self._seen:
            raise DirectiveError(f"only one {key} parser directive can be used")
        self._seen.add(key)
        if key == "escape":
            if value not in ("\\", "`"):
                raise DirectiveError(f"invalid escape token '{value}' does not match ` or \\")
            self.directives.escape = value
            self.directives.escape_line = line_number
        elif key == "syntax":
            self.directives.syntax = value
        else:
            self.directives.check = value
        return True


def _lstrip_go_space(text: str) -> str:
    i = 0
    while i < len(text) and is_space(text[i]):
        i += 1
    return text[i:]

"""Go's path and glob semantics, as Docker applies them to paths in a build.

``go_clean`` and ``go_dir`` are Go's ``path.Clean`` and ``filepath.Dir`` for
slash paths; ``go_match`` is ``filepath.Match`` (``*`` never crosses a
``/``), which COPY/ADD wildcards use; ``validate_go_pattern`` reports what Go
calls ``ErrBadPattern``. The ``.dockerignore`` matcher builds on them.
"""

from __future__ import annotations

import re
import warnings

from imgbuild.context.globmatch import Glob, Token, check_length, compact


def go_clean(path: str) -> str:
    """Go's ``path.Clean``: collapse ``//``, drop ``.``, resolve ``..`` lexically.

    Unlike ``posixpath.normpath`` it turns ``//a`` into ``/a`` and ``""`` into
    ``"."``, which matters for matching patterns exactly as Docker does.
    """
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def go_dir(path: str) -> str:
    """Go's ``filepath.Dir`` for slash paths: everything but the last element, cleaned."""
    head, _, _ = path.rpartition("/")
    if "/" not in path:
        return "."
    return go_clean(head if head else "/")


def validate_go_pattern(pattern: str) -> None:
    """Raise ValueError where Go's ``filepath.Match`` reports ``ErrBadPattern``.

    Bad: a trailing ``\\``, an unclosed ``[``, an empty class ``[]``, a class
    bound that is ``-`` or ``]`` unescaped (``[-x]``, ``[x-]``, ``[a-b-c]``).
    """
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            if i + 1 >= n:
                raise ValueError("trailing backslash")
            i += 2
        elif char == "[":
            i = _validate_class(pattern, i + 1)
        else:
            i += 1


def _validate_class(pattern: str, i: int) -> int:
    """Check a ``[...]`` class starting after its ``[``; return the index after ``]``."""
    n = len(pattern)
    if i < n and pattern[i] == "^":
        i += 1
    ranges = 0
    while True:
        if i < n and pattern[i] == "]" and ranges > 0:
            return i + 1
        i = _class_char(pattern, i)
        if i < n and pattern[i] == "-":
            i = _class_char(pattern, i + 1)
        ranges += 1


def _class_char(pattern: str, i: int) -> int:
    n = len(pattern)
    if i >= n or pattern[i] in "-]":
        raise ValueError("bad character class")
    if pattern[i] == "\\":
        i += 1
        if i >= n:
            raise ValueError("trailing backslash in character class")
    return i + 1


def glob_tokens(pattern: str) -> list[Token]:
    """Tokens of one ``filepath.Match`` pattern (already validated)."""
    tokens: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "*":
            tokens.append(Token("star"))
        elif char == "?":
            tokens.append(Token("one"))
        elif char == "\\":
            i += 1
            tokens.append(Token("char", pattern[i]))
        elif char == "[":
            i, text = class_to_regexp(pattern, i + 1)
            tokens.append(Token("class", klass=compile_class(text)))
            continue
        else:
            tokens.append(Token("char", char))
        i += 1
    return tokens


def compile_class(text: str) -> re.Pattern[str]:
    with warnings.catch_warnings():
        # "[[" in a class is a literal "[" to Go; Python warns about it.
        warnings.simplefilter("ignore", FutureWarning)
        return re.compile(text)


def class_to_regexp(pattern: str, i: int) -> tuple[int, str]:
    parts = ["["]
    if pattern[i] == "^":
        parts.append("^")
        i += 1
    first = True
    while first or pattern[i] != "]":
        first = False
        low, i = _class_literal(pattern, i)
        if pattern[i] == "-":
            high, i = _class_literal(pattern, i + 1)
            parts.append(f"{re.escape(low)}-{re.escape(high)}")
        else:
            parts.append(re.escape(low))
    parts.append("]")
    return i + 1, "".join(parts)


def _class_literal(pattern: str, i: int) -> tuple[str, int]:
    if pattern[i] == "\\":
        return pattern[i + 1], i + 2
    return pattern[i], i + 1


_match_cache: dict[str, Glob] = {}


def go_match(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match``: True if ``name`` matches the shell pattern.

    Raises ValueError for a malformed pattern (Go's ErrBadPattern) and for
    one longer than ``globmatch.MAX_PATTERN_LENGTH``.
    """
    compiled = _match_cache.get(pattern)
    if compiled is None:
        check_length(pattern)
        validate_go_pattern(pattern)
        compiled = Glob(compact(glob_tokens(pattern)), dot_newline=True)
        _match_cache[pattern] = compiled
    return compiled.fullmatch(name)


def has_wildcards(component: str) -> bool:
    """BuildKit's ``containsWildcards``: an unescaped ``*``, ``?`` or ``[``."""
    i = 0
    while i < len(component):
        char = component[i]
        if char == "\\":
            i += 2
            continue
        if char in "*?[":
            return True
        i += 1
    return False

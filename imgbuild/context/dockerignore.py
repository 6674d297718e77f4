""".dockerignore files and Docker's path patterns.

Docker's rules, as moby/patternmatcher and its ``ignorefile.ReadAll`` apply them:

- a line starting with ``#`` is a comment; blank lines are skipped; whitespace
  around a pattern is trimmed; ``!`` makes an exception (re-include);
- a pattern is cleaned like Go's ``filepath.Clean`` and a leading ``/`` is
  dropped, so ``/foo`` and ``foo`` mean the same;
- ``*``, ``?``, ``[...]`` and ``\\`` escapes work as in Go's ``filepath.Match``
  (``*`` never crosses a ``/``); ``**`` matches any number of directories;
- a pattern that matches a directory matches everything below it;
- the last pattern that matches a path decides (so ``!`` exceptions only win
  when they come after the pattern they undo).

The same matcher serves ``COPY --exclude``. Finding and reading the ignore
file of a build is ``buildfiles.py``'s job.
"""

from __future__ import annotations

from imgbuild.dataclass import dataclass
from imgbuild.errors import ContextError
from imgbuild.globmatch import Glob, Token, check_length, compact
from imgbuild.gopath import (
    class_to_regexp,
    compile_class,
    go_clean,
    go_dir,
    validate_go_pattern,
)

_UTF8_BOM = "\ufeff"

# What BuildKit counts as "this pattern has wildcards" when deciding whether an
# excluded directory must still be walked for exceptions (fsutil filter.go).
_PATTERN_CHARS = set("*[]?^\\")


@dataclass
class Pattern:
    """One cleaned pattern, compiled the way moby's ``Pattern.compile`` does.

    moby sorts patterns into exact, prefix (``dir/**``), suffix (``**/name``)
    and regexp matches. The kinds are not only an optimisation: a suffix
    pattern such as ``**file`` matches ``dir/myfile``, which its regexp would
    not. We keep the same kinds so results are the same as Docker's.
    """

    text: str  # cleaned, without the leading "!"
    exclusion: bool

    def __post_init__(self) -> None:
        self.kind, self.glob = _compile(self.text)

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            return suffix.startswith("/") and path == suffix[1:]
        return self.glob.fullmatch(path)


def _compile(pattern: str) -> tuple[str, Glob | None]:
    """moby's ``Pattern.compile``: returns (kind, a Glob for the ``regexp`` kind)."""
    tokens: list[Token] = []
    kind = "exact"
    i, n, step = 0, len(pattern), 0
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1  # "**/" is treated like "**"
                if i >= n:
                    # "**" at the end accepts everything, as in .gitignore
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        tokens.append(Token("any"))
                        kind = "regexp"
                else:
                    tokens.append(Token("dirs"))  # any number of directories, even none
                    kind = "regexp"
                if step == 0:
                    kind = "suffix"
            else:
                tokens.append(Token("star"))
                kind = "regexp"
        elif char == "?":
            tokens.append(Token("one"))
            kind = "regexp"
        elif char == "\\":
            # filepath.Match semantics: the next character is literal
            tokens.append(Token("char", pattern[i] if i < n else "\\"))
            i += 1
            kind = "regexp"
        elif char == "[":
            # validate_go_pattern has checked the class is well formed
            i, text = class_to_regexp(pattern, i)
            tokens.append(Token("class", klass=compile_class(text)))
            kind = "regexp"
        elif char == "]":
            tokens.append(Token("char", char))
            kind = "regexp"
        else:
            tokens.append(Token("char", char))
        step += 1
    if kind != "regexp":
        return kind, None
    return kind, Glob(compact(tokens))


def parse_pattern(raw: str) -> Pattern | None:
    """moby's ``New`` for one pattern: trim, clean, split off ``!``, check the syntax.

    Returns None for a blank pattern. Raises ValueError for a bad one.
    """
    text = raw.strip()
    if not text:
        return None
    text = go_clean(text)
    exclusion = text.startswith("!")
    if exclusion:
        if len(text) == 1:
            raise ValueError('illegal exclusion pattern: "!"')
        text = text[1:]
    check_length(text)
    validate_go_pattern(text)
    return Pattern(text, exclusion)


class IgnoreMatcher:
    """Decides which context paths a list of Docker patterns excludes.

    ``IgnoreMatcher([])`` excludes nothing (COPY --from a stage or image).
    Bad patterns raise ContextError naming the pattern and ``source`` (the
    file or flag they came from).
    """

    def __init__(self, patterns: list[str] | tuple[str, ...], source: str = ".dockerignore"):
        self.patterns: list[Pattern] = []
        for raw in patterns:
            try:
                pattern = parse_pattern(raw)
            except ValueError as error:
                raise ContextError(f"{source}: invalid pattern {raw.strip()!r}: {error}") from None
            if pattern is not None:
                self.patterns.append(pattern)
        self.has_exceptions = any(pattern.exclusion for pattern in self.patterns)
        # BuildKit walks an excluded directory only if an exception could
        # re-include something below it; with a wildcard in an exception it
        # cannot tell, so it always walks.
        self._exceptions_are_prefixes = not any(
            pattern.exclusion and _PATTERN_CHARS & set(_without_trailing_glob(pattern.text))
            for pattern in self.patterns
        )

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def ignored(self, relpath: str, is_dir: bool = False) -> bool:
        """True if the path (relative to the context, ``/``-separated) is excluded.

        This is moby's ``MatchesOrParentMatches``: a pattern counts if it matches
        the path or any of its parent directories, and the last pattern that
        counts wins. ``is_dir`` does not change the answer (Docker patterns
        have no directory-only form: ``docs/`` is cleaned to ``docs``); whether
        a directory must still be walked is ``may_reinclude_below``'s job.
        """
        if not self.patterns:
            return False
        path = go_clean(relpath)
        if path in (".", "/"):
            return False  # Docker never lets a pattern exclude the whole context
        return self.matches(path)

    def matches(self, path: str) -> bool:
        """moby's ``MatchesOrParentMatches`` on a path exactly as given."""
        if not self.patterns:
            return False
        parent = go_dir(path)
        parent_parts = parent.split("/") if parent != "." else []
        matched = False
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue  # an exception only matters once something matched
            hit = pattern.match(path)
            if not hit:
                for depth in range(1, len(parent_parts) + 1):
                    if pattern.match("/".join(parent_parts[:depth])):
                        hit = True
                        break
            if hit:
                matched = not pattern.exclusion
        return matched

    def may_reinclude_below(self, dir_relpath: str) -> bool:
        """True if an exception pattern could re-include something inside this
        excluded directory, so it must still be walked (fsutil ``filter.go``)."""
        if not self.has_exceptions:
            return False
        if not self._exceptions_are_prefixes:
            return True
        dir_slash = go_clean(dir_relpath) + "/"
        return any(
            pattern.exclusion and (_without_trailing_glob(pattern.text) + "/").startswith(dir_slash)
            for pattern in self.patterns
        )


def _without_trailing_glob(text: str) -> str:
    if text.endswith("/**"):
        return text[:-3]
    if text.endswith("/*"):
        return text[:-2]
    return text


# --- the .dockerignore file --------------------------------------------------


def read_ignore_file(text: str) -> list[str]:
    """The patterns of a .dockerignore file, as moby's ``ignorefile.ReadAll`` returns them."""
    patterns = []
    # Split like Go's bufio.ScanLines: on "\n", dropping a "\r" before it.
    for number, line in enumerate(text.split("\n")):
        line = line.removesuffix("\r")
        if number == 0:
            line = line.removeprefix(_UTF8_BOM)
        if line.startswith("#"):
            continue  # only a "#" in the very first column starts a comment
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]  # "/foo" means "foo": paths are relative to the context
        patterns.append("!" + pattern if invert else pattern)
    return patterns

"""Path patterns matched in time linear in the path, whatever the pattern.

Docker matches ``.dockerignore`` patterns with Go's regexp package, which
never backtracks. Python's ``re`` does: a pattern of a few stars against a
long name (``*a*a*a*a*a*a*a*b`` against 60 ``a``) runs for minutes, and a
``.dockerignore`` comes from whoever wrote the pull request. So patterns are
turned into a short list of tokens and run as a set of states (a Thompson
NFA), one step per character of the path. Steps are remembered per pattern,
so after the first few paths each character costs one dictionary lookup.

Python's ``re`` is still used for patterns with at most two gaps (``*``,
``**``): their worst case is quadratic in one path (a path is at most 4096
characters), and ``re`` runs them several times faster than the state walk,
which matters for contexts of tens of thousands of files.
"""

from __future__ import annotations

import re
from dataclasses import field

from imgbuild.dataclass import dataclass

# A pattern longer than the longest path Linux accepts cannot be meant; it
# also bounds the number of states a path has to be walked through.
MAX_PATTERN_LENGTH = 4096

# How many remembered steps one pattern keeps before starting again.
_STEP_CACHE_LIMIT = 8192

# Backtracking costs path length to the power of the number of gaps.
_MAX_GAPS_FOR_RE = 2


@dataclass(frozen=True)
class Token:
    """One element of a pattern.

    kind is ``char`` (the literal ``text``), ``one`` (any character but
    ``/``), ``class`` (one character matching ``klass``), ``star`` (any run
    without ``/``), ``dirs`` (nothing, or any run ending in ``/``: ``**/``)
    or ``any`` (any run: a final ``**``). ``dirs`` and ``any`` stop at a
    newline when ``dot_newline`` is False, as Go's ``.`` does.
    """

    kind: str
    text: str = ""
    klass: re.Pattern[str] | None = None


_GAPS = ("star", "dirs", "any")


@dataclass
class Glob:
    """A compiled pattern; ``fullmatch(path)`` is its only question."""

    tokens: tuple[Token, ...]
    dot_newline: bool = False
    _steps: dict[tuple[frozenset[int], str], frozenset[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._start = self._closure({0})
        self._accept = 2 * len(self.tokens)
        self._regexp = None
        if sum(token.kind in _GAPS for token in self.tokens) <= _MAX_GAPS_FOR_RE:
            self._regexp = re.compile("".join(_regexp_text(token) for token in self.tokens),
                                      re.DOTALL if self.dot_newline else 0)

    def fullmatch(self, path: str) -> bool:
        if self._regexp is not None:
            return self._regexp.fullmatch(path) is not None
        return self.walk(path)

    def walk(self, path: str) -> bool:
        """``fullmatch`` by the state walk, whatever the pattern."""
        states = self._start
        for char in path:
            states = self._step(states, char)
            if not states:
                return False
        return self._accept in states

    def _step(self, states: frozenset[int], char: str) -> frozenset[int]:
        key = (states, char)
        found = self._steps.get(key)
        if found is None:
            if len(self._steps) >= _STEP_CACHE_LIMIT:
                self._steps.clear()
            found = self._steps[key] = self._closure(self._advance(states, char))
        return found

    def _advance(self, states: frozenset[int], char: str) -> set[int]:
        # State 2*i: before token i. State 2*i+1: inside a "dirs" token i,
        # after at least one character, waiting for the "/" that ends it.
        after: set[int] = set()
        stops_dot = char == "\n" and not self.dot_newline
        for state in states:
            index, inside = divmod(state, 2)
            if index == len(self.tokens):
                continue
            token = self.tokens[index]
            if inside or token.kind == "dirs":
                if not stops_dot:
                    after.add(2 * index + 1)
                    if char == "/":
                        after.add(2 * index + 2)
            elif token.kind == "char":
                if char == token.text:
                    after.add(state + 2)
            elif token.kind == "one":
                if char != "/":
                    after.add(state + 2)
            elif token.kind == "class":
                if token.klass.fullmatch(char):
                    after.add(state + 2)
            elif token.kind == "star":
                if char != "/":
                    after.add(state)
            elif token.kind == "any" and not stops_dot:
                after.add(state)
        return after

    def _closure(self, states: set[int]) -> frozenset[int]:
        """Add the states reached by letting gap tokens match nothing."""
        pending = list(states)
        while pending:
            state = pending.pop()
            index, inside = divmod(state, 2)
            if inside or index == len(self.tokens) or self.tokens[index].kind not in _GAPS:
                continue
            if state + 2 not in states:
                states.add(state + 2)
                pending.append(state + 2)
        return frozenset(states)


def _regexp_text(token: Token) -> str:
    if token.kind == "char":
        return re.escape(token.text)
    if token.kind == "class":
        return token.klass.pattern
    return _GAP_AND_ONE_REGEXPS[token.kind]


_GAP_AND_ONE_REGEXPS = {"one": "[^/]", "star": "[^/]*", "dirs": "(?:.*/)?", "any": ".*"}


def compact(tokens: list[Token]) -> tuple[Token, ...]:
    """Drop a gap that repeats the one before it (``**`` twice is ``**``)."""
    kept: list[Token] = []
    for token in tokens:
        if token.kind in _GAPS and kept and kept[-1].kind == token.kind:
            continue
        kept.append(token)
    return tuple(kept)


def check_length(pattern: str) -> None:
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(
            f"pattern is {len(pattern)} characters long; at most {MAX_PATTERN_LENGTH} "
            "(the longest path Linux accepts) are allowed"
        )

"""The state walk of globmatch gives the answers a backtracking regexp gives.

Random short patterns and paths (where backtracking is still cheap) are
matched both ways: by ``Glob.walk`` and by Python's ``re`` over the regexp
that moby's ``Pattern.compile`` and Go's ``filepath.Match`` describe. Long
patterns, where only the walk finishes, are in tests/adversarial.
"""

from __future__ import annotations

import random
import re

import pytest

from imgbuild.context.dockerignore import _compile
from imgbuild.context.globmatch import MAX_PATTERN_LENGTH, Glob, check_length, compact
from imgbuild.context.gopath import glob_tokens

PATTERN_PIECES = ["a", "b", "/", "*", "**", "**/", "?", "[ab]", "[^a]", "\\*", "."]
PATH_CHARS = "ab/.\n*"


def _moby_regexp(pattern: str) -> str:
    """The regexp moby builds, for the pieces above (``**`` before the end: ``(.*/)?``)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i) or pattern.startswith("**", i):
            i += 3 if pattern.startswith("**/", i) else 2
            out.append(".*" if i >= len(pattern) else "(.*/)?")
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i:end + 1])
            i = end + 1
        elif pattern[i] == "\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _random_cases(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        pattern = "".join(rng.choice(PATTERN_PIECES) for _ in range(rng.randint(1, 6)))
        paths = ["".join(rng.choice(PATH_CHARS) for _ in range(rng.randint(0, 8))) for _ in range(20)]
        yield pattern, paths


@pytest.mark.parametrize("seed", range(5))
def test_walk_agrees_with_moby_regexps(seed):
    checked = 0
    for pattern, paths in _random_cases(seed, 300):
        kind, glob = _compile(pattern)
        if kind != "regexp" or pattern.startswith("**"):
            continue  # the suffix and prefix kinds do not use a regexp
        expected = re.compile(_moby_regexp(pattern))
        for path in paths:
            assert glob.walk(path) == (expected.fullmatch(path) is not None), (pattern, path)
            assert glob.fullmatch(path) == glob.walk(path), (pattern, path)
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize("seed", range(5))
def test_walk_agrees_with_filepath_match(seed):
    for pattern, paths in _random_cases(seed, 300):
        pattern = re.sub(r"(?<!\\)\*+", "*", pattern)  # filepath.Match has no "**"
        glob = Glob(compact(glob_tokens(pattern)), dot_newline=True)
        expected = re.compile(_moby_regexp(pattern), re.DOTALL)
        for path in paths:
            assert glob.walk(path) == (expected.fullmatch(path) is not None), (pattern, path)


def test_walk_is_linear_where_backtracking_is_not():
    glob = Glob(compact(glob_tokens("*a" * 40 + "*b")), dot_newline=True)
    assert glob.fullmatch("a" * 4000) is False
    assert glob.fullmatch("a" * 4000 + "b") is True


def test_pattern_length_is_capped():
    check_length("*" * MAX_PATTERN_LENGTH)
    with pytest.raises(ValueError, match="at most 4096"):
        check_length("*" * (MAX_PATTERN_LENGTH + 1))

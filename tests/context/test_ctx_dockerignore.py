""".dockerignore rules: moby/patternmatcher's and ignorefile's test cases, ported, plus
which ignore file applies and what a real context walk shows."""

from __future__ import annotations

import pytest

from imgbuild.context.buildfiles import load_ignore_patterns
from imgbuild.context.dockerignore import IgnoreMatcher, parse_pattern, read_ignore_file
from imgbuild.context.gopath import go_clean, go_match
from imgbuild.context.source import BuildContext
from imgbuild.errors import ContextError

# moby/patternmatcher TestMatches: (pattern, path, "exact" | "inexact" | "fail").
# "exact" matches the path itself; "inexact" only through a parent directory.
MOBY_MATCHES = [
    ("**", "file", "exact"),
    ("**", "file/", "exact"),
    ("**/", "file", "exact"),
    ("**/", "file/", "exact"),
    ("**", "/", "exact"),
    ("**/", "/", "exact"),
    ("**", "dir/file", "exact"),
    ("**/", "dir/file", "exact"),
    ("**", "dir/file/", "exact"),
    ("**/", "dir/file/", "exact"),
    ("**/**", "dir/file", "exact"),
    ("**/**", "dir/file/", "exact"),
    ("dir/**", "dir/file", "exact"),
    ("dir/**", "dir/file/", "exact"),
    ("dir/**", "dir/dir2/file", "exact"),
    ("dir/**", "dir/dir2/file/", "exact"),
    ("**/dir", "dir", "exact"),
    ("**/dir", "dir/file", "inexact"),
    ("**/dir2/*", "dir/dir2/file", "exact"),
    ("**/dir2/*", "dir/dir2/file/", "inexact"),
    ("**/dir2/**", "dir/dir2/dir3/file", "exact"),
    ("**/dir2/**", "dir/dir2/dir3/file/", "exact"),
    ("**file", "file", "exact"),
    ("**file", "dir/file", "exact"),
    ("**/file", "dir/file", "exact"),
    ("**file", "dir/dir/file", "exact"),
    ("**/file", "dir/dir/file", "exact"),
    ("**/file*", "dir/dir/file", "exact"),
    ("**/file*", "dir/dir/file.txt", "exact"),
    ("**/file*txt", "dir/dir/file.txt", "exact"),
    ("**/file*.txt", "dir/dir/file.txt", "exact"),
    ("**/file*.txt*", "dir/dir/file.txt", "exact"),
    ("**/**/*.txt", "dir/dir/file.txt", "exact"),
    ("**/**/*.txt2", "dir/dir/file.txt", "fail"),
    ("**/*.txt", "file.txt", "exact"),
    ("**/**/*.txt", "file.txt", "exact"),
    ("a**/*.txt", "a/file.txt", "exact"),
    ("a**/*.txt", "a/dir/file.txt", "exact"),
    ("a**/*.txt", "a/dir/dir/file.txt", "exact"),
    ("a/*.txt", "a/dir/file.txt", "fail"),
    ("a/*.txt", "a/file.txt", "exact"),
    ("a/*.txt**", "a/file.txt", "exact"),
    ("a[b-d]e", "ae", "fail"),
    ("a[b-d]e", "ace", "exact"),
    ("a[b-d]e", "aae", "fail"),
    ("a[^b-d]e", "aze", "exact"),
    (".*", ".foo", "exact"),
    (".*", "foo", "fail"),
    ("abc.def", "abcdef", "fail"),
    ("abc.def", "abc.def", "exact"),
    ("abc.def", "abcZdef", "fail"),
    ("abc?def", "abcZdef", "exact"),
    ("abc?def", "abcdef", "fail"),
    ("**/foo/bar", "foo/bar", "exact"),
    ("**/foo/bar", "dir/foo/bar", "exact"),
    ("**/foo/bar", "dir/dir2/foo/bar", "exact"),
    ("abc/**", "abc", "fail"),
    ("abc/**", "abc/def", "exact"),
    ("abc/**", "abc/def/ghi", "exact"),
    ("**/.foo", ".foo", "exact"),
    ("**/.foo", "bar.foo", "fail"),
    ("a(b)c/def", "a(b)c/def", "exact"),
    ("a(b)c/def", "a(b)c/xyz", "fail"),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", "exact"),
    (
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "exact",
    ),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", "exact"),
    ("a\\\\", "a\\", "exact"),
    ("a\\*b", "a*b", "exact"),
]

# moby TestMatches multiPatternTests.
MOBY_MULTI = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (
        ["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        False,
    ),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
]

# moby TestMatch (Go's own filepath.Match cases run through the matcher, which
# also matches parent directories): (pattern, path, matches, bad pattern).
MOBY_GO_MATCH = [
    ("abc", "abc", True, False),
    ("*", "abc", True, False),
    ("*c", "abc", True, False),
    ("a*", "a", True, False),
    ("a*", "abc", True, False),
    ("a*", "ab/c", True, False),
    ("a*/b", "abc/b", True, False),
    ("a*/b", "a/c/b", False, False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True, False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True, False),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False, False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False, False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True, False),
    ("a*b?c*x", "abxbbxdbxebxczzy", False, False),
    ("ab[c]", "abc", True, False),
    ("ab[b-d]", "abc", True, False),
    ("ab[e-g]", "abc", False, False),
    ("ab[^c]", "abc", False, False),
    ("ab[^b-d]", "abc", False, False),
    ("ab[^e-g]", "abc", True, False),
    ("a\\*b", "a*b", True, False),
    ("a\\*b", "ab", False, False),
    ("a?b", "a☺b", True, False),
    ("a[^a]b", "a☺b", True, False),
    ("a???b", "a☺b", False, False),
    ("a[^a][^a][^a]b", "a☺b", False, False),
    ("[a-ζ]*", "α", True, False),
    ("*[a-ζ]", "A", False, False),
    ("a?b", "a/b", False, False),
    ("a*b", "a/b", False, False),
    ("[\\]a]", "]", True, False),
    ("[\\-]", "-", True, False),
    ("[x\\-]", "x", True, False),
    ("[x\\-]", "-", True, False),
    ("[x\\-]", "z", False, False),
    ("[\\-x]", "x", True, False),
    ("[\\-x]", "-", True, False),
    ("[\\-x]", "a", False, False),
    ("[]a]", "]", False, True),
    ("[-]", "-", False, True),
    ("[x-]", "x", False, True),
    ("[x-]", "-", False, True),
    ("[x-]", "z", False, True),
    ("[-x]", "x", False, True),
    ("[-x]", "-", False, True),
    ("[-x]", "a", False, True),
    ("\\", "a", False, True),
    ("[a-b-c]", "a", False, True),
    ("[", "a", False, True),
    ("[^", "a", False, True),
    ("[^bc", "a", False, True),
    ("a[", "a", False, True),
    ("a[", "ab", False, True),
    ("*x", "xxx", True, False),
]


@pytest.mark.parametrize(("pattern", "path", "kind"), MOBY_MATCHES)
def test_moby_matches_exact(pattern, path, kind):
    assert parse_pattern(pattern).match(path) is (kind == "exact")


@pytest.mark.parametrize(("pattern", "path", "kind"), MOBY_MATCHES)
def test_moby_matches_or_parent_matches(pattern, path, kind):
    assert IgnoreMatcher([pattern]).matches(path) is (kind != "fail")


@pytest.mark.parametrize(("patterns", "path", "expected"), MOBY_MULTI)
def test_moby_multi_pattern(patterns, path, expected):
    assert IgnoreMatcher(patterns).matches(path) is expected


@pytest.mark.parametrize(("pattern", "path", "expected", "bad"), MOBY_GO_MATCH)
def test_moby_go_filepath_match_cases(pattern, path, expected, bad):
    if bad:
        with pytest.raises(ContextError, match="invalid pattern"):
            IgnoreMatcher([pattern])
    else:
        assert IgnoreMatcher([pattern]).ignored(path) is expected


# Go's filepath.Match itself, without the parent-directory rule (which is the
# only reason "a*" matches "ab/c" above).
GO_MATCH_ALONE = [
    (p, n, e) for p, n, e, bad in MOBY_GO_MATCH if not bad and (p, n) != ("a*", "ab/c")
]


@pytest.mark.parametrize(("pattern", "name", "expected"), GO_MATCH_ALONE)
def test_go_match_alone(pattern, name, expected):
    assert go_match(pattern, name) is expected


def test_go_match_does_not_cross_slash():
    assert not go_match("a*", "ab/c")
    with pytest.raises(ValueError):
        go_match("[x-]", "x")


def test_moby_simple_cases():
    assert IgnoreMatcher(["*"]).ignored("fileutils.go")
    assert IgnoreMatcher(["*.go"]).ignored("fileutils.go")
    # an exception before the pattern it would undo has no effect
    assert IgnoreMatcher(["!fileutils.go", "*.go"]).ignored("fileutils.go")
    assert not IgnoreMatcher(["*.go", "!fileutils.go"]).ignored("fileutils.go")
    for patterns in (
        ["docs", "!docs/README.md"],
        ["docs/", "!docs/README.md"],
        ["docs/*", "!docs/README.md"],
    ):
        assert not IgnoreMatcher(patterns).ignored("docs/README.md")
        assert IgnoreMatcher(patterns).ignored("docs/other.md")
    # the context itself is never excluded
    assert not IgnoreMatcher(["*.go"]).ignored(".")
    assert not IgnoreMatcher(["**"]).ignored(".")
    assert not IgnoreMatcher([]).ignored("/any/path/there")


def test_moby_pattern_errors_and_cleaning():
    with pytest.raises(ContextError, match='illegal exclusion pattern: "!"'):
        IgnoreMatcher(["!"])
    with pytest.raises(ContextError, match="invalid pattern"):
        IgnoreMatcher(["["])
    assert len(IgnoreMatcher(["docs", "config", ""]).patterns) == 2
    for patterns in (
        ["docs", "!docs/README.md"],
        ["docs", "  !docs/README.md"],
        ["docs", "!docs/README.md  "],
    ):
        assert IgnoreMatcher(patterns).has_exceptions


def test_go_clean_is_go_not_posix():
    assert go_clean("") == "."
    assert go_clean("//a//b/") == "/a/b"
    assert go_clean("a/../../b") == "../b"
    assert go_clean("/../a") == "/a"
    assert go_clean("./a/./b/..") == "a"


def test_read_ignore_file_like_moby_readall():
    # moby/patternmatcher ignorefile TestReadAll
    content = (
        "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! "
    )
    assert read_ignore_file(content) == [
        "test1",
        "test2",
        "a/file/here",
        "lastfile",
        "!inverted/abs/path",
        "!",
        "!",
    ]
    assert read_ignore_file("") == []


def test_read_ignore_file_details():
    text = "\ufeff# comment on the first line after a BOM\r\n  spaced.txt  \r\n #not a comment\nsub//dir/../x/\n/\n"
    assert read_ignore_file(text) == ["spaced.txt", "#not a comment", "sub/x", "/"]


def test_dockerfile_specific_ignore_file_wins(tmp_path):
    context = tmp_path / "ctx"
    (context / "build").mkdir(parents=True)
    (context / ".dockerignore").write_text("general\n")
    dockerfile = context / "build" / "app.Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    assert load_ignore_patterns(context, dockerfile) == ["general"]
    (context / "build" / "app.Dockerfile.dockerignore").write_text("specific\n!keep\n")
    assert load_ignore_patterns(context, dockerfile) == ["specific", "!keep"]
    # another Dockerfile in the same directory is not affected
    assert load_ignore_patterns(context, context / "build" / "Dockerfile") == ["general"]
    assert load_ignore_patterns(context, None) == ["general"]
    assert load_ignore_patterns(tmp_path, None) == []


def _tree(root, files):
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)


def _copied_paths(context):
    (selected,) = context.select(".")
    return [entry.rel for entry in selected.entries()[1:]]


def test_context_walk_directory_exclusion_with_exceptions(tmp_path):
    _tree(
        tmp_path,
        [
            "Dockerfile",
            "src/app.py",
            "src/app.pyc",
            "src/pkg/mod.pyc",
            "node_modules/a/index.js",
            "node_modules/keep/index.js",
            "docs/README.md",
            "docs/guide.md",
            "secret.env",
        ],
    )
    patterns = read_ignore_file(
        "# build junk\n**/*.pyc\nnode_modules\n!node_modules/keep\ndocs\n!docs/README.md\n*.env\n"
    )
    context = BuildContext(tmp_path, IgnoreMatcher(patterns))
    assert _copied_paths(context) == [
        "Dockerfile",
        "docs",
        "docs/README.md",
        "node_modules",
        "node_modules/keep",
        "node_modules/keep/index.js",
        "src",
        "src/app.py",
        "src/pkg",
    ]


def test_context_walk_exception_with_wildcard_walks_excluded_dirs(tmp_path):
    _tree(tmp_path, ["vendor/a/x.go", "vendor/a/x.txt", "vendor/b/y.txt", "main.go"])
    context = BuildContext(tmp_path, IgnoreMatcher(["vendor", "!**/*.go"]))
    assert _copied_paths(context) == ["main.go", "vendor", "vendor/a", "vendor/a/x.go"]


def test_last_match_wins_over_earlier_exception(tmp_path):
    _tree(tmp_path, ["logs/keep.log", "logs/other.log", "app"])
    context = BuildContext(tmp_path, IgnoreMatcher(["logs", "!logs/keep.log", "logs/*.log"]))
    assert _copied_paths(context) == ["app"]

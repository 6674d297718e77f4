"""BuildContext.select: how one COPY/ADD source resolves, on real trees."""

from __future__ import annotations

import os
import stat

import pytest

from imgbuild.context.dockerignore import IgnoreMatcher
from imgbuild.context.source import BuildContext
from imgbuild.errors import ContextError


def make_tree(root, files):
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


@pytest.fixture
def ctx_dir(tmp_path):
    root = tmp_path / "ctx"
    make_tree(
        root,
        {
            "a.txt": "a",
            "b.txt": "b",
            ".hidden.txt": "h",
            "c.md": "c",
            "src/one/main.go": "1",
            "src/two/main.go": "2",
            "src/two/util.go": "u",
            "src/readme": "r",
        },
    )
    return root


def context(root, patterns=()):
    return BuildContext(root, IgnoreMatcher(list(patterns)))


def summary(selected):
    return [(item.name, item.relpath, item.is_dir) for item in selected]


def test_plain_file_and_directory(ctx_dir):
    ctx = context(ctx_dir)
    assert summary(ctx.select("a.txt")) == [("a.txt", "a.txt", False)]
    assert summary(ctx.select("./src/../a.txt")) == [("a.txt", "a.txt", False)]
    assert summary(ctx.select("src")) == [("src", "src", True)]
    assert summary(ctx.select("src/")) == [("src", "src", True)]
    # "." and a leading "/" both mean the context root
    assert summary(ctx.select(".")) == [(".", "", True)]
    assert summary(ctx.select("/")) == [(".", "", True)]
    assert summary(ctx.select("/a.txt")) == [("a.txt", "a.txt", False)]


def test_wildcards_match_per_component_in_byte_order(ctx_dir):
    ctx = context(ctx_dir)
    assert [item.name for item in ctx.select("*.txt")] == [".hidden.txt", "a.txt", "b.txt"]
    assert [item.relpath for item in ctx.select("src/*/main.go")] == [
        "src/one/main.go",
        "src/two/main.go",
    ]
    assert [item.relpath for item in ctx.select("src/t?o/*.go")] == [
        "src/two/main.go",
        "src/two/util.go",
    ]
    assert [item.name for item in ctx.select("[ab].txt")] == ["a.txt", "b.txt"]
    assert summary(ctx.select("sr*")) == [("src", "src", True)]
    # "*" does not cross "/"
    assert ctx.select("*.go") == []


def test_wildcard_without_match_selects_nothing_but_needs_its_directory(ctx_dir):
    ctx = context(ctx_dir)
    assert ctx.select("*.nothing") == []
    assert ctx.select("src/*.nothing") == []
    with pytest.raises(ContextError, match="missing/\\*.txt"):
        ctx.select("missing/*.txt")


def test_missing_plain_source_is_an_error_naming_it(ctx_dir):
    with pytest.raises(ContextError) as error:
        context(ctx_dir).select("nope/file.txt")
    assert str(error.value) == (
        "COPY failed: file not found in build context or excluded by .dockerignore: nope/file.txt"
    )
    with pytest.raises(ContextError, match="^ADD failed"):
        context(ctx_dir).select("a.txt/x", instruction="ADD")


@pytest.mark.parametrize(
    ("source", "relpath"),
    [("../a.txt", "a.txt"), ("src/../../a.txt", "a.txt"), ("/../a.txt", "a.txt"), ("./..", ""), ("../../src", "src")],
)
def test_dotdot_above_the_context_stays_at_its_root(ctx_dir, source, relpath):
    """BuildKit cleans a source path from the root: ``..`` there is the root itself."""
    (selected,) = context(ctx_dir).select(source)
    assert selected.relpath == relpath


def test_dotdot_above_the_context_never_reads_the_parent(tmp_path, ctx_dir):
    (tmp_path / "x").write_text("host file beside the context")
    with pytest.raises(ContextError) as error:
        context(ctx_dir).select("../x")
    assert str(error.value) == "COPY failed: file not found in build context or excluded by .dockerignore: ../x"


def test_symlinks_on_the_source_path_are_followed_inside_the_context(ctx_dir):
    os.symlink("src/two", ctx_dir / "two-link")
    os.symlink("a.txt", ctx_dir / "a-link")
    os.symlink("../readme", ctx_dir / "src" / "one" / "up")
    ctx = context(ctx_dir)
    assert summary(ctx.select("two-link/util.go")) == [("util.go", "src/two/util.go", False)]
    assert summary(ctx.select("two-link")) == [("two-link", "src/two", True)]
    # the last component is followed too; the name stays the link's
    assert summary(ctx.select("a-link")) == [("a-link", "a.txt", False)]
    assert summary(ctx.select("src/one/up")) == [("up", "src/readme", False)]
    # a wildcard match that is a symlink is followed; symlinked dirs are not walked through
    assert summary(ctx.select("a-l*")) == [("a-link", "a.txt", False)]
    assert ctx.select("two-l*/util.go") == []


def test_symlinks_inside_a_copied_directory_stay_symlinks(ctx_dir):
    os.symlink("/etc/passwd", ctx_dir / "src" / "abs-link")
    (selected,) = context(ctx_dir).select("src")
    links = {entry.rel: entry for entry in selected.entries() if stat.S_ISLNK(entry.st.st_mode)}
    assert list(links) == ["abs-link"]


@pytest.mark.parametrize(
    ("target", "source"),
    [
        ("/etc", "etc-link/passwd"),
        ("/etc/passwd", "passwd-link"),
        ("../outside", "out-link/secret"),
        ("src/../../outside/secret", "deep-link"),
    ],
)
def test_symlink_leading_out_of_the_context_is_followed_inside_it(tmp_path, ctx_dir, target, source):
    """As BuildKit: the target is resolved from the context root, so the host file is never found."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("host secret")
    os.symlink(target, ctx_dir / source.split("/")[0])
    with pytest.raises(ContextError, match="leads above the build context's root") as error:
        context(ctx_dir).select(source)
    assert target in str(error.value)


def test_symlink_leading_out_of_the_context_finds_the_file_at_the_root(ctx_dir):
    os.symlink("/a.txt", ctx_dir / "abs-link")
    os.symlink("../../../a.txt", ctx_dir / "src" / "up-link")
    ctx = context(ctx_dir)
    assert summary(ctx.select("abs-link")) == [("abs-link", "a.txt", False)]
    assert summary(ctx.select("src/up-link")) == [("up-link", "a.txt", False)]


def test_rootfs_resolves_like_a_chroot_and_never_reads_the_host(tmp_path):
    root = tmp_path / "rootfs"
    make_tree(root, {"etc/passwd": "root:x:0:0:image passwd\n", "opt/app/bin": "app"})
    os.symlink("/etc/passwd", root / "opt" / "passwd-link")
    os.symlink("../../../../../../etc", root / "opt" / "etc-up")
    rootfs = BuildContext.for_rootfs(root, label="stage builder")
    for source in ("/opt/passwd-link", "/opt/etc-up/passwd", "../../etc/passwd"):
        (selected,) = rootfs.select(source)
        assert selected.path == root / "etc" / "passwd"
        assert selected.path.read_text() == "root:x:0:0:image passwd\n"
    with pytest.raises(ContextError, match="/missing: not found in stage builder"):
        rootfs.select("/missing")


def test_owner_is_reset_for_the_context_and_kept_for_a_rootfs(tmp_path):
    root = tmp_path / "r"
    make_tree(root, {"f": "x"})
    os.chown(root / "f", 1234, 5678)
    st = os.lstat(root / "f")
    assert context(root).owner(st) == (0, 0)
    assert BuildContext.for_rootfs(root).owner(st) == (1234, 5678)


def test_ignored_paths_are_invisible(ctx_dir):
    os.symlink("a.txt", ctx_dir / "link-to-ignored")
    os.symlink("b.txt", ctx_dir / "ignored-link")
    ctx = context(ctx_dir, ["a.txt", "ignored-link", "src/two", "!src/two/util.go"])
    for source in ("a.txt", "link-to-ignored", "ignored-link", "src/two/main.go"):
        with pytest.raises(ContextError, match="excluded by .dockerignore"):
            ctx.select(source)
    assert [item.name for item in ctx.select("*.txt")] == [".hidden.txt", "b.txt"]
    # an excluded directory with a re-included file is there, with only that file
    (two,) = ctx.select("src/two")
    assert [entry.rel for entry in two.entries()] == ["", "util.go"]
    assert [item.relpath for item in ctx.select("src/*/*.go")] == [
        "src/one/main.go",
        "src/two/util.go",
    ]


def test_exclude_flag_filters_relative_to_the_source(ctx_dir):
    ctx = context(ctx_dir)
    (src,) = ctx.select("src", exclude=["*/util.go", "readme"])
    assert [entry.rel for entry in src.entries()] == [
        "",
        "one",
        "one/main.go",
        "two",
        "two/main.go",
    ]
    # on wildcard matches, the patterns see the path below the wildcard's directory
    assert [item.name for item in ctx.select("*", exclude=["*.txt"])] == ["c.md", "src"]
    (kept,) = ctx.select("src", exclude=["**", "!one"])
    assert [entry.rel for entry in kept.entries()] == ["", "one", "one/main.go"]

"""copy_into: Docker's COPY rules checked on the resulting tree (paths, modes, owners, bytes)."""

from __future__ import annotations

import os
import stat

import pytest

from imgbuild.builder.copy import HeredocFile, copy_into
from imgbuild.context.dockerignore import IgnoreMatcher
from imgbuild.context.source import BuildContext
from imgbuild.errors import BuildError

OLD = 1_000_000_000  # a fixed mtime (2001) the copies must keep


def write(path, data, mode=0o644, owner=(0, 0), mtime=OLD):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, *owner)  # before chmod: chown clears setuid
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def ctx_dir(tmp_path):
    root = tmp_path / "ctx"
    write(root / "hello.txt", b"hello\n", 0o640, owner=(1000, 1000))
    write(root / "run.sh", b"#!/bin/sh\n", 0o4755)
    write(root / "src" / "main.go", b"package main\n", 0o600)
    write(root / "src" / "lib" / "util.go", b"package lib\n")
    os.symlink("lib/util.go", root / "src" / "util-link")
    os.chmod(root / "src" / "lib", 0o2750)
    os.utime(root / "src" / "lib", (OLD, OLD))
    return root


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "real").mkdir()
    os.symlink("/real", root / "app")
    return root


def ctx(root):
    return BuildContext(root, IgnoreMatcher([]))


def sel(root, *sources):
    context = ctx(root)
    return [item for source in sources for item in context.select(source)]


def info(path):
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_file_to_a_new_path_keeps_mode_and_mtime_and_is_owned_by_root(ctx_dir, rootfs):
    copy_into(rootfs, sel(ctx_dir, "hello.txt"), "/opt/greeting")
    target = rootfs / "opt" / "greeting"
    assert target.read_bytes() == b"hello\n"
    assert info(target) == (0o640, 0, 0)  # the host owner 1000 is not copied
    assert os.lstat(target).st_mtime == OLD
    assert info(rootfs / "opt") == (0o755, 0, 0)


def test_trailing_slash_makes_a_directory(ctx_dir, rootfs):
    copy_into(rootfs, sel(ctx_dir, "hello.txt"), "/opt/dir/")
    assert (rootfs / "opt" / "dir" / "hello.txt").read_bytes() == b"hello\n"
    assert info(rootfs / "opt" / "dir") == (0o755, 0, 0)


def test_file_onto_an_existing_directory_goes_inside(ctx_dir, rootfs):
    copy_into(rootfs, sel(ctx_dir, "hello.txt"), "/etc")
    assert (rootfs / "etc" / "hello.txt").is_file()


def test_directory_source_copies_its_contents(ctx_dir, rootfs):
    copy_into(rootfs, sel(ctx_dir, "src"), "/srv/code")
    code = rootfs / "srv" / "code"
    assert sorted(os.listdir(code)) == ["lib", "main.go", "util-link"]
    assert not (code / "src").exists()
    assert (code / "main.go").read_bytes() == b"package main\n"
    assert info(code / "main.go") == (0o600, 0, 0)
    assert info(code / "lib") == (0o2750, 0, 0)  # nested dirs keep mode (setgid too) ...
    assert os.lstat(code / "lib").st_mtime == OLD  # ... and mtime, set after their children
    assert os.readlink(code / "util-link") == "lib/util.go"  # symlinks stay symlinks
    assert info(code) == (0o755, 0, 0)  # the destination is created, not copied


def test_existing_destination_directory_keeps_its_metadata(ctx_dir, rootfs):
    existing = rootfs / "srv"
    existing.mkdir(0o711)
    os.chmod(existing, 0o711)
    os.chown(existing, 5, 6)
    copy_into(rootfs, sel(ctx_dir, "src"), "/srv")
    assert info(existing) == (0o711, 5, 6)
    assert (existing / "lib" / "util.go").is_file()


def test_several_sources_need_a_directory_destination(ctx_dir, rootfs):
    message = "When using COPY with more than one source file, the destination must be a directory and end with a /"
    with pytest.raises(BuildError) as error:
        copy_into(rootfs, sel(ctx_dir, "hello.txt", "run.sh"), "/opt/x")
    assert str(error.value) == message
    with pytest.raises(BuildError, match="When using ADD with more than one source"):
        copy_into(rootfs, sel(ctx_dir, "*.*"), "/opt/x", is_add=True)
    assert not (rootfs / "opt").exists()
    copy_into(rootfs, sel(ctx_dir, "*.*"), "/opt/x/")
    assert sorted(os.listdir(rootfs / "opt" / "x")) == ["hello.txt", "run.sh"]
    # a wildcard with one match may name a file
    copy_into(rootfs, sel(ctx_dir, "h*.txt"), "/opt/single")
    assert (rootfs / "opt" / "single").read_bytes() == b"hello\n"


def test_relative_destination_is_under_workdir(ctx_dir, rootfs):
    copy_into(rootfs, sel(ctx_dir, "hello.txt", "run.sh"), ".", workdir="/work/dir")
    assert sorted(os.listdir(rootfs / "work" / "dir")) == ["hello.txt", "run.sh"]
    copy_into(rootfs, sel(ctx_dir, "hello.txt"), "sub/", workdir="/work")
    assert (rootfs / "work" / "sub" / "hello.txt").is_file()


def test_missing_parents_get_the_chown_user(ctx_dir, rootfs):
    copy_into(rootfs, sel(ctx_dir, "src"), "/home/app/code", chown=(1000, 1001))
    assert info(rootfs / "home") == (0o755, 1000, 1001)
    assert info(rootfs / "home" / "app" / "code") == (0o755, 1000, 1001)
    for rel in ("main.go", "lib", "lib/util.go", "util-link"):
        st = os.lstat(rootfs / "home" / "app" / "code" / rel)
        assert (st.st_uid, st.st_gid) == (1000, 1001), rel
    assert info(rootfs)[1:] == (0, 0)  # existing directories are not touched
    assert info(rootfs / "etc")[1:] == (0, 0)


def test_setuid_and_setgid_survive_and_chmod_sets_the_whole_mode(ctx_dir, rootfs):
    copy_into(rootfs, sel(ctx_dir, "run.sh"), "/bin/")
    assert info(rootfs / "bin" / "run.sh") == (0o4755, 0, 0)
    copy_into(rootfs, sel(ctx_dir, "run.sh", "src"), "/chmodded/", chmod=0o640)
    out = rootfs / "chmodded"
    # current BuildKit (fsutil copyFileInfo): an octal --chmod is the whole mode, special bits too
    assert info(out / "run.sh")[0] == 0o640
    assert info(out / "main.go")[0] == 0o640
    assert info(out / "lib")[0] == 0o640  # copied directories too
    assert info(out)[0] == 0o640  # and (dockerfile >= 1.15) the destination it created
    copy_into(rootfs, sel(ctx_dir, "src/main.go"), "/special/", chmod=0o4750)
    assert info(rootfs / "special" / "main.go")[0] == 0o4750
    assert info(rootfs / "special")[0] == 0o750


def test_destination_symlinks_resolve_inside_the_rootfs(tmp_path, ctx_dir, rootfs):
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    host_file = write(host_dir / "victim", b"host data")
    os.symlink("../../../../../../../../" + str(host_dir).lstrip("/"), rootfs / "escape")
    os.symlink(str(host_file), rootfs / "etc" / "victim")

    copy_into(rootfs, sel(ctx_dir, "hello.txt"), "/app/")  # /app -> /real
    assert (rootfs / "real" / "hello.txt").is_file()

    copy_into(rootfs, sel(ctx_dir, "hello.txt"), "/escape/")
    assert os.listdir(host_dir) == ["victim"]
    assert (rootfs / str(host_dir).lstrip("/") / "hello.txt").is_file()

    # A destination that is a symlink is resolved like a chroot would (as
    # BuildKit's RootPath does): the file lands at the link's target in the rootfs.
    copy_into(rootfs, sel(ctx_dir, "hello.txt"), "/etc/victim")
    assert host_file.read_bytes() == b"host data"
    assert os.readlink(rootfs / "etc" / "victim") == str(host_file)
    assert (rootfs / str(host_file).lstrip("/")).read_bytes() == b"hello\n"

    # A symlink met under its own name inside a destination directory is
    # replaced, not written through.
    os.symlink(str(host_file), rootfs / "etc" / "hello.txt")
    copy_into(rootfs, sel(ctx_dir, "hello.txt"), "/etc/")
    assert host_file.read_bytes() == b"host data"
    assert not os.path.islink(rootfs / "etc" / "hello.txt")
    assert (rootfs / "etc" / "hello.txt").read_bytes() == b"hello\n"


def test_file_cannot_replace_a_directory_and_a_directory_not_a_file(ctx_dir, rootfs):
    (rootfs / "opt" / "hello.txt").mkdir(parents=True)
    with pytest.raises(BuildError, match="cannot replace directory /opt/hello.txt with a file"):
        copy_into(rootfs, sel(ctx_dir, "hello.txt"), "/opt/")
    (rootfs / "file").write_text("x")
    with pytest.raises(BuildError, match="non-directory"):
        copy_into(rootfs, sel(ctx_dir, "src"), "/file")


def test_hardlinks_within_a_source_are_kept(ctx_dir, rootfs):
    os.link(ctx_dir / "src" / "main.go", ctx_dir / "src" / "main-again.go")
    copy_into(rootfs, sel(ctx_dir, "src"), "/code")
    one, two = os.lstat(rootfs / "code" / "main.go"), os.lstat(rootfs / "code" / "main-again.go")
    assert one.st_ino == two.st_ino and one.st_nlink == 2


def test_xattrs_and_fifos_are_copied(ctx_dir, rootfs):
    os.setxattr(ctx_dir / "src" / "main.go", "user.origin", b"ctx")
    os.mkfifo(ctx_dir / "src" / "pipe")
    os.chmod(ctx_dir / "src" / "pipe", 0o620)
    copy_into(rootfs, sel(ctx_dir, "src"), "/code")
    assert os.getxattr(rootfs / "code" / "main.go", "user.origin") == b"ctx"
    assert stat.S_ISFIFO(os.lstat(rootfs / "code" / "pipe").st_mode)
    assert info(rootfs / "code" / "pipe")[0] == 0o620


def test_copy_from_a_rootfs_keeps_owners_unless_chown(tmp_path, rootfs):
    stage = tmp_path / "stage"
    write(stage / "usr" / "bin" / "tool", b"tool", 0o755, owner=(1234, 5678))
    os.symlink("tool", stage / "usr" / "bin" / "tool-link")
    os.lchown(stage / "usr" / "bin" / "tool-link", 42, 43)
    source = BuildContext.for_rootfs(stage)
    copy_into(rootfs, source.select("/usr/bin"), "/opt/bin")
    assert info(rootfs / "opt" / "bin" / "tool") == (0o755, 1234, 5678)
    assert os.lstat(rootfs / "opt" / "bin" / "tool-link")[4:6] == (42, 43)
    copy_into(rootfs, source.select("/usr/bin/tool"), "/opt/mine", chown=(7, 8))
    assert info(rootfs / "opt" / "mine") == (0o755, 7, 8)


def test_excluded_and_ignored_files_are_not_copied(ctx_dir, rootfs):
    context = BuildContext(ctx_dir, IgnoreMatcher(["src/lib"]))
    copy_into(rootfs, context.select("src", exclude=["*.go"]), "/code")
    assert sorted(os.listdir(rootfs / "code")) == ["util-link"]


def test_empty_wildcard_copies_nothing(ctx_dir, rootfs):
    copy_into(rootfs, sel(ctx_dir, "*.none"), "/opt/")
    assert not (rootfs / "opt").exists()


def test_heredoc_files(rootfs):
    copy_into(rootfs, [HeredocFile("EOF", "echo hi\n")], "/usr/local/bin/hello")
    target = rootfs / "usr" / "local" / "bin" / "hello"
    assert target.read_bytes() == b"echo hi\n"
    assert info(target) == (0o644, 0, 0)
    copy_into(rootfs, [HeredocFile("script.sh", b"#!/bin/sh\n")], "/scripts/", chmod=0o755, chown=(3, 4))
    assert info(rootfs / "scripts" / "script.sh") == (0o755, 3, 4)
    copy_into(rootfs, [HeredocFile("a", "1"), HeredocFile("b", "2")], "/notes/")
    assert sorted(os.listdir(rootfs / "notes")) == ["a", "b"]

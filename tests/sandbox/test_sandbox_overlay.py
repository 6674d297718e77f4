"""Real overlayfs mounts: stacking, whiteouts, deep stacks, unmounting, copy-up pruning."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from imgbuild.errors import SandboxError
from imgbuild.sandbox.overlay import mount_overlay, prune_copied_up_dirs
from imgbuild.store.mounts import mounts_under, unmount_all_under

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _root_only(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts)")
    yield
    # Whatever a test did, nothing of it may stay mounted.
    leftover = mounts_under(tmp_path)
    unmount_all_under(tmp_path)
    assert leftover == []


def tree(root: Path) -> dict[str, str]:
    """Every entry below ``root``: relative path -> file content, "dir/" or "link->T"."""
    result = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                result[relative] = "link->" + os.readlink(path)
            elif path.is_dir():
                result[relative] = "dir/"
            else:
                result[relative] = path.read_text()
    return result


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def make_opaque(path: Path) -> None:
    os.setxattr(path, "trusted.overlay.opaque", b"y")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_zero_lowerdirs_gives_an_empty_writable_root(tmp_path):
    upper = tmp_path / "upper"
    with mount_overlay([], upper, tmp_path / "work", tmp_path / "merged") as merged:
        assert merged == (tmp_path / "merged").resolve()
        assert tree(merged) == {}
        write(merged / "etc" / "new", "hello")
        assert str(merged) in mounts_under(tmp_path)
    assert mounts_under(tmp_path) == []
    assert tree(upper) == {"etc": "dir/", "etc/new": "hello"}


def test_one_lowerdir_is_visible_and_writes_go_to_the_upperdir(tmp_path):
    lower = tmp_path / "lower"
    write(lower / "a", "lower a")
    write(lower / "dir" / "b", "lower b")
    upper = tmp_path / "upper"
    with mount_overlay([lower], upper, tmp_path / "work", tmp_path / "merged") as merged:
        assert tree(merged) == {"a": "lower a", "dir": "dir/", "dir/b": "lower b"}
        (merged / "a").write_text("changed")
        (merged / "dir" / "b").unlink()
    assert tree(lower) == {"a": "lower a", "dir": "dir/", "dir/b": "lower b"}
    assert (upper / "a").read_text() == "changed"
    assert stat.S_ISCHR(os.lstat(upper / "dir" / "b").st_mode)  # the whiteout


def test_three_lowerdirs_merge_top_first_with_whiteouts_and_opaque_dirs(tmp_path):
    bottom, middle, top = tmp_path / "bottom", tmp_path / "middle", tmp_path / "top"
    write(bottom / "gone", "deleted by middle")
    write(bottom / "kept", "bottom")
    write(bottom / "replaced" / "old", "hidden by the opaque dir")
    write(bottom / "shadowed", "bottom version")
    middle.mkdir()
    whiteout(middle / "gone")
    write(middle / "replaced" / "new", "middle")
    make_opaque(middle / "replaced")
    write(middle / "shadowed", "middle version")
    write(top / "shadowed", "top version")
    os.symlink("kept", top / "link")

    with mount_overlay(
        [top, middle, bottom], tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    ) as merged:
        assert tree(merged) == {
            "kept": "bottom",
            "link": "link->kept",
            "replaced": "dir/",
            "replaced/new": "middle",
            "shadowed": "top version",
        }


@pytest.mark.parametrize("count", [150, 200, 300])
def test_deep_stacks_beyond_the_mount_option_page(tmp_path, count):
    # Up to 200 layers are mounted by descriptor, more through short symlinks.
    # Snapshot paths as long as a store's: the plain option string would not
    # fit in the kernel's one page.
    base = tmp_path / ("snapshots-" + "x" * 40)
    lowerdirs = [base / f"{index:064x}" for index in range(count)]
    assert len(":".join(str(path) for path in lowerdirs)) > 4096
    for index, lowerdir in enumerate(lowerdirs):
        write(lowerdir / f"file{index}", str(index))
        write(lowerdir / "which", str(index))

    with mount_overlay(lowerdirs, tmp_path / "upper", tmp_path / "work", tmp_path / "m") as merged:
        names = set(os.listdir(merged))
        assert names == {f"file{index}" for index in range(count)} | {"which"}
        assert (merged / "which").read_text() == "0"  # lowerdirs[0] is the top
        assert (merged / f"file{count - 1}").read_text() == str(count - 1)


def super_options(target: Path) -> list[str]:
    """The overlay's own options at ``target``, as /proc/self/mountinfo lists them."""
    point = os.path.realpath(target)
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields, _, rest = line.partition(" - ")
            if fields.split()[4] == point:
                return rest.split()[2].split(",")
    raise AssertionError(f"{point} is not mounted")


@pytest.mark.parametrize("count", [0, 1, 300])  # the symlink way, descriptors, symlinks again
def test_overlays_are_volatile_so_unmounting_syncs_nothing(tmp_path, count):
    # A step's upperdir is synced when its layer is committed (builder/rootfs.py);
    # no unmount waits for every dirty page of the store's file system.
    lowerdirs = [tmp_path / f"lower{index}" for index in range(count)]
    for lowerdir in lowerdirs:
        write(lowerdir / "file", "x")
    with mount_overlay(lowerdirs, tmp_path / "upper", tmp_path / "work", tmp_path / "merged") as merged:
        options = super_options(merged)
        assert "fsync=volatile" in options or "volatile" in options, options  # 6.x says fsync=
        (merged / "written").write_text("kept in the upperdir")
    assert (tmp_path / "upper" / "written").read_text() == "kept in the upperdir"
    # A volatile mount marks its work dir; after a clean unmount the mark goes,
    # so the same dirs mount again (overlayfs refuses marked ones: EINVAL).
    with mount_overlay(lowerdirs, tmp_path / "upper", tmp_path / "work", tmp_path / "merged") as merged:
        assert (merged / "written").read_text() == "kept in the upperdir"


def test_awkward_characters_in_paths(tmp_path):
    lower = tmp_path / "snap,with:colon and space"
    write(lower / "f", "ok")
    upper = tmp_path / "up,per:dir"
    with mount_overlay([lower], upper, tmp_path / "wo,rk", tmp_path / "mer ged") as merged:
        assert (merged / "f").read_text() == "ok"
        assert mounts_under(tmp_path) == [str(merged)]


def test_unmounts_when_the_body_raises(tmp_path):
    with pytest.raises(ValueError, match="boom"):
        with mount_overlay([], tmp_path / "upper", tmp_path / "work", tmp_path / "merged"):
            raise ValueError("boom")
    assert mounts_under(tmp_path) == []


def test_unmounts_on_keyboard_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with mount_overlay([], tmp_path / "upper", tmp_path / "work", tmp_path / "merged"):
            raise KeyboardInterrupt
    assert mounts_under(tmp_path) == []


def test_missing_lowerdir_is_a_clear_error(tmp_path):
    with pytest.raises(SandboxError, match="snapshot directory .*nope is missing"):
        with mount_overlay([tmp_path / "nope"], tmp_path / "u", tmp_path / "w", tmp_path / "m"):
            pass
    assert mounts_under(tmp_path) == []


def test_busy_mount_is_detached_and_reported(tmp_path):
    with pytest.raises(SandboxError, match="still in use"):
        with mount_overlay([], tmp_path / "u", tmp_path / "w", tmp_path / "m") as merged:
            busy = open(merged / "open-file", "w")  # noqa: SIM115 - kept open on purpose
    busy.close()
    assert mounts_under(tmp_path) == []


def test_unmount_all_under_removes_nested_and_stacked_mounts(tmp_path):
    lower = tmp_path / "lower"
    write(lower / "sub" / "f", "x")
    with mount_overlay([lower], tmp_path / "u1", tmp_path / "w1", tmp_path / "m1") as first:
        with mount_overlay([], tmp_path / "u2", tmp_path / "w2", tmp_path / "m2"):
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(first / "sub")], check=True)
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(first / "sub")], check=True)
            assert len(mounts_under(tmp_path)) == 4
            assert mounts_under(tmp_path / "m1" / "sub") == [str(first / "sub")] * 2

            unmounted = unmount_all_under(tmp_path)

            assert sorted(unmounted) == sorted(
                [
                    str(first),
                    str(first / "sub"),
                    str(first / "sub"),
                    str((tmp_path / "m2").resolve()),
                ]
            )
            assert unmounted.index(str(first)) == 3  # the parent went last
            assert mounts_under(tmp_path) == []
        # Leaving the blocks after an external cleanup is fine.
    assert mounts_under(tmp_path) == []


def test_mounts_under_does_not_match_a_sibling_prefix(tmp_path):
    with mount_overlay([], tmp_path / "u", tmp_path / "w", tmp_path / "m-1"):
        assert mounts_under(tmp_path / "m") == []
        assert mounts_under(tmp_path / "m-1") == [str((tmp_path / "m-1").resolve())]


def test_prune_copied_up_dirs_drops_only_no_op_copies(tmp_path):
    lower_bottom, lower_top = tmp_path / "bottom", tmp_path / "top"
    for name in ("etc", "chmodded", "opaque", "deleted-above", "touched", "nested/inner"):
        (lower_bottom / name).mkdir(parents=True)
    lower_top.mkdir()
    whiteout(lower_top / "deleted-above")
    upper = tmp_path / "upper"
    with mount_overlay([lower_top, lower_bottom], upper, tmp_path / "w", tmp_path / "m") as merged:
        for name in ("etc", "chmodded", "touched", "nested/inner"):
            mtime = os.stat(merged / name).st_mtime_ns
            (merged / name / "stub").touch()
            (merged / name / "stub").unlink()
            if name != "touched":
                os.utime(merged / name, ns=(mtime, mtime))  # as the sandbox restores it
        os.chmod(merged / "chmodded", 0o700)
        (merged / "opaque").rmdir()
        (merged / "opaque").mkdir()  # a new, opaque directory over the old one
        (merged / "brand-new").mkdir()
        (merged / "deleted-above").mkdir()  # the name was whited out in a lower layer

    removed = prune_copied_up_dirs(upper, [lower_top, lower_bottom])

    assert sorted(removed) == ["etc", "nested", "nested/inner"]
    assert sorted(os.listdir(upper)) == [
        "brand-new",
        "chmodded",
        "deleted-above",
        "opaque",
        "touched",
    ]

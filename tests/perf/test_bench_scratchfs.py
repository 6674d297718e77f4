"""bench/scratchfs.py: the benchmark's own journaled ext4, on a loop device.

On ext4 without a journal, every file created within minutes of a mass deletion
pays a kernel scan of the freed inodes (see the module's docstring), which
billed each tool's cold build for the deletions before it. The scratch
filesystem must therefore be ext4 with a journal (checked with the same test
the harness uses to decide on a settle), and must leave nothing behind: no
mount, no loop device, no file.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest


def loop_devices() -> str:
    return subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.root
def test_scratch_filesystem_is_a_journaled_ext4_and_leaves_nothing(run, scratchfs, tmp_path):
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        pytest.skip("needs root and loop devices")
    log = tmp_path / "scratch.log"
    with scratchfs.scratch_filesystem(tmp_path, 1, log) as mountpoint:
        described = run.filesystem_of(mountpoint / "x")
        assert described.startswith("ext4 /dev/loop"), described
        # what the harness checks to decide on a settle: a journal, so none
        assert run.inode_reuse_delay(mountpoint / "x") == 0
        device = described.split()[1]
        journal = Path("/sys/fs/ext4", Path(device).name, "journal_task").read_text().strip()
        assert journal != "<none>"
        (mountpoint / "file").write_bytes(b"x" * 4096)
        image = mountpoint.with_suffix(".img")
        assert str(image) in loop_devices()
    assert list(tmp_path.iterdir()) == [log]  # no mount point, no image
    assert str(image) not in loop_devices()
    assert f" {mountpoint} " not in Path("/proc/self/mountinfo").read_text()
    assert "mkfs.ext4" in log.read_text() and "losetup --detach" in log.read_text()


def test_too_little_room_makes_nothing(scratchfs, tmp_path):
    free_gib = int(os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize / 2**30)
    with pytest.raises(scratchfs.ScratchUnavailable, match="--scratch-gib"):
        with scratchfs.scratch_filesystem(tmp_path, free_gib + 10, tmp_path / "log"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_missing_parent_is_a_clear_error(scratchfs, tmp_path):
    with pytest.raises(scratchfs.ScratchUnavailable, match="cannot use .*missing"):
        with scratchfs.scratch_filesystem(tmp_path / "missing", 1, tmp_path / "log"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_unavailable_scratch_runs_in_the_parent_with_a_note(run, scratchfs, tmp_path, capsys):
    with ExitStack() as stack:
        parent = run.make_scratch(stack, tmp_path, 10**6, tmp_path / "log")
    assert parent == tmp_path
    assert "NOTE: running in" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("journal", "flags", "expected"),
    [
        (False, [], "on"),
        (False, ["--smoke"], "off"),  # the smoke checks the harness, not figures
        (True, [], "off"),
        (True, ["--scratch-fs", "on"], "on"),
        (False, ["--scratch-fs", "off"], "off"),
    ],
)
def test_auto_makes_a_scratch_filesystem_only_where_deletions_cost(run, monkeypatch, journal, flags,
                                                                   expected):
    monkeypatch.setattr(run, "inode_reuse_delay", lambda path: 0.0 if journal else 61.0)
    assert run.parse_args(flags).scratch_fs == expected

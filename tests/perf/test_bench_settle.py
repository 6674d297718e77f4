"""bench/run.py: a cold case deletes every tool's old state before it times any
tool, and settles after the deletions on ext4 without a journal.

There, a file created within a minute of mass deletion in its block group
makes the kernel scan every freed inode (fs/ext4/ialloc.c, recently_deleted):
deleting one tool's store just before timing the next would bill that tool
for it. The order is checked with stand-in tools that record what the harness
asks of them; the filesystem check reads mountinfo and sysfs files made here.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def calls(run, monkeypatch) -> list[str]:
    """What the harness asked of the stand-in tools, settles included, in order."""
    recorded: list[str] = []
    monkeypatch.setattr(run, "settle_after_deletions", lambda seconds: recorded.append(f"settle {seconds}"))
    return recorded


def mountinfo(tmp_path: Path, *mounts: tuple[str, str, str]) -> str:
    """A mountinfo file with (mount point, fstype, source) lines."""
    lines = [
        f"{20 + i} 1 254:{i} / {point} rw,relatime shared:{i} - {fstype} {source} rw\n"
        for i, (point, fstype, source) in enumerate(mounts)
    ]
    path = tmp_path / "mountinfo"
    path.write_text("".join(lines))
    return str(path)


def sysfs(tmp_path: Path, device: str, journal_task: str) -> Path:
    root = tmp_path / "ext4"
    (root / device).mkdir(parents=True)
    (root / device / "journal_task").write_text(journal_task + "\n")
    return root


def test_ext4_without_a_journal_needs_the_reuse_delay(run, tmp_path):
    info = mountinfo(tmp_path, ("/", "ext4", "/dev/vdz"), ("/var/tmp/mem", "tmpfs", "tmpfs"))
    no_journal = sysfs(tmp_path, "vdz", "<none>")
    assert run.inode_reuse_delay(Path("/var/tmp/bench"), info, no_journal) == run.INODE_REUSE_DELAY
    assert run.INODE_REUSE_DELAY > 60
    # a mount below takes precedence
    assert run.inode_reuse_delay(Path("/var/tmp/mem/bench"), info, no_journal) == 0


def test_ext4_with_a_journal_or_another_filesystem_needs_none(run, tmp_path):
    info = mountinfo(tmp_path, ("/", "ext4", "/dev/vdz"))
    assert run.inode_reuse_delay(Path("/var/tmp"), info, sysfs(tmp_path, "vdz", "812")) == 0
    info = mountinfo(tmp_path, ("/", "xfs", "/dev/vdz"))
    assert run.inode_reuse_delay(Path("/var/tmp"), info, tmp_path / "none") == 0


class Recorder:
    """Stands in for a tool: records the harness's calls in a shared list."""

    def __init__(self, name: str, calls: list[str], deletes_in_bulk: bool = False):
        self.name = name
        self.calls = calls
        self.deletes_in_bulk = deletes_in_bulk

    def ensure_bases(self, bases) -> None:
        pass

    def fresh_state(self, bases) -> None:
        self.calls.append(f"fresh {self.name}")

    def build(self, dockerfile, context, tag, log_path):
        from tools import BuildResult

        self.calls.append(f"build {self.name}")
        return BuildResult(
            seconds=1.0, peak_kb=1024, cpu_s=1.0, background_cpu_s=0.0, exit_code=0,
            cached_steps=0, log_path=log_path, error="",
        )  # fmt: skip


def scenario(run, tmp_path: Path, cold: bool, expect_cached: str = "none", many_files: bool = False):
    (tmp_path / "ctx").mkdir(exist_ok=True)
    return run.Scenario(
        key="cold-x", workload="x", case="cold" if cold else "warm no-op",
        dockerfile=tmp_path / "ctx" / "Dockerfile", context=tmp_path / "ctx", tag="x:1", reps=2,
        cold=cold, expect_cached=expect_cached, bases=[], many_files=many_files,
    )  # fmt: skip


def test_a_cold_run_deletes_every_old_state_then_settles_then_times(run, tmp_path, calls):
    tools = [Recorder("imgbuild", calls), Recorder("docker", calls)]
    by_tool, _ = run.run_scenario(scenario(run, tmp_path, True), tools, tmp_path, {}, 0.0, 61.0)
    assert calls == [
        "fresh imgbuild", "fresh docker", "settle 61.0", "build imgbuild", "build docker",
        "fresh docker", "fresh imgbuild", "settle 61.0", "build docker", "build imgbuild",
    ]  # fmt: skip
    assert [len(results) for results in by_tool.values()] == [2, 2]


def test_a_warm_run_neither_deletes_nor_settles(run, tmp_path, calls):
    tools = [Recorder("imgbuild", calls)]
    run.run_scenario(scenario(run, tmp_path, False), tools, tmp_path, {}, 0.0, 61.0)
    assert calls == ["build imgbuild", "build imgbuild", "build imgbuild"]  # warm-up, 2 timed


def test_a_tool_that_deletes_in_bulk_runs_last_in_every_run(run):
    tools = [Recorder("buildah", [], deletes_in_bulk=True), Recorder("imgbuild", []), Recorder("docker", [])]
    orders = [[tool.name for tool in run.run_order(tools, rep)] for rep in range(4)]
    assert orders == [
        ["imgbuild", "docker", "buildah"], ["docker", "imgbuild", "buildah"],
        ["imgbuild", "docker", "buildah"], ["docker", "imgbuild", "buildah"],
    ]  # fmt: skip
    # without one, every permutation in turn, as before
    plain = [Recorder(name, []) for name in ("a", "b", "c")]
    assert len({tuple(t.name for t in run.run_order(plain, rep)) for rep in range(6)}) == 6


@pytest.mark.parametrize("expect_cached", ["some", "all"], ids=["one-file-changed", "no-op"])
def test_after_a_bulk_deletion_a_build_of_many_files_waits_for_the_settle(run, tmp_path, calls, expect_cached):
    # buildah's no-op rebuilds of the big workload delete in bulk too, so its
    # warm-up builds count as much as its timed ones.
    tools = [Recorder("buildah", calls, deletes_in_bulk=True), Recorder("imgbuild", calls)]
    warm = scenario(run, tmp_path, False, expect_cached=expect_cached, many_files=True)
    run.run_scenario(warm, tools, tmp_path, {}, 0.0, 61.0)
    warm_ups = 2 if expect_cached == "some" else 1
    assert calls == [
        *["build buildah"] * warm_ups, *["build imgbuild"] * warm_ups,
        "settle 61.0", "build imgbuild", "build buildah", "settle 61.0", "build imgbuild", "build buildah",
    ]  # fmt: skip


def test_no_settle_between_builds_of_few_files(run, tmp_path, calls):
    tools = [Recorder("buildah", calls, deletes_in_bulk=True), Recorder("imgbuild", calls)]
    change = scenario(run, tmp_path, False, expect_cached="some", many_files=False)
    run.run_scenario(change, tools, tmp_path, {}, 0.0, 61.0)
    assert not [call for call in calls if call.startswith("settle")]


def test_a_cold_run_of_many_files_settles_once_per_run(run, tmp_path, calls):
    # The fresh states' settle covers the deletions of the run before.
    tools = [Recorder("buildah", calls, deletes_in_bulk=True), Recorder("imgbuild", calls)]
    run.run_scenario(scenario(run, tmp_path, True, many_files=True), tools, tmp_path, {}, 0.0, 61.0)
    assert calls == [
        "fresh imgbuild", "fresh buildah", "settle 61.0", "build imgbuild", "build buildah",
        "fresh imgbuild", "fresh buildah", "settle 61.0", "build imgbuild", "build buildah",
    ]  # fmt: skip

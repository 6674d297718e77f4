"""``kill -9`` of a build at seeded random moments: the next start cleans up after it.

Each run builds a small multi-stage Dockerfile (RUN, COPY, COPY --from) with
the real CLI in a fresh store, kills its whole process group with SIGKILL at a
delay drawn from ``random.Random(seed)``, then starts the same build again,
uninterrupted. That next start sweeps the killed build's work (its runc
container, its overlay mounts, its directories in tmp/); afterwards no mount
and no container remains under the store, ``imgbuild fsck`` (no --repair) is
clean, the killed build left nothing in the system's temp dir (its TMPDIR
points at a directory of the run's own), and the image ID is the one a fresh
store builds.

IMGBUILD_FAULT_RUNS=N sets the number of runs (default 20, about 50 s here;
each run takes a fresh store, so a kill lands mid-build rather than after a
cached one) and IMGBUILD_FAULT_SEED the first seed (default 0).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from comparetools import mounts_under, runc_containers_under
from faults.faulttools import clear_leftovers
from imagetools import make_busybox_image, temp_leftovers

from imgbuild.store import Store

pytestmark = pytest.mark.root

PROJECT = Path(__file__).resolve().parents[2]
DOCKERFILE = """\
FROM busybox AS base
RUN echo one > /one && sleep 0.3
COPY data.txt /data.txt
RUN cat /data.txt /one > /two && sleep 0.3
FROM busybox
COPY --from=base /two /two
RUN echo three > /three && sleep 0.2
"""


def _runs() -> int:
    return int(os.environ.get("IMGBUILD_FAULT_RUNS", "20"))


def _env(tmpdir: Path | None = None) -> dict:
    env = dict(os.environ)
    if tmpdir is not None:  # the system temp dir as this process sees it
        env["TMPDIR"] = str(tmpdir)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    env["SOURCE_DATE_EPOCH"] = "0"
    env.pop("CI", None)
    return env


def _command(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "imgbuild", "--root", str(root), *args]


def _build(root: Path, context: Path) -> str:
    """An uninterrupted build; its image ID."""
    iidfile = root.parent / "iid"
    done = subprocess.run(
        _command(root, "build", "--progress", "plain", "-t", "app", "--iidfile", str(iidfile), str(context)),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return iidfile.read_text().strip()


def _killed_build(root: Path, context: Path, delay: float, tmpdir: Path) -> bool:
    """Start a build and SIGKILL its process group after ``delay``; False if it ended first.

    The build's TMPDIR is ``tmpdir``: whatever it puts in the system's temp
    dir (and would leave there when killed) shows up in it.
    """
    process = subprocess.Popen(
        _command(root, "build", "--progress", "plain", "-t", "app", str(context)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(tmpdir),
        start_new_session=True,
    )
    time.sleep(delay)
    killed = process.poll() is None
    if killed:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    return killed


def _fresh_store(root: Path) -> Store:
    store = Store(root)
    make_busybox_image(store, "busybox:latest")
    return store


def _leftovers(root: Path, tmpdir: Path) -> list[str]:
    """What the killed build left after the next one ran (must be nothing)."""
    found = [f"mount {point}" for point in mounts_under(root)]
    found += [f"system temp {entry.name}" for entry in sorted(tmpdir.iterdir())]
    found += [f"container {name}" for name in runc_containers_under(root)]
    fsck = subprocess.run(_command(root, "fsck"), capture_output=True, text=True, env=_env(), timeout=120)
    if fsck.returncode != 0:
        found.append(f"fsck: {fsck.stdout.strip()} {fsck.stderr.strip()}")
    found += [f"temp {name}" for name in temp_leftovers(Store(root))]
    return found


def test_kill9_at_seeded_points_leaves_nothing_and_rebuilds_the_same_image(tmp_path, fault_stats):
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    (context / "data.txt").write_text("data\n")

    reference_root = tmp_path / "reference" / "store"
    _fresh_store(reference_root)
    started = time.monotonic()
    reference = _build(reference_root, context)
    duration = time.monotonic() - started

    seed = int(os.environ.get("IMGBUILD_FAULT_SEED", "0"))
    failures = []
    finished_first = 0
    for run in range(_runs()):
        rng = random.Random(seed + run)
        delay = rng.uniform(0.05, 0.85 * duration)
        root = tmp_path / f"run-{run}" / "store"
        _fresh_store(root)
        tmpdir = root.parent / "system-tmp"
        tmpdir.mkdir()
        finished = not _killed_build(root, context, delay, tmpdir)
        finished_first += finished
        try:
            image_id = _build(root, context)  # the next start: sweeps, then builds
            left = _leftovers(root, tmpdir)
        finally:
            clear_leftovers(root)
        fault_stats.add("builds", left, image_id != reference, finished)
        if left or image_id != reference:
            failures.append(f"seed {seed + run} (kill after {delay:.2f}s): {image_id} {left}")

    assert not failures, "\n".join(failures)
    # The delays are drawn within a build's time: nearly every run kills mid-build.
    assert finished_first <= _runs() // 4, f"{finished_first} builds ended before their kill"


def _wait_for_container(root: Path, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not runc_containers_under(root):
        assert process.poll() is None, "the build ended before its RUN step started"
        assert time.monotonic() < deadline, "the RUN step's container never appeared in `runc list`"
        time.sleep(0.05)


def test_fsck_repair_cleans_up_after_a_build_killed_mid_run(tmp_path):
    """Without a next build: ``fsck`` reports the dead build's work, ``fsck --repair``
    deletes its still-running container, unmounts its step root and removes it."""
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nRUN sleep 30\n")
    root = tmp_path / "store"
    _fresh_store(root)
    process = subprocess.Popen(
        _command(root, "build", "--progress", "plain", str(context)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        start_new_session=True,
    )
    try:
        _wait_for_container(root, process)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        # runc runs in a session of its own: the step goes on, its root stays mounted.
        assert runc_containers_under(root) and mounts_under(root)

        report = subprocess.run(_command(root, "fsck"), capture_output=True, text=True, env=_env())
        assert report.returncode == 1 and "leftover-temp" in report.stdout, report.stdout + report.stderr
        repaired = subprocess.run(_command(root, "fsck", "--repair"), capture_output=True, text=True, env=_env())
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert runc_containers_under(root) == [] and mounts_under(root) == []
        assert temp_leftovers(Store(root)) == []
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        clear_leftovers(root)

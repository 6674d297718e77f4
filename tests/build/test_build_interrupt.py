"""Interrupted and failed builds stop their containers, unmount everything, keep the store sound."""

from __future__ import annotations

import glob
import os
import signal
import time

import pytest
from comparetools import runc_containers_under

pytestmark = pytest.mark.root

# A RUN with every kind of mount that leaves something on the host while it runs.
MOUNTS = (
    "--mount=type=cache,target=/cache --mount=type=bind,source=.,target=/ctx,rw "
    "--mount=type=secret,id=token --mount=type=tmpfs,target=/scratch"
)


def _secret_dirs() -> set[str]:
    return set(glob.glob("/dev/shm/imgbuild-secret-*")) | set(glob.glob("/tmp/imgbuild-secret-*"))


def _wait_for_container(root, process, count: int = 1, seconds: float = 60) -> list[str]:
    """Wait until ``count`` RUN containers of the build under ``root`` run."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the build ended early: {process.communicate()[1].decode()}")
        running = runc_containers_under(root)
        if len(running) >= count:
            return running
        time.sleep(0.1)
    raise AssertionError("the RUN step's container never appeared in `runc list`")


@pytest.fixture(autouse=True)
def _no_leftovers_even_when_a_test_fails(store, clear_leftovers):
    yield
    clear_leftovers(store.root)


@pytest.fixture
def context(tmp_path, write_files):
    directory = tmp_path / "ctx"
    directory.mkdir()
    write_files(directory, {"data.txt": "data\n", "token": "not-a-real-secret\n"})
    return directory


def _assert_clean(root, context, secret_dirs_before, mounts_under, imgbuild_cli) -> None:
    assert runc_containers_under(root) == []
    assert mounts_under(root, context) == []
    assert _secret_dirs() <= secret_dirs_before
    fsck = imgbuild_cli(root, "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_build_leaves_nothing_behind(
    store, context, start_cli, kill_group, mounts_under, imgbuild_cli, signum
):
    (context / "Dockerfile").write_text(f"FROM busybox\nCOPY data.txt /\nRUN {MOUNTS} sleep 60\n")
    secret_dirs_before = _secret_dirs()
    process = start_cli(
        store.root,
        "--progress",
        "plain",
        "--secret",
        f"id=token,src={context / 'token'}",
        str(context),
    )
    try:
        _wait_for_container(store.root, process)
        assert mounts_under(store.root)  # the step's overlay is mounted while it runs
        os.kill(process.pid, signum)
        code = process.wait(timeout=60)
        stderr = process.stderr.read().decode()
    finally:
        kill_group(process)
    assert code == (143 if signum == signal.SIGTERM else 130), stderr  # as Docker exits
    assert "Traceback" not in stderr
    assert "interrupted" in stderr
    _assert_clean(store.root, context, secret_dirs_before, mounts_under, imgbuild_cli)


def test_failed_build_leaves_nothing_behind(store, context, imgbuild_cli, mounts_under):
    (context / "Dockerfile").write_text(f"FROM busybox\nCOPY data.txt /\nRUN {MOUNTS} exit 9\n")
    secret_dirs_before = _secret_dirs()
    completed = imgbuild_cli(
        store.root, "--secret", f"id=token,src={context / 'token'}", str(context)
    )
    assert completed.returncode == 1
    assert "exited with code 9" in completed.stderr
    _assert_clean(store.root, context, secret_dirs_before, mounts_under, imgbuild_cli)


def test_after_an_interrupt_the_next_build_works(
    store, context, start_cli, kill_group, imgbuild_cli
):
    (context / "Dockerfile").write_text("FROM busybox\nRUN sleep 60\n")
    process = start_cli(store.root, str(context))
    try:
        _wait_for_container(store.root, process)
        os.kill(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 130
    finally:
        kill_group(process)
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo after > /after\n")
    completed = imgbuild_cli(store.root, "-t", "after:1", str(context))
    assert completed.returncode == 0, completed.stderr


def test_sigterm_while_writing_an_output_unmounts_it(
    store, context, start_cli, kill_group, mounts_under, imgbuild_cli
):
    """A type=local output copies from an overlay view of the image: SIGTERM must unmount it."""
    (context / "Dockerfile").write_text(
        "FROM busybox\nRUN mkdir /many && cd /many && seq 20000 | xargs touch\n"
    )
    assert imgbuild_cli(store.root, "-t", "many:1", str(context)).returncode == 0
    process = start_cli(
        store.root, "--output", f"type=local,dest={context.parent / 'rootfs'}", str(context)
    )
    try:
        deadline = time.monotonic() + 60
        while (
            not mounts_under(store.root) and process.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.005)
        assert mounts_under(store.root), "the output's overlay view was never seen mounted"
        os.kill(process.pid, signal.SIGTERM)
        code = process.wait(timeout=60)
        stderr = process.stderr.read().decode()
        left = mounts_under(store.root)
    finally:
        kill_group(process)
    assert code == 143, stderr  # SIGTERM, as Docker exits
    assert "Traceback" not in stderr
    assert left == []


def test_interrupt_stops_every_stage_running_in_parallel(
    store, context, start_cli, kill_group, mounts_under, imgbuild_cli
):
    (context / "Dockerfile").write_text(
        "FROM busybox AS one\nRUN sleep 60\nFROM busybox AS two\nRUN sleep 61\n"
        "FROM scratch\nCOPY --from=one / /one/\nCOPY --from=two / /two/\n"
    )
    process = start_cli(store.root, "--jobs", "2", str(context))
    try:
        _wait_for_container(store.root, process, count=2)
        os.kill(process.pid, signal.SIGINT)
        code = process.wait(timeout=60)
    finally:
        kill_group(process)
    assert code == 130
    _assert_clean(store.root, context, _secret_dirs(), mounts_under, imgbuild_cli)


def test_interrupt_while_waiting_for_a_locked_cache_mount(
    store, context, start_cli, kill_group, mounts_under, imgbuild_cli, tmp_path
):
    """Another build holds the sharing=locked cache for a minute: SIGTERM must not wait for it."""
    (context / "Dockerfile").write_text(
        "FROM busybox\nRUN --mount=type=cache,id=L,target=/l,sharing=locked sleep 60\n"
    )
    other_context = tmp_path / "other"
    other_context.mkdir()
    (other_context / "Dockerfile").write_text(
        "FROM busybox\nRUN --mount=type=cache,id=L,target=/l,sharing=locked sleep 61\n"
    )
    holder = start_cli(store.root, str(other_context))
    waiter = None
    try:
        _wait_for_container(store.root, holder)
        waiter = start_cli(store.root, str(context))
        deadline = time.monotonic() + 30
        while len(glob.glob(f"{store.root}/tmp/step-*")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # until the waiter's step has its workspace: it then goes for the lock
        time.sleep(0.5)
        assert (
            len(runc_containers_under(store.root)) == 1
        )  # the waiter waits: its container is not started
        os.kill(waiter.pid, signal.SIGTERM)
        assert waiter.wait(timeout=20) == 143
        os.kill(holder.pid, signal.SIGTERM)
        assert holder.wait(timeout=30) == 143
    finally:
        kill_group(holder)
        if waiter is not None:
            kill_group(waiter)
    _assert_clean(store.root, context, _secret_dirs(), mounts_under, imgbuild_cli)

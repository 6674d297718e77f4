"""``imgbuild run``: images run as a runtime runs them (Entrypoint, Cmd, Env, User, WorkingDir)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from comparetools import runc_containers_under

from imgbuild.builder.builder import build
from imgbuild.builder.options import BuildOptions
from imgbuild.builder.progress import Progress
from imgbuild.store import Store

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def images(shared_root) -> None:
    """run-verb:app (ENV, WORKDIR, USER, CMD) and run-verb:entry (ENTRYPOINT + CMD), built once."""
    context = shared_root.parent / "run-verb-context"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(
        "FROM busybox\nENV GREETING=hello\nWORKDIR /home/app/work\nUSER app\n"
        'CMD ["sh", "-c", "echo $GREETING from $(id -un) in $(pwd)"]\n'
    )
    build(
        Store(shared_root),
        BuildOptions(context=context, tags=["run-verb:app"]),
        progress=Progress(),
    )
    (context / "Dockerfile").write_text(
        'FROM busybox\nENTRYPOINT ["echo", "entry"]\nCMD ["default-arg"]\n'
    )
    build(
        Store(shared_root),
        BuildOptions(context=context, tags=["run-verb:entry"]),
        progress=Progress(),
    )


def test_cmd_env_user_and_workdir_apply(shared_root, images, run_image):
    completed = run_image(shared_root, "run-verb:app")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "hello from app in /home/app/work\n"


def test_command_overrides_cmd_and_exit_code_propagates(shared_root, images, run_image):
    completed = run_image(shared_root, "run-verb:app", "sh", "-c", "echo overridden; exit 7")
    assert completed.stdout == "overridden\n"
    assert completed.returncode == 7


def test_env_flag(shared_root, images, run_image):
    completed = run_image(
        shared_root,
        "-e",
        "GREETING=hi",
        "-e",
        "EXTRA=x",
        "run-verb:app",
        "sh",
        "-c",
        "echo $GREETING $EXTRA",
    )
    assert completed.stdout == "hi x\n"


def test_entrypoint_with_cmd_and_with_arguments(shared_root, images, run_image):
    assert run_image(shared_root, "run-verb:entry").stdout == "entry default-arg\n"
    assert run_image(shared_root, "run-verb:entry", "given").stdout == "entry given\n"


def test_user_workdir_and_entrypoint_flags(shared_root, images, run_image):
    completed = run_image(
        shared_root,
        "-u",
        "1234:50",
        "-w",
        "/tmp",
        "run-verb:app",
        "sh",
        "-c",
        "echo $(id -u):$(id -g) $(pwd)",
    )
    assert completed.stdout == "1234:50 /tmp\n"
    assert (
        run_image(shared_root, "--entrypoint", "echo", "run-verb:entry", "only", "this").stdout
        == "only this\n"
    )


def test_empty_entrypoint_clears_the_images_entrypoint(shared_root, images, run_image, no_traceback):
    """docker run --entrypoint '' IMAGE CMD runs CMD alone (it used to keep the ENTRYPOINT)."""
    completed = run_image(shared_root, "--entrypoint", "", "run-verb:entry", "echo", "alone")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "alone\n"
    # the image's CMD goes with it, as in Docker: there is nothing left to run
    bare = run_image(shared_root, "--entrypoint", "", "run-verb:entry")
    no_traceback(bare)
    assert bare.returncode == 2
    assert "--entrypoint '' clears" in bare.stderr


def test_network_none(shared_root, images, run_image):
    assert run_image(
        shared_root, "--network", "none", "run-verb:app", "ls", "/sys/class/net"
    ).stdout.split() == ["lo"]


def test_unknown_image_is_an_error(shared_root, run_image, no_traceback):
    completed = run_image(shared_root, "no-such-image:1")
    assert completed.returncode == 1
    no_traceback(completed)
    assert "no-such-image" in completed.stderr


def test_sigterm_stops_the_container_and_unmounts(
    shared_root, images, start_cli, kill_group, mounts_under, clear_leftovers
):
    """A cancelled CI job sends SIGTERM: no container or mount may outlive ``imgbuild run``."""
    process = start_cli(shared_root, "run", "run-verb:app", "sleep", "60")
    try:
        deadline = time.monotonic() + 30
        while not runc_containers_under(shared_root) and process.poll() is None:
            assert time.monotonic() < deadline, "the container never started"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGTERM)
        code = process.wait(timeout=30)
        left = runc_containers_under(shared_root), mounts_under(shared_root)
    finally:
        kill_group(process)
        clear_leftovers(shared_root)  # if it left any, do not leave them too
    assert code == 143  # SIGTERM, as Docker exits
    assert left == ([], [])

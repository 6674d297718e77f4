"""The launcher service (sandbox/launcher.py): a build step's private-bundle
launcher is forked by one long-lived process, not started as a new Python.

Run for real: runc behind a wrapper that notes, for each `run`, the launcher
that started it and that launcher's parent.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from sandbox.sandboxtools import needs_root_and_runc

from imgbuild.sandbox.overlay import mount_overlay
from imgbuild.sandbox.runtime import run_container
from imgbuild.sandbox.spec import Mount, PrivateFile, RunSpec

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _root():
    needs_root_and_runc()
    yield
    from imgbuild.sandbox import launcher

    launcher.stop()  # as a build does when it ends


def logging_runtime(directory: Path) -> tuple[Path, Path]:
    """runc behind a script that logs "LAUNCHER_PID ITS_PARENT_PID VALUE_OF_$MARK" for each `run`."""
    log = directory / "launchers.log"
    script = directory / "logging-runc"
    script.write_text(
        "#!/bin/sh\n"
        'for arg; do [ "$arg" = run ] && '
        f'echo "$PPID $(sed "s/.*) //" /proc/$PPID/stat | cut -d" " -f2) ${{MARK:-none}}" >> {log}; done\n'
        'exec runc "$@"\n'
    )
    script.chmod(0o755)
    return script, log


def run_step(tmp_path: Path, busybox: Path, name: str, runtime: Path, **spec_fields) -> tuple[int, bytes]:
    chunks: list[bytes] = []
    scratch = tmp_path / name
    with mount_overlay([busybox], scratch / "upper", scratch / "work", scratch / "merged") as root:
        status = run_container(
            root, RunSpec(**spec_fields), runtime=str(runtime), workdir=scratch / "run", on_output=chunks.append
        )
    return status, b"".join(chunks)


def log_rows(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()]


def test_a_killed_service_is_started_again_for_the_next_step(tmp_path, busybox):
    runtime, log = logging_runtime(tmp_path)
    assert run_step(tmp_path, busybox, "one", runtime, args=["echo", "one"]) == (0, b"one\n")
    service = int(log_rows(log)[0][1])
    assert service != os.getpid()  # a launcher forked by the service, not started by us
    os.kill(service, signal.SIGKILL)

    assert run_step(tmp_path, busybox, "two", runtime, args=["echo", "two"]) == (0, b"two\n")
    assert int(log_rows(log)[1][1]) not in (service, os.getpid())


def test_a_step_whose_request_died_with_the_service_goes_to_a_fresh_one(tmp_path, busybox):
    # The service is alive when the step sends its request, and killed before it
    # reads it: the step must not fail for that.
    runtime, log = logging_runtime(tmp_path)
    assert run_step(tmp_path, busybox, "one", runtime, args=["true"]) == (0, b"")
    service = int(log_rows(log)[0][1])
    assert service != os.getpid()
    os.kill(service, signal.SIGSTOP)
    outcome = []
    step = threading.Thread(
        target=lambda: outcome.append(run_step(tmp_path, busybox, "two", runtime, args=["echo", "two"]))
    )
    step.start()
    time.sleep(0.5)  # the request is in the stopped service's socket
    os.kill(service, signal.SIGKILL)
    step.join(timeout=60)
    assert outcome == [(0, b"two\n")]
    assert int(log_rows(log)[1][1]) not in (service, os.getpid())


def test_each_step_gets_the_environment_of_its_time(tmp_path, busybox, monkeypatch):
    # The service started before MARK was set; the runtime still sees it, as
    # it would had imgbuild started it itself.
    runtime, log = logging_runtime(tmp_path)
    run_step(tmp_path, busybox, "before", runtime, args=["true"])
    monkeypatch.setenv("MARK", "set-later")
    run_step(tmp_path, busybox, "after", runtime, args=["true"])
    rows = log_rows(log)
    assert [row[2] for row in rows] == ["none", "set-later"]
    assert rows[0][1] == rows[1][1]  # one service for both


def test_a_bundle_larger_than_a_socket_buffer_arrives_whole(tmp_path, busybox):
    runtime, _log = logging_runtime(tmp_path)
    secret = bytes(range(256)) * (3 * 4096)  # 3 MiB
    mounts = [Mount("bind", "/run/secrets/big", readonly=True, private=PrivateFile(secret))]
    status, output = run_step(
        tmp_path, busybox, "big", runtime, args=["sh", "-c", "md5sum < /run/secrets/big"], mounts=mounts
    )
    assert status == 0
    assert output.split()[0].decode() == hashlib.md5(secret).hexdigest()


def test_steps_run_where_pidfd_open_is_missing(tmp_path, busybox, monkeypatch):
    """A kernel before 5.3, or a seccomp profile that does not know pidfd_open
    (older Docker): the call fails with ENOSYS or EPERM, and steps still run.
    (The missing syscall is stood in for: this kernel has it.)"""
    runtime, _log = logging_runtime(tmp_path)

    def no_pidfd_open(pid, flags=0):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd_open)
    assert run_step(tmp_path, busybox, "one", runtime, args=["echo", "one"]) == (0, b"one\n")


def test_a_step_runs_when_our_working_directory_was_removed(tmp_path, busybox, monkeypatch):
    runtime, _log = logging_runtime(tmp_path)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert run_step(tmp_path, busybox, "one", runtime, args=["echo", "one"]) == (0, b"one\n")


def test_a_child_forked_without_exec_does_not_keep_the_service_alive():
    # multiprocessing's fork method: the child has a copy of every descriptor.
    # The service ends when its socket closes; a copy left in a child that
    # lives on would keep it (and its launchers' reaping) alive with it.
    from imgbuild.sandbox import launcher

    launcher.prepare()
    service = launcher._service._process
    assert service is not None and service.poll() is None
    child = os.fork()
    if child == 0:
        time.sleep(30)  # a long-lived worker that never runs a step
        os._exit(0)
    try:
        launcher.stop()  # waits up to 5 s for the service to end
        assert service.poll() is not None, "the service outlived stop(): the forked child holds its socket"
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)

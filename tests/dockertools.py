"""A dockerd of the test session's own, started by hand as MACHINE-NOTES says.

Data, exec root, pid file and API socket all live under one temp dir; no
iptables, no bridge (builds then need ``--network none``). It is stopped by
its PID. Debian's docker client is used: the docker first on PATH is a newer
client that cannot build against this daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from comparetools import mounts_under, run_tool
from registrytools import die_with_parent

DOCKER_CLIENT = "/usr/bin/docker"


@dataclass
class Docker:
    """Debian's docker client talking to the session's own dockerd."""

    socket: Path

    def run(
        self, *args: str, buildkit: bool = True, timeout: int = 300
    ) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["DOCKER_BUILDKIT"] = "1" if buildkit else "0"
        return run_tool(
            DOCKER_CLIENT, "-H", f"unix://{self.socket}", *args, env=env, timeout=timeout
        )


@contextmanager
def running_dockerd(work: Path) -> Iterator[Docker]:
    """dockerd with everything under ``work``; stopped, and ``work`` removed, at the end."""
    for program in ("dockerd", DOCKER_CLIENT):
        if shutil.which(program) is None:
            pytest.fail(
                f"{program} is not installed; run scripts/install-deps.sh --test (docker.io)"
            )
    socket = work / "docker.sock"
    log = open(work / "dockerd.log", "wb")
    process = subprocess.Popen(
        [
            "dockerd", "--iptables=false", "--bridge=none", "--data-root", str(work / "data"),
            "--exec-root", str(work / "exec"), "--pidfile", str(work / "dockerd.pid"),
            "-H", f"unix://{socket}",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
    )  # fmt: skip
    docker = Docker(socket)
    try:
        _wait_for_dockerd(docker, process, work / "dockerd.log")
        yield docker
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
    left = mounts_under(work)
    if left:
        pytest.fail(f"dockerd left mounts behind: {left}")
    shutil.rmtree(work)


def _wait_for_dockerd(
    docker: Docker, process: subprocess.Popen, log: Path, seconds: float = 60
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dockerd exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if docker.socket.exists():
            try:
                docker.run("version", timeout=10)
                return
            except (AssertionError, subprocess.TimeoutExpired):
                pass
        time.sleep(0.2)
    pytest.fail(f"dockerd did not answer within {seconds:.0f} s:\n{log.read_text()[-3000:]}")

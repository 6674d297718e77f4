"""Helpers for tests/apps: imgbuild on the session's store, HTTP on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from debiantools import recipe

PROJECT = Path(__file__).resolve().parents[2]
EXAMPLES = PROJECT / "examples"
BASE = "debian:bookworm"
DEBIAN_PATH = recipe.DEBIAN_PATH


@dataclass
class Built:
    """One build: what each step did, by (stage, instruction) in order."""

    steps: list[tuple[str, str, str]]  # (stage, instruction, "cached" or "run")
    metadata: dict
    seconds: float


class Apps:
    """imgbuild on the session's store: import, build, run."""

    def __init__(self, root: Path, work: Path):
        self.root = root
        self.work = work

    def imgbuild(self, *args: str, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("SOURCE_DATE_EPOCH", None)
        return subprocess.run(
            [sys.executable, "-m", "imgbuild", "--root", str(self.root), *args],
            capture_output=True, text=True, timeout=timeout, env=env, **kwargs,
        )  # fmt: skip

    def build(self, context: Path, tag: str, *args: str) -> Built:
        metadata_file = self.work / f"{tag.replace(':', '-').replace('/', '-')}.json"
        # The proxy's CA for pip and npm, as a user behind it would pass it.
        ca_certs = [arg for cert in recipe.host_ca_certs() for arg in ("--ca-cert", str(cert))]
        started = time.monotonic()
        completed = self.imgbuild(
            # zstd: the Debian layers are hundreds of MB, and gzip is the slowest part of writing them
            "build", "--progress", "json", "--metadata-file", str(metadata_file), "--compression", "zstd",
            "--build-arg", f"BASE={BASE}", *ca_certs, "-t", tag, *args, str(context),
        )  # fmt: skip
        seconds = time.monotonic() - started
        assert completed.returncode == 0, f"build of {context} failed:\n{tail(completed)}"
        output = completed.stdout + completed.stderr  # the JSON events, wherever they go
        events = [json.loads(line) for line in output.splitlines() if line.startswith('{"')]
        return Built(_step_states(events), json.loads(metadata_file.read_text()), seconds)

    def inspect(self, image: str) -> dict:
        completed = self.imgbuild("inspect", image)
        assert completed.returncode == 0, tail(completed)
        return json.loads(completed.stdout)[0]

    def run(self, image: str, *command: str, flags: tuple[str, ...] = (), timeout: float = 60):
        """``imgbuild run [flags] image [command]``, output captured."""
        return self.imgbuild("run", *flags, image, *command, timeout=timeout)

    def serve(self, image: str, port: int, *args: str) -> subprocess.Popen:
        """``imgbuild run`` of a server on the host network, listening on 127.0.0.1:port."""
        return subprocess.Popen(
            [sys.executable, "-m", "imgbuild", "--root", str(self.root), "run",
             "-e", "HOST=127.0.0.1", "-e", f"PORT={port}", *args, image],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip


def _step_states(events: list[dict]) -> list[tuple[str, str, str]]:
    states: dict[int, tuple[str, str, str]] = {}
    for event in events:
        if event.get("event") == "step_cached":
            states[event["step"]] = (event["stage"], event["instruction"], "cached")
        elif event.get("event") == "step_done":
            states[event["step"]] = (event["stage"], event["instruction"], "run")
    return [states[number] for number in sorted(states)]


def tail(completed: subprocess.CompletedProcess) -> str:
    return f"stdout:\n{completed.stdout[-4000:]}\nstderr:\n{completed.stderr[-4000:]}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Straight to loopback, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(port: int, path: str = "/", wait: float = 60, server: subprocess.Popen | None = None) -> str:
    """The body of GET http://127.0.0.1:port/path, waiting for the server to listen."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with _DIRECT.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.read().decode()
        except OSError:
            if server is not None and server.poll() is not None:
                out, err = server.communicate()
                raise AssertionError(f"the server exited with {server.returncode}:\n{out}\n{err}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stop(server: subprocess.Popen) -> None:
    """Ctrl-C for ``imgbuild run``: it stops the container and removes its mounts."""
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGINT)
    try:
        server.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        # not communicate(): a container that outlived imgbuild holds its pipes open
        server.wait(timeout=30)
        pytest.fail("imgbuild run did not stop within 30 s of Ctrl-C")


def copy_example(name: str, destination: Path) -> Path:
    return Path(shutil.copytree(EXAMPLES / name, destination / name))



"""The files the build itself reads from the context: Dockerfile and ignore files.

They are as hostile as the rest of the context: a symlink out of it must not
be read (nor its first line printed in a parse error), a FIFO must not hang
the build, ``/dev/zero`` must not be read until memory runs out, and a huge
file is refused. Each refusal is a usage error (exit 2) naming the file.

The CLI runs as a user runs it, under a 2 GiB address-space limit and a
timeout, so a regression fails the test instead of hurting the machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from imgbuild.context.buildfiles import MAX_BUILD_FILE

PROJECT = Path(__file__).resolve().parents[2]
HOST_SECRET = "HOST-SECRET-FIRST-LINE do not print me"
DOCKERFILE = "FROM scratch\nCOPY Dockerfile /\n"
MEMORY_LIMIT = 2 << 30
TIMEOUT = 60


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _cli(root: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CI", None)
    return subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(root), *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT,  # a FIFO read would hang here: TimeoutExpired fails the test
        env=env,
        cwd=str(PROJECT),
        preexec_fn=_limit_memory,
    )


@pytest.fixture
def host_file(tmp_path) -> Path:
    """A file outside the context that must never be read through it."""
    path = tmp_path / "host" / "secret"
    path.parent.mkdir()
    path.write_text(HOST_SECRET + "\nFROM scratch\n")
    return path


@pytest.fixture
def context(tmp_path) -> Path:
    path = tmp_path / "context"
    path.mkdir()
    return path


def _plant(path: Path, kind: str, host_file: Path) -> None:
    """Put a hostile ``kind`` of file at ``path``."""
    if kind == "symlink-out":
        path.symlink_to(host_file)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "oversized":
        # Valid content (a comment line makes it large): only the size is wrong.
        head = DOCKERFILE if path.name == "Dockerfile" else ""
        path.write_text(head + "# " + "x" * MAX_BUILD_FILE + "\n")
    else:
        raise AssertionError(kind)


KINDS = ["symlink-out", "fifo", "dev-zero", "oversized"]
REFUSAL = {
    "symlink-out": "outside the build context",
    "fifo": "is a FIFO, not a regular file",
    "dev-zero": "outside the build context",
    "oversized": "larger than 16 MiB",
}


def _assert_refused(completed: subprocess.CompletedProcess, name: str, kind: str) -> None:
    stderr = completed.stderr.decode(errors="replace")
    assert completed.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert name in stderr and REFUSAL[kind] in stderr, stderr
    assert HOST_SECRET not in stderr + completed.stdout.decode(errors="replace")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["Dockerfile", ".dockerignore", "Dockerfile.dockerignore"])
def test_a_hostile_build_file_in_the_context_is_refused(store_root, context, host_file, name, kind):
    if name != "Dockerfile":
        (context / "Dockerfile").write_text(DOCKERFILE)
    _plant(context / name, kind, host_file)
    _assert_refused(_cli(store_root, str(context)), name, kind)


def test_a_dockerfile_symlink_inside_the_context_is_followed(store_root, context):
    (context / "docker").mkdir()
    (context / "docker" / "Dockerfile.real").write_text(DOCKERFILE)
    (context / "Dockerfile").symlink_to("docker/Dockerfile.real")
    completed = _cli(store_root, "-t", "inside:1", str(context))
    assert completed.returncode == 0, completed.stderr.decode()


def test_a_dockerfile_given_from_outside_the_context_is_the_users_choice(
    store_root, context, tmp_path
):
    # Outside the context, -f names the user's own file: a symlink there is followed.
    real = tmp_path / "elsewhere" / "Dockerfile.real"
    real.parent.mkdir()
    real.write_text(DOCKERFILE)
    link = tmp_path / "elsewhere" / "Dockerfile"
    link.symlink_to(real)
    (context / "Dockerfile").write_text("FROM scratch\n")
    completed = _cli(store_root, "-f", str(link), "-t", "outside:1", str(context))
    assert completed.returncode == 0, completed.stderr.decode()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "oversized"])
def test_a_special_or_huge_dockerfile_outside_the_context_is_refused(
    store_root, context, tmp_path, host_file, kind
):
    path = tmp_path / "Dockerfile.outside"
    _plant(path, kind, host_file)
    completed = _cli(store_root, "-f", str(path), str(context))
    stderr = completed.stderr.decode(errors="replace")
    assert completed.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    expected = {"fifo": "is a FIFO", "dev-zero": "is a character device", "oversized": "larger than 16 MiB"}
    assert str(path) in stderr and expected[kind] in stderr, stderr


def test_a_dockerfile_on_stdin_is_capped(store_root, context):
    data = (DOCKERFILE + "# " + "x" * MAX_BUILD_FILE + "\n").encode()
    completed = _cli(store_root, "-f", "-", str(context), stdin=data)
    stderr = completed.stderr.decode(errors="replace")
    assert completed.returncode == 2, stderr
    assert "standard input" in stderr and "larger than 16 MiB" in stderr, stderr


def test_a_dockerfile_on_stdin_within_the_cap_builds(store_root, context):
    completed = _cli(store_root, "-f", "-", "-t", "stdin:1", str(context), stdin=b"FROM scratch\nLABEL a=b\n")
    assert completed.returncode == 0, completed.stderr.decode()


@pytest.mark.parametrize("kind", ["symlink-out", "fifo", "dev-zero"])
def test_outline_reads_the_dockerfile_as_safely_as_build(store_root, context, host_file, kind):
    _plant(context / "Dockerfile", kind, host_file)
    completed = _cli(store_root, "outline", str(context))
    _assert_refused(completed, "Dockerfile", kind)

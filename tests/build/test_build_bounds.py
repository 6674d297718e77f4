"""Hostile Dockerfiles and images: a located error naming the bound, never a traceback or a hang.

Each case runs the real CLI (``python -m imgbuild``) on a store with a busybox
base, and checks the exit code, the message and the time (and, for the large
inputs, the peak memory) it took. docs/security.md ("Bounds") lists them.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from imgbuild.sandbox.users import MAX_TABLE_BYTES

pytestmark = pytest.mark.root

PEAK_RSS_LIMIT_KB = 400 * 1024  # imgbuild itself needs well under 100 MiB


def _build(imgbuild_cli, store, tmp_path, dockerfile: str, files: dict | None = None, timeout=120):
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        (context / name).write_text(content)
    started = time.monotonic()
    completed = imgbuild_cli(store.root, "build", "--progress", "plain", str(context), timeout=timeout)
    return completed, time.monotonic() - started


def _failed_at(completed, line: int, *fragments: str) -> None:
    assert "Traceback" not in completed.stderr, completed.stderr
    assert completed.returncode == 1, completed.stderr
    assert f"Dockerfile:{line}: " in completed.stderr, completed.stderr
    for fragment in fragments:
        assert fragment in completed.stderr, completed.stderr


# --- ids beyond range ------------------------------------------------------------------


def test_chown_uid_beyond_32_bits_is_a_located_error(imgbuild_cli, store, tmp_path):
    """os.chown raised OverflowError for a uid of 2**32."""
    completed, _ = _build(
        imgbuild_cli, store, tmp_path, "FROM busybox\nCOPY --chown=4294967296 f /f\n", {"f": "x"}
    )
    _failed_at(completed, 2, "--chown=4294967296", "out of range", "0-2147483647")


def test_chown_to_a_user_whose_passwd_uid_is_beyond_range(imgbuild_cli, store, tmp_path):
    completed, _ = _build(
        imgbuild_cli,
        store,
        tmp_path,
        "FROM busybox\nRUN echo big:x:99999999999:0::/:/bin/sh >> /etc/passwd\nCOPY --chown=big f /f\n",
        {"f": "x"},
    )
    _failed_at(completed, 3, "--chown=big", "99999999999 is out of range")


@pytest.mark.parametrize(
    "lines",
    [
        ["USER 99999999999", "RUN id"],
        # the uid comes from the image's passwd file (runc refused it as JSON)
        ["RUN echo big:x:99999999999:0::/:/bin/sh >> /etc/passwd", "USER big", "RUN id"],
    ],
)
def test_user_beyond_range_is_a_located_error(imgbuild_cli, store, tmp_path, lines):
    completed, _ = _build(imgbuild_cli, store, tmp_path, "FROM busybox\n" + "\n".join(lines) + "\n")
    _failed_at(completed, len(lines) + 1, "uids and gids must be in range 0-2147483647, got 99999999999")


def test_workdir_through_proc_self_root(imgbuild_cli, store, tmp_path):
    """The path is an image path: it is created in the image, and the step's /proc makes it /etc."""
    completed, _ = _build(
        imgbuild_cli, store, tmp_path, "FROM busybox\nRUN true\nWORKDIR /proc/self/root/etc\nRUN pwd\n"
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    assert completed.returncode == 0, completed.stderr
    assert "#3 /etc\n" in completed.stderr


# --- /etc/passwd and /etc/group ------------------------------------------------------------


def _build_measured(cli_env, store, tmp_path, dockerfile: str, files: dict | None = None, timeout=120):
    """The CLI under a small parent that reports the peak RSS of it and its children (KiB)."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        (context / name).write_text(content)
    measure = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:])\n"
        "print('peak-rss-kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(done.returncode)\n"
    )
    command = [sys.executable, "-c", measure, sys.executable, "-m", "imgbuild", "--root", str(store.root)]
    command += ["build", "--progress", "plain", str(context)]
    started = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=timeout)
    elapsed = time.monotonic() - started
    peak = int(completed.stderr.rsplit("peak-rss-kb ", 1)[1].split()[0])
    return completed, elapsed, peak


@pytest.mark.parametrize(
    "dockerfile, line, table",
    [
        # every RUN looks its user up (also root's home) in /etc/passwd
        ("FROM busybox\nRUN dd if=/dev/zero of=/etc/passwd bs=1M seek=1200 count=0\nRUN id\n", 3, "/etc/passwd"),
        (
            "FROM busybox\nRUN dd if=/dev/zero of=/etc/group bs=1M seek=1200 count=0\n"
            "COPY --chown=app:staff f /f\n",
            3,
            "/etc/group",
        ),
    ],
)
def test_a_huge_user_database_is_refused_quickly_in_little_memory(
    cli_env, store, tmp_path, dockerfile, line, table
):
    """A 1.2 GB sparse /etc/passwd took 2.4 GB of memory to look a user up."""
    completed, elapsed, peak = _build_measured(cli_env, store, tmp_path, dockerfile, {"f": "x"})
    _failed_at(completed, line, f"{table} in the image is larger than {MAX_TABLE_BYTES // 2**20} MiB")
    assert peak < PEAK_RSS_LIMIT_KB, f"peak RSS {peak} KiB"
    assert elapsed < 90


def test_an_overlong_passwd_line_is_refused(imgbuild_cli, store, tmp_path):
    completed, _ = _build(
        imgbuild_cli,
        store,
        tmp_path,
        "FROM busybox\n"
        "RUN (head -c 70000 /dev/zero | tr '\\0' a; echo; cat /etc/passwd) > /p && mv /p /etc/passwd\n"
        "USER app\nRUN id\n",
    )
    _failed_at(completed, 4, "/etc/passwd in the image has a line longer than 64 KiB")


@pytest.mark.parametrize(
    "lines, line",
    [
        (["USER app", "RUN id"], 4),
        (["COPY --chown=app f /f"], 3),
    ],
)
def test_a_fifo_as_passwd_is_refused_without_waiting(imgbuild_cli, store, tmp_path, lines, line):
    dockerfile = "FROM busybox\nRUN rm /etc/passwd && mkfifo /etc/passwd\n" + "\n".join(lines) + "\n"
    completed, elapsed = _build(imgbuild_cli, store, tmp_path, dockerfile, {"f": "x"}, timeout=60)
    _failed_at(completed, line, "/etc/passwd in the image is not a regular file")
    assert elapsed < 30


# --- expansion -------------------------------------------------------------------------------


def test_an_exponential_env_chain_fails_fast_in_little_memory(cli_env, store, tmp_path):
    """``ENV a=${a}${a}`` forty times would be 2**40 characters; memory used to climb until killed."""
    dockerfile = "FROM busybox\nENV a=x\n" + "ENV a=${a}${a}\n" * 40 + "RUN true\n"
    completed, elapsed, peak = _build_measured(cli_env, store, tmp_path, dockerfile, timeout=60)
    assert "Traceback" not in completed.stderr, completed.stderr
    assert completed.returncode == 2, completed.stderr
    assert "Dockerfile:23: the value of a grows beyond 1 MiB" in completed.stderr
    assert peak < PEAK_RSS_LIMIT_KB, f"peak RSS {peak} KiB"
    assert elapsed < 20

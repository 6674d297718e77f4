"""``imgbuild run``: --rm, -i, -t (a terminal through runc's console socket), --env-file,
and exit codes 127/126 with one message when the command cannot run. Real runc, real ptys."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from cli.foreignimage import umoci_image
from imagetools import make_busybox_image, read_terminal, require_root_and_runc

from imgbuild.store import Store

PROJECT = Path(__file__).resolve().parents[2]


STARTED: list[subprocess.Popen] = []


@pytest.fixture
def root(store_root):
    require_root_and_runc()
    make_busybox_image(Store(store_root), "busybox:latest")
    yield store_root
    # Whatever a failed test left: its imgbuild processes, containers and mounts.
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()
    _remove_leftovers(store_root)


def imgbuild(root: Path, *argv: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    process = subprocess.Popen([sys.executable, "-m", "imgbuild", "--root", str(root), *argv], env=env, **kwargs)
    STARTED.append(process)
    return process


def run(root: Path, *argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    process = imgbuild(root, "run", *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(stdin or b"", timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out.decode(), err.decode())


def test_missing_command_exits_127_with_one_message(root):
    result = run(root, "busybox", "no-such-tool", "arg")
    assert result.returncode == 127
    assert result.stderr.count("\n") == 1, result.stderr  # one message, not the runtime's as well
    assert "'no-such-tool'" in result.stderr and "$PATH" in result.stderr and "Traceback" not in result.stderr
    absolute = run(root, "busybox", "/opt/missing")
    assert absolute.returncode == 127 and absolute.stderr.count("\n") == 1
    not_executable = run(root, "busybox", "/etc/passwd")
    assert not_executable.returncode == 126 and not_executable.stderr.count("\n") == 1
    assert "not an executable file" in not_executable.stderr
    # The image's own symlinks resolve inside it: sh -> busybox runs; a relative path
    # is taken from the working directory, as runc takes it.
    assert run(root, "busybox", "sh", "-c", "exit 0").returncode == 0
    assert run(root, "-w", "/bin", "busybox", "./busybox", "true").returncode == 0
    assert run(root, "-w", "/etc", "busybox", "./busybox").returncode == 127


def test_rm_is_accepted_and_i_gives_the_command_stdin(root):
    piped = run(root, "--rm", "-i", "busybox", "sh", "-c", "cat; echo end", stdin=b"line one\nline two\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == "line one\nline two\nend\n"
    closed = run(root, "--rm", "busybox", "sh", "-c", "cat; echo end", stdin=b"not given\n")
    assert closed.stdout == "end\n"  # without -i: /dev/null, as docker run without -i


def test_env_file_in_dockers_format(root, tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text('# a comment\n\nFIRST=1\n  SECOND="quoted stays"\nFROM_HOST\nFIRST_OVERRIDDEN=file\n')
    other = tmp_path / "other.env"
    other.write_text("THIRD=a=b\n")
    result = subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(root), "run", "--env-file", str(env_file),
         "--env-file", str(other), "-e", "FIRST_OVERRIDDEN=flag", "busybox", "sh", "-c",
         'echo "$FIRST|$SECOND|$FROM_HOST|$FIRST_OVERRIDDEN|$THIRD"'],
        env=dict(os.environ, PYTHONPATH=str(PROJECT), FROM_HOST="from host"), capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == '1|"quoted stays"|from host|flag|a=b\n'

    bad = tmp_path / "bad.env"
    bad.write_text("OK=1\nBAD KEY=2\n")
    refused = run(root, "--env-file", str(bad), "busybox", "true")
    assert refused.returncode == 2 and f"{bad}:2" in refused.stderr
    missing = run(root, "--env-file", str(tmp_path / "nope.env"), "busybox", "true")
    assert missing.returncode == 2 and "nope.env" in missing.stderr


def _terminal(rows: int, columns: int) -> tuple[int, int]:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return leader, follower


def test_t_gives_a_terminal_of_our_size(root):
    leader, follower = _terminal(33, 101)
    process = imgbuild(
        root, "run", "-t", "busybox", "sh", "-c", "tty; stty size; test -t 1 && echo stdout-is-a-tty; echo $TERM; exit 7",
        stdin=follower, stdout=follower, stderr=follower,
    )
    os.close(follower)
    output = read_terminal(leader, timeout=60).decode(errors="replace")
    assert process.wait(timeout=60) == 7
    lines = [line.strip() for line in output.splitlines()]
    assert "/dev/pts/0" in lines and "33 101" in lines and "stdout-is-a-tty" in lines and "xterm" in lines


def test_it_is_interactive_on_a_terminal(root):
    leader, follower = _terminal(24, 80)
    process = imgbuild(root, "run", "-it", "busybox", "sh", stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    seen = _read_until(leader, b"# ")  # the shell's prompt: the terminal is ours now
    os.write(leader, b"echo $((6 * 7))-answer\r")
    seen += _read_until(leader, b"42-answer")
    os.write(leader, b"exit 5\r")
    seen += read_terminal(leader, timeout=60)
    assert process.wait(timeout=60) == 5, seen
    assert b"42-answer" in seen


def test_a_foreign_image_runs_with_a_terminal_too(root, tmp_path):
    """An image umoci made (no /dev, no /proc in it): runc creates what the terminal needs."""
    image = umoci_image(tmp_path / "umoci", "team/tty:1", files={"bin/busybox": Path("/usr/bin/busybox").read_bytes()},
                        executables=("bin/busybox",))
    load = imgbuild(root, "load", "-i", str(image.archive), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert load.wait(timeout=60) == 0
    leader, follower = _terminal(24, 80)
    process = imgbuild(root, "run", "-t", "team/tty:1", "/bin/busybox", "sh", "-c", "/bin/busybox tty; exit 3",
                       stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    output = read_terminal(leader, timeout=60)
    assert process.wait(timeout=60) == 3, output
    assert b"/dev/pts/0" in output


def _read_until(leader: int, marker: bytes, timeout: float = 60) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([leader], [], [], max(remaining, 0))
        if not ready:
            raise AssertionError(f"no {marker!r} on the terminal within {timeout}s; got {data!r}")
        data += os.read(leader, 4096)
    return data


def test_t_passes_a_resized_window_on(root):
    """Resizing our terminal (SIGWINCH to imgbuild, whose controlling terminal it is) resizes the container's."""
    leader, follower = _terminal(24, 80)

    def own_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = imgbuild(
        root, "run", "-t", "busybox", "sh", "-c",
        'trap "stty size; exit 0" WINCH; echo ready; while :; do sleep 0.1; done',
        stdin=follower, stdout=follower, stderr=follower, preexec_fn=own_terminal,
    )
    os.close(follower)
    seen = _read_until(leader, b"ready")
    fcntl.ioctl(leader, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
    seen += read_terminal(leader, timeout=60)
    assert process.wait(timeout=60) == 0, seen
    assert b"40 132" in seen


def test_a_closed_terminal_stops_the_container_and_cleans_up(root):
    """SIGHUP (the terminal went away) kills the container and removes its mounts, as Ctrl-C does."""
    leader, follower = _terminal(24, 80)

    def own_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = imgbuild(root, "run", "-t", "busybox", "sh", "-c", "echo ready; sleep 600",
                       stdin=follower, stdout=follower, stderr=follower, preexec_fn=own_terminal)
    os.close(follower)
    try:
        _read_until(leader, b"ready")
        os.close(leader)  # the session leader (imgbuild) gets SIGHUP
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    leftovers, mounted = _remove_leftovers(root)
    assert code != 0  # stopped, not finished (what it says goes to a terminal that is gone)
    assert not leftovers, f"containers of this store are still there: {leftovers}"
    assert not mounted, f"still mounted: {mounted}"


def _remove_leftovers(root: Path) -> tuple[list[str], list[str]]:
    """Delete the containers whose bundle is under ``root`` and unmount what is mounted there;
    return what there was."""
    listed = subprocess.run(["runc", "list", "--format", "json"], capture_output=True, text=True).stdout
    containers = [e["id"] for e in json.loads(listed or "null") or [] if str(root) in e.get("bundle", "")]
    for container in containers:
        subprocess.run(["runc", "delete", "--force", container], capture_output=True)
    with open("/proc/mounts") as mounts:
        mounted = [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]
    for point in reversed(mounted):
        subprocess.run(["umount", point], capture_output=True)
    return containers, mounted

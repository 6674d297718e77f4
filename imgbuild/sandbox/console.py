"""A container with a terminal (``imgbuild run -t``), through runc's console socket.

runc gives a container a pseudo-terminal only in two ways: in the
foreground it copies between the pty and its *own* terminal (and fails
without one); detached (``create`` or ``run --detach``) with
``--console-socket PATH`` it connects to a unix socket at PATH and sends the
pty's master end over it (SCM_RIGHTS). We take the second way, as
containerd's shim does:

1. listen on a socket in a fresh 0700 directory under /tmp (a socket path
   has at most 107 bytes; the store may be deeper than that);
2. become a child subreaper, so the container's process, whose parent runc
   exits, is re-parented to us and we can wait for its exit status;
3. ``runc create --console-socket SOCK --pid-file F`` (through the
   private-bundle launcher): receive the master, wait for runc, give the
   terminal our window size, and only then ``runc start`` the process (so
   its first ``stty size`` already sees it);
4. copy our stdin (with ``-i``; the terminal put in raw mode, so Ctrl-C
   reaches the container as in ``docker run -it``) to the master, and the
   master to our stdout, until the container closes the terminal; then reap
   the process: its exit status, 128+N for a signal, is the result.

The window size is passed on again on every SIGWINCH (a resized window), as
``docker run -t`` does. Anything that interrupts the wait kills the
container (``runc kill ID KILL``) and reaps it; the caller deletes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

from imgbuild.errors import SandboxError

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_START_TIMEOUT_SECONDS = 60
_CHUNK = 65536


def run_with_console(
    launcher: list[str],
    runtime_prefix: list[str],
    payload: bytes,
    container_id: str,
    run_dir: Path,
    stdin_fd: int | None,
) -> int:
    """Run the container whose bundle ``payload`` holds with a terminal; return its exit status.

    ``launcher`` is the private-bundle launcher up to its ``--``,
    ``runtime_prefix`` the runtime with its global flags. Returns the runtime's
    own non-zero status when it failed before the process ran (its log says why).
    """
    socket_dir = tempfile.mkdtemp(prefix="imgbuild-tty-")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    pid = None
    try:
        socket_path = os.path.join(socket_dir, "console")
        listener.bind(socket_path)
        listener.listen(1)
        command = [*runtime_prefix, "create", "--bundle", str(run_dir / "bundle")]
        command += ["--console-socket", socket_path, "--pid-file", str(run_dir / "pid"), container_id]
        with _child_subreaper():
            process = subprocess.Popen(
                [*launcher, *command],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # runc repeats its log's error there; the log is read instead
                start_new_session=True,
            )
            try:
                _send(process, payload)
                master = _receive_master(listener, process)
                if master is None:
                    return process.wait()
                returncode = process.wait()
                if returncode != 0:
                    os.close(master)
                    return returncode
                pid = _read_pid(run_dir / "pid")
                _copy_window_size(master)
                started = subprocess.run([*runtime_prefix, "start", container_id], capture_output=True)
                if started.returncode != 0:
                    os.close(master)
                    return started.returncode
                _relay(master, stdin_fd)
                status = _reap(pid)
                pid = None
                return status
            except BaseException:
                _kill(runtime_prefix[0], container_id, process, pid)
                raise
    finally:
        listener.close()
        shutil.rmtree(socket_dir, ignore_errors=True)


def _send(process: subprocess.Popen, payload: bytes) -> None:
    with contextlib.suppress(BrokenPipeError):
        process.stdin.write(payload)
    with contextlib.suppress(BrokenPipeError):
        process.stdin.close()


def _receive_master(listener: socket.socket, process: subprocess.Popen) -> int | None:
    """The pty master runc sends, or None when runc exits without sending one."""
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([listener], [], [], 0.2)
        if ready:
            connection, _ = listener.accept()
            with connection:
                _, fds, _, _ = socket.recv_fds(connection, 4096, 1)
            if not fds:
                raise SandboxError("the runtime connected to the console socket but sent no terminal")
            return fds[0]
        if process.poll() is not None:
            return None
    raise SandboxError(f"the runtime sent no terminal within {_START_TIMEOUT_SECONDS} seconds")


def _read_pid(path: Path) -> int:
    with open(path, "rb") as handle:
        text = handle.read(64).decode(errors="replace").strip()
    if not text.isdigit():
        raise SandboxError(f"the runtime wrote no process ID to {path} (got {text!r})")
    return int(text)


def _relay(master: int, stdin_fd: int | None) -> None:
    """Copy stdin to the terminal and the terminal to stdout until the container closes it."""
    reading = [master] + ([stdin_fd] if stdin_fd is not None else [])
    with _raw(stdin_fd), _forward_resizes(master):
        try:
            while True:
                ready, _, _ = select.select(reading, [], [])
                if master in ready:
                    try:
                        chunk = os.read(master, _CHUNK)
                    except OSError:  # EIO: every holder of the terminal's other end is gone
                        chunk = b""
                    if not chunk:
                        return
                    _write_all(sys.stdout.fileno(), chunk)
                if stdin_fd is not None and stdin_fd in ready:
                    data = os.read(stdin_fd, _CHUNK)
                    if data:
                        _write_all(master, data)
                    else:
                        reading.remove(stdin_fd)
        finally:
            os.close(master)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_window_size(master: int) -> None:
    for fd in (sys.stdout.fileno(), sys.stdin.fileno()):
        if os.isatty(fd):
            with contextlib.suppress(OSError):  # our terminal or theirs went away meanwhile
                size = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
                fcntl.ioctl(master, termios.TIOCSWINSZ, size)
            return


@contextlib.contextmanager
def _forward_resizes(master: int) -> Iterator[None]:
    """Give the container's terminal our new size whenever ours changes (SIGWINCH)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGWINCH, lambda *_: _copy_window_size(master))
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


@contextlib.contextmanager
def _raw(fd: int | None) -> Iterator[None]:
    """Our terminal in raw mode while the container's is in use, restored after."""
    if fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _kill(runtime: str, container_id: str, process: subprocess.Popen, pid: int | None) -> None:
    """Stop everything this run started: the runtime if still there, the container, its process."""
    if process.poll() is None:
        process.kill()
        process.wait()
    subprocess.run([runtime, "kill", container_id, "KILL"], capture_output=True)
    if pid is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


@contextlib.contextmanager
def _child_subreaper() -> Iterator[None]:
    """Be a child subreaper (prctl) for the block, as containerd's shim is for its containers."""
    libc = ctypes.CDLL(None, use_errno=True)
    was = ctypes.c_int(0)
    libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SandboxError(f"cannot become a child subreaper: {os.strerror(ctypes.get_errno())}")
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, was.value, 0, 0, 0)

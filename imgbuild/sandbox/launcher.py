"""The private-bundle launcher as a service: one Python start per build, a fork per RUN step.

``privatebundle.py`` starts the runtime with its bundle on a tmpfs only the
runtime sees (``runtime.py`` says why). Started as a program for each step,
it cost every RUN ~15 ms of Python start-up, about a fifth of a short step.
A build now starts ``privatebundle.py --serve`` once, when its first RUN
step needs it (``prepare``), and sends it a request per step over a Unix
socket: the launcher's arguments, the environment and working directory it
would have inherited, the bundle's files, and four descriptors (the
runtime's stdin, stdout and stderr, and a status pipe). The service forks;
the child does exactly what one launcher run does, in a session of its own,
and writes its PID and then its exit status to the status pipe. A fork of
that small single-threaded process costs ~1 ms; forking imgbuild itself
would copy a multi-threaded process, which is not safe.

What the bundle holds stays where it was: in the request (a socket buffer,
never a file) and then on the private tmpfs. The service keeps no mount and
no file of a step, waits for its children (so their CPU time is counted for
imgbuild's), and ends when its socket closes: ``stop`` at the end of a
build, or imgbuild's exit, however it ends. Launchers still running then
finish their step first, as a launcher whose imgbuild was killed did before.
"""

from __future__ import annotations

import array
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from imgbuild.errors import SandboxError

_LAUNCHER = Path(__file__).with_name("privatebundle.py")
_STOP_WAIT_SECONDS = 5  # a service with launchers still running ends after them, on its own
_PID_WAIT_SECONDS = 10  # for a kill: how long to wait for a launcher's PID (the service may be starting)


class Launched:
    """A launcher the service forked, waited for as ``subprocess.Popen`` is.

    ``returncode`` is its exit status, or ``-SIGKILL`` when it ended without
    one (killed, as ``kill`` does).
    """

    def __init__(self, status_fd: int, stdout: int):
        self._status = status_fd
        self._received = b""
        self.pid: int | None = None  # None until the service forked it (or if it never did)
        self._pidfd: int | None = None
        self.returncode: int | None = None
        self.stdout = open(stdout, "rb", buffering=0)  # noqa: SIM115 - the caller closes it, as Popen's

    def forked(self) -> bool:
        """Wait until the service has forked it (its PID is in); False if the service
        ended first, taking the request with it."""
        # No timeout: only the end of the pipe (the service died) means the
        # request was lost; a slow service that then forks must not be taken
        # for a dead one, or two launchers would run the same container.
        self._read(None, until_pid=True)
        return self.pid is not None

    def poll(self) -> int | None:
        self._read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._read(timeout):
            raise subprocess.TimeoutExpired("launcher", timeout)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the launcher (its container goes with ``RUNTIME delete``)."""
        if self.pid is None:
            self._read(_PID_WAIT_SECONDS, until_pid=True)
        if self.returncode is None and self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it ended meanwhile
        elif self.returncode is None and self.pid is not None:
            # No pidfd (a kernel before 5.3, or a seccomp profile without it).
            # Until its status line is in, the launcher is unreaped, so its PID is still its own.
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _read(self, timeout: float | None, *, until_pid: bool = False) -> bool:
        """Read the status pipe until the exit status (or the PID) is in, or ``timeout`` passes."""
        while self.returncode is None and not (until_pid and self.pid is not None):
            ready, _, _ = select.select([self._status], [], [], timeout)
            if not ready:
                return False
            chunk = os.read(self._status, 64)
            if not chunk:
                self._finish(-signal.SIGKILL)
                break
            self._received += chunk
            self._take_lines()
        return True

    def _take_lines(self) -> None:
        *lines, self._received = self._received.split(b"\n")
        for line in lines:
            if self.pid is None:
                self.pid = int(line)
                try:
                    # While it runs it is unreaped (a child of the service), so the PID is its own.
                    self._pidfd = os.pidfd_open(self.pid)
                except OSError:
                    pass  # gone already, or no pidfd_open here (ENOSYS, EPERM): kill() uses the PID
            else:
                self._finish(int(line))

    def _finish(self, returncode: int) -> None:
        self.returncode = returncode
        for fd in (self._status, self._pidfd):
            if fd is not None:
                os.close(fd)
        self._status = self._pidfd = None
        _service.finished()


class _Service:
    """``privatebundle.py --serve`` and our end of its socket."""

    def __init__(self):
        self._lock = threading.Lock()  # steps of parallel stages launch from their threads
        self._process: subprocess.Popen | None = None
        self._socket: socket.socket | None = None
        self._running = 0  # launched and not yet ended

    def prepare(self) -> None:
        with self._lock:
            self._ensure_started()

    def launch(self, arguments: list[str], payload: bytes) -> Launched:
        """Fork a launcher with ``arguments`` (privatebundle.py's, ``--reap`` among them) and the
        bundle; stdin /dev/null, stdout and stderr one pipe, whose read end it returns with it."""
        body = _request(arguments, payload)
        for _attempt in (1, 2):
            launched, service = self._send_request(body)
            if launched.forked():
                return launched
            # The service died with the request (killed after we last saw it
            # alive): the next attempt goes to a fresh one.
            launched.stdout.close()
            with self._lock:
                self._discard(service)
        raise SandboxError(
            "the private-bundle launcher service ended before it started the step, twice: "
            f"try `{sys.executable} -I -S {_LAUNCHER} --serve < /dev/null`"
        )

    def _send_request(self, body: bytes) -> tuple[Launched, subprocess.Popen]:
        status_read, status_write = os.pipe()
        output_read, output_write = os.pipe()
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with self._lock:
                self._send(body, [devnull, output_write, output_write, status_write])
                self._running += 1
                service = self._process
        except BaseException:
            os.close(status_read)
            os.close(output_read)
            raise
        finally:
            for fd in (devnull, output_write, status_write):
                os.close(fd)
        return Launched(status_read, output_read), service

    def finished(self) -> None:
        with self._lock:
            self._running -= 1

    def stop(self) -> None:
        """End the service, unless a launcher of another build in this process still runs."""
        with self._lock:
            if self._running > 0 or self._process is None:
                return
            process = self._process
            self._close()
        try:
            process.wait(timeout=_STOP_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            pass  # it ends after its launchers do

    def _send(self, body: bytes, fds: list[int]) -> None:
        for attempt in (1, 2):
            self._ensure_started()
            try:
                sent = self._socket.sendmsg(
                    [body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                )
                self._socket.sendall(memoryview(body)[sent:])
                return
            except (BrokenPipeError, ConnectionResetError):
                self._close()  # it died (killed?): the request goes to a fresh one
                if attempt == 2:
                    raise SandboxError(
                        "the private-bundle launcher service ended at once: "
                        f"try `{sys.executable} -I -S {_LAUNCHER} --serve < /dev/null`"
                    ) from None

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self._close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_LAUNCHER), "--serve"],
                stdin=theirs, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd="/", start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._socket = ours

    def _discard(self, service: subprocess.Popen) -> None:
        """Drop ``service``, which lost a request: make sure it is gone, and reap it
        (unless another step has started a fresh one meanwhile)."""
        if self._process is service:
            service.kill()
            service.wait()
            self._close()

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._socket = None
        self._process = None

    def forget_in_child(self) -> None:
        """In a child forked without exec (multiprocessing's fork method): let go
        of the parent's service. Its socket's copy is closed here, so the service
        still ends when the parent closes its end, not when this child exits; the
        child starts a service of its own if it runs a step."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._close()  # our copy of the socket only: the parent's descriptor stays open
        self._running = 0


def _request(arguments: list[str], payload: bytes) -> bytes:
    """``LENGTH\\n`` and the body ``privatebundle.py`` parses (its module doc)."""
    args = b"".join(os.fsencode(argument) + b"\0" for argument in arguments)
    env = b"".join(os.fsencode(f"{name}={value}") + b"\0" for name, value in os.environ.items())
    try:
        cwd = os.fsencode(os.getcwd())
    except FileNotFoundError:
        cwd = b"/"  # our working directory was removed; a launcher started by Popen would have inherited that
    body = b"%d %d %d\n" % (len(args), len(env), len(cwd)) + args + env + cwd + payload
    return b"%d\n" % len(body) + body


_service = _Service()
os.register_at_fork(after_in_child=_service.forget_in_child)


def prepare() -> None:
    """Start the service now, so that its Python start-up overlaps the step's own preparation."""
    _service.prepare()


def launch(arguments: list[str], payload: bytes) -> Launched:
    """A launcher for a build step (``_Service.launch``)."""
    return _service.launch(arguments, payload)


def stop() -> None:
    """End the service (a build calls it when it ends)."""
    _service.stop()

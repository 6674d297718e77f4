"""Run one process in a container under an OCI runtime (runc by default, or crun).

``RUNTIME run --bundle DIR ID`` with the ``config.json`` of ``spec.py``.

The bundle is private. ``config.json`` holds the environment, with the values
of ``--secret env=``, and secret files are bound from the bundle too; none of
it may reach a disk. The runtime is started by ``privatebundle.py``, which
enters a mount namespace of its own, mounts a tmpfs on the bundle directory
there, writes the bundle into it and execs the runtime. On the host the
bundle directory stays empty; the tmpfs goes away with the runtime, also when
imgbuild is killed. That program also gives the runtime the umask 022: the
mount points it creates in the root filesystem do not depend on ours. For a
build's steps it is not started as a program each time: the build's launcher
service (``launcher.py``) forks it, which saves ~15 ms of Python start-up a step.

Mount stubs. The runtime creates a missing mount point (``/etc/hosts`` in an
image without one, ``/proc`` in a ``FROM scratch`` image, a RUN --mount target)
as an empty file or directory in the root filesystem, i.e. in the step's
upperdir. Before the run we record which mount points (and their parents) do
not exist, except ``/proc``, ``/dev`` and ``/sys``, which BuildKit keeps;
after it we delete those that are still empty, through the merged
overlay (an upper-only entry is removed without leaving a whiteout), and put
back the mtime of the directory they were in, as BuildKit does. A mount point
the image already has is not copied up: mounting over a file does not write to
it. Creating a stub inside an existing lower directory does copy that
directory up; ``overlay.prune_copied_up_dirs`` removes such no-op copies after
the unmount.

Interrupts. The runtime runs in its own session, so a terminal's Ctrl-C reaches
only us. If anything interrupts the wait (KeyboardInterrupt, an exception a
SIGTERM handler raises, ``cancel`` being set from another thread) the container
is killed (``RUNTIME kill ID KILL`` until the runtime exits) and deleted, and
the exception propagates. ``RUNTIME delete -f ID`` always runs at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from imgbuild.dataclass import dataclass
from imgbuild.errors import Interrupted, SandboxError
from imgbuild.safeopen import resolve_in_root
from imgbuild.sandbox.overlay import finish_despite_interrupts
from imgbuild.sandbox.spec import BundleFiles, RunSpec, make_config
from imgbuild.sandbox.users import ResolvedUser

_POLL_SECONDS = 0.2  # how often a waiting run looks at ``cancel``
_KILL_GRACE_SECONDS = 10  # after this the runtime process itself is killed
_CHUNK = 65536
_LAUNCHER = Path(__file__).with_name("privatebundle.py")


def run_container(
    rootfs: Path,
    spec: RunSpec,
    *,
    runtime: str = "runc",
    workdir: Path,
    on_output: Callable[[bytes], None] | None = None,
    cancel: threading.Event | None = None,
    stdin_fd: int | None = None,
    defer_delete: bool = False,
    meanwhile: Callable[[], None] | None = None,
) -> int:
    """Run ``spec`` in a container on ``rootfs`` and return its exit status.

    A process killed by signal N gives 128+N, as shells report it. The bundle
    is made in a fresh directory under ``workdir`` and removed afterwards.

    With ``on_output`` the process's stdout and stderr are one pipe, passed
    to it chunk by chunk as they come, in the order they were written (the
    container is started detached and reaped by the launcher, so the runtime
    does not copy the two through pipes of its own, which reordered them).
    Without ``on_output`` they go to our own stdout and stderr (``imgbuild
    run``). Stdin is /dev/null, or ``stdin_fd`` when given
    (``imgbuild run -i``). With ``spec.terminal`` the process gets a
    pseudo-terminal instead (``imgbuild run -t``): see ``sandbox.console``.

    Setting ``cancel`` (from another thread: signals reach only the main one)
    kills the container and raises ``Interrupted``; so does any exception
    raised in this thread while the container runs (KeyboardInterrupt, or what
    a SIGTERM handler raises), which then propagates.

    Raises SandboxError when the runtime itself fails (missing, refuses the
    host, cannot start the process); the process's own failure is only an exit
    status.

    With ``defer_delete`` a container that ran to its end is deleted
    (``RUNTIME delete``, ~10 ms) while the caller goes on, for example to
    unmount and commit the step; ``wait_for_deletes`` waits for those
    deletes and reports a failed one (a build calls it before it returns).

    ``meanwhile`` is called once the container is started, while it runs (a
    build writes the layer of the step before, ``builder/pending.py``); what
    it raises stops the container as an interrupt does, and propagates. A
    build never asks for a terminal, and with one ``meanwhile`` is not called.
    """
    wait_for_deletes()
    _check_spec(spec)
    if shutil.which(runtime) is None:
        raise SandboxError(
            f"OCI runtime {runtime!r} not found: install it, or choose runc (--runtime runc)"
        )
    rootfs = Path(rootfs).resolve()
    container_id = f"imgbuild-{secrets.token_hex(8)}"
    Path(workdir).mkdir(parents=True, exist_ok=True)
    # On disk: the runtime's log and the empty mount point of the private bundle.
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    bundle = run_dir / "bundle"
    bundle.mkdir(mode=0o700)
    try:
        files = BundleFiles()
        config = make_config(rootfs, spec, bundle, files)
        files.add("config.json", json.dumps(config, indent=2).encode())
        _make_cwd(rootfs, spec.cwd, spec.user)
        stubs = _MountStubs.record(rootfs, _stub_candidates(config["mounts"]))
        try:
            if spec.terminal:
                # Only `imgbuild run -t` has one: a build's RUN does not import it (socket, termios).
                from imgbuild.sandbox.console import run_with_console

                status = run_with_console(
                    _launcher(run_dir, files, None), _runtime_command(runtime, run_dir), files.payload(),
                    container_id, run_dir, stdin_fd,
                )
                _raise_launch_or_runtime_error(runtime, run_dir, status)
            else:
                status = _run(runtime, container_id, run_dir, files, on_output, cancel, stdin_fd, meanwhile)
        except BaseException:
            finish_despite_interrupts(
                lambda: _delete_container(runtime, container_id, report_errors=False)
            )
            raise
        if defer_delete:
            _start_delete(runtime, container_id)
        else:
            _delete_container(runtime, container_id, report_errors=True)
        stubs.remove()
        return status
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _check_spec(spec: RunSpec) -> None:
    if not spec.args:
        raise SandboxError("nothing to run: the command is empty")
    if spec.network not in ("host", "none"):
        raise SandboxError(f"unsupported network mode {spec.network!r}: use host or none")
    if not spec.cwd.startswith("/"):
        raise SandboxError(f"the working directory must be absolute, got {spec.cwd!r}")
    for mount in spec.mounts:
        if mount.type not in ("bind", "tmpfs"):
            raise SandboxError(f"unsupported mount type {mount.type!r}: use bind or tmpfs")
        if not mount.destination.startswith("/"):
            raise SandboxError(f"mount target must be absolute, got {mount.destination!r}")
        if mount.type == "bind" and mount.private is None and not os.path.exists(mount.source):
            raise SandboxError(f"bind mount source {mount.source} does not exist")


# --- the working directory -----------------------------------------------------------


def _make_cwd(rootfs: Path, cwd: str, user: ResolvedUser) -> None:
    """Create a missing working directory, owned by the user (BuildKit does the same).

    Unlike mount stubs it stays in the layer.
    """
    target = resolve_in_root(rootfs, cwd)
    missing = []
    path = target
    while path != rootfs and not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o755)
        except OSError as error:
            raise SandboxError(
                f"cannot create the working directory {cwd}: {error.strerror}"
            ) from error
        os.chmod(directory, 0o755)  # not subject to our umask
        os.chown(directory, user.uid, user.gid, follow_symlinks=False)


# --- mount stubs -----------------------------------------------------------------

_SYSTEM_MOUNT_POINTS = ("/proc", "/dev", "/sys")


def _stub_candidates(mounts: list[dict]) -> list[str]:
    """Mount points whose runtime-made stubs are removed after the run.

    BuildKit keeps the empty /proc, /dev and /sys runc creates in a rootfs
    that lacks them (moby/buildkit#3455) and removes only the stubs of
    /etc/hosts, /etc/resolv.conf, /etc/hostname and RUN --mount targets; so do we.
    """
    candidates = []
    for mount in mounts:
        destination = mount["destination"]
        if any(destination == top or destination.startswith(top + "/") for top in _SYSTEM_MOUNT_POINTS):
            continue
        candidates.append(destination)
    return candidates



@dataclass
class _MountStubs:
    """Mount points missing from the root filesystem before a run (see the module doc)."""

    rootfs: Path
    missing: list[str]  # relative paths, deepest first
    parent_times: dict[str, tuple[int, int]]  # existing parent dir: (atime_ns, mtime_ns)

    @classmethod
    def record(cls, rootfs: Path, destinations: list[str]) -> _MountStubs:
        missing: set[str] = set()
        parent_times: dict[str, tuple[int, int]] = {}
        for destination in destinations:
            path = resolve_in_root(rootfs, destination)
            if os.path.lexists(path):
                continue
            while path != rootfs and not os.path.lexists(path):
                missing.add(path.relative_to(rootfs).as_posix())
                path = path.parent
            info = os.lstat(path)  # the deepest existing parent, which gets a new entry
            parent_times[_relative(rootfs, path)] = (info.st_atime_ns, info.st_mtime_ns)
        deepest_first = sorted(missing, key=lambda rel: rel.count("/"), reverse=True)
        return cls(rootfs, deepest_first, parent_times)

    def remove(self) -> None:
        """Delete the stubs that are still empty; keep anything the command put there."""
        touched_parents = set()
        for relative in self.missing:
            path = self.rootfs / relative
            if not _is_plain_path(self.rootfs, relative):
                continue  # the command replaced a parent by a symlink: leave it alone
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode) and not any(path.iterdir()):
                path.rmdir()
            elif stat.S_ISREG(info.st_mode) and info.st_size == 0:
                path.unlink()
            else:
                continue
            touched_parents.add(_relative(self.rootfs, path.parent))
        for relative in touched_parents:
            times = self.parent_times.get(relative)
            if times is not None and _is_plain_path(self.rootfs, relative):
                os.utime(self.rootfs / relative, ns=times, follow_symlinks=False)


def _relative(rootfs: Path, path: Path) -> str:
    return "." if path == rootfs else path.relative_to(rootfs).as_posix()


def _is_plain_path(rootfs: Path, relative: str) -> bool:
    """True if no parent directory of ``relative`` is a symlink (or gone)."""
    if relative == ".":
        return True
    path = rootfs
    for part in relative.split("/")[:-1]:
        path = path / part
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        except FileNotFoundError:
            return False
    return True


# --- running -----------------------------------------------------------------------


def _launcher(run_dir: Path, files: BundleFiles, stdin_fd: int | None, reaping: list[str] = ()) -> list[str]:
    """The private-bundle launcher's command line, up to its ``--``; ``reaping``: ``--reap PID_FILE``."""
    return [sys.executable, "-I", "-S", str(_LAUNCHER), *_launcher_arguments(run_dir, files, stdin_fd, reaping)]


def _launcher_arguments(run_dir: Path, files: BundleFiles, stdin_fd: int | None, reaping: list[str]) -> list[str]:
    """The launcher's arguments up to its ``--`` (as a program, or in a request to the service)."""
    arguments = [str(run_dir / "bundle"), str(files.size()), str(run_dir / "launch-error")]
    if stdin_fd is not None:
        arguments += ["--stdin", str(stdin_fd)]
    return [*arguments, *reaping, "--"]


def _runtime_command(runtime: str, run_dir: Path) -> list[str]:
    """``RUNTIME --log ... --log-format json``: what goes before ``run``."""
    return [runtime, "--log", _log_destination(runtime, run_dir / "runtime.log"), "--log-format", "json"]


def _raise_launch_or_runtime_error(runtime: str, run_dir: Path, returncode: int) -> None:
    launch_error = run_dir / "launch-error"
    if launch_error.exists():
        with open(launch_error, "rb") as handle:
            reason = handle.read(_CHUNK).decode(errors="replace").strip()
        raise SandboxError(f"cannot start {runtime} with a private bundle: {reason}")
    runtime_errors = _runtime_errors(run_dir / "runtime.log")
    if returncode != 0 and runtime_errors:
        raise SandboxError(f"{runtime} could not run the container: {'; '.join(runtime_errors)}")


def _run(
    runtime: str,
    container_id: str,
    run_dir: Path,
    files: BundleFiles,
    on_output: Callable[[bytes], None] | None,
    cancel: threading.Event | None,
    stdin_fd: int | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> int:
    command = _runtime_command(runtime, run_dir) + ["run"]
    reaping = []
    if on_output is not None:  # one pipe for stdout and stderr: see run_container
        pid_file = run_dir / "container.pid"
        command += ["--detach", "--pid-file", str(pid_file)]
        reaping = ["--reap", str(pid_file)]
    command += ["--bundle", str(run_dir / "bundle"), container_id]
    if on_output is not None and stdin_fd is None:  # a build step: the build's launcher service forks it
        return _run_launched(runtime, container_id, run_dir, files, command, reaping, on_output, cancel, meanwhile)
    output = subprocess.PIPE if on_output is not None else None
    error_output = subprocess.STDOUT if on_output is not None else None
    # The launcher's own stdin carries the bundle: the process's stdin goes
    # beside it, under another number, and becomes its stdin after the read.
    passed = None if stdin_fd is None else os.dup(stdin_fd)
    try:
        process = subprocess.Popen(
            [*_launcher(run_dir, files, passed, reaping), *command],
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=error_output,
            start_new_session=True,
            pass_fds=() if passed is None else (passed,),
        )
    finally:
        if passed is not None:
            os.close(passed)
    try:
        _send_bundle(process, files)
        if meanwhile is not None:
            meanwhile()
        returncode = _wait(process, on_output, cancel)
    except BaseException:
        finish_despite_interrupts(lambda: _kill_container(runtime, container_id, process))
        raise
    finally:
        if process.stdout is not None:
            process.stdout.close()
    _raise_launch_or_runtime_error(runtime, run_dir, returncode)
    return returncode if returncode >= 0 else 128 - returncode


def _run_launched(
    runtime: str,
    container_id: str,
    run_dir: Path,
    files: BundleFiles,
    command: list[str],
    reaping: list[str],
    on_output: Callable[[bytes], None],
    cancel: threading.Event | None,
    meanwhile: Callable[[], None] | None,
) -> int:
    """``_run`` through the launcher service (``launcher.py``): no Python start-up per step."""
    from imgbuild.sandbox import launcher

    arguments = _launcher_arguments(run_dir, files, None, reaping)
    process = launcher.launch([*arguments, *command], files.payload())
    try:
        if meanwhile is not None:
            meanwhile()
        returncode = _wait(process, on_output, cancel)
    except BaseException:
        finish_despite_interrupts(lambda: _kill_container(runtime, container_id, process))
        raise
    finally:
        process.stdout.close()
    if process.pid is None:
        raise SandboxError(
            f"cannot start {runtime} with a private bundle: the launcher service ended before the step started"
        )
    _raise_launch_or_runtime_error(runtime, run_dir, returncode)
    return returncode if returncode >= 0 else 128 - returncode


def _send_bundle(process: subprocess.Popen, files: BundleFiles) -> None:
    """Hand the bundle's files to the launcher, which reads them all before anything else."""
    # A broken pipe means it failed to start; its error file or exit status says why.
    with contextlib.suppress(BrokenPipeError):
        process.stdin.write(files.payload())
    with contextlib.suppress(BrokenPipeError):
        process.stdin.close()


def _log_destination(runtime: str, log: Path) -> str:
    # crun reads "TYPE:ARG" (a colon in a bare path would be taken for a type).
    return f"file:{log}" if os.path.basename(runtime) == "crun" else str(log)


def _wait(
    process: subprocess.Popen,
    on_output: Callable[[bytes], None] | None,
    cancel: threading.Event | None,
) -> int:
    """Stream the output until it ends, then wait for the runtime to exit."""
    reader = process.stdout.fileno() if process.stdout is not None else None
    while True:
        if cancel is not None and cancel.is_set():
            raise Interrupted("the build was interrupted; the RUN step's container was killed")
        if reader is None:
            try:
                return process.wait(timeout=_POLL_SECONDS)
            except subprocess.TimeoutExpired:
                continue
        ready, _, _ = select.select([reader], [], [], _POLL_SECONDS)
        if not ready:
            continue
        chunk = os.read(reader, _CHUNK)
        if chunk:
            on_output(chunk)
        else:
            reader = None  # end of output: the container's processes are gone


def _kill_container(runtime: str, container_id: str, process: subprocess.Popen) -> None:
    """SIGKILL the container until the runtime process exits.

    The loop covers an interrupt that lands while the runtime is still creating
    the container (`kill` fails until it exists). If the runtime does not exit,
    it is killed itself and `delete -f` removes what it left.
    """
    deadline = time.monotonic() + _KILL_GRACE_SECONDS
    while process.poll() is None:
        subprocess.run([runtime, "kill", container_id, "KILL"], capture_output=True)
        try:
            process.wait(timeout=_POLL_SECONDS)
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()


def _delete_container(runtime: str, container_id: str, *, report_errors: bool) -> None:
    result = subprocess.run(
        [runtime, "delete", "--force", container_id], capture_output=True, text=True
    )
    if not report_errors:
        return  # an earlier error is on its way up; it is the one to show
    if result.returncode != 0 and "does not exist" not in result.stderr:
        raise SandboxError(
            f"{runtime} could not delete container {container_id}: {result.stderr.strip()}"
        )


@dataclass
class _Delete:
    """A ``runtime delete`` started in the background, to wait for before exiting."""

    runtime: str
    container_id: str
    process: subprocess.Popen


_deletes: list[_Delete] = []  # started, not yet waited for
_deletes_lock = threading.Lock()  # steps run in threads


def _start_delete(runtime: str, container_id: str) -> None:
    process = subprocess.Popen(
        [runtime, "delete", "--force", container_id],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    with _deletes_lock:
        _deletes.append(_Delete(runtime, container_id, process))


def wait_for_deletes(*, report_errors: bool = True) -> None:
    """Wait for the deferred container deletes (``run_container(defer_delete=True)``).

    Raises SandboxError for the first that failed, unless ``report_errors``
    is false (an earlier error is on its way up).
    """
    with _deletes_lock:
        pending = list(_deletes)
        _deletes.clear()
    failures = []
    for delete in pending:
        errors = _error_output(delete.process)
        if delete.process.returncode != 0 and "does not exist" not in errors:
            failures.append(f"{delete.runtime} could not delete container {delete.container_id}: {errors.strip()}")
    if failures and report_errors:
        raise SandboxError(failures[0])


def _error_output(process: subprocess.Popen) -> str:
    """The stderr of a short process, waited for to its end through interrupts."""
    outcome: list[str] = []

    def finish() -> None:
        if not outcome:
            outcome.append(process.communicate()[1])

    finish_despite_interrupts(finish)
    return outcome[0]


def _runtime_errors(log: Path) -> list[str]:
    """Messages the runtime logged at error level (its own failures, not the process's)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    messages = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            messages.append(str(entry.get("msg", "")).strip())
    return messages

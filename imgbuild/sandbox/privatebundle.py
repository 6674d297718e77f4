"""Start the OCI runtime with its bundle on a tmpfs that only it can see.

Run as a program, not imported (``sandbox.py`` starts it; standard library only,
so it runs under ``python -I -S``)::

    python3 -I -S privatebundle.py MOUNT_POINT SIZE ERROR_FILE [--stdin FD] [--reap PID_FILE] -- RUNTIME ARG...

It reads the bundle's files on stdin, each as a line ``MODE UID GID
PATH_BYTES DATA_BYTES`` followed by its path and its data (``spec.BundleFiles``;
parsed without importing json or base64, which would cost each step ~7 ms), then:

1. enters a new mount namespace, with every mount a slave of the host's (mounts
   made on the host still show; nothing made here leaks back);
2. mounts a tmpfs (mode 0700, ``SIZE`` bytes) on ``MOUNT_POINT`` in that
   namespace and writes the files into it;
3. sets the umask to 022, so that the mount points the runtime creates in the
   root filesystem (``/proc`` in a ``FROM scratch`` image) do not depend on the
   umask of whoever runs imgbuild, and replaces itself with the runtime, whose
   stdin is /dev/null, or the inherited descriptor FD with ``--stdin FD``
   (``imgbuild run -i``).

With ``--reap PID_FILE`` (the runtime runs ``run --detach --pid-file
PID_FILE``) it stays instead: a child subreaper, it runs the runtime, which
starts the container and exits, then adopts the container's process and
exits with its status (128+N for signal N, as a shell reports it). The
container then writes to this program's stdout and stderr itself, not through
the runtime's two copying pipes: when both are one pipe, a build step's output
keeps the order in which it was written.

The bundle holds ``config.json`` (with the values of ``--secret env=``) and the
secret files. The tmpfs exists in no other namespace: on the host the mount
point stays an empty directory on disk. When the runtime exits, whether
imgbuild ended normally or was killed, the namespace and its tmpfs go with it,
and the kernel frees the pages. No secret is ever written to disk, and nothing
is left to clean up.

On failure before the runtime starts, the reason goes to ERROR_FILE and the
exit status is 125.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
PR_SET_CHILD_SUBREAPER = 36
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REC = 0x4000
MS_SLAVE = 0x80000
MAX_PAYLOAD = 64 * 1024 * 1024  # the bundle's files: config.json and secrets
LAUNCH_FAILED = 125


class LaunchError(Exception):
    pass


def main(argv: list[str]) -> int:
    stdin_fd = None
    pid_file = None
    while len(argv) > 6 and argv[4] in ("--stdin", "--reap"):
        if argv[4] == "--stdin":
            stdin_fd = int(argv[5])
        else:
            pid_file = argv[5]
        argv = argv[:4] + argv[6:]
    if len(argv) < 6 or argv[4] != "--":
        print(
            "usage: privatebundle.py MOUNT_POINT SIZE ERROR_FILE [--stdin FD] [--reap PID_FILE] -- RUNTIME ARG...",
            file=sys.stderr,
        )
        return 2
    mount_point, size, error_file, command = argv[1], int(argv[2]), argv[3], argv[5:]
    try:
        files = _read_payload(sys.stdin.buffer)
        libc = ctypes.CDLL(None, use_errno=True)
        _call(libc.unshare(CLONE_NEWNS), "unshare the mount namespace")
        _call(libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None), "make / a slave mount")
        options = f"mode=0700,size={size}".encode()
        flags = MS_NOSUID | MS_NODEV
        _call(
            libc.mount(b"imgbuild-bundle", os.fsencode(mount_point), b"tmpfs", flags, options),
            f"mount a tmpfs on {mount_point}",
        )
        for entry in files:
            _write_file(mount_point, entry)
        os.umask(0o022)
        source = os.open(os.devnull, os.O_RDONLY) if stdin_fd is None else stdin_fd
        os.dup2(source, 0)
        os.close(source)
        if pid_file is not None:
            _call(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "become a child subreaper")
            return _run_and_reap(command, pid_file)
        os.execvp(command[0], command)
    except (LaunchError, OSError, ValueError, KeyError) as error:
        _report(error_file, str(error))
    except BaseException as error:  # noqa: BLE001 - the parent must get a reason, whatever it is
        _report(error_file, f"{type(error).__name__}: {error}")
    return LAUNCH_FAILED


def _run_and_reap(command: list[str], pid_file: str) -> int:
    """Run the runtime (``run --detach``), then wait for the container it left to us."""
    runtime = os.fork()
    if runtime == 0:
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    reaped: dict[int, int] = {}  # the container may end before the runtime does
    status = _exit_code(_wait_for(runtime, reaped))
    if status != 0:
        return status  # it could not start the container; its log says why
    with open(pid_file, "rb") as handle:
        container = int(handle.read(64).strip())
    return _exit_code(_wait_for(container, reaped))


def _wait_for(pid: int, reaped: dict[int, int]) -> int:
    """Reap children (orphans come to a subreaper) until ``pid`` has exited; its wait status."""
    while pid not in reaped:
        try:
            child, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            raise LaunchError(f"process {pid} ended without us seeing its status") from None
        reaped[child] = status
    return reaped[pid]


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _read_payload(stream) -> list[tuple[str, bytes, int, int, int]]:
    """The files as (path, data, mode, uid, gid)."""
    data = stream.read(MAX_PAYLOAD + 1)
    if len(data) > MAX_PAYLOAD:
        raise LaunchError(f"the bundle is larger than {MAX_PAYLOAD} bytes")
    files = []
    position = 0
    while position < len(data):
        end = data.find(b"\n", position, position + 128)
        fields = data[position:end].split(b" ") if end >= 0 else []
        if len(fields) != 5 or not all(field.isdigit() for field in fields):
            raise LaunchError(f"malformed bundle payload at byte {position}")
        mode, uid, gid, path_size, data_size = (int(field) for field in fields)
        start = end + 1
        position = start + path_size + data_size
        if position > len(data):
            raise LaunchError("truncated bundle payload")
        path = os.fsdecode(data[start : start + path_size])
        files.append((path, data[start + path_size : position], mode, uid, gid))
    return files


def _call(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise LaunchError(f"cannot {what}: {os.strerror(code)}")


def _write_file(root: str, entry: tuple[str, bytes, int, int, int]) -> None:
    """Write one file below ``root``; its parent directories are made 0700."""
    relative, content, mode, uid, gid = entry
    parts = relative.split("/")
    if relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise LaunchError(f"bad bundle path {relative!r}")
    directory = root
    for part in parts[:-1]:
        directory = os.path.join(directory, part)
        if not os.path.isdir(directory):
            os.mkdir(directory, 0o700)
    path = os.path.join(root, relative)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        data = memoryview(content)
        while data:
            data = data[os.write(fd, data) :]
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _report(error_file: str, message: str) -> None:
    try:
        with open(error_file, "w") as handle:
            handle.write(message)
    except OSError:
        print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

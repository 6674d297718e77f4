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

Serving (``privatebundle.py --serve``, for a build's RUN steps): starting
Python costs each step ~15 ms, so a build starts this program once and has
it fork a launcher per step. Its stdin is a Unix stream socket; each request
is ``LENGTH\n`` and then LENGTH bytes: a line ``ARGS_BYTES ENV_BYTES CWD_BYTES``,
the arguments above (without the program name) and the environment, each
entry ending in a NUL byte, the working directory, then the bundle's files
as on stdin above. Four descriptors come with its first bytes (SCM_RIGHTS):
the runtime's stdin, stdout and stderr, and a pipe for the status. The forked
launcher does what one run does (always ``--reap``), in a session of its
own, and writes its PID and then its exit status to the status pipe, each
as a decimal line. This program itself stays single-threaded (so forking
it is safe), holds no mount or file of a step, reaps its children, and when
the socket closes (imgbuild is done, or was killed) it waits for the
launchers still running and exits.
"""

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
    if argv[1:] == ["--serve"]:
        return serve()
    parsed = _arguments(argv[1:])
    if parsed is None:
        print(
            "usage: privatebundle.py MOUNT_POINT SIZE ERROR_FILE [--stdin FD] [--reap PID_FILE] -- RUNTIME ARG...",
            file=sys.stderr,
        )
        return 2
    mount_point, size, error_file, stdin_fd, pid_file, command = parsed
    try:
        data = sys.stdin.buffer.read(MAX_PAYLOAD + 1)
    except OSError as error:
        _report(error_file, str(error))
        return LAUNCH_FAILED
    stdin_source = os.open(os.devnull, os.O_RDONLY) if stdin_fd is None else stdin_fd
    return launch(mount_point, size, error_file, data, stdin_source, pid_file, command, None)


def _arguments(args: list[str]):
    """(MOUNT_POINT, SIZE, ERROR_FILE, stdin FD or None, PID_FILE or None, command), or None."""
    stdin_fd = None
    pid_file = None
    while len(args) > 5 and args[3] in ("--stdin", "--reap"):
        if args[3] == "--stdin":
            stdin_fd = int(args[4])
        else:
            pid_file = args[4]
        args = args[:3] + args[5:]
    if len(args) < 5 or args[3] != "--" or not args[1].isdigit():
        return None
    return args[0], int(args[1]), args[2], stdin_fd, pid_file, args[4:]


def launch(mount_point, size, error_file, data, stdin_source, pid_file, command, env) -> int:
    """Everything after reading the arguments: the private tmpfs, the files, the runtime.

    ``stdin_source`` becomes the runtime's stdin; ``env`` (None: ours) its
    environment. Returns an exit status; without ``pid_file`` it does not
    return unless the runtime cannot be started.
    """
    try:
        files = _parse_payload(data)
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
        os.dup2(stdin_source, 0)
        os.close(stdin_source)
        if pid_file is not None:
            _call(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "become a child subreaper")
            return _run_and_reap(command, pid_file, env)
        _exec(command, env)
    except (LaunchError, OSError, ValueError, KeyError) as error:
        _report(error_file, str(error))
    except BaseException as error:  # noqa: BLE001 - the parent must get a reason, whatever it is
        _report(error_file, f"{type(error).__name__}: {error}")
    return LAUNCH_FAILED


def _exec(command: list[str], env: dict | None) -> None:
    if env is None:
        os.execvp(command[0], command)
    os.execvpe(command[0], command, env)


# --- serving a build (--serve) ----------------------------------------------------

_REQUEST_FDS = 4  # the runtime's stdin, stdout and stderr, and the status pipe
_MAX_REQUEST = MAX_PAYLOAD + 1024 * 1024  # the bundle, the arguments and the environment
_INT_SIZE = 4


def serve() -> int:
    """Fork a launcher for each request on the socket on stdin, until it closes."""
    import _socket  # the C module: ``socket`` would import enum and selectors

    connection = _socket.socket(fileno=os.dup(0))  # a descriptor no launcher keeps
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        while True:
            _reap_children(block=False)
            request = _receive(connection, _socket)
            if request is None:
                break
            body, fds = request
            child = os.fork()
            if child == 0:
                _serve_one(connection, body, fds)  # never returns
            for fd in fds:
                os.close(fd)
    finally:
        connection.close()
        _reap_children(block=True)
    # Nothing is buffered and nothing needs finalizing: exit at once (Python's own
    # shutdown cost ~7 ms, which the end of a build waited for).
    os._exit(0)


def _serve_one(connection, body: bytes, fds: list[int]) -> None:
    """In the forked child: one launcher run, its PID and exit status on the status pipe."""
    code = LAUNCH_FAILED
    status = None
    try:
        connection.close()
        stdin_source, stdout, stderr, status = fds
        os.set_inheritable(status, False)  # neither the runtime nor the container keeps it
        os.setsid()  # a terminal's Ctrl-C reaches imgbuild only
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        for fd in (stdout, stderr):
            if fd not in (1, 2):
                os.close(fd)
        _write_line(status, os.getpid())
        arguments, env, cwd, data = _parse_request(body)
        parsed = _arguments(arguments)
        if parsed is None or parsed[4] is None:
            raise LaunchError("malformed launch request")
        mount_point, size, error_file, _stdin_fd, pid_file, command = parsed
        os.chdir(cwd)
        code = launch(mount_point, size, error_file, data, stdin_source, pid_file, command, env)
    except BaseException as error:  # noqa: BLE001 - a child of the server must never return into its loop
        # Only a bug of ours gets here (launch reports its own failures): say so in the output.
        try:
            os.write(2, f"imgbuild launcher: {type(error).__name__}: {error}\n".encode())
        except OSError:
            pass
    finally:
        try:
            if status is not None:
                _write_line(status, code)
        finally:
            os._exit(code)


def _write_line(fd: int, number: int) -> None:
    os.write(fd, b"%d\n" % number)  # shorter than PIPE_BUF: one write, never split


def _receive(connection, _socket):
    """The next request as (body, descriptors); None when the socket is closed."""
    space = _socket.CMSG_SPACE(_REQUEST_FDS * _INT_SIZE)
    data, ancillary, _flags, _address = connection.recvmsg(64, space)
    fds = _descriptors(ancillary, _socket)
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    end = data.find(b"\n")
    if end < 0 or not data[:end].isdigit() or int(data[:end]) > _MAX_REQUEST or len(fds) != _REQUEST_FDS:
        raise LaunchError("malformed launch request")  # imgbuild sent it: a bug, not an input
    length = int(data[:end])
    parts = [data[end + 1 :]]
    received = len(parts[0])
    while received < length:  # exactly this request: the next one's descriptors stay queued
        chunk = connection.recv(min(length - received, 1 << 20))
        if not chunk:
            raise LaunchError("the launch request was cut short")
        parts.append(chunk)
        received += len(chunk)
    return b"".join(parts), fds


def _descriptors(ancillary, _socket) -> list[int]:
    fds = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _INT_SIZE
            fds += [int.from_bytes(data[i : i + _INT_SIZE], sys.byteorder) for i in range(0, usable, _INT_SIZE)]
    return fds


def _parse_request(body: bytes) -> tuple[list[str], dict[str, str], str, bytes]:
    """A request body: (arguments, environment, working directory, bundle payload)."""
    end = body.find(b"\n", 0, 128)
    fields = body[:end].split(b" ") if end >= 0 else []
    if len(fields) != 3 or not all(field.isdigit() for field in fields):
        raise LaunchError("malformed launch request")
    args_size, env_size, cwd_size = (int(field) for field in fields)
    start = end + 1
    arguments = _nul_terminated(body[start : start + args_size])
    start += args_size
    env = {}
    for entry in _nul_terminated(body[start : start + env_size]):
        name, _, value = entry.partition("=")
        env[name] = value
    start += env_size
    cwd = os.fsdecode(body[start : start + cwd_size])
    return arguments, env, cwd, body[start + cwd_size :]


def _nul_terminated(data: bytes) -> list[str]:
    return [os.fsdecode(item) for item in data.split(b"\0")[:-1]]


def _reap_children(*, block: bool) -> None:
    """Wait for the launchers that ended (their CPU time then counts for us, and so for imgbuild)."""
    while True:
        try:
            child, _status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if child == 0:
            return


def _run_and_reap(command: list[str], pid_file: str, env: dict | None) -> int:
    """Run the runtime (``run --detach``), then wait for the container it left to us."""
    runtime = os.fork()
    if runtime == 0:
        try:
            _exec(command, env)
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


def _parse_payload(data: bytes) -> list[tuple[str, bytes, int, int, int]]:
    """The files as (path, data, mode, uid, gid)."""
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

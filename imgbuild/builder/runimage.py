"""``imgbuild run``: run a built image once, attached, like ``docker run --rm``.

The image's layers are mounted under a throwaway upperdir, and the process
gets what a runtime derives from the image config: Entrypoint + Cmd (or the
given command), Env (plus ``--env-file`` and ``-e``), WorkingDir and User.

The command is looked up in the image first, as runc would look it up (the
container's PATH when it has no ``/``): a missing one fails with exit code
127 and one message, one that cannot be executed with 126, as ``docker run``
does, instead of the runtime's own error.
"""

from __future__ import annotations

import os
import posixpath
import signal
import stat
import sys
from dataclasses import field, replace
from pathlib import Path

from imgbuild.builder import imageconfig as ic
from imgbuild.builder.rootfs import image_layers, workspace
from imgbuild.builder.signals import signal_raises, signals_raise_interrupt
from imgbuild.dataclass import dataclass
from imgbuild.errors import (
    BuildError,
    CommandNotExecutable,
    CommandNotFound,
    Interrupted,
    UsageError,
)
from imgbuild.image import LayerRef
from imgbuild.safeopen import resolve_in_root
from imgbuild.sandbox.runtime import run_container
from imgbuild.sandbox.spec import DEFAULT_PATH, Mount, RunSpec
from imgbuild.sandbox.users import resolve_user
from imgbuild.store import Store


@dataclass
class RunOptions:
    """What ``imgbuild run`` was asked for, from its flags."""

    image: str
    command: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)  # K=V, or K to take $K
    network: str = "host"
    user: str | None = None
    workdir: str | None = None
    entrypoint: str | None = None
    runtime: str = "runc"
    env_files: list[str] = field(default_factory=list)
    interactive: bool = False  # -i: our stdin is the process's
    tty: bool = False  # -t: a pseudo-terminal, as docker run -t
    privileged: bool = False
    volumes: list[str] = field(default_factory=list)  # -v HOST:CONTAINER[:ro|rw]


def argv_for(config: dict, command: list[str], entrypoint: str | None) -> list[str]:
    """Docker's rule: ENTRYPOINT + (command given, else CMD).

    ``entrypoint`` None means not given; given, it replaces the image's
    ENTRYPOINT and drops its CMD, and ``""`` clears the ENTRYPOINT (as
    ``docker run --entrypoint ''``).
    """
    container = ic.container_config(config)
    if entrypoint is None:
        prefix = list(container.get("Entrypoint") or [])
        args = list(command) if command else list(container.get("Cmd") or [])
    else:
        prefix = [entrypoint] if entrypoint else []
        args = list(command)
    argv = prefix + args
    if not argv and entrypoint is not None:
        raise UsageError("--entrypoint '' clears the image's ENTRYPOINT and CMD: give a command to run")
    if not argv:
        raise UsageError("the image has no ENTRYPOINT or CMD: give a command to run")
    return argv


MAX_ENV_FILE = 1 << 20


def read_env_file(path: str) -> list[str]:
    """``--env-file``: Docker's format, one ``KEY=VALUE`` (or ``KEY``, taken from our
    environment) a line; blank lines and lines starting with ``#`` are skipped;
    no quoting (quotes are part of the value)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        raise UsageError(f"--env-file {path}: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"--env-file {path}: not a regular file")
        data = handle.read(MAX_ENV_FILE + 1)
    if len(data) > MAX_ENV_FILE:
        raise UsageError(f"--env-file {path}: larger than {MAX_ENV_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"--env-file {path}: not UTF-8 text (byte {error.start})") from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        key = line.partition("=")[0]
        if not key or any(c.isspace() for c in key):
            raise UsageError(f"--env-file {path}:{number}: {key!r} is not a variable name (KEY=VALUE)")
        entries.append(line)
    return entries


def merged_env(config: dict, extra: list[str], environ: dict) -> list[str]:
    env = ic.env_dict(config)
    for item in extra:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"-e {item!r}: expected KEY=VALUE")
        if sep:
            env[key] = value
        elif key in environ:
            env[key] = environ[key]
    return [f"{k}={v}" for k, v in env.items()]


def volume_mount(text: str) -> Mount:
    """``-v HOST:CONTAINER[:ro|rw]``: a bind mount of an existing host directory or file.

    Only absolute host paths: Docker's named volumes need a daemon to keep them.
    """
    parts = text.split(":")
    access = "rw"
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        access = parts.pop()
    if len(parts) != 2 or not all(part.startswith("/") for part in parts):
        raise UsageError(f"-v {text!r}: expected /HOST/PATH:/CONTAINER/PATH[:ro|rw], both absolute")
    source, destination = parts
    if not os.path.exists(source):
        raise UsageError(f"-v {text!r}: {source} does not exist on this machine; create it first")
    return Mount("bind", destination, source=os.path.realpath(source), readonly=access == "ro")


def find_command(rootfs: Path, command: str, env: list[str], cwd: str, image: str) -> None:
    """Fail as ``docker run`` does when ``command`` cannot run in the image: 127 when it is
    missing, 126 when it is not an executable file. Symlinks resolve inside the image; a
    relative path with a ``/`` is taken from the working directory, as runc takes it."""
    path_value = next((e.partition("=")[2] for e in reversed(env) if e.startswith("PATH=")), DEFAULT_PATH)
    if "/" in command:
        candidates = [posixpath.join(cwd, command)]
    else:
        candidates = [f"{d.rstrip('/') or ''}/{command}" for d in path_value.split(":") if d.startswith("/")]
    found_other = None
    for candidate in candidates:
        try:
            info = os.stat(resolve_in_root(rootfs, candidate))
        except (OSError, BuildError):  # missing, or a symlink loop: not there to run
            continue
        if stat.S_ISREG(info.st_mode) and info.st_mode & 0o111:
            return
        found_other = found_other or candidate
    if found_other is not None:
        raise CommandNotExecutable(
            f"cannot run {command!r} in {image}: {found_other} is not an executable file"
        )
    where = "" if "/" in command else f" in $PATH ({path_value})"
    raise CommandNotFound(f"cannot run {command!r} in {image}: no such executable{where}")


def run_image(store: Store, options: RunOptions, environ: dict) -> int:
    if options.tty and options.interactive and not os.isatty(sys.stdin.fileno()):
        raise UsageError("the input device is not a TTY: drop -t, or run from a terminal")
    extra_env = [entry for path in options.env_files for entry in read_env_file(path)] + list(options.env)
    options = _with_env(options, extra_env)
    mounts = [volume_mount(text) for text in options.volumes]
    image = store.load_image(options.image)
    config = image.config
    argv = argv_for(config, options.command, options.entrypoint)
    layers = image_layers(image, options.image)
    try:
        # The lease tells `imgbuild rmi` and `fsck --repair` that the store is
        # in use: the container's root is mounted from a directory in tmp/.
        with store.writer_lease():
            return _run_in_workspace(store, layers, config, argv, options, environ, mounts)
    except KeyboardInterrupt:
        raise Interrupted("interrupted; the container was stopped and its mounts removed") from None


def _run_in_workspace(
    store: Store, layers: list[LayerRef], config: dict, argv: list[str], options, environ, mounts: list[Mount]
) -> int:
    """Mount the image under a throwaway upperdir and run ``argv``; SIGTERM cleans up as Ctrl-C."""
    container = ic.container_config(config)
    with (
        signals_raise_interrupt(),
        # A closed terminal (SIGHUP) stops the container and cleans up, as Ctrl-C
        # does; Python's default would end imgbuild at once and leave both behind.
        signal_raises(signal.SIGHUP, KeyboardInterrupt),
        workspace(store, layers, prefix="run-") as space,
        space.mounted() as merged,
    ):
        env = merged_env(config, options.env, environ)
        if options.tty and not any(entry.startswith("TERM=") for entry in env):
            env.append("TERM=xterm")  # as docker run -t sets it
        cwd = options.workdir or container.get("WorkingDir") or "/"
        find_command(merged, argv[0], env, cwd, options.image)
        spec = RunSpec(
            args=argv,
            env=env,
            cwd=cwd,
            user=resolve_user(merged, options.user if options.user is not None else container.get("User", "")),
            network=options.network,
            terminal=options.tty,
            mounts=mounts,
            privileged=options.privileged,
        )
        sys.stdout.flush()
        stdin_fd = sys.stdin.fileno() if options.interactive else None
        return run_container(merged, spec, runtime=options.runtime, workdir=space.scratch, stdin_fd=stdin_fd)


def _with_env(options: RunOptions, env: list[str]) -> RunOptions:
    return replace(options, env=env, env_files=[])

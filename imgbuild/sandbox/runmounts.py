"""RUN: turn an instruction into a container run in the step's root filesystem.

The argv (shell form, exec form, heredocs), the environment, the user and the
extra ``--mount``s are worked out here; the container itself is
``imgbuild.sandbox.runtime``'s job. Nothing a mount brings in (cache dirs,
secrets, bind sources, tmpfs) ever reaches the layer: mounts are not part of
the overlay upperdir, and the sandbox removes the mount-point stubs it had to
create.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import field
from pathlib import Path

from imgbuild.dataclass import dataclass
from imgbuild.errors import BuildError, Interrupted, UsageError
from imgbuild.safeopen import resolve_in_root
from imgbuild.sandbox.overlay import mount_overlay
from imgbuild.sandbox.spec import Mount, PrivateFile

PIPES_DIR = "/dev/pipes"
MAX_SECRET_SIZE = 500 * 1024  # BuildKit's limit; secrets live in memory
LOCK_POLL_SECONDS = 0.1  # how often a wait for a locked cache mount looks at ``cancel``


@dataclass
class SecretSpec:
    """One ``--secret id=X,src=FILE`` or ``id=X,env=VAR``: never stored anywhere."""

    id: str
    src: Path | None = None
    env: str | None = None

    def read(self, limit: int) -> bytes:
        """The value, or its first ``limit + 1`` bytes if it is longer: the caller refuses
        those, and a source that never ends (``src=/dev/zero``) is read no further."""
        if self.src is not None:
            try:
                with open(self.src, "rb") as source:  # a pipe (src=<(...)) is fine: read, never seeked
                    return _read_at_most(source, limit + 1)
            except OSError as error:
                raise UsageError(f"--secret id={self.id}: cannot read {self.src}: {error.strerror}") from None
        value = os.environ.get(self.env or self.id)
        if value is None:
            raise UsageError(f"--secret id={self.id}: environment variable {self.env or self.id} is not set")
        return value.encode()


def _read_at_most(source, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = source.read(min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


@dataclass
class PreparedMounts:
    """The sandbox mounts of one RUN plus the env vars secrets with ``env=`` add."""

    mounts: list[Mount] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@contextmanager
def script_mount(name: str, script: str, scratch: Path) -> Iterator[Mount]:
    """A ``RUN <<EOF`` body with a ``#!`` line, as the executable /dev/pipes/NAME (BuildKit's place)."""
    directory = Path(tempfile.mkdtemp(dir=scratch, prefix="pipes-"))
    os.chmod(directory, 0o755)  # mkdtemp makes it 0700: a USER other than root must reach it
    try:
        path = directory / name
        path.write_text(script)
        os.chmod(path, 0o755)
        yield Mount("bind", PIPES_DIR, str(directory), readonly=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def cache_mount_dir(root: Path, mount_id: str) -> Path:
    """Cache mounts are keyed by their id (default: the target path)."""
    name = hashlib.sha256(mount_id.encode()).hexdigest()[:24]
    return root / "cache-mounts" / name


@contextmanager
def prepared_mounts(
    specs: list,
    *,
    store_root: Path,
    workdir: str,
    secrets: dict[str, SecretSpec],
    sources: dict,
    scratch: Path,
    cancel: threading.Event | None = None,
    ssh: dict[str, Path] | None = None,
) -> Iterator[PreparedMounts]:
    """Make the host side of every ``RUN --mount`` and clean it up afterwards.

    ``sources`` maps a bind mount's ``from`` (None for the build context) to
    the directory it reads from; the engine mounts stages and images there.
    ``cancel`` set while waiting for a ``sharing=locked`` cache stops the wait.
    """
    prepared = PreparedMounts()
    ssh_number = 0  # BuildKit's default targets: /run/buildkit/ssh_agent.0, .1, ...
    with ExitStack() as stack:
        for spec in specs:
            target = _absolute(spec.target, workdir) if spec.target else ""
            if spec.type == "cache":
                mount = stack.enter_context(_cache_mount(spec, target, store_root, cancel))
                prepared.mounts.append(mount)
            elif spec.type == "bind":
                prepared.mounts.append(stack.enter_context(_bind_mount(spec, target, sources, scratch)))
            elif spec.type == "secret":
                mount = stack.enter_context(_secret_mount(spec, target, secrets, prepared.env))
                if mount is not None:
                    prepared.mounts.append(mount)
            elif spec.type == "ssh":
                mount = _ssh_mount(spec, target, ssh or {}, prepared.env, ssh_number)
                ssh_number += 1
                if mount is not None:
                    prepared.mounts.append(mount)
            elif spec.type == "tmpfs":
                options = [f"size={spec.size}"] if spec.size else []
                prepared.mounts.append(Mount("tmpfs", target, options=options))
            else:
                raise BuildError(f"RUN --mount=type={spec.type} is not supported (use cache, bind, secret or tmpfs)")
        yield prepared


def _absolute(target: str, workdir: str) -> str:
    return target if target.startswith("/") else os.path.normpath(os.path.join(workdir or "/", target))


@contextmanager
def _cache_mount(
    spec, target: str, store_root: Path, cancel: threading.Event | None
) -> Iterator[Mount]:
    if not target:
        raise BuildError("RUN --mount=type=cache needs target=PATH")
    if getattr(spec, "from_", None):
        raise BuildError("RUN --mount=type=cache,from=... is not supported yet; seed the cache in a RUN instead")
    directory = cache_mount_dir(store_root, spec.id or target)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    if created:
        os.chmod(directory, spec.mode if spec.mode is not None else 0o755)
        os.chown(directory, spec.uid or 0, spec.gid or 0)
    lock_path = directory.with_suffix(".lock")
    sharing = spec.sharing or "shared"
    if sharing not in ("shared", "private", "locked"):
        raise BuildError(f"RUN --mount=type=cache: sharing must be shared, private or locked, not {sharing!r}")
    if sharing == "shared":
        yield Mount("bind", target, str(directory), readonly=bool(spec.readonly))
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if sharing == "locked":
            _wait_for_lock(fd, cancel)  # the other writer may be another build
            yield Mount("bind", target, str(directory), readonly=bool(spec.readonly))
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # private: a concurrent user has it; this run gets a fresh, empty cache
            private = Path(tempfile.mkdtemp(dir=directory.parent, prefix="private-"))
            try:
                yield Mount("bind", target, str(private), readonly=bool(spec.readonly))
            finally:
                shutil.rmtree(private, ignore_errors=True)
            return
        yield Mount("bind", target, str(directory), readonly=bool(spec.readonly))
    finally:
        os.close(fd)


def _wait_for_lock(fd: int, cancel: threading.Event | None) -> None:
    """flock(LOCK_EX), but give up when the build is cancelled.

    A blocking flock cannot be interrupted from another thread, and the lock
    may be held for a long time by another build: poll instead.
    """
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if cancel is not None and cancel.is_set():
                raise Interrupted(
                    "the build was interrupted while waiting for a locked cache mount"
                ) from None
            time.sleep(LOCK_POLL_SECONDS)


@contextmanager
def _bind_mount(spec, target: str, sources: dict, scratch: Path) -> Iterator[Mount]:
    """A bind mount of a stage, image or context path; with ``rw`` over a throwaway overlay.

    imgbuild never opens the source itself: a device node or FIFO from a
    stage is bound like anything else, and only the container opens it,
    under its device cgroup (as BuildKit, which binds a subpath of a
    writable snapshot). Copying it as root here would read a host device.
    """
    if not target:
        raise BuildError("RUN --mount=type=bind needs target=PATH")
    origin = getattr(spec, "from_", None)
    root = sources.get(origin)
    if root is None:
        raise BuildError(f"RUN --mount=type=bind: source {origin or 'context'} is not available")
    # runc resolves a relative source against its bundle, not our directory
    source = resolve_in_root(Path(os.path.abspath(root)), spec.source or "/")
    try:
        info = os.lstat(source)
    except (FileNotFoundError, NotADirectoryError):
        raise BuildError(
            f"RUN --mount=type=bind: {spec.source or '/'} not found in {origin or 'the build context'}"
        ) from None
    if spec.readonly:
        yield Mount("bind", target, str(source), readonly=True)
        return
    # rw: writes go to a throwaway overlay upperdir, never to the source. A
    # non-directory is bound from an overlay of its parent directory.
    is_dir = stat.S_ISDIR(info.st_mode)
    lower = source if is_dir else source.parent
    layer = Path(tempfile.mkdtemp(dir=scratch, prefix="bind-"))
    # The upperdir's mode and owner are those of the overlay's root (its lowerdir's).
    upper = layer / "upper"
    upper.mkdir()
    lower_info = os.stat(lower)
    os.chmod(upper, stat.S_IMODE(lower_info.st_mode))
    os.chown(upper, lower_info.st_uid, lower_info.st_gid)
    with mount_overlay([lower], upper, layer / "work", layer / "merged") as merged:
        yield Mount("bind", target, str(merged if is_dir else merged / source.name), readonly=False)


def _ssh_mount(spec, target: str, agents: dict[str, Path], env: dict[str, str], number: int) -> Mount | None:
    """``RUN --mount=type=ssh``: the ``--ssh`` agent socket, bound in, and
    SSH_AUTH_SOCK naming it. Without that ``--ssh``, skipped as BuildKit skips
    it, unless ``required``."""
    ssh_id = spec.id or "default"
    agent = agents.get(ssh_id)
    if agent is None:
        if spec.required:
            hint = "--ssh default" if ssh_id == "default" else f"--ssh {ssh_id}=SOCKET"
            raise BuildError(f"RUN --mount=type=ssh,id={ssh_id} is required but no agent was given: add {hint}")
        return None
    # The socket is bound as it is on the host (owner and mode too): connecting
    # needs write access to it, so the mount is writable.
    target = target or f"/run/buildkit/ssh_agent.{number}"
    env["SSH_AUTH_SOCK"] = target
    return Mount("bind", target, str(agent), readonly=False)


@contextmanager
def _secret_mount(spec, target: str, secrets: dict[str, SecretSpec], env: dict[str, str]) -> Iterator[Mount | None]:
    secret_id = spec.id or (os.path.basename(spec.target) if spec.target else "")
    if not secret_id:
        raise BuildError("RUN --mount=type=secret needs id=NAME")
    secret = secrets.get(secret_id)
    if secret is None:
        if spec.required:
            raise BuildError(f"secret {secret_id} is required but was not given: add --secret id={secret_id},src=FILE")
        yield None
        return
    value = secret.read(MAX_SECRET_SIZE)
    if len(value) > MAX_SECRET_SIZE:
        raise BuildError(
            f"secret {secret_id} is larger than {MAX_SECRET_SIZE // 1024} KiB; secrets are limited to "
            f"{MAX_SECRET_SIZE // 1024} KiB, as in BuildKit"
        )
    if spec.env:
        env[spec.env] = value.decode("utf-8", "replace")
        if not spec.target:
            yield None
            return
    # The file exists only in the container's private bundle, a tmpfs the
    # sandbox mounts where no other process sees it (see sandbox.py).
    private = PrivateFile(
        value,
        mode=spec.mode if spec.mode is not None else 0o400,
        uid=spec.uid or 0,
        gid=spec.gid or 0,
    )
    yield Mount("bind", target or f"/run/secrets/{secret_id}", readonly=True, private=private)

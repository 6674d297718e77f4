"""Run one process in a container under an OCI runtime (runc by default, or crun).

imgbuild writes the bundle's ``config.json`` itself (OCI runtime spec 1.0.2) and
calls ``RUNTIME run --bundle DIR ID``. The container gets what a Docker/BuildKit
RUN step gets:

- its own mount, PID, IPC and UTS namespaces; the host network, or with
  ``network="none"`` a network namespace of its own holding only ``lo``;
- Docker's default capability set (bounding, effective, permitted; nothing
  inheritable or ambient), Docker's default seccomp profile
  (``imgbuild.sandbox.seccomp``), setuid programs working (no
  ``noNewPrivileges``, as in Docker), ``RLIMIT_NOFILE`` 1048576 (or our own
  hard limit if that is lower);
- the user's uid, gid and supplementary groups, the primary group among them;
  the env, with Docker's default PATH if it has none; the working directory,
  created (owned by the user, and kept in the layer) if missing;
- ``/proc``; a tmpfs ``/dev`` in which the runtime creates null, zero, full,
  random, urandom and tty, plus ``/dev/pts``, ``/dev/shm``, ``/dev/mqueue``;
  a read-only ``/sys``; the paths Docker masks or makes read-only;
- ``/etc/hosts``, ``/etc/resolv.conf`` and ``/etc/hostname`` as read-only bind
  mounts of files written into the bundle, so they never reach the layer.

The bundle is private. ``config.json`` holds the environment, with the values
of ``--secret env=``, and secret files are bound from the bundle too; none of
it may reach a disk. The runtime is started by ``privatebundle.py``, which
enters a mount namespace of its own, mounts a tmpfs on the bundle directory
there, writes the bundle into it and execs the runtime. On the host the
bundle directory stays empty; the tmpfs goes away with the runtime, also when
imgbuild is killed. That program also gives the runtime the umask 022: the
mount points it creates in the root filesystem do not depend on ours.

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

import base64
import contextlib
import json
import os
import resource
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
from dataclasses import dataclass, field
from pathlib import Path

from imgbuild.errors import Interrupted, SandboxError
from imgbuild.safeopen import resolve_in_root
from imgbuild.sandbox.overlay import finish_despite_interrupts
from imgbuild.sandbox.seccomp import default_profile
from imgbuild.sandbox.users import ROOT, ResolvedUser

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_HOSTNAME = "imgbuild"

# Docker's default capabilities: bounding set 0x00000000a80425fb.
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
MASKED_PATHS = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
NOFILE_LIMIT = 1048576

_POLL_SECONDS = 0.2  # how often a waiting run looks at ``cancel``
_KILL_GRACE_SECONDS = 10  # after this the runtime process itself is killed
_CHUNK = 65536
_PAGE = 4096
_LAUNCHER = Path(__file__).with_name("privatebundle.py")


@dataclass
class PrivateFile:
    """A file that exists only in the container's private bundle (a secret): never on disk."""

    data: bytes
    mode: int = 0o400
    uid: int = 0
    gid: int = 0


@dataclass
class Mount:
    """An extra mount for the container: a bind mount of a host path (or of a
    private file), or a tmpfs."""

    type: str  # "bind" | "tmpfs"
    destination: str  # absolute path in the container
    source: str = ""  # host path, for "bind" without ``private``
    readonly: bool = False
    options: list[str] = field(default_factory=list)  # e.g. ["size=64m"], ["mode=0700"]
    private: PrivateFile | None = None  # for "bind": bind this file, made in the bundle


@dataclass
class RunSpec:
    """What to run and how. ``env`` entries are ``KEY=value``."""

    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    user: ResolvedUser = ROOT
    network: str = "host"  # "host" | "none"
    hostname: str = DEFAULT_HOSTNAME
    mounts: list[Mount] = field(default_factory=list)
    hosts: str | None = None  # /etc/hosts content; None: localhost lines and the hostname
    resolv_conf: str | None = None  # /etc/resolv.conf content; None: derived from the host's


def run_container(
    rootfs: Path,
    spec: RunSpec,
    *,
    runtime: str = "runc",
    workdir: Path,
    on_output: Callable[[bytes], None] | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Run ``spec`` in a container on ``rootfs`` and return its exit status.

    A process killed by signal N gives 128+N, as shells report it. The bundle
    is made in a fresh directory under ``workdir`` and removed afterwards.

    With ``on_output`` the process's stdout and stderr are merged and passed to
    it chunk by chunk as they come. Each stream keeps its order, but runc
    copies the two through separate pipes, so how they interleave can vary (as
    in BuildKit). Without ``on_output`` they go to our own stdout and stderr
    (``imgbuild run``). Stdin is /dev/null.

    Setting ``cancel`` (from another thread: signals reach only the main one)
    kills the container and raises ``Interrupted``; so does any exception
    raised in this thread while the container runs (KeyboardInterrupt, or what
    a SIGTERM handler raises), which then propagates.

    Raises SandboxError when the runtime itself fails (missing, refuses the
    host, cannot start the process); the process's own failure is only an exit
    status.
    """
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
        files = _BundleFiles()
        config = _make_config(rootfs, spec, bundle, files)
        files.add("config.json", json.dumps(config, indent=2).encode())
        _make_cwd(rootfs, spec.cwd, spec.user)
        stubs = _MountStubs.record(rootfs, _stub_candidates(config["mounts"]))
        try:
            status = _run(runtime, container_id, run_dir, files, on_output, cancel)
        except BaseException:
            finish_despite_interrupts(
                lambda: _delete_container(runtime, container_id, report_errors=False)
            )
            raise
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


# --- config.json -------------------------------------------------------------------


@dataclass
class _BundleFiles:
    """The files of the private bundle, written there by ``privatebundle.py``."""

    entries: list[dict] = field(default_factory=list)

    def add(self, path: str, data: bytes, mode: int = 0o600, uid: int = 0, gid: int = 0) -> str:
        encoded = base64.b64encode(data).decode("ascii")
        self.entries.append({"path": path, "data": encoded, "mode": mode, "uid": uid, "gid": gid})
        return path

    def size(self) -> int:
        """Bytes of tmpfs they need, with a page per file and room for the directories."""
        pages = sum(len(entry["data"]) * 3 // 4 // _PAGE + 1 for entry in self.entries)
        return (pages + 16) * _PAGE

    def payload(self) -> bytes:
        return json.dumps({"files": self.entries}).encode()


def _make_config(rootfs: Path, spec: RunSpec, bundle: Path, files: _BundleFiles) -> dict:
    namespaces = [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")]
    if spec.network == "none":
        namespaces.append({"type": "network"})
    nofile = _nofile_limit()
    return {
        "ociVersion": "1.0.2",
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": spec.hostname,
        "process": {
            "terminal": False,
            "args": list(spec.args),
            "env": _with_default_path(spec.env),
            "cwd": spec.cwd,
            "user": {
                "uid": spec.user.uid,
                "gid": spec.user.gid,
                "additionalGids": _additional_gids(spec.user),
            },
            "capabilities": {
                "bounding": DEFAULT_CAPABILITIES,
                "effective": DEFAULT_CAPABILITIES,
                "permitted": DEFAULT_CAPABILITIES,
                "inheritable": [],
                "ambient": [],
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            # Off, as in Docker and BuildKit: a setuid program (sudo, su) run by
            # a non-root USER gains its owner's rights, within the container's
            # capabilities and seccomp filter, as root in a RUN has them anyway.
            "noNewPrivileges": False,
        },
        "mounts": _system_mounts()
        + _etc_mounts(spec, bundle, files)
        + _extra_mounts(spec.mounts, bundle, files),
        "linux": {
            "namespaces": namespaces,
            # Deny all devices; the runtime adds its defaults (null, zero, full,
            # random, urandom, tty, pts) to this rule and creates those nodes.
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": default_profile(DEFAULT_CAPABILITIES),
        },
    }


def _additional_gids(user: ResolvedUser) -> list[int]:
    # The primary group is also a supplementary one, as Docker, BuildKit and
    # containerd set it (CVE-2022-36109): dropping the primary group must not
    # get around permissions that deny that group.
    if user.gid in user.additional_gids:
        return list(user.additional_gids)
    return [user.gid, *user.additional_gids]


def _nofile_limit() -> int:
    """Docker's 1048576 open files, or our own hard limit if that is lower.

    Raising a hard limit needs CAP_SYS_RESOURCE, which a build host (itself a
    container, say) may not grant; the runtime would then fail to start.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return NOFILE_LIMIT
    return min(NOFILE_LIMIT, hard)


def _with_default_path(env: list[str]) -> list[str]:
    # BuildKit adds Docker's default PATH when the image has none; without it
    # the runtime could not find `sh` for a shell-form RUN.
    if any(entry.startswith("PATH=") for entry in env):
        return list(env)
    return [f"PATH={DEFAULT_PATH}", *env]


def _system_mounts() -> list[dict]:
    nosuid_noexec_nodev = ["nosuid", "noexec", "nodev"]
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": nosuid_noexec_nodev},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": [*nosuid_noexec_nodev, "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": nosuid_noexec_nodev,
        },
        # With the host network runc cannot mount a fresh sysfs and falls back
        # to a read-only recursive bind of the host's /sys.
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": [*nosuid_noexec_nodev, "ro"],
        },
    ]


def _etc_mounts(spec: RunSpec, bundle: Path, files: _BundleFiles) -> list[dict]:
    hosts = spec.hosts if spec.hosts is not None else _default_hosts(spec.hostname)
    resolv_conf = spec.resolv_conf
    if resolv_conf is None:
        resolv_conf = _host_resolv_conf(keep_loopback=spec.network == "host")
    contents = {"hosts": hosts, "resolv.conf": resolv_conf, "hostname": spec.hostname + "\n"}
    mounts = []
    for name, content in contents.items():
        path = files.add(f"etc/{name}", content.encode(), 0o644)
        mounts.append(_read_only_bind(str(bundle / path), f"/etc/{name}"))
    return mounts


def _read_only_bind(source: str, destination: str) -> dict:
    return {
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["nosuid", "noexec", "nodev", "rbind", "ro"],
    }


def _default_hosts(hostname: str) -> str:
    return f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def _host_resolv_conf(*, keep_loopback: bool) -> str:
    """The host's resolv.conf. A loopback nameserver (systemd-resolved's
    127.0.0.53, a local dnsmasq) works only in the host's network namespace, so
    it is kept with the host network and dropped otherwise."""
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""
    if keep_loopback:
        return text
    lines = [line for line in text.splitlines() if not _is_loopback_nameserver(line)]
    return "\n".join(lines) + "\n"


def _is_loopback_nameserver(line: str) -> bool:
    words = line.split()
    if len(words) < 2 or words[0] != "nameserver":
        return False
    return words[1].startswith("127.") or words[1] == "::1"


def _extra_mounts(mounts: list[Mount], bundle: Path, files: _BundleFiles) -> list[dict]:
    result = []
    for index, mount in enumerate(mounts):
        access = "ro" if mount.readonly else "rw"
        if mount.type == "bind" and mount.private is not None:
            private = mount.private
            path = files.add(f"files/{index}", private.data, private.mode, private.uid, private.gid)
            source, options = str(bundle / path), ["rbind", access, *mount.options]
        elif mount.type == "bind":
            source, options = mount.source, ["rbind", access, *mount.options]
        else:
            source, options = "tmpfs", ["nosuid", "nodev", access, *mount.options]
        entry = {"destination": mount.destination, "type": mount.type, "source": source}
        result.append({**entry, "options": options})
    return result


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


def _run(
    runtime: str,
    container_id: str,
    run_dir: Path,
    files: _BundleFiles,
    on_output: Callable[[bytes], None] | None,
    cancel: threading.Event | None,
) -> int:
    log = run_dir / "runtime.log"
    launch_error = run_dir / "launch-error"
    bundle = run_dir / "bundle"
    command = [runtime, "--log", _log_destination(runtime, log), "--log-format", "json"]
    command += ["run", "--bundle", str(bundle), container_id]
    launcher = [sys.executable, "-I", "-S", str(_LAUNCHER), str(bundle), str(files.size())]
    output = subprocess.PIPE if on_output is not None else None
    error_output = subprocess.STDOUT if on_output is not None else None
    process = subprocess.Popen(
        [*launcher, str(launch_error), "--", *command],
        stdin=subprocess.PIPE,
        stdout=output,
        stderr=error_output,
        start_new_session=True,
    )
    try:
        _send_bundle(process, files)
        returncode = _wait(process, on_output, cancel)
    except BaseException:
        finish_despite_interrupts(lambda: _kill_container(runtime, container_id, process))
        raise
    finally:
        if process.stdout is not None:
            process.stdout.close()
    if launch_error.exists():
        with open(launch_error, "rb") as handle:
            reason = handle.read(_CHUNK).decode(errors="replace").strip()
        raise SandboxError(f"cannot start {runtime} with a private bundle: {reason}")
    runtime_errors = _runtime_errors(log)
    if returncode != 0 and runtime_errors:
        raise SandboxError(f"{runtime} could not run the container: {'; '.join(runtime_errors)}")
    return returncode if returncode >= 0 else 128 - returncode


def _send_bundle(process: subprocess.Popen, files: _BundleFiles) -> None:
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

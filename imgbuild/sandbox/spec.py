"""The OCI runtime spec of a step: what its container gets, written as ``config.json``.

imgbuild writes the bundle's ``config.json`` itself (OCI runtime spec 1.0.2).
The container gets what a Docker/BuildKit RUN step gets:

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
"""

from __future__ import annotations

import resource
from dataclasses import field
from pathlib import Path

from imgbuild.dataclass import dataclass
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
# Linux's capabilities by number (linux/capability.h, up to 5.9).
CAPABILITY_NAMES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]  # fmt: skip
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
NOFILE_LIMIT = 1048576

_PAGE = 4096


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
    extra_hosts: list[tuple[str, str]] = field(default_factory=list)  # (name, address): --add-host
    resolv_conf: str | None = None  # /etc/resolv.conf content; None: derived from the host's
    terminal: bool = False  # a pseudo-terminal for stdin/stdout/stderr (imgbuild run -t)
    privileged: bool = False  # `imgbuild run --privileged`; see _make_privileged


# --- config.json -------------------------------------------------------------------


@dataclass
class BundleFile:
    """A file written into the bundle, for the container to see."""

    path: str  # relative to the bundle
    data: bytes
    mode: int
    uid: int
    gid: int


@dataclass
class BundleFiles:
    """The files of the private bundle, written there by ``privatebundle.py``."""

    entries: list[BundleFile] = field(default_factory=list)

    def add(self, path: str, data: bytes, mode: int = 0o600, uid: int = 0, gid: int = 0) -> str:
        self.entries.append(BundleFile(path, data, mode, uid, gid))
        return path

    def size(self) -> int:
        """Bytes of tmpfs they need, with a page per file and room for the directories."""
        pages = sum(len(entry.data) // _PAGE + 1 for entry in self.entries)
        return (pages + 16) * _PAGE

    def payload(self) -> bytes:
        """What the launcher reads on stdin: per file a line ``MODE UID GID PATH_BYTES
        DATA_BYTES``, then the path and the data. A format it parses without
        importing a module (json and base64 cost it ~7 ms a step)."""
        parts = []
        for entry in self.entries:
            path = entry.path.encode()
            header = b"%d %d %d %d %d\n" % (entry.mode, entry.uid, entry.gid, len(path), len(entry.data))
            parts += [header, path, entry.data]
        return b"".join(parts)


def make_config(rootfs: Path, spec: RunSpec, bundle: Path, files: BundleFiles) -> dict:
    namespaces = [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")]
    if spec.network == "none":
        namespaces.append({"type": "network"})
    nofile = _nofile_limit()
    capabilities = own_capabilities() if spec.privileged else DEFAULT_CAPABILITIES
    config = {
        "ociVersion": "1.0.2",
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": spec.hostname,
        "process": {
            "terminal": spec.terminal,
            "args": list(spec.args),
            "env": _with_default_path(spec.env),
            "cwd": spec.cwd,
            "user": {
                "uid": spec.user.uid,
                "gid": spec.user.gid,
                "additionalGids": _additional_gids(spec.user),
            },
            "capabilities": {
                "bounding": capabilities,
                "effective": capabilities,
                "permitted": capabilities,
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
    if spec.privileged:
        _make_privileged(config)
    return config


def own_capabilities() -> list[str]:
    """Every capability in our own bounding set: all that --privileged can
    pass on (a host that is itself a container may lack some; asking the
    runtime for one we lack fails the start)."""
    try:
        status = Path("/proc/self/status").read_text()
        mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("CapBnd:"))
    except (OSError, StopIteration, ValueError):
        return list(DEFAULT_CAPABILITIES)
    return [name for number, name in enumerate(CAPABILITY_NAMES) if mask >> number & 1]


def _make_privileged(config: dict) -> None:
    """What ``docker run --privileged`` changes, for a container that runs
    imgbuild (overlay mounts, runc) itself: every capability we have (set above), no
    seccomp filter, no masked or read-only /proc and /sys paths, every device
    allowed by the device cgroup (the nested runtime makes /dev/null and the
    rest with mknod), /sys writable and the host's cgroup hierarchies at
    /sys/fs/cgroup, writable, for the nested runtime's cgroups.
    """
    linux = config["linux"]
    for key in ("seccomp", "maskedPaths", "readonlyPaths"):
        linux.pop(key)
    linux["resources"] = {"devices": [{"allow": True, "access": "rwm"}]}
    for mount in config["mounts"]:
        if mount["destination"] == "/sys":
            mount["options"] = [option for option in mount["options"] if option != "ro"]
    cgroups = {
        "destination": "/sys/fs/cgroup",
        "type": "bind",
        "source": "/sys/fs/cgroup",
        "options": ["rbind", "rw", "nosuid", "noexec", "nodev"],
    }
    position = next(i for i, mount in enumerate(config["mounts"]) if mount["destination"] == "/sys") + 1
    config["mounts"].insert(position, cgroups)


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


def _etc_mounts(spec: RunSpec, bundle: Path, files: BundleFiles) -> list[dict]:
    hosts = spec.hosts if spec.hosts is not None else _default_hosts(spec.hostname)
    hosts += "".join(f"{address}\t{name}\n" for name, address in spec.extra_hosts)
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


def _extra_mounts(mounts: list[Mount], bundle: Path, files: BundleFiles) -> list[dict]:
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



"""Comparing an image imgbuild built with the one buildah 1.28 built from the same Dockerfile.

Shared by the compat tests (testdata/Dockerfiles on our busybox image) and the
interop tests (base images made by other tools). Both images are read through
the same real consumers: ``skopeo inspect`` for the image config, ``umoci
unpack`` for the flattened root filesystem. buildah runs with vfs storage in a
temp root of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

# The image config fields compared (inside "config"), plus architecture and os.
CONFIG_FIELDS = (
    "Env", "Entrypoint", "Cmd", "WorkingDir", "User", "ExposedPorts", "Volumes",
    "Labels", "StopSignal", "Healthcheck", "OnBuild", "Shell",
)  # fmt: skip

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
EMPTY_EXECUTABLE = {"type": "file", "mode": "0755", "size": 0, "sha256": EMPTY_SHA256}
EMPTY_DIR = {"type": "dir", "mode": "0755"}

# buildah 1.28 leaves the mount points of every RUN in the image: the empty
# files it bind-mounts /etc/hosts, /etc/hostname and /etc/resolv.conf over, and
# /run. BuildKit and imgbuild leave none of them (a known buildah difference).
BUILDAH_RUN_LEFTOVERS = {
    "etc/hosts": EMPTY_EXECUTABLE,
    "etc/hostname": EMPTY_EXECUTABLE,
    "etc/resolv.conf": EMPTY_EXECUTABLE,
    "run": EMPTY_DIR,
}


# --- running tools ------------------------------------------------------------------------


def run_tool(
    *argv: str, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run a command, text output captured; raises with its output if it fails."""
    completed = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if completed.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited with {completed.returncode}\n"
            f"stdout:\n{completed.stdout[-3000:]}\nstderr:\n{completed.stderr[-3000:]}"
        )
    return completed


# --- file trees ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One path of a flattened root filesystem, as compared here (never mtimes)."""

    type: str  # file, dir, symlink, char, block, fifo, socket
    mode: str  # permission bits with setuid/setgid/sticky, 4 octal digits
    uid: int = 0
    gid: int = 0
    size: int | None = None  # files only
    sha256: str | None = None  # files only
    target: str | None = None  # symlinks only
    xattrs: str | None = None  # "name=hex value;..." sorted, when the path has any

    @classmethod
    def from_json(cls, data: dict) -> Node:
        """A hand-written node: ``{"type": "file", "mode": "0644", "content": "text"}``.

        A file gives its ``content`` (text) or its ``size`` and ``sha256``.
        """
        data = dict(data)
        content = data.pop("content", None)
        if content is not None:
            raw = content.encode()
            data["size"] = len(raw)
            data["sha256"] = hashlib.sha256(raw).hexdigest()
        return cls(**data)

    def describe(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(fields)


_KINDS = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
    stat.S_IFBLK: "block", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
}  # fmt: skip


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_tree(root: Path) -> dict[str, Node]:
    """Every path under ``root`` (relative, no leading slash) with its Node."""
    tree: dict[str, Node] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            kind = _KINDS[stat.S_IFMT(info.st_mode)]
            tree[os.path.relpath(path, root)] = Node(
                type=kind,
                mode=f"{stat.S_IMODE(info.st_mode):04o}",
                uid=info.st_uid,
                gid=info.st_gid,
                size=info.st_size if kind == "file" else None,
                sha256=_file_digest(path) if kind == "file" else None,
                target=os.readlink(path) if kind == "symlink" else None,
                xattrs=_xattrs(path),
            )
    return tree


def _xattrs(path: str) -> str | None:
    names = sorted(os.listxattr(path, follow_symlinks=False))
    values = [f"{n}={os.getxattr(path, n, follow_symlinks=False).hex()}" for n in names]
    return ";".join(values) or None


def unpack_tree(layout: Path, ref: str, work: Path) -> dict[str, Node]:
    """``umoci unpack`` the image ``layout:ref`` (an OCI layout) and read its rootfs."""
    bundle = work / f"bundle-{ref.replace('/', '_').replace(':', '_')}"
    run_tool("umoci", "unpack", "--image", f"{layout}:{ref}", str(bundle))
    try:
        return read_tree(bundle / "rootfs")
    finally:
        shutil.rmtree(bundle)


# --- image configs -------------------------------------------------------------------------


def inspect_config(reference: str, *options: str) -> dict:
    """The raw image config blob of ``reference`` (a skopeo transport:reference)."""
    argv = ("skopeo", "inspect", *options, "--raw", "--config", reference)
    return json.loads(run_tool(*argv).stdout)


def _is_empty(value) -> bool:
    return value is None or value == [] or value == {} or value == ""


def compared_config(config: dict) -> dict:
    """The fields compared, with empty values (null, [], {}, "") dropped.

    buildah writes ``"Entrypoint": []`` and ``"Volumes": {}`` where BuildKit and
    imgbuild leave the field out; a runtime treats both the same. Labels
    buildah adds about itself (io.buildah.*) are not part of the Dockerfile.
    """
    inner = config.get("config") or {}
    result = {name: inner.get(name) for name in CONFIG_FIELDS}
    labels = {k: v for k, v in (result["Labels"] or {}).items() if not k.startswith("io.buildah.")}
    result["Labels"] = labels
    result["architecture"] = config.get("architecture")
    result["os"] = config.get("os")
    return {k: v for k, v in result.items() if not _is_empty(v)}


# --- comparing ---------------------------------------------------------------------------------


@dataclass
class Built:
    """What the comparison looks at: compared config fields and the file tree."""

    config: dict
    tree: dict  # path -> Node


def drop_known_leftovers(tree: dict, base_has: set[str] = frozenset()) -> None:
    """Remove buildah's RUN mount points from ``tree`` where they are exactly the empty stubs.

    ``base_has``: those of BUILDAH_RUN_LEFTOVERS the base image holds itself
    (an image buildah made has the stubs); they stay.
    """
    for path, node in BUILDAH_RUN_LEFTOVERS.items():
        nested = any(other.startswith(path + "/") for other in tree)
        if tree.get(path) == Node.from_json(node) and not nested and path not in base_has:
            del tree[path]


def differences(expected: Built, actual: Built) -> list[str]:
    """One line per config field and per path where ``actual`` (imgbuild's) differs."""
    lines = []
    for field in sorted(set(expected.config) | set(actual.config)):
        want, got = expected.config.get(field), actual.config.get(field)
        if want != got:
            lines.append(f"config {field}: expected {json.dumps(want)}, imgbuild {json.dumps(got)}")
    for path in sorted(set(expected.tree) | set(actual.tree)):
        want, got = expected.tree.get(path), actual.tree.get(path)
        if want != got:
            want_text = want.describe() if want else "absent"
            got_text = got.describe() if got else "absent"
            lines.append(f"/{path}: expected {want_text}, imgbuild {got_text}")
    return lines


def report(name: str, lines: list[str], limit: int = 40) -> str:
    shown = lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])
    return f"{name}: imgbuild's image differs from the expected one:\n  " + "\n  ".join(shown)


# --- buildah -----------------------------------------------------------------------------------


@dataclass
class Buildah:
    """buildah 1.28 with storage under a temp dir of its own.

    ``TMPDIR`` points into that dir too, so the bundles buildah writes for runc
    stay under it. The vfs driver copies every layer in full; the overlay
    driver (native overlayfs) is much faster on big images.
    """

    work: Path
    driver: str = "vfs"

    @property
    def root(self) -> Path:
        return self.work / "root"

    @property
    def runroot(self) -> Path:
        return self.work / "runroot"

    @property
    def storage(self) -> str:
        """The containers-storage: reference prefix for skopeo."""
        return f"containers-storage:[{self.driver}@{self.root}+{self.runroot}]"

    def env(self) -> dict:
        env = dict(os.environ)
        env["TMPDIR"] = str(self.work / "tmp")
        return env

    def run(
        self, *args: str, check: bool = True, timeout: int = 300
    ) -> subprocess.CompletedProcess:
        argv = [
            "buildah", "--root", str(self.root), "--runroot", str(self.runroot),
            "--storage-driver", self.driver, *args,
        ]  # fmt: skip
        if check:
            return run_tool(*argv, env=self.env(), timeout=timeout)
        return subprocess.run(argv, capture_output=True, text=True, env=self.env(), timeout=timeout)

    def build(
        self, dockerfile: Path, context: Path, tag: str, *options: str
    ) -> subprocess.CompletedProcess:
        """``buildah bud`` with runc and ``options``; returns the completed process (not checked)."""
        args = [
            "bud", "--format", "docker", "--isolation", "oci", "--runtime", "runc",
            *options, "-f", str(dockerfile), "-t", tag, str(context),
        ]  # fmt: skip
        return self.run(*args, check=False, timeout=600)

    def config(self, tag: str) -> dict:
        # Read from containers-storage, not from an OCI copy: converting to an
        # OCI config drops Healthcheck, OnBuild and Shell.
        return inspect_config(f"{self.storage}localhost/{tag}")

    def paths_in_image(self, image: str, paths) -> set[str]:
        """Those of ``paths`` (relative) that exist in the root filesystem of ``image``."""
        with self.mounted(image) as root:
            return {path for path in paths if os.path.lexists(root / path)}

    def tree(self, image: str) -> dict[str, Node]:
        """The root filesystem of ``image`` as buildah's storage holds it."""
        with self.mounted(image) as root:
            return read_tree(root)

    @contextmanager
    def mounted(self, image: str):
        """A working container of ``image``, mounted; removed afterwards."""
        container = self.run("from", "--quiet", "--pull=never", image).stdout.strip()
        try:
            yield Path(self.run("mount", container).stdout.strip())
        finally:
            self.run("rm", container)

    def push_oci(self, tag: str, layout: Path, ref: str) -> None:
        self.run("push", f"localhost/{tag}", f"oci:{layout}:{ref}")


def make_buildah(work: Path, driver: str = "vfs") -> Buildah:
    if shutil.which("buildah") is None:
        raise AssertionError("buildah is not installed; run scripts/install-deps.sh --test")
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    return Buildah(work, driver)


def remove_buildah(tool: Buildah) -> list[str]:
    """Remove buildah's storage; returns what it wrongly left behind (empty: nothing).

    Checked first: no working containers, no runc containers, no mounts under its dir.
    """
    problems = _buildah_leftovers(tool)
    tool.run("rm", "--all", check=False)
    tool.run("rmi", "--all", "--force", check=False)
    for point in mounts_under(tool.work):  # buildah should unmount all it mounted; if not, by path
        subprocess.run(["umount", point], capture_output=True)
    shutil.rmtree(tool.work, ignore_errors=True)
    return problems


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo), deepest first."""
    prefix = str(Path(path).resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def runc_containers_under(path: Path) -> list[str]:
    """runc containers (default runc root) whose bundle lies below ``path``.

    `runc list` fails now and then when another process's container goes away
    while it reads the state directory (other builds share this host): it is
    asked again, and a listing that keeps failing fails the test rather than
    reading as "no container left"."""
    for _ in range(10):
        listing = subprocess.run(["runc", "list", "--format", "json"], capture_output=True, text=True)
        if listing.returncode == 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"runc list failed: {listing.stderr.strip()}")
    prefix = str(Path(path).resolve()) + "/"
    return [c["id"] for c in json.loads(listing.stdout or "null") or [] if c.get("bundle", "").startswith(prefix)]


def _buildah_leftovers(tool: Buildah) -> list[str]:
    problems = []
    containers = tool.run("containers", "--quiet", check=False).stdout.split()
    if containers:
        problems.append(f"working containers {containers}")
    running = runc_containers_under(tool.work)
    if running:
        problems.append(f"runc containers {running}")
    mounted = mounts_under(tool.work)
    if mounted:
        problems.append(f"mounts {mounted}")
    return problems

"""Compatibility tests: build testdata/Dockerfiles/ with imgbuild and with buildah.

Like dulwich's compat tests against real git, these run the real other tool
(Debian's buildah 1.28, with vfs storage in a temp root) and compare what comes
out. Both images are read through the same real consumers: ``skopeo inspect``
for the image config, ``umoci unpack`` for the flattened root filesystem.

Helpers are exposed as fixtures because test modules cannot import a conftest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from imagetools import make_busybox_image

from imgbuild.builder.engine import BuildResult, build
from imgbuild.builder.options import BuildOptions
from imgbuild.builder.progress import Progress
from imgbuild.store import Store

PROJECT = Path(__file__).resolve().parents[2]
CASES_DIR = PROJECT / "testdata" / "Dockerfiles"
GOOD_CASES = sorted(p.parent.name for p in CASES_DIR.glob("*/outline.json"))
BAD_CASES = sorted(p.parent.name for p in CASES_DIR.glob("*/error.txt"))

# The image config fields compared (inside "config"), plus architecture and os.
CONFIG_FIELDS = (
    "Env", "Entrypoint", "Cmd", "WorkingDir", "User", "ExposedPorts", "Volumes",
    "Labels", "StopSignal", "Healthcheck", "OnBuild", "Shell",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts, runc, buildah)")


# --- the cases -------------------------------------------------------------------------


@dataclass
class Case:
    """One testdata/Dockerfiles case and how to build it."""

    name: str
    directory: Path
    build_args: dict[str, str]
    target: str | None
    platform: str | None
    compat: dict  # compat.json, {} when buildah and imgbuild must agree on everything

    @property
    def dockerfile(self) -> Path:
        return self.directory / "Dockerfile"

    def context(self, empty: Path) -> Path:
        """The case's context/ directory, or ``empty`` when it has none."""
        own = self.directory / "context"
        return own if own.is_dir() else empty


def load_case(name: str, cases_dir: Path = CASES_DIR) -> Case:
    """The case ``cases_dir/name`` with its options.json and compat.json (both optional)."""
    directory = cases_dir / name
    options_file = directory / "options.json"
    options = json.loads(options_file.read_text()) if options_file.exists() else {}
    compat_file = directory / "compat.json"
    compat = json.loads(compat_file.read_text()) if compat_file.exists() else {}
    return Case(
        name,
        directory,
        options.get("build_args", {}),
        options.get("target"),
        options.get("platform"),
        compat,
    )


@pytest.fixture(scope="session")
def empty_context(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("empty-context")


# --- file trees ----------------------------------------------------------------------


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
            )
    return tree


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


def unpack_tree(layout: Path, ref: str, work: Path) -> dict[str, Node]:
    """``umoci unpack`` the image ``layout:ref`` (an OCI layout) and read its rootfs."""
    bundle = work / f"bundle-{ref.replace('/', '_').replace(':', '_')}"
    run_tool("umoci", "unpack", "--image", f"{layout}:{ref}", str(bundle))
    try:
        return read_tree(bundle / "rootfs")
    finally:
        shutil.rmtree(bundle)


def inspect_config(reference: str) -> dict:
    """The raw image config blob of ``reference`` (a skopeo transport:reference)."""
    return json.loads(run_tool("skopeo", "inspect", "--raw", "--config", reference).stdout)


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


# --- imgbuild ----------------------------------------------------------------------------


@dataclass
class ImgbuildStore:
    """The session's imgbuild store: busybox tagged ``busybox`` and ``busybox:latest``."""

    root: Path
    empty_context: Path

    @property
    def store(self) -> Store:
        return Store(self.root)

    @property
    def layout(self) -> Path:
        return self.root / "oci"

    def build(self, case: Case, tag: str) -> BuildResult:
        options = BuildOptions(
            context=case.context(self.empty_context),
            dockerfile=case.dockerfile,
            tags=[tag],
            build_args=dict(case.build_args),
            target=case.target,
            platform=case.platform,
            progress="quiet",
        )
        return build(self.store, options, progress=Progress())


@pytest.fixture(scope="session")
def imgbuild_store(tmp_path_factory, empty_context) -> ImgbuildStore:
    root = tmp_path_factory.mktemp("imgbuild") / "store"
    store = Store(root)
    image = make_busybox_image(store, "busybox:latest")
    store.tag("busybox", image.manifest_descriptor)
    return ImgbuildStore(root, empty_context)


# --- buildah -----------------------------------------------------------------------------


@dataclass
class Buildah:
    """buildah 1.28 with vfs storage under a temp dir of its own.

    ``TMPDIR`` points into that dir too, so the bundles buildah writes for runc
    stay under it; ``--force-rm`` removes the working containers even when a
    build fails.
    """

    work: Path

    @property
    def root(self) -> Path:
        return self.work / "root"

    @property
    def runroot(self) -> Path:
        return self.work / "runroot"

    @property
    def storage(self) -> str:
        """The containers-storage: reference prefix for skopeo."""
        return f"containers-storage:[vfs@{self.root}+{self.runroot}]"

    def env(self) -> dict:
        env = dict(os.environ)
        env["TMPDIR"] = str(self.work / "tmp")
        return env

    def run(
        self, *args: str, check: bool = True, timeout: int = 300
    ) -> subprocess.CompletedProcess:
        argv = [
            "buildah", "--root", str(self.root), "--runroot", str(self.runroot),
            "--storage-driver", "vfs", *args,
        ]  # fmt: skip
        if check:
            return run_tool(*argv, env=self.env(), timeout=timeout)
        return subprocess.run(argv, capture_output=True, text=True, env=self.env(), timeout=timeout)

    def bud(self, case: Case, tag: str, context: Path) -> subprocess.CompletedProcess:
        """``buildah bud`` the case; returns the completed process (not checked)."""
        args = [
            "bud", "--format", "docker", "--layers", "--force-rm", "--isolation", "oci",
            "--runtime", "runc", "--network", "host", "--pull=never",
        ]  # fmt: skip
        for key, value in case.build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        if case.target:
            args += ["--target", case.target]
        if case.platform:
            args += ["--platform", case.platform]
        args += ["-f", str(case.dockerfile), "-t", tag, str(context)]
        return self.run(*args, check=False, timeout=600)

    def config(self, tag: str) -> dict:
        # Read from containers-storage, not from an OCI copy: converting to an
        # OCI config drops Healthcheck, OnBuild and Shell.
        return inspect_config(f"{self.storage}localhost/{tag}")

    def push_oci(self, tag: str, layout: Path, ref: str) -> None:
        self.run("push", f"localhost/{tag}", f"oci:{layout}:{ref}")


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo), deepest first."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def runc_containers_under(path: Path) -> list[str]:
    """runc containers (default runc root) whose bundle lies under ``path``."""
    listing = subprocess.run(["runc", "list", "--format", "json"], capture_output=True, text=True)
    if listing.returncode != 0 or not listing.stdout.strip():
        return []
    prefix = str(path.resolve())
    return [
        c["id"] for c in json.loads(listing.stdout) or [] if c.get("bundle", "").startswith(prefix)
    ]


@pytest.fixture(scope="session")
def buildah(tmp_path_factory, imgbuild_store) -> Buildah:
    """buildah with the session's busybox image as ``localhost/busybox:latest``.

    ``FROM busybox`` then resolves to it locally (``--pull=never``): short names
    are looked up in local storage as ``localhost/NAME`` first. At the end the
    storage is removed after checking that nothing of buildah's is left:
    no working containers, no runc containers, no mounts under its dir.
    """
    if shutil.which("buildah") is None:
        pytest.fail("buildah is not installed; run scripts/install-deps.sh --test")
    work = tmp_path_factory.mktemp("buildah")
    (work / "tmp").mkdir()
    tool = Buildah(work)
    run_tool(
        "skopeo", "copy", "--quiet", f"oci:{imgbuild_store.layout}:busybox:latest",
        f"{tool.storage}localhost/busybox:latest",
    )  # fmt: skip
    yield tool
    problems = _buildah_leftovers(tool)
    tool.run("rm", "--all", check=False)
    tool.run("rmi", "--all", "--force", check=False)
    for point in mounts_under(work):  # buildah should unmount all it mounted; if not, by path
        subprocess.run(["umount", point], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
    if problems:
        pytest.fail("buildah left things behind: " + "; ".join(problems))


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


# --- helpers as fixtures ------------------------------------------------------------------


@pytest.fixture(name="load_case", scope="session")
def _load_case_fixture():
    return load_case


@pytest.fixture(name="unpack_tree", scope="session")
def _unpack_tree_fixture():
    return unpack_tree


@pytest.fixture(name="inspect_config", scope="session")
def _inspect_config_fixture():
    return inspect_config


@pytest.fixture(name="compared_config", scope="session")
def _compared_config_fixture():
    return compared_config


@pytest.fixture(name="config_fields", scope="session")
def _config_fields_fixture():
    return CONFIG_FIELDS


@pytest.fixture(name="node_from_json", scope="session")
def _node_from_json_fixture():
    return Node.from_json

"""Fixtures for the build engine tests: stores with a busybox base, builds, image trees.

Every check looks at what a build produced: the image config in the store and
the file tree its layers make. The tree is read straight from the layer blobs
with Python's ``tarfile`` (OCI whiteouts applied by hand here), so it does not
depend on the engine's own overlay or extraction code.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import stat
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from cli.clitools import cli_env, imgbuild, start_imgbuild
from comparetools import runc_containers_under
from imagetools import make_busybox_image, require_root_and_runc

from imgbuild.builder.builder import build
from imgbuild.builder.finalimage import BuildResult
from imgbuild.builder.options import BuildOptions
from imgbuild.builder.progress import Progress
from imgbuild.image import Image
from imgbuild.store import Store

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _needs_root_and_runc():
    require_root_and_runc()


# --- the file tree of an image ------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One path of a file tree, as the tests compare it (never mtimes)."""

    kind: str  # file, dir, symlink, char, block, fifo
    mode: int  # permission bits with setuid/setgid/sticky
    uid: int
    gid: int
    data: bytes | None = None  # a file's content
    target: str | None = None  # a symlink's target


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.ischr():
        return "char"
    if member.isblk():
        return "block"
    if member.isfifo():
        return "fifo"
    return "file"


def _clean(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _drop_below(tree: dict[str, Node], path: str, *, keep_self: bool) -> None:
    prefix = path + "/" if path else ""
    for name in [n for n in tree if n.startswith(prefix) or (n == path and not keep_self)]:
        del tree[name]


def layer_stream(store: Store, digest: str) -> io.BytesIO:
    """A layer blob decompressed (gzip, zstd or plain), whole, in memory: test layers are small."""
    return decompressed(store.read_blob(digest))


def decompressed(data: bytes) -> io.BytesIO:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif data[:4] == b"\x28\xb5\x2f\xfd":
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return io.BytesIO(data)


def apply_tar(tree: dict[str, Node], stream) -> None:
    """Apply one layer tar to ``tree`` by the OCI rules: whiteouts hide lower-layer paths only."""
    with tarfile.open(fileobj=stream, mode="r:") as tar:
        members = [(m, _clean(m.name)) for m in tar.getmembers()]
        for _member, name in members:  # whiteouts first: they concern the layers below
            base = name.rsplit("/", 1)[-1]
            parent = name.rsplit("/", 1)[0] if "/" in name else ""
            if base == ".wh..wh..opq":
                _drop_below(tree, parent, keep_self=True)
            elif base.startswith(".wh."):
                _drop_below(tree, _join(parent, base[4:]), keep_self=False)
        for member, name in members:
            base = name.rsplit("/", 1)[-1]
            if not name or base.startswith(".wh."):
                continue
            if member.islnk():
                linked = tree[_clean(member.linkname)]
                tree[name] = linked
                continue
            kind = _tar_kind(member)
            if kind != "dir":
                _drop_below(tree, name, keep_self=False)
            data = tar.extractfile(member).read() if kind == "file" else None
            target = member.linkname if kind == "symlink" else None
            tree[name] = Node(kind, member.mode & 0o7777, member.uid, member.gid, data, target)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def image_tree(store: Store, image: Image) -> dict[str, Node]:
    """The flattened file tree of ``image``: relative path -> Node."""
    tree: dict[str, Node] = {}
    for layer in image.layers:
        apply_tar(tree, layer_stream(store, layer.digest))
    return tree


def layer_names(store: Store, layer) -> set[str]:
    """The paths a single layer blob holds (whiteouts as written), for "never in a layer" checks."""
    with tarfile.open(fileobj=layer_stream(store, layer.digest), mode="r:") as tar:
        return {_clean(member.name) for member in tar.getmembers()} - {""}


def tar_tree(path: Path) -> dict[str, Node]:
    """The file tree in a plain tar file (a rootfs tar output)."""
    tree: dict[str, Node] = {}
    with open(path, "rb") as stream:
        apply_tar(tree, stream)
    return tree


def layout_tree(layout: Path) -> dict[str, Node]:
    """The file tree of the (first) image in an OCI layout directory, read from its blobs."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":", 1)[1]).read_text())
    tree: dict[str, Node] = {}
    for layer in manifest["layers"]:
        apply_tar(tree, decompressed((blobs / layer["digest"].split(":", 1)[1]).read_bytes()))
    return tree


def dir_tree(root: Path) -> dict[str, Node]:
    """The file tree under a directory on disk, in the same form as ``image_tree``."""
    tree: dict[str, Node] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            kind = {
                stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFREG: "file",
                stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo",
            }[stat.S_IFMT(st.st_mode)]  # fmt: skip
            data = Path(path).read_bytes() if kind == "file" else None
            target = os.readlink(path) if kind == "symlink" else None
            tree[rel] = Node(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, data, target)
    return tree


# --- stores and builds ---------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory) -> Path:
    """One store for the many tests that only look at what one build makes."""
    root = tmp_path_factory.mktemp("shared") / "store"
    make_busybox_image(Store(root), "busybox:latest")
    return root


@pytest.fixture
def shared_store(shared_root) -> Store:
    return Store(shared_root)


@pytest.fixture
def store(store_root) -> Store:
    """A fresh store of this test's own with busybox:latest (for cache and cleanup tests)."""
    result = Store(store_root)
    make_busybox_image(result, "busybox:latest")
    return result


def write_files(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)


@dataclass
class Built:
    """A build's result with the store it went into."""

    result: BuildResult
    store: Store
    context: Path

    @property
    def image(self) -> Image:
        return self.result.image

    @property
    def config(self) -> dict:
        return self.result.image.config.get("config", {})

    @property
    def history(self) -> list[dict]:
        return self.result.image.config.get("history", [])

    def tree(self) -> dict[str, Node]:
        return image_tree(self.store, self.result.image)


@pytest.fixture
def build_df(tmp_path, shared_store) -> Callable[..., Built]:
    """build_df(DOCKERFILE, {path: content}, store=..., **BuildOptions fields) -> Built.

    The context is a new directory under tmp_path each call; the default store
    is the shared one.
    """
    counter = iter(range(1000))

    def run(
        text: str, files: dict | None = None, *, store: Store | None = None, context=None, **options
    ):
        if context is None:
            context = tmp_path / f"context-{next(counter)}"
            context.mkdir()
        write_files(context, {"Dockerfile": text, **(files or {})})
        target_store = store or shared_store
        options.setdefault("progress", "quiet")
        result = build(target_store, BuildOptions(context=context, **options), progress=Progress())
        return Built(result, target_store, context)

    return run


# --- the command line -----------------------------------------------------------------


def run_image(root: Path, *args: str, env: dict | None = None):
    """``imgbuild run ARGS`` on ``root``."""
    return imgbuild(root, "run", *args, env=env, timeout=60)


def no_traceback(completed) -> None:
    assert "Traceback" not in completed.stderr, completed.stderr


def mounts_under(*paths: Path) -> list[str]:
    """Mount points in /proc/self/mountinfo at or below any of ``paths``."""
    prefixes = [str(Path(p).resolve()) for p in paths]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == p or point.startswith(p + "/") for p in prefixes):
            found.append(point)
    return found


def kill_group(process: subprocess.Popen) -> None:
    """Stop a background CLI we started (its own process group) if it still runs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def clear_leftovers(root: Path) -> None:
    """After a failed test: delete the containers and unmount what a killed build left.

    The runtime runs in a session of its own, so killing the CLI's process
    group does not stop a container it started.
    """
    for container in runc_containers_under(root):
        subprocess.run(["runc", "delete", "--force", container], capture_output=True)
    for point in sorted(mounts_under(root), reverse=True):
        subprocess.run(["umount", point], capture_output=True)


# --- the helpers above as fixtures (test modules cannot import a conftest) -------------


@pytest.fixture(name="image_tree", scope="session")
def _image_tree_fixture():
    return image_tree


@pytest.fixture(name="tar_tree", scope="session")
def _tar_tree_fixture():
    return tar_tree


@pytest.fixture(name="layout_tree", scope="session")
def _layout_tree_fixture():
    return layout_tree


@pytest.fixture(name="dir_tree", scope="session")
def _dir_tree_fixture():
    return dir_tree


@pytest.fixture(name="imgbuild_cli", scope="session")
def _imgbuild_fixture():
    return imgbuild


@pytest.fixture(name="cli_env", scope="session")
def _cli_env_fixture():
    return cli_env


@pytest.fixture(name="start_cli", scope="session")
def _start_cli_fixture():
    return start_imgbuild


@pytest.fixture(name="run_image", scope="session")
def _run_image_fixture():
    return run_image


@pytest.fixture(name="no_traceback", scope="session")
def _no_traceback_fixture():
    return no_traceback


@pytest.fixture(name="mounts_under", scope="session")
def _mounts_under_fixture():
    return mounts_under


@pytest.fixture(name="kill_group", scope="session")
def _kill_group_fixture():
    return kill_group


@pytest.fixture(name="clear_leftovers", scope="session")
def _clear_leftovers_fixture():
    return clear_leftovers


@pytest.fixture(name="write_files", scope="session")
def _write_files_fixture():
    return write_files


@pytest.fixture(name="layer_names", scope="session")
def _layer_names_fixture():
    return layer_names

"""Base images made by other tools: imgbuild builds on each one exactly as buildah does.

Users build FROM images that every tool in the world wrote. Each producer
below makes a small base image during the test run (a busybox system, or a
Debian tree from debootstrap), pushes it to the test registry on 127.0.0.1,
and then imgbuild and buildah 1.28 each pull it and build the same Dockerfile
on it: RUN, COPY, a deleted base file, a new user, a RUN as that user. The
two results must agree on the flattened root filesystem and the image config
(tests/comparetools.py). imgbuild's image is read by ``umoci unpack`` and
``skopeo inspect``, buildah's from its own storage (overlay driver), where
it has no need to write its layers out again.

The busybox bases carry what layer readers trip on: a long path, a non-ASCII
name, a hard link, a fifo, setuid and sticky modes, files of other owners, a
file capability and a user xattr (compared where the producer stores xattrs).
Each producer also makes deletions of its own where it can (whiteouts as that
tool writes them: a file, and an opaque directory), so the base has at least
two layers. The summary line at the end says how many producers passed
(tests/interop/conftest.py).

Where buildah refuses a base that containerd reads (BUILDAH_FAILS), the test
checks that it still does and compares with buildah's build on the base's
twin: the same image written without what buildah refuses. A producer that
shows an imgbuild defect is marked xfail, strict (KNOWN_DEFECTS).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from comparetools import (
    BUILDAH_RUN_LEFTOVERS,
    Buildah,
    Built,
    compared_config,
    differences,
    drop_known_leftovers,
    inspect_config,
    make_buildah,
    remove_buildah,
    report,
    run_tool,
    unpack_tree,
)
from imagetools import make_busybox_rootfs
from ocitools import BUSYBOX_PATH, compress_layer, push_layout_raw, write_layout

from imgbuild.build.engine import build
from imgbuild.build.options import BuildOptions
from imgbuild.build.progress import Progress
from imgbuild.errors import ImgbuildError
from imgbuild.store import Store

LONG_DIRECTORY = "usr/share/" + "a" * 60 + "/" + "b" * 70  # > 100 bytes, ustar's name field

BUSYBOX_DOCKERFILE = """\
FROM {base}
RUN set -e; mkdir -p /app/data; echo "built on $(cat /etc/producer)" > /app/data/ran.txt; \\
    readlink /bin/sh >> /app/data/ran.txt; cat /opt/replaced/new.txt /etc/motd >> /app/data/ran.txt; \\
    test ! -e /etc/producer-gone; test ! -e /opt/replaced/old.txt; echo "appended by RUN" >> /etc/motd
COPY hello.txt /app/
COPY --chown=1234:1234 data/ /app/data/
RUN rm /etc/removeme && rm -r /opt/removedir && ln -s /app/hello.txt /etc/hello-link
RUN echo 'appuser:x:1234:1234:app user:/home/appuser:/bin/sh' >> /etc/passwd && \\
    echo 'appuser:x:1234:' >> /etc/group && mkdir -m 0750 /home/appuser && chown 1234:1234 /home/appuser
USER appuser
WORKDIR /home/appuser
RUN id > id.txt && touch /tmp/written-by-appuser && cat /app/data/sub/b.txt > b-copy.txt
ENV GREETING=hello
CMD ["cat", "/app/hello.txt"]
"""

# useradd writes the day of the last password change into /etc/shadow; a fixed
# day keeps two builds that straddle midnight equal.
DEBIAN_DOCKERFILE = """\
FROM {base}
RUN set -e; mkdir -p /app/data; echo "built on Debian $(cat /etc/debian_version)" > /app/data/ran.txt; \\
    rm /etc/motd; rm -r /usr/share/doc/base-files; echo "appended by RUN" >> /etc/issue
COPY hello.txt /app/
COPY --chown=1234:1234 data/ /app/data/
RUN useradd --create-home --uid 1234 --shell /bin/sh appuser && chage --lastday 20000 appuser
USER appuser
WORKDIR /home/appuser
RUN id > id.txt && touch /tmp/written-by-appuser
ENV GREETING=hello
CMD ["cat", "/app/hello.txt"]
"""


# --- the busybox base's files --------------------------------------------------------------


def make_base_rootfs(root: Path, producer: str) -> Path:
    """The first layer's tree: busybox plus what layer readers trip on.

    ``etc/producer`` names the producer, so no two producers share a layer
    (registries, skopeo's blob cache and the stores all deduplicate by digest).
    """
    make_busybox_rootfs(root)
    os.chmod(root, 0o755)
    files = {
        "etc/producer": f"{producer}\n",
        "etc/producer-gone": "the producer's second layer deletes this\n",
        "etc/removeme": "the Dockerfile deletes this\n",
        "etc/motd": "base motd\n",
        "etc/\u00fcn\u00efc\u00f6de.txt": "non-ASCII name\n",
        "opt/removedir/a.txt": "a\n",
        "opt/removedir/sub/b.txt": "b\n",
        "opt/replaced/old.txt": "an opaque directory in the second layer hides this\n",
        f"{LONG_DIRECTORY}/long-name.txt": "a path longer than 100 bytes\n",
        "srv/setuid-tool": "#!/bin/sh\necho setuid\n",
        "home/app/.profile": "export APP=1\n",
        "var/www/index.html": "<p>last entry, size not a multiple of 512</p>\n",
    }
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    os.chmod(root / "srv/setuid-tool", 0o4755)
    os.chmod(root / "home/app/.profile", 0o600)
    os.chown(root / "home/app/.profile", 1000, 1000)
    os.chown(root / "srv", 0, 50)
    os.chmod(root / "srv", 0o2775)
    # A file capability (as Debian's ping has) and a user xattr: producers that
    # store xattrs (GNU tar --xattrs, bsdtar, umoci, Docker) carry them.
    run_tool("setcap", "cap_net_raw+ep", str(root / "srv/setuid-tool"))
    os.setxattr(root / "etc/motd", "user.interop", b"kept")
    os.link(root / "etc/producer", root / "usr/producer-hardlink")
    # The Dockerfile appends to /etc/motd: under overlayfs (Docker, imgbuild,
    # buildah's overlay driver) that copy-up breaks the link, where the base
    # still has it (single-layer producers).
    os.link(root / "etc/motd", root / "usr/motd-hardlink")
    (root / "var/spool").mkdir(parents=True)
    os.mkfifo(root / "var/spool/fifo", 0o620)
    return root


def make_delta(root: Path) -> Path:
    """The second layer's tree: whiteouts as plain files, the way a layer carries them."""
    for directory in ("etc", "opt/replaced", "usr/local/bin"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    (root / "etc/.wh.producer-gone").write_text("")
    (root / "opt/replaced/.wh..wh..opq").write_text("")
    (root / "opt/replaced/new.txt").write_text("new in the second layer\n")
    (root / "etc/motd").write_text("motd of the second layer\n")
    (root / "usr/local/bin/tool").write_text("#!/bin/sh\necho tool\n")
    os.chmod(root / "usr/local/bin/tool", 0o755)
    return root


def make_final_rootfs(root: Path, producer: str) -> Path:
    """The base tree with the second layer's changes made in place: for one-layer bases."""
    make_base_rootfs(root, producer)
    (root / "etc/producer-gone").unlink()
    shutil.rmtree(root / "opt/replaced")
    (root / "opt/replaced").mkdir()
    (root / "opt/replaced/new.txt").write_text("new in the second layer\n")
    (root / "etc/motd").write_text("motd of the second layer\n")
    return root


# --- producers -----------------------------------------------------------------------------


@dataclass
class Workshop:
    """What a producer gets: the registry, a work dir, the other tools' fixtures."""

    registry: str
    namespace: str  # unique per session: a long-lived registry may hold older runs
    work: Path
    request: pytest.FixtureRequest

    def repository(self, producer: str) -> str:
        return f"{self.namespace}/{producer}"

    def reference(self, producer: str) -> str:
        return f"{self.registry}/{self.repository(producer)}:1"

    def directory(self, producer: str) -> Path:
        path = self.work / producer
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)

    def skopeo_push(self, source: str, reference: str, *options: str) -> None:
        run_tool("skopeo", "copy", "--quiet", "--dest-tls-verify=false", *options, source,
                 f"docker://{reference}")  # fmt: skip

    def pushed_manifest(self, reference: str) -> dict:
        raw = run_tool("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}")
        return json.loads(raw.stdout)


Producer = Callable[[Workshop, str], str]  # (workshop, name) -> the pushed reference
PRODUCERS: dict[str, Producer] = {}


def producer(name: str):
    def register(function: Producer) -> Producer:
        PRODUCERS[name] = function
        return function

    return register


def _layer_types(manifest: dict) -> list[tuple[str, str]]:
    return [(layer["mediaType"], layer["digest"]) for layer in manifest["layers"]]


# ... hand-made layers: a tar tool, a compression, our own OCI layout ...


def gnu_tar(*options: str, dot_slash: bool) -> Callable[[Path], bytes]:
    """GNU tar over a tree: ``-C DIR .`` (names start with ./) or the top-level names."""

    def make(root: Path) -> bytes:
        names = ["."] if dot_slash else sorted(os.listdir(root))
        argv = ["tar", *options, "--numeric-owner", "-C", str(root), "-cf", "-", *names]
        return subprocess.run(argv, capture_output=True, check=True).stdout

    return make


def _later_versions(root: Path) -> list[str]:
    """Change two paths of the base tree (a file's content; a file become a symlink)."""
    (root / "var/www/index.html").write_text("<p>appended later, the one that counts</p>\n")
    (root / "home/app/.profile").unlink()
    (root / "home/app/.profile").symlink_to("/etc/motd")
    return ["./var/www/index.html", "./home/app/.profile"]


def gnu_tar_appended(root: Path) -> bytes:
    """GNU tar, then ``tar --append`` of newer versions of two paths of the base tree:
    a layer with duplicate entries, where the later one wins."""
    archive = root.parent / f"{root.name}.tar"
    gnu = ["tar", "--format=gnu", "--numeric-owner", "-C", str(root)]
    run_tool(*gnu, "-cf", str(archive), ".")
    if (root / "etc/producer").exists():
        run_tool(*gnu, "-rf", str(archive), *_later_versions(root))
    return archive.read_bytes()


def gnu_tar_twin(root: Path) -> bytes:
    """The layer ``gnu_tar_appended`` makes, without duplicates: what it should read as."""
    if (root / "etc/producer").exists():
        _later_versions(root)
    return gnu_tar(dot_slash=True)(root)


@producer("gnutar-appended-duplicates")
def gnutar_appended_duplicates(workshop: Workshop, name: str) -> str:
    """Duplicate entries by ``tar --append`` (tag 1), and the twin image without them
    (tag twin) that buildah builds on instead (see BUILDAH_FAILS)."""
    base = hand_made(gnu_tar_appended, "gzip")(workshop, name)
    layout, _ = two_layer_layout(workshop, name, gnu_tar_twin, "gzip")
    workshop.skopeo_push(f"oci:{layout}:1", base.rsplit(":", 1)[0] + ":twin")
    return base


def bsdtar(root: Path) -> bytes:
    argv = ["bsdtar", "-cf", "-", "-C", str(root), "."]
    return subprocess.run(argv, capture_output=True, check=True).stdout


def python_tarfile(root: Path) -> bytes:
    """Python's tarfile, PAX format (its default), names without ./, owners by name too."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(os.listdir(root)):
            archive.add(root / name, arcname=name)
    return buffer.getvalue()


def files_first(root: Path) -> bytes:
    """Entries as image tools that write files straight into a tar do (Bazel's
    rules_pkg, Jib and ko write no directory entries): every non-directory first,
    parents left implicit; then entries only for the directories whose mode or
    owner differ from what a reader creates (0755 root), after their contents."""
    paths = sorted(p.relative_to(root) for p in root.rglob("*"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for relative in paths:
            if not (root / relative).is_dir() or (root / relative).is_symlink():
                archive.add(root / relative, arcname=str(relative), recursive=False)
        for relative in paths:
            info = (root / relative).lstat()
            plain = stat.S_IMODE(info.st_mode) == 0o755 and info.st_uid == info.st_gid == 0
            if stat.S_ISDIR(info.st_mode) and not plain:
                archive.add(root / relative, arcname=str(relative), recursive=False)
    return buffer.getvalue()


def go_style(padded: bool) -> Callable[[Path], bytes]:
    """Python's tarfile stream, cut where Go's archive/tar stops when the writer is never
    closed: no two zero blocks at the end. ``padded``: Flush was called, so the stream
    ends at a block boundary; otherwise it ends right after the last file's data, with
    no padding, as umoci 0.4.7's layers do when the last file's size is not a multiple
    of 512. Go's reader takes both as a clean end."""

    def make(root: Path) -> bytes:
        whole = python_tarfile(root)
        with tarfile.open(fileobj=io.BytesIO(whole)) as archive:
            last = archive.getmembers()[-1]
        assert last.isfile() and last.size % 512, "the last entry must end inside a block"
        end = last.offset_data + last.size
        return whole[: end + (-end % 512 if padded else 0)]

    return make


def two_layer_layout(
    workshop: Workshop, name: str, make_tar: Callable[[Path], bytes], compression: str
) -> tuple[Path, dict]:
    """The base tree and the delta as layers made by ``make_tar``, in an OCI layout
    (tagged 1) we write ourselves; returns the layout and its manifest."""
    work = workshop.directory(name)
    layers = [
        compress_layer(make_tar(make_base_rootfs(work / "base", name)), compression),
        compress_layer(make_tar(make_delta(work / "delta")), compression),
    ]
    layout = work / "layout"
    return layout, write_layout(layout, "1", layers, f"interop test: {name}")


def with_sparse_file(make_tar: Callable[[Path], bytes]) -> Callable[[Path], bytes]:
    """``make_tar`` over the tree plus a sparse file: a 1 MiB hole between two lines."""

    def make(root: Path) -> bytes:
        path = root / "var/lib/sparse.img"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:
            file.write(b"start\n")
            file.seek(1 << 20)
            file.write(b"end\n")
        tar = make_tar(root)
        assert b"GNU.sparse" in tar, "GNU tar wrote no sparse entry"
        return tar

    return make


def hand_made(
    make_tar: Callable[[Path], bytes], compression: str, push: str = "skopeo"
) -> Producer:
    """Two layers made by ``make_tar``, compressed, in an OCI layout we write, then pushed
    by skopeo (compressed blobs pass unchanged) or by the registry API (``raw``)."""

    def produce(workshop: Workshop, name: str) -> str:
        layout, manifest = two_layer_layout(workshop, name, make_tar, compression)
        reference = workshop.reference(name)
        if push == "raw":
            push_layout_raw(layout, manifest, workshop.registry, workshop.repository(name), "1")
        else:
            workshop.skopeo_push(f"oci:{layout}:1", reference)
        # The registry must hold our blobs byte for byte, or this tests skopeo's output.
        assert _layer_types(workshop.pushed_manifest(reference)) == _layer_types(manifest)
        return reference

    return produce


HAND_MADE = {
    "gnutar-gnu-dotslash": hand_made(gnu_tar("--format=gnu", dot_slash=True), "gzip"),
    "gnutar-gnu-names": hand_made(gnu_tar("--format=gnu", dot_slash=False), "gzip"),
    "gnutar-posix-dotslash-xattrs": hand_made(
        gnu_tar("--format=posix", "--xattrs", "--xattrs-include=*", dot_slash=True), "gzip"
    ),
    "gnutar-ustar-names": hand_made(gnu_tar("--format=ustar", dot_slash=False), "gzip"),
    # PAX sparse entries (GNU.sparse.* records): Go's reader, so containerd,
    # Docker and buildah, read them as the whole file. (GNU tar's old 'S' entries
    # are not here: Docker, buildah and umoci refuse them, "unhandled tar header
    # type 83", so nothing could read the result.)
    "gnutar-posix-sparse": hand_made(
        with_sparse_file(gnu_tar("--format=posix", "--sparse", dot_slash=True)), "gzip"
    ),
    "bsdtar": hand_made(bsdtar, "gzip"),
    "files-first-implicit-dirs": hand_made(files_first, "gzip"),
    "python-tarfile": hand_made(python_tarfile, "gzip"),
    "go-no-end-blocks": hand_made(go_style(padded=True), "gzip"),
    "go-no-end-blocks-unpadded": hand_made(go_style(padded=False), "gzip"),
    "layer-uncompressed": hand_made(gnu_tar(dot_slash=True), "uncompressed", push="raw"),
    "layer-zstd": hand_made(gnu_tar(dot_slash=True), "zstd"),
    "layer-gzip-members": hand_made(gnu_tar(dot_slash=True), "gzip-members"),
}
PRODUCERS.update(HAND_MADE)


# ... skopeo's conversions ...


def _docker_archive(workshop: Workshop, name: str) -> Path:
    """Our two-layer OCI image through skopeo: oci-archive, then docker-archive."""
    layout, _ = two_layer_layout(workshop, name, gnu_tar(dot_slash=True), "gzip")
    oci_archive, docker_archive = layout.parent / "oci.tar", layout.parent / "docker.tar"
    run_tool("skopeo", "copy", "--quiet", f"oci:{layout}:1", f"oci-archive:{oci_archive}")
    run_tool("skopeo", "copy", "--quiet", f"oci-archive:{oci_archive}",
             f"docker-archive:{docker_archive}:{name}:1")  # fmt: skip
    return docker_archive


def _pushed_layer_types(workshop: Workshop, reference: str) -> set[str]:
    return {layer["mediaType"] for layer in workshop.pushed_manifest(reference)["layers"]}


@producer("skopeo-docker-archive")
def skopeo_docker_archive(workshop: Workshop, name: str) -> str:
    """oci-archive -> docker-archive -> registry: Docker media types, skopeo's gzip."""
    docker_archive = _docker_archive(workshop, name)
    reference = workshop.reference(name)
    workshop.skopeo_push(f"docker-archive:{docker_archive}", reference)
    assert _pushed_layer_types(workshop, reference) == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    }
    return reference


@producer("skopeo-archive-roundtrip")
def skopeo_archive_roundtrip(workshop: Workshop, name: str) -> str:
    """oci-archive -> docker-archive -> oci-archive -> registry."""
    docker_archive = _docker_archive(workshop, name)
    back = docker_archive.parent / "back.tar"
    run_tool("skopeo", "copy", "--quiet", "--format", "oci", f"docker-archive:{docker_archive}",
             f"oci-archive:{back}")  # fmt: skip
    reference = workshop.reference(name)
    workshop.skopeo_push(f"oci-archive:{back}", reference)
    assert _pushed_layer_types(workshop, reference) == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }
    return reference


@producer("skopeo-zstd")
def skopeo_zstd(workshop: Workshop, name: str) -> str:
    """gzip layers recompressed to zstd by skopeo on the way to the registry."""
    layout, _ = two_layer_layout(workshop, name, gnu_tar(dot_slash=True), "gzip")
    reference = workshop.reference(name)
    workshop.skopeo_push(f"oci:{layout}:1", reference, "--dest-compress",
                         "--dest-compress-format", "zstd")  # fmt: skip
    assert _pushed_layer_types(workshop, reference) == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }
    return reference


# ... umoci ...


def _umoci_image(work: Path, name: str) -> Path:
    """``umoci init/new/config`` and the busybox tree by ``umoci insert``: image layout:1."""
    layout = work / "layout"
    run_tool("umoci", "init", "--layout", str(layout))
    run_tool("umoci", "new", "--image", f"{layout}:1")
    run_tool("umoci", "config", "--image", f"{layout}:1", "--config.env", BUSYBOX_PATH,
             "--config.cmd", "sh")  # fmt: skip
    run_tool(
        "umoci", "insert", "--image", f"{layout}:1", str(make_base_rootfs(work / "base", name)), "/"
    )
    return layout


@producer("umoci-insert")
def umoci_insert(workshop: Workshop, name: str) -> str:
    """``umoci insert`` of the tree, a whiteout (``--whiteout``), an opaque directory
    (``--opaque``) and a replaced file: four umoci layers."""
    work = workshop.directory(name)
    layout = _umoci_image(work, name)
    delta = make_delta(work / "delta")
    (delta / "etc/.wh.producer-gone").unlink()
    (delta / "opt/replaced/.wh..wh..opq").unlink()
    image = f"{layout}:1"
    run_tool("umoci", "insert", "--image", image, "--whiteout", "/etc/producer-gone")
    run_tool(
        "umoci",
        "insert",
        "--image",
        image,
        "--opaque",
        str(delta / "opt/replaced"),
        "/opt/replaced",
    )
    run_tool("umoci", "insert", "--image", image, str(delta / "etc/motd"), "/etc/motd")
    run_tool("umoci", "insert", "--image", image, str(delta / "usr/local"), "/usr/local")
    reference = workshop.reference(name)
    workshop.skopeo_push(f"oci:{layout}:1", reference)
    return reference


@producer("umoci-repack")
def umoci_repack(workshop: Workshop, name: str) -> str:
    """``umoci unpack``, changes in the bundle, ``umoci repack``: umoci's own diff layer."""
    work = workshop.directory(name)
    layout = _umoci_image(work, name)
    bundle = work / "bundle"
    run_tool("umoci", "unpack", "--image", f"{layout}:1", str(bundle))
    rootfs = bundle / "rootfs"
    (rootfs / "etc/producer-gone").unlink()
    (rootfs / "opt/replaced/old.txt").unlink()
    (rootfs / "opt/replaced/new.txt").write_text("new in the second layer\n")
    (rootfs / "etc/motd").write_text("motd of the second layer\n")
    run_tool("umoci", "repack", "--image", f"{layout}:1", str(bundle))
    reference = workshop.reference(name)
    workshop.skopeo_push(f"oci:{layout}:1", reference)
    return reference


@producer("debian-debootstrap-umoci")
def debian_debootstrap_umoci(workshop: Workshop, name: str) -> str:
    """debootstrap's minbase bookworm tree (cached), packed by ``umoci insert``."""
    work = workshop.directory(name)
    rootfs = work / "rootfs"
    rootfs.mkdir()
    tarball = workshop.fixture("debian_rootfs_tar")
    run_tool("tar", "--numeric-owner", "--xattrs", "-xpf", str(tarball), "-C", str(rootfs))
    layout = work / "layout"
    run_tool("umoci", "init", "--layout", str(layout))
    run_tool("umoci", "new", "--image", f"{layout}:1")
    run_tool("umoci", "config", "--image", f"{layout}:1", "--config.env", BUSYBOX_PATH,
             "--config.cmd", "bash")  # fmt: skip
    run_tool("umoci", "insert", "--image", f"{layout}:1", str(rootfs), "/")
    shutil.rmtree(rootfs)  # 200 MB less left in pytest's kept temp dirs
    reference = workshop.reference(name)
    workshop.skopeo_push(f"oci:{layout}:1", reference)
    return reference


# ... buildah and Docker ...


@producer("buildah")
def buildah_from_scratch(workshop: Workshop, name: str) -> str:
    """``buildah from scratch``, ``copy``, ``commit``; then a container from that image
    where ``buildah run`` deletes, committed as a second layer (buildah's own
    whiteouts). A buildah storage of its own."""
    work = workshop.directory(name)
    rootfs = make_base_rootfs(work / "base", name)
    tool = make_buildah(work / "buildah")
    try:
        container = tool.run("from", "scratch").stdout.strip()
        tool.run("copy", container, f"{rootfs}/", "/")
        tool.run("config", "--env", BUSYBOX_PATH, "--cmd", "sh", container)
        tool.run("commit", "--quiet", "--rm", container, f"localhost/{name}:base")
        container = tool.run("from", f"localhost/{name}:base").stdout.strip()
        script = (
            "rm /etc/producer-gone && rm -r /opt/replaced && mkdir /opt/replaced && "
            "echo 'new in the second layer' > /opt/replaced/new.txt && "
            "echo 'motd of the second layer' > /etc/motd"
        )
        tool.run("run", "--isolation", "oci", "--runtime", "runc", "--network", "none",
                 container, "--", "/bin/sh", "-c", script)  # fmt: skip
        tool.run("commit", "--quiet", "--rm", container, f"localhost/{name}:1")
        reference = workshop.reference(name)
        tool.run(
            "push", "--quiet", "--tls-verify=false", f"localhost/{name}:1", f"docker://{reference}"
        )
    finally:
        problems = remove_buildah(tool)
    assert not problems, f"buildah (producer) left things behind: {problems}"
    return reference


DOCKER_PRODUCER_DOCKERFILE = """\
FROM scratch
COPY rootfs/ /
RUN ["/bin/sh", "-c", "rm /etc/producer-gone && rm -r /opt/replaced && mkdir /opt/replaced && \
echo 'new in the second layer' > /opt/replaced/new.txt && echo 'motd of the second layer' > /etc/motd"]
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["sh"]
"""


def docker_build(buildkit: bool) -> Producer:
    """Docker 20.10 ``docker build`` (BuildKit or the classic builder), ``docker save``,
    ``skopeo copy docker-archive:``."""

    def produce(workshop: Workshop, name: str) -> str:
        docker = workshop.fixture("dockerd")
        work = workshop.directory(name)
        make_base_rootfs(work / "rootfs", name)
        (work / "Dockerfile").write_text(DOCKER_PRODUCER_DOCKERFILE)
        tag = f"interop/{name}:1"
        docker.run("build", "--network", "none", "-t", tag, str(work), buildkit=buildkit)
        docker.run("save", "-o", str(work / "saved.tar"), tag)
        reference = workshop.reference(name)
        workshop.skopeo_push(f"docker-archive:{work}/saved.tar", reference)
        return reference

    return produce


PRODUCERS["docker"] = docker_build(buildkit=True)
PRODUCERS["docker-classic-builder"] = docker_build(buildkit=False)


@producer("docker-import")
def docker_import(workshop: Workshop, name: str) -> str:
    """``docker import`` of a GNU tar of the tree, ``docker save``, ``skopeo copy``."""
    docker = workshop.fixture("dockerd")
    work = workshop.directory(name)
    tarball = work / "rootfs.tar"
    tarball.write_bytes(gnu_tar(dot_slash=True)(make_final_rootfs(work / "rootfs", name)))
    tag = f"interop/{name}:1"
    docker.run("import", "--change", f"ENV {BUSYBOX_PATH}", "--change", 'CMD ["sh"]',
               str(tarball), tag)  # fmt: skip
    docker.run("save", "-o", str(work / "saved.tar"), tag)
    reference = workshop.reference(name)
    workshop.skopeo_push(f"docker-archive:{work}/saved.tar", reference)
    return reference


# --- building on the base with both tools ---------------------------------------------------


@pytest.fixture(scope="session")
def workshop(registry, tmp_path_factory, request) -> Workshop:
    namespace = f"interop-{secrets.token_hex(4)}"
    return Workshop(registry.host, namespace, tmp_path_factory.mktemp("producers"), request)


@pytest.fixture(scope="session")
def build_context(tmp_path_factory) -> Path:
    """What the Dockerfile COPYs."""
    context = tmp_path_factory.mktemp("interop-context")
    (context / "hello.txt").write_text("hello from the build context\n")
    (context / "data/sub").mkdir(parents=True)
    (context / "data/a.txt").write_text("a\n")
    (context / "data/sub/b.txt").write_text("b\n")
    os.chmod(context / "data/sub/b.txt", 0o640)
    return context


def build_with_imgbuild(dockerfile: Path, context: Path, tag: str, work: Path) -> Built:
    work.mkdir()
    store = Store(work / "store")  # a fresh store: nothing of another base is reused
    options = BuildOptions(
        context=context, dockerfile=dockerfile, tags=[tag], progress="quiet", network="none"
    )
    failure = None
    try:
        build(store, options, progress=Progress())
    except ImgbuildError as error:
        failure = f"imgbuild could not build on this base:\n{error}"
    if failure:  # failed outside the except: the build's own traceback adds nothing
        pytest.fail(failure, pytrace=False)
    layout, ref = readable_by_umoci(store.layout, f"{tag}:latest", work)
    config = inspect_config(f"oci:{layout}:{ref}")
    return Built(compared_config(config), unpack_tree(layout, ref, work))


def readable_by_umoci(layout: Path, ref: str, work: Path) -> tuple[Path, str]:
    """umoci 0.4.7 cannot read zstd layers: such an image is first converted to gzip
    by skopeo (containers/image reads zstd); any other image is read as it is."""
    index = json.loads((layout / "index.json").read_text())
    entry = next(
        m for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
    )  # fmt: skip
    blob = layout / "blobs" / "sha256" / entry["digest"].split(":", 1)[1]
    manifest = json.loads(blob.read_text())
    if not any(layer["mediaType"].endswith("+zstd") for layer in manifest["layers"]):
        return layout, ref
    converted = work / "gzip-layout"
    run_tool("skopeo", "copy", "--quiet", "--dest-compress", "--dest-compress-format", "gzip",
             f"oci:{layout}:{ref}", f"oci:{converted}:{ref}")  # fmt: skip
    return converted, ref


def build_with_buildah(
    buildah: Buildah, base: str, dockerfile: Path, context: Path, tag: str, work: Path
) -> Built:
    completed = buildah.build(dockerfile, context, tag, "--network", "none", "--tls-verify=false")
    assert completed.returncode == 0, (
        f"buildah could not build on this base:\n{(completed.stdout + completed.stderr)[-3000:]}"
    )
    # Read from buildah's storage: pushing re-creates each layer from its files
    # and tar-split metadata, and that fails on a PAX sparse file ("Digest did
    # not match").
    built = Built(compared_config(buildah.config(tag)), buildah.tree(f"localhost/{tag}"))
    drop_known_leftovers(built.tree, buildah.paths_in_image(base, BUILDAH_RUN_LEFTOVERS))
    return built


def build_with_buildah_on_twin(
    buildah: Buildah, failure: str, base: str, dockerfile: Path, context: Path, tag: str, work: Path
) -> Built:
    """buildah must still refuse ``base`` with ``failure`` (else it is the reference
    again); it builds on the base's twin instead: the same image without what it
    refuses (tag ``twin`` beside the base's)."""
    completed = buildah.build(dockerfile, context, tag, "--network", "none", "--tls-verify=false")
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0, "buildah builds on this base now: compare with it again"
    assert failure in output, f"buildah failed differently:\n{output[-2000:]}"
    twin = base.rsplit(":", 1)[0] + ":twin"
    twin_dockerfile = work / "Dockerfile.twin"
    twin_dockerfile.write_text(dockerfile.read_text().replace(f"FROM {base}\n", f"FROM {twin}\n"))
    return build_with_buildah(buildah, twin, twin_dockerfile, context, tag, work)


PRODUCER_NAMES = sorted(PRODUCERS)

# Producers whose images buildah 1.28 refuses, with the text of its error: it
# builds on their twins (build_with_buildah_on_twin).
BUILDAH_FAILS = {
    # tar-split refuses duplicate paths in containers/storage and in Docker 20.10
    # alike; containerd applies them, the later entry winning.
    "gnutar-appended-duplicates": "duplicates of file paths not supported",
}

# Producers whose images show an imgbuild defect: strict, so the mark goes as
# soon as the defect does.
KNOWN_DEFECTS: dict[str, str] = {}  # producer -> what is wrong, and where


def producer_params() -> list:
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_DEFECTS[name]))
        if name in KNOWN_DEFECTS
        else name
        for name in PRODUCER_NAMES
    ]


def test_every_producer_the_issue_names_is_here():
    assert len(PRODUCER_NAMES) >= 20
    for kind in ("umoci", "buildah", "docker", "skopeo", "gnutar", "bsdtar", "python", "go-",
                 "uncompressed", "zstd", "gzip-members", "debian"):  # fmt: skip
        assert any(kind in name for name in PRODUCER_NAMES), kind


@pytest.mark.parametrize("producer_name", producer_params())
def test_build_on_base_image_from(producer_name, workshop, buildah, build_context, tmp_path):
    base = PRODUCERS[producer_name](workshop, producer_name)
    template = DEBIAN_DOCKERFILE if producer_name.startswith("debian") else BUSYBOX_DOCKERFILE
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(template.format(base=base))
    tag = f"interop-{producer_name}"
    # buildah works in a thread while imgbuild builds here (it wants the main
    # thread for its signal handlers); leaving the block waits for buildah.
    work = tmp_path / "reference"
    work.mkdir()
    if producer_name in BUILDAH_FAILS:
        reference = (build_with_buildah_on_twin, buildah, BUILDAH_FAILS[producer_name], base)
    else:
        reference = (build_with_buildah, buildah, base)
    with ThreadPoolExecutor(max_workers=1) as pool:
        theirs_later = pool.submit(*reference, dockerfile, build_context, tag, work)
        ours = build_with_imgbuild(dockerfile, build_context, tag, tmp_path / "imgbuild")
        theirs = theirs_later.result()
    lines = differences(theirs, ours)
    assert not lines, report(producer_name, lines)
    assert ours.tree["home/appuser/id.txt"].uid == 1234  # the last RUN ran as the new user

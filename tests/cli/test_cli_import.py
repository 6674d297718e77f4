"""``imgbuild import``: a root filesystem directory or tar as a one-layer image.

Everything through the real CLI (``python -m imgbuild``), read back by real
consumers: skopeo and umoci read the store's OCI layout, runc runs the image.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from imagetools import make_busybox_rootfs, require_root_and_runc

EPOCH = 1_000_000  # older than every file made here: all mtimes clamp to it


@pytest.fixture(autouse=True)
def _root_and_runc():
    require_root_and_runc("device nodes, overlay mounts, runc")


def imgbuild(root: Path, *args: str, stdin: bytes | None = None, epoch: int | None = EPOCH):
    env = dict(os.environ)
    env.pop("SOURCE_DATE_EPOCH", None)
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    return subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(root), *args],
        input=stdin, capture_output=True, env=env, timeout=300,
    )  # fmt: skip


def ok(completed) -> str:
    assert completed.returncode == 0, completed.stderr.decode()
    return completed.stdout.decode()


def tool(*args: str) -> str:
    completed = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, f"{args}: {completed.stderr}"
    return completed.stdout


def inspect(root: Path, name: str) -> dict:
    return json.loads(ok(imgbuild(root, "inspect", name)))[0]


@pytest.fixture
def rootfs(tmp_path) -> Path:
    """A busybox system with what a real root filesystem has: a device node,
    a FIFO, a hardlink, an absolute symlink out of the tree."""
    root = make_busybox_rootfs(tmp_path / "rootfs")
    (root / "dev").mkdir()
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(root / "var" / "fifo", 0o640)
    (root / "etc" / "motd").write_text("imported\n")
    os.link(root / "etc" / "motd", root / "etc" / "motd.hard")
    (root / "etc" / "host-passwd").symlink_to("/etc/passwd")  # never followed on the host
    os.chown(root / "etc" / "motd", 1000, 50)
    return root


def test_directory_gnu_tar_and_bsdtar_import_to_the_same_layer(tmp_path, store_root, rootfs):
    gnu = tmp_path / "gnu.tar.gz"
    bsd = tmp_path / "bsd.tar.zst"
    tool("tar", "--numeric-owner", "-C", str(rootfs), "-czf", str(gnu), ".")
    tool("bsdtar", "--numeric-owner", "--zstd", "-C", str(rootfs), "-cf", str(bsd), ".")

    ids = {}
    for source, name in ((rootfs, "dir:1"), (gnu, "gnu:1"), (bsd, "bsd:1")):
        ids[name] = ok(imgbuild(store_root, "import", str(source), name, "-m", "imported")).strip()
    # Same tree, same SOURCE_DATE_EPOCH and message: one image, whatever carried the tree.
    assert len(set(ids.values())) == 1, ids
    config = inspect(store_root, "gnu:1")["ImageConfig"]
    assert len(config["rootfs"]["diff_ids"]) == 1
    assert config["history"] == [{"created": "1970-01-12T13:46:40Z", "comment": "imported"}]
    # Importing the directory again gives the same image (and tags it again).
    assert ok(imgbuild(store_root, "import", str(rootfs), "dir:2", "-m", "imported")).strip() == ids["dir:1"]


def test_imported_layer_is_sorted_and_read_by_skopeo_and_umoci(tmp_path, store_root, rootfs):
    ok(imgbuild(store_root, "import", str(rootfs), "base:1"))
    layout = f"{store_root}/oci:base:1"
    raw = json.loads(tool("skopeo", "inspect", "--raw", f"oci:{layout}"))
    assert len(raw["layers"]) == 1
    config = json.loads(tool("skopeo", "inspect", "--config", f"oci:{layout}"))
    assert config["history"][0]["comment"] == f"Imported from {rootfs}"

    blob = Path(store_root, "oci", "blobs", "sha256", raw["layers"][0]["digest"].split(":", 1)[1])
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.read_bytes()))) as tar:
        members = tar.getmembers()
    names = [member.name for member in members]
    assert names == sorted(names, key=lambda name: name.encode().split(b"/"))
    by_name = {member.name: member for member in members}
    assert by_name["dev/null"].ischr() and (by_name["dev/null"].devmajor, by_name["dev/null"].devminor) == (1, 3)
    assert by_name["var/fifo"].isfifo()
    assert by_name["etc/host-passwd"].issym() and by_name["etc/host-passwd"].linkname == "/etc/passwd"
    assert by_name["etc/motd.hard"].islnk() and by_name["etc/motd.hard"].linkname == "etc/motd"
    assert (by_name["etc/motd"].uid, by_name["etc/motd"].gid) == (1000, 50)
    assert {member.mtime for member in members} == {EPOCH}

    bundle = tmp_path / "bundle"
    tool("umoci", "unpack", "--image", layout, str(bundle))
    unpacked = bundle / "rootfs"
    assert (unpacked / "etc" / "motd").read_text() == "imported\n"
    assert os.readlink(unpacked / "etc" / "host-passwd") == "/etc/passwd"
    assert stat.S_ISCHR(os.lstat(unpacked / "dev" / "null").st_mode)


def test_change_sets_the_config_and_cmd_runs(tmp_path, store_root, rootfs):
    tarball = tmp_path / "rootfs.tar"
    tool("tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), ".")
    ok(imgbuild(
        store_root, "import", "--platform", "linux/amd64",
        "--change", 'ENV GREETING="hello from import" PATH=/bin',
        "--change", "WORKDIR /etc", "--change", "USER 1000:1000",
        "--change", "EXPOSE 8080/tcp", "--change", "LABEL org.example.kind=imported",
        "--change", "STOPSIGNAL SIGINT", "--change", "VOLUME /data",
        "--change", "ONBUILD RUN echo child", "--change", "HEALTHCHECK CMD true",
        "--change", 'CMD echo "$GREETING in $(pwd) as $(id -u)"; cat motd',
        "-", "changed:1", stdin=tarball.read_bytes(),
    ))  # fmt: skip
    config = inspect(store_root, "changed:1")["ImageConfig"]
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    container = config["config"]
    assert container["Env"] == ["GREETING=hello from import", "PATH=/bin"]
    assert container["WorkingDir"] == "/etc"
    assert container["User"] == "1000:1000"
    assert container["ExposedPorts"] == {"8080/tcp": {}}
    assert container["Labels"] == {"org.example.kind": "imported"}
    assert container["StopSignal"] == "SIGINT"
    assert container["Volumes"] == {"/data": {}}
    assert container["OnBuild"] == ["RUN echo child"]
    assert container["Healthcheck"] == {"Test": ["CMD-SHELL", "true"]}
    assert container["Cmd"] == ["/bin/sh", "-c", 'echo "$GREETING in $(pwd) as $(id -u)"; cat motd']

    ran = imgbuild(store_root, "run", "--network", "none", "changed:1")
    assert ran.returncode == 0, ran.stderr.decode()
    assert ran.stdout.decode() == "hello from import in /etc as 1000\nimported\n"


def test_change_refuses_what_docker_import_refuses(tmp_path, store_root, rootfs):
    for change, message in (
        ("RUN echo no", "RUN is not a valid change"),
        ("COPY a b", "COPY is not a valid change"),
        ("FROM busybox", "FROM is not a valid change"),
        ("BOGUS x", "unknown instruction"),
    ):
        completed = imgbuild(store_root, "import", "--change", change, str(rootfs), "bad:1")
        assert completed.returncode == 2, (change, completed.stderr)
        stderr = completed.stderr.decode()
        assert stderr.startswith("error: --change 1") and message.lower() in stderr.lower(), stderr
        assert "Traceback" not in stderr
    assert ok(imgbuild(store_root, "images", "-q")) == ""


def test_hostile_tar_is_refused_and_leaves_nothing(tmp_path, store_root):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        entry = tarfile.TarInfo("../../escaped")
        entry.size = 3
        tar.addfile(entry, io.BytesIO(b"bad"))
    completed = imgbuild(store_root, "import", "-", "evil:1", stdin=out.getvalue())
    assert completed.returncode == 1
    assert completed.stderr.decode().startswith("error: cannot import standard input:")
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert ok(imgbuild(store_root, "images", "-q")) == ""
    leftovers = [p for p in Path(store_root, "tmp").rglob("import-*")]
    assert leftovers == []


def test_import_of_a_missing_or_special_source_is_a_usage_error(tmp_path, store_root):
    missing = imgbuild(store_root, "import", str(tmp_path / "nope"), "x:1")
    assert missing.returncode == 2 and b"No such file or directory" in missing.stderr
    os.mkfifo(tmp_path / "fifo")
    special = imgbuild(store_root, "import", str(tmp_path / "fifo"), "x:1")
    assert special.returncode == 2 and b"neither a directory nor a tar file" in special.stderr
    for name in ("Bad Name:1", "app@sha256:" + "0" * 64):
        bad_name = imgbuild(store_root, "import", str(tmp_path), name)
        assert bad_name.returncode == 2 and bad_name.stderr.startswith(b"error: "), bad_name.stderr

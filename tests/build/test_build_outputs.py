"""Build outputs, read back by other tools: skopeo, umoci + runc, podman, a registry, files."""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from imgbuild.build.options import parse_output
from imgbuild.image import Image
from imgbuild.store import Store

pytestmark = pytest.mark.root

DOCKERFILE = """\
FROM busybox
COPY --chown=app:staff --chmod=750 tool.sh /opt/tool.sh
RUN rm /bin/vi && mkdir -p /data/sub && chown 1000:50 /data && ln -s ../opt/tool.sh /data/link \\
    && echo built > /data/sub/file && chmod 4755 /data/sub/file
USER app
WORKDIR /data
CMD ["sh", "-c", "echo running as $(id -un) in $(pwd); cat sub/file"]
"""


def _tool(*args: str) -> subprocess.CompletedProcess:
    completed = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, f"{args}: {completed.stderr}"
    return completed


def _skopeo_inspect(transport_ref: str, *flags: str) -> dict:
    return json.loads(_tool("skopeo", "inspect", *flags, transport_ref).stdout)


class Outputs:
    """Where the module's one build put things, and the image it made."""

    def __init__(self, root: Path, out: Path):
        self.root = root
        self.out = out
        self.store = Store(root)
        self.image: Image = self.store.load_image("outputs:1")


@pytest.fixture(scope="module")
def outputs(shared_root, tmp_path_factory, imgbuild_cli) -> Outputs:
    """One CLI build with every file output at once."""
    work = tmp_path_factory.mktemp("outputs")
    context, out = work / "ctx", work / "out"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    (context / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    completed = imgbuild_cli(
        shared_root, "-t", "outputs:1",
        "--output", f"type=oci,dest={out}/image.oci.tar",
        "--output", f"type=oci,dest={out}/layout,tar=false",
        "--output", f"type=docker,dest={out}/image.docker.tar",
        "--output", f"type=local,dest={out}/rootfs",
        "--output", f"type=tar,dest={out}/rootfs.tar",
        "--iidfile", f"{out}/iid", "--metadata-file", f"{out}/metadata.json",
        str(context),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    return Outputs(shared_root, out)


@pytest.fixture
def image_files(outputs, image_tree) -> dict:
    return image_tree(outputs.store, outputs.image)


def test_the_image_tree_is_what_the_dockerfile_says(image_files):
    assert "bin/vi" not in image_files and "bin/sh" in image_files
    tool = image_files["opt/tool.sh"]
    assert (tool.mode, tool.uid, tool.gid) == (0o750, 1000, 50)
    assert (image_files["data"].uid, image_files["data"].gid) == (1000, 50)
    assert image_files["data/link"].target == "../opt/tool.sh"
    assert image_files["data/sub/file"].mode == 0o4755


def test_iidfile_and_metadata_file(outputs):
    assert (outputs.out / "iid").read_text() == outputs.image.config_descriptor.digest
    metadata = json.loads((outputs.out / "metadata.json").read_text())
    assert metadata["containerimage.digest"] == outputs.image.digest
    assert metadata["containerimage.config.digest"] == outputs.image.config_descriptor.digest
    assert metadata["image.name"] == "outputs:1"


def test_local_store_is_read_by_skopeo_and_umoci(outputs, image_files, dir_tree, tmp_path):
    inspected = _skopeo_inspect(f"oci:{outputs.root}/oci:outputs:1")
    assert inspected["Digest"] == outputs.image.digest
    assert inspected["Layers"] == [layer.digest for layer in outputs.image.layers]
    tree = _unpack_and_tree(outputs.root / "oci", "outputs:1", tmp_path / "bundle", dir_tree)
    assert tree == image_files


def test_local_store_image_runs_under_runc_from_umoci(outputs, tmp_path):
    _tool("umoci", "unpack", "--image", f"{outputs.root}/oci:outputs:1", str(tmp_path / "bundle"))
    completed = _run_bundle(tmp_path / "bundle")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "running as app in /data\nbuilt\n"


def test_oci_archive(outputs):
    inspected = _skopeo_inspect(f"oci-archive:{outputs.out}/image.oci.tar")
    assert inspected["Digest"] == outputs.image.digest
    assert inspected["Env"] == outputs.image.config["config"]["Env"]


def test_oci_layout_directory(outputs, image_files, dir_tree, tmp_path):
    index = json.loads((outputs.out / "layout" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [outputs.image.digest]
    tree = _unpack_and_tree(outputs.out / "layout", "outputs:1", tmp_path / "bundle", dir_tree)
    assert tree == image_files


def test_docker_archive_loads_into_podman(outputs, tmp_path):
    inspected = _skopeo_inspect(f"docker-archive:{outputs.out}/image.docker.tar")
    assert (
        inspected["Layers"] == outputs.image.diff_ids
    )  # skopeo names docker-archive layers by content
    run_root = tempfile.mkdtemp(prefix="ib-podman-")  # podman wants a runroot under 50 characters
    try:
        podman = [
            "podman",
            "--root",
            str(tmp_path / "root"),
            "--runroot",
            run_root,
            "--storage-driver",
            "vfs",
        ]
        _tool(*podman, "load", "-i", f"{outputs.out}/image.docker.tar")
        image_id = _tool(
            *podman, "image", "inspect", "outputs:1", "--format", "{{.Id}}"
        ).stdout.strip()
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    assert "sha256:" + image_id == outputs.image.config_descriptor.digest


def test_local_rootfs_equals_the_image(outputs, image_files, dir_tree):
    """As the image has it, except that no setuid file lands on the host (docs/security.md, "Exports")."""
    expected = dict(image_files)
    setuid = expected["data/sub/file"]
    expected["data/sub/file"] = dataclasses.replace(setuid, mode=setuid.mode & ~0o6000)
    assert dir_tree(outputs.out / "rootfs") == expected


def test_rootfs_tar_equals_the_image(outputs, image_files, tar_tree):
    assert tar_tree(outputs.out / "rootfs.tar") == image_files


# --- compression ------------------------------------------------------------------------------


def _layout_manifest(layout: Path) -> dict:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":", 1)[1]
    return json.loads((layout / "blobs" / "sha256" / digest).read_text())


@pytest.mark.parametrize(
    "compression, suffix", [("zstd", "+zstd"), ("uncompressed", ""), ("gzip", "+gzip")]
)
def test_output_compression(build_df, tmp_path, compression, suffix, dir_tree, layout_tree):
    layout = tmp_path / "layout"
    built = build_df(
        "FROM busybox\nRUN echo compressed > /c\n",
        outputs=[parse_output(f"type=oci,dest={layout},tar=false,compression={compression}")],
        tags=[f"compressed:{compression}"],
    )
    manifest = _layout_manifest(layout)
    media_types = [layer["mediaType"] for layer in manifest["layers"]]
    assert media_types[-1] == "application/vnd.oci.image.layer.v1.tar" + suffix
    assert (
        media_types[0] == built.image.layers[0].media_type
    )  # the base image's layer is not rewritten
    config_digest = manifest["config"]["digest"]
    assert config_digest == built.image.config_descriptor.digest  # same config, same diff_ids
    assert layout_tree(layout) == built.tree()
    if compression != "zstd":  # umoci 0.4.7 does not know zstd layers
        _tool(
            "umoci",
            "unpack",
            "--image",
            f"{layout}:compressed:{compression}",
            str(tmp_path / "bundle"),
        )
        assert dir_tree(tmp_path / "bundle" / "rootfs") == built.tree()


def test_build_compression_zstd_also_on_cache_hits(build_df, store):
    gzipped = build_df("FROM busybox\nRUN echo zstd > /z\n", store=store)
    built = build_df(
        "FROM busybox\nRUN echo zstd > /z\n",
        context=gzipped.context,
        store=store,
        compression="zstd",
    )
    assert built.result.steps_run == 0
    assert built.image.layers[-1].media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert built.image.diff_ids == gzipped.image.diff_ids
    assert built.tree()["z"].data == b"zstd\n"


# --- registry ---------------------------------------------------------------------------------


def test_push_and_pull_back(outputs, registry, imgbuild_cli, tmp_path, image_files, image_tree):
    name = f"{registry.host}/build-tests/pushed:1"
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM outputs:1\nLABEL pushed=yes\n")
    completed = imgbuild_cli(outputs.root, "--push", "-t", name, str(context))
    assert completed.returncode == 0, completed.stderr
    pushed = Store(outputs.root).load_image(name)
    inspected = _skopeo_inspect(f"docker://{name}", "--tls-verify=false")
    assert inspected["Digest"] == pushed.digest
    assert inspected["Labels"]["pushed"] == "yes"
    fresh = tmp_path / "fresh"
    pulled = imgbuild_cli(fresh, "pull", name)
    assert pulled.returncode == 0, pulled.stderr
    back = Store(fresh).load_image(name)
    assert back.digest == pushed.digest
    assert image_tree(Store(fresh), back) == image_files


def test_output_type_registry_with_zstd(outputs, registry, imgbuild_cli, tmp_path):
    name = f"{registry.host}/build-tests/zstd:1"
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo registry-zstd > /r\n")
    completed = imgbuild_cli(
        outputs.root, "--output", f"type=registry,name={name},compression=zstd", str(context)
    )
    assert completed.returncode == 0, completed.stderr
    raw = json.loads(
        _tool("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{name}").stdout
    )
    assert raw["layers"][-1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"


def _unpack_and_tree(layout: Path, name: str, bundle: Path, dir_tree) -> dict:
    _tool("umoci", "unpack", "--image", f"{layout}:{name}", str(bundle))
    return dir_tree(bundle / "rootfs")


def _run_bundle(bundle: Path) -> subprocess.CompletedProcess:
    """Run an umoci bundle with runc as it is (its CMD, user and cwd), without a terminal."""
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config_path.write_text(json.dumps(config))
    container = f"imgbuild-test-{secrets.token_hex(6)}"
    try:
        return subprocess.run(
            ["runc", "run", "--bundle", str(bundle), container],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        subprocess.run(["runc", "delete", "--force", container], capture_output=True)

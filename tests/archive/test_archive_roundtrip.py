"""save/load round trips, checked by real consumers: skopeo and podman."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from imagetools import make_busybox_image, recorded_diff_id, temp_leftovers
from store.storetools import make_small_image

from imgbuild.archive.load import load
from imgbuild.archive.save import save
from imgbuild.errors import ImageNotFound
from imgbuild.image import OCI_LAYER
from imgbuild.store import Store
from imgbuild.store.fsck import check_store


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; .ci/run installs the test dependencies")
    return path


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, f"{argv} failed: {result.stderr}"
    return result.stdout


def skopeo_inspect(transport_ref: str, *flags: str) -> dict:
    return json.loads(run(need("skopeo"), "inspect", *flags, transport_ref))


@pytest.fixture
def short_tmp():
    path = Path(tempfile.mkdtemp(prefix="ib-", dir="/tmp"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def busybox_store(store_root):
    store = Store(store_root)
    image = make_busybox_image(store, "busybox:latest")
    return store, image


def test_oci_archive_is_read_by_skopeo_and_loads_back_to_the_same_digest(busybox_store, tmp_path):
    store, image = busybox_store
    archive = tmp_path / "busybox-oci.tar"
    save(store, ["busybox:latest"], archive, format="oci")

    inspected = skopeo_inspect(f"oci-archive:{archive}:busybox:latest")
    assert inspected["Digest"] == image.digest
    assert inspected["Layers"] == [layer.digest for layer in image.layers]

    second = Store(tmp_path / "second")
    loaded = load(second, archive)
    assert [(item.names, item.descriptor.digest) for item in loaded] == [
        (["busybox:latest"], image.digest)
    ]
    assert second.resolve("busybox:latest").digest == image.digest
    assert recorded_diff_id(second, image.layers[0].digest) == image.diff_ids[0]
    assert check_store(second).ok


def test_store_layout_is_read_by_skopeo_directly(busybox_store):
    store, image = busybox_store
    inspected = skopeo_inspect(f"oci:{store.layout}:busybox:latest")
    assert inspected["Digest"] == image.digest
    config = skopeo_inspect(f"oci:{store.layout}:busybox:latest", "--config")
    assert config["rootfs"]["diff_ids"] == image.diff_ids


def test_docker_archive_is_accepted_by_podman_load_and_skopeo(busybox_store, tmp_path, short_tmp):
    store, image = busybox_store
    archive = tmp_path / "busybox-docker.tar"
    save(store, ["busybox:latest"], archive, format="docker")

    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        repositories = json.load(tar.extractfile("repositories"))
    config_hex = image.config_descriptor.digest.split(":", 1)[1]
    assert manifest == [
        {
            "Config": f"blobs/sha256/{config_hex}",
            "RepoTags": ["busybox:latest"],
            "Layers": [f"blobs/sha256/{image.layers[0].digest.split(':', 1)[1]}"],
        }
    ]
    assert list(repositories) == ["busybox"]

    config = skopeo_inspect(f"docker-archive:{archive}", "--config")
    assert config["rootfs"]["diff_ids"] == image.diff_ids

    podman = [
        need("podman"),
        "--root", str(tmp_path / "podman-root"),
        "--runroot", str(short_tmp / "run"),  # podman wants it under 50 characters
        "--tmpdir", str(short_tmp / "tmp"),
        "--storage-driver", "vfs",
        "--events-backend", "none",
    ]  # fmt: skip
    output = run(*podman, "load", "-i", str(archive))
    assert "Loaded image: localhost/busybox:latest" in output
    images = json.loads(run(*podman, "images", "--format", "json"))
    assert [(i["Id"], i["Names"]) for i in images] == [(config_hex, ["localhost/busybox:latest"])]


def test_docker_archive_loads_back_to_the_same_manifest(busybox_store, tmp_path):
    store, image = busybox_store
    archive = tmp_path / "busybox-docker.tar"
    save(store, ["busybox"], archive, format="docker")
    second = Store(tmp_path / "second")
    load(second, archive)
    # Same config bytes, same gzip layer, same manifest recipe: the same digest.
    assert second.resolve("busybox:latest").digest == image.digest
    assert check_store(second).ok


def test_zstd_layers_become_plain_tars_in_a_docker_archive(store_root, tmp_path):
    store = Store(store_root)
    image = make_small_image(store, "zst:1", {"etc/hello": "hello from zstd"}, compression="zstd")
    archive = tmp_path / "zst-docker.tar"
    save(store, ["zst:1"], archive, format="docker")

    with tarfile.open(archive) as tar:
        (layer_name,) = json.load(tar.extractfile("manifest.json"))[0]["Layers"]
        layer_bytes = tar.extractfile(layer_name).read()
    assert "sha256:" + hashlib.sha256(layer_bytes).hexdigest() == image.diff_ids[0]
    assert layer_name == "blobs/sha256/" + image.diff_ids[0].split(":", 1)[1]

    config = skopeo_inspect(f"docker-archive:{archive}", "--config")
    assert config["rootfs"]["diff_ids"] == image.diff_ids
    second = Store(tmp_path / "second")
    load(second, archive)
    loaded = second.load_image("zst:1")
    assert loaded.config_descriptor.digest == image.config_descriptor.digest
    assert [layer.media_type for layer in loaded.layers] == [OCI_LAYER]


def test_docker_archive_written_by_skopeo_loads(busybox_store, tmp_path):
    store, image = busybox_store
    archive = tmp_path / "skopeo-docker.tar"
    run(
        need("skopeo"),
        "copy",
        f"oci:{store.layout}:busybox:latest",
        f"docker-archive:{archive}:busybox:copied",
    )

    second = Store(tmp_path / "second")
    loaded = load(second, archive)
    # skopeo writes docker.io/library/busybox:copied; the store names it as pull would.
    assert [item.names for item in loaded] == [["busybox:copied"]]
    copied = second.load_image("busybox:copied")
    assert copied.config_descriptor.digest == image.config_descriptor.digest
    assert copied.diff_ids == image.diff_ids
    assert check_store(second).ok


def test_oci_archive_written_by_skopeo_loads(busybox_store, tmp_path):
    store, image = busybox_store
    archive = tmp_path / "skopeo-oci.tar"
    run(
        need("skopeo"),
        "copy",
        f"oci:{store.layout}:busybox:latest",
        f"oci-archive:{archive}:busybox:copied",
    )
    second = Store(tmp_path / "second")
    load(second, archive)
    assert second.resolve("busybox:copied").digest == image.digest


def test_saving_a_repository_saves_all_its_tags_in_one_entry(busybox_store, tmp_path):
    store, image = busybox_store
    store.tag("busybox:1.36", image.manifest_descriptor)
    other = make_small_image(store, "other:1", {"f": "not saved"})
    archive = tmp_path / "all.tar"
    saved = save(store, ["busybox"], archive, format="docker")
    assert [(sorted(item.names), item.descriptor.digest) for item in saved] == [
        (["busybox:1.36", "busybox:latest"], image.digest)
    ]
    second = Store(tmp_path / "second")
    load(second, archive)
    assert sorted(name for name, _ in second.refs()) == ["busybox:1.36", "busybox:latest"]
    assert not second.has_blob(other.digest)


def test_an_image_saved_by_id_loads_untagged(busybox_store, tmp_path):
    store, image = busybox_store
    archive = tmp_path / "by-id.tar"
    save(store, [image.config_descriptor.digest.split(":", 1)[1][:12]], archive, format="oci")
    second = Store(tmp_path / "second")
    loaded = load(second, archive)
    assert [(item.names, item.descriptor.digest) for item in loaded] == [([], image.digest)]
    assert second.refs()[0][0] is None


def test_saving_is_deterministic(busybox_store, tmp_path):
    store, _ = busybox_store
    for fmt in ("oci", "docker"):
        first, second = tmp_path / f"1.{fmt}.tar", tmp_path / f"2.{fmt}.tar"
        save(store, ["busybox:latest"], first, format=fmt)
        save(store, ["busybox:latest"], second, format=fmt)
        assert first.read_bytes() == second.read_bytes()


def test_saving_an_unknown_image_leaves_no_file(busybox_store, tmp_path):
    store, _ = busybox_store
    with pytest.raises(ImageNotFound):
        save(store, ["busybox:latest", "nope:1"], tmp_path / "out.tar")
    assert list(tmp_path.glob("*out.tar*")) == []


def test_saving_a_corrupt_blob_fails_and_leaves_no_file(busybox_store, tmp_path):
    store, image = busybox_store
    path = store.blob_path(image.layers[0].digest)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="corrupt"):
        save(store, ["busybox:latest"], tmp_path / "out.tar")
    assert list(tmp_path.glob("*out.tar*")) == []


def test_load_reads_a_pipe(busybox_store, tmp_path):
    store, image = busybox_store
    archive = tmp_path / "busybox.tar"
    save(store, ["busybox:latest"], archive, format="docker")
    second = Store(tmp_path / "second")
    read_end, write_end = os.pipe()
    writer = subprocess.Popen(["cat", str(archive)], stdout=write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        load(second, pipe)
    writer.wait()
    assert second.resolve("busybox:latest").digest == image.digest
    assert temp_leftovers(second) == []  # the spooled copy is gone

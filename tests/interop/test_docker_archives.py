"""Docker 20.10 and imgbuild's archives, both ways.

``docker load`` reads what ``imgbuild save --format docker`` writes (the same
image ID and layers), and ``imgbuild load`` reads what ``docker save`` writes:
Go's archive/tar headers and Docker's legacy layout (``<id>/layer.tar``,
``<id>.json``, the same layer saved once for two tags).
"""

from __future__ import annotations

import json

from imagetools import make_busybox_image

from imgbuild.archive.load import load
from imgbuild.archive.save import save
from imgbuild.store import Store
from imgbuild.store.fsck import check_store


def test_docker_loads_our_docker_archive_and_we_load_docker_save(dockerd, store_root, tmp_path):
    store = Store(store_root)
    image = make_busybox_image(store, "interop/archive:1")
    ours = tmp_path / "imgbuild-saved.tar"
    save(store, ["interop/archive:1"], ours, format="docker")
    try:
        loaded = dockerd.run("load", "-i", str(ours)).stdout
        assert "Loaded image: interop/archive:1" in loaded
        (inspected,) = json.loads(dockerd.run("image", "inspect", "interop/archive:1").stdout)
        assert inspected["Id"] == image.config_descriptor.digest
        assert inspected["RootFS"]["Layers"] == image.diff_ids

        dockerd.run("tag", "interop/archive:1", "interop/archive:2")
        theirs = tmp_path / "docker-saved.tar"
        dockerd.run("save", "-o", str(theirs), "interop/archive:1", "interop/archive:2")
    finally:
        dockerd.run("rmi", "--force", "interop/archive:1", "interop/archive:2")

    second = Store(tmp_path / "second")
    items = load(second, theirs)
    assert sorted(name for item in items for name in item.names) == [
        "interop/archive:1",
        "interop/archive:2",
    ]
    for tag in ("interop/archive:1", "interop/archive:2"):
        back = second.load_image(tag)
        assert back.config_descriptor.digest == image.config_descriptor.digest
        assert back.diff_ids == image.diff_ids
    assert check_store(second).ok

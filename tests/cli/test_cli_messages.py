"""Messages read right: one image is ``1 image``, one line ``last 1 line``; a file that
is not an archive gives an imgbuild error from ``load``, not tar internals."""

from __future__ import annotations

import gzip

import pytest
from imagetools import make_busybox_image, require_root_and_runc

from imgbuild.store import Store


def test_fsck_counts_in_the_right_number(cli, store_root):
    make_busybox_image(Store(store_root), "busybox:latest")
    result = cli("fsck")
    assert result.exit_code == 0
    assert "checked 3 blobs and 1 image: no problems" in result.stdout


def test_a_failed_run_shows_its_last_line_in_the_singular(cli, store_root, tmp_path):
    require_root_and_runc()
    make_busybox_image(Store(store_root), "busybox:latest")
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo only-line; exit 3\n")
    result = cli("build", "--progress", "plain", str(tmp_path))
    assert result.exit_code == 1
    assert "last 1 line of its output:" in result.stderr and "lines of its output" not in result.stderr


def test_cache_prune_counts_in_the_right_number(cli, store_root, tmp_path):
    make_busybox_image(Store(store_root), "busybox:latest")
    (tmp_path / "f").write_text("x")
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY f /f\n")
    built = cli("build", "-q", str(tmp_path))
    assert built.exit_code == 0, built.stderr
    assert cli("rmi", built.stdout.strip()).exit_code == 0  # the cache entry's layer is no image's now
    result = cli("cache", "prune", "--dry-run")
    assert result.exit_code == 0
    assert "(1 entry, 1 blob, " in result.stdout


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"just some text\n", "is not a tar archive"),
        (gzip.compress(b"compressed text, still no tar\n"), "is not a tar archive"),
        (b"", "it is empty"),
    ],
)
def test_load_of_a_file_that_is_no_archive_is_an_imgbuild_error(cli, tmp_path, content, why):
    path = tmp_path / "not-an-archive.tar"
    path.write_bytes(content)
    result = cli("load", "-i", str(path))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and why in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr and "tarfile" not in result.stderr


def test_load_says_1_layer_not_1_layers(cli, tmp_path):
    import io
    import json
    import tarfile

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("f")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64, "sha256:" + "b" * 64]}}
    members = {
        "manifest.json": json.dumps([{"Config": "config.json", "RepoTags": ["x:1"], "Layers": ["l.tar"]}]).encode(),
        "config.json": json.dumps(config).encode(),
        "l.tar": layer.getvalue(),
    }
    archive = tmp_path / "docker.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    result = cli("load", "-i", str(archive))
    assert result.exit_code == 1
    assert "lists 2 diff_ids but manifest.json lists 1 layer" in result.stderr, result.stderr
    assert "1 layers" not in result.stderr

"""Hostile and damaged archives are refused, and the store stays as it was."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest
from imagetools import make_busybox_image, temp_leftovers

from imgbuild.archive import reader as archive_reader
from imgbuild.archive.load import load
from imgbuild.archive.save import save
from imgbuild.errors import ArchiveError, DigestMismatch
from imgbuild.store import Store


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def layer_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            add_file(tar, name, data)
    return buffer.getvalue()


def docker_archive(
    path,
    config_path="config.json",
    layer_paths=("layer.tar",),
    layer=None,
    diff_id=None,
    extra=None,
):
    """A minimal docker-archive; ``extra(tar)`` adds more entries."""
    layer = layer if layer is not None else layer_tar({"etc/hello": b"hello"})
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id or sha256(layer)] * len(layer_paths)},
    }
    manifest = [{"Config": config_path, "RepoTags": ["hostile:1"], "Layers": list(layer_paths)}]
    with tarfile.open(path, "w") as tar:
        add_file(tar, "config.json", json.dumps(config).encode())
        add_file(tar, "layer.tar", layer)
        add_file(tar, "manifest.json", json.dumps(manifest).encode())
        if extra:
            extra(tar)
    return path


@pytest.fixture
def store(store_root):
    return Store(store_root)


@pytest.fixture
def unchanged(store):
    """Asserts at the end of the test that the store is exactly as it was."""
    before = (sorted(store.all_blobs()), (store.layout / "index.json").read_bytes())
    yield
    after = (sorted(store.all_blobs()), (store.layout / "index.json").read_bytes())
    assert after == before
    assert temp_leftovers(store) == []


def test_a_well_formed_hand_made_archive_loads(store, tmp_path):
    # The control for the cases below: the same construction without the defect.
    load(store, docker_archive(tmp_path / "good.tar"))
    assert store.load_image("hostile:1").config["os"] == "linux"


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(lambda tar: add_file(tar, "../x", b"escaped"), id="dotdot-entry"),
        pytest.param(
            lambda tar: add_file(tar, "blobs/../../x", b"escaped"), id="dotdot-inside-entry"
        ),
        pytest.param(
            lambda tar: add_file(tar, "/tmp/imgbuild-hostile-x", b"escaped"), id="absolute-entry"
        ),
        pytest.param(lambda tar: add_link(tar, "evil", "../../x"), id="symlink-escape"),
        pytest.param(lambda tar: add_link(tar, "evil", "/etc/passwd"), id="absolute-symlink"),
        pytest.param(lambda tar: add_link(tar, "dir/evil", "../.."), id="symlink-dir-escape"),
        pytest.param(
            lambda tar: add_link(tar, "evil", "../x", tarfile.LNKTYPE), id="hardlink-escape"
        ),
    ],
)
def test_archives_with_escaping_entries_are_refused(store, unchanged, tmp_path, extra):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    path = docker_archive(nested / "hostile.tar", extra=extra)
    with pytest.raises(ArchiveError, match="unsafe"):
        load(store, path)
    assert not (tmp_path / "a" / "x").exists() and not (tmp_path / "x").exists()


def test_a_manifest_reference_outside_the_archive_is_refused(store, unchanged, tmp_path):
    outside = tmp_path / "config.json"
    outside.write_text("{}")
    path = docker_archive(tmp_path / "sub.tar", config_path="../config.json")
    with pytest.raises(ArchiveError, match="unsafe"):
        load(store, path)
    with pytest.raises(ArchiveError, match="unsafe"):
        load(store, docker_archive(tmp_path / "abs.tar", config_path=str(outside)))


def test_a_symlink_to_a_file_outside_is_not_followed(store, unchanged, tmp_path):
    # manifest.json itself is a link that would find a valid manifest next to the archive.
    def extra(tar):
        add_link(tar, "legacy/layer.tar", "../../layer.tar")

    path = docker_archive(tmp_path / "link.tar", layer_paths=("legacy/layer.tar",), extra=extra)
    with pytest.raises(ArchiveError, match="unsafe symlink"):
        load(store, path)


def test_symlinks_inside_the_archive_are_followed(store, tmp_path):
    # skopeo writes legacy layer directories whose layer.tar links to the real file.
    def extra(tar):
        add_link(tar, "legacy/layer.tar", "../layer.tar")

    load(
        store,
        docker_archive(tmp_path / "inside.tar", layer_paths=("legacy/layer.tar",), extra=extra),
    )
    assert store.resolve("hostile:1")


def test_a_layer_that_does_not_match_its_diff_id_is_refused(store, unchanged, tmp_path):
    path = docker_archive(tmp_path / "mismatch.tar", diff_id="sha256:" + "0" * 64)
    with pytest.raises(DigestMismatch, match="does not match the image config"):
        load(store, path)


def test_a_truncated_gzip_layer_is_refused(store, unchanged, tmp_path):
    compressed = gzip.compress(layer_tar({"etc/big": bytes(range(256)) * 4000}))
    path = docker_archive(tmp_path / "truncated.tar", layer=compressed[: len(compressed) // 2])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        load(store, path)


def test_an_oci_blob_that_does_not_match_its_digest_is_refused(store_root, tmp_path):
    source = Store(tmp_path / "source")
    image = make_busybox_image(source, "busybox:latest")
    good = tmp_path / "good.tar"
    save(source, ["busybox:latest"], good, format="oci")
    bad = tmp_path / "bad.tar"
    config_name = "blobs/sha256/" + image.config_descriptor.digest.split(":", 1)[1]
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for info in src:
            data = src.extractfile(info).read() if info.isfile() else None
            if info.name == config_name:  # same size, still valid JSON, other content
                data = data.replace(b'"os":"linux"', b'"os":"linuX"')
            dst.addfile(info, io.BytesIO(data) if data is not None else None)
    store = Store(store_root)
    with pytest.raises(DigestMismatch, match="does not match its content"):
        load(store, bad)
    assert store.refs() == []
    assert not store.has_blob(image.config_descriptor.digest)


def test_a_file_that_is_not_an_archive_is_refused(store, unchanged, tmp_path):
    path = tmp_path / "not.tar"
    path.write_bytes(b"this is not a tar file at all" * 100)
    with pytest.raises(ArchiveError, match="not a tar archive"):
        load(store, path)
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tar:
        add_file(tar, "README", b"hello")
    with pytest.raises(ArchiveError, match="neither an OCI archive"):
        load(store, empty)


def test_a_tar_bomb_of_entries_is_refused(store, unchanged, tmp_path, monkeypatch):
    monkeypatch.setattr(archive_reader, "MAX_MEMBERS", 50)

    def extra(tar):
        for i in range(60):
            add_file(tar, f"junk/{i}", b"")

    with pytest.raises(ArchiveError, match="tar bomb"):
        load(store, docker_archive(tmp_path / "bomb.tar", extra=extra))


def add_big_pax_header(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("padding")
    info.pax_headers = {"comment": "x" * (2 << 20)}  # read whole by a reader without a bound
    tar.addfile(info, io.BytesIO(b""))


def add_unknown_type(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("strange")
    info.type = b"Z"
    tar.addfile(info)


@pytest.mark.parametrize(
    "extra, message",
    [
        pytest.param(add_big_pax_header, "more than the 1048576 allowed", id="pax-header-over-1MiB"),
        pytest.param(add_unknown_type, "unsupported entry type", id="unknown-entry-type"),
    ],
)
def test_entries_gos_tar_reader_refuses_refuse_the_archive(store, unchanged, tmp_path, extra, message):
    # Docker's loader (Go's archive/tar, then its untar) refuses these too.
    with pytest.raises(ArchiveError, match=f"is damaged: .*{message}"):
        load(store, docker_archive(tmp_path / "odd.tar", extra=extra))

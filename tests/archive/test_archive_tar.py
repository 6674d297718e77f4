"""The archive as a tar: what ``save`` writes, and the tars other tools make that ``load`` reads.

``save`` writes its tar headers with imgbuild.layer.tarformat; ``load`` reads
archives with its TarReader. These tests pin the bytes written, and check the
forms real writers produce (GNU tar, bsdtar, compressors) and damaged archives.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import pytest
from imagetools import temp_leftovers
from store.storetools import make_small_image

from imgbuild.archive.load import load
from imgbuild.archive.save import save
from imgbuild.errors import ArchiveError
from imgbuild.layer.tarformat import BLOCK_SIZE
from imgbuild.layer.tarread import TarReader
from imgbuild.store import Store

# 1 MiB of zeros in a plain layer, between two files: its blob has a run of
# zero blocks that a file system can hold as a hole, so GNU tar --sparse writes
# it as a sparse entry with data on both sides of the hole.
ZEROS = {"etc/hello": b"hello", "etc/zeros": b"\0" * (1 << 20), "etc/zz": b"after the hole"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; .ci/run installs the test dependencies")
    return path


def run(*argv: str, stdout=subprocess.PIPE) -> None:
    result = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE)
    assert result.returncode == 0, f"{argv} failed: {result.stderr!r}"


@pytest.fixture
def source(tmp_path):
    store = Store(tmp_path / "source")
    image = make_small_image(store, "zeros:1", ZEROS, compression="uncompressed")
    return store, image


def test_saved_archives_have_plain_headers_and_end_on_a_record(source, tmp_path):
    store, image = source
    for fmt in ("oci", "docker"):
        archive = tmp_path / f"{fmt}.tar"
        save(store, ["zeros:1"], archive, format=fmt)
        data = archive.read_bytes()
        assert len(data) % (20 * BLOCK_SIZE) == 0
        reader = TarReader(io.BytesIO(data).read)
        entries = []
        while (entry := reader.next_entry()) is not None:
            entries.append((entry.name, entry.mode, entry.uid, entry.gid, entry.mtime_ns))
        names = [name for name, *_ in entries]
        assert names[:2] in ([b"oci-layout", b"blobs/"], [b"blobs/", b"blobs/sha256/"])
        assert {tuple(fields) for _, *fields in entries} <= {(0o644, 0, 0, 0), (0o755, 0, 0, 0)}
        first = data[:BLOCK_SIZE]
        assert first[265:345] == bytes(80)  # no user/group names, no device numbers


@pytest.mark.parametrize("compressor", ["gzip", "bzip2", "xz"])
@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_compressed_archives_load(source, tmp_path, compressor, fmt):
    # `docker save | gzip` is the common case; docker load reads bzip2 and xz too.
    store, image = source
    archive = tmp_path / "image.tar"
    save(store, ["zeros:1"], archive, format=fmt)
    compressed = tmp_path / f"image.tar.{compressor}"
    with open(compressed, "wb") as out:
        run(tool(compressor), "-c", str(archive), stdout=out)
    second = Store(tmp_path / "second")
    load(second, compressed)
    loaded = second.load_image("zeros:1")
    assert loaded.config_descriptor.digest == image.config_descriptor.digest
    assert [layer.digest for layer in loaded.layers] == [layer.digest for layer in image.layers]


def unpack(archive: Path, directory: Path) -> Path:
    directory.mkdir()
    run(tool("tar"), "-xf", str(archive), "-C", str(directory))
    # Turn the layer's zero runs into holes, so that --sparse finds something.
    for blob in (directory / "blobs" / "sha256").iterdir():
        run(tool("fallocate"), "--dig-holes", str(blob))
    return directory


@pytest.mark.parametrize(
    "repack",
    [
        pytest.param(["tar", "--format=posix", "--sparse", "-cf"], id="gnu-tar-pax-sparse"),
        pytest.param(["tar", "--format=gnu", "--sparse", "-cf"], id="gnu-tar-old-gnu-sparse"),
        pytest.param(["tar", "--format=ustar", "-cf"], id="gnu-tar-ustar"),
        pytest.param(["bsdtar", "--format=pax", "-cf"], id="bsdtar-pax"),
    ],
)
@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_archives_repacked_by_other_tar_writers_load(source, tmp_path, repack, fmt):
    store, image = source
    archive = tmp_path / "image.tar"
    save(store, ["zeros:1"], archive, format=fmt)
    tree = unpack(archive, tmp_path / "tree")
    repacked = tmp_path / "repacked.tar"
    run(tool(repack[0]), *repack[1:], str(repacked), "-C", str(tree), ".")
    second = Store(tmp_path / "second")
    load(second, repacked)
    loaded = second.load_image("zeros:1")
    assert loaded.config_descriptor.digest == image.config_descriptor.digest
    layer = second.read_blob(loaded.layers[0].digest)
    assert "sha256:" + hashlib.sha256(layer).hexdigest() == image.diff_ids[0]


@pytest.mark.parametrize("tar_format", ["posix", "gnu"])
def test_gnu_tar_really_wrote_sparse_entries(source, tmp_path, tar_format):
    # The control for the sparse cases above: the layer member is stored with
    # a hole between two data regions.
    store, image = source
    archive = tmp_path / "image.tar"
    save(store, ["zeros:1"], archive, format="oci")
    tree = unpack(archive, tmp_path / "tree")
    repacked = tmp_path / "repacked.tar"
    run(tool("tar"), f"--format={tar_format}", "--sparse", "-cf", str(repacked), "-C", str(tree), ".")
    reader = TarReader(io.BytesIO(repacked.read_bytes()).read)
    maps = {}
    while (entry := reader.next_entry()) is not None:
        maps[entry.name.rsplit(b"/", 1)[-1].decode()] = entry.sparse
    (first, _), (second, _) = maps[image.layers[0].digest.split(":", 1)[1]][:2]
    assert first == 0 and second > (1 << 19)


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "target")


def test_an_empty_file_is_not_an_archive_and_an_empty_tar_has_no_images(store, tmp_path):
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(ArchiveError, match="is not a tar archive"):
        load(store, empty)
    end_only = tmp_path / "end-only.tar"
    end_only.write_bytes(bytes(2 * BLOCK_SIZE))
    with pytest.raises(ArchiveError, match="neither an OCI archive"):
        load(store, end_only)
    assert store.refs() == [] and temp_leftovers(store) == []


@pytest.mark.parametrize("compressor", [None, "gzip"])
def test_a_truncated_archive_is_damaged(source, store, tmp_path, compressor):
    source_store, _ = source
    archive = tmp_path / "image.tar"
    save(source_store, ["zeros:1"], archive, format="docker")
    if compressor:
        with open(tmp_path / "image.tar.gz", "wb") as out:
            run(tool(compressor), "-c", str(archive), stdout=out)
        archive = tmp_path / "image.tar.gz"
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2 + 100])
    with pytest.raises(ArchiveError, match="is damaged"):
        load(store, cut)
    assert store.refs() == [] and temp_leftovers(store) == []

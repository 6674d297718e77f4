"""A full disk under the store: a clear error, the store as it was, and the next try works.

The store lives on a 64 MiB ext4 file system of its own, loop-mounted for the
test (and unmounted after it). A build whose COPY, or whose layer tar, does
not fit, a load of an image whose layers do not fit extracted, and a pull of an
image that does not fit, must end with a DiskFull
error (exit code 1, "No space left on device" and the path, no traceback),
leave nothing mounted and nothing in tmp/, keep the images already there
intact (``imgbuild fsck`` hashes every blob), and succeed once space is free.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cli.clitools import MODULE_RECORDER
from comparetools import mounts_under
from faults.faulttools import FILESYSTEM_BYTES, random_layer
from imagetools import make_busybox_image, temp_leftovers
from ocitools import compress_layer, push_layout_raw, write_layout

from imgbuild.store import Store

pytestmark = pytest.mark.root

PROJECT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    env["SOURCE_DATE_EPOCH"] = "0"
    env.pop("CI", None)
    return env


def _imgbuild(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(root), *args],
        capture_output=True, text=True, env=_env(), timeout=300,
    )


def _build(root: Path, context: Path, tag: str) -> subprocess.CompletedProcess:
    return _imgbuild(root, "build", "--progress", "plain", "-t", tag, str(context))


def _context(directory: Path, dockerfile: str, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(dockerfile)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def _free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def _fill(point: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free on ``point``'s file system."""
    filler = point / "filler"
    size = _free_bytes(point) - leave
    assert size > 0, f"only {_free_bytes(point)} bytes free on {point}"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * size)  # written, not sparse: it takes the blocks
        handle.flush()
        os.fsync(handle.fileno())
    return filler


def _assert_disk_full(done: subprocess.CompletedProcess, path: Path) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output
    assert "No space left on device" in done.stderr, output
    assert str(path) in done.stderr, output


def _assert_store_intact(root: Path, images: dict[str, str]) -> None:
    """Nothing mounted, nothing in tmp/, fsck clean, every earlier image where it was."""
    assert mounts_under(root) == []
    store = Store(root)
    assert temp_leftovers(store) == []
    fsck = _imgbuild(root, "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    for tag, digest in images.items():
        assert store.resolve(tag).digest == digest


def _store_with_an_image(root: Path, tmp_path: Path) -> dict[str, str]:
    """busybox plus one built image; their tags and manifest digests."""
    store = Store(root)
    make_busybox_image(store, "busybox:latest")
    context = _context(tmp_path / "keep", "FROM busybox\nCOPY keep.txt /keep.txt\n", {"keep.txt": b"keep\n"})
    done = _build(root, context, "keep")
    assert done.returncode == 0, done.stdout + done.stderr
    store = Store(root)
    return {tag: store.resolve(tag).digest for tag in ("busybox:latest", "keep:latest")}


def test_copy_bigger_than_the_disk_is_a_clear_error_and_the_store_stays_intact(small_fs, tmp_path):
    root = small_fs / "store"
    images = _store_with_an_image(root, tmp_path)
    big = random_layer(1, FILESYSTEM_BYTES * 3 // 2)  # incompressible, bigger than the file system
    context = _context(tmp_path / "ctx", "FROM busybox\nCOPY big /big\n", {"big": big})

    failed = _build(root, context, "big")
    _assert_disk_full(failed, root)
    assert "COPY big to /big" in failed.stderr
    _assert_store_intact(root, images)

    (context / "big").write_bytes(b"small now\n")  # the user takes the big file out
    done = _build(root, context, "big")
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_store_intact(root, images)


def test_a_last_copy_from_the_record_that_does_not_fit_is_the_same_clear_error(small_fs, tmp_path):
    """The COPY that a build record runs alone (builder/lastcopy.py) fails at
    its line, as the builder's does, and leaves the store as it was."""
    root = small_fs / "store"
    images = _store_with_an_image(root, tmp_path)
    context = _context(tmp_path / "ctx", "FROM busybox\nCOPY app/ /app/\nCMD [\"sh\"]\n", {})
    (context / "app").mkdir()
    (context / "app" / "main.sh").write_text("echo one\n")
    assert _build(root, context, "app").returncode == 0  # keeps a record
    images["app:latest"] = Store(root).resolve("app:latest").digest
    (context / "app" / "big").write_bytes(random_layer(1, FILESYSTEM_BYTES * 3 // 2))

    modules = tmp_path / "modules.txt"
    failed = subprocess.run(
        [sys.executable, "-c", MODULE_RECORDER, str(modules), "--root", str(root), "build", "--progress", "plain",
         "-t", "app", str(context)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert "imgbuild.builder.lastcopy" in modules.read_text().split()
    assert "imgbuild.builder.builder" not in modules.read_text().split()
    _assert_disk_full(failed, root)
    assert "Dockerfile:2" in failed.stderr and "COPY app/ /app/" in failed.stderr
    _assert_store_intact(root, images)

    (context / "app" / "big").write_bytes(b"small now\n")
    done = _build(root, context, "app")
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_store_intact(root, {tag: digest for tag, digest in images.items() if tag != "app:latest"})
    rebuilt = Store(root).load_image("app").config_descriptor.digest
    normal = subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(root), "build", "-q", "-t", "app", str(context)],
        capture_output=True, text=True, env={**_env(), "IMGBUILD_NO_BUILD_RECORD": "1"}, timeout=300,
    )  # fmt: skip
    assert normal.returncode == 0 and normal.stdout.strip() == rebuilt  # the builder's image


def test_layer_bigger_than_the_free_space_is_a_clear_error_and_the_next_build_works(small_fs, tmp_path):
    root = small_fs / "store"
    images = _store_with_an_image(root, tmp_path)
    size = 12 << 20
    # The RUN's output fits in the step's upperdir; its (incompressible) layer does not fit too.
    filler = _fill(small_fs, leave=size + size // 2)
    context = _context(tmp_path / "ctx", f"FROM busybox\nRUN head -c {size} /dev/urandom > /big\n", {})

    failed = _build(root, context, "big")
    _assert_disk_full(failed, root)
    assert "writing a blob into the store" in failed.stderr
    _assert_store_intact(root, images)

    filler.unlink()  # the user frees space
    done = _build(root, context, "big")
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_store_intact(root, images)


def test_pull_into_a_full_store_is_a_clear_error_and_leaves_no_partial_blob(small_fs, tmp_path, registry):
    layers = [compress_layer(random_layer(10 + n, 8 << 20), "uncompressed") for n in range(2)]
    layout = tmp_path / "layout"
    manifest = write_layout(layout, "big", layers, "imgbuild full-disk test")
    repository = f"faults/full-disk-{secrets.token_hex(4)}"
    push_layout_raw(layout, manifest, registry.host, repository, "1")
    reference = f"{registry.host}/{repository}:1"

    root = small_fs / "store"
    images = _store_with_an_image(root, tmp_path)
    filler = _fill(small_fs, leave=6 << 20)

    failed = _imgbuild(root, "pull", reference)
    _assert_disk_full(failed, root)
    _assert_store_intact(root, images)

    filler.unlink()
    done = _imgbuild(root, "pull", reference)
    assert done.returncode == 0, done.stdout + done.stderr
    pulled = Store(root).resolve(reference)
    assert pulled.digest == "sha256:" + hashlib.sha256(json.dumps(manifest).encode()).hexdigest()
    _assert_store_intact(root, {**images, reference: pulled.digest})


def test_base_image_that_does_not_fit_extracted_is_a_clear_error(small_fs, tmp_path):
    """The blobs fit, their extracted snapshots do not: ``load`` unpacks the layers as it
    copies them in, so it says so and keeps nothing; with room again, it loads and a
    build on the image works."""
    root = small_fs / "store"
    images = _store_with_an_image(root, tmp_path)
    # Zeros: a few KiB of gzip each, 12 MiB each extracted; only the extraction can fill the disk.
    layers = [compress_layer(_one_file_tar(f"zeros{n}", 12 << 20), "gzip") for n in range(2)]
    layout = tmp_path / "layout"
    write_layout(layout, "big:1", layers, "imgbuild full-disk test")
    archive = _oci_archive(layout, tmp_path / "big.tar")
    filler = _fill(small_fs, leave=10 << 20)

    failed = _imgbuild(root, "load", "-i", str(archive))
    _assert_disk_full(failed, root)
    assert "extracting layer entry" in failed.stderr
    _assert_store_intact(root, images)
    assert "big:1" not in [name for name, _ in Store(root).refs()]

    filler.unlink()
    loaded = _imgbuild(root, "load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    images["big:1"] = Store(root).resolve("big:1").digest
    context = _context(tmp_path / "ctx", "FROM big:1\nCOPY small /small\n", {"small": b"small\n"})
    done = _build(root, context, "on-big")
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_store_intact(root, images)


def _one_file_tar(name: str, size: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    return buffer.getvalue()


def _oci_archive(layout: Path, archive: Path) -> Path:
    subprocess.run(["tar", "-cf", str(archive), "-C", str(layout), "."], check=True)
    return archive


def _fill_completely(point: Path) -> Path:
    """A filler file that takes every last free block of ``point``'s file system."""
    filler = point / "filler"
    with open(filler, "wb", buffering=0) as handle:
        # then smaller pieces for the last partial megabyte, down to the last
        # byte: a file system this small has 1 KiB blocks, which fit an index.json
        for chunk in (1 << 20, 4 << 10, 512, 1):
            try:
                while handle.write(b"\0" * chunk):
                    pass
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
    return filler


def test_a_store_on_a_completely_full_disk_gives_a_clear_error_for_every_command(small_fs, tmp_path):
    """Not a byte free (not even for this process's lock file and work
    directory): every command that needs space says the disk is full, rather
    than a traceback; fsck, which only reads, works; nothing is harmed."""
    root = small_fs / "store"
    images = _store_with_an_image(root, tmp_path)
    filler = _fill_completely(small_fs)
    context = _context(tmp_path / "ctx", "FROM busybox\nLABEL full=yes\n", {})

    for args in (("images",), ("tag", "keep", "other"), ("build", "-t", "x", str(context))):
        failed = _imgbuild(root, *args)
        _assert_disk_full(failed, root)
        assert "Free space on it" in failed.stderr
    checked = _imgbuild(root, "fsck")  # only reads: it works, and finds nothing left behind
    assert checked.returncode == 0 and "no problems" in checked.stdout, checked.stdout + checked.stderr

    filler.unlink()
    _assert_store_intact(root, images)
    done = _imgbuild(root, "tag", "keep", "other")
    assert done.returncode == 0, done.stdout + done.stderr

"""Hostile layer tars as base images: made by hand, loaded with ``imgbuild load``, built FROM.

Each case writes an OCI image layout (tests/ocitools.py) around one or two
hand-made layers, packs it as an oci-archive and loads it
(``imgbuild.archive.load``, what ``imgbuild load`` runs; two cases use the CLI);
the CLI build FROM it then extracts the layers. The load or the build must refuse it
clearly, or the build succeeds and nothing outside the store changed. Names
and link targets aim at the host sentinel tree, so a write that leaves the
snapshot directory changes the sentinel.
"""

from __future__ import annotations

import gzip
import inspect
import io
import json
import os
import tarfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from advtools import TALLY, assert_clear_refusal, attempt_build, run_cli
from ocitools import LAYER_TYPES, LayerBlob, compress_layer, sha256_digest, write_layout

from imgbuild.archive.load import load
from imgbuild.errors import ImgbuildError, LayerError
from imgbuild.layer.extract import apply_layer

UP = "../" * 12


def _entry(tar: tarfile.TarFile, name: str, *, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
           link: str = "", mode: int = 0o644, devmajor: int = 0, devminor: int = 0,
           pax: dict | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.devmajor, info.devminor = devmajor, devminor
    if pax:
        info.pax_headers = pax
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def make_tar(entries: list[tuple], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, options in entries:
            _entry(tar, name, **options)
    return buffer.getvalue()


def f(data: bytes = b"pwned\n", **options) -> dict:
    return {"data": data, **options}


def sym(target: str) -> dict:
    return {"kind": tarfile.SYMTYPE, "link": target}


def hard(target: str) -> dict:
    return {"kind": tarfile.LNKTYPE, "link": target}


def d(mode: int = 0o755) -> dict:
    return {"kind": tarfile.DIRTYPE, "mode": mode}


# (id, entries; S in names and targets is the sentinel path without its leading "/")
TAR_CASES = [
    ("dotdot-file", [("../pwn", f())]),
    ("dotdot-climb-to-sentinel", [(UP + "S/pwn", f())]),
    ("dotdot-overwrite-sentinel", [(UP + "S/file", f())]),
    ("dot-dotdot", [("./../pwn", f())]),
    ("inner-dotdot", [("a/../../pwn", f())]),
    ("absolute-new-file", [("/S/pwn", f())]),
    ("absolute-overwrite", [("/S/file", f())]),
    ("absolute-dir", [("/S/newdir", d())]),
    ("dotdot-dir", [(UP + "S/newdir", d())]),
    ("symlink-then-write", [("l", sym("/S")), ("l/pwn", f())]),
    ("symlink-then-overwrite", [("l", sym("/S/dir")), ("l/inner", f())]),
    ("symlink-dotdot-then-write", [("l", sym(UP.rstrip("/"))), ("l/S/file", f())]),
    ("symlink-relative-then-write", [("a", d()), ("a/l", sym("../" + UP + "S")), ("a/l/pwn", f())]),
    ("symlink-chain-then-write", [("a", sym("b")), ("b", sym("/S")), ("a/pwn", f())]),
    ("symlink-file-then-write", [("l", sym("/S/file")), ("l", f())]),
    ("symlink-then-dir", [("l", sym("/S")), ("l/newdir", d())]),
    ("symlink-then-symlink", [("l", sym("/S")), ("l/x", sym("/etc/passwd"))]),
    ("symlink-then-hardlink", [("l", sym("/S")), ("f", f()), ("l/h", hard("f"))]),
    ("symlink-then-device", [("l", sym("/S")), ("l/mem", {"kind": tarfile.CHRTYPE, "devmajor": 1, "devminor": 1})]),
    ("symlink-then-chmod-dir", [("l", sym("/S/dir")), ("l", d(0o777))]),
    ("hardlink-absolute-out", [("h", hard("/S/file"))]),
    ("hardlink-dotdot-out", [("h", hard(UP + "S/file"))]),
    ("hardlink-through-symlink", [("l", sym("/S")), ("h", hard("l/file"))]),
    ("hardlink-then-write", [("h", hard("/S/file")), ("h", f())]),
    ("hardlink-to-missing", [("h", hard("nothing-here"))]),
    ("hardlink-to-self", [("h", hard("h"))]),
    ("char-device-mem", [("mem", {"kind": tarfile.CHRTYPE, "devmajor": 1, "devminor": 1, "mode": 0o666})]),
    ("block-device", [("sda", {"kind": tarfile.BLKTYPE, "devmajor": 8, "devminor": 0, "mode": 0o666})]),
    ("fifo", [("p", {"kind": tarfile.FIFOTYPE})]),
    ("setuid-root-file", [("su", f(b"#!/bin/sh\n", mode=0o6755))]),
    ("setuid-dir-sticky", [("t", d(0o7777))]),
    ("whiteout-dotdot", [(UP + "S/.wh.file", f(b""))]),
    ("whiteout-absolute", [("/S/.wh.file", f(b""))]),
    ("opaque-absolute", [("/S/.wh..wh..opq", f(b""))]),
    ("whiteout-through-symlink", [("l", sym("/S")), ("l/.wh.file", f(b""))]),
    ("opaque-through-symlink", [("l", sym("/S/dir")), ("l/.wh..wh..opq", f(b""))]),
    ("pax-path-dotdot", [("innocent", f(pax={"path": UP + "S/pwn"}))]),
    ("pax-linkpath-out", [("h", {"kind": tarfile.LNKTYPE, "link": "x", "pax": {"linkpath": "/S/file"}})]),
    ("gnu-longname-dotdot", [(UP * 10 + "S/pwn", f())]),
    ("nul-in-name", [("a\0../../pwn", f())]),
    ("empty-name", [("", f())]),
    ("dot-name-file", [(".", f())]),
]


def _layout_archive(tmp_path: Path, tag: str, layers: list[LayerBlob], diff_ids: list[str] | None = None,
                    damage: Callable[[Path, dict], None] | None = None) -> Path:
    layout = tmp_path / "layout"
    manifest = write_layout(layout, tag, layers, "adversarial")
    if diff_ids is not None:
        _rewrite_config(layout, manifest, diff_ids)
    if damage is not None:
        damage(layout, manifest)
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        for name in sorted(os.listdir(layout)):
            tar.add(layout / name, arcname=name)
    return archive


def _rewrite_config(layout: Path, manifest: dict, diff_ids: list[str]) -> None:
    """Change the config's diff_ids, keeping the layout's digests consistent."""
    blobs = layout / "blobs" / "sha256"
    old = manifest["config"]["digest"]
    config = json.loads((blobs / old.split(":")[1]).read_bytes())
    config["rootfs"]["diff_ids"] = diff_ids
    data = json.dumps(config).encode()
    digest = sha256_digest(data)
    (blobs / digest.split(":")[1]).write_bytes(data)
    manifest["config"].update(digest=digest, size=len(data))
    raw = json.dumps(manifest).encode()
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest=sha256_digest(raw), size=len(raw))
    (blobs / sha256_digest(raw).split(":")[1]).write_bytes(raw)
    (layout / "index.json").write_text(json.dumps(index))


def try_base_image(tmp_path: Path, adv_root: Path, store, tag: str, layers: list[LayerBlob], **options) -> None:
    """Load the image; if that works, build FROM it with the CLI (which extracts the layers)."""
    archive = _layout_archive(tmp_path, tag, layers, **options)
    # `imgbuild load` is this call and an error print; the API saves a process per case
    try:
        load(store, archive)
    except ImgbuildError as error:
        assert str(error).strip()
        print(f"{tag}: load refused: {str(error)[:300]}")
        TALLY.mark("refused")
        return
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_bytes(b"ok\n")
    (ctx / "Dockerfile").write_text(f"FROM {tag}\nCOPY f /f\n")
    attempt_build(adv_root, store, ctx, tag + "-built", timeout=60)


def _names(entries: list[tuple], sentinel: Path) -> list[tuple]:
    s = str(sentinel).lstrip("/")

    def fix(value):
        return value.replace("S", s) if isinstance(value, str) else value

    fixed = []
    for name, options in entries:
        options = {k: ({pk: fix(pv) for pk, pv in v.items()} if k == "pax" else fix(v)) for k, v in options.items()}
        fixed.append((fix(name), options))
    return fixed


@pytest.mark.parametrize("case", TAR_CASES, ids=[case[0] for case in TAR_CASES])
def test_hostile_layer_entries(case, tmp_path, sentinel, adv_root, store):
    name, entries = case
    fmt = tarfile.GNU_FORMAT if name.startswith("gnu-") else tarfile.PAX_FORMAT
    try:
        tar = make_tar(_names(entries, sentinel.path), fmt)
    except ValueError as error:  # Python's tarfile will not even write it: nothing to try
        pytest.fail(f"case cannot be written: {error}")
    try_base_image(tmp_path, adv_root, store, f"adv/layer-{name}:1", [compress_layer(tar, "gzip")])


# --- damaged and lying blobs -----------------------------------------------------------

PLAIN = make_tar([("etc/hello", f(b"hello\n" * 2000)), ("bin/x", f(os.urandom(20000)))])


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def _blob(data: bytes, how: str, diff_id: str) -> LayerBlob:
    return LayerBlob(data, LAYER_TYPES[how], diff_id)


def _wrong_blob_bytes(layout: Path, manifest: dict) -> None:
    digest = manifest["layers"][0]["digest"].split(":")[1]
    path = layout / "blobs" / "sha256" / digest
    path.write_bytes(_flip(path.read_bytes()))


def _gzip_header_only() -> bytes:
    return gzip.compress(b"")[:10]


def _huge_size_header() -> bytes:
    """A file entry whose size field (base-256) claims 1 TiB, followed by 1 KiB."""
    info = tarfile.TarInfo("big")
    info.size = 1 << 40
    header = info.tobuf(tarfile.GNU_FORMAT)
    return header + b"\0" * 1024


def _sparse_pax_header() -> bytes:
    """A PAX 1.0 GNU sparse file claiming a real size of 1 PiB with one tiny data block."""
    info = tarfile.TarInfo("GNUSparseFile.0/sparse")
    data = b"1\n1125899906842000\n512\n".ljust(512, b"\0") + b"x" * 512
    info.size = len(data)
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": "sparse",
        "GNU.sparse.realsize": str(1 << 50),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _gzip_bomb_of_headers() -> bytes:
    """A layer of tar headers and nothing else that never ends in a valid way."""
    return gzip.compress(b"\xff" * 512 * 4000)


def _damaged_cases() -> list[tuple[str, LayerBlob, dict]]:
    diff = sha256_digest(PLAIN)
    gz = compress_layer(PLAIN, "gzip").data
    zst = compress_layer(PLAIN, "zstd").data
    huge = _huge_size_header()
    sparse = _sparse_pax_header()
    return [
        ("truncated-gzip", _blob(_truncate(gz), "gzip", diff), {}),
        ("corrupted-gzip", _blob(_flip(gz), "gzip", diff), {}),
        ("gzip-header-only", _blob(_gzip_header_only(), "gzip", diff), {}),
        ("gzip-trailing-garbage", _blob(gz + b"garbage" * 10, "gzip", diff), {}),
        ("truncated-zstd", _blob(_truncate(zst), "zstd", diff), {}),
        ("corrupted-zstd", _blob(_flip(zst), "zstd", diff), {}),
        ("zstd-as-gzip-type", _blob(zst, "gzip", diff), {}),
        ("truncated-tar", _blob(_truncate(PLAIN), "uncompressed", sha256_digest(_truncate(PLAIN))), {}),
        ("wrong-diff-id", _blob(gz, "gzip", "sha256:" + "0" * 64), {}),
        ("malformed-diff-id", _blob(gz, "gzip", "sha256:../../etc"), {}),
        ("wrong-blob-digest", _blob(gz, "gzip", diff), {"damage": _wrong_blob_bytes}),
        ("huge-size-header", _blob(huge, "uncompressed", sha256_digest(huge)), {}),
        ("huge-sparse-header", _blob(sparse, "uncompressed", sha256_digest(sparse)), {}),
        ("garbage-headers", _blob(_gzip_bomb_of_headers(), "gzip", sha256_digest(b"\xff" * 512 * 4000)), {}),
        ("random-bytes", _blob(os.urandom(4096), "uncompressed", "sha256:" + "1" * 64), {}),
    ]


DAMAGED = _damaged_cases()


@pytest.mark.parametrize("case", DAMAGED, ids=[case[0] for case in DAMAGED])
def test_damaged_or_lying_layer(case, tmp_path, sentinel, adv_root, store):
    name, blob, options = case
    try_base_image(tmp_path, adv_root, store, f"adv/blob-{name}:1", [blob], **options)


@pytest.mark.parametrize("name", ["wrong-blob-digest", "truncated-zstd"])
def test_damaged_layer_through_load_cli(name, tmp_path, sentinel, adv_root):
    _, blob, options = next(case for case in DAMAGED if case[0] == name)
    archive = _layout_archive(tmp_path, f"adv/cli-{name}:1", [blob], **options)
    assert_clear_refusal(run_cli(["load", "-i", str(archive)], adv_root, timeout=30))


# --- a tar bomb: 1,000,001 tiny entries --------------------------------------------------


def _many_entries_gzip(count: int) -> bytes:
    """``count`` empty regular files (one 512-byte header each), gzipped: ~1 MB."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    parts = []
    batch = []
    for n in range(count):
        info = tarfile.TarInfo(f"{n % 1000}")
        batch.append(info.tobuf(tarfile.USTAR_FORMAT))
        if len(batch) == 10000:
            parts.append(compressor.compress(b"".join(batch)))
            batch = []
    parts.append(compressor.compress(b"".join(batch) + b"\0" * 1024))
    parts.append(compressor.flush())
    return b"".join(parts)


# The full 1,000,001 entries against the store's own cap take ~90 s here (about
# 75 us per entry): IMGBUILD_ADVERSARIAL_FULL=1 runs that; the default run sends
# 5,001 entries against a cap of 5,000, the same code path.
FULL = os.environ.get("IMGBUILD_ADVERSARIAL_FULL") == "1"


def test_many_entries_refused_within_bounds(tmp_path, sentinel, store):
    """A tar bomb of tiny entries is refused at the entry cap, in bounded time."""
    default_cap = inspect.signature(apply_layer).parameters["max_entries"].default
    assert default_cap == 1_000_000
    cap = default_cap if FULL else 5_000
    blob = _many_entries_gzip(cap + 1)
    assert len(blob) < 8 << 20
    target = tmp_path / "snapshot"
    target.mkdir()
    started = time.monotonic()
    with pytest.raises(LayerError, match=f"more than {cap} entries"):
        if FULL:
            apply_layer(io.BytesIO(blob), target, media_type=LAYER_TYPES["gzip"])
        else:
            apply_layer(io.BytesIO(blob), target, media_type=LAYER_TYPES["gzip"], max_entries=cap)
    elapsed = time.monotonic() - started
    assert elapsed < cap / 300, f"took {elapsed:.0f} s for {cap} entries"
    assert sorted(os.listdir(target)) == sorted(str(n) for n in range(1000))
    TALLY.mark("refused")

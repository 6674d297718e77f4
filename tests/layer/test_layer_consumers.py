"""Layers we write are accepted by real consumers: umoci and GNU tar.

The OCI layout is built by hand here (not with imgbuild's image code) so that
this test depends on the layer package alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from layer.layer_support import apply_blob, build_every_kind, read_tree, write_blob

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for devices, chown and xattrs"),
    pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed"),
]


def add_blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layout(layout: Path, layers: list[tuple[Path, object]], tag: str) -> None:
    """A one-image OCI layout holding ``layers`` (blob path, LayerDigests), tagged ``tag``."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layer_descriptors = []
    for blob, digests in layers:
        descriptor = add_blob(layout, blob.read_bytes())
        assert descriptor["digest"] == digests.digest
        layer_descriptors.append({"mediaType": digests.media_type, **descriptor})
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digests.diff_id for _, digests in layers]},
        "history": [{"created_by": "test"} for _ in layers],
    }
    config_descriptor = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **add_blob(layout, json.dumps(config).encode()),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_descriptor,
        "layers": layer_descriptors,
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **add_blob(layout, json.dumps(manifest).encode()),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))


def umoci_unpack(layout: Path, tag: str, bundle: Path) -> Path:
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{tag}", os.fspath(bundle)],
        check=True,
        capture_output=True,
    )
    return bundle / "rootfs"


def base_tree(root: Path) -> None:
    build_every_kind(root)
    # Whiteouts belong in upper layers; this one is the base.
    (root / "removed").unlink()
    os.removexattr(root / "opaque", "trusted.overlay.opaque")


def changes_through_overlay(base: Path, upper: Path, overlay) -> None:
    merged = overlay([base], upper=upper)
    (merged / "etc" / "hostname").unlink()  # a whiteout
    shutil.rmtree(merged / "data")  # an opaque directory...
    (merged / "data").mkdir()
    (merged / "data" / "fresh").write_bytes(b"fresh")  # ...with new content
    (merged / "bin" / "tool").chmod(0o755)  # a metadata-only copy-up
    overlay.unmount(merged)


def without_dir_mtimes(tree: dict) -> dict:
    # Deleting files inside a directory changes its mtime; consumers differ on
    # whether they restore it afterwards, so directory times are not compared.
    return {
        p: v[:3] + ((None,) if v[0].startswith("d") else v[3:4]) + v[4:] for p, v in tree.items()
    }


@pytest.mark.parametrize("compression", ["gzip", "uncompressed"])  # umoci 0.4 has no zstd
def test_umoci_unpacks_our_layers_like_our_overlay_shows_them(
    tmp_path: Path, overlay, compression: str
):
    base, upper = tmp_path / "base", tmp_path / "upper"
    base_tree(base)
    upper.mkdir()
    changes_through_overlay(base, upper, overlay)
    layers = [
        (tmp_path / "base.blob", write_blob(base, tmp_path / "base.blob", compression=compression)),
        (
            tmp_path / "upper.blob",
            write_blob(upper, tmp_path / "upper.blob", compression=compression),
        ),
    ]
    oci_layout(tmp_path / "oci", layers, "test")

    rootfs = umoci_unpack(tmp_path / "oci", "test", tmp_path / "bundle")

    # What our snapshots show through a real overlay mount...
    for index, (blob, _) in enumerate(layers):
        apply_blob(blob, tmp_path / f"snap{index}")
    merged = overlay([tmp_path / "snap1", tmp_path / "snap0"])
    ours = without_dir_mtimes(read_tree(merged))
    # ...is what umoci makes of the same layers.
    theirs = without_dir_mtimes(read_tree(rootfs))
    for path in sorted(set(theirs) | set(ours)):
        assert theirs.get(path) == ours.get(path), path
    assert b"etc/hostname" not in theirs
    assert [p for p in theirs if p.startswith(b"data/")] == [b"data/fresh"]
    assert theirs[b"bin/tool"][0] == "-rwxr-xr-x"
    assert ("security.capability",) == tuple(
        name for name, _ in theirs[b"bin/tool"][7] if name.startswith("security.")
    )


def test_gnu_tar_lists_and_extracts_our_layer(tmp_path: Path):
    changeset = tmp_path / "changeset"
    base_tree(changeset)
    long_dir = changeset / ("l" * 150)
    long_dir.mkdir()
    (long_dir / "file").write_bytes(b"long")
    os.utime(long_dir, (1_600_000_000, 1_600_000_000))
    os.utime(changeset, (1_600_000_000, 1_600_000_000))
    blob = tmp_path / "layer.tar.gz"
    write_blob(changeset, blob)

    listing = subprocess.run(
        ["tar", "-tvf", os.fspath(blob)], check=True, capture_output=True, text=True
    ).stdout

    assert "-rwsr-xr-x 0/0" in listing and "bin/tool" in listing
    assert "hrw-r--r-- 0/0" in listing and "data/big-link link to data/big" in listing
    assert "relative-link -> data/big" in listing
    assert re.search(r"^crw-rw-rw- 0/0 +1,3 .* dev/null$", listing, re.MULTILINE)
    assert "l" * 150 + "/file" in listing
    assert "3000000/3000001" in listing  # uid beyond ustar, from the PAX record

    extracted = tmp_path / "extracted"
    extracted.mkdir()
    subprocess.run(
        [
            "tar",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpf",
            os.fspath(blob),
            "-C",
            os.fspath(extracted),
        ],
        check=True,
    )
    assert read_tree(extracted) == read_tree(changeset)

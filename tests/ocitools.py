"""Hand-made OCI images: layer tar files in, an OCI image layout out, pushed to a registry.

The interop tests make layers with other tools (GNU tar, bsdtar, Python's
tarfile, ...) and need them in a registry byte for byte: the layout is written
here (blobs, config with the layers' diff_ids, manifest, index.json) and
pushed with ``skopeo copy oci:...``, which passes compressed blobs through
unchanged. skopeo gzips an uncompressed layer on its way to a registry, so
that one is pushed with the registry API itself (``push_layout_raw``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import requests

from imgbuild.image import Platform

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "uncompressed": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "gzip-members": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
BUSYBOX_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class LayerBlob:
    data: bytes  # the blob as pushed
    media_type: str
    diff_id: str  # sha256 of the uncompressed tar


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def python_tar(files: dict[str, bytes]) -> bytes:
    """A layer tar of regular files (mode 0644, owner 0, mtime 0) written by Python's tarfile."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _gzip_members(tar: bytes, members: int) -> bytes:
    """Several gzip members one after another: a valid gzip file (RFC 1952 section 2.2)."""
    step = -(-len(tar) // members)
    return b"".join(gzip.compress(tar[i : i + step], mtime=0) for i in range(0, len(tar), step))


def compress_layer(tar: bytes, how: str) -> LayerBlob:
    """The layer ``tar`` as a blob: uncompressed, gzip (the gzip tool), zstd (the zstd
    tool), or gzip-members (three gzip members concatenated)."""
    if how == "uncompressed":
        data = tar
    elif how == "gzip":
        data = _pipe(["gzip", "-n", "-6", "-c"], tar)
    elif how == "zstd":
        data = _pipe(["zstd", "-q", "-3", "-c"], tar)
    elif how == "gzip-members":
        data = _gzip_members(tar, 3)
    else:
        raise ValueError(f"unknown compression {how!r}")
    return LayerBlob(data, LAYER_TYPES[how], sha256_digest(tar))


def _pipe(argv: list[str], data: bytes) -> bytes:
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def image_config(diff_ids: list[str], created_by: str) -> dict:
    """A config like a busybox image's: PATH, ``sh`` as the command, one history
    entry per layer."""
    platform = Platform.host()
    config = {
        "architecture": platform.architecture,
        "os": "linux",
        "config": {"Env": [BUSYBOX_PATH], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "2026-01-01T00:00:00Z", "created_by": f"{created_by} (layer {n})"}
            for n in range(1, len(diff_ids) + 1)
        ],
    }
    if platform.variant:
        config["variant"] = platform.variant
    return config


def write_layout(directory: Path, tag: str, layers: list[LayerBlob], created_by: str) -> dict:
    """Write an OCI image layout holding one image tagged ``tag``; returns its manifest."""
    shutil.rmtree(directory, ignore_errors=True)
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = sha256_digest(data)
        (blobs / digest.split(":", 1)[1]).write_bytes(data)
        return digest

    config = json.dumps(image_config([layer.diff_id for layer in layers], created_by)).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": put(config), "size": len(config)},
        "layers": [
            {"mediaType": layer.media_type, "digest": put(layer.data), "size": len(layer.data)}
            for layer in layers
        ],
    }
    raw = json.dumps(manifest).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": put(raw),
                "size": len(raw),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return manifest


def _layout_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def push_layout_raw(layout: Path, manifest: dict, host: str, repository: str, tag: str) -> None:
    """Push the image with the OCI distribution API (monolithic uploads), bytes unchanged."""
    base = f"http://{host}/v2/{repository}/"
    for descriptor in [manifest["config"], *manifest["layers"]]:
        started = requests.post(urljoin(base, "blobs/uploads/"), timeout=30)
        started.raise_for_status()
        location = urljoin(base, started.headers["Location"])
        separator = "&" if "?" in location else "?"
        finished = requests.put(
            f"{location}{separator}digest={descriptor['digest']}",
            data=_layout_blob(layout, descriptor["digest"]),
            headers={"Content-Type": "application/octet-stream"},
            timeout=60,
        )
        finished.raise_for_status()
    answer = requests.put(
        urljoin(base, f"manifests/{tag}"),
        data=json.dumps(manifest).encode(),
        headers={"Content-Type": manifest["mediaType"]},
        timeout=30,
    )
    answer.raise_for_status()

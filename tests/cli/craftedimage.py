"""Images written entry by entry (Python's tarfile, an OCI layout by hand), so a
test knows every byte, whiteout and history line and can work figures out itself."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from imgbuild.image import Platform

# An entry: ("dir", name) | ("file", name, data[, mode[, uid=gid[, mtime]]]) | ("symlink", name, target) | ("whiteout", name)
#           | ("opaque", dirname) | ("hardlink", name, target)


def layer_tar(entries: list[tuple]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            kind, name = entry[0], entry[1]
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            data = b""
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "file":
                data = entry[2]
                info.size, info.mode = len(data), entry[3] if len(entry) > 3 else 0o644
                if len(entry) > 4:
                    info.uid = info.gid = entry[4]
                if len(entry) > 5:
                    info.mtime = entry[5]
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry[2]
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, entry[2]
            elif kind == "whiteout":
                head, _, base = name.rpartition("/")
                info.name = f"{head}/.wh.{base}" if head else f".wh.{base}"
            elif kind == "opaque":
                info.name = f"{name}/.wh..wh..opq"
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_layout(
    directory: Path, tag: str, layers: list[list[tuple]], history: list[dict], config: dict | None = None
) -> dict:
    """An OCI layout with one image: gzip layers, ``history`` as given; returns the config."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> dict:
        digest = _digest(data)
        (blobs / digest.split(":", 1)[1]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    tars = [layer_tar(entries) for entries in layers]
    platform = Platform.host()
    document = {
        "architecture": platform.architecture,
        "os": "linux",
        "config": config or {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [_digest(tar) for tar in tars]},
        "history": history,
    }
    if platform.variant:
        document["variant"] = platform.variant
    config_blob = put(json.dumps(document).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(gzip.compress(tar, mtime=0))}
            for tar in tars
        ],
    }
    index_entry = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **put(json.dumps(manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    index_path = directory / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["manifests"].append(index_entry)
    index_path.write_text(json.dumps(index))
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return document

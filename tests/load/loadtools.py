"""Helpers for the load test: small base images, and what "stored twice" means."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import zstandard

from imgbuild.image import Descriptor, Image
from imgbuild.layer.write import write_layer
from imgbuild.store import Store

PROJECT = Path(__file__).resolve().parents[2]
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def cli_env() -> dict:
    """The environment of the imgbuild processes: this checkout, SOURCE_DATE_EPOCH 0."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    env["SOURCE_DATE_EPOCH"] = "0"
    env.pop("CI", None)
    return env


def cli_command(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "imgbuild", "--root", str(root), *args]


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``imgbuild --root ROOT ARGS...`` to its end; its output as text."""
    return subprocess.run(cli_command(root, *args), capture_output=True, text=True, env=cli_env(), timeout=300)


def make_layered_image(store: Store, tag: str, below: str, files: dict[str, str], created_by: str) -> Image:
    """Tag ``below`` plus one layer holding ``files`` (path -> text) as ``tag``.

    Written with SOURCE_DATE_EPOCH 0, so the same files give the same digests
    in every store.
    """
    base = store.load_image(below)
    with tempfile.TemporaryDirectory(dir=store.tmp_dir) as work:
        rootfs = Path(work) / "rootfs"
        for name, text in files.items():
            path = rootfs / name.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        with store.blob_writer() as blob:
            digests = write_layer(rootfs, blob, compression="gzip", source_date_epoch=0)
        store.record_layer(digests.digest, digests.diff_id, digests.media_type, digests.size)
    config = json.loads(json.dumps(base.config))
    config["rootfs"]["diff_ids"] = [*base.diff_ids, digests.diff_id]
    config["history"] = [*config.get("history", []), {"created": "1970-01-01T00:00:00Z", "created_by": created_by}]
    layer = Descriptor(digests.media_type, digests.digest, digests.size)
    image = store.write_image(config, [*base.layers, layer])
    store.tag(tag, image.manifest_descriptor)
    return image


def image_blobs(store: Store, name: str) -> dict[str, int]:
    """The manifest, config and layer blobs of an image: digest -> size."""
    image = store.load_image(name)
    blobs = {image.digest: image.manifest_descriptor.size, image.config_descriptor.digest: image.config_descriptor.size}
    blobs.update({layer.digest: layer.size for layer in image.layers})
    return blobs


def _layer_kind_and_diff_id(data: bytes) -> tuple[str, str] | None:
    """(compression, diff_id) of a layer blob; None for a JSON document."""
    if data.startswith(GZIP_MAGIC):
        return "gzip", _sha256(gzip.decompress(data))
    if data.startswith(ZSTD_MAGIC):
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            return "zstd", _sha256(reader.read())
    try:
        json.loads(data)
        return None
    except ValueError:
        return "uncompressed", _sha256(data)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def stored_twice(store: Store) -> list[str]:
    """Every way a layer is stored more than once (must be none).

    - blobs: two files under blobs/sha256 with the same uncompressed content
      (diff_id) in the same compression, or a file whose name is not its hash
      (two names for one content);
    - the ``layers`` table: a row whose diff_id is not its blob's, or two rows
      for one (diff_id, media type);
    - snapshots: two rows for one chain ID, or a directory under snapshots/
      that no row names (an extraction adopted twice, one of them lost).
    """
    found = []
    blobs_by_layer: dict[tuple[str, str], list[str]] = defaultdict(list)
    diff_id_of: dict[str, str] = {}
    for path in sorted(store.blobs_dir.iterdir()):
        data = path.read_bytes()
        if "sha256:" + path.name != _sha256(data):
            found.append(f"blob {path.name} does not hash to its name")
        kind = _layer_kind_and_diff_id(data)
        if kind is not None:
            blobs_by_layer[kind].append(path.name)
            diff_id_of["sha256:" + path.name] = kind[1]
    for (compression, diff_id), names in blobs_by_layer.items():
        if len(names) > 1:
            found.append(f"layer {diff_id} stored {len(names)} times as {compression}: {names}")

    db = sqlite3.connect(store.root / "index.db")
    try:
        rows = db.execute("SELECT digest, diff_id, media_type FROM layers").fetchall()
        for digest, diff_id, _media_type in rows:
            if digest in diff_id_of and diff_id_of[digest] != diff_id:
                found.append(f"layers row {digest} says diff_id {diff_id}, the blob holds {diff_id_of[digest]}")
        for diff_id, media_type, count in db.execute(
            "SELECT diff_id, media_type, COUNT(*) FROM layers GROUP BY diff_id, media_type HAVING COUNT(*) > 1"
        ):
            found.append(f"layers table: {count} rows for {diff_id} as {media_type}")
        for chain_id, count in db.execute(
            "SELECT chain_id, COUNT(*) FROM snapshots GROUP BY chain_id HAVING COUNT(*) > 1"
        ):
            found.append(f"snapshots table: {count} rows for chain {chain_id}")
        ids = {str(row[0]) for row in db.execute("SELECT id FROM snapshots")}
    finally:
        db.close()
    for directory in sorted(store.snapshots_dir.iterdir()):
        if directory.name not in ids:
            found.append(f"snapshot directory {directory.name} is in no row of index.db")
    return found


@dataclass
class LoadStats:
    rounds: int = 0
    builds: int = 0
    succeeded: int = 0
    pushes: int = 0
    collections: int = 0
    collections_skipped: int = 0  # a build held the writer lease: untagged only
    fsck_runs: int = 0  # while the builds ran
    mismatches: int = 0
    duplicates: int = 0
    fsck_problems: int = 0
    leftovers: int = 0
    steps_run: int = 0  # by all builds of all rounds
    distinct_steps: int = 0  # what one build of each Dockerfile runs: the rest raced on a cache key


LOAD = LoadStats()  # the load rounds of this pytest session

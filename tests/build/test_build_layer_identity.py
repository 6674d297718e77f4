"""Layers as the store knows them: chain IDs, verified diff_ids, one compression per blob,
and the media types each manifest format wants.

Base images here are made by hand (Python's tarfile and gzip, an OCI layout
written field by field) and pushed to the test registry with skopeo, so the
store sees them the way it sees any image from elsewhere: through a pull.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from imagetools import recorded_diff_id
from ocitools import python_tar

from imgbuild.errors import DigestMismatch
from imgbuild.image import (
    DOCKER_LAYER_GZIP,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Platform,
)
from imgbuild.layer.extract import apply_layer

pytestmark = pytest.mark.root

EPOCH = 0


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _chain_ids(diff_ids: list[str]) -> list[str]:
    """containerd's chain IDs, computed here independently of imgbuild."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(_sha256(f"{chain[-1]} {diff_id}".encode()) if chain else diff_id)
    return chain


def _tool(*args: str) -> str:
    completed = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, f"{args}: {completed.stderr}"
    return completed.stdout


class HandMadeLayout:
    """An OCI image layout written field by field, for images no builder would write."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.blobs = directory / "blobs" / "sha256"
        self.blobs.mkdir(parents=True)
        (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def blob(self, data: bytes) -> str:
        digest = _sha256(data)
        (self.blobs / digest.split(":", 1)[1]).write_bytes(data)
        return digest

    def image(self, tag: str, layers: list[tuple[bytes, str]], diff_ids: list[str]) -> None:
        """``layers``: (blob bytes, media type), bottom first; ``diff_ids`` as the config claims them."""
        config = {
            **Platform.host().to_json(),
            "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"hand-made layer {i}"} for i in range(len(layers))],
        }
        config_bytes = json.dumps(config).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": self.blob(config_bytes),
                "size": len(config_bytes),
            },
            "layers": [
                {"mediaType": media_type, "digest": self.blob(data), "size": len(data)}
                for data, media_type in layers
            ],
        }
        manifest_bytes = json.dumps(manifest).encode()
        entry = {
            "mediaType": OCI_MANIFEST,
            "digest": self.blob(manifest_bytes),
            "size": len(manifest_bytes),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
        (self.directory / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "manifests": [entry]})
        )

    def push(self, tag: str, target: str, *flags: str) -> None:
        _tool("skopeo", "copy", "--dest-tls-verify=false", *flags, f"oci:{self.directory}:{tag}", f"docker://{target}")


@pytest.fixture
def base_layer(shared_store) -> tuple[bytes, str]:
    """The test busybox rootfs layer: (gzip blob bytes, diff_id)."""
    image = shared_store.load_image("busybox:latest")
    return shared_store.read_blob(image.layers[0].digest), image.diff_ids[0]


@pytest.fixture
def layout(tmp_path) -> HandMadeLayout:
    return HandMadeLayout(tmp_path / f"layout-{uuid.uuid4().hex[:8]}")


def _repo(registry, prefix: str) -> str:
    return f"{registry.host}/{prefix}-{uuid.uuid4().hex[:10]}"


# --- 1. a layer stack never holds the same directory twice ------------------------------


def test_two_identical_layers_in_one_build_work(build_df, store):
    # The first RUN on the test busybox also adds /dev, /proc and /sys (runc's mount points).
    dockerfile = (
        "FROM busybox\nRUN echo start > /start\n"
        "RUN echo x > /f\nRUN echo y > /g\nRUN echo x > /f\nRUN cat /f /g > /both\n"
    )
    built = build_df(dockerfile, store=store, source_date_epoch=EPOCH)
    diff_ids = built.image.diff_ids
    assert diff_ids[2] == diff_ids[4], "the test needs two identical layers"
    assert built.tree()["both"].data == b"x\ny\n"
    # One snapshot directory per position in the stack, keyed by chain ID.
    rows = {row["chain_id"]: row["diff_id"] for row in store.db.query("SELECT chain_id, diff_id FROM snapshots")}
    chain = _chain_ids(diff_ids)
    assert len(set(chain)) == len(chain)
    assert all(rows[chain_id] == diff_id for chain_id, diff_id in zip(chain, diff_ids, strict=True))


def test_a_pulled_base_with_duplicate_diff_ids_works(build_df, store, registry, layout, base_layer):
    busybox_blob, busybox_diff_id = base_layer
    f_tar, g_tar = python_tar({"f": b"x\n"}), python_tar({"g": b"y\n"})
    f_blob = gzip.compress(f_tar, mtime=0)
    layers = [(busybox_blob, OCI_LAYER_GZIP), (f_blob, OCI_LAYER_GZIP), (g_tar, OCI_LAYER), (f_blob, OCI_LAYER_GZIP)]
    diff_ids = [busybox_diff_id, _sha256(f_tar), _sha256(g_tar), _sha256(f_tar)]
    layout.image("dup", layers, diff_ids)
    target = _repo(registry, "dup-layers") + ":1"
    layout.push("dup", target)

    built = build_df(f"FROM {target}\nRUN cat /f /g > /both\n", store=store)

    assert built.image.diff_ids[:4] == diff_ids
    assert built.tree()["both"].data == b"x\ny\n"


# --- 2. recompress keeps the diff_id, or fails; never the wrong compression --------------


@pytest.mark.parametrize("compression, media_type", [("uncompressed", OCI_LAYER), ("zstd", OCI_LAYER_ZSTD)])
def test_compression_is_honoured_with_source_date_epoch(build_df, store, compression, media_type):
    # mtimes newer than the epoch are clamped in the layer: rewriting the
    # snapshot without the epoch gives other bytes.
    dockerfile = "FROM busybox\nRUN echo hello > /hello && mkdir /d && touch /d/file\n"
    gzip_built = build_df(dockerfile, store=store, source_date_epoch=EPOCH)
    blobs_before = set(store.all_blobs())

    built = build_df(dockerfile, context=gzip_built.context, store=store, source_date_epoch=EPOCH, compression=compression)

    top = built.image.layers[-1]
    assert top.media_type == media_type
    assert built.image.diff_ids == gzip_built.image.diff_ids
    # The recompressed blob holds the same tar, byte for byte.
    gzip_tar = gzip.decompress(store.read_blob(gzip_built.image.layers[-1].digest))
    assert _sha256(gzip_tar) == built.image.diff_ids[-1]
    # Same diff_ids and epoch, so the same config; new are the recompressed
    # layer and the manifest, and no orphan blob.
    assert built.image.config_descriptor == gzip_built.image.config_descriptor
    assert set(store.all_blobs()) - blobs_before == {top.digest, built.image.digest}


def test_output_compression_is_honoured_with_source_date_epoch(build_df, store, tmp_path):
    from imgbuild.builder.options import parse_output

    dest = tmp_path / "oci-out"
    built = build_df(
        "FROM busybox\nRUN echo out > /out\n",
        store=store,
        source_date_epoch=EPOCH,
        outputs=[parse_output(f"type=oci,dest={dest},tar=false,compression=uncompressed")],
    )
    index = json.loads((dest / "index.json").read_text())
    manifest = json.loads((dest / "blobs/sha256" / index["manifests"][0]["digest"].split(":", 1)[1]).read_text())
    assert manifest["layers"][0] == built.image.manifest["layers"][0]  # base layers are never rewritten
    assert manifest["layers"][-1]["mediaType"] == OCI_LAYER
    top = (dest / "blobs/sha256" / manifest["layers"][-1]["digest"].split(":", 1)[1]).read_bytes()
    assert _sha256(top) == built.image.diff_ids[-1]


# --- 3. pulled diff_ids are verified, never trusted --------------------------------------


def test_a_pulled_layer_whose_diff_id_is_wrong_is_refused(build_df, store, registry, layout, base_layer):
    busybox_blob, busybox_diff_id = base_layer
    real = python_tar({"f": b"real\n"})
    blob = gzip.compress(real, mtime=0)
    claimed = _sha256(b"something else")
    layout.image("liar", [(busybox_blob, OCI_LAYER_GZIP), (blob, OCI_LAYER_GZIP)], [busybox_diff_id, claimed])
    target = _repo(registry, "wrong-diff-id") + ":1"
    layout.push("liar", target)

    with pytest.raises(DigestMismatch) as caught:
        build_df(f"FROM {target}\nRUN cat /f\n", store=store)

    message = str(caught.value)
    assert target in message
    assert _sha256(blob) in message and claimed in message and _sha256(real) in message
    # Nothing unverified was recorded about the blob, and no snapshot claims it.
    assert recorded_diff_id(store, _sha256(blob)) is None
    assert not store.db.query("SELECT 1 FROM snapshots WHERE diff_id=?", (claimed,))


def test_recompress_never_takes_a_blob_by_an_unverified_diff_id(build_df, store, registry, layout, base_layer):
    """A pulled image that claims our layer's diff_id for other content must not stand in for it."""
    dockerfile = "FROM busybox\nRUN echo mine > /mine\n"
    ours = build_df(dockerfile, store=store, source_date_epoch=EPOCH, compression="zstd")
    busybox_blob, busybox_diff_id = base_layer
    impostor = gzip.compress(python_tar({"mine": b"not yours\n"}), mtime=0)
    claims = [busybox_diff_id, ours.image.diff_ids[-1]]
    layout.image("impostor", [(busybox_blob, OCI_LAYER_GZIP), (impostor, OCI_LAYER_GZIP)], claims)
    target = _repo(registry, "impostor") + ":1"
    layout.push("impostor", target)
    from imgbuild.registry.pull import pull

    pull(store, target)

    again = build_df(dockerfile, context=ours.context, store=store, source_date_epoch=EPOCH, compression="gzip")
    assert again.result.steps_run == 0
    assert again.image.layers[-1].media_type == OCI_LAYER_GZIP
    assert again.image.layers[-1].digest != _sha256(impostor)
    assert again.tree()["mine"].data == b"mine\n"


# --- 4. each manifest format with its own layer media types -------------------------------


def _umoci_unpack(image_ref: str, bundle: Path) -> Path:
    _tool("umoci", "unpack", "--image", image_ref, str(bundle))
    return bundle / "rootfs"


def test_a_base_with_docker_layer_types_gives_oci_types_everywhere(
    build_df, store, registry, layout, base_layer, tmp_path, imgbuild_cli
):
    busybox_blob, busybox_diff_id = base_layer
    layout.image("docker-types", [(busybox_blob, OCI_LAYER_GZIP)], [busybox_diff_id])
    base = _repo(registry, "docker-types") + ":1"
    layout.push("docker-types", base, "--format", "v2s2")
    raw = json.loads(_tool("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{base}"))
    assert raw["layers"][0]["mediaType"] == DOCKER_LAYER_GZIP, "the test needs a base with Docker layer types"

    pushed = _repo(registry, "built-on-docker") + ":1"
    built = build_df(f"FROM {base}\nRUN echo built > /built\n", store=store, tags=["on-docker:1"])
    assert [layer.media_type for layer in built.image.layers] == [OCI_LAYER_GZIP, OCI_LAYER_GZIP]
    assert built.image.layers[0].digest == _sha256(busybox_blob)  # same bytes, OCI name

    rootfs = _umoci_unpack(f"{store.layout}:on-docker:1", tmp_path / "from-store")
    assert (rootfs / "built").read_text() == "built\n"

    archive = tmp_path / "saved.tar"
    completed = imgbuild_cli(store.root, "save", "on-docker:1", "-o", str(archive))
    assert completed.returncode == 0, completed.stderr
    unpacked = tmp_path / "saved"
    unpacked.mkdir()
    _tool("tar", "-xf", str(archive), "-C", str(unpacked))
    rootfs = _umoci_unpack(f"{unpacked}:on-docker:1", tmp_path / "from-save")
    assert (rootfs / "bin/busybox").is_file()

    completed = imgbuild_cli(store.root, "push", "on-docker:1", pushed, "--insecure-registry", registry.host)
    assert completed.returncode == 0, completed.stderr
    manifest = json.loads(_tool("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{pushed}"))
    assert manifest["mediaType"] == OCI_MANIFEST
    assert {layer["mediaType"] for layer in manifest["layers"]} == {OCI_LAYER_GZIP}


# --- 4. a built layer's snapshot is the tree its blob extracts to --------------------------

SNAPSHOT_DOCKERFILE = """\
FROM busybox
RUN mkdir -p /a/b && echo hi > /a/b/f && chmod 700 /a && touch -d 2001-01-01 /a/b/f \\
 && ln -s f /a/b/l && ln /a/b/f /a/b/hard && mkfifo /a/p && rm /bin/ls && mkdir -p /etc/new
COPY x /x/
RUN touch /x/one && rm -r /a/b
"""


def _tree(root: Path) -> dict:
    """Each entry's type and mode, owner, mtime and (for files) bytes, as a container sees them."""
    found = {}
    for directory, names, files in os.walk(root):
        for name in names + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            data = Path(path).read_bytes() if stat.S_ISREG(info.st_mode) else None
            rdev = info.st_rdev if stat.S_ISCHR(info.st_mode) else None
            found[os.path.relpath(path, root)] = (info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns, rdev, data)
    return found


@pytest.mark.parametrize("epoch", [None, EPOCH], ids=["no-epoch", "source-date-epoch"])
def test_a_built_layers_snapshot_is_the_tree_its_blob_extracts_to(build_df, store, tmp_path, epoch):
    """A later step must see the same files and times whether its base was built
    here or pulled. The snapshot used to keep the upperdir's own mtimes
    (nanoseconds, and newer than SOURCE_DATE_EPOCH), which the blob does not."""
    built = build_df(SNAPSHOT_DOCKERFILE, {"x/one": "1\n"}, store=store, source_date_epoch=epoch)
    image = built.image
    chain = _chain_ids(image.diff_ids)
    for index in range(1, len(image.layers)):
        snapshot = store.snapshot_path(chain[index])
        extracted = tmp_path / f"extracted-{index}"
        extracted.mkdir()
        with store.open_blob(image.layers[index].digest) as blob:
            apply_layer(blob, extracted, media_type=image.layers[index].media_type)
        assert _tree(snapshot) == _tree(extracted), f"layer {index}"

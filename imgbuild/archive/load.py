"""``load``: the docker-archive and OCI-archive loaders.

Every blob is verified against its digest and every layer's uncompressed
content against the config's ``rootfs.diff_ids`` on its way into the store; the
images are tagged only once all their blobs are in. Each layer is extracted
into its snapshot in the same pass (``store/snapshots.py``), so a build on a
loaded image unpacks nothing.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

from imgbuild.archive.names import ArchivedImage, blob_member_name, store_name
from imgbuild.archive.reader import CHUNK, ArchiveReader, open_archive
from imgbuild.errors import ArchiveError, DigestMismatch, ImgbuildError, LayerError
from imgbuild.image import (
    INDEX_TYPES,
    LAYER_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    Descriptor,
    chain_ids,
    make_manifest,
    media_type_of,
    parse_json_document,
)
from imgbuild.layer.decompress import GZIP_MAGIC, ZSTD_MAGIC, open_tar_stream
from imgbuild.store import Store
from imgbuild.store.snapshots import StagedSnapshot, discard_staged, keep_snapshot, stage_snapshot
from imgbuild.units import plural

CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
MAX_INDEX_DEPTH = 8


def load(store: Store, source: str | os.PathLike | BinaryIO) -> list[ArchivedImage]:
    """Load every image of an OCI archive or docker-archive into ``store`` and tag it.

    ``source`` is a path or a binary file object (stdin is spooled to a temp
    file first, since reading members by name needs seeking). The format is
    detected: ``manifest.json`` means docker-archive (preferred, as Docker
    does, when an archive is both), else ``index.json`` means OCI.
    """
    # A load killed mid-way left a partial blob and snapshot in its work
    # dir: the next load removes them, as the next pull or build does.
    store.sweep_dead_work()
    with store.writer_lease(), open_archive(store, source) as archive:
        if archive.has("manifest.json"):
            return _load_docker_archive(store, archive)
        if archive.has("index.json"):
            return _load_oci_archive(store, archive)
        raise ArchiveError(
            f"{archive.label} is neither an OCI archive (no index.json) nor a docker-archive "
            "(no manifest.json)"
        )


def _load_docker_archive(store: Store, archive: ArchiveReader) -> list[ArchivedImage]:
    entries = archive.read_json("manifest.json", "manifest")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ArchiveError(f"{archive.label}: manifest.json is not a list of image entries")
    layers_by_path: dict[str, Descriptor] = {}
    return [_load_docker_image(store, archive, entry, layers_by_path) for entry in entries]


def _load_docker_image(
    store: Store, archive: ArchiveReader, entry: dict, layers_by_path: dict[str, Descriptor]
) -> ArchivedImage:
    try:
        config_path, layer_paths = str(entry["Config"]), [str(p) for p in entry["Layers"]]
        tags = [str(t) for t in entry.get("RepoTags") or []]
    except (KeyError, TypeError) as error:
        raise ArchiveError(f"{archive.label}: manifest.json entry {entry!r} lacks {error}") from None
    config_bytes = archive.read_bytes(config_path, "image config")
    config = parse_json_document(config_bytes, f"{archive.label}: image config {config_path}")
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    if len(diff_ids) != len(layer_paths):
        raise ArchiveError(
            f"{archive.label}: image config {config_path} lists {plural(len(diff_ids), 'diff_id')} "
            f"but manifest.json lists {plural(len(layer_paths), 'layer')}"
        )
    config_descriptor = Descriptor.for_bytes(OCI_CONFIG, config_bytes)
    _check_digest_in_name(archive, config_path, config_descriptor.digest)
    layers = []
    for path, diff_id, chain_id in zip(layer_paths, diff_ids, chain_ids(diff_ids), strict=True):
        if path in layers_by_path:  # an earlier image of the archive had it, maybe elsewhere in its stack
            store.ensure_snapshot(layers_by_path[path], diff_id, chain_id, archive.label)
        else:
            layers_by_path[path] = _copy_layer(store, archive, path, diff_id, None, chain_id)
        layers.append(layers_by_path[path])
    store.write_blob(config_bytes, config_descriptor.digest)
    manifest_descriptor = store.put_json(make_manifest(config_descriptor, layers), OCI_MANIFEST)
    return _tag_loaded(store, [store_name(t) for t in tags], manifest_descriptor)


def _check_digest_in_name(archive: ArchiveReader, path: str, digest: str) -> None:
    """Docker 25 names files blobs/sha256/<hex>: such a name must match the content."""
    parts = path.split("/")
    if len(parts) == 3 and parts[:2] == ["blobs", "sha256"] and parts[2] != digest.split(":", 1)[1]:
        raise ArchiveError(f"{archive.label}: {path} does not match its content, which is {digest}")


def _copy_layer(
    store: Store,
    archive: ArchiveReader,
    path: str,
    diff_id: str,
    descriptor: Descriptor | None,
    chain_id: str,
) -> Descriptor:
    """Copy one layer into the store, verifying its blob digest (when known) and diff_id,
    and extract it as the snapshot of ``chain_id`` on the way.

    One pass: the compressed bytes go into the blob writer while their
    decompressed form is hashed and extracted (Docker, too, unpacks what it
    loads), so the first build on the image extracts nothing. Without a
    descriptor (docker-archive), the media type comes from the compression found.
    """
    member, size = archive.open(path)
    if descriptor is not None and size != descriptor.size:
        raise ArchiveError(
            f"{archive.label}: {path} has {size} bytes, its descriptor says {descriptor.size}"
        )
    staged = None
    try:
        with member, store.blob_writer(descriptor.digest if descriptor else None) as blob:
            tee = _Tee(member, blob)
            staged, actual = _read_layer(store, archive, path, tee, chain_id)
            tee.drain()
            if actual != diff_id:
                raise DigestMismatch(
                    f"{archive.label}: layer {path} does not match the image config: its content "
                    f"is {actual}, the config says {diff_id}"
                )
        media_type = descriptor.media_type if descriptor else _media_type_from_magic(tee.head)
        if descriptor is None:
            _check_digest_in_name(archive, path, blob.digest)
        stored = Descriptor(media_type, blob.digest, blob.size)
        if staged is None:
            store.record_layer(blob.digest, diff_id, media_type, blob.size)
        else:
            keep_snapshot(store, staged, stored, diff_id, chain_id, archive.label)
        return stored
    finally:
        discard_staged(staged)


def _read_layer(
    store: Store, archive: ArchiveReader, path: str, tee: _Tee, chain_id: str
) -> tuple[StagedSnapshot | None, str]:
    """Decompress the layer: extracted into a staged snapshot when the store has
    none for ``chain_id``, else only hashed. Returns it and the content's digest."""
    try:
        if store.snapshot_path(chain_id) is None:
            staged = stage_snapshot(store, tee, None)
            return staged, staged.diff_id
        hasher = hashlib.sha256()
        stream = open_tar_stream(tee)
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
        return None, "sha256:" + hasher.hexdigest()
    except LayerError as error:
        raise ArchiveError(f"{archive.label}: layer {path}: {error}") from None


def _media_type_from_magic(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return OCI_LAYER_GZIP
    if head.startswith(ZSTD_MAGIC):
        return OCI_LAYER_ZSTD
    return OCI_LAYER


class _Tee:
    """Reads from ``source`` and hands every byte read to ``sink`` as well."""

    def __init__(self, source, sink):
        self._source = source
        self._sink = sink
        self.head = b""  # the first bytes, to tell the compression

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        if data:
            self._sink.write(data)
            if len(self.head) < 8:
                self.head += data[: 8 - len(self.head)]
        return data

    def drain(self) -> None:
        """Pass on what the decompressor left unread (padding after the last frame)."""
        while self.read(CHUNK):
            pass


def _load_oci_archive(store: Store, archive: ArchiveReader) -> list[ArchivedImage]:
    if not archive.has("oci-layout"):
        raise ArchiveError(
            f"{archive.label} has index.json but no oci-layout: not an OCI image layout"
        )
    index = archive.read_json("index.json", "index")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ArchiveError(f"{archive.label}: index.json has no list of manifests")
    loaded = []
    for entry in index["manifests"]:
        try:
            descriptor = Descriptor.from_json(entry)
        except ImgbuildError as error:
            raise ArchiveError(f"{archive.label}: index.json: {error}") from None
        _copy_tree(store, archive, descriptor, 0)
        names = _names_from_annotations(descriptor.annotations)
        kept = {
            key: value
            for key, value in descriptor.annotations.items()
            if key not in (REF_NAME_ANNOTATION, CONTAINERD_NAME_ANNOTATION)
        }
        loaded.append(
            _tag_loaded(store, [store_name(n) for n in names], descriptor.with_annotations(kept))
        )
    return loaded


def _names_from_annotations(annotations: dict[str, str]) -> list[str]:
    """containerd and BuildKit put the full name in io.containerd.image.name and only
    the tag in ref.name; skopeo and imgbuild put the full name in ref.name."""
    if annotations.get(CONTAINERD_NAME_ANNOTATION):
        return [annotations[CONTAINERD_NAME_ANNOTATION]]
    if annotations.get(REF_NAME_ANNOTATION):
        return [annotations[REF_NAME_ANNOTATION]]
    return []


def copy_image_tree(store: Store, archive: ArchiveReader, descriptor: Descriptor) -> None:
    """Copy one image (a manifest or an index) of an OCI layout into the store, untagged,
    every blob verified; ``archive`` may be any reader with ``has``/``open``/``read_bytes``."""
    _copy_tree(store, archive, descriptor, 0)


def _copy_tree(store: Store, archive: ArchiveReader, descriptor: Descriptor, depth: int) -> None:
    """Copy a manifest or index and everything it refers to, each blob verified."""
    if depth > MAX_INDEX_DEPTH:
        raise ArchiveError(f"{archive.label}: indexes nested more than {MAX_INDEX_DEPTH} deep")
    if descriptor.media_type and descriptor.media_type not in INDEX_TYPES + MANIFEST_TYPES:
        _copy_opaque_blob(store, archive, descriptor)
        return
    document = _copy_json_blob(store, archive, descriptor, "manifest")
    if media_type_of(document, descriptor.media_type) in INDEX_TYPES:
        for entry in document.get("manifests") or []:
            _copy_tree(store, archive, Descriptor.from_json(entry), depth + 1)
        return
    config_descriptor = Descriptor.from_json(document["config"]) if "config" in document else None
    layers = [Descriptor.from_json(layer) for layer in document.get("layers") or []]
    diff_ids: list[str] = []
    if config_descriptor is not None:
        config = _copy_json_blob(store, archive, config_descriptor, "image config")
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    is_image = len(diff_ids) == len(layers) and all(
        layer.media_type in LAYER_TYPES for layer in layers
    )
    if not is_image:
        for layer in layers:
            _copy_opaque_blob(store, archive, layer)
        return
    for layer, diff_id, chain_id in zip(layers, diff_ids, chain_ids(diff_ids), strict=True):
        if store.has_blob(layer.digest):
            store.ensure_snapshot(layer, diff_id, chain_id, archive.label)
        else:
            _copy_layer(store, archive, blob_member_name(layer.digest), diff_id, layer, chain_id)


def _copy_json_blob(
    store: Store, archive: ArchiveReader, descriptor: Descriptor, what: str
) -> dict:
    data = archive.read_bytes(blob_member_name(descriptor.digest), what)
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != descriptor.digest or len(data) != descriptor.size:
        raise DigestMismatch(
            f"{archive.label}: {what} {descriptor.digest} does not match its content "
            f"({actual}, {len(data)} bytes; the descriptor says {descriptor.size} bytes)"
        )
    store.write_blob(data, descriptor.digest)
    return parse_json_document(data, f"{archive.label}: {what} {descriptor.digest}")


def _copy_opaque_blob(store: Store, archive: ArchiveReader, descriptor: Descriptor) -> None:
    if store.has_blob(descriptor.digest):
        return
    member, size = archive.open(blob_member_name(descriptor.digest))
    if size != descriptor.size:
        raise ArchiveError(
            f"{archive.label}: blob {descriptor.digest} has {size} bytes, "
            f"its descriptor says {descriptor.size}"
        )
    with member:
        store.copy_blob_from(member, descriptor.digest)


def _tag_loaded(store: Store, names: list[str], descriptor: Descriptor) -> ArchivedImage:
    for name in names:
        store.tag(name, descriptor)
    if not names:
        store.keep_untagged(descriptor)
    return ArchivedImage(names, descriptor)

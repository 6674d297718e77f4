"""Image archives: ``imgbuild save`` writes them, ``imgbuild load`` reads them.

Two formats (docs/store.md shows both):

- ``oci``: a tar of an OCI image layout: ``oci-layout``, ``index.json`` with one
  entry per tag (``org.opencontainers.image.ref.name`` = the tag, e.g.
  ``busybox:latest``, as in the store), and ``blobs/sha256/<hex>``. Read by
  ``skopeo``/``podman`` as ``oci-archive:FILE:busybox:latest``.
- ``docker``: a docker-archive as ``docker save`` writes it: ``manifest.json``
  (``Config``, ``RepoTags``, ``Layers``), ``repositories``, and the config and
  layer files, here stored under ``blobs/sha256/<hex>`` as Docker 25 does.
  Layers are written as they are in the store (gzip or plain tar), which
  ``docker load`` and ``podman load`` both accept; zstd layers are decompressed
  to plain tars first, since older loaders do not know zstd.

Archives stream: blobs go from the store into the tar (and from the tar into
the store) in bounded chunks, and every blob is verified against its digest on
the way. ``load`` never extracts the archive to disk: it reads members by name,
and refuses archives whose entries or links point outside the archive.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from imgbuild.errors import ArchiveError, DigestMismatch, ImgbuildError, LayerError, UsageError
from imgbuild.image import (
    INDEX_TYPES,
    LAYER_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    Descriptor,
    Platform,
    canonical_json,
    make_manifest,
    media_type_of,
    parse_json_document,
)
from imgbuild.layer.decompress import GZIP_MAGIC, ZSTD_MAGIC, open_tar_stream
from imgbuild.store import Store, normalise_tag

FORMATS = ("oci", "docker")
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
CHUNK = 1 << 20
MAX_MEMBERS = 100_000  # a real archive has a few entries per layer
MAX_JSON_BYTES = 16 << 20  # manifests and configs; anything bigger is not one
MAX_LINK_HOPS = 40
MAX_INDEX_DEPTH = 8
OCI_LAYOUT_BYTES = b'{"imageLayoutVersion":"1.0.0"}'


@dataclass
class ArchivedImage:
    """One image in an archive: the tags it carries and its top-level descriptor.

    For ``save`` the descriptor is the saved manifest; for ``load`` it is what
    the store now holds (a manifest or, from an OCI archive, maybe an index).
    """

    names: list[str] = field(default_factory=list)
    descriptor: Descriptor | None = None


# --- names ----------------------------------------------------------------------


def split_tag(name: str) -> tuple[str, str]:
    """``host:5000/app:1`` -> (``host:5000/app``, ``1``); a name without a tag gets ``latest``."""
    name = normalise_tag(name)
    repository, _, tag = name.rpartition(":")
    return repository, tag


def is_repository_only(name: str) -> bool:
    """True for ``busybox`` or ``host:5000/app``: no tag, no digest."""
    return "@" not in name and ":" not in name.rsplit("/", 1)[-1]


def store_name(name: str) -> str:
    """The name an archive's tag gets in the store, as ``imgbuild pull`` names images.

    ``docker.io/library/busybox:latest`` becomes ``busybox:latest``. Raises
    ArchiveError for a name that is not a valid image reference.
    """
    from imgbuild.registry.reference import parse_reference

    try:
        return parse_reference(name).store_name
    except UsageError as error:
        raise ArchiveError(
            f"the archive names an image {name!r}, which is not valid: {error}"
        ) from None


# --- save -----------------------------------------------------------------------


def images_to_save(
    store: Store, names: list[str], platform: Platform | None = None
) -> list[ArchivedImage]:
    """What ``save NAME...`` writes, grouped by image, as ``docker save`` does.

    A tag saves that tag; a repository without a tag saves all its tags; an
    image ID or digest saves the image without a name. A tag that points at a
    multi-platform index saves the image for ``platform`` (default: the host).
    """
    by_digest: dict[str, ArchivedImage] = {}
    for name in names:
        for tag, descriptor in _refs_for_name(store, name):
            image = store.load_image(descriptor, platform)
            entry = by_digest.setdefault(image.digest, ArchivedImage([], image.manifest_descriptor))
            if tag and tag not in entry.names:
                entry.names.append(tag)
    return list(by_digest.values())


def _refs_for_name(store: Store, name: str) -> list[tuple[str | None, Descriptor]]:
    refs = store.refs()
    if is_repository_only(name):
        tagged = [(tag, d) for tag, d in refs if tag and split_tag(tag)[0] == name]
        if tagged:
            return tagged
    else:
        tagged = [(tag, d) for tag, d in refs if tag == normalise_tag(name)]
        if tagged:
            return tagged
    return [(None, store.resolve(name))]


def save(
    store: Store,
    names: list[str],
    destination: str | os.PathLike,
    *,
    format: str = "oci",
    platform: Platform | None = None,
) -> list[ArchivedImage]:
    """Write the images ``names`` to the archive file ``destination``, atomically.

    The file appears only when it is complete; on any error, nothing is left.
    """
    # The lease keeps a concurrent `imgbuild rmi` from collecting the blobs
    # while we copy them (see Store.writer_lease).
    with store.writer_lease():
        images = images_to_save(store, names, platform)
        _write_archive_file(store, images, Path(destination), format)
    return images


def _write_archive_file(store: Store, images: list[ArchivedImage], destination: Path, format: str) -> None:
    try:
        fd, tmp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.tmp-")
    except OSError as error:
        raise ImgbuildError(f"cannot write {destination}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            write_archive(store, images, out, format)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, destination)
    except BaseException:
        _remove_quietly(tmp_name)
        raise


def write_archive(
    store: Store, images: list[ArchivedImage], out: BinaryIO, format: str = "oci"
) -> None:
    """Stream an archive of ``images`` into ``out`` (a file, a pipe, stdout)."""
    if format not in FORMATS:
        raise UsageError(f"unknown archive format {format!r}: expected one of {', '.join(FORMATS)}")
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if format == "oci":
            _write_oci_layout(store, images, tar)
        else:
            _write_docker_archive(store, images, tar)


def _write_oci_layout(store: Store, images: list[ArchivedImage], tar: tarfile.TarFile) -> None:
    _add_bytes(tar, "oci-layout", OCI_LAYOUT_BYTES)
    _add_directory(tar, "blobs")
    _add_directory(tar, "blobs/sha256")
    written: set[str] = set()
    entries = []
    for item in images:
        image = store.load_image(item.descriptor)
        for descriptor in (image.manifest_descriptor, image.config_descriptor, *image.layers):
            if descriptor.digest not in written:
                _add_blob(tar, store, descriptor, blob_member_name(descriptor.digest))
                written.add(descriptor.digest)
        top = Descriptor(
            image.manifest_descriptor.media_type,
            image.digest,
            image.manifest_descriptor.size,
            platform=image.platform,
        )
        if item.names:
            entries.extend(
                top.with_annotations({REF_NAME_ANNOTATION: n}).to_json() for n in item.names
            )
        else:
            entries.append(top.to_json())
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    _add_bytes(tar, "index.json", canonical_json(index))


def _write_docker_archive(store: Store, images: list[ArchivedImage], tar: tarfile.TarFile) -> None:
    _add_directory(tar, "blobs")
    _add_directory(tar, "blobs/sha256")
    written: dict[str, str] = {}  # store digest -> member name in the archive
    manifest = []
    repositories: dict[str, dict[str, str]] = {}
    for item in images:
        image = store.load_image(item.descriptor)
        if len(image.layers) != len(image.diff_ids):
            raise ArchiveError(
                f"cannot save {item.names or image.digest} as a docker-archive: it has "
                f"{len(image.layers)} layers but its config lists {len(image.diff_ids)} diff_ids"
            )
        config = image.config_descriptor
        if config.digest not in written:
            written[config.digest] = blob_member_name(config.digest)
            _add_blob(tar, store, config, written[config.digest])
        layer_names = []
        for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
            if layer.digest not in written:
                written[layer.digest] = _add_docker_layer(tar, store, layer, diff_id)
            layer_names.append(written[layer.digest])
        manifest.append(
            {
                "Config": written[config.digest],
                "RepoTags": item.names or None,
                "Layers": layer_names,
            }
        )
        for name in item.names:
            repository, tag = split_tag(name)
            # Legacy field; loaders that read manifest.json ignore it.
            top = layer_names[-1].rsplit("/", 1)[-1] if layer_names else ""
            repositories.setdefault(repository, {})[tag] = top
    _add_bytes(tar, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
    _add_bytes(tar, "repositories", json.dumps(repositories, sort_keys=True).encode())


def _add_docker_layer(tar: tarfile.TarFile, store: Store, layer: Descriptor, diff_id: str) -> str:
    """Add one layer to a docker-archive; returns its member name."""
    if "zstd" not in layer.media_type:
        name = blob_member_name(layer.digest)
        _add_blob(tar, store, layer, name)
        return name
    # Decompress to a temp file first: a tar header needs the size up front.
    with tempfile.TemporaryFile(dir=store.tmp_dir) as plain, store.open_blob(layer.digest) as blob:
        hasher = hashlib.sha256()
        stream = open_tar_stream(blob)
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
            plain.write(chunk)
        if "sha256:" + hasher.hexdigest() != diff_id:
            raise DigestMismatch(
                f"layer {layer.digest} decompresses to sha256:{hasher.hexdigest()}, but the image "
                f"config says {diff_id}; run `imgbuild fsck`"
            )
        size = plain.tell()
        plain.seek(0)
        name = blob_member_name(diff_id)
        tar.addfile(_file_info(name, size), plain)
    return name


def blob_member_name(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _add_blob(tar: tarfile.TarFile, store: Store, descriptor: Descriptor, name: str) -> None:
    """Copy a blob into the tar, checking its size and digest as it streams."""
    with store.open_blob(descriptor.digest) as blob:
        size = os.fstat(blob.fileno()).st_size
        if size != descriptor.size:
            raise DigestMismatch(
                f"blob {descriptor.digest} in the store has {size} bytes, its descriptor says "
                f"{descriptor.size}; run `imgbuild fsck`"
            )
        reader = _HashingReader(blob)
        tar.addfile(_file_info(name, size), reader)
        if reader.digest() != descriptor.digest:
            raise DigestMismatch(
                f"blob {descriptor.digest} in the store is corrupt (content hashes to "
                f"{reader.digest()}); run `imgbuild fsck`"
            )


def _file_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0  # the same images give the same archive bytes
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_file_info(name, len(data)), io.BytesIO(data))


def _add_directory(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


class _HashingReader:
    def __init__(self, source: BinaryIO):
        self._source = source
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._hash.update(data)
        return data

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


# --- load -----------------------------------------------------------------------


def load(store: Store, source: str | os.PathLike | BinaryIO) -> list[ArchivedImage]:
    """Load every image of an OCI archive or docker-archive into ``store`` and tag it.

    ``source`` is a path or a binary file object (stdin is spooled to a temp
    file first, since reading members by name needs seeking). The format is
    detected: ``manifest.json`` means docker-archive (preferred, as Docker
    does, when an archive is both), else ``index.json`` means OCI.
    """
    with store.writer_lease(), _open_archive(store, source) as archive:
        if archive.has("manifest.json"):
            return _load_docker_archive(store, archive)
        if archive.has("index.json"):
            return _load_oci_archive(store, archive)
        raise ArchiveError(
            f"{archive.label} is neither an OCI archive (no index.json) nor a docker-archive "
            "(no manifest.json)"
        )


@contextmanager
def _open_archive(store: Store, source: str | os.PathLike | BinaryIO) -> Iterator[ArchiveReader]:
    if isinstance(source, (str, os.PathLike)):
        label = str(source)
        try:
            handle = open(source, "rb")
        except OSError as error:
            raise ArchiveError(f"cannot open archive {label}: {error.strerror}") from None
    else:
        label = getattr(source, "name", "the input")
        label = "standard input" if label in ("<stdin>", 0) else str(label)
        handle = source if _seekable(source) else _spool(store, source)
    try:
        try:
            tar = tarfile.open(fileobj=handle, mode="r:*")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            raise ArchiveError(
                f"{label} is not a tar archive (or a gzip-compressed one): {error}"
            ) from None
        try:
            yield ArchiveReader(tar, label)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise ArchiveError(f"{label} is damaged: {error}") from None
        finally:
            tar.close()
    finally:
        if handle is not source:
            handle.close()


def _seekable(handle: BinaryIO) -> bool:
    try:
        return handle.seekable()
    except (AttributeError, ValueError):
        return False


def _spool(store: Store, source: BinaryIO) -> BinaryIO:
    """Copy a pipe into an anonymous temp file in the store (same disk, gone on close)."""
    spool = tempfile.TemporaryFile(dir=store.tmp_dir)
    shutil.copyfileobj(source, spool, CHUNK)
    spool.seek(0)
    return spool


class ArchiveReader:
    """Random access to the members of an untrusted tar, by normalised name.

    Entries whose names are absolute or contain ``..``, and symlinks or
    hardlinks whose targets leave the archive, make the whole archive refused:
    a loader that follows them (or an extracting tool) could read or write
    outside, and no tool we know writes them.
    """

    def __init__(self, tar: tarfile.TarFile, label: str):
        self.tar = tar
        self.label = label
        self.members: dict[str, tarfile.TarInfo] = {}
        for count, info in enumerate(tar, start=1):
            if count > MAX_MEMBERS:
                raise ArchiveError(
                    f"{label} has more than {MAX_MEMBERS} entries; refusing it as a tar bomb"
                )
            name = self._safe_name(info.name, f"entry {info.name!r}")
            if info.issym():
                self._check_symlink(name, info.linkname)
            elif info.islnk():
                self._safe_name(info.linkname, f"hardlink {info.name!r} -> {info.linkname!r}")
            if name:
                self.members[name] = info  # a later entry replaces an earlier one, as on extraction

    def _safe_name(self, name: str, what: str) -> str:
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if name.startswith("/") or ".." in parts:
            raise ArchiveError(
                f"{self.label} has an unsafe {what}: it points outside the archive; "
                "refusing to load it"
            )
        return "/".join(parts)

    def _check_symlink(self, name: str, target: str) -> None:
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise ArchiveError(
                f"{self.label} has an unsafe symlink {name!r} -> {target!r}: it points outside the "
                "archive; refusing to load it"
            )

    def has(self, name: str) -> bool:
        return name in self.members

    def resolve(self, reference: str, hops: int = 0) -> tarfile.TarInfo:
        """The regular-file member ``reference`` names, following links inside the archive."""
        name = self._safe_name(reference, f"reference {reference!r}")
        parts = name.split("/")
        for end in range(1, len(parts) + 1):
            info = self.members.get("/".join(parts[:end]))
            if info is not None and (info.issym() or info.islnk()):
                if hops >= MAX_LINK_HOPS:
                    raise ArchiveError(
                        f"{self.label}: too many levels of links resolving {reference!r}"
                    )
                if info.issym():
                    base = posixpath.dirname("/".join(parts[:end]))
                    target = posixpath.normpath(posixpath.join(base, info.linkname))
                else:
                    target = info.linkname
                return self.resolve("/".join([target, *parts[end:]]), hops + 1)
        info = self.members.get(name)
        if info is None:
            raise ArchiveError(
                f"{self.label} has no entry {reference!r}, which its manifest refers to"
            )
        if not info.isfile():
            raise ArchiveError(f"{self.label}: entry {reference!r} is not a regular file")
        return info

    def open(self, reference: str) -> tuple[BinaryIO, int]:
        info = self.resolve(reference)
        return self.tar.extractfile(info), info.size

    def read_bytes(self, reference: str, what: str) -> bytes:
        member, size = self.open(reference)
        if size > MAX_JSON_BYTES:
            raise ArchiveError(
                f"{self.label}: {what} {reference!r} is {size} bytes, too big for a JSON document"
            )
        with member:
            return member.read()

    def read_json(self, reference: str, what: str) -> dict | list:
        data = self.read_bytes(reference, what)
        try:
            return json.loads(data)
        except ValueError as error:
            raise ArchiveError(
                f"{self.label}: {what} {reference!r} is not valid JSON: {error}"
            ) from None


def _load_docker_archive(store: Store, archive: ArchiveReader) -> list[ArchivedImage]:
    entries = archive.read_json("manifest.json", "manifest")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ArchiveError(f"{archive.label}: manifest.json is not a list of image entries")
    layers_by_path: dict[str, Descriptor] = {}
    loaded = []
    for entry in entries:
        try:
            config_path, layer_paths = str(entry["Config"]), [str(p) for p in entry["Layers"]]
            tags = [str(t) for t in entry.get("RepoTags") or []]
        except (KeyError, TypeError) as error:
            raise ArchiveError(
                f"{archive.label}: manifest.json entry {entry!r} lacks {error}"
            ) from None
        config_bytes = archive.read_bytes(config_path, "image config")
        config = parse_json_document(config_bytes, f"{archive.label}: image config {config_path}")
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        if len(diff_ids) != len(layer_paths):
            raise ArchiveError(
                f"{archive.label}: image config {config_path} lists {len(diff_ids)} diff_ids "
                f"but manifest.json lists {len(layer_paths)} layers"
            )
        config_descriptor = Descriptor.for_bytes(OCI_CONFIG, config_bytes)
        _check_digest_in_name(archive, config_path, config_descriptor.digest)
        layers = []
        for path, diff_id in zip(layer_paths, diff_ids, strict=True):
            if path not in layers_by_path:
                layers_by_path[path] = _copy_layer(store, archive, path, diff_id, None)
            layers.append(layers_by_path[path])
        store.write_blob(config_bytes, config_descriptor.digest)
        manifest_descriptor = store.put_json(make_manifest(config_descriptor, layers), OCI_MANIFEST)
        loaded.append(_tag_loaded(store, [store_name(t) for t in tags], manifest_descriptor))
    return loaded


def _check_digest_in_name(archive: ArchiveReader, path: str, digest: str) -> None:
    """Docker 25 names files blobs/sha256/<hex>: such a name must match the content."""
    parts = path.split("/")
    if len(parts) == 3 and parts[:2] == ["blobs", "sha256"] and parts[2] != digest.split(":", 1)[1]:
        raise ArchiveError(f"{archive.label}: {path} does not match its content, which is {digest}")


def _copy_layer(
    store: Store, archive: ArchiveReader, path: str, diff_id: str, descriptor: Descriptor | None
) -> Descriptor:
    """Copy one layer into the store, verifying its blob digest (when known) and diff_id.

    One pass: the compressed bytes go into the blob writer while their
    decompressed form is hashed. Without a descriptor (docker-archive), the
    media type comes from the compression found.
    """
    member, size = archive.open(path)
    if descriptor is not None and size != descriptor.size:
        raise ArchiveError(
            f"{archive.label}: {path} has {size} bytes, its descriptor says {descriptor.size}"
        )
    with member, store.blob_writer(descriptor.digest if descriptor else None) as blob:
        tee = _Tee(member, blob)
        hasher = hashlib.sha256()
        try:
            stream = open_tar_stream(tee)
            while chunk := stream.read(CHUNK):
                hasher.update(chunk)
        except LayerError as error:
            raise ArchiveError(f"{archive.label}: layer {path}: {error}") from None
        tee.drain()
        actual = "sha256:" + hasher.hexdigest()
        if actual != diff_id:
            raise DigestMismatch(
                f"{archive.label}: layer {path} does not match the image config: its content "
                f"is {actual}, the config says {diff_id}"
            )
    media_type = descriptor.media_type if descriptor else _media_type_from_magic(tee.head)
    if descriptor is None:
        _check_digest_in_name(archive, path, blob.digest)
    store.record_layer(blob.digest, diff_id, media_type, blob.size)
    return Descriptor(media_type, blob.digest, blob.size)


def _media_type_from_magic(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return OCI_LAYER_GZIP
    if head.startswith(ZSTD_MAGIC):
        return OCI_LAYER_ZSTD
    return OCI_LAYER


class _Tee:
    """Reads from ``source`` and hands every byte read to ``sink`` as well."""

    def __init__(self, source: BinaryIO, sink):
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
    for position, layer in enumerate(layers):
        if store.has_blob(layer.digest):
            continue
        if is_image:
            _copy_layer(store, archive, blob_member_name(layer.digest), diff_ids[position], layer)
        else:
            _copy_opaque_blob(store, archive, layer)


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


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass

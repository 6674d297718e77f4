"""``save``: which images a list of names means, and the OCI and docker-archive writers.

The tar is written with ``imgbuild.layer.tarformat``'s headers, every member
with mtime 0, uid/gid 0 and fixed modes, so the same images give the same
archive bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from imgbuild.archive.names import ArchivedImage, blob_member_name, is_repository_only, split_tag
from imgbuild.errors import ArchiveError, DigestMismatch, ImgbuildError, StoreError, UsageError
from imgbuild.image import OCI_INDEX, REF_NAME_ANNOTATION, Descriptor, Platform, canonical_json
from imgbuild.layer.decompress import open_tar_stream
from imgbuild.layer.tarformat import (
    BLOCK_SIZE,
    DIRECTORY,
    END_OF_ARCHIVE,
    REGULAR,
    TarEntry,
    padding,
)
from imgbuild.layer.tarwrite import encode_archive_header
from imgbuild.store import Store, normalise_tag
from imgbuild.units import plural

FORMATS = ("oci", "docker")
CHUNK = 1 << 20
OCI_LAYOUT_BYTES = b'{"imageLayoutVersion":"1.0.0"}'
# The archive ends padded to a whole tar record (20 blocks), as tar writers
# traditionally do and as imgbuild's archives always have.
RECORD_SIZE = 20 * BLOCK_SIZE


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
    """Stream an archive of ``images`` into ``out`` (a file, a pipe, stdout).

    On an error the archive is left without its end: a reader sees it cut short.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown archive format {format!r}: expected one of {', '.join(FORMATS)}")
    tar = _TarWriter(out)
    if format == "oci":
        _write_oci_layout(store, images, tar)
    else:
        _write_docker_archive(store, images, tar)
    tar.finish()


class _TarWriter:
    """Writes archive members to ``out``: directories, and files of a known size."""

    def __init__(self, out: BinaryIO):
        self._out = out
        self._written = 0

    def add_directory(self, name: str) -> None:
        self._write(encode_archive_header(TarEntry(name.encode() + b"/", DIRECTORY, mode=0o755)))

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_file(name, len(data), io.BytesIO(data))

    def add_file(self, name: str, size: int, source) -> None:
        """A regular file of ``size`` bytes read from ``source`` (``read(n)``)."""
        self._write(encode_archive_header(TarEntry(name.encode(), REGULAR, mode=0o644, size=size)))
        left = size
        while left:
            chunk = source.read(min(CHUNK, left))
            if not chunk:
                raise StoreError(
                    f"{name} ended after {size - left} of its {size} bytes while it was "
                    "archived; run `imgbuild fsck`"
                )
            self._write(chunk)
            left -= len(chunk)
        self._write(padding(size))

    def finish(self) -> None:
        self._write(END_OF_ARCHIVE)
        self._write(bytes(-self._written % RECORD_SIZE))

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._written += len(data)


def _write_oci_layout(store: Store, images: list[ArchivedImage], tar: _TarWriter) -> None:
    tar.add_bytes("oci-layout", OCI_LAYOUT_BYTES)
    tar.add_directory("blobs")
    tar.add_directory("blobs/sha256")
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
    tar.add_bytes("index.json", canonical_json(index))


def _write_docker_archive(store: Store, images: list[ArchivedImage], tar: _TarWriter) -> None:
    tar.add_directory("blobs")
    tar.add_directory("blobs/sha256")
    written: dict[str, str] = {}  # store digest -> member name in the archive
    manifest = []
    repositories: dict[str, dict[str, str]] = {}
    for item in images:
        image = store.load_image(item.descriptor)
        if len(image.layers) != len(image.diff_ids):
            raise ArchiveError(
                f"cannot save {item.names or image.digest} as a docker-archive: it has "
                f"{plural(len(image.layers), 'layer')} but its config lists {plural(len(image.diff_ids), 'diff_id')}"
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
    tar.add_bytes("manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
    tar.add_bytes("repositories", json.dumps(repositories, sort_keys=True).encode())


def _add_docker_layer(tar: _TarWriter, store: Store, layer: Descriptor, diff_id: str) -> str:
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
        tar.add_file(name, size, plain)
    return name


def _add_blob(tar: _TarWriter, store: Store, descriptor: Descriptor, name: str) -> None:
    """Copy a blob into the tar, checking its size and digest as it streams."""
    with store.open_blob(descriptor.digest) as blob:
        size = os.fstat(blob.fileno()).st_size
        if size != descriptor.size:
            raise DigestMismatch(
                f"blob {descriptor.digest} in the store has {size} bytes, its descriptor says "
                f"{descriptor.size}; run `imgbuild fsck`"
            )
        reader = _HashingReader(blob)
        tar.add_file(name, size, reader)
        if reader.digest() != descriptor.digest:
            raise DigestMismatch(
                f"blob {descriptor.digest} in the store is corrupt (content hashes to "
                f"{reader.digest()}); run `imgbuild fsck`"
            )


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


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass

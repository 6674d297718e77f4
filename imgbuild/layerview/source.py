"""Where the image to look at comes from: the store, an OCI layout directory,
an OCI or docker archive, or a registry.

Anything not in the store is copied into it first, every blob verified
against its digest on the way in (as ``imgbuild load`` and ``pull`` do), so
the layer walks that follow read only verified blobs from one place.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from imgbuild.dataclass import dataclass
from imgbuild.errors import ArchiveError, ImageNotFound, UsageError
from imgbuild.image import REF_NAME_ANNOTATION, Descriptor, Image, Platform
from imgbuild.safeopen import (
    NotRegularFile,
    TooLarge,
    open_beneath,
    open_object,
    open_root,
    read_capped,
    reopen_for_reading,
)
from imgbuild.store import Store

MAX_JSON_BYTES = 4 << 20  # an index, manifest or config bigger than this is not one


@dataclass
class Source:
    """The image and the words the user named it with."""

    label: str
    image: Image


def open_image(store: Store, text: str, platform: Platform | None = None, insecure: tuple = ()) -> Source:
    """The image ``text`` names: ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``,
    ``docker-archive:FILE``, ``docker://REF`` or a name in the store (pulled
    from its registry when the store does not have it)."""
    kind, _, rest = text.partition(":")
    if kind in ("oci", "oci-archive") and rest:
        path, tag = _split_tag(rest)
        return Source(text, store.load_image(_copy_layout(store, path, tag, kind == "oci"), platform))
    if kind == "docker-archive" and rest:
        return Source(text, store.load_image(_load_docker_archive(store, rest), platform))
    if text.startswith("docker://"):
        return Source(text, _pull(store, text.removeprefix("docker://"), platform, insecure))
    try:
        return Source(text, store.load_image(text, platform))
    except ImageNotFound:
        if not _looks_remote(text):
            raise
    return Source(text, _pull(store, text, platform, insecure))


def _looks_remote(text: str) -> bool:
    """A reference with a registry host (``127.0.0.1:5000/app``, ``ghcr.io/x/y``):
    those are pulled when the store lacks them; a bare name is a typo more often."""
    first = text.split("/", 1)[0]
    return "/" in text and ("." in first or ":" in first or first == "localhost")


def _pull(store: Store, reference: str, platform: Platform | None, insecure: tuple) -> Image:
    from imgbuild.registry.pull import pull

    return pull(store, reference, platform=platform, insecure=insecure)


def _split_tag(rest: str) -> tuple[str, str | None]:
    """``DIR:TAG`` -> (DIR, TAG); a path with no such tag stays whole."""
    path, sep, tag = rest.rpartition(":")
    if sep and path and "/" not in tag:
        return path, tag
    return rest, None


def _load_docker_archive(store: Store, path: str) -> Descriptor:
    from imgbuild.archive.load import load

    loaded = load(store, path)
    if len(loaded) != 1:
        raise UsageError(f"docker-archive:{path} holds {len(loaded)} images: load it and name one")
    return loaded[0].descriptor


def _copy_layout(store: Store, path: str, tag: str | None, directory: bool) -> Descriptor:
    """Copy the image ``tag`` names (or the only one) of an OCI layout into the store."""
    from imgbuild.archive.load import copy_image_tree
    from imgbuild.archive.reader import open_archive

    with store.writer_lease(), (_directory_layout(path) if directory else open_archive(store, path)) as layout:
        if not layout.has("index.json"):
            raise ArchiveError(f"{layout.label} is not an OCI image layout: it has no index.json")
        descriptor = _pick_manifest(layout, tag)
        copy_image_tree(store, layout, descriptor)
        store.keep_untagged(descriptor)
    return descriptor


def _pick_manifest(layout, tag: str | None) -> Descriptor:
    index = layout.read_json("index.json", "index")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ArchiveError(f"{layout.label}: index.json lists no images")
    descriptors = [Descriptor.from_json(entry) for entry in entries]
    if tag is not None:
        named = [d for d in descriptors if d.annotations.get(REF_NAME_ANNOTATION) == tag]
        if not named:
            tags = sorted({d.annotations.get(REF_NAME_ANNOTATION, "") for d in descriptors} - {""})
            raise ImageNotFound(f"{layout.label} has no image tagged {tag!r} (its tags: {', '.join(tags) or 'none'})")
        return named[0]
    if len(descriptors) > 1:
        raise UsageError(f"{layout.label} holds {len(descriptors)} images: add :TAG to pick one")
    return descriptors[0]


@contextmanager
def _directory_layout(path: str):
    try:
        root = open_root(path)
    except OSError as error:
        raise ArchiveError(f"cannot open OCI layout {path}: {error.strerror}") from None
    try:
        yield DirectoryLayout(root, f"oci:{path}")
    finally:
        os.close(root)


class DirectoryLayout:
    """An OCI layout directory read as ``imgbuild.archive.load`` reads an archive:
    every path below it opened without following symlinks, only regular files."""

    def __init__(self, root_fd: int, label: str):
        self.root_fd = root_fd
        self.label = label

    def has(self, name: str) -> bool:
        try:
            os.close(open_beneath(self.root_fd, name, os.O_PATH))
            return True
        except OSError:
            return False

    def open(self, name: str):
        try:
            path_fd, st = open_object(self.root_fd, name)
        except OSError as error:
            raise ArchiveError(f"{self.label}: cannot open {name}: {error.strerror}") from None
        try:
            fd = reopen_for_reading(path_fd, st)
        except NotRegularFile as error:
            raise ArchiveError(f"{self.label}: {name} is {error.kind}, not a regular file") from None
        finally:
            os.close(path_fd)
        return os.fdopen(fd, "rb"), st.st_size

    def read_bytes(self, name: str, what: str) -> bytes:
        handle, _ = self.open(name)
        with handle:
            try:
                return read_capped(handle.fileno(), MAX_JSON_BYTES)
            except TooLarge:
                raise ArchiveError(f"{self.label}: {what} {name} is too big for a JSON document") from None

    def read_json(self, name: str, what: str):
        import json

        try:
            return json.loads(self.read_bytes(name, what))
        except (ValueError, RecursionError) as error:
            raise ArchiveError(f"{self.label}: {what} {name} is not valid JSON: {error}") from None


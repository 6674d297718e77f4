"""The cache artifact in an OCI registry (``type=registry,ref=...``).

Export pushes the layer blobs with the image push code (a blob the
repository has is skipped, one another repository of the registry has is
mounted), then the config and the manifest by tag. Import reads the
manifest and config once, and pulls a layer blob only when the build needs it.
"""

from __future__ import annotations

from dataclasses import replace

from imgbuild.cache.share import (
    CACHE_CONFIG,
    MAX_CONFIG_BYTES,
    CacheIndex,
    CacheShareError,
    CacheSource,
    steps_of,
)
from imgbuild.errors import ImgbuildError, UsageError
from imgbuild.image import OCI_MANIFEST, Descriptor, check_digest
from imgbuild.registry.client import RegistryClient, RegistryOptions
from imgbuild.registry.push import push_blob
from imgbuild.registry.reference import DEFAULT_TAG, Reference, parse_reference
from imgbuild.registry.sources import remember_blobs
from imgbuild.store import Store


def _client(ref: Reference, insecure, *, for_push: bool) -> RegistryClient:
    options = replace(RegistryOptions(), insecure_registries=tuple(insecure))
    return RegistryClient(ref.registry, for_push=for_push, options=options)


def _tag_reference(text: str, flag: str) -> Reference:
    ref = parse_reference(text)
    if ref.digest and flag == "--cache-to":
        raise UsageError(f"--cache-to ref={text}: push the cache to a tag, not a digest")
    return ref


def push_cache(
    store: Store, ref_text: str, config: bytes, manifest: bytes, layers: list[Descriptor], insecure=(), fetch_missing=None
) -> Descriptor:
    """Push the cache artifact; a layer the store lacks (an imported entry's) is
    mounted from the repository it came from, or else ``fetch_missing`` brings it."""
    ref = _tag_reference(ref_text, "--cache-to")
    client = _client(ref, insecure, for_push=True)
    with store.writer_lease():
        for layer in layers:
            push_blob(client, store, ref, layer, fetch_missing)
        store.write_blob(config)  # push_blob sends from the store; unreferenced, collection removes it
        config_descriptor = Descriptor.for_bytes(CACHE_CONFIG, config)
        push_blob(client, store, ref, config_descriptor)
        client.put_manifest(ref.repository, ref.tag or DEFAULT_TAG, manifest, OCI_MANIFEST)
    return Descriptor.for_bytes(OCI_MANIFEST, manifest)


class RegistrySource(CacheSource):
    """``type=registry,ref=...``: the manifest and config on first lookup, layers on demand."""

    remote = True

    def __init__(self, ref_text: str, store: Store, insecure=()):
        super().__init__(ref_text)
        self.store = store
        self.ref = _tag_reference(ref_text, "--cache-from")
        self.client = _client(self.ref, insecure, for_push=False)

    def _load(self) -> CacheIndex:
        manifest = self.client.get_manifest(self.ref.repository, self.ref.manifest_reference)
        if manifest.is_index:
            raise CacheShareError(f"--cache-from {self.where}: an image index, not an imgbuild cache")
        index = steps_of(manifest.document, self._read_config, self.where)
        # The registry holds the cache's layers in its repository: a push of an
        # image built on them to the same registry mounts them from there, and
        # downloads nothing (registry/push.py).
        layers = [layer.get("digest") for layer in manifest.document.get("layers") or [] if isinstance(layer, dict)]
        remember_blobs(self.store, self.ref.registry, self.ref.repository, [d for d in layers if _is_digest(d)])
        return index

    def _read_config(self, descriptor: Descriptor) -> bytes:
        if descriptor.size > MAX_CONFIG_BYTES:
            raise CacheShareError(f"--cache-from {self.where}: its index is larger than {MAX_CONFIG_BYTES} bytes")
        # Into the store (verified on the way) and read back; unreferenced, the
        # next collection removes it.
        self.fetch(self.store, descriptor)
        return self.store.read_blob(descriptor.digest)

    def fetch(self, store: Store, blob: Descriptor) -> None:
        self.client.fetch_blob(self.ref.repository, blob, store)


def _is_digest(value) -> bool:
    try:
        check_digest(value)
    except (ImgbuildError, TypeError, ValueError):
        return False
    return True

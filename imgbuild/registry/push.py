"""Push an image from the local store to a registry.

For each blob (the layers in parallel, then the config): HEAD it, and skip it if
the repository has it; else, if we know another repository of the same registry
that holds it (``imgbuild.registry.sources``), ask the registry to mount it from
there; else upload it. Then the manifest goes up by tag. The registry checks that
every blob a manifest names is there, so the order matters.

An index (multi-platform image) is pushed when every platform's manifest is in
the store: each platform image by digest, then the index by tag.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from imgbuild.errors import StoreError, UsageError
from imgbuild.image import (
    DOCKER_LAYER_FOREIGN,
    INDEX_TYPES,
    OCI_LAYER_NONDIST_GZIP,
    Descriptor,
    media_type_of,
    parse_json_document,
)
from imgbuild.registry.client import (
    Progress,
    RegistryClient,
    RegistryOptions,
    TransferEvent,
    run_in_parallel,
)
from imgbuild.registry.reference import DEFAULT_TAG, Reference, parse_reference
from imgbuild.registry.sources import mount_sources, remember_blobs
from imgbuild.store import Store

# Layers a registry must not be sent (Windows base layers); Docker skips them too.
NON_DISTRIBUTABLE = (DOCKER_LAYER_FOREIGN, OCI_LAYER_NONDIST_GZIP)

FetchMissing = Callable[[Descriptor], None]


def push(
    store: Store,
    name: str,
    reference: str | None = None,
    *,
    insecure: Iterable[str] = (),
    options: RegistryOptions | None = None,
    progress: Progress | None = None,
    fetch_missing: FetchMissing | None = None,
) -> Descriptor:
    """Push the store's image ``name`` to ``reference`` (default: ``name``); return its descriptor.

    ``fetch_missing(blob)`` brings a layer blob the store does not hold into
    it (a build's layer that an imported cache stands for): asked only when
    the registry has the blob in no repository it could mount it from."""
    ref = parse_reference(reference or name)
    if ref.digest:
        raise UsageError(f"cannot push to {reference or name}: push to a tag, not a digest")
    options = options or RegistryOptions()
    options = replace(options, insecure_registries=(*options.insecure_registries, *insecure))
    client = RegistryClient(ref.registry, for_push=True, options=options)
    report = progress or (lambda event: None)

    # The lease keeps a concurrent `imgbuild rmi` from collecting the blobs
    # while we upload them: it may untag the image, the blobs go later.
    with store.writer_lease():
        descriptor = store.resolve(name)
        data = store.read_blob(descriptor.digest)
        document = parse_json_document(data, f"manifest of {name}")
        media_type = media_type_of(document, descriptor.media_type)
        if media_type in INDEX_TYPES:
            push_index_children(client, store, ref, document, name, options.workers, report)
        else:
            push_image_blobs(client, store, ref, document, options.workers, report, fetch_missing)
        tag = ref.tag or DEFAULT_TAG
        client.put_manifest(ref.repository, tag, data, media_type)
    pushed = Descriptor(media_type, descriptor.digest, len(data))
    report(TransferEvent("manifest", pushed.digest, pushed.size, media_type, detail=tag))
    return pushed


def push_index_children(
    client: RegistryClient, store: Store, ref: Reference, index: dict, name: str, workers: int, report: Progress
) -> None:
    """Push every platform image of an index by digest (the registry wants them first)."""
    children = [Descriptor.from_json(entry) for entry in index.get("manifests", [])]
    for child in children:
        if not store.has_blob(child.digest):
            platform = f" ({child.platform})" if child.platform else ""
            raise StoreError(
                f"cannot push {name}: its index names manifest {child.digest}{platform}, which is not "
                "in the store (pull every platform, or push a single-platform image)"
            )
    for child in children:
        data = store.read_blob(child.digest)
        document = parse_json_document(data, f"manifest {child.digest}")
        media_type = media_type_of(document, child.media_type)
        if media_type in INDEX_TYPES:
            push_index_children(client, store, ref, document, name, workers, report)
        else:
            push_image_blobs(client, store, ref, document, workers, report)
        client.put_manifest(ref.repository, child.digest, data, media_type)


def push_image_blobs(
    client: RegistryClient,
    store: Store,
    ref: Reference,
    manifest: dict,
    workers: int,
    report: Progress,
    fetch_missing: FetchMissing | None = None,
) -> None:
    """Make the registry hold every blob of one image manifest: layers, then config."""
    layers = [Descriptor.from_json(layer) for layer in manifest.get("layers") or []]
    layers = [layer for layer in layers if layer.media_type not in NON_DISTRIBUTABLE]
    unique = list({layer.digest: layer for layer in layers}.values())

    def upload(layer: Descriptor) -> TransferEvent:
        return push_blob(client, store, ref, layer, fetch_missing)

    for _, event in run_in_parallel(upload, unique, workers):
        report(event)
    report(push_blob(client, store, ref, Descriptor.from_json(manifest["config"])))


def push_blob(
    client: RegistryClient, store: Store, ref: Reference, blob: Descriptor, fetch_missing: FetchMissing | None = None
) -> TransferEvent:
    """Skip, mount or upload one blob; say which. A blob the store lacks is
    mounted from a repository known to hold it (``sources.py``), and only when
    no mount is possible or the registry refuses it, fetched (``fetch_missing``)
    and uploaded."""
    repository = ref.repository
    if client.has_blob(repository, blob.digest):
        event = TransferEvent("exists", blob.digest, blob.size, blob.media_type)
    else:
        event = None
        for source in mount_sources(store, ref.registry, blob.digest, exclude=repository):
            if client.mount_blob(repository, blob.digest, source):
                event = TransferEvent("mounted", blob.digest, blob.size, blob.media_type, detail=source)
                break
        if event is None:
            if not store.has_blob(blob.digest) and fetch_missing is not None:
                fetch_missing(blob)
            if not store.has_blob(blob.digest):
                raise StoreError(f"cannot push {ref}: blob {blob.digest} is missing from the store at {store.root}")
            client.upload_blob(repository, blob, lambda: store.open_blob(blob.digest))
            event = TransferEvent("uploaded", blob.digest, blob.size, blob.media_type)
    remember_blobs(store, ref.registry, repository, [blob.digest])
    return event

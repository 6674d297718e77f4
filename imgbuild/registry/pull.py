"""Pull an image from a registry into the local store.

Steps: resolve the reference to a manifest (HEAD first, so an image we already
have costs no download); an index or Docker manifest list picks the platform
(the host's unless asked otherwise); the config downloads, its diff_ids are
checked for form; the layers we lack download in parallel, each verified
against its digest while it streams into the store and then extracted into
its snapshot by the same worker, which proves its diff_id (as docker pull
unpacks); then the manifest (and the index it came from) are stored and,
last, the tag is set, so a tag never points at an image with missing blobs.

The image is tagged in the store under Docker's familiar name of the reference,
with the tag made explicit (``Reference.store_name``): ``busybox`` and
``docker.io/library/busybox`` both become ``busybox:latest``,
``127.0.0.1:5000/app:1`` stays as it is, ``app@sha256:...`` keeps its digest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError, RegistryError
from imgbuild.image import (
    DOCKER_CONFIG,
    INDEX_TYPES,
    LAYER_TYPES,
    OCI_CONFIG,
    Descriptor,
    Image,
    Platform,
    chain_ids,
    check_digest,
    media_type_of,
    parse_json_document,
    select_platform,
)
from imgbuild.registry.client import (
    Manifest,
    Progress,
    RegistryClient,
    RegistryOptions,
    TransferEvent,
    run_in_parallel,
)
from imgbuild.registry.reference import parse_reference
from imgbuild.registry.sources import remember_blobs
from imgbuild.store import Store
from imgbuild.units import plural

MAX_INDEX_DEPTH = 3  # an index may point at an index; this deep and no deeper


def pull(
    store: Store,
    reference: str,
    *,
    platform: Platform | None = None,
    insecure: Iterable[str] = (),
    tag_as: str | None = None,
    options: RegistryOptions | None = None,
    progress: Progress | None = None,
) -> Image:
    """Pull ``reference`` into ``store``, tag it (``tag_as`` or its store name), return it."""
    ref = parse_reference(reference)
    options = options or RegistryOptions()
    options = replace(options, insecure_registries=(*options.insecure_registries, *insecure))
    client = RegistryClient(ref.registry, options=options)
    report = progress or (lambda event: None)
    want = platform or Platform.host()

    # A pull killed mid-transfer left partial blobs in its work dir: the next
    # pull removes them, as the next build does.
    store.sweep_dead_work()
    # The lease keeps `imgbuild rmi` from collecting blobs we wrote until the tag names them.
    with store.writer_lease():
        return _pull_into(store, client, ref, want, tag_as, options, report)


def _pull_into(store, client: RegistryClient, ref, want: Platform, tag_as, options, report) -> Image:
    manifest = fetch_manifest(client, store, ref.repository, ref.manifest_reference)
    indexes: list[Manifest] = []
    chosen_platform: Platform | None = None
    while manifest.is_index:
        if len(indexes) == MAX_INDEX_DEPTH:
            raise RegistryError(f"{ref}: image indexes nested more than {MAX_INDEX_DEPTH} deep")
        indexes.append(manifest)
        chosen = select_platform(manifest.document, want)
        chosen_platform = chosen.platform
        manifest = fetch_manifest(client, store, ref.repository, chosen.digest)

    config_descriptor, layers = image_blobs(manifest, str(ref))
    download_blobs(client, store, ref.repository, [config_descriptor], options.workers, report)
    config = store.read_json(config_descriptor.digest, "image config")
    diff_ids = check_diff_ids(layers, config, str(ref))
    stack = [
        UnpackedLayer(layer, diff_id, chain_id)
        for layer, diff_id, chain_id in zip(layers, diff_ids, chain_ids(diff_ids), strict=True)
    ]
    download_blobs(client, store, ref.repository, layers, options.workers, report, stack, str(ref))
    remember_blobs(store, ref.registry, ref.repository, [config_descriptor.digest, *(d.digest for d in layers)])

    for document in (manifest, *indexes):
        store.write_blob(document.data, document.descriptor.digest)
    descriptor = Descriptor(
        manifest.descriptor.media_type,
        manifest.descriptor.digest,
        manifest.descriptor.size,
        platform=chosen_platform or Platform.from_json(config),
    )
    store.tag(tag_as or ref.store_name, descriptor)
    return store.load_image(descriptor)


def fetch_manifest(client: RegistryClient, store: Store, repository: str, reference: str) -> Manifest:
    """A manifest by tag or digest, from the store when we already hold those bytes."""
    if reference.startswith("sha256:"):
        known: Descriptor | None = Descriptor("", reference, 0)
    else:
        known = client.head_manifest(repository, reference)
    if known is not None and store.has_blob(known.digest):
        data = store.read_blob(known.digest)
        document = parse_json_document(data, f"manifest {known.digest}")
        media_type = media_type_of(document, known.media_type)
        if media_type in INDEX_TYPES or "layers" in document:
            return Manifest(Descriptor(media_type, known.digest, len(data)), data, document)
    return client.get_manifest(repository, reference)


def image_blobs(manifest: Manifest, where: str) -> tuple[Descriptor, list[Descriptor]]:
    """The config and layer descriptors of an image manifest, checked to be an image."""
    try:
        config = Descriptor.from_json(manifest.document["config"])
        layers = [Descriptor.from_json(layer) for layer in manifest.document.get("layers") or []]
    except (KeyError, TypeError) as error:
        raise RegistryError(f"{where}: malformed manifest ({error})") from None
    if config.media_type not in (OCI_CONFIG, DOCKER_CONFIG):
        raise RegistryError(
            f"{where} is not a container image: its config has media type {config.media_type!r}"
        )
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise RegistryError(f"{where}: layer {layer.digest} has unsupported media type {layer.media_type!r}")
    return config, layers


@dataclass
class UnpackedLayer:
    """A layer of the image being pulled, at its place in the stack."""

    blob: Descriptor
    diff_id: str  # what the config claims; the extraction checks it
    chain_id: str


def download_blobs(
    client: RegistryClient,
    store: Store,
    repository: str,
    blobs: list[Descriptor],
    workers: int,
    report: Progress,
    unpack: Iterable[UnpackedLayer] = (),
    image: str = "",
) -> None:
    """Download the blobs the store lacks, a few at a time; stop at the first failure.

    Each layer in ``unpack`` is extracted into its snapshot as soon as its
    blob is in the store, in the worker that downloaded it: extraction
    overlaps the other downloads, and independent layers (each its own
    directory) are extracted side by side. A layer whose content does not
    match its diff_id fails the pull (``DigestMismatch`` naming ``image``)
    before anything is tagged.
    """
    places: dict[str, list[UnpackedLayer]] = {}
    for layer in unpack:
        places.setdefault(layer.blob.digest, []).append(layer)
    unique = {blob.digest: blob for blob in blobs}
    present = []
    for blob in unique.values():
        if store.has_blob(blob.digest):
            _check_stored_size(store, blob, repository)
            report(TransferEvent("exists", blob.digest, blob.size, blob.media_type))
            present.append(blob)

    def fetch(blob: Descriptor) -> bool:
        fetched = not store.has_blob(blob.digest)
        if fetched:
            client.fetch_blob(repository, blob, store)
        for layer in places.get(blob.digest, ()):
            store.ensure_snapshot(layer.blob, layer.diff_id, layer.chain_id, image)
        return fetched

    work = [blob for blob in unique.values() if blob not in present or blob.digest in places]
    for blob, fetched in run_in_parallel(fetch, work, workers):
        if fetched:
            report(TransferEvent("downloaded", blob.digest, blob.size, blob.media_type))


def _check_stored_size(store: Store, blob: Descriptor, repository: str) -> None:
    """A blob we hold already must have the size the manifest says: a manifest
    that lies about it would be tagged, and then fail every reader (and fsck)."""
    actual = store.blob_path(blob.digest).stat().st_size
    if blob.size != actual:
        raise RegistryError(
            f"{repository}: the manifest says blob {blob.digest} is {blob.size} bytes, but that "
            f"digest's content is {actual} bytes; the manifest is wrong, refusing the image"
        )


def check_diff_ids(layers: list[Descriptor], config: dict, where: str) -> list[str]:
    """The config lists one well-formed diff_id per layer.

    They are only claims: the store records a layer's diff_id when extracting
    it has proved it (``Store.ensure_snapshot``, as the pull unpacks each
    layer), never before.
    """
    diff_ids = config.get("rootfs", {}).get("diff_ids") or []
    if len(diff_ids) != len(layers):
        raise ImgbuildError(
            f"{where}: malformed image: the manifest has {plural(len(layers), 'layer')} but the config "
            f"lists {plural(len(diff_ids), 'diff_id')}"
        )
    for diff_id in diff_ids:
        check_digest(diff_id)
    return diff_ids

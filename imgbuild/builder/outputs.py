"""Where a built image goes: ``--output type=image|oci|docker|local|tar|registry`` and ``--push``.

The image is always written to the local store first (that is where its
blobs live); every output is made from there. ``compression=`` on an output
re-compresses only the layers this build made: base-image layers are never
rewritten.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from imgbuild.builder.options import OutputSpec
from imgbuild.builder.rootfs import mounted_layers, recompress

if TYPE_CHECKING:
    from imgbuild.archive.names import ArchivedImage

# archive and export code is imported by the output that uses it: a build
# without --output loads none of it.
from imgbuild.errors import BuildError, UsageError
from imgbuild.image import OCI_INDEX, Image, LayerRef, canonical_json
from imgbuild.store import Store, normalise_tag
from imgbuild.store.atomic import write_file_atomic


def output_specs(options) -> list[OutputSpec]:
    specs = list(options.outputs)
    if options.push and not any(spec.type == "registry" or spec.push for spec in specs):
        specs.append(OutputSpec(type="registry", push=True))
    return specs


def only_pushed(options) -> bool:
    """True when the build's only outputs are ``--output type=registry`` that
    take the image as it is: its layers need not be in the local store (see
    ``write_outputs``). ``--push`` keeps the image in the store as well, as
    ``docker build --push`` does, so that a cold and a cached build leave the
    same thing behind and a pipeline can run what it pushed."""
    specs = output_specs(options)
    if options.push or not specs:
        return False
    return all(spec.type == "registry" and not spec.compression for spec in specs)


def write_outputs(
    store: Store, options, image: Image, layers: list[LayerRef], base_layers: int, progress, fetch_layers=None
) -> None:
    """Write every output. ``fetch_layers(layers)`` brings layers the store
    does not hold yet (an imported cache's): a push asks for one only when the
    registry cannot mount it from where it is; every other output needs them all."""
    for spec in output_specs(options):
        if fetch_layers is not None and not (spec.type == "registry" and not spec.compression):
            fetch_layers(layers)
        try:
            _write_output(store, options, image, layers, base_layers, progress, spec, fetch_layers)
        except OSError as error:  # a dest the user gave that cannot be written
            reason = f"{error.filename}: {error.strerror}" if error.filename else str(error)
            raise BuildError(f"cannot write the {spec.type} output to {spec.dest} ({reason})") from None


def _write_output(
    store: Store, options, image: Image, layers: list[LayerRef], base_layers: int, progress, spec: OutputSpec,
    fetch_layers=None,
) -> None:
    names = [normalise_tag(name) for name in spec.name.split(",")] if spec.name else list(options.tags)
    chosen = image_with_compression(store, image, layers, base_layers, spec)
    if spec.type == "image":
        for name in names:
            store.tag(name, chosen.manifest_descriptor)
        if spec.push:
            _push(store, chosen, names, options, progress)
    elif spec.type in ("oci", "docker"):
        _write_archive_output(store, chosen, names, spec)
        progress.info(f"wrote {spec.type} image to {spec.dest}")
    elif spec.type in ("local", "tar"):
        _write_rootfs(store, layers, spec, progress)
        progress.info(f"wrote the root filesystem to {spec.dest}")
    elif spec.type == "registry":
        _push(store, chosen, names, options, progress, fetch_layers)
    else:
        raise UsageError(f"unknown output type {spec.type!r}")


def image_with_compression(
    store: Store, image: Image, layers: list[LayerRef], base_layers: int, spec: OutputSpec
) -> Image:
    """The image, or a twin whose own layers use ``spec.compression`` (same config, same diff_ids)."""
    if not spec.compression:
        return image
    blobs = [layer.blob for layer in layers[:base_layers]]
    for layer in layers[base_layers:]:
        blobs.append(recompress(store, layer, spec.compression, spec.compression_level).blob)
    if blobs == [layer.blob for layer in layers]:
        return image
    return store.write_image(image.config, blobs)


def _push(store: Store, image: Image, names: list[str], options, progress, fetch_layers=None) -> None:
    from imgbuild.registry.push import push

    if not names:
        raise UsageError("pushing needs a name: add -t REGISTRY/NAME:TAG or --output type=registry,name=...")
    fetch_missing = None
    if fetch_layers is not None:
        fetch_missing = lambda blob: fetch_layers([LayerRef("", blob)])  # noqa: E731
    for name in names:
        progress.info(f"pushing {name}")
        push(store, image.digest, name, insecure=options.insecure_registries, fetch_missing=fetch_missing)
        progress.info(f"pushed {name}@{image.digest}")


def _write_archive_output(store: Store, image: Image, names: list[str], spec: OutputSpec) -> None:
    from imgbuild.archive.names import ArchivedImage
    from imgbuild.archive.save import write_archive

    destination = Path(spec.dest)
    images = [ArchivedImage(list(names), image.manifest_descriptor)]
    if spec.type == "oci" and not spec.tar:
        write_layout_directory(store, images, destination)
        return
    if str(destination) == "-":
        raise UsageError("--output dest=- (stdout) is not supported; give a file name")
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            write_archive(store, images, out, spec.type)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, destination)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_layout_directory(store: Store, images: list[ArchivedImage], destination: Path) -> None:
    """An OCI image layout directory (``type=oci,tar=false``), blobs hard-linked where possible."""
    blobs_dir = destination / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    manifests = []
    for entry in images:
        image = store.load_image(entry.descriptor)
        digests = [image.digest, image.config_descriptor.digest] + [layer.digest for layer in image.layers]
        for digest in digests:
            _place_blob(store, digest, blobs_dir / digest.split(":", 1)[1])
        names = entry.names or [None]
        for name in names:
            annotations = {"org.opencontainers.image.ref.name": name} if name else {}
            manifests.append(image.manifest_descriptor.with_annotations(annotations).to_json())
    write_file_atomic(destination / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    write_file_atomic(destination / "index.json", canonical_json(index))


def _place_blob(store: Store, digest: str, target: Path) -> None:
    if target.exists():
        return
    source = store.blob_path(digest)
    try:
        os.link(source, target)
    except OSError:  # another filesystem: copy
        tmp = target.with_name(target.name + ".tmp")
        with store.open_blob(digest) as reader, open(tmp, "wb") as writer:
            while chunk := reader.read(1 << 20):
                writer.write(chunk)
        os.replace(tmp, target)


def _write_rootfs(store: Store, layers: list[LayerRef], spec: OutputSpec, progress) -> None:
    """``type=local``: the final root filesystem as a directory; ``type=tar``: as a tar file."""
    from imgbuild.builder.export import export_tree

    destination = Path(spec.dest)
    with mounted_layers(store, layers) as merged:
        if spec.type == "local":
            report = export_tree(merged, destination, unsafe=spec.unsafe_special_files)
            for line in report.warnings(str(destination)):
                progress.warning(line)
            return
        # A tar file makes nothing special on the host: devices and set-id
        # bits are entries in it, created only by whoever extracts it.
        destination.parent.mkdir(parents=True, exist_ok=True)
        import subprocess  # only for this output

        command = ["tar", "--numeric-owner", "--xattrs", "-C", str(merged), "-cf", str(destination), "."]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"writing {spec.type} output to {destination} failed: {result.stderr.strip()}")

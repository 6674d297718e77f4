"""The end of a build: the target stage as an image in the store, its tags, --iidfile and --metadata-file."""

from __future__ import annotations

import json
import os
from dataclasses import field

from imgbuild.builder import imageconfig as ic
from imgbuild.builder.options import BuildOptions
from imgbuild.builder.state import StageResult
from imgbuild.dataclass import dataclass
from imgbuild.errors import BuildError, UsageError
from imgbuild.image import Image, Platform
from imgbuild.store import Store, normalise_tag


@dataclass
class BuildResult:
    """What a build made: the target's image, each built stage and the step counts."""

    image: Image
    stages: dict[int, StageResult]
    steps_cached: int
    steps_run: int
    seconds: float
    tags: list[str] = field(default_factory=list)


def write_final_image(
    store: Store, options: BuildOptions, platform: Platform, target: StageResult, elsewhere: frozenset = frozenset()
) -> Image:
    config = json.loads(json.dumps(target.config))
    if options.labels:
        ic.add_labels(config, options.labels)
    history = config.get("history") or []
    fill_created(history)
    if options.source_date_epoch is not None:
        config["created"] = ic.timestamp(options.source_date_epoch)
    else:
        config["created"] = _last_created(history)
        if config["created"] is None:
            del config["created"]  # FROM scratch and metadata only: no time to give
    config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in target.layers]}
    config["architecture"] = platform.architecture
    config["os"] = platform.os
    if platform.variant:
        config["variant"] = platform.variant
    else:
        config.pop("variant", None)
    # --annotation: the manifest's (its digest changes; the image ID does not)
    layers = [layer.blob for layer in target.layers]
    return store.write_image(config, layers, options.annotations or None, elsewhere=elsewhere)


def fill_created(history: list[dict]) -> None:
    """Date the history entries of config-only steps as BuildKit does.

    Steps that make a layer carry the time their cache entry was first built
    (``layerstep.py``); a config-only step gets the time of the layer step
    before it, or, before the first layer step of this build, the time of
    that first layer step. No entry carries the clock of this build, so a
    fully cached rebuild writes the same config.
    """
    fallback = None
    seen_undated = False
    for entry in history:  # the first new layer time (else the last known one)
        if entry.get("created"):
            fallback = entry["created"]
            if seen_undated:
                break
        else:
            seen_undated = True
    seen_undated = False
    for entry in history:
        if entry.get("created"):
            if seen_undated:
                fallback = entry["created"]
            continue
        seen_undated = True
        if fallback is None:
            entry.pop("created", None)
        else:
            entry["created"] = fallback


def _last_created(history: list[dict]) -> str | None:
    """The image's ``created``: its newest step's, as BuildKit writes it."""
    return next((entry["created"] for entry in reversed(history) if entry.get("created")), None)


def tag_image(store: Store, options: BuildOptions, image: Image) -> list[str]:
    tags = [normalise_tag(tag) for tag in options.tags]
    for tag in tags:
        store.tag(tag, image.manifest_descriptor)
    if not tags:
        store.keep_untagged(image.manifest_descriptor)
    return tags


def remove_result_files(options: BuildOptions) -> None:
    """Remove ``--iidfile`` and ``--metadata-file`` before the build starts, as
    Docker does: a build that fails leaves none, never an earlier build's."""
    for path in (options.iidfile, options.metadata_file):
        if path is None:
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise UsageError(f"{path} is a directory: give a file to write the build's results to") from None
        except OSError as error:  # as a failed write of it would be, found before the build
            raise BuildError(f"cannot write {path}: {error.strerror or error}") from None


def image_size(image: Image) -> int:
    """Bytes of the manifest, config and (compressed) layer blobs."""
    blobs = [image.manifest_descriptor, image.config_descriptor, *image.layers]
    return sum(blob.size for blob in blobs)


def write_result_files(options: BuildOptions, result: BuildResult) -> None:
    """``--iidfile`` and ``--metadata-file``."""
    try:
        _write_iidfile_and_metadata(options, result)
    except OSError as error:  # a path the user gave that cannot be written
        raise BuildError(f"cannot write {error.filename}: {error.strerror or error}") from None


def _write_iidfile_and_metadata(options: BuildOptions, result: BuildResult) -> None:
    if options.iidfile:
        options.iidfile.write_text(result.image.config_descriptor.digest)
    if options.metadata_file:
        metadata = {
            "containerimage.digest": result.image.digest,
            "containerimage.config.digest": result.image.config_descriptor.digest,
            "containerimage.descriptor": result.image.manifest_descriptor.to_json(),
            "image.name": ",".join(result.tags),
            "imgbuild.steps.cached": result.steps_cached,
            "imgbuild.steps.run": result.steps_run,
            # for CI: every tag as a list, and the bytes a registry stores for the
            # image (manifest, config and compressed layers)
            "imgbuild.tags": list(result.tags),
            "imgbuild.image.size": image_size(result.image),
            "imgbuild.seconds": round(result.seconds, 3),
        }
        options.metadata_file.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")

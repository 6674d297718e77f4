"""Where a stage starts: scratch, an earlier stage, or a base image from the store or a registry."""

from __future__ import annotations

import json

from imgbuild import dockerfile as frontend
from imgbuild.builder import imageconfig as ic
from imgbuild.builder.rootfs import image_layers
from imgbuild.builder.state import StageState
from imgbuild.cache.keys import cache_key
from imgbuild.errors import BuildError, DockerfileError, ImageNotFound
from imgbuild.image import Image, Platform, new_config


def base_state(builder, stage) -> StageState:
    """The state a stage starts from: its FROM, before any of its instructions."""
    platform_key = str(builder.platform)
    if stage.base_stage is not None:
        base = builder.stage_result(stage.base_stage)  # started before this stage: it waits for it
        config = json.loads(json.dumps(base.config))
        return StageState(
            config,
            list(base.layers),
            base.key,
            base_name=f"stage {stage.base_stage}",
            base_layers=base.base_layers,
            base_digest=base.base_digest,
            entry_key=base.entry_key,
        )
    if stage.base.lower() == "scratch":
        config = new_config(builder.platform)
        ic.ensure_path(config)
        ic.container_config(config)["WorkingDir"] = "/"  # BuildKit's empty image has it
        key = cache_key({"base": "scratch", "platform": platform_key})
        return StageState(config, [], key, base_name="scratch", base_digest="scratch")
    image = resolve_image(builder, stage.base, stage.platform)
    builder.base_configs[stage.index] = image.config  # for the build checks (Env, Shell)
    config = json.loads(json.dumps(image.config))
    config.pop("created", None)
    ic.ensure_path(config)
    layers = image_layers(image, stage.base)
    key = base_key(image, platform_key)
    return StageState(
        config, layers, key, base_name=stage.base, base_layers=len(layers), base_digest=image.digest
    )


def base_key(image: Image, platform: str) -> str:
    """Where a stage's key chain starts: the base image's layers (their diff_ids), not its digest.

    As in BuildKit (its image source keys on the chain ID of the layers): a
    base whose config alone changed (a label, a new ``created``) leaves every
    step cached. What a step takes from the config (env, user, working
    directory, shell, ONBUILD) is in that step's own key document.
    """
    return cache_key({"base_layers": image.diff_ids, "platform": platform})


def resolve_image(builder, name: str, platform_flag: str | None = None) -> Image:
    """A base image for ``platform_flag`` (default: the build's platform)."""
    platform = Platform.parse(platform_flag) if platform_flag else builder.platform
    name = _named_image(builder, name)
    # Pinned as it is resolved, so a collection (an rmi of it meanwhile) keeps its blobs.
    with builder.store.writer_lease():
        image = _find_image(builder, name, platform)
        if builder.lease is not None:
            builder.lease.pin(image.digest)
    _check_platform(name, image, platform)
    return image


def _named_image(builder, name: str) -> str:
    """``--build-context NAME=docker-image://IMAGE`` puts IMAGE where the Dockerfile says NAME."""
    named = builder.options.build_contexts.get(name)
    if named is None:
        return name
    if named.image is None:
        raise BuildError(
            f"the build context {name} is a directory: an image cannot start from it; COPY --from={name} reads it"
        )
    return named.image


def onbuild_triggers(state: StageState) -> list:
    """A base image's ONBUILD triggers run first; they do not carry over further."""
    triggers = ic.container_config(state.config).pop("OnBuild", None) or []
    parsed = []
    for expression in triggers:
        try:
            parsed.append(frontend.parse_onbuild_trigger(expression))
        except DockerfileError as error:
            raise BuildError(f"ONBUILD trigger {expression!r} of {state.base_name} is invalid: {error.message}") from None
    return parsed


def _find_image(builder, name: str, platform: Platform) -> Image:
    """From the local store, or pulled (always with --pull)."""
    journal = getattr(builder, "journal", None)  # the build's record notes what each name resolved to
    if not builder.options.pull:
        for candidate in local_names(name):
            try:
                descriptor = builder.store.resolve(candidate)
            except ImageNotFound:
                descriptor = None
            if journal is not None:
                journal.resolved(candidate, descriptor)
            if descriptor is None:
                continue
            try:
                return builder.store.load_image(descriptor, platform)
            except ImageNotFound:
                continue
    if journal is not None:
        journal.refuse(f"the base image {name} was pulled")
    from imgbuild.registry.pull import (
        pull,  # on demand: most builds never pull, and it is slow to import
    )

    builder.progress.info(f"pulling {name}")
    return pull(builder.store, name, platform=platform, insecure=builder.options.insecure_registries)


def _check_platform(name: str, image: Image, want: Platform) -> None:
    """Use a single-platform image only for its own platform, as BuildKit does.

    An index has already given the manifest for ``want``; a plain manifest's
    config says its platform, and building on it for another would run its
    binaries anyway and label the result with a platform its layers are not.
    """
    if not image.config.get("architecture") or not image.config.get("os"):
        return
    have = Platform.from_json(image.config)
    if not want.matches(have):
        raise BuildError(
            f"image {name} is for {have}, not {want}: build with --platform {have}, "
            f"or use an image made for {want}"
        )


def local_names(name: str) -> list[str]:
    """The names a base image may have in the local store: as written, and Docker's short/long forms."""
    names = [name]
    bare = name
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        if name.startswith(prefix):
            bare = name[len(prefix) :]
            names.append(bare)
    if "/" not in bare.split(":")[0]:
        names.append("docker.io/library/" + bare)
    return names

"""``imgbuild import``: a root filesystem (directory or tar) as a one-layer image.

What ``docker import`` does, reproducibly: the layer is written by the one
layer writer (``imgbuild.layer.write``), so its entries are sorted, owners
numeric and mtimes whole seconds clamped to SOURCE_DATE_EPOCH; with
SOURCE_DATE_EPOCH set, importing the same tree twice gives the same image.

- A directory is read in place, fd-relative and never through a symlink; a
  device node becomes a tar device entry (its contents are never read), a
  socket is left out.
- A tar (plain, gzip or zstd, from a file or standard input) is hostile: it is
  applied by the layer extractor (``imgbuild.layer.extract``: no escapes, no
  links out, bounded entries and bytes) into a directory of the store, which
  is then written as the layer and kept as its snapshot, so a build on the
  image does not extract it again.

``--change`` takes the config instructions ``docker import`` and ``docker
commit`` take, parsed by the Dockerfile front end and applied as a build
applies them; variables expand against the config's environment.
"""

from __future__ import annotations

import os
import stat
from dataclasses import field
from pathlib import Path
from typing import BinaryIO

from imgbuild.builder import imageconfig as ic
from imgbuild.builder.metadata import apply_metadata
from imgbuild.builder.rootfs import commit_directory
from imgbuild.dataclass import dataclass
from imgbuild.dockerfile import (
    Cmd,
    Entrypoint,
    Env,
    Expose,
    Healthcheck,
    Label,
    Onbuild,
    StopSignal,
    User,
    Volume,
    Workdir,
    parse_lines,
)
from imgbuild.dockerfile.instructions import to_instruction
from imgbuild.dockerfile.scope import StageScope, expanded
from imgbuild.errors import DockerfileError, LayerError, UsageError
from imgbuild.image import Descriptor, Image, LayerRef, Platform, new_config
from imgbuild.layer.extract import apply_layer
from imgbuild.layer.write import write_layer
from imgbuild.store import Store, normalise_tag, remove_tree

# Docker's validCommitCommands: what --change may say.
CHANGE_INSTRUCTIONS = (Cmd, Entrypoint, Env, Expose, Healthcheck, Label, Onbuild, StopSignal, User, Volume, Workdir)
CHANGE_KEYWORDS = "CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR"
# A tar bigger than this, uncompressed, is refused as a bomb (a full
# distribution with a desktop is a few GiB).
MAX_TAR_BYTES = 64 << 30
MAX_TAR_ENTRIES = 2_000_000


@dataclass
class ImportOptions:
    """What ``imgbuild import`` was asked to make, from its flags."""

    source: str  # a directory, a tar file, or "-" for standard input
    name: str  # NAME[:TAG]
    changes: list[str] = field(default_factory=list)
    platform: Platform | None = None
    message: str | None = None
    compression: str = "gzip"
    compression_level: int | None = None
    source_date_epoch: int | None = None


def import_image(store: Store, options: ImportOptions, stdin: BinaryIO | None = None) -> Image:
    """Import ``options.source`` as a one-layer image tagged ``options.name``."""
    config = new_config(options.platform or Platform.host())
    apply_changes(config, options.changes)
    with store.writer_lease():
        layer = _import_layer(store, options, stdin)
        # A tar's snapshot is the tree it was applied into; a directory's
        # layer is extracted now, so a build on the image unpacks nothing.
        store.ensure_snapshot(layer.blob, layer.diff_id, layer.diff_id, normalise_tag(options.name))
        created = ic.timestamp(options.source_date_epoch)
        config["created"] = created
        config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id]}
        message = options.message if options.message is not None else f"Imported from {options.source}"
        config["history"] = [{"created": created, "comment": message}]
        image = store.write_image(config, [layer.blob])
        store.tag(normalise_tag(options.name), image.manifest_descriptor)
    return image


def apply_changes(config: dict, changes: list[str]) -> None:
    """Apply each ``--change`` instruction to ``config``, in order."""
    for number, text in enumerate(changes, 1):
        where = f"--change {number}"
        try:
            instruction = _parse_change(text, where)
        except DockerfileError as error:
            raise UsageError(f"{where} ({text!r}): {error.message}") from None
        if not isinstance(instruction, CHANGE_INSTRUCTIONS):
            raise UsageError(
                f"{where} ({text!r}): {instruction.keyword} is not a valid change; "
                f"import takes {CHANGE_KEYWORDS}"
            )
        _apply_change(config, instruction, where)


def _parse_change(text: str, where: str):
    lines = parse_lines(text, where).lines
    if len(lines) != 1:
        raise DockerfileError(f"a change must be exactly one instruction, got {len(lines)}")
    return to_instruction(lines[0], where)


def _apply_change(config: dict, instruction, where: str) -> None:
    scope = StageScope(base_env=ic.env_list(config), filename=where)
    container = ic.container_config(config)
    if isinstance(instruction, Env):
        for pair in scope.apply(instruction).pairs:
            ic.set_env(config, pair.key, pair.value)
        return
    instruction = expanded(instruction, scope)
    if isinstance(instruction, Workdir):
        container["WorkingDir"] = ic.workdir_path(config, instruction.path)
        return
    apply_metadata(config, instruction, cmd_set=False)


def _import_layer(store: Store, options: ImportOptions, stdin: BinaryIO | None) -> LayerRef:
    if options.source == "-":
        if stdin is None:
            raise UsageError("import -: no standard input to read the tar from")
        return _import_tar(store, options, stdin)
    path = Path(options.source)
    try:
        info = os.stat(path)  # a symlink to the tree or tar given by the user is followed
    except OSError as error:
        raise UsageError(f"cannot import {options.source}: {error.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        return _import_directory(store, options, path)
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"cannot import {options.source}: neither a directory nor a tar file")
    with open(path, "rb") as tar:
        return _import_tar(store, options, tar)


def _import_directory(store: Store, options: ImportOptions, path: Path) -> LayerRef:
    with store.blob_writer() as blob:
        digests = write_layer(
            path,
            blob,
            compression=options.compression,
            level=options.compression_level,
            source_date_epoch=options.source_date_epoch,
        )
    store.record_layer(digests.digest, digests.diff_id, digests.media_type, digests.size)
    return LayerRef(digests.diff_id, Descriptor(digests.media_type, digests.digest, digests.size))


def _import_tar(store: Store, options: ImportOptions, tar: BinaryIO) -> LayerRef:
    staging = store.make_temp_dir("import-")
    try:
        # A tar without a root entry says nothing of "/": give it the mode
        # Docker's images have (mkdtemp's is 0700).
        os.chmod(staging, 0o755)
        try:
            apply_layer(tar, staging, max_entries=MAX_TAR_ENTRIES, max_bytes=MAX_TAR_BYTES)
        except LayerError as error:
            raise LayerError(f"cannot import {_shown(options.source)}: {error}") from None
        layer = commit_directory(
            store,
            staging,
            parent_chain_id=None,
            compression=options.compression,
            level=options.compression_level,
            source_date_epoch=options.source_date_epoch,
        )
        if layer is None:
            raise UsageError(f"cannot import {_shown(options.source)}: the tar has no entries")
        return layer
    finally:
        if staging.exists():
            remove_tree(staging)


def _shown(source: str) -> str:
    return "standard input" if source == "-" else source

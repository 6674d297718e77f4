"""Names in image archives: image tags as archives carry them, and blob member names."""

from __future__ import annotations

from dataclasses import field

from imgbuild.dataclass import dataclass
from imgbuild.errors import ArchiveError, UsageError
from imgbuild.image import Descriptor
from imgbuild.store import normalise_tag


@dataclass
class ArchivedImage:
    """One image in an archive: the tags it carries and its top-level descriptor.

    For ``save`` the descriptor is the saved manifest; for ``load`` it is what
    the store now holds (a manifest or, from an OCI archive, maybe an index).
    """

    names: list[str] = field(default_factory=list)
    descriptor: Descriptor | None = None


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


def blob_member_name(digest: str) -> str:
    """Where a blob lives in an archive: ``blobs/sha256/<hex>`` (OCI layout, Docker 25)."""
    return "blobs/sha256/" + digest.split(":", 1)[1]

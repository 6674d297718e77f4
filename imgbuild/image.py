"""OCI and Docker image formats: media types, descriptors, platforms, configs, manifests.

This module only knows the JSON documents; storing them is ``imgbuild.store``'s
job and moving them is ``imgbuild.registry``'s. Docker schema2 documents are
read as readily as OCI ones; imgbuild writes OCI.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import field

from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError, UsageError

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from typing import Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
LAYER_TYPES = (
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_LAYER_NONDIST_GZIP,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_ZSTD,
    DOCKER_LAYER_FOREIGN,
)

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(document: dict) -> bytes:
    """The bytes imgbuild writes for a JSON document: sorted keys, no spaces.

    Sorted keys make the digest depend only on the content, which is what
    reproducible builds need.
    """
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_digest(digest: str) -> str:
    """Validate a ``sha256:<64 hex>`` digest string; it becomes part of file paths."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ImgbuildError(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex digits>")
    return digest


@dataclass(frozen=True)
class Platform:
    """An OCI platform: os, architecture and variant."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` as in ``--platform linux/arm64/v8``."""
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"invalid platform {text!r}: expected os/arch or os/arch/variant")
        arch = normalise_arch(parts[1])
        variant = parts[2] if len(parts) == 3 else ""
        if arch == "arm64" and variant == "v8":
            variant = ""
        return cls(parts[0], arch, variant)

    @classmethod
    def host(cls) -> Platform:
        machine = os.uname().machine  # platform.machine(), without importing platform
        arch, variant = HOST_MACHINES.get(machine, (normalise_arch(machine), ""))
        return cls("linux", arch, variant)

    @classmethod
    def from_json(cls, document: dict) -> Platform:
        arch = normalise_arch(document.get("architecture", ""))
        variant = document.get("variant", "")
        if arch == "arm64" and variant == "v8":
            variant = ""
        return cls(document.get("os", ""), arch, variant)

    def to_json(self) -> dict:
        document = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            document["variant"] = self.variant
        return document

    def matches(self, other: Platform) -> bool:
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return not self.variant or not other.variant or self.variant == other.variant

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


# uname -m -> (OCI architecture, variant)
HOST_MACHINES = {
    "x86_64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


def normalise_arch(machine: str) -> str:
    return {
        "x86_64": "amd64",
        "x86-64": "amd64",
        "aarch64": "arm64",
        "armhf": "arm",
        "armel": "arm",
        "armv7l": "arm",
        "i386": "386",
        "i686": "386",
    }.get(machine.lower(), machine.lower())


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: media type, digest and size of a blob."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    platform: Platform | None = None

    @classmethod
    def from_json(cls, document: dict) -> Descriptor:
        try:
            platform = document.get("platform")
            return cls(
                media_type=document.get("mediaType", ""),
                digest=check_digest(document["digest"]),
                size=int(document["size"]),
                annotations=dict(document.get("annotations") or {}),
                platform=Platform.from_json(platform) if platform else None,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ImgbuildError(f"malformed descriptor {document!r}: {error}") from None

    @classmethod
    def for_bytes(cls, media_type: str, data: bytes, **kwargs) -> Descriptor:
        return cls(media_type, sha256_digest(data), len(data), **kwargs)

    def to_json(self) -> dict:
        document: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            document["annotations"] = dict(self.annotations)
        if self.platform:
            document["platform"] = self.platform.to_json()
        return document

    def with_annotations(self, annotations: dict[str, str]) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, dict(annotations), self.platform)


@dataclass
class Image:
    """One single-platform image: its manifest, config and where they came from."""

    manifest_descriptor: Descriptor
    manifest: dict
    config: dict

    @property
    def digest(self) -> str:
        return self.manifest_descriptor.digest

    @property
    def config_descriptor(self) -> Descriptor:
        return Descriptor.from_json(self.manifest["config"])

    @property
    def layers(self) -> list[Descriptor]:
        return [Descriptor.from_json(layer) for layer in self.manifest.get("layers", [])]

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids", []))

    @property
    def platform(self) -> Platform:
        return Platform.from_json(self.config)

    @property
    def container_config(self) -> dict:
        return self.config.get("config") or {}


@dataclass(frozen=True)
class LayerRef:
    """A layer of an image being built: its uncompressed digest and its blob."""

    diff_id: str
    blob: Descriptor
    origin: str = field(default="", compare=False)  # the image it came from, for error messages


def parse_json_document(data: bytes, what: str) -> dict:
    try:
        document = json.loads(data)
    except ValueError as error:
        raise ImgbuildError(f"{what} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ImgbuildError(f"{what} is not a JSON object")
    return document


def media_type_of(document: dict, fallback: str = "") -> str:
    """The media type a manifest-like document declares, or guess it from its shape."""
    if document.get("mediaType"):
        return document["mediaType"]
    if "manifests" in document:
        return OCI_INDEX
    if "layers" in document:
        return OCI_MANIFEST
    return fallback


def select_platform(index: dict, want: Platform) -> Descriptor:
    """Choose the manifest for ``want`` from an image index / manifest list."""
    candidates = []
    for entry in index.get("manifests", []):
        descriptor = Descriptor.from_json(entry)
        if descriptor.media_type not in MANIFEST_TYPES + INDEX_TYPES:
            continue
        if descriptor.platform is None or descriptor.platform.os == "unknown":
            continue  # attestation manifests and the like
        if want.matches(descriptor.platform):
            candidates.append(descriptor)
    if not candidates:
        available = ", ".join(
            str(Platform.from_json(m["platform"])) for m in index.get("manifests", []) if m.get("platform")
        )
        raise ImgbuildError(f"no image for platform {want} in the index (it has: {available or 'none'})")
    # Prefer an exact variant match, as containerd's platform matcher does.
    candidates.sort(key=lambda d: d.platform.variant != want.variant)
    return candidates[0]


def new_config(platform: Platform | None = None) -> dict:
    """An empty image config, what ``FROM scratch`` starts from."""
    platform = platform or Platform.host()
    config = {
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }
    if platform.variant:
        config["variant"] = platform.variant
    return config


def make_manifest(config_descriptor: Descriptor, layers: list[Descriptor], annotations: dict | None = None) -> dict:
    """An OCI manifest. Layers keep their bytes but take OCI media types: a base
    image pushed by Docker names its layers with Docker types, which OCI
    consumers (umoci) refuse in an OCI manifest; BuildKit and buildah rename
    them too."""
    oci_layers = [
        Descriptor(normalise_layer_media_type(layer.media_type), layer.digest, layer.size, layer.annotations)
        for layer in layers
    ]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor.to_json(),
        "layers": [layer.to_json() for layer in oci_layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return manifest


def normalise_layer_media_type(media_type: str) -> str:
    """Docker layer types mapped to their OCI twins (same bytes, other name).

    A foreign (non-distributable) Docker layer stays non-distributable, so a
    push still leaves it out.
    """
    return {
        DOCKER_LAYER: OCI_LAYER,
        DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
        DOCKER_LAYER_ZSTD: OCI_LAYER_ZSTD,
        DOCKER_LAYER_FOREIGN: OCI_LAYER_NONDIST_GZIP,
    }.get(media_type, media_type)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """containerd's chain IDs of a layer stack, bottom first.

    chainID(L0) = diffID(L0); chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln)).
    A chain ID names a layer *and everything below it*, so the same layer at two
    places in one image gets two chain IDs (snapshots are keyed by them).
    """
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(sha256_digest(f"{chain[-1]} {diff_id}".encode()) if chain else diff_id)
    return chain

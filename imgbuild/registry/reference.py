"""Image references: ``busybox``, ``app:1``, ``host:5000/ns/app:1``, ``app@sha256:...``.

Parsing follows Docker's ``reference.ParseNormalizedNamed`` (distribution/reference)
so a name means the same registry and repository here as it does to ``docker pull``:

- the first path component is a registry host when it contains ``.`` or ``:``, is
  ``localhost``, or has an upper-case letter (repository paths are lower-case);
  otherwise the name is on Docker Hub (``docker.io``);
- a Docker Hub name without a namespace gets ``library/`` (``busybox`` is
  ``docker.io/library/busybox``); ``index.docker.io`` means ``docker.io``;
- a tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; a digest is ``sha256:<64 hex>``;
- a bare 64-hex string is refused, as it looks like an image ID, not a name.
"""

from __future__ import annotations

import re

from imgbuild.dataclass import dataclass
from imgbuild.errors import UsageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_LEGACY = "index.docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX_LENGTH = 255

# The grammar of distribution/reference's regexp.go, in Python's syntax. re.ASCII
# because Go's \w is ASCII-only.
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_AND_PORT = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE_RE = re.compile(
    rf"^((?:{_DOMAIN_AND_PORT}/)?{_REMOTE_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?$", re.ASCII
)
_NAME_RE = re.compile(rf"^(?:({_DOMAIN_AND_PORT})/)?({_REMOTE_NAME})$", re.ASCII)
_IDENTIFIER_RE = re.compile(r"^[a-f0-9]{64}$")
_SHA256_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_TAG_RE = re.compile(rf"^{_TAG}$", re.ASCII)

_EXPECTED = "expected [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST], e.g. 127.0.0.1:5000/team/app:1"


@dataclass(frozen=True)
class Reference:
    """A normalised reference: always a registry and a full repository path."""

    registry: str  # "docker.io", "127.0.0.1:5000", "localhost", "[::1]:5000"
    repository: str  # "library/busybox", "team/app"
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The fully qualified name without tag or digest: ``docker.io/library/busybox``."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """The short name Docker shows: ``busybox``, ``user/app``, ``127.0.0.1:5000/app``."""
        if self.registry != DOCKER_HUB:
            return self.name
        path = self.repository
        rest = path.removeprefix(OFFICIAL_PREFIX)
        if path.startswith(OFFICIAL_PREFIX) and "/" not in rest:
            return rest
        return path

    @property
    def manifest_reference(self) -> str:
        """What goes after ``/manifests/`` in the URL: the digest when there is one."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        """The host that serves the registry API (Docker Hub's is not ``docker.io``)."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def store_name(self) -> str:
        """The name a pulled image gets in the local store (see docs/registry.md).

        Docker's familiar form with the tag made explicit, so ``busybox``,
        ``library/busybox`` and ``docker.io/library/busybox:latest`` all become
        ``busybox:latest``; a digest reference keeps its digest and drops any tag.
        """
        if self.digest:
            return f"{self.familiar_name}@{self.digest}"
        return f"{self.familiar_name}:{self.tag or DEFAULT_TAG}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse and normalise a reference as ``docker pull`` does; UsageError if invalid."""
    if _IDENTIFIER_RE.match(text):
        raise UsageError(
            f"invalid image reference {text!r}: a 64-hex string is an image ID, not a name "
            "(write sha256:... after '@' to pull by digest)"
        )
    registry, remainder = split_registry(text)
    remote = remainder.split(":", 1)[0].split("@", 1)[0]
    if remote.lower() != remote:
        raise UsageError(f"invalid image reference {text!r}: repository names must be lowercase")

    match = _REFERENCE_RE.match(f"{registry}/{remainder}")
    if not match:
        raise UsageError(f"invalid image reference {text!r}: {_EXPECTED}")
    name, tag, digest = match.groups()
    if len(name) > NAME_MAX_LENGTH:
        raise UsageError(f"invalid image reference {text[:60]!r}...: the name is longer than {NAME_MAX_LENGTH} characters")
    if digest is not None and not _SHA256_RE.match(digest):
        raise UsageError(f"invalid image reference {text!r}: only sha256 digests (sha256:<64 lowercase hex>) are supported")
    name_match = _NAME_RE.match(name)
    if name_match is None or name_match.group(1) is None:
        # "my_host.io/app": the first part must be a host (it has a '.'), but "_" is
        # not allowed in host names. Docker would go on with an empty registry.
        raise UsageError(f"invalid image reference {text!r}: {registry!r} is not a valid registry host name")
    return Reference(name_match.group(1), name_match.group(2), tag, digest)


def split_registry(text: str) -> tuple[str, str]:
    """Split off the registry host, as distribution/reference's splitDockerDomain.

    Returns (registry, remainder), where remainder still carries any tag or digest.
    """
    first, slash, rest = text.partition("/")
    if not slash:
        return DOCKER_HUB, OFFICIAL_PREFIX + text
    if first == "localhost" or any(c in first for c in ".:") or first.lower() != first:
        registry, remainder = first, rest
    else:
        registry, remainder = DOCKER_HUB, text
    if registry == DOCKER_HUB_LEGACY:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return registry, remainder

"""What a build was asked to do: the options of ``imgbuild build`` as data.

Parsing of the ``--output`` and ``--secret`` mini-languages lives here too, so
the CLI and the Python API accept exactly the same strings as buildx does.
"""

from __future__ import annotations

import os
import stat
from dataclasses import field
from pathlib import Path

from imgbuild.dataclass import dataclass
from imgbuild.errors import UsageError
from imgbuild.image import Platform

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from imgbuild.sandbox.runmounts import SecretSpec

OUTPUT_TYPES = ("image", "oci", "docker", "local", "registry", "tar")
COMPRESSIONS = ("gzip", "zstd", "uncompressed")


@dataclass
class OutputSpec:
    """One ``--output``: where the built image goes."""

    type: str
    dest: str | None = None
    tar: bool = True
    name: str | None = None  # registry / image name, overrides -t for this output
    push: bool = False
    compression: str | None = None
    compression_level: int | None = None
    # type=local: make device nodes, setuid/setgid bits and file capabilities
    # on the host as the image has them (docs/security.md, "Exports").
    unsafe_special_files: bool = False


@dataclass
class BuildOptions:
    """Everything ``imgbuild build`` was asked for, from its flags."""

    context: Path
    dockerfile: Path | None = None  # default: CONTEXT/Dockerfile
    dockerfile_text: str | None = None  # `-f -`: the Dockerfile came on stdin
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    platform: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    no_cache_filter: list[str] = field(default_factory=list)
    explain: bool = False  # --explain: after the build, say why each step missed the cache
    pull: bool = False
    secrets: list[SecretSpec] = field(default_factory=list)
    ca_certs: list[Path] = field(default_factory=list)  # --ca-cert: trusted by RUN steps only
    outputs: list[OutputSpec] = field(default_factory=list)
    push: bool = False
    progress: str = "auto"
    iidfile: Path | None = None
    metadata_file: Path | None = None
    jobs: int = 0  # 0: the CPU count
    runtime: str = "runc"
    network: str = "host"  # RUN's default network
    compression: str = "gzip"
    compression_level: int | None = None
    insecure_registries: list[str] = field(default_factory=list)
    # Automatic collection after the build (imgbuild.cache.prune): None for
    # IMGBUILD_MAX_CACHE / IMGBUILD_MIN_FREE or the defaults.
    max_cache: str | None = None
    min_free: str | None = None
    source_date_epoch: int | None = None
    # --cache-to / --cache-from (imgbuild.cache.share.CacheSpec)
    cache_to: list = field(default_factory=list)
    cache_from: list = field(default_factory=list)
    # buildx flags: --add-host, --annotation (the manifest's), --build-context, --ssh
    extra_hosts: list[tuple[str, str]] = field(default_factory=list)  # (name, address)
    annotations: dict[str, str] = field(default_factory=dict)
    build_contexts: dict[str, NamedContext] = field(default_factory=dict)
    ssh: dict[str, Path] = field(default_factory=dict)  # id -> agent socket

    def target_platform(self) -> Platform:
        """The platform the image is built for: ``platform`` (``--platform``), or this host's."""
        return Platform.parse(self.platform) if self.platform else Platform.host()


@dataclass
class NamedContext:
    """``--build-context NAME=DIR`` (``directory``) or ``NAME=docker-image://REF`` (``image``)."""

    name: str
    directory: Path | None = None
    image: str | None = None


def _key_values(text: str, what: str) -> dict[str, str]:
    """``a=b,c=d`` as a dict; a bare word maps to ``""``."""
    values: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        values[key.strip().lower()] = value.strip() if sep else ""
    if not values:
        raise UsageError(f"empty {what} specification")
    return values


def _parse_bool(value: str, what: str) -> bool:
    if value.lower() in ("", "true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise UsageError(f"{what}: expected true or false, not {value!r}")


def parse_output(text: str) -> OutputSpec:
    """Parse ``--output``: ``type=oci,dest=x.tar``, or a bare path (= ``type=local,dest=PATH``)."""
    if "=" not in text:
        return OutputSpec(type="local", dest=text)
    values = _key_values(text, "--output")
    kind = values.pop("type", "")
    if kind not in OUTPUT_TYPES:
        raise UsageError(f"--output {text!r}: type must be one of {', '.join(OUTPUT_TYPES)}")
    spec = OutputSpec(type=kind)
    spec.dest = values.pop("dest", None)
    if "tar" in values:
        spec.tar = _parse_bool(values.pop("tar"), "--output tar=")
    spec.name = values.pop("name", None)
    if "push" in values:
        spec.push = _parse_bool(values.pop("push"), "--output push=")
    if kind == "registry":
        spec.push = True
    if "compression" in values:
        spec.compression = values.pop("compression")
        if spec.compression not in COMPRESSIONS:
            raise UsageError(f"--output compression must be one of {', '.join(COMPRESSIONS)}")
    if "compression-level" in values:
        try:
            spec.compression_level = int(values.pop("compression-level"))
        except ValueError:
            raise UsageError("--output compression-level must be a number") from None
    if "unsafe-special-files" in values:
        if kind != "local":
            raise UsageError(f"--output {text!r}: unsafe-special-files= is only for type=local")
        spec.unsafe_special_files = _parse_bool(values.pop("unsafe-special-files"), "--output unsafe-special-files=")
    values.pop("force-compression", None)
    values.pop("oci-mediatypes", None)  # we always write OCI media types
    if values:
        raise UsageError(f"--output {text!r}: unknown option(s) {', '.join(sorted(values))}")
    if kind in ("oci", "docker", "local", "tar") and not spec.dest:
        raise UsageError(f"--output type={kind} needs dest=PATH")
    return spec


def parse_secret(text: str) -> SecretSpec:
    """Parse ``--secret id=X[,src=FILE|,env=VAR]`` as buildx does."""
    from imgbuild.sandbox.runmounts import SecretSpec  # the sandbox loads only for a --secret

    values = _key_values(text, "--secret")
    secret_id = values.pop("id", "")
    if not secret_id:
        raise UsageError(f"--secret {text!r}: id=NAME is required")
    source = values.pop("src", None) or values.pop("source", None)
    env = values.pop("env", None)
    kind = values.pop("type", "file" if source else ("env" if env else ""))
    if values:
        raise UsageError(f"--secret {text!r}: unknown option(s) {', '.join(sorted(values))}")
    if kind == "env" and not env:
        env = source or secret_id
        source = None
    return SecretSpec(secret_id, Path(source) if source else None, env)


def parse_key_value_list(items: list[str], what: str, environ: dict | None = None) -> dict[str, str]:
    """``--build-arg K=V`` / ``--label K=V`` lists; a bare ``K`` takes ``$K`` as docker does."""
    environ = os.environ if environ is None else environ
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"{what} {item!r}: expected KEY=VALUE")
        if not sep:
            if key not in environ:
                continue  # docker build ignores a bare build arg that is not in the environment
            value = environ[key]
        result[key] = value
    return result


def parse_labels(items: list[str]) -> dict[str, str]:
    """``--label K=V``; a bare ``K`` is the label K with an empty value, as in Docker."""
    labels: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def parse_add_host(text: str) -> tuple[str, str]:
    """``--add-host NAME:IP`` (or ``NAME=IP``, as newer Docker takes it)."""
    separator = "=" if "=" in text else ":"
    name, sep, address = text.partition(separator)
    if not sep or not name or not address:
        raise UsageError(f"--add-host {text!r}: expected NAME:IP, e.g. db:10.0.0.5")
    if address == "host-gateway":
        raise UsageError(f"--add-host {text!r}: host-gateway has no meaning here: RUN uses the host's network")
    import ipaddress  # only with --add-host

    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        raise UsageError(f"--add-host {text!r}: {address!r} is not an IP address") from None
    if any(c.isspace() for c in name):
        raise UsageError(f"--add-host {text!r}: a host name has no spaces")
    return name, address.strip("[]")


ANNOTATION_LEVELS = ("manifest",)


def parse_annotation(text: str) -> tuple[str, str]:
    """``--annotation [manifest:]KEY=VALUE`` as buildx takes it; only the manifest's
    (imgbuild makes one manifest per build, no index)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--annotation {text!r}: expected KEY=VALUE or manifest:KEY=VALUE")
    level, colon, rest = key.partition(":")
    if colon and "." not in level and "/" not in level:  # a level prefix, not part of the key
        if level.split("[", 1)[0] not in ANNOTATION_LEVELS:
            raise UsageError(
                f"--annotation {text!r}: only manifest annotations are supported (a build makes one manifest, no index)"
            )
        if "[" in level:
            raise UsageError(f"--annotation {text!r}: a build makes one platform; leave out [PLATFORM]")
        key = rest
    return key, value


def parse_build_context(text: str) -> NamedContext:
    """``--build-context NAME=DIR`` or ``NAME=docker-image://REF``."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise UsageError(f"--build-context {text!r}: expected NAME=DIR or NAME=docker-image://IMAGE")
    if value.startswith("docker-image://"):
        return NamedContext(name, image=value.removeprefix("docker-image://"))
    if "://" in value:
        scheme = value.split("://", 1)[0]
        raise UsageError(
            f"--build-context {text!r}: {scheme}:// contexts are not supported; give a directory or docker-image://IMAGE"
        )
    directory = Path(value)
    if not directory.is_dir():
        raise UsageError(f"--build-context {text!r}: {value} is not a directory")
    return NamedContext(name, directory=directory)


def parse_ssh(text: str, environ: dict | None = None) -> tuple[str, Path]:
    """``--ssh default`` ($SSH_AUTH_SOCK) or ``--ssh ID=SOCKET``: an SSH agent to forward.

    Key files (buildx also loads them into an agent of its own) are refused:
    load the key into an agent and forward that.
    """
    environ = os.environ if environ is None else environ
    ssh_id, sep, value = text.partition("=")
    if not ssh_id:
        raise UsageError(f"--ssh {text!r}: expected default or ID=SOCKET")
    if not sep:
        value = environ.get("SSH_AUTH_SOCK", "")
        if not value:
            raise UsageError(
                f"--ssh {text}: SSH_AUTH_SOCK is not set; start an agent (ssh-agent) or give {ssh_id}=SOCKET"
            )
    if "," in value:
        raise UsageError(f"--ssh {text!r}: give one agent socket, not a list of keys")
    try:
        mode = os.stat(value).st_mode
    except OSError as error:
        raise UsageError(f"--ssh {text!r}: cannot use {value}: {error.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise UsageError(
            f"--ssh {text!r}: {value} is not an SSH agent socket; imgbuild forwards agents, not key files: "
            f"run `ssh-add {value}` in an agent and give --ssh {ssh_id}=$SSH_AUTH_SOCK"
        )
    return ssh_id, Path(value)

"""``imgbuild pin [-f Dockerfile] [--check] [--update]``: pin base images to their digests.

Rewrites every ``FROM name:tag`` to ``FROM name:tag@sha256:...``, the digest
of the manifest (or index) the registry serves for that tag now, keeping the
rest of the file as it is (``imgbuild.dockerfile.pin``). With ``--check`` it
changes nothing and no registry is asked: it lists the bases that are not
pinned and exits 1 if there are any, for CI.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from imgbuild.dockerfile.pin import (
    PIN,
    PINNED,
    SCRATCH,
    STAGE,
    TEMPLATED,
    Base,
    find_bases,
    rewrite,
)
from imgbuild.errors import ImgbuildError, RegistryError, UsageError
from imgbuild.safeopen import TooLarge, read_capped

MAX_DOCKERFILE = 16 * 1024 * 1024  # as for imgbuild build

NOTES = {
    SCRATCH: "scratch is no image: nothing to pin",
    STAGE: "an earlier stage: nothing to pin",
    TEMPLATED: "uses a build arg, known only at build time: not pinned (pin the ARG's value instead)",
}


def add_arguments(parser) -> None:
    parser.add_argument("-f", "--file", default="Dockerfile", help="the Dockerfile to pin (default ./Dockerfile)")
    parser.add_argument(
        "--check", action="store_true",
        help="change nothing, ask no registry: list unpinned bases and exit 1 if there are any",
    )
    parser.add_argument(
        "--update", action="store_true",
        help="also re-resolve bases already pinned (name:tag@sha256:...) to their tag's current digest",
    )
    parser.add_argument(
        "--insecure-registry", action="append", default=[], metavar="HOST",
        help="speak plain HTTP to HOST (repeatable; also $IMGBUILD_INSECURE_REGISTRIES)",
    )


def run(args) -> int:
    path = Path(args.file)
    text = _read_dockerfile(path)
    bases = find_bases(text, str(path))
    if args.check:
        return _check(path, bases)
    new_images: dict[int, str] = {}
    for base in bases:
        new = _pinned_image(base, args.update, args.insecure_registry, path)
        if new is not None:
            new_images[base.line] = new
    changed = {line: image for line, image in new_images.items() if image != _image_at(bases, line)}
    if changed:
        _write_atomically(path, rewrite(text, changed))
    print(f"{path}: {len(changed)} base image(s) pinned" if changed else f"{path}: nothing to change")
    return 0


def _image_at(bases: list[Base], line: int) -> str:
    return next(base.image for base in bases if base.line == line)


def _check(path: Path, bases: list[Base]) -> int:
    unpinned = [base for base in bases if base.kind == PIN]
    for base in bases:
        if base.kind in NOTES:
            print(f"{path}:{base.line}: FROM {base.image}: {NOTES[base.kind]}")
    for base in unpinned:
        print(f"{path}:{base.line}: FROM {base.image}: not pinned to a digest")
    if unpinned:
        print(f"{path}: {len(unpinned)} base image(s) not pinned; run `imgbuild pin -f {path}`", file=sys.stderr)
        return 1
    print(f"{path}: every base image is pinned")
    return 0


def _pinned_image(base: Base, update: bool, insecure: list[str], path: Path) -> str | None:
    """The image word to write for ``base``, or None to leave it; prints what it did."""
    where = f"{path}:{base.line}: FROM {base.image}"
    if base.kind in NOTES:
        print(f"{where}: {NOTES[base.kind]}")
        return None
    if base.kind == PINNED and not update:
        print(f"{where}: already pinned (--update re-resolves its tag)")
        return None
    if base.kind == PINNED and not base.has_tag:
        print(f"{where}: pinned without a tag: nothing to re-resolve")
        return None
    digest = _current_digest(base.tag_reference, insecure, where)
    new = f"{base.tag_reference}@{digest}"
    print(f"{where}: {'unchanged' if new == base.image else '-> ' + new}")
    return new


def _current_digest(reference: str, insecure: list[str], where: str) -> str:
    """The digest of the manifest or index the registry serves for ``reference`` now."""
    from imgbuild.registry.client import RegistryClient, RegistryOptions  # slow to import
    from imgbuild.registry.reference import parse_reference

    try:
        ref = parse_reference(reference)
        client = RegistryClient(ref.registry, options=RegistryOptions(insecure_registries=tuple(insecure)))
        descriptor = client.head_manifest(ref.repository, ref.manifest_reference)
        if descriptor is None:  # the registry did not say the digest, or has no such tag
            descriptor = client.get_manifest(ref.repository, ref.manifest_reference).descriptor
    except UsageError as error:  # not a valid reference
        raise UsageError(f"{where}: {error}") from None
    except ImgbuildError as error:
        raise RegistryError(f"{where}: cannot resolve it: {error}") from None
    return descriptor.digest


def _read_dockerfile(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise UsageError(f"cannot open {path}: {error.strerror} (give the Dockerfile with -f)") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{path} is not a regular file")
        data = read_capped(fd, MAX_DOCKERFILE)
    except TooLarge:
        raise UsageError(f"{path} is larger than {MAX_DOCKERFILE // (1024 * 1024)} MiB") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{path} is not UTF-8 text: {error}") from None


def _write_atomically(path: Path, text: str) -> None:
    """Replace the file in one rename, keeping its mode; a symlink's target is replaced."""
    from imgbuild.store.atomic import write_file_atomic

    target = Path(os.path.realpath(path))
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
        write_file_atomic(target, text.encode("utf-8"), mode=mode)
    except OSError as error:
        raise ImgbuildError(f"cannot write {path}: {error.strerror}; it is unchanged") from None

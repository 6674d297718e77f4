"""``imgbuild pin``: find a Dockerfile's base images and rewrite them to ``name:tag@sha256:...``.

dockerfile-parse does the locating and the rewriting: its ``structure`` gives
each FROM instruction with its first and last physical line, and its ``lines``
setter puts edited physical lines back, so comments, blank lines, line
continuations, keyword case, flags and ``AS name`` stay exactly as written.
Only the image word changes. (Its ``parent_images`` setter is not used: it
rewrites the whole instruction as ``FROM image AS stage`` and so drops
``--platform`` flags and continuation lines, and it substitutes ARG defaults
into the image.)

Which bases are pinned:

- ``name`` or ``name:tag``: pinned to the digest its registry serves now; a
  name without a tag gets ``:latest`` written out, so that the tag a digest
  came from stays visible and can be refreshed;
- ``name[:tag]@sha256:...``: already pinned; left alone unless refreshing is
  asked for (then the tag is resolved again; a digest without a tag cannot be);
- ``scratch``, an earlier stage's name, and an image with ``$`` (an ARG) are
  never pinned: a note says so.
"""

from __future__ import annotations

import io
import re

from dockerfile_parse import DockerfileParser

from imgbuild.dataclass import dataclass
from imgbuild.dockerfile.lines import parse_lines
from imgbuild.errors import DockerfileError

PIN = "pin"  # name or name:tag: to be pinned
PINNED = "pinned"  # name@digest or name:tag@digest
SCRATCH = "scratch"
STAGE = "stage"  # the name of an earlier stage
TEMPLATED = "templated"  # uses an ARG: its value is known only at build time


@dataclass
class Base:
    """One FROM instruction's base image as written."""

    line: int  # 1-based line of the FROM keyword
    image: str  # the image word as written
    stage: str | None  # its AS name
    kind: str  # PIN, PINNED, SCRATCH, STAGE or TEMPLATED
    start: int  # 0-based first and last physical line of the instruction
    end: int

    @property
    def tag_reference(self) -> str:
        """The image without its digest, with its tag written out (``:latest`` if none)."""
        name = self.image.split("@", 1)[0]
        last = name.rsplit("/", 1)[-1]
        return name if ":" in last else f"{name}:latest"

    @property
    def has_tag(self) -> bool:
        name = self.image.split("@", 1)[0]
        return ":" in name.rsplit("/", 1)[-1]


def _parser(text: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(text.encode("utf-8")))


def find_bases(text: str, filename: str = "Dockerfile") -> list[Base]:
    """Every FROM instruction's base, in order.

    dockerfile-parse groups lines into instructions a little differently from
    BuildKit (a blank line inside a continuation ends its instruction): where
    that changes a FROM, the build would read another base than the one pinned,
    so that is an error asking for the FROM on one line.
    """
    bases = _bases_by_dockerfile_parse(text)
    _check_against_buildkit_rules(bases, text, filename)
    return bases


def _check_against_buildkit_rules(bases: list[Base], text: str, filename: str) -> None:
    ours = [
        (line.line, line.args[0]) for line in parse_lines(text, filename).lines
        if line.command == "from" and line.args
    ]  # fmt: skip
    theirs = [(base.line, base.image) for base in bases]
    for seen in sorted(set(ours) ^ set(theirs)):
        raise DockerfileError(
            f"{filename}:{seen[0]}: this FROM cannot be pinned safely: its line continuation holds "
            "a blank line or comment, where Dockerfile parsers disagree; write the FROM on one line"
        )


def _bases_by_dockerfile_parse(text: str) -> list[Base]:
    bases: list[Base] = []
    stages: set[str] = set()
    for instruction in _parser(text).structure:
        if instruction["instruction"] != "FROM":
            continue
        image, stage = _image_and_stage(instruction["value"])
        if image is None:
            continue  # a FROM without an image: the build reports it
        bases.append(
            Base(instruction["startline"] + 1, image, stage, _kind(image, stages),
                 instruction["startline"], instruction["endline"])
        )  # fmt: skip
        if stage:
            stages.add(stage.lower())
    return bases


def _image_and_stage(value: str) -> tuple[str | None, str | None]:
    """``[--flag=V]... IMAGE [AS NAME]``: the image word and the stage name."""
    words = [word for word in value.split() if not word.startswith("--")]
    if not words:
        return None, None
    stage = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
    return words[0], stage


def _kind(image: str, stages: set[str]) -> str:
    if "$" in image:
        return TEMPLATED
    if image.lower() == "scratch":
        return SCRATCH
    if image.lower() in stages:
        return STAGE
    if "@" in image:
        return PINNED
    return PIN


def rewrite(text: str, new_images: dict[int, str]) -> str:
    """``text`` with the image word of the FROM at line N (1-based) replaced by
    ``new_images[N]``; nothing else changes."""
    parser = _parser(text)
    lines = parser.lines
    for base in _bases_by_dockerfile_parse(text):
        new = new_images.get(base.line)
        if new is None or new == base.image:
            continue
        _replace_word(lines, base, new)
    parser.lines = lines
    return parser.content


def _replace_word(lines: list[str], base: Base, new: str) -> None:
    """Replace the first whole-word occurrence of the image in the instruction's lines
    (flags come before it, so the first occurrence is the image itself unless a flag
    value equals it, which the word boundary against ``=`` rules out)."""
    word = re.compile(r"(?<![^\s])" + re.escape(base.image) + r"(?![^\s])")
    for index in range(base.start, base.end + 1):
        lines[index], count = word.subn(lambda _match: new, lines[index], count=1)
        if count:
            return
    raise AssertionError(f"FROM at line {base.line}: {base.image!r} not found in its lines")

"""COPY/ADD as a build step: sources, their cache-key digests, and the copy itself.

What a copy does to the tree is ``imgbuild.builder.copy``; what it reads is
``imgbuild.context``. This module joins them to the instruction, in order:
it downloads the ADD URLs whose bytes the key needs (``Downloads``), digests
exactly the files the step will read (``source_digests``, which reads but
changes nothing), and on a miss resolves ``--chown`` names in the image
being built and runs the copy in the step's root filesystem.
"""

from __future__ import annotations

import hashlib
import posixpath
from contextlib import contextmanager
from dataclasses import field
from pathlib import Path

from imgbuild.builder import imageconfig as ic
from imgbuild.builder.fetch import Fetched, fetch_url, is_url
from imgbuild.builder.layerstep import LayerWork
from imgbuild.builder.rootfs import layers_opener
from imgbuild.builder.state import StageState
from imgbuild.cache.keys import instruction_document
from imgbuild.context.source import BuildContext
from imgbuild.dataclass import dataclass
from imgbuild.errors import BuildError

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    # The copy itself runs on a miss only: a cache hit does not load it.
    from imgbuild.builder.copy import HeredocFile
    from imgbuild.builder.copymode import Chmod


@dataclass(frozen=True)
class CopyRequest:
    """A COPY or ADD after expansion: what the copy step reads, and where and how it writes."""

    is_add: bool
    sources: list[str]
    heredocs: list[HeredocFile]
    dest: str
    workdir: str
    chown: str | None = None
    chmod: Chmod | None = None
    exclude: list[str] = field(default_factory=list)
    checksum: str | None = None
    parents: bool = False  # COPY --parents: keep each source's directories under dest
    unpack: bool | None = None  # ADD --unpack; None: local archives unpacked, URLs not

    @property
    def name(self) -> str:
        return "ADD" if self.is_add else "COPY"

    @classmethod
    def from_instruction(cls, instruction, *, is_add: bool, workdir: str) -> CopyRequest:
        chmod = None
        if instruction.chmod:
            from imgbuild.builder.copymode import parse_chmod

            chmod = parse_chmod(instruction.chmod)
        if getattr(instruction, "keep_git_dir", False):
            raise BuildError("ADD --keep-git-dir: git sources are not supported")
        sources = list(instruction.sources)
        checksum = getattr(instruction, "checksum", None)  # ADD only
        if checksum:
            if not is_add:
                raise BuildError("checksum can't be specified for COPY")
            if len(sources) != 1 or not is_url(sources[0]):
                raise BuildError("--checksum needs exactly one http(s) URL source")
        if not is_add:
            for source in sources:
                if is_url(source):
                    raise BuildError(f"source can't be a URL for COPY: {source} (use ADD)")
        heredocs = []
        if instruction.heredocs:
            from imgbuild.builder.copy import HeredocFile

            heredocs = [HeredocFile(doc.name, doc.content) for doc in instruction.heredocs]
        return cls(
            is_add=is_add,
            sources=sources,
            heredocs=heredocs,
            dest=instruction.dest,
            workdir=workdir,
            chown=instruction.chown or None,
            chmod=chmod,
            exclude=list(instruction.exclude or []),
            checksum=checksum or None,
            parents=bool(getattr(instruction, "parents", False)),
            unpack=getattr(instruction, "unpack", None),
        )


@dataclass
class Downloads:
    """The ADD URLs of one step, each downloaded at most once into ``directory``
    (None for a step with no URL source: nothing is downloaded)."""

    directory: Path | None
    checksum: str | None
    files: dict[str, Fetched] = field(default_factory=dict)

    def get(self, url: str) -> Fetched:
        if url not in self.files:
            self.files[url] = fetch_url(url, self.directory, checksum=self.checksum)
        return self.files[url]


def fetch_for_key(request: CopyRequest, downloads: Downloads) -> None:
    """Download the URLs whose bytes are their key: those without ``--checksum``.

    A URL with a checksum is known by it, so a cache hit downloads nothing;
    it is fetched by ``run_copy`` on a miss.
    """
    for source in request.sources:
        if is_url(source) and not request.checksum:
            downloads.get(source)


def source_digests(request: CopyRequest, context: BuildContext, downloads: Downloads) -> list:
    """What the cache key needs to know about the sources: content digests, never mtimes."""
    digests: list = []
    for source in request.sources:
        if is_url(source):
            if request.checksum:
                digests.append({"url": source, "checksum": request.checksum})
            else:
                digests.append({"url": source, "digest": downloads.files[source].digest})
            continue
        selected = context.select(source, request.exclude, instruction=request.name)
        digests.append({"path": source, "digest": context.digest(selected)})
    for doc in request.heredocs:
        content = doc.content.encode() if isinstance(doc.content, str) else doc.content
        digests.append({"heredoc": doc.name, "sha256": hashlib.sha256(content).hexdigest()})
    return digests


def copy_request(state: StageState, instruction, *, is_add: bool) -> CopyRequest:
    """The step's request, relative to the working directory the stage is in."""
    workdir = ic.container_config(state.config).get("WorkingDir") or "/"
    return CopyRequest.from_instruction(instruction, is_add=is_add, workdir=workdir)


def plan_copy(builder, state: StageState, instruction, downloads_dir: Path | None, *, is_add: bool) -> LayerWork:
    """The COPY/ADD step's key document and, for a miss, how to copy.

    ``downloads_dir`` holds the step's ADD downloads until the step is done
    (None when no source is a URL).
    """
    name = "ADD" if is_add else "COPY"
    request = copy_request(state, instruction, is_add=is_add)
    downloads = Downloads(downloads_dir, request.checksum)
    fetch_for_key(request, downloads)
    origin = getattr(instruction, "from_stage", None)
    context = builder.context
    named = builder.directory_context(origin) if origin else None
    if named is not None:  # --build-context NAME=DIR: read as the build context is
        origin, context = None, named
    if origin:
        source_opener = layers_opener(builder.store, builder.source_layers(origin))
        with _source_context(source_opener, origin, None) as source_context:
            source_key = source_digests(request, source_context, downloads)
    else:
        source_opener = None
        source_key = source_digests(request, context, downloads)
    document = {
        "step": name,
        "instruction": instruction_document(instruction),
        # only a relative dest reads the working directory (BuildKit joins it in)
        "workdir": "" if request.dest.startswith("/") else request.workdir,
        "sources": source_key,
    }
    words = [name] + list(instruction.sources) + [f"<<{doc.name}" for doc in instruction.heredocs]
    history = " ".join(words + [instruction.dest]) + " # imgbuild"

    def execute(space):
        with space.mounted() as merged, _source_context(source_opener, origin, context) as source_context:
            run_copy(request, source_context, merged, downloads)

    return LayerWork(document, history, execute, independent=bool(instruction.link))


@contextmanager
def _source_context(source_opener, origin: str | None, build_context: BuildContext | None):
    """Where a copy reads from: the build context, or a stage or image mounted for the step.

    For ``--from``, the copy is keyed on digests of exactly the files it reads,
    as for the build context: keying on the whole stage would miss whenever
    any other file in it changed (a log, a timestamp).
    """
    if source_opener is None:
        yield build_context
        return
    with source_opener() as source_root:
        yield BuildContext.for_rootfs(Path(source_root), f"stage {origin}")


def run_copy(request: CopyRequest, context: BuildContext, rootfs: Path, downloads: Downloads) -> None:
    """Copy the request's sources from ``context`` into ``rootfs``."""
    from imgbuild.builder.copy import copy_into
    chown = resolve_chown(rootfs, request.chown) if request.chown else None
    if request.parents:
        _copy_with_parents(request, context, rootfs, chown)
        return
    items: list = []
    for source in request.sources:
        if is_url(source):
            items.append(downloads.get(source))
        else:
            items.extend(context.select(source, request.exclude, instruction=request.name))
    items.extend(request.heredocs)
    if not items:
        return  # a wildcard that matched nothing copies nothing, as in BuildKit
    copy_into(
        rootfs,
        items,
        request.dest,
        workdir=request.workdir,
        chown=chown,
        chmod=request.chmod,
        is_add=request.is_add,
        unpack=request.unpack,
    )


def _copy_with_parents(request: CopyRequest, context: BuildContext, rootfs: Path, chown) -> None:
    """``COPY --parents``: each match lands at dest/<its path in the context>.

    As in BuildKit, a ``/./`` in a source is a pivot: only the part after it
    is kept (``COPY --parents ./x/./y/*.txt /d/`` gives ``/d/y/a.txt``).
    """
    from imgbuild.builder.copy import copy_into

    destination = request.dest.rstrip("/") or "/"
    for source in request.sources:
        pivot = _pivot_prefix(source)
        for item in context.select(source, request.exclude, instruction=request.name):
            relative = item.relpath
            if pivot and (relative == pivot or relative.startswith(pivot + "/")):
                relative = relative[len(pivot) :].lstrip("/")
            where = relative if item.is_dir else posixpath.dirname(relative)
            copy_into(
                rootfs,
                [item],
                posixpath.join(destination, where) + "/",
                workdir=request.workdir,
                chown=chown,
                chmod=request.chmod,
            )


def _pivot_prefix(source: str) -> str:
    """The context path before a ``/./`` pivot in a --parents source, or ""."""
    if "/./" not in source:
        return ""
    head = source.split("/./", 1)[0]
    return posixpath.normpath(head.lstrip("/")) if head.strip("/.") else ""


def resolve_chown(rootfs: Path, chown: str) -> tuple[int, int]:
    """``--chown=user[:group]`` by name or id, looked up in the image being built.

    Without a group, as BuildKit's file op does: a user name takes the user's
    primary group from /etc/passwd, a bare uid is used as the gid too.
    """
    user, _, group = chown.partition(":")
    uid, primary_gid = _lookup_user(rootfs, user, chown)
    gid = _lookup_id(rootfs, "/etc/group", group, "group", chown) if group else primary_gid
    return uid, gid


def _lookup_user(rootfs: Path, user: str, chown: str) -> tuple[int, int]:
    """(uid, primary gid) of a user name in the image; a number stands for both."""
    if _is_number(user):
        uid = _checked_id(int(user), chown)
        return uid, uid
    fields = _lookup_entry(rootfs, "/etc/passwd", user, "user", chown)
    uid = _checked_id(int(fields[2]), chown)
    return uid, _checked_id(int(fields[3]), chown) if len(fields) > 3 and _is_number(fields[3]) else uid


def _lookup_id(rootfs: Path, table: str, name: str, what: str, chown: str) -> int:
    if _is_number(name):
        return _checked_id(int(name), chown)
    return _checked_id(int(_lookup_entry(rootfs, table, name, what, chown)[2]), chown)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()  # "²".isdigit() is true too


def _checked_id(number: int, chown: str) -> int:
    from imgbuild.sandbox.users import MAX_ID, id_in_range  # --chown runs on a miss only

    if not id_in_range(number):
        raise BuildError(
            f"invalid --chown={chown}: {number} is out of range; uids and gids must be in range 0-{MAX_ID}"
        )
    return number


def _lookup_entry(rootfs: Path, table: str, name: str, what: str, chown: str) -> list[str]:
    """The fields of ``name``'s line in /etc/passwd or /etc/group of the image."""
    from imgbuild.sandbox.users import image_table

    if not name:
        raise BuildError(f"invalid --chown={chown}: empty {what}")
    for fields in image_table(rootfs, table):
        if len(fields) > 2 and fields[0] == name and _is_number(fields[2]):
            return fields
    raise BuildError(f"unable to convert {what} {name!r} in --chown={chown}: no such {what} in {table} of the image")

"""Build records: a fully cached rebuild without the Dockerfile front end or the builder.

A warm no-op rebuild (nothing changed in the Dockerfile, the flags or the
context) spends most of its time importing and walking the front end and the
builder only to find every step cached. After a successful ``imgbuild build``
the CLI keeps a *record* in the store's index (``build_records``) under a
digest of everything that decides the build before it reads the context:

- imgbuild's version and ``RECORD_VERSION``;
- the context's path, the Dockerfile's path and bytes, the ignore file's
  path and bytes;
- every flag that goes into the image (``KEYED``), the environment's value of
  each ``--build-arg NAME`` given without a value, ``SOURCE_DATE_EPOCH``, the
  platform built for and the platform building, ``-f`` as given;
- the name, size and mtime of every source file of imgbuild itself.

The record says what else the build depended on, as the build saw it
(``Journal``): what each base image name resolved to in the store, each
context selection a COPY/ADD or ``RUN --mount`` read (the items selected and
the lstat fingerprint of their tree, ``context.digest.selection_fingerprint``),
the cache entries its steps used (their layer and when they were first
built), the image it gave, and what it printed that a cached rebuild prints
again: its steps (all cached), build-arg warnings and build-check warnings.

When the target's last layer step is a COPY of the build context, the record
also keeps what a rebuild of that step alone needs (``lastcopy.py``): a build
whose only change is in that COPY's files runs it from the record.

The next build with the same key takes the record (``replay``) only if all of
that still holds: the names resolve to the same images, every selection
selects the same items with the same fingerprint, every cache entry is there
with its layer, the image and its blobs are in the store, the collection after
a build would prune nothing and no killed build left work to clean up. Then it tags the image,
counts the cache hits, writes ``--iidfile`` and prints what the builder would.
Anything else, and any doubt, is the normal build, which writes a new record.
Flags the record cannot stand for (``--no-cache``, ``--pull``, ``--output``,
``--push``, secrets, SSH, cache import/export, named contexts, a context or
Dockerfile on stdin, ...) always take the normal build; so does
``IMGBUILD_NO_BUILD_RECORD=1``. A build whose result depends on more than the
record can check (an ``ADD`` of a URL, a pulled base image) keeps no record.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError

RECORD_VERSION = 1
BYPASS_VARIABLE = "IMGBUILD_NO_BUILD_RECORD"
KEEP_RECORDS = 200  # the store keeps the records used last; older ones go

# Flags that go into the image: in the key as given (a record was written by
# a build that accepted them, so they are valid as long as they are the same).
KEYED = (
    "tag",
    "build_arg",
    "target",
    "platform",
    "label",
    "network",
    "compression",
    "compression_level",
    "add_host",
    "annotation",
    "insecure_registry",
    "load",
)
# Flags that only change what is printed or written beside the image, or that
# the replay checks itself (the runtime is there; nothing for the collection after a build to prune).
NOT_KEYED = (
    "context",
    "file",
    "progress",
    "quiet",
    "explain",
    "iidfile",
    "jobs",
    "runtime",
    "max_cache",
    "min_free",
    "root",
    "version",
    "verb",
    "_run",
)
# Any other flag given (--no-cache, --pull, --output, --secret, ...) takes the normal build.


@dataclass
class Plan:
    """What a build record is looked up and kept under."""

    key: str
    context: Path
    dockerfile_sha256: str
    ignore_patterns: list[str]


def plan(args) -> Plan | None:
    """The record's key for these CLI arguments; None when no record can stand for the build."""
    if os.environ.get(BYPASS_VARIABLE, "") not in ("", "0"):
        return None
    if args.context == "-" or args.file == "-":
        return None
    for name, value in vars(args).items():
        if name not in KEYED and name not in NOT_KEYED and value not in (None, False, [], ""):
            return None
    try:
        return _plan(args)
    except (OSError, UnicodeDecodeError, ImgbuildError):
        return None  # the normal build says what is wrong


def _plan(args) -> Plan | None:
    from imgbuild import __version__
    from imgbuild.context.buildfiles import (
        applying_ignore_file,
        default_dockerfile,
        read_build_file,
    )
    from imgbuild.context.dockerignore import read_ignore_file
    from imgbuild.image import Platform

    context = Path(args.context)
    if not context.is_dir():
        return None
    dockerfile = Path(args.file) if args.file else default_dockerfile(context)
    text = read_build_file(context, dockerfile, "Dockerfile")
    text.decode("utf-8")  # the normal build refuses a Dockerfile that is not UTF-8
    ignore = applying_ignore_file(context, dockerfile)
    bare_args = [item for item in args.build_arg if "=" not in item]
    document = {
        "record": RECORD_VERSION,
        "imgbuild": __version__,
        "context": os.path.abspath(context),
        "dockerfile": [os.path.abspath(dockerfile), _sha256(text)],
        "ignore": None if ignore is None else [os.path.abspath(ignore[0]), _sha256(ignore[1])],
        "flags": {name: getattr(args, name, None) for name in KEYED},
        "environment": {name: os.environ.get(name) for name in [*bare_args, "SOURCE_DATE_EPOCH"]},
        "platform": args.platform or str(Platform.host()),
        "build_platform": str(Platform.host()),  # $BUILDPLATFORM, even with --platform
        "file_as_given": args.file,  # messages name the Dockerfile as it was given
        "code": _code_fingerprint(),
    }
    key = _sha256(json.dumps(document, sort_keys=True, default=str).encode("utf-8", "surrogateescape"))
    patterns = [] if ignore is None else read_ignore_file(ignore[1].decode("utf-8", errors="surrogateescape"))
    return Plan(key, context, _sha256(text), patterns)


def _code_fingerprint() -> str:
    """A digest of the name, size and mtime of imgbuild's own source files.

    The version alone does not change when the code does (a development
    install, an upgrade from git), and a record kept by other code could
    then give another image than the normal build would. ~130 ``lstat``s.
    """
    package = Path(__file__).resolve().parents[1]
    entries = []
    pending = [package]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as listing:
            for entry in listing:
                if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    pending.append(Path(entry.path))
                elif entry.name.endswith(".py"):
                    info = entry.stat(follow_symlinks=False)
                    entries.append(f"{entry.path}\0{info.st_size}\0{info.st_mtime_ns}")
    return _sha256("\n".join(sorted(entries)).encode("utf-8", "surrogateescape"))


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- taking a record ---------------------------------------------------------------


def replay(found: Plan, args, options, store, started: float) -> bool:
    """Finish the build from its record, as the builder would have; False
    (nothing done, nothing printed) when the record is missing or no longer holds.
    When only the files of the target's last COPY changed, that step is
    rebuilt from the record (``lastcopy.py``)."""
    text = store.db.build_record(found.key)
    if text is None:
        return False
    try:
        record = json.loads(text)
        if not _ready(store, args) or not _bases_hold(store, record):
            return False
        changed = _changed_selections(found, record)
    except (ValueError, KeyError, TypeError):  # a record this code cannot read: the builder writes a new one
        return False
    if changed is None:
        return False
    if changed:  # outside the try: an error while the step runs is the build's, not a record's
        from imgbuild.builder import lastcopy

        return lastcopy.replay(found, args, options, store, started, record, changed)
    from imgbuild.builder.progress import Summary, make_progress

    progress = make_progress("quiet" if args.quiet else args.progress, explain=args.explain)
    try:
        # As the builder holds it around lookups and tagging: a collection
        # (rmi, prune) waits until the image is tagged, or has run before the checks.
        with store.writer_lease():
            if not _store_holds(store, record):
                return False
            _tag(store, record)
            store.db.count_build_record_hit(found.key, record["lookups"])
        if args.iidfile and not _write_iidfile(Path(args.iidfile), record["config"]):
            return False  # the normal build says why it cannot be written
        progress.begin()
        show_events(progress, record["events"])
        size, tags = record["size"], record["tags"]
        seconds = time.monotonic() - started
        progress.finished(Summary(record["image"]["digest"], record["config"], size, record["cached"], 0, seconds, tags))
    finally:
        progress.close()
    if args.quiet:
        print(record["config"])
    return True


def _ready(store, args) -> bool:
    """What the builder checks or does first: the runtime is there, no killed
    build left work to clean up (``sweep_dead_work``), and the collection after
    the build would have nothing to prune."""
    from imgbuild.cache.limits import limits_for, within_limits
    from imgbuild.store.owner import dead_owners

    runtime = args.runtime or os.environ.get("IMGBUILD_RUNTIME") or "runc"
    if shutil.which(runtime) is None:
        return False
    if dead_owners(store.tmp_dir):  # the builder would clean up after a killed build first
        return False
    limits = limits_for(store, args.max_cache, args.min_free)
    if within_limits(store, limits):
        return True
    # Past a limit, as when something else filled the disk: the store is
    # measured, and only a store the collection would prune takes the builder.
    from imgbuild.cache.prune import would_collect

    return not would_collect(store, limits)


def _bases_hold(store, record: dict) -> bool:
    from imgbuild.errors import ImageNotFound

    for name, digest in record["bases"].items():
        try:
            now = store.resolve(name).digest
        except ImageNotFound:
            now = None
        if now != digest:
            return False
    return True


def _changed_selections(found: Plan, record: dict) -> list[tuple] | None:
    """The selections (source, exclude) whose trees changed while they still
    select the same items; None when any selects other items (or cannot be read)."""
    from imgbuild.context.digest import selection_fingerprint
    from imgbuild.context.dockerignore import IgnoreMatcher
    from imgbuild.context.source import BuildContext

    context = BuildContext(found.context, IgnoreMatcher(found.ignore_patterns), None)
    changed = []
    for source, exclude, items, fingerprint in record["selections"]:
        try:
            selected = context.select(source, exclude)
            if _items(selected) != items:
                return None
            if selected and selection_fingerprint(context, selected)[0] != fingerprint:
                changed.append((source, tuple(exclude)))
        except (ImgbuildError, OSError):
            return None
    return changed


def _store_holds(store, record: dict) -> bool:
    """The cache entries are there as the build used them, and every blob of the image and of those entries.
    An entry that lost the record of its inputs (a store of an older schema) gets it back from a
    normal build's hit, so it takes one."""
    entries = record["entries"]
    if not entries_hold(store, entries):
        return False
    digests = set(record["blobs"]) | {digest for _, digest, _ in entries if digest}
    return all(store.has_blob(digest) for digest in digests)


def entries_hold(store, entries: list) -> bool:
    """Each [key, layer digest, first built] entry is in the cache as the build
    used it, and keeps the record of its inputs."""
    rows = store.db.cache_layers([key for key, _, _ in entries])
    return all(rows.get(key) == (digest, created, True) for key, digest, created in entries)


def _tag(store, record: dict) -> None:
    """As ``finalimage.tag_image``: each tag (index.json is left alone when it already says so)."""
    from imgbuild.image import Descriptor

    descriptor = Descriptor.from_json(record["image"])
    tagged = {name: (found.digest, found.size) for name, found in store.refs() if name}
    for tag in record["tags"]:
        # a tag already on the image stays where it is in index.json (no rewrite, no fsync)
        if tagged.get(tag) != (descriptor.digest, descriptor.size):
            store.tag(tag, descriptor)
    if not record["tags"]:
        store.keep_untagged(descriptor)


def _write_iidfile(path: Path, config_digest: str) -> bool:
    try:
        path.write_text(config_digest)
    except OSError:
        return False
    return True


def show_events(progress, events: list) -> None:
    """What the builder showed, as it shows a cached build: each step cached, and the warnings."""
    for event in events:
        kind = event[0]
        if kind == "step":
            progress.cached(progress.new_step(*event[1:]))
        elif kind == "warning":
            progress.warning(event[1])
        elif kind == "check":
            progress.check_warning(_CheckShown(event[1], event[2]))


@dataclass
class _CheckShown:
    """A build check's warning as the record keeps it: what ``Progress.check_warning`` reads."""

    text: str
    document: dict

    def format(self) -> str:
        return self.text

    def to_json(self) -> dict:
        return self.document


# --- keeping a record --------------------------------------------------------------


class Journal:
    """What a build depended on beyond its record's key, noted as the build runs
    (thread-safe: stages run in threads); ``keep`` writes the record."""

    def __init__(self, found: Plan):
        self.plan = found
        self.lock = threading.Lock()
        self.refused: str | None = None  # why no record can stand for this build
        self.events: list[list] = []
        self.selections: dict[tuple, dict] = {}  # (source, exclude) -> items, fingerprint
        self._lists: dict[int, tuple] = {}  # id of a selected list -> (its selection, the list)
        self.bases: dict[str, str | None] = {}  # name -> the digest it resolved to (None: not found)
        self.lookups: list[tuple[str, str | None, str]] = []  # (cache key, layer digest, history time)
        # For a rebuild of the target's last COPY alone (lastcopy.py): the step
        # each stage thread is at (its event), the steps that read each
        # selection, and each stage's last layer step when it is such a COPY.
        self.current: dict[int, int] = {}
        self.selectors: dict[tuple, set] = {}
        self.last_copies: dict[int, object] = {}

    def refuse(self, why: str) -> None:
        with self.lock:
            self.refused = self.refused or why

    def read_dockerfile(self, text: str) -> None:
        """The Dockerfile the build parses is the one the key was made of (not edited since)."""
        if _sha256(text.encode("utf-8", "surrogateescape")) != self.plan.dockerfile_sha256:
            self.refuse("the Dockerfile changed while the build read it")

    def selected(self, source: str, exclude, selected: list) -> None:
        key = (source, tuple(exclude))
        items = _items(selected)
        with self.lock:
            entry = self.selections.setdefault(key, {"items": items, "fingerprint": "" if not items else None})
            if entry["items"] != items:
                self.refused = self.refused or f"{source} selected different files during the build"
            self._lists[id(selected)] = (key, selected)
            # None: outside a step (the build checks): no COPY reads it alone
            self.selectors.setdefault(key, set()).add(self.current.get(threading.get_ident()))

    def digested(self, selected: list, remembered) -> None:
        """A selection's digest is taken now: its fingerprint is of the tree it reads."""
        with self.lock:
            key, known = self._lists.get(id(selected), (None, None))
            if known is not selected:
                self.refused = self.refused or "a digest of a selection the record did not see"
                return
            if not selected:
                return
            entry = self.selections[key]
            if remembered is None or not remembered.settled():
                self.refused = self.refused or f"{key[0]} changed just before the build read it"
            elif entry["fingerprint"] is None:
                entry["fingerprint"] = remembered.fingerprint
            elif entry["fingerprint"] != remembered.fingerprint:
                self.refused = self.refused or f"{key[0]} changed during the build"

    def resolved(self, name: str, descriptor) -> None:
        digest = descriptor.digest if descriptor is not None else None
        with self.lock:
            if self.bases.setdefault(name, digest) != digest:
                self.refused = self.refused or f"{name} was retagged during the build"

    def used(self, key: str, layer, created: str) -> None:
        with self.lock:
            self.lookups.append((key, layer.blob.digest if layer is not None else None, created))

    def stepped(self, stage_label: str, index: int, count: int, instruction) -> None:
        with self.lock:
            self.current[threading.get_ident()] = len(self.events)
            self.events.append(["step", stage_label, index, count, instruction.text, instruction.line, instruction.end_line])

    def layer_step(self, stage_index: int, last_copy) -> None:
        """A layer step of the stage ended: ``last_copy`` (``lastcopy.LastCopy``)
        when it is a COPY that can be rebuilt alone, else None."""
        with self.lock:
            if last_copy is not None:
                last_copy.event = self.current[threading.get_ident()]
            self.last_copies[stage_index] = last_copy

    def warned(self, message: str) -> None:
        with self.lock:
            self.events.append(["warning", message])

    def checked(self, warnings) -> None:
        with self.lock:
            self.events.extend(["check", warning.format(), warning.to_json()] for warning in warnings)

    def keep(self, builder, result, size: int) -> None:
        """Write the record of the build that just succeeded, if one can stand for it.
        A record is only a shortcut: one that cannot be written is left out."""
        try:
            record = self._record(builder, result, size)
            if record is not None:
                text = json.dumps(record, sort_keys=True, default=str)
                builder.store.db.write_build_record(self.plan.key, text, KEEP_RECORDS)
        except (ImgbuildError, OSError, sqlite3.Error):
            pass

    def _record(self, builder, result, size: int) -> dict | None:
        from imgbuild.builder.imageconfig import time_text
        from imgbuild.context.dockerignore import IgnoreMatcher

        if self.refused is not None or builder.cache.sources:
            return None
        if any(entry["fingerprint"] is None for entry in self.selections.values()):
            return None
        # the ignore file the build read is the one the key was made of
        if _patterns(builder.context.ignore) != _patterns(IgnoreMatcher(self.plan.ignore_patterns)):
            return None
        rows = builder.store.db.cache_layers(sorted({key for key, _, _ in self.lookups}))
        epoch = builder.options.source_date_epoch is not None
        for key, digest, created in self.lookups:
            row = rows.get(key)
            # an entry replaced since the step read it (--no-cache elsewhere) gives another image now
            if row is None or row[0] != digest or (not epoch and time_text(row[1]) != created):
                return None
        return {
            **image_fields(result.image),
            "size": size,
            "tags": list(result.tags),
            "cached": result.steps_cached + result.steps_run,  # a rebuild finds every layer step cached
            "entries": [[key, *rows[key][:2]] for key in sorted(rows)],
            "lookups": [key for key, _, _ in self.lookups],
            "bases": self.bases,
            "selections": [
                [source, list(exclude), entry["items"], entry["fingerprint"]]
                for (source, exclude), entry in self.selections.items()
            ],
            "events": self.events,
            "last_copy": self._last_copy(builder, result),
        }

    def _last_copy(self, builder, result) -> dict | None:
        """The target's last layer step, when it is a COPY no other step read the sources of."""
        target = builder.plan.target
        last = self.last_copies.get(target)
        if last is None:
            return None
        if any(self.selectors.get(key) != {last.event} for key in last.selections):
            return None
        last.config = result.stages[target].config
        return last.to_json()


def image_fields(image) -> dict:
    """What a record keeps of the image the build gave."""
    return {
        "image": image.manifest_descriptor.to_json(),
        "config": image.config_descriptor.digest,
        "blobs": [image.digest, image.config_descriptor.digest, *(layer.digest for layer in image.layers)],
    }


def _items(selected: list) -> list[list]:
    return [[item.name, item.relpath, item.is_dir] for item in selected]


def _patterns(matcher) -> list:
    return [(pattern.text, pattern.exclusion) for pattern in matcher.patterns]

"""The facts ``imgbuild cache ls|inspect|tree`` show, as plain data.

The CLI prints these as a table on a terminal or as JSON; both come from
the same dicts, so a script sees exactly what a person sees.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime

from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError, LayerError, StoreError, UsageError
from imgbuild.layer.decompress import open_tar_stream
from imgbuild.layer.tarformat import (
    BLOCK_DEVICE,
    CHAR_DEVICE,
    DIRECTORY,
    FIFO,
    HARDLINK,
    OPAQUE_WHITEOUT,
    SYMLINK,
    WHITEOUT_PREFIX,
)
from imgbuild.layer.tarread import TarReader
from imgbuild.store import Store

SHORT_KEY = 12  # hex digits of a key in tables, as Docker shortens IDs

# ``cache inspect`` lists at most this many paths of a layer (the counts cover all).
MAX_LAYER_PATHS = 10_000
# To tell "added" from "changed", it reads the names in the layers below, when
# they are in the store and at most this big (compressed) with at most this
# many paths; otherwise it says "written" (added or changed) only.
MAX_LOWER_BYTES = 256 << 20
MAX_LOWER_PATHS = 500_000


class CacheKeyNotFound(StoreError):
    """No cache entry, or more than one, matches a key prefix."""


@dataclass
class EntryFacts:
    """One row of ``cache ls``."""

    key: str
    short_key: str
    stage_index: int | None
    stage_name: str | None
    dockerfile: str | None
    line: int | None
    instruction: str  # as written; for an entry recorded before schema 3, its history line
    layer_digest: str | None
    diff_id: str | None
    layer_size: int
    created: str  # RFC 3339, UTC
    last_used: str
    hits: int
    in_image: bool  # a tagged image has this layer
    parent_key: str | None
    parent_entry: str | None
    base_digest: str | None
    has_inputs: bool

    def as_dict(self) -> dict:
        return asdict(self)


def short_key(key: str) -> str:
    return key.split(":", 1)[-1][:SHORT_KEY]


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tagged_diff_ids(store: Store) -> set[str]:
    """The layers (diff_ids) of every tagged image in the store."""
    diff_ids: set[str] = set()
    for name, descriptor in store.refs():
        if name is None:
            continue
        try:
            diff_ids.update(store.load_image(descriptor).diff_ids)
        except ImgbuildError:
            continue  # a broken image: fsck explains it
    return diff_ids


def list_entries(store: Store) -> list[EntryFacts]:
    """Every cache entry, oldest first."""
    used = tagged_diff_ids(store)
    return [_facts(row, used) for row in store.db.cache_rows()]


def _facts(row, used: set[str]) -> EntryFacts:
    return EntryFacts(
        key=row["key"],
        short_key=short_key(row["key"]),
        stage_index=row["stage_index"],
        stage_name=row["stage_name"],
        dockerfile=row["dockerfile"],
        line=row["line"],
        instruction=row["instruction"] or row["created_by"].removesuffix(" # imgbuild"),
        layer_digest=row["layer_digest"],
        diff_id=row["diff_id"],
        layer_size=row["layer_size"],
        created=rfc3339(row["created"]),
        last_used=rfc3339(row["last_used"]),
        hits=row["hits"],
        in_image=bool(row["diff_id"]) and row["diff_id"] in used,
        parent_key=row["parent_key"],
        parent_entry=row["parent_entry"],
        base_digest=row["base_digest"],
        has_inputs=bool(row["has_inputs"]),
    )


# --- cache ls --filter ------------------------------------------------------------------

FILTERS = ("stage", "dockerfile", "instruction", "in-image", "key")


def parse_filters(specs: list[str]) -> list[tuple[str, str]]:
    filters = []
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or name not in FILTERS:
            raise UsageError(f"bad --filter {spec!r}: use NAME=VALUE with NAME one of {', '.join(FILTERS)}")
        if name == "in-image" and value not in ("true", "false"):
            raise UsageError(f"bad --filter {spec!r}: in-image is true or false")
        filters.append((name, value))
    return filters


def matches(entry: EntryFacts, filters: list[tuple[str, str]]) -> bool:
    return all(_matches_one(entry, name, value) for name, value in filters)


def _matches_one(entry: EntryFacts, name: str, value: str) -> bool:
    if name == "stage":
        return value in (str(entry.stage_index), entry.stage_name)
    if name == "dockerfile":
        return entry.dockerfile == value
    if name == "instruction":
        return value.lower() in entry.instruction.lower()
    if name == "in-image":
        return entry.in_image == (value == "true")
    return entry.key.removeprefix("sha256:").startswith(value.removeprefix("sha256:"))


# --- cache inspect ------------------------------------------------------------------------


def find_key(store: Store, prefix: str) -> str:
    """The one key starting with ``prefix`` (``sha256:`` optional)."""
    text = prefix.strip()
    if len(text.removeprefix("sha256:")) < 4:
        raise UsageError(f"cache key {prefix!r} is too short: give at least 4 hex digits (see `imgbuild cache ls`)")
    keys = store.db.cache_keys_with_prefix(text)
    if not keys:
        raise CacheKeyNotFound(f"no cache entry has a key starting with {prefix!r} (see `imgbuild cache ls`)")
    if len(keys) > 1:
        raise CacheKeyNotFound(f"more than one cache entry has a key starting with {prefix!r}: give more digits")
    return keys[0]


def inspect_entry(store: Store, key: str) -> dict:
    """Every input of ``key``, its layer, and the paths the layer writes and deletes."""
    facts = next(e for e in list_entries(store) if e.key == key)
    inputs = store.db.cache_inputs(key)
    file_lists = {}
    if inputs is not None:
        from imgbuild.cache.inputs import digests_in

        for digest in digests_in(inputs.get("document", {})):
            listing = store.db.file_list(digest)
            if listing is not None:
                file_lists[digest] = _listing_rows(listing)
    return {
        "entry": facts.as_dict(),
        "inputs": inputs,
        "file_lists": file_lists,
        "layer": _layer_facts(store, facts),
    }


def _listing_rows(listing: dict) -> dict:
    files = [
        {"path": path, "type": kind, "mode": format(mode, "04o"), "size": size, "sha256": sha256}
        for path, kind, mode, size, sha256 in listing.get("files", [])
    ]
    return {"files": files, "left_out": listing.get("left_out", 0)}


def _layer_facts(store: Store, facts: EntryFacts) -> dict | None:
    if facts.layer_digest is None:
        return None
    layer = {
        "digest": facts.layer_digest,
        "diff_id": facts.diff_id,
        "size": facts.layer_size,
        "in_store": store.has_blob(facts.layer_digest),
    }
    if layer["in_store"]:
        media_type = store.db.cache_entry(facts.key)["layer_media_type"]
        layer["changes"] = layer_changes(store, facts.layer_digest, media_type, _paths_below(store, facts))
    return layer


def _paths_below(store: Store, facts: EntryFacts) -> set[str] | None:
    """The paths the layers below an entry's layer make, or None when that is
    not known cheaply (an entry recorded before schema 3, a base image or layer
    no longer in the store, or too much to read)."""
    layers = _layers_below(store, facts)
    if layers is None or sum(size for _, _, size in layers) > MAX_LOWER_BYTES:
        return None
    paths: set[str] = set()
    for digest, media_type, _ in layers:
        if not store.has_blob(digest) or not _apply_names(store, digest, media_type, paths):
            return None
    return paths


def _layers_below(store: Store, facts: EntryFacts) -> list[tuple[str, str, int]] | None:
    """(digest, media type, size) of the layers under the entry's layer, bottom first."""
    if not facts.has_inputs or not facts.base_digest:
        return None
    chain: list[tuple[str, str, int]] = []
    key = facts.parent_entry
    seen: set[str] = set()
    while key:
        row = store.db.cache_entry(key)
        if row is None or key in seen or row["inputs"] is None:
            return None  # the chain below is gone, or was recorded before schema 3
        seen.add(key)
        if row["layer_digest"]:
            chain.append((row["layer_digest"], row["layer_media_type"], row["layer_size"]))
        key = row["parent_entry"]
    chain.reverse()
    if facts.base_digest == "scratch":
        return chain
    try:
        base = store.load_image(facts.base_digest)
    except ImgbuildError:
        return None
    return [(layer.digest, layer.media_type, layer.size) for layer in base.layers] + chain


def _apply_names(store: Store, digest: str, media_type: str, paths: set[str]) -> bool:
    """Apply one layer's names to ``paths`` by the OCI rules (whiteouts first
    hide what is below); False when it is unreadable or there are too many."""
    added: list[str] = []
    try:
        for entry in walk_layer(store, digest, media_type):
            if entry.kind == "opaque":
                _drop_below(paths, entry.path if entry.path != "/" else "")
            elif entry.kind == "whiteout":
                paths.discard(entry.path)
                _drop_below(paths, entry.path)
            else:
                added.append(entry.path)
            if len(paths) + len(added) > MAX_LOWER_PATHS:
                return False
    except ImgbuildError:
        return False
    paths.update(added)
    return True


def _drop_below(paths: set[str], directory: str) -> None:
    prefix = directory + "/"
    for path in [p for p in paths if p.startswith(prefix)]:
        paths.discard(path)


def layer_changes(store: Store, digest: str, media_type: str | None, below: set[str] | None = None) -> dict:
    """What a layer does to the tree below it, read from its blob.

    ``written`` are the paths it writes, each ``added`` or ``changed`` when
    the paths of the layers ``below`` are known (``below_known``), else
    neither (a layer alone cannot tell them apart); ``deleted`` its
    whiteouts; ``emptied`` the directories an opaque whiteout hides
    everything below of.
    """
    written: list[dict] = []
    deleted: list[str] = []
    emptied: list[str] = []
    counts = {"written": 0, "deleted": 0, "emptied": 0, "written_bytes": 0, "added": 0, "changed": 0}
    for entry in walk_layer(store, digest, media_type):
        _note_entry(entry, written, deleted, emptied, counts, below)
    return {
        "below_known": below is not None,
        "written": written,
        "deleted": deleted,
        "emptied": emptied,
        "counts": counts,
        "left_out": counts["written"] + counts["deleted"] + counts["emptied"]
        - len(written) - len(deleted) - len(emptied),
    }


def _note_entry(entry: LayerEntry, written: list, deleted: list, emptied: list, counts: dict,
                below: set[str] | None) -> None:
    room = len(written) + len(deleted) + len(emptied) < MAX_LAYER_PATHS
    if entry.kind == "opaque":
        counts["emptied"] += 1
        if room:
            emptied.append(entry.path)
        return
    if entry.kind == "whiteout":
        counts["deleted"] += 1
        if room:
            deleted.append(entry.path)
        return
    counts["written"] += 1
    counts["written_bytes"] += entry.size
    row = {"path": entry.path, "type": entry.kind, "size": entry.size}
    if below is not None:
        row["change"] = "changed" if row["path"] in below else "added"
        counts[row["change"]] += 1
    if room:
        written.append(row)


@dataclass
class LayerEntry:
    """One entry of a layer tar as the layer means it.

    ``kind`` is file, dir, symlink, hardlink, char, block or fifo for what
    the layer writes at ``path``; ``whiteout`` when it deletes ``path``;
    ``opaque`` when it hides everything below the directory ``path``.
    ``size`` counts only a regular file's bytes. ``read_data`` reads the
    file's bytes while the walk stands at this entry.
    """

    path: str  # absolute, cleaned: "/etc/motd"
    kind: str
    size: int
    mode: int
    uid: int
    gid: int
    link: str  # a symlink's target, a hard link's first name
    mtime_ns: int
    reader: TarReader | None = None
    hasher: object | None = None  # a hashlib object: sees every byte read_data returns

    def read_data(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of a regular file's data (b"" for anything else)."""
        if self.kind != "file" or self.reader is None:
            return b""
        chunks, total = [], 0
        while total < limit and (chunk := self.reader.read_data(min(1 << 20, limit - total))):
            chunks.append(chunk)
            total += len(chunk)
            if self.hasher is not None:
                self.hasher.update(chunk)
        return b"".join(chunks)


def walk_layer(store: Store, digest: str, media_type: str | None) -> Iterator[LayerEntry]:
    """The entries of a layer blob in the store, streamed: one entry in memory
    at a time, its data read only if the caller asks (``read_data``)."""
    try:
        with store.open_blob(digest) as blob:
            reader = TarReader(open_tar_stream(blob, media_type).read)
            while (entry := reader.next_entry()) is not None:
                layer_entry = _layer_entry(entry, reader)
                if layer_entry is not None:
                    yield layer_entry
    except LayerError as error:
        raise ImgbuildError(f"cannot read layer {digest}: {error}") from None


def _layer_entry(entry, reader: TarReader) -> LayerEntry | None:
    name = _clean(entry.name.decode("utf-8", "surrogateescape"))
    if not name:
        return None  # the layer's root entry
    head, base = posixpath.split(name)
    raw_base = base.encode("utf-8", "surrogateescape")
    link = entry.linkname.decode("utf-8", "surrogateescape")
    if raw_base == OPAQUE_WHITEOUT:
        return LayerEntry("/" + head, "opaque", 0, 0, 0, 0, "", entry.mtime_ns)
    if raw_base.startswith(WHITEOUT_PREFIX):
        gone = "/" + posixpath.join(head, base[len(WHITEOUT_PREFIX):])
        return LayerEntry(gone, "whiteout", 0, 0, 0, 0, "", entry.mtime_ns)
    kind = _KINDS.get(entry.type, "file")
    size = entry.size if kind == "file" else 0
    return LayerEntry("/" + name, kind, size, entry.mode & 0o7777, entry.uid, entry.gid, link, entry.mtime_ns,
                      reader if kind == "file" else None)


_KINDS = {
    DIRECTORY: "dir",
    SYMLINK: "symlink",
    HARDLINK: "hardlink",
    CHAR_DEVICE: "char",
    BLOCK_DEVICE: "block",
    FIFO: "fifo",
}


def _clean(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


# --- cache tree ------------------------------------------------------------------------------


def entry_tree(store: Store, image: str | None = None) -> list[dict]:
    """The entries as trees: each root is where a chain starts (a base image,
    ``scratch``, or an entry whose parent is unknown), each node an entry
    with the entries built on it below. With ``image``, only the entries
    whose layers the image has, and the entries they were built on."""
    entries = list_entries(store)
    by_key = {entry.key: entry for entry in entries}
    if image is not None:
        entries = _behind_image(store, image, entries, by_key)
    children: dict[str, list[EntryFacts]] = {}
    roots: dict[str, list[EntryFacts]] = {}
    for entry in entries:
        parent = _parent_of(entry, by_key)
        if parent is not None and parent in {e.key for e in entries}:
            children.setdefault(parent, []).append(entry)
        else:
            roots.setdefault(entry.base_digest or "unknown", []).append(entry)
    return [
        {"base": base, "children": [_node(entry, children) for entry in members]}
        for base, members in sorted(roots.items())
    ]


def _parent_of(entry: EntryFacts, by_key: dict) -> str | None:
    """The entry below this one: recorded since schema 3, else its parent key if
    that is an entry (true when no metadata step stood between them)."""
    if entry.parent_entry:
        return entry.parent_entry
    if entry.has_inputs:
        return None  # recorded: it is the first layer step of its chain
    return entry.parent_key if entry.parent_key in by_key else None


def _node(entry: EntryFacts, children: dict, depth: int = 0) -> dict:
    node = {
        "key": entry.key,
        "short_key": entry.short_key,
        "instruction": entry.instruction,
        "stage_index": entry.stage_index,
        "stage_name": entry.stage_name,
        "line": entry.line,
        "layer_digest": entry.layer_digest,
        "layer_size": entry.layer_size,
        "in_image": entry.in_image,
        "children": [],
    }
    if depth < 10_000:  # a cycle cannot happen (keys chain forwards), but bound it anyway
        node["children"] = [_node(child, children, depth + 1) for child in children.get(entry.key, [])]
    return node


def _behind_image(store: Store, name: str, entries: list[EntryFacts], by_key: dict) -> list[EntryFacts]:
    diff_ids = set(store.load_image(name).diff_ids)
    wanted: set[str] = set()
    for entry in entries:
        if entry.diff_id in diff_ids:
            key = entry.key
            while key in by_key and key not in wanted:
                wanted.add(key)
                key = _parent_of(by_key[key], by_key)
    return [entry for entry in entries if entry.key in wanted]

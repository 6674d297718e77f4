"""What each layer of an image is and does: the step that made it, where it
came from, and the paths it adds, modifies and removes, with sizes.

One streamed pass over the layers, bottom first: each layer's entries are
applied to a merged tree of the layers below (whiteouts and opaque
directories first, as the OCI image spec orders them), which tells an added
path from a modified one and gives a removed path its size. The same pass
feeds dive's efficiency figures (``wasted.py``). Memory grows with the
number of paths, never with the bytes in the files.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable
from dataclasses import field

from imgbuild.cache.inspection import MAX_LAYER_PATHS, LayerEntry, walk_layer
from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError
from imgbuild.image import Image
from imgbuild.layerview.tree import MergedTree, Node
from imgbuild.layerview.wasted import Efficiency
from imgbuild.store import Store

CHANGES = ("added", "modified", "removed")
HASH_CHUNK = 1 << 20
IMGBUILD_MARK = " # imgbuild"  # imgbuild ends the history of the steps it ran with this


@dataclass
class Options:
    """What ``imgbuild layers`` was asked to show, from its flags."""

    changes: tuple[str, ...] = CHANGES
    sort: str = "path"  # or "size"
    min_size: int = 0
    path_glob: str | None = None
    tree: bool = False
    hash_files: bool = False  # sha256 every file (for diff)
    max_files: int = MAX_LAYER_PATHS  # rows listed per layer; the counts cover all
    on_file: Callable[[LayerEntry], None] | None = None  # sees each file while its data can be read


@dataclass
class Analysis:
    """Each layer's changes and the image's wasted space, as ``imgbuild layers`` reports them."""

    image: Image
    layers: list[dict]
    history: list[dict]
    tree: MergedTree
    efficiency: Efficiency = field(default_factory=Efficiency)


def analyze(store: Store, image: Image, options: Options | None = None) -> Analysis:
    options = options or Options()
    history = match_history(image)
    origins = layer_origins(store, image, history)
    merged = MergedTree()
    efficiency = Efficiency()
    layers = []
    diff_ids = image.diff_ids
    for index, descriptor in enumerate(image.layers):
        entries = _read_layer(store, descriptor.digest, descriptor.media_type, options)
        efficiency.add_layer([(e.path, e.kind, e.size) for e in entries])
        rows, counts = _apply(merged, entries, index)
        step = next((h for h in history if h["layer"] == index), {})
        layers.append({
            "index": index,
            "digest": descriptor.digest,
            "diff_id": diff_ids[index] if index < len(diff_ids) else None,
            "media_type": descriptor.media_type,
            "compressed_size": descriptor.size,
            "size": sum(e.size for e in entries),
            "instruction": step.get("instruction", ""),
            "created_by": step.get("created_by", ""),
            "created": step.get("created", ""),
            "origin": origins[index],
            "counts": counts,
            **_listed(rows, options),
        })
    return Analysis(image, layers, history, merged, efficiency)


def _read_layer(store: Store, digest: str, media_type: str, options: Options) -> list[LayerEntry]:
    entries = []
    for entry in walk_layer(store, digest, media_type):
        if entry.kind == "file":
            if options.hash_files:
                entry.hasher = hashlib.sha256()
            if options.on_file is not None:
                options.on_file(entry)
            if options.hash_files:
                entry.link = _hash_rest(entry)  # a file has no link: the field carries its digest
                entry.hasher = None
        entry.reader = None  # the walk moves on; keep no handle on the stream
        entries.append(entry)
    return entries


def _hash_rest(entry: LayerEntry) -> str:
    """The file's sha256: what ``on_file`` read is hashed already, the rest is read here."""
    while entry.read_data(HASH_CHUNK):
        pass
    return "sha256:" + entry.hasher.hexdigest()


def _apply(merged: MergedTree, entries: list[LayerEntry], index: int) -> tuple[list[dict], dict]:
    """Apply a layer to the tree: deletions first (they hide only what is below), then writes."""
    rows: list[dict] = []
    counts = {f"{change}{suffix}": 0 for change in CHANGES for suffix in ("", "_bytes")}
    for entry in entries:
        if entry.kind == "opaque":
            removed, size = merged.clear_below(entry.path)
            rows.append({"path": entry.path, "change": "removed", "type": "opaque", "size": size, "paths": removed})
            _count(counts, "removed", size)
        elif entry.kind == "whiteout":
            before = merged.get(entry.path)
            removed, size = merged.remove(entry.path)
            kind = before.kind if before else "missing"  # a whiteout of nothing: allowed, and a sign of waste
            rows.append({"path": entry.path, "change": "removed", "type": kind, "size": size, "paths": removed})
            _count(counts, "removed", size)
    for entry in entries:
        if entry.kind in ("opaque", "whiteout"):
            continue
        change = "modified" if merged.get(entry.path) is not None else "added"
        digest = entry.link if entry.kind == "file" and entry.link.startswith("sha256:") else ""
        link = "" if entry.kind == "file" else entry.link
        merged.put(entry.path, Node(entry.kind, entry.size, index, entry.mode, entry.uid, entry.gid, link, digest,
                                    entry.mtime_ns))
        row = {"path": entry.path, "change": change, "type": entry.kind, "size": entry.size,
               "mode": format(entry.mode, "04o"), "uid": entry.uid, "gid": entry.gid}
        if link:
            row["link"] = link
        rows.append(row)
        _count(counts, change, entry.size)
    return rows, counts


def _count(counts: dict, change: str, size: int) -> None:
    counts[change] += 1
    counts[change + "_bytes"] += size


def _listed(rows: list[dict], options: Options) -> dict:
    chosen = [row for row in rows if wanted(row, options)]
    chosen.sort(key=(lambda r: (-r["size"], r["path"])) if options.sort == "size" else (lambda r: r["path"]))
    return {"files": chosen[: options.max_files], "files_left_out": max(0, len(chosen) - options.max_files)}


def wanted(row: dict, options: Options) -> bool:
    if row.get("change", "added") not in options.changes or row["size"] < options.min_size:
        return False
    return options.path_glob is None or path_matches(row["path"], options.path_glob)


def path_matches(path: str, pattern: str) -> bool:
    """``*`` crosses ``/`` (as in find -path); a pattern without a leading ``/`` matches from the root."""
    return fnmatch.fnmatchcase(path, pattern if pattern.startswith("/") else "/" + pattern)


def tree_rows(analysis: Analysis, options: Options) -> list[dict]:
    """The merged filesystem, filtered by --path and --min-size (--changes is about layers)."""
    options = Options(CHANGES, options.sort, options.min_size, options.path_glob)
    rows = []
    for path in analysis.tree.paths():
        node = analysis.tree.get(path)
        row = {"path": path, "type": node.kind, "size": node.size, "layer": node.layer}
        if node.link:
            row["link"] = node.link
        if wanted(row, options):
            rows.append(row)
    if options.sort == "size":
        rows.sort(key=lambda r: (-r["size"], r["path"]))
    return rows


# --- the steps behind the layers -------------------------------------------------------


def match_history(image: Image) -> list[dict]:
    """The history entries, each with the layer it made (None for an
    ``empty_layer`` step); entries beyond the layers get None too."""
    steps = []
    layer = 0
    count = len(image.layers)
    for entry in image.config.get("history") or []:
        if not isinstance(entry, dict):
            continue
        empty = bool(entry.get("empty_layer"))
        created_by = str(entry.get("created_by") or "")
        steps.append({
            "created_by": created_by,
            "instruction": instruction_of(created_by),
            "created": str(entry.get("created") or ""),
            "comment": str(entry.get("comment") or ""),
            "empty_layer": empty,
            "layer": None if empty or layer >= count else layer,
        })
        if not empty:
            layer += 1
    return steps


def instruction_of(created_by: str) -> str:
    """The Dockerfile instruction a history line stands for, as people wrote it."""
    text = created_by.strip()
    for suffix in (IMGBUILD_MARK, " # buildkit"):
        text = text.removesuffix(suffix)
    if text.startswith("/bin/sh -c #(nop) "):
        return text.removeprefix("/bin/sh -c #(nop) ").strip()
    if text.startswith("/bin/sh -c "):
        return "RUN " + text.removeprefix("/bin/sh -c ")
    # BuildKit and imgbuild write the shell form as run: "RUN /bin/sh -c CMD"
    return text.replace("RUN /bin/sh -c ", "RUN ", 1) if text.startswith("RUN /bin/sh -c ") else text


def layer_origins(store: Store, image: Image, history: list[dict]) -> list[str]:
    """Per layer: ``base`` (from the base image), ``run`` (a step imgbuild ran),
    ``cached`` (a step whose cache entry a build reused) or ``unknown``.

    The cache index says which steps made which layers and on which base
    image; without it (another tool's image, a pruned cache) the history
    still marks imgbuild's steps, and the layers below the first of them are
    the base image's."""
    diff_ids = image.diff_ids
    origins = ["unknown"] * len(image.layers)
    rows = _cache_rows_by_diff_id(store, set(diff_ids))
    base_ids: set[str] = set()
    for base in {row["base_digest"] for row in rows.values()} - {None, "", "scratch"}:
        base_ids.update(_diff_ids_of(store, base))
    first_own = next(
        (h["layer"] for h in history if h["layer"] is not None and h["created_by"].endswith(IMGBUILD_MARK)), None
    )
    for index, diff_id in enumerate(diff_ids[: len(origins)]):
        if diff_id in base_ids or (first_own is not None and index < first_own and diff_id not in rows):
            origins[index] = "base"
        elif diff_id in rows:
            origins[index] = "cached" if rows[diff_id]["hits"] else "run"
        elif first_own is not None and index >= first_own:
            origins[index] = "run"
    return origins


def _cache_rows_by_diff_id(store: Store, diff_ids: set[str]) -> dict:
    rows: dict = {}
    for row in store.db.cache_rows():
        if row["diff_id"] in diff_ids:
            known = rows.get(row["diff_id"])
            if known is None or row["hits"] > known["hits"]:
                rows[row["diff_id"]] = row
    return rows


def _diff_ids_of(store: Store, digest: str) -> list[str]:
    try:
        return store.load_image(digest).diff_ids
    except ImgbuildError:
        return []

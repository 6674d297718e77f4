"""The cache between machines: ``--cache-to`` and ``--cache-from``.

An exported cache is an OCI artifact: a manifest whose config (media type
``CACHE_CONFIG``) maps each step key to its layer descriptor (with diff_id),
parent key, history line and recorded key document, and whose layers are
the layer blobs themselves. ``type=local`` writes it as an OCI image layout
in a directory, ``type=registry`` pushes it to any OCI registry (the layer
blobs through the push code, so a blob the repository already has is not
sent again).

Importing is lazy: the index is read once, a key the local cache lacks is
looked up in it, and a hit is recorded as a local entry whose blob comes
only when something needs the layer (a later step that runs over it, a
``COPY --from`` of its stage, the final image) - ``BuildCache.fetch_layers``.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import field
from pathlib import Path

from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError, UsageError
from imgbuild.image import (
    LAYER_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    Descriptor,
    LayerRef,
    canonical_json,
    check_digest,
    parse_json_document,
    sha256_digest,
)
from imgbuild.safeopen import open_object, open_root, read_regular_file, reopen_for_reading
from imgbuild.store import Store

CACHE_CONFIG = "application/vnd.imgbuild.cache.config.v1+json"
CACHE_FORMAT = 1
CACHE_TAG = "latest"  # the ref name of the cache in a type=local layout
MAX_INDEX_BYTES = 1 << 20  # index.json and the manifest
MAX_CONFIG_BYTES = 64 << 20  # the key -> layer mapping with its key documents
CACHE_TYPES = ("local", "registry")
MODES = ("min", "max")


class CacheShareError(ImgbuildError):
    """A cache import or export failed (a bad directory, registry or document)."""


@dataclass
class CacheSpec:
    """One ``--cache-to`` or ``--cache-from``."""

    type: str
    path: str | None = None  # type=local: dest (export) or src (import)
    ref: str | None = None  # type=registry
    mode: str = "min"
    cache_mounts: bool = False  # --cache-to ...,cache-mounts=true


def parse_cache_spec(text: str, flag: str) -> CacheSpec:
    """``type=local,dest=DIR[,mode=min|max]`` (``--cache-to``), ``type=local,src=DIR``,
    ``type=registry,ref=HOST/REPO:TAG[,mode=...]`` as buildx writes them."""
    values: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if key:
            values[key.strip().lower()] = value.strip()
    kind = values.pop("type", "")
    if kind not in CACHE_TYPES:
        raise UsageError(f"{flag} {text!r}: type must be one of {', '.join(CACHE_TYPES)}")
    spec = CacheSpec(type=kind, mode=values.pop("mode", "min") or "min")
    if spec.mode not in MODES:
        raise UsageError(f"{flag} {text!r}: mode must be min or max")
    if kind == "local":
        spec.path = values.pop("dest" if flag == "--cache-to" else "src", None)
        if not spec.path:
            raise UsageError(f"{flag} {text!r}: type=local needs {'dest' if flag == '--cache-to' else 'src'}=DIR")
    else:
        spec.ref = values.pop("ref", None)
        if not spec.ref:
            raise UsageError(f"{flag} {text!r}: type=registry needs ref=HOST/REPO:TAG")
    values.pop("oci-mediatypes", None)  # always OCI
    if "cache-mounts" in values and flag == "--cache-to":
        spec.cache_mounts = values.pop("cache-mounts").lower() in ("", "true", "1", "yes")
    if values:
        raise UsageError(f"{flag} {text!r}: unknown option(s) {', '.join(sorted(values))}")
    return spec


# --- the document ---------------------------------------------------------------


# Where a step stood (``inputs.StepPlace``), as exported: what lets an importing
# build find "the same step" to explain a miss (cache/explain.py).
PLACE_FIELDS = {
    "dockerfile": str,
    "stage_index": int,
    "stage_name": str,
    "line": int,
    "instruction": str,
    "parent_entry": str,
    "base_digest": str,
}


@dataclass
class CachedStep:
    """One imported entry: what a key stands for, and what it was made of."""

    key: str
    parent_key: str
    layer: LayerRef | None
    created_by: str
    inputs: dict | None = None  # the key's record (inputs.key_inputs), as exported
    place: dict | None = None  # PLACE_FIELDS
    created: float | None = None  # when the exporter first built it: dates the step's history


def exported_dockerfile(name: str) -> str:
    """The Dockerfile's name as a cache carries it: as given with ``-f`` when
    relative, its file name when absolute (the exporter's directories stay home)."""
    return os.path.basename(name) if os.path.isabs(name) else name


@dataclass
class EntryRecord:
    """What an export says of one entry: its ``cache`` columns, and its
    inputs with the place and file lists, if kept."""

    row: dict
    inputs: dict | None
    file_list: object  # digest -> listing or None


def cache_document(store: Store, keys: list[str], pending: dict | None = None) -> tuple[dict, list[Descriptor]]:
    """The config of the cache artifact for ``keys`` and the layer blobs it names.
    ``pending``: key -> EntryRecord of the imported entries not recorded yet."""
    from imgbuild.cache.inputs import digests_in

    entries = []
    layers: dict[str, Descriptor] = {}
    file_lists: dict[str, dict] = {}
    for key in dict.fromkeys(keys):
        record = (pending or {}).get(key) or _stored_record(store, key)
        if record is None:
            continue
        row, inputs = record.row, record.inputs
        entry = {"key": key, "parent": row["parent_key"] or "", "created_by": row["created_by"] or ""}
        if row.get("created"):  # an importer's image then has the same times, so the same digest
            entry["created"] = row["created"]
        if row["diff_id"]:
            blob = Descriptor(row["layer_media_type"], row["layer_digest"], row["layer_size"])
            entry["layer"] = {**blob.to_json(), "diffID": row["diff_id"]}
            layers[blob.digest] = blob
        if inputs is not None:
            # Where the Dockerfile lay on this machine means nothing to another
            # one, and is not the exporter's to publish.
            entry["inputs"] = {name: value for name, value in inputs.items() if name != "dockerfile_path"}
            entry["place"] = _place_of(row)
            for digest in digests_in(inputs.get("document")):
                listing = file_lists.get(digest) or record.file_list(digest)
                if listing is not None:
                    file_lists[digest] = listing
        entries.append(entry)
    document = {"format": CACHE_FORMAT, "entries": entries}
    if file_lists:
        # The files behind the source digests: an importing build names the
        # files that changed (``--explain``), as it would against a local entry.
        document["fileLists"] = file_lists
    return document, list(layers.values())


def _stored_record(store: Store, key: str) -> EntryRecord | None:
    row = store.db.cache_entry(key)
    if row is None:
        return None
    return EntryRecord(dict(row), store.db.cache_inputs(key), store.db.file_list)


def _place_of(row: dict) -> dict:
    place = {name: row.get(name) for name in PLACE_FIELDS if row.get(name) is not None}
    if "dockerfile" in place:
        place["dockerfile"] = exported_dockerfile(place["dockerfile"])
    return place


def cache_manifest(config: Descriptor, layers: list[Descriptor]) -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": CACHE_CONFIG,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }


@dataclass
class CacheIndex:
    """An exported build cache's config: its steps, cache mounts and file lists."""

    steps: dict[str, CachedStep]
    mounts: list[tuple[str, Descriptor]]  # cache mount directory name -> its tar
    file_lists: dict[str, dict] = field(default_factory=dict)  # source digest -> its files


def parse_cache_config(data: bytes, where: str) -> CacheIndex:
    """The entries of a cache config, each checked: the document came from elsewhere."""
    document = parse_json_document(data, f"cache index {where}")
    if document.get("format") != CACHE_FORMAT or not isinstance(document.get("entries"), list):
        raise CacheShareError(f"{where} is not an imgbuild cache (format {document.get('format')!r}, expected {CACHE_FORMAT})")
    steps = {}
    for item in document["entries"]:
        try:
            step = _cached_step(item)
        except (KeyError, TypeError, ValueError, ImgbuildError) as error:
            raise CacheShareError(f"{where}: malformed cache entry {str(item)[:200]!r}: {error}") from None
        steps[step.key] = step
    mounts = []
    for item in document.get("cacheMounts") or []:
        try:
            mounts.append((str(item["name"]), _layer_descriptor(item["layer"])))
        except (KeyError, TypeError, ValueError, ImgbuildError) as error:
            raise CacheShareError(f"{where}: malformed cache mount {str(item)[:200]!r}: {error}") from None
    return CacheIndex(steps, mounts, _file_lists(document.get("fileLists"), where))


def _file_lists(value, where: str) -> dict[str, dict]:
    """The file lists of a cache document. Their rows are read by ``--explain``
    only, which takes a row of another shape for "cannot be told"."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CacheShareError(f"{where}: malformed fileLists (not an object)")
    lists = {}
    for digest, listing in value.items():
        if isinstance(listing, dict) and isinstance(listing.get("files"), list):
            lists[check_digest(digest)] = listing
    return lists


def _layer_descriptor(document: dict) -> Descriptor:
    blob = Descriptor.from_json(document)
    if blob.media_type not in LAYER_TYPES or blob.size < 0:
        raise ValueError(f"not a layer: {blob.media_type!r}")
    return blob


def _cached_step(item: dict) -> CachedStep:
    layer = None
    if item.get("layer") is not None:
        blob = _layer_descriptor(item["layer"])
        layer = LayerRef(check_digest(item["layer"]["diffID"]), blob)
    parent = item.get("parent") or ""
    if parent:
        check_digest(parent)
    inputs = item.get("inputs")
    return CachedStep(
        check_digest(item["key"]),
        parent,
        layer,
        str(item.get("created_by") or ""),
        inputs if isinstance(inputs, dict) else None,
        _place(item.get("place")),
        _created(item.get("created")),
    )


def _created(value) -> float | None:
    """An exported entry's time; anything but a plausible number is left out."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e11:
        return None
    return float(value)


def _place(value) -> dict | None:
    """A step's place as exported; a field of the wrong type is left out."""
    if not isinstance(value, dict):
        return None
    return {
        name: value[name]
        for name, kind in PLACE_FIELDS.items()
        if isinstance(value.get(name), kind) and not isinstance(value.get(name), bool)
    }


# --- sources ----------------------------------------------------------------------


class CacheSource:
    """An imported cache, read on first use. Subclasses fetch blobs."""

    # A registry can mount its blobs into another repository: a push needs none here.
    remote = False

    def __init__(self, where: str):
        self.where = where
        self._index: CacheIndex | None = None
        self._lock = threading.Lock()
        self.warn = None  # set by the build: a cache that cannot be read is a warning, as in BuildKit

    def index(self) -> CacheIndex:
        with self._lock:
            if self._index is None:
                try:
                    self._index = self._load()
                except ImgbuildError as error:
                    # A missing or unreadable cache costs time, not the build: its steps run.
                    self._index = CacheIndex({}, [])
                    if self.warn is not None:
                        self.warn(f"--cache-from {self.where} not used: {error}")
            return self._index

    def lookup(self, key: str) -> CachedStep | None:
        return self.index().steps.get(key)

    def cache_mounts(self) -> list[tuple[str, Descriptor]]:
        return self.index().mounts

    def steps_at(self, dockerfile: str, stage_index: int, *, parent_entry: str | None = None, line: int | None = None):
        """The entries of this cache recorded for a step of ``dockerfile``'s stage
        ``stage_index`` on top of ``parent_entry`` (or, without it, at ``line``),
        that kept their inputs (``cache/explain.py``)."""
        name = exported_dockerfile(dockerfile)
        found = []
        for step in self.index().steps.values():
            place = step.place or {}
            if step.inputs is None or place.get("dockerfile") != name or place.get("stage_index") != stage_index:
                continue
            if parent_entry is not None and place.get("parent_entry", "") != parent_entry:
                continue
            if parent_entry is None and place.get("line") != line:
                continue
            found.append(step)
        return found

    def file_list(self, digest: str) -> dict | None:
        return self.index().file_lists.get(digest)

    def _load(self) -> CacheIndex:
        raise NotImplementedError

    def fetch(self, store: Store, blob: Descriptor) -> None:
        raise NotImplementedError


class LocalSource(CacheSource):
    """``type=local,src=DIR``: an OCI layout; nothing in it is followed as a symlink."""

    def __init__(self, directory: str):
        super().__init__(directory)
        self.directory = directory

    def _read(self, relpath: str, limit: int) -> bytes:
        try:
            root = open_root(self.directory)
        except OSError as error:
            raise CacheShareError(f"--cache-from {self.directory}: cannot open it ({error.strerror})") from None
        try:
            return read_regular_file(root, relpath, limit)
        except OSError as error:
            raise CacheShareError(
                f"--cache-from {self.directory}: cannot read {relpath} ({error.strerror or error}); "
                "is it a cache written by --cache-to type=local?"
            ) from None
        finally:
            os.close(root)

    def _read_blob(self, digest: str, limit: int) -> bytes:
        data = self._read(_blob_path(digest), limit)
        if sha256_digest(data) != digest:
            raise CacheShareError(f"--cache-from {self.directory}: blob {digest} does not match its digest")
        return data

    def _load(self) -> CacheIndex:
        index = parse_json_document(self._read("index.json", MAX_INDEX_BYTES), f"{self.directory}/index.json")
        manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
        tagged = [m for m in manifests if (m.get("annotations") or {}).get(REF_NAME_ANNOTATION) == CACHE_TAG]
        if not tagged:
            raise CacheShareError(f"--cache-from {self.directory}: its index.json names no cache ({CACHE_TAG!r})")
        manifest = parse_json_document(
            self._read_blob(Descriptor.from_json(tagged[0]).digest, MAX_INDEX_BYTES), "cache manifest"
        )
        return steps_of(manifest, lambda d: self._read_blob(d.digest, MAX_CONFIG_BYTES), self.directory)

    def fetch(self, store: Store, blob: Descriptor) -> None:
        root = open_root(self.directory)
        try:
            path_fd, st = open_object(root, _blob_path(blob.digest))
            try:
                fd = reopen_for_reading(path_fd, st)  # a FIFO or device is refused, not read
            finally:
                os.close(path_fd)
        except OSError as error:
            raise CacheShareError(
                f"--cache-from {self.directory}: cannot read layer {blob.digest} ({error.strerror or error})"
            ) from None
        finally:
            os.close(root)
        with os.fdopen(fd, "rb") as source:
            store.copy_blob_from(source, blob.digest)  # verified: a mismatch stores nothing


def steps_of(manifest: dict, read_config, where: str) -> CacheIndex:
    config = manifest.get("config") or {}
    if config.get("mediaType") != CACHE_CONFIG:
        raise CacheShareError(f"{where} is not an imgbuild cache (its config is {config.get('mediaType')!r})")
    return parse_cache_config(read_config(Descriptor.from_json(config)), where)


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + check_digest(digest).split(":", 1)[1]


def open_source(spec: CacheSpec, store: Store, insecure=()) -> CacheSource:
    if spec.type == "local":
        return LocalSource(spec.path)
    from imgbuild.cache.sharereg import RegistrySource

    return RegistrySource(spec.ref, store, insecure)


# --- export -------------------------------------------------------------------------


def export_cache(
    store: Store, spec: CacheSpec, keys: list[str], cache, insecure=(), compression: str = "gzip"
) -> Descriptor:
    """Write the cache of ``keys`` where ``spec`` says; returns the manifest's descriptor.
    ``cache`` (the build's ``BuildCache``) brings in the blobs of entries an
    imported cache stood for, and so records them."""
    if spec.type == "local":
        cache.fetch_layers(cache.pending_layers(keys))  # the directory gets every blob
    config, layers = cache_document(store, keys, cache.pending_records(keys))
    if spec.type == "local":
        cache.fetch_layers([LayerRef("", layer) for layer in layers])
    if spec.cache_mounts:
        from imgbuild.cache.sharemounts import cache_mount_layers

        config["cacheMounts"] = cache_mount_layers(store, compression)
        layers += [Descriptor.from_json(mount["layer"]) for mount in config["cacheMounts"]]
    config_data = canonical_json(config)
    config_descriptor = Descriptor.for_bytes(CACHE_CONFIG, config_data)
    manifest_data = canonical_json(cache_manifest(config_descriptor, layers))
    if spec.type == "local":
        return write_layout(store, Path(spec.path), config_data, manifest_data, layers)
    from imgbuild.cache.sharereg import push_cache

    # A registry gets the layers of imported entries by a mount from where they
    # came from when it can; only else are they fetched (and so recorded).
    fetch = lambda blob: cache.fetch_layers([LayerRef("", blob)])  # noqa: E731
    return push_cache(store, spec.ref, config_data, manifest_data, layers, insecure, fetch)


def write_layout(store: Store, directory: Path, config: bytes, manifest: bytes, layers: list[Descriptor]) -> Descriptor:
    """An OCI layout in ``directory``: blobs it has are kept, the index replaced last."""
    try:
        directory.mkdir(parents=True, exist_ok=True)  # the user's own choice: followed
        blobs = _real_directory(_real_directory(directory / "blobs") / "sha256")
        for layer in layers:
            target = blobs / layer.digest.split(":", 1)[1]
            if target.is_file() and not target.is_symlink() and target.stat().st_size == layer.size:
                continue  # content-addressed: the same name is the same bytes
            with store.open_blob(layer.digest) as source:
                _write_atomic(target, source.read)
        for data in (config, manifest):
            _write_atomic(blobs / sha256_digest(data).split(":", 1)[1], _reader(data))
        _write_atomic(directory / "oci-layout", _reader(b'{"imageLayoutVersion":"1.0.0"}'))
        descriptor = Descriptor.for_bytes(OCI_MANIFEST, manifest, annotations={REF_NAME_ANNOTATION: CACHE_TAG})
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor.to_json()]}
        _write_atomic(directory / "index.json", _reader(json.dumps(index, indent=2).encode()))
    except OSError as error:
        raise CacheShareError(f"--cache-to {directory}: cannot write the cache ({error.strerror or error})") from None
    return descriptor


def _reader(data: bytes):
    chunks = [data]
    return lambda size=-1: chunks.pop() if chunks else b""


def _write_atomic(target: Path, read) -> None:
    """Write ``target`` through a new temporary file: a symlink left in the
    directory (a restored CI cache is not trusted) is replaced, never followed."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := read(1 << 20):
                out.write(chunk)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _real_directory(path: Path) -> Path:
    """``path`` made if missing; a symlink in its place would send the blobs elsewhere."""
    path.mkdir(exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise CacheShareError(f"--cache-to: {path} is not a directory (a symlink is not followed)")
    return path

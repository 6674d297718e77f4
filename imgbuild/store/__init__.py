"""The local store: an OCI image layout, layer snapshots and an SQLite index.

    ROOT/oci/            OCI image layout: oci-layout, index.json, blobs/sha256/<hex>
    ROOT/snapshots/<id>  one extracted layer each (overlay lowerdirs), keyed by chain ID
    ROOT/index.db        SQLite: layers, snapshots, cache keys, stat cache
    ROOT/tmp/            temp files, on the same filesystem for atomic renames, in
                         one owner-PID-TOKEN/ directory per process (store/owner.py)
    ROOT/cache-mounts/   RUN --mount=type=cache directories
    ROOT/lock            flock'ed while index.json or snapshots change

Every blob is written to tmp/, hashed while written, verified, fsync'ed and
renamed into place (``blobwriter.py``), so a blob file under blobs/ always
matches its name. Snapshots are ``snapshots.py``'s; the index, ``index_db.py``'s.

The root is 0700: snapshots and mounted step roots hold files of any image,
setuid-root binaries among them, and no other user may reach them (Docker's
CVE-2021-41091). Root's tools (skopeo, umoci) still read the OCI layout.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imgbuild.errors import (
    DigestMismatch,
    ImageNotFound,
    ImgbuildError,
    StoreError,
)
from imgbuild.image import (
    INDEX_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    Descriptor,
    Image,
    Platform,
    canonical_json,
    check_digest,
    make_manifest,
    media_type_of,
    parse_json_document,
    select_platform,
)
from imgbuild.store import snapshots
from imgbuild.store.atomic import write_file_atomic
from imgbuild.store.blobwriter import BlobWriter
from imgbuild.store.index_db import IndexDB
from imgbuild.store.lock import BuildLease, LiveBuilds, build_lease, file_lock, live_builds
from imgbuild.store.mounts import remove_tree
from imgbuild.store.owner import SweepResult, WorkOwner, sweep_dead_owners

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from typing import BinaryIO

__all__ = ["BlobWriter", "Store", "normalise_tag", "remove_tree"]

CHUNK = 1 << 20
PRIVATE_MODE = 0o700  # the root and the directories that hold image files


def normalise_tag(name: str) -> str:
    """``app`` means ``app:latest``, as in Docker; a digest reference stays as it is."""
    if "@" in name:
        return name
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _repository(name: str) -> str:
    """``host:5000/app`` of ``host:5000/app:1``."""
    head, _, last = name.rpartition("/")
    last = last.rsplit(":", 1)[0]
    return f"{head}/{last}" if head else last


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        self.layout = self.root / "oci"
        self.blobs_dir = self.layout / "blobs" / "sha256"
        self.tmp_dir = self.root / "tmp"
        self.snapshots_dir = self.root / "snapshots"
        self.cache_mounts_dir = self.root / "cache-mounts"
        self.lock_path = self.root / "lock"
        self.lease_path = self.root / "gc.lock"
        self._owner: WorkOwner | None = None
        self._owner_lock = threading.Lock()
        self._init_layout()
        self.db = IndexDB(self.root / "index.db")
        if self.db.has_legacy_snapshots():
            snapshots.drop_legacy_snapshots(self)

    def _init_layout(self) -> None:
        # Also for a store made before the root was private: fixed on every open.
        for directory in (self.root, self.tmp_dir, self.snapshots_dir, self.cache_mounts_dir):
            _private_directory(directory)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        layout_file = self.layout / "oci-layout"
        index_file = self.layout / "index.json"
        if layout_file.exists() and index_file.exists():
            return
        with file_lock(self.lock_path):
            if not layout_file.exists():
                write_file_atomic(layout_file, b'{"imageLayoutVersion":"1.0.0"}', self.tmp_dir)
            if not index_file.exists():
                empty = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
                write_file_atomic(index_file, canonical_json(empty), self.tmp_dir)

    @contextmanager
    def lock(self) -> Iterator[None]:
        with file_lock(self.lock_path):
            yield

    @contextmanager
    def writer_lease(self) -> Iterator[None]:
        """Keep garbage collection (``imgbuild rmi``) away while this block runs.

        Writers (a pull, a load) hold it from the first blob they write until
        the tag that references them is in index.json; otherwise a concurrent
        ``rmi`` may prune blobs nothing references yet. Builds hold it only
        around each blob write and cache lookup (``build_lease``). Readers that copy an image out
        (push, save, run) hold it from resolving the name to their last read:
        an ``rmi`` meanwhile untags, and its blobs go at a later collection.
        A shared flock: holders never wait for each other, only for a running
        collection (see imgbuild.store.gc).
        """
        with file_lock(self.lease_path, shared=True):
            yield

    @contextmanager
    def build_lease(self) -> Iterator[BuildLease]:
        """Register a running build (``lock.build_lease``) for the ``with`` block.

        A build holds this from start to tag instead of the writer lease, and
        the writer lease only around what must not interleave with a
        collection (``writer_lease`` above): a prune while builds run removes
        only what none of them can need (imgbuild.cache.prune).
        """
        with build_lease(self.root, self.work_dir()) as lease:
            yield lease

    def live_builds(self) -> LiveBuilds:
        return live_builds(self.root)

    # --- blobs -----------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / check_digest(digest).split(":", 1)[1]

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is missing from the store at {self.root}") from None

    def read_blob(self, digest: str) -> bytes:
        with self.open_blob(digest) as handle:
            data = handle.read()
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise DigestMismatch(f"blob {digest} in {self.root} is corrupt (content hashes to {actual}); run `imgbuild fsck`")
        return data

    @contextmanager
    def blob_writer(self, expected_digest: str | None = None) -> Iterator[BlobWriter]:
        """Write a blob in pieces: ``with store.blob_writer() as w: w.write(...)``.

        The blob becomes visible only when the block ends without an error and
        the content matches ``expected_digest`` (when given).
        """
        with self.writer_lease():
            writer = BlobWriter(self, expected_digest)
            try:
                yield writer
            except BaseException:
                writer.discard()
                raise
            writer.commit()

    def write_blob(self, data: bytes, expected_digest: str | None = None) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if expected_digest and digest != expected_digest:
            raise DigestMismatch(f"blob content has digest {digest}, expected {expected_digest}")
        with self.writer_lease():
            if self._touch_blob(digest):
                return digest
        with self.blob_writer(digest) as writer:
            writer.write(data)
        return digest

    def _touch_blob(self, digest: str) -> bool:
        """Mark a blob as just written, if it is here: a collection while builds
        run keeps the blobs written since they started (``lock.LiveBuilds``),
        and a build that writes a blob the store has takes it over."""
        try:
            os.utime(self.blob_path(digest))
        except FileNotFoundError:
            return False
        return True

    def copy_blob_from(self, source: BinaryIO, expected_digest: str | None = None) -> tuple[str, int]:
        with self.blob_writer(expected_digest) as writer:
            while chunk := source.read(CHUNK):
                writer.write(chunk)
        return writer.digest, writer.size

    def put_json(self, document: dict, media_type: str, **descriptor_fields) -> Descriptor:
        data = canonical_json(document)
        self.write_blob(data)
        return Descriptor.for_bytes(media_type, data, **descriptor_fields)

    def read_json(self, digest: str, what: str = "document") -> dict:
        return parse_json_document(self.read_blob(digest), f"{what} {digest}")

    def all_blobs(self) -> list[str]:
        return sorted("sha256:" + p.name for p in self.blobs_dir.iterdir() if not p.name.startswith("."))

    # --- tags (index.json) -------------------------------------------------

    def _read_index(self) -> dict:
        data = (self.layout / "index.json").read_bytes()
        return parse_json_document(data, f"{self.layout}/index.json")

    def _write_index(self, index: dict) -> None:
        write_file_atomic(self.layout / "index.json", canonical_json(index), self.work_dir())

    def refs(self) -> list[tuple[str | None, Descriptor]]:
        """Every entry of index.json: (tag or None for an untagged image, descriptor)."""
        entries = []
        for entry in self._read_index().get("manifests", []):
            descriptor = Descriptor.from_json(entry)
            entries.append((descriptor.annotations.get(REF_NAME_ANNOTATION), descriptor))
        return entries

    def tag(self, name: str, descriptor: Descriptor) -> None:
        """Point ``name`` at ``descriptor`` (a manifest or index), replacing any old target."""
        name = normalise_tag(name)
        annotations = dict(descriptor.annotations)
        annotations[REF_NAME_ANNOTATION] = name
        with self.lock():
            index = self._read_index()
            manifests = [m for m in index.get("manifests", []) if _ref_name(m) != name]
            manifests.append(descriptor.with_annotations(annotations).to_json())
            if manifests == index.get("manifests"):
                return  # already so (a cached rebuild): no rewrite, no fsync
            index["manifests"] = manifests
            self._write_index(index)

    def keep_untagged(self, descriptor: Descriptor) -> None:
        """Record an image built without ``-t`` so it is not garbage, as Docker keeps ``<none>``."""
        with self.lock():
            index = self._read_index()
            manifests = index.get("manifests", [])
            if not any(m.get("digest") == descriptor.digest for m in manifests):
                manifests.append(descriptor.with_annotations({}).to_json())
                index["manifests"] = manifests
                self._write_index(index)

    def untag(self, name: str) -> Descriptor:
        """Remove a tag (or, given a digest, every entry for it); return what it pointed to."""
        key = name if name.startswith("sha256:") else normalise_tag(name)
        with self.lock():
            index = self._read_index()
            manifests = index.get("manifests", [])
            removed = [m for m in manifests if _ref_name(m) == key or m.get("digest") == key]
            if not removed:
                raise ImageNotFound(f"no image named {name!r} in the store at {self.root}")
            index["manifests"] = [m for m in manifests if m not in removed]
            self._write_index(index)
        return Descriptor.from_json(removed[0])

    def resolve(self, name: str) -> Descriptor:
        """The descriptor a tag (``app:1``), a digest or a unique digest prefix points at."""
        key = normalise_tag(name)
        entries = self.refs()
        for ref, descriptor in entries:
            if ref == key:
                return descriptor
        if "@" in name:
            return self._resolve_repo_digest(name, entries)
        digest_like = name.removeprefix("sha256:")
        if len(digest_like) >= 6 and all(c in "0123456789abcdef" for c in digest_like):
            matches = {d.digest: d for _, d in entries if d.digest.split(":", 1)[1].startswith(digest_like)}
            if not matches:  # Docker's IMAGE ID is the config digest
                matches = {
                    d.digest: d for _, d in entries if self.image_id(d).split(":", 1)[1].startswith(digest_like)
                }
            if len(matches) == 1:
                return next(iter(matches.values()))
            if len(digest_like) == 64 and self.has_blob("sha256:" + digest_like):
                data = self.read_blob("sha256:" + digest_like)
                document = parse_json_document(data, name)
                return Descriptor.for_bytes(media_type_of(document, OCI_MANIFEST), data)
        raise ImageNotFound(f"no image named {name!r} in the store at {self.root} (see `imgbuild images`)")

    def _resolve_repo_digest(self, name: str, entries) -> Descriptor:
        """``app@sha256:...`` (Docker's RepoDigests form): an image of that
        repository whose manifest digest that is."""
        repository, _, digest = name.partition("@")
        for ref, descriptor in entries:
            if ref and descriptor.digest == digest and _repository(ref) == _repository(normalise_tag(repository)):
                return descriptor
        raise ImageNotFound(f"no image named {name!r} in the store at {self.root} (see `imgbuild images`)")

    # --- images ----------------------------------------------------------

    def image_id(self, descriptor: Descriptor) -> str:
        """Docker's IMAGE ID: the config digest (for an unreadable image, the manifest digest)."""
        try:
            return self.load_image(descriptor).config_descriptor.digest
        except ImgbuildError:
            return descriptor.digest

    def load_image(self, name_or_descriptor: str | Descriptor, platform: Platform | None = None) -> Image:
        """The single-platform image a name points at; an index picks ``platform`` (default: host)."""
        descriptor = (
            self.resolve(name_or_descriptor) if isinstance(name_or_descriptor, str) else name_or_descriptor
        )
        document = self.read_json(descriptor.digest, "manifest")
        media_type = media_type_of(document, descriptor.media_type)
        if media_type in INDEX_TYPES:
            chosen = select_platform(document, platform or Platform.host())
            return self.load_image(chosen, platform)
        config_descriptor = Descriptor.from_json(document["config"])
        config = self.read_json(config_descriptor.digest, "image config")
        manifest_descriptor = Descriptor(media_type, descriptor.digest, descriptor.size, platform=descriptor.platform)
        return Image(manifest_descriptor, document, config)

    def write_image(
        self, config: dict, layers: list[Descriptor], annotations: dict | None = None, elsewhere: frozenset = frozenset()
    ) -> Image:
        """Store a config and its manifest; the layer blobs must already be in the
        store, but those in ``elsewhere`` (a registry has them: the image is only pushed)."""
        for layer in layers:
            if not self.has_blob(layer.digest) and layer.digest not in elsewhere:
                raise StoreError(f"cannot write image: layer blob {layer.digest} is not in the store")
        config_descriptor = self.put_json(config, OCI_CONFIG)
        manifest = make_manifest(config_descriptor, layers, annotations)
        manifest_descriptor = self.put_json(manifest, OCI_MANIFEST)
        return Image(manifest_descriptor, manifest, config)

    # --- layers and snapshots -------------------------------------------------

    def record_layer(self, digest: str, diff_id: str, media_type: str, size: int) -> None:
        self.db.record_layer(digest, diff_id, media_type, size)

    def snapshot_path(self, chain_id: str) -> Path | None:
        """The snapshot directory of a layer at the top of the stack ``chain_id`` names."""
        return snapshots.snapshot_path(self, chain_id)

    def ensure_snapshot(self, layer: Descriptor, diff_id: str, chain_id: str, image: str = "") -> Path:
        """The extracted directory of a layer, extracting the blob on first use."""
        return snapshots.ensure_snapshot(self, layer, diff_id, chain_id, image)

    def add_snapshot(self, chain_id: str, diff_id: str, directory: Path) -> Path:
        """Adopt ``directory`` as the snapshot of ``chain_id`` (theirs if another process was first)."""
        return snapshots.add_snapshot(self, chain_id, diff_id, directory)

    def make_temp_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(dir=self.work_dir(), prefix=prefix))

    def work_dir(self) -> Path:
        """This process's own directory in tmp/, locked for its life (see imgbuild.store.owner).

        Everything a process makes in tmp/ goes in here, so that after a
        ``kill -9`` the next start can tell it from the work of live builds.
        """
        with self._owner_lock:  # steps run in threads
            if self._owner is None:
                self._owner = WorkOwner(self.tmp_dir)
        return self._owner.path

    def sweep_dead_work(self, runtime: str = "runc") -> SweepResult:
        """Remove what killed imgbuild processes left in tmp/: their runc
        containers, mounts and work directories (never a live process's)."""
        return sweep_dead_owners(self.tmp_dir, runtime)


def _ref_name(entry: dict) -> str | None:
    return (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION)


def _private_directory(path: Path) -> None:
    """Create ``path`` as 0700, or take group and other access away from it."""
    path.mkdir(mode=PRIVATE_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
        os.chmod(path, PRIVATE_MODE)

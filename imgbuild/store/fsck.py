"""``imgbuild fsck``: verify a store and, on request, repair what can be repaired.

Checks, in order:

1. ``oci/oci-layout`` and ``oci/index.json`` exist and parse;
2. every file under ``blobs/sha256`` is named by a digest and hashes to it;
3. every tag (and untagged image) reaches only blobs that exist, with the size
   its descriptor announces, and its manifests and indexes parse;
4. every build-cache entry's layer blob exists;
5. the ``snapshots`` table and the ``snapshots/`` directory agree;
6. ``tmp/`` holds nothing left behind by a killed process (an owner directory
   whose lock nobody holds, see imgbuild.store.owner, or anything else while
   no writer is active);
7. SQLite's own ``quick_check`` of ``index.db``.

Repairs (``repair=True``) only ever delete things that are already useless:
corrupt blobs and stray files under blobs/, snapshot rows without a directory
and directories without a row, cache rows whose layer is gone, and leftover
temp files. The work directory of a killed process is swept as the next build
would: its runc containers deleted, its mounts unmounted, then removed.
Otherwise nothing is removed through a mount point: a temp directory with a
live mount in it (a running container's root) is left alone and noted. A tag whose blobs are missing stays; the report says so, and
``imgbuild pull``/``build`` or ``imgbuild rmi`` is the user's fix.

Blobs are hashed without holding the store lock (blob files never change once
renamed into place); the reference and snapshot checks hold it, so they see
index.json, the snapshot table and the directories in one consistent state.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import field
from pathlib import Path

from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError, MountedError
from imgbuild.image import Descriptor, parse_json_document
from imgbuild.store import Store, remove_tree
from imgbuild.store.gc import child_descriptors, exclusive_lease, is_digest_name
from imgbuild.store.mounts import mounts_under
from imgbuild.store.owner import dead_owners, is_owner_entry


@dataclass
class Problem:
    """One thing fsck found wrong in the store."""

    kind: str  # corrupt-blob, missing-blob, size-mismatch, bad-document, stray-file, ...
    subject: str  # the digest, path or tag the problem is about
    message: str
    repairable: bool = False

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}: {self.message}"


@dataclass
class FsckReport:
    """What fsck checked, found and repaired."""

    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # what --repair did, one line each
    notes: list[str] = field(default_factory=list)  # worth knowing, not a problem
    blobs_checked: int = 0
    refs_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, subject: str, message: str, repairable: bool = False) -> None:
        if any(p.kind == kind and p.subject == subject for p in self.problems):
            return
        self.problems.append(Problem(kind, subject, message, repairable))


def check_store(store: Store, repair: bool = False) -> FsckReport:
    """Verify ``store``; with ``repair``, fix what can be fixed and check again.

    The returned report describes the store as it is at the end, so after a
    repair it lists only what is still wrong (and ``repaired`` what was done).
    """
    report = _check(store)
    if not repair or all(not p.repairable for p in report.problems):
        return report
    repaired = _repair(store, report)
    final = _check(store)
    final.repaired = repaired
    return final


def _check(store: Store) -> FsckReport:
    report = FsckReport()
    _check_layout(store, report)
    corrupt = _check_blobs(store, report)
    with store.lock():
        _check_refs(store, report, corrupt)
        _check_cache(store, report)
        _check_snapshots(store, report)
    _check_tmp(store, report)
    _check_database(store, report)
    return report


# --- the checks --------------------------------------------------------------


def _check_layout(store: Store, report: FsckReport) -> None:
    for name in ("oci-layout", "index.json"):
        path = store.layout / name
        try:
            document = parse_json_document(path.read_bytes(), str(path))
        except FileNotFoundError:
            report.add("bad-layout", str(path), "missing; the OCI layout is broken")
            continue
        except ImgbuildError as error:
            report.add("bad-layout", str(path), str(error))
            continue
        if name == "oci-layout" and "imageLayoutVersion" not in document:
            report.add("bad-layout", str(path), "has no imageLayoutVersion")
        if name == "index.json" and not isinstance(document.get("manifests", []), list):
            report.add("bad-layout", str(path), '"manifests" is not a list')


def _check_blobs(store: Store, report: FsckReport) -> set[str]:
    """Hash every blob; returns the digests of corrupt ones."""
    corrupt = set()
    for path in sorted(store.blobs_dir.iterdir()):
        if not is_digest_name(path.name) or not path.is_file() or path.is_symlink():
            report.add(
                "stray-file", str(path), "not a blob (name is not a digest or not a file)", True
            )
            continue
        try:
            with open(path, "rb") as handle:
                actual = hashlib.file_digest(handle, "sha256").hexdigest()
        except FileNotFoundError:
            continue  # removed by a collector since we listed the directory
        report.blobs_checked += 1
        if actual != path.name:
            digest = "sha256:" + path.name
            corrupt.add(digest)
            report.add("corrupt-blob", digest, f"content hashes to sha256:{actual}", True)
    return corrupt


def _check_refs(store: Store, report: FsckReport, corrupt: set[str]) -> None:
    try:
        refs = store.refs()
    except ImgbuildError as error:
        report.add("bad-layout", str(store.layout / "index.json"), str(error))
        return
    checked: set[str] = set()
    for name, descriptor in refs:
        report.refs_checked += 1
        label = name or f"untagged {descriptor.digest}"
        pending = [descriptor]
        while pending:
            current = pending.pop()
            # Each reference is checked (its size may be wrong), each document read once.
            if (
                not _blob_matches(store, report, current, label, corrupt)
                or current.digest in checked
            ):
                continue
            checked.add(current.digest)
            try:
                pending.extend(child_descriptors(store, current))
            except ImgbuildError as error:
                report.add("bad-document", current.digest, f"{error} (referenced by {label})")


def _blob_matches(
    store: Store, report: FsckReport, descriptor: Descriptor, label: str, corrupt: set[str]
) -> bool:
    """Report a missing, corrupt or wrongly-sized referenced blob; True when it is usable."""
    path = store.blob_path(descriptor.digest)
    if not path.is_file():
        report.add("missing-blob", descriptor.digest, f"referenced by {label} but not in the store")
        return False
    if descriptor.digest in corrupt:
        return False  # already reported as corrupt-blob
    size = path.stat().st_size
    if size != descriptor.size:
        report.add(
            "size-mismatch",
            descriptor.digest,
            f"{size} bytes, but {label} says {descriptor.size}",
        )
        return False
    return True


def _check_cache(store: Store, report: FsckReport) -> None:
    for row in store.db.cache_layer_rows():
        if not store.has_blob(row["layer_digest"]):
            report.add(
                "cache-missing-layer",
                row["key"],
                f"build-cache entry points at missing layer {row['layer_digest']}",
                True,
            )


def _check_snapshots(store: Store, report: FsckReport) -> None:
    rows = store.db.snapshot_rows()
    known = {str(row["id"]) for row in rows}
    for row in rows:
        if not (store.snapshots_dir / str(row["id"])).is_dir():
            report.add(
                "snapshot-missing",
                f"snapshot {row['id']}",
                f"index.db lists it (layer {row['diff_id']}, chain {row['chain_id']}) but the directory is gone",
                True,
            )
    for path in sorted(store.snapshots_dir.iterdir()):
        if path.name not in known and not _noted_if_mounted(report, path):
            report.add("snapshot-orphan", str(path), "not listed in index.db", True)


def _check_tmp(store: Store, report: FsckReport) -> None:
    _check_dead_owners(store, report)
    # Owner directories and lock files are judged by their lock alone (above);
    # the rest is from an imgbuild before owner directories, or not ours.
    entries = sorted(path for path in store.tmp_dir.iterdir() if not is_owner_entry(path.name))
    if not entries:
        return
    with exclusive_lease(store) as no_writers:
        if not no_writers:
            report.notes.append(
                f"{len(entries)} temp entries in {store.tmp_dir} not checked: "
                "another imgbuild process is writing to the store"
            )
            return
        for path in entries:
            if not _noted_if_mounted(report, path):
                report.add("leftover-temp", str(path), "left behind by an interrupted imgbuild", True)


def _check_dead_owners(store: Store, report: FsckReport) -> None:
    """Work of processes that are gone; a live process's directory is never a problem."""
    for directory in dead_owners(store.tmp_dir):
        mounted = mounts_under(directory) if directory.exists() else []
        detail = f" ({', '.join(mounted)} still mounted)" if mounted else ""
        report.add(
            "leftover-temp",
            str(directory),
            f"work of a killed imgbuild process{detail}; `imgbuild fsck --repair` "
            "or the next `imgbuild build` removes it",
            True,
        )


def _noted_if_mounted(report: FsckReport, path: Path) -> bool:
    """Note a directory with a live mount in it (never a problem to repair): True if so.

    With no writer lease held, a mount in tmp/ is from a process that takes no
    lease (an older imgbuild) or was left by a killed one; removing through
    it would delete files of a running container or of the host.
    """
    mounted = mounts_under(path)
    if mounted:
        report.notes.append(
            f"{path} left alone: {', '.join(mounted)} is mounted there; "
            "unmount it if no imgbuild is running, then run fsck again"
        )
    return bool(mounted)


def _check_database(store: Store, report: FsckReport) -> None:
    try:
        result = store.db.quick_check()
    except Exception as error:  # sqlite3.DatabaseError and friends: report, do not crash
        report.add("bad-database", str(store.db.path), str(error))
        return
    messages = [message for message in result if message != "ok"]
    if messages:
        report.add("bad-database", str(store.db.path), "; ".join(messages[:5]))


# --- repairs ------------------------------------------------------------------


def _repair(store: Store, report: FsckReport) -> list[str]:
    done: list[str] = []
    for problem in report.problems:
        if problem.kind in ("corrupt-blob", "stray-file"):
            path = (
                store.blob_path(problem.subject)
                if problem.kind == "corrupt-blob"
                else Path(problem.subject)
            )
            if _remove(path):
                done.append(f"removed {problem.kind} {problem.subject}")
        elif problem.kind == "cache-missing-layer":
            store.db.delete_cache_entry(problem.subject)
            done.append(f"removed build-cache entry {problem.subject}")
    with store.lock():
        done.extend(_repair_snapshots(store, report))
    swept = store.sweep_dead_work()
    done.extend(f"removed the work of a killed imgbuild process: {path}" for path in swept.removed)
    done.extend(f"deleted runc container {name} of a killed imgbuild process" for name in swept.containers)
    done.extend(f"unmounted {point} of a killed imgbuild process" for point in swept.unmounted)
    with exclusive_lease(store) as no_writers:
        if no_writers:
            for problem in report.problems:
                if problem.kind != "leftover-temp" or is_owner_entry(Path(problem.subject).name):
                    continue
                if _remove(Path(problem.subject)):
                    done.append(f"removed leftover temp entry {problem.subject}")
    return done


def _repair_snapshots(store: Store, report: FsckReport) -> list[str]:
    """Re-check under the lock: a snapshot may have been added since the report."""
    done = []
    known = {str(row["id"]) for row in store.db.snapshot_rows()}
    for problem in report.problems:
        if problem.kind == "snapshot-missing":
            snapshot_id = problem.subject.split()[-1]
            if not (store.snapshots_dir / snapshot_id).is_dir():
                store.db.delete_snapshot_row(int(snapshot_id))
                done.append(f"removed index.db row of {problem.subject}")
        elif problem.kind == "snapshot-orphan":
            path = Path(problem.subject)
            if path.name not in known and _remove(path):
                done.append(f"removed orphaned snapshot directory {path}")
    return done


def _remove(path: Path) -> bool:
    """Remove a file or tree; never through a mount point (then it stays, and the
    check after the repair reports it again)."""
    try:
        if path.is_dir() and not path.is_symlink():
            remove_tree(path)
        elif not mounts_under(path):
            os.unlink(path)
        else:
            return False
    except (FileNotFoundError, MountedError):
        return False
    return True

"""The store under use: repairs beside a live container, other users kept out, old stores upgraded."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from imagetools import make_busybox_image, recorded_diff_id, temp_leftovers

from imgbuild.store import Store
from imgbuild.store.fsck import check_store
from imgbuild.store.index_db import SCHEMA_VERSION

pytestmark = pytest.mark.root

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody, unlike a venv under a private home


def _wait_for(condition, what: str, process, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"{what}: the process ended early: {process.communicate()}"
        assert time.monotonic() < deadline, f"{what}: timed out"
        time.sleep(0.05)


# --- 5. fsck --repair beside a running container ----------------------------------------


def test_fsck_repair_while_run_is_running_leaves_the_container_alone(
    store, start_cli, kill_group, clear_leftovers, mounts_under, imgbuild_cli, no_traceback
):
    process = start_cli(store.root, "run", "busybox", "sh", "-c", "sleep 4; cat /etc/hostname > /dev/null && echo alive")
    try:
        _wait_for(lambda: mounts_under(store.root), "the container's root was never mounted", process)
        fsck = imgbuild_cli(store.root, "fsck", "--repair")
        stdout, stderr = process.communicate(timeout=60)
    finally:
        kill_group(process)
        clear_leftovers(store.root)
    no_traceback(fsck)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert b"Traceback" not in stderr, stderr
    assert process.returncode == 0, stderr
    assert stdout == b"alive\n"
    assert mounts_under(store.root) == []


def test_fsck_never_removes_through_a_mount_point(store, mounts_under):
    """Even with no lease held (leftovers of an imgbuild from before owner directories),
    a mount in tmp/ stays untouched."""
    leftover = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="run-"))
    (leftover / "stub").write_text("a plain leftover file\n")
    mount_point = leftover / "merged"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount_point)], check=True)
    try:
        (mount_point / "precious").write_text("not ours to delete\n")
        report = check_store(store, repair=True)
        still_there = (mount_point / "precious").read_text()
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    assert still_there == "not ours to delete\n"
    assert report.ok, report.problems
    assert any(str(mount_point) in note for note in report.notes), report.notes
    assert (leftover / "stub").exists()
    # Once unmounted, it is an ordinary leftover.
    assert check_store(store, repair=True).ok
    assert not leftover.exists()


def test_fsck_leaves_a_live_process_s_work_directory_alone(store, mounts_under):
    """This process owns its work directory (its lock is held): never a leftover,
    and what is mounted in it stays mounted, even with no writer lease held."""
    work = store.make_temp_dir("step-")
    merged = work / "merged"
    merged.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(merged)], check=True)
    try:
        report = check_store(store, repair=True)
        assert mounts_under(work) == [str(merged)]
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert report.ok and not report.repaired, (report.problems, report.repaired)
    assert merged.is_dir()


# --- 6. other local users cannot reach what the store holds ------------------------------


@pytest.fixture
def open_parent():
    """A world-traversable directory to put a store in (pytest's tmp_path is 0700 itself)."""
    parent = Path(tempfile.mkdtemp(prefix="imgbuild-open-"))
    os.chmod(parent, 0o755)
    yield parent
    shutil.rmtree(parent)


def _as_nobody_stat(path: Path) -> str:
    """What os.stat(path) gives an unprivileged user: "ok" or the errno name."""
    script = (
        "import errno, os, sys\n"
        "try:\n    os.stat(sys.argv[1]); print('ok')\n"
        "except OSError as error:\n    print(errno.errorcode[error.errno])\n"
    )
    completed = subprocess.run([*NOBODY, SYSTEM_PYTHON, "-c", script, str(path)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def test_a_setuid_file_in_a_snapshot_is_out_of_reach_of_other_users(open_parent, build_df):
    store = Store(open_parent / "store")
    make_busybox_image(store, "busybox:latest")
    built = build_df("FROM busybox\nRUN cp /bin/busybox /suid && chmod 4755 /suid\n", store=store)
    rows = store.db.query("SELECT id FROM snapshots WHERE diff_id=?", (built.image.diff_ids[-1],))
    setuid_file = store.snapshots_dir / str(rows[0]["id"]) / "suid"
    assert os.stat(setuid_file).st_mode & stat.S_ISUID
    assert _as_nobody_stat(open_parent) == "ok"  # the test reaches as far as the store

    assert _as_nobody_stat(setuid_file) == "EACCES"
    # Through a shell, as a local user would (setpriv itself looks the path up
    # before it has dropped everything).
    completed = subprocess.run([*NOBODY, "/bin/sh", "-c", f"exec {setuid_file} id -u"], capture_output=True, text=True)
    assert (completed.returncode, completed.stdout) == (126, ""), completed
    assert "Permission denied" in completed.stderr
    for private in (store.root, store.snapshots_dir, store.tmp_dir, store.root / "cache-mounts"):
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o700, private
    assert _as_nobody_stat(store.root / "oci" / "index.json") == "EACCES"


def test_an_existing_open_store_is_made_private_on_open(open_parent):
    root = open_parent / "store"
    Store(root)
    for directory in (root, root / "snapshots", root / "tmp", root / "cache-mounts"):
        directory.mkdir(exist_ok=True)  # RUN --mount=type=cache made it, before 0700 stores
        os.chmod(directory, 0o755)

    Store(root)

    for directory in (root, root / "snapshots", root / "tmp", root / "cache-mounts"):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
    # Root's own tools still read the layout.
    completed = subprocess.run(["umoci", "ls", "--layout", str(root / "oci")], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


# --- 1. a store from before chain IDs keeps working -------------------------------------

VERSION_1_SNAPSHOTS = """
CREATE TABLE snapshots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    diff_id     TEXT NOT NULL UNIQUE,
    created     REAL NOT NULL,
    last_used   REAL NOT NULL
);
"""


def test_a_store_with_diff_id_keyed_snapshots_is_upgraded(store_root, build_df):
    store = Store(store_root)
    busybox = make_busybox_image(store, "busybox:latest")
    store.db.close()
    # Turn it into what imgbuild wrote before chain IDs: a snapshot of the
    # busybox layer keyed by its diff_id (here a decoy that a build could not
    # run in), and a layer row that only a pulled config vouched for.
    decoy = store_root / "snapshots" / "1"
    decoy.mkdir()
    (decoy / "decoy").write_text("a version-1 snapshot\n")
    with sqlite3.connect(store_root / "index.db") as conn:
        conn.executescript("DROP TABLE snapshots;" + VERSION_1_SNAPSHOTS)
        conn.execute("INSERT INTO snapshots(id, diff_id, created, last_used) VALUES (1, ?, 0, 0)", (busybox.diff_ids[0],))
        conn.execute(
            "INSERT INTO layers(digest, diff_id, media_type, size) VALUES (?,?,?,?)",
            ("sha256:" + "e" * 64, "sha256:" + "f" * 64, "application/vnd.oci.image.layer.v1.tar+gzip", 1),
        )
        conn.execute("PRAGMA user_version = 1")

    upgraded = Store(store_root)

    assert not decoy.exists() and temp_leftovers(upgraded) == []
    columns = {row["name"] for row in upgraded.db.query("PRAGMA table_info(snapshots)")}
    assert {"chain_id", "diff_id"} <= columns
    assert upgraded.db.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    assert recorded_diff_id(upgraded, "sha256:" + "e" * 64) is None
    built = build_df("FROM busybox\nRUN echo upgraded > /ok\n", store=upgraded)
    assert built.tree()["ok"].data == b"upgraded\n"
    assert check_store(upgraded).ok
    # Opening it again changes nothing.
    snapshots = [dict(row) for row in upgraded.db.query("SELECT * FROM snapshots")]
    assert [dict(row) for row in Store(store_root).db.query("SELECT * FROM snapshots")] == snapshots
    assert json.loads((store_root / "oci" / "index.json").read_text())["manifests"]

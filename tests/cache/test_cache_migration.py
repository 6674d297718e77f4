"""Schema 2 to 3: a store written by the release before (commit f5d87e1, the last
with schema version 2) opens with this code, is migrated, and keeps its entries.

Two tests, because they prove different things:

- ``test_a_store_written_by_schema_2_code_is_migrated`` runs the real old code
  (``git archive`` of that commit) to write the store. The new code must list
  and inspect every old entry, unchanged, and on a rebuild hit every old
  entry whose key it computes the same (and record its inputs then). It
  cannot promise hits: the same release changed how keys are computed
  (254bb92: a base image is keyed on its layers), so today every step of
  the rebuild runs; the test checks that hits and runs add up either way,
  and that the old code still hits its own entries on the migrated store.
- ``test_migration_keeps_hits`` writes the store with this code, turns its
  index back into exactly schema 2's shape, and reopens it: the keys are this
  code's own, so every step must hit. This is what the migration itself keeps.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from imgbuild.store.index_db import SCHEMA_VERSION

pytestmark = pytest.mark.root

PROJECT = Path(__file__).resolve().parents[2]
SCHEMA_2_COMMIT = "f5d87e1"

DOCKERFILE = "FROM busybox\nARG V=1\nCOPY data /data\nRUN cat /data > /copy\nWORKDIR /w\n"

# The ``cache`` table of schema version 2, as f5d87e1 created it.
SCHEMA_2_CACHE = """
CREATE TABLE cache (
    key         TEXT PRIMARY KEY,
    parent_key  TEXT,
    diff_id     TEXT,
    layer_digest TEXT,
    layer_media_type TEXT,
    layer_size  INTEGER NOT NULL DEFAULT 0,
    created_by  TEXT NOT NULL,
    created     REAL NOT NULL,
    last_used   REAL NOT NULL,
    hits        INTEGER NOT NULL DEFAULT 0
)"""
SCHEMA_2_COLUMNS = "key, parent_key, diff_id, layer_digest, layer_media_type, layer_size, created_by, created, last_used, hits"


@pytest.fixture(scope="module")
def old_code(tmp_path_factory) -> Path:
    """imgbuild (and the test helpers) as of the last schema-2 commit."""
    tree = tmp_path_factory.mktemp("schema2")
    if not _have_commit(SCHEMA_2_COMMIT):
        # A shallow clone: fetch the history once; without it this test cannot
        # run the old code (test_migration_keeps_hits still covers the migration).
        subprocess.run(["git", "-C", str(PROJECT), "fetch", "--quiet", "--unshallow"], capture_output=True)
    if not _have_commit(SCHEMA_2_COMMIT):
        pytest.xfail(f"this clone lacks commit {SCHEMA_2_COMMIT}, the schema-2 code to write the store with")
    archive = subprocess.run(
        ["git", "-C", str(PROJECT), "archive", SCHEMA_2_COMMIT, "imgbuild", "tests/imagetools.py"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _have_commit(commit: str) -> bool:
    found = subprocess.run(
        ["git", "-C", str(PROJECT), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True
    )
    return found.returncode == 0


def _old_python(old_code: Path, code: str) -> None:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "PYTHONPATH": f"{old_code}:{old_code / 'tests'}"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=str(old_code), timeout=120)


def _db_rows(root: Path) -> tuple[int, dict[str, tuple]]:
    """(user_version, {key: (diff_id, layer_digest, hits)}) read straight from the index."""
    with sqlite3.connect(root / "index.db") as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        rows = db.execute("SELECT key, diff_id, layer_digest, hits FROM cache").fetchall()
    return version, {row[0]: row[1:] for row in rows}


def test_a_store_written_by_schema_2_code_is_migrated(old_code, tmp_path, build, ls, inspect_key, write_context):
    root = tmp_path / "store"
    _old_python(old_code, f"from imagetools import make_busybox_image; from imgbuild.store import Store; "
                          f"make_busybox_image(Store({str(root)!r}))")
    context = write_context(tmp_path / "ctx", {"Dockerfile": DOCKERFILE, "data": "d\n"})
    assert build(root, context, pythonpath=old_code)["run"] == 3
    version, old_rows = _db_rows(root)
    assert version == 2 and len(old_rows) == 3

    entries = {entry["key"]: entry for entry in ls(root)}  # the new code opens it
    assert _db_rows(root)[0] == SCHEMA_VERSION
    assert set(entries) == set(old_rows)
    for key, (diff_id, layer_digest, hits) in old_rows.items():
        entry = entries[key]
        assert (entry["diff_id"], entry["layer_digest"], entry["hits"]) == (diff_id, layer_digest, hits)
        assert not entry["has_inputs"] and entry["stage_index"] is None
    # before schema 3 only the history line was kept: ls shows it
    shown = sorted(entry["instruction"] for entry in entries.values())
    assert shown[0] == "COPY data /data" and shown[2] == "WORKDIR /w" and "cat /data > /copy" in shown[1]

    old_run = next(key for key, entry in entries.items() if "cat /data" in entry["instruction"])
    facts = inspect_key(root, old_run)
    assert facts["inputs"] is None and not facts["layer"]["changes"]["below_known"]
    assert "/copy" in {f["path"] for f in facts["layer"]["changes"]["written"]}

    finished = build(root, context)
    after = {entry["key"]: entry for entry in ls(root)}
    hit = [key for key in old_rows if after[key]["hits"] == 1]
    new = [key for key in after if key not in old_rows]
    assert (finished["cached"], finished["run"]) == (len(hit), len(new))
    assert finished["cached"] + finished["run"] == 3
    assert all(after[key]["has_inputs"] for key in hit + new)  # an old entry gets its inputs on a hit
    assert all(after[key]["line"] in (3, 4, 5) for key in hit + new)

    # Back to the old release on the migrated store: it still hits its own keys.
    assert build(root, context, pythonpath=old_code)["cached"] == 3
    assert {entry["key"] for entry in ls(root)} == set(after)


def test_migration_keeps_hits(root, tmp_path, build, ls, write_context):
    context = write_context(tmp_path / "ctx", {"Dockerfile": DOCKERFILE, "data": "d\n"})
    assert build(root, context)["run"] == 3
    before = {entry["key"]: entry for entry in ls(root)}
    assert all(entry["has_inputs"] for entry in before.values())
    _downgrade_to_schema_2(root / "index.db")
    assert _db_rows(root)[0] == 2

    finished = build(root, context)
    assert (finished["cached"], finished["run"]) == (3, 0)
    after = {entry["key"]: entry for entry in ls(root)}
    assert _db_rows(root)[0] == SCHEMA_VERSION
    assert set(after) == set(before)
    for key, entry in after.items():
        assert entry["hits"] == 1
        assert entry["layer_digest"] == before[key]["layer_digest"]
        # the inputs went with the downgrade; the hit recorded them again, the same
        assert entry["has_inputs"] and entry["line"] == before[key]["line"]


def _downgrade_to_schema_2(path: Path) -> None:
    """The index as schema 2 had it: the cache table without version 3's columns, no file lists."""
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE cache RENAME TO cache_v3")
        db.execute(SCHEMA_2_CACHE)
        db.execute(f"INSERT INTO cache ({SCHEMA_2_COLUMNS}) SELECT {SCHEMA_2_COLUMNS} FROM cache_v3")
        db.execute("DROP TABLE cache_v3")
        db.execute("DROP TABLE file_lists")
        db.execute("DROP TABLE cache_file_lists")
        db.execute("PRAGMA user_version = 2")

"""The queries every explained miss makes read an index, not the whole cache table.

A store keeps thousands of cache entries after a few weeks of edit-and-rebuild;
``cache/explain.py`` looks up a missed step's earlier entries (by where the step
stood, most recently used first) and the entries chaining from a key. SQLite's
own query plan for the statements ``IndexDB`` runs must name an index, in a
new store and in one a version-6 imgbuild made (which had none).
"""

from __future__ import annotations

import sqlite3

from imgbuild.store import Store
from imgbuild.store.index_db import SCHEMA_VERSION


def _plans_of(db, ask) -> list[str]:
    """SQLite's query plan of each statement ``ask()`` runs on ``db``."""
    statements: list[str] = []
    conn = db.connection()
    conn.set_trace_callback(statements.append)  # the statements with their values filled in
    try:
        ask()
    finally:
        conn.set_trace_callback(None)
    return [" ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)) for sql in statements]


def _assert_indexed(store: Store) -> None:
    earlier = _plans_of(
        store.db,
        lambda: store.db.cache_entries_of_step(
            "Dockerfile", 0, parent_entry="sha256:" + "a" * 64, dockerfile_path="/src/Dockerfile", limit=9
        ),
    )
    assert len(earlier) == 1 and "USING INDEX cache_by_place" in earlier[0], earlier
    assert "SCAN cache" not in earlier[0], earlier
    children = _plans_of(store.db, lambda: store.db.cache_child_without_inputs("sha256:" + "b" * 64, "k"))
    assert len(children) == 1 and "USING INDEX cache_by_parent_key" in children[0], children


def test_a_new_store_answers_a_miss_explanation_from_indexes(store_root):
    _assert_indexed(Store(store_root))


def test_a_version_6_store_gets_the_indexes_on_open(store_root):
    Store(store_root).db.close()
    with sqlite3.connect(store_root / "index.db") as db:
        db.execute("DROP INDEX cache_by_place")
        db.execute("DROP INDEX cache_by_parent_key")
        db.execute("PRAGMA user_version = 6")
    store = Store(store_root)
    assert store.db.schema_version() == SCHEMA_VERSION == 7
    _assert_indexed(store)

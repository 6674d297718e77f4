"""The store's SQLite index: layers, snapshots and build-cache keys.

The blobs on disk are the truth; this index only says how they relate (which
blob holds which diff_id, which snapshot directory holds which layer, which
cache key produced which layer). Stdlib ``sqlite3`` in WAL mode, so readers
never block the one writer, and a busy timeout so parallel imgbuild processes
wait for each other instead of failing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from imgbuild.errors import DiskFull, disk_full

# 1: snapshots keyed by diff_id. 2: snapshots keyed by chain ID (see
# imgbuild.image.chain_ids); Store upgrades a version-1 database on open.
# 3: every cache entry keeps the inputs of its key and where its step stood
# (the ``cache`` columns below ``hits``, and ``file_lists``); a version-2
# database gets the columns on open (its entries keep working, with no inputs).
# 4: ``selection_digests`` (remembered context digests). A database already at
# this version is opened without running the schema script again.
# 5: ``build_records`` (fully cached builds, imgbuild.builder.record); the
# schema script adds the table to a version-4 database.
# 6: ``snapshots.disk_bytes``, each snapshot's size on disk, measured once (a
# snapshot never changes); an older database gets the column on open.
# 7: indexes of ``cache`` by where a step stood and by parent key, which every
# explained miss queries (``cache/explain.py``); the schema script adds them.
SCHEMA_VERSION = 7

# Columns version 3 added to ``cache``, with their types, for the migration.
CACHE_COLUMNS_V3 = (
    ("inputs", "TEXT"),
    ("parent_entry", "TEXT"),
    ("base_digest", "TEXT"),
    ("dockerfile", "TEXT"),
    ("stage_index", "INTEGER"),
    ("stage_name", "TEXT"),
    ("line", "INTEGER"),
    ("instruction", "TEXT"),
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS layers (
    digest      TEXT PRIMARY KEY,   -- blob digest (compressed bytes)
    diff_id     TEXT NOT NULL,      -- digest of the uncompressed tar
    media_type  TEXT NOT NULL,
    size        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS layers_by_diff_id ON layers(diff_id);

CREATE TABLE IF NOT EXISTS snapshots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- short, so overlay option strings stay short
    chain_id    TEXT NOT NULL UNIQUE,  -- the layer and every layer below it
    diff_id     TEXT NOT NULL,         -- the layer the directory holds
    created     REAL NOT NULL,
    last_used   REAL NOT NULL,
    disk_bytes  INTEGER            -- du of the directory, NULL until first measured
);
CREATE INDEX IF NOT EXISTS snapshots_by_diff_id ON snapshots(diff_id);

CREATE TABLE IF NOT EXISTS cache (
    key         TEXT PRIMARY KEY,   -- the step's cache key (docs/build.md, "The cache key")
    parent_key  TEXT,               -- the key of the step before it
    diff_id     TEXT,               -- the layer it produced, NULL for no layer
    layer_digest TEXT,
    layer_media_type TEXT,
    layer_size  INTEGER NOT NULL DEFAULT 0,
    created_by  TEXT NOT NULL,      -- the instruction, as `docker history` shows it
    created     REAL NOT NULL,
    last_used   REAL NOT NULL,
    hits        INTEGER NOT NULL DEFAULT 0,
    -- version 3: what the key was computed from, and where the step stood
    inputs      TEXT,               -- JSON: the key's document and parent (docs/cache.md)
    parent_entry TEXT,              -- the cache entry of the layer step before it
    base_digest TEXT,               -- the stage's base image ("scratch" for none)
    dockerfile  TEXT,
    stage_index INTEGER,
    stage_name  TEXT,
    line        INTEGER,            -- of the instruction in the Dockerfile
    instruction TEXT                -- as written
);
-- version 7: a step's earlier entries, most recently used first, without
-- reading every entry (cache/explain.py, whenever a step misses: a store
-- keeps thousands); and the entries that chain from a key.
CREATE INDEX IF NOT EXISTS cache_by_place ON cache(dockerfile, stage_index, parent_entry, last_used);
CREATE INDEX IF NOT EXISTS cache_by_parent_key ON cache(parent_key);

-- version 3: the files a COPY/ADD/bind-mount source digest covered, stored
-- once per digest however many entries name it (zlib-compressed JSON).
CREATE TABLE IF NOT EXISTS file_lists (
    digest      TEXT PRIMARY KEY,   -- the selection digest in the key's document
    files       BLOB NOT NULL
);
-- which entries name which file list, so a list goes with its last entry
CREATE TABLE IF NOT EXISTS cache_file_lists (
    key         TEXT NOT NULL,
    digest      TEXT NOT NULL,
    PRIMARY KEY (key, digest)
);
CREATE INDEX IF NOT EXISTS cache_file_lists_by_digest ON cache_file_lists(digest);

-- Content digests of build-context files, remembered by stat identity
-- (imgbuild.context.statcache).
CREATE TABLE IF NOT EXISTS statcache (
    path        TEXT PRIMARY KEY,
    dev         INTEGER NOT NULL,
    ino         INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    ctime_ns    INTEGER NOT NULL,
    sha256      TEXT NOT NULL
);

-- Selection digests of build contexts, remembered under a fingerprint of
-- every selected entry's lstat (imgbuild.context.digest.RememberedSelection).
CREATE TABLE IF NOT EXISTS selection_digests (
    key         TEXT PRIMARY KEY,   -- the context root, its ignore patterns, the items selected
    root        TEXT NOT NULL,      -- the context root, for sweeping
    fingerprint TEXT NOT NULL,
    digest      TEXT NOT NULL
);

-- version 5: what a build from the CLI gave, under a digest of everything that
-- decides it, so a fully cached rebuild needs no builder (imgbuild.builder.record).
CREATE TABLE IF NOT EXISTS build_records (
    key         TEXT PRIMARY KEY,
    record      TEXT NOT NULL,      -- JSON
    used        REAL NOT NULL
);

-- Registry repositories known to hold a blob, for cross-repository mounts
-- on push (imgbuild.registry.sources).
CREATE TABLE IF NOT EXISTS blob_sources (
    digest      TEXT NOT NULL,
    registry    TEXT NOT NULL,   -- as in references: "docker.io", "127.0.0.1:5000"
    repository  TEXT NOT NULL,   -- "library/busybox"
    last_seen   REAL NOT NULL,
    PRIMARY KEY (digest, registry, repository)
);
"""


class IndexDB:
    """One SQLite connection per thread over the store's ``index.db``."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        # executescript commits on its own; CREATE ... IF NOT EXISTS makes it
        # safe for two processes opening a new store at once.
        with full_disk_is_an_error(path, "opening the store's index"):
            conn = self.connection()
            if self.schema_version() == SCHEMA_VERSION:
                return  # every table and column is there: a cached build opens the index cheaply
            self._add_missing_cache_columns()
            self._add_snapshot_size_column()
            conn.executescript(SCHEMA)
            if not self.has_legacy_snapshots():
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with full_disk_is_an_error(self.path, "opening the store's index"):
                conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                _enable_wal(conn)
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def transaction(self):
        return _Transaction(self.connection(), self.path)

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with full_disk_is_an_error(self.path, "reading the store's index"):
            return self.connection().execute(sql, params).fetchall()

    def execute(self, sql: str, params: tuple = ()) -> None:
        with self.transaction() as conn:
            conn.execute(sql, params)

    def schema_version(self) -> int:
        return self.query("PRAGMA user_version")[0][0]

    def _add_missing_cache_columns(self) -> None:
        """Version 2 to 3: give an existing ``cache`` table the columns of version 3.

        In one write transaction that looks again, so two processes opening an
        old store at once add each column once. Rows keep their keys and layers
        (still hits); their new columns stay NULL until a build records them.
        """
        if not self._missing_cache_columns(self.connection()):
            return
        with self.transaction() as conn:
            for name, kind in self._missing_cache_columns(conn):
                conn.execute(f"ALTER TABLE cache ADD COLUMN {name} {kind}")

    @staticmethod
    def _missing_cache_columns(conn: sqlite3.Connection) -> list[tuple[str, str]]:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(cache)")}
        if not columns:
            return []  # a new store: SCHEMA creates the table whole
        return [(name, kind) for name, kind in CACHE_COLUMNS_V3 if name not in columns]

    def _add_snapshot_size_column(self) -> None:
        """Version 4 to 5: ``snapshots.disk_bytes``, NULL until each snapshot is measured."""
        if not self._needs_snapshot_size_column(self.connection()):
            return
        with self.transaction() as conn:
            if self._needs_snapshot_size_column(conn):
                conn.execute("ALTER TABLE snapshots ADD COLUMN disk_bytes INTEGER")

    @staticmethod
    def _needs_snapshot_size_column(conn: sqlite3.Connection) -> bool:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(snapshots)")}
        # No table: SCHEMA makes it whole. No chain_id: version 1, whose table
        # is dropped and made again by drop_legacy_snapshots.
        return "chain_id" in columns and "disk_bytes" not in columns

    def has_legacy_snapshots(self) -> bool:
        """True for a version-1 database: its snapshots table is keyed by diff_id."""
        columns = {row["name"] for row in self.query("PRAGMA table_info(snapshots)")}
        return "chain_id" not in columns

    def drop_legacy_snapshots(self, move_directory) -> list[int]:
        """Upgrade a version-1 ``snapshots`` table; returns the ids of its rows.

        A diff_id-keyed snapshot is right only at the bottom of a stack, and the
        table cannot tell where each was used, so the rows go and the layers are
        extracted again on first use. ``move_directory(id)`` is called for each
        row before the table is replaced (the caller holds the store lock).
        Also forgets layer rows whose diff_id nothing verified: version 1
        recorded the diff_ids a pulled config claimed; only layers built here
        (referenced by the build cache) were written by us.
        """
        with self.transaction() as conn:
            columns = {row["name"] for row in conn.execute("PRAGMA table_info(snapshots)")}
            if "chain_id" in columns:
                return []  # another process upgraded it first
            ids = [row["id"] for row in conn.execute("SELECT id FROM snapshots")]
            for snapshot_id in ids:
                move_directory(snapshot_id)
            conn.execute("DROP TABLE snapshots")
            conn.execute(
                "DELETE FROM layers WHERE digest NOT IN"
                " (SELECT layer_digest FROM cache WHERE layer_digest IS NOT NULL)"
            )
        self.connection().executescript(SCHEMA)
        self.connection().execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return ids

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # --- layers: which blob holds which diff_id ---------------------------------

    def record_layer(self, digest: str, diff_id: str, media_type: str, size: int) -> None:
        self.execute(
            "INSERT OR REPLACE INTO layers(digest, diff_id, media_type, size) VALUES (?,?,?,?)",
            (digest, diff_id, media_type, size),
        )

    def blobs_of(self, diff_id: str) -> list[sqlite3.Row]:
        """Rows (digest, media_type, size) of the blobs whose content is ``diff_id``."""
        return self.query("SELECT digest, media_type, size FROM layers WHERE diff_id=?", (diff_id,))

    def forget_layers(self, digests: list[str]) -> None:
        with self.transaction() as conn:
            conn.executemany("DELETE FROM layers WHERE digest=?", [(digest,) for digest in digests])

    # --- snapshots: which directory holds which stack of layers --------------------

    def snapshot_id(self, chain_id: str) -> int | None:
        rows = self.query("SELECT id FROM snapshots WHERE chain_id=?", (chain_id,))
        return rows[0]["id"] if rows else None

    def add_snapshot_row(self, chain_id: str, diff_id: str) -> int:
        """A new row for ``chain_id`` (replacing one whose directory is gone); its id."""
        now = time.time()
        with self.transaction() as conn:
            conn.execute("DELETE FROM snapshots WHERE chain_id=?", (chain_id,))
            cursor = conn.execute(
                "INSERT INTO snapshots(chain_id, diff_id, created, last_used) VALUES (?,?,?,?)",
                (chain_id, diff_id, now, now),
            )
            return cursor.lastrowid

    def touch_snapshot(self, chain_id: str) -> None:
        self.execute("UPDATE snapshots SET last_used=? WHERE chain_id=?", (time.time(), chain_id))

    def snapshot_rows(self) -> list[sqlite3.Row]:
        """Rows (id, chain_id, diff_id, created, last_used, disk_bytes) of every snapshot."""
        return self.query("SELECT id, chain_id, diff_id, created, last_used, disk_bytes FROM snapshots")

    def record_snapshot_sizes(self, sizes: dict[int, int]) -> None:
        """Keep each snapshot's measured size on disk (``disk_bytes``), once."""
        if sizes:
            with self.transaction() as conn:
                conn.executemany(
                    "UPDATE snapshots SET disk_bytes = ? WHERE id = ? AND disk_bytes IS NULL",
                    [(size, snapshot_id) for snapshot_id, size in sizes.items()],
                )

    def delete_snapshot_row(self, snapshot_id: int) -> None:
        self.execute("DELETE FROM snapshots WHERE id=?", (snapshot_id,))

    def snapshot_blobs(self) -> set[str]:
        """Digests of the blobs whose layer some snapshot holds."""
        rows = self.query("SELECT layers.digest FROM layers JOIN snapshots ON snapshots.diff_id = layers.diff_id")
        return {row["digest"] for row in rows}

    # --- the build cache: which layer each step key stands for ----------------------

    def cache_entry(self, key: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM cache WHERE key=?", (key,))
        return rows[0] if rows else None

    def count_cache_hit(self, key: str) -> None:
        self.execute("UPDATE cache SET hits = hits + 1, last_used = ? WHERE key = ?", (time.time(), key))

    def cache_layers(self, keys: list[str]) -> dict[str, tuple[str | None, float, bool]]:
        """key -> (layer digest, created, whether it keeps its inputs) of the entries among ``keys`` that exist."""
        found = {}
        for start in range(0, len(keys), 500):  # SQLite's limit on bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.query(
                f"SELECT key, layer_digest, created, inputs IS NOT NULL FROM cache WHERE key IN ({marks})", tuple(chunk)
            )
            for row in rows:
                found[row[0]] = (row[1], row[2], bool(row[3]))
        return found

    def record_cache_entry(self, entry: dict, *, keep_existing) -> sqlite3.Row | None:
        """Record ``entry`` (the ``cache`` columns but the times and hits) unless
        ``keep_existing(row)`` says the row already there for its key stands;
        returns that row, or None when ``entry`` was recorded. One transaction,
        so of two processes recording one key, the first wins."""
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM cache WHERE key=?", (entry["key"],)).fetchone()
            if row is not None and keep_existing(row):
                return row
            now = time.time()
            created = entry.get("created") or now  # an imported entry keeps its exporter's time
            conn.execute(
                "INSERT OR REPLACE INTO cache(key, parent_key, diff_id, layer_digest, layer_media_type,"
                " layer_size, created_by, created, last_used, hits) VALUES (?,?,?,?,?,?,?,?,?,0)",
                (
                    entry["key"],
                    entry["parent_key"],
                    entry["diff_id"],
                    entry["layer_digest"],
                    entry["layer_media_type"],
                    entry["layer_size"],
                    entry["created_by"],
                    created,
                    now,
                ),
            )
            return None

    def record_cache_inputs(self, key: str, step: dict, inputs: dict, file_lists: dict[str, dict]) -> None:
        """Keep what ``key`` was computed from (``inputs``, JSON with sorted keys),
        where its step stood (``step``: parent_entry, base_digest, dockerfile,
        stage_index, stage_name, line, instruction) and the file lists its
        source digests covered, each stored once."""
        # default=str as for the keys themselves (cache.keys.cache_key); ASCII
        # escapes keep names that are not UTF-8 (surrogates) storable as TEXT.
        text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
        with self.transaction() as conn:
            conn.execute(
                "UPDATE cache SET inputs=?, parent_entry=?, base_digest=?, dockerfile=?, stage_index=?,"
                " stage_name=?, line=?, instruction=? WHERE key=?",
                (
                    text,
                    step.get("parent_entry"),
                    step.get("base_digest"),
                    step.get("dockerfile"),
                    step.get("stage_index"),
                    step.get("stage_name"),
                    step.get("line"),
                    step.get("instruction"),
                    key,
                ),
            )
            for digest, listing in file_lists.items():
                packed = zlib.compress(json.dumps(listing, sort_keys=True, separators=(",", ":")).encode())
                conn.execute("INSERT OR IGNORE INTO file_lists(digest, files) VALUES (?,?)", (digest, packed))
                conn.execute("INSERT OR IGNORE INTO cache_file_lists(key, digest) VALUES (?,?)", (key, digest))

    def cache_has_inputs(self, key: str) -> bool:
        rows = self.query("SELECT inputs IS NOT NULL AS known FROM cache WHERE key=?", (key,))
        return bool(rows and rows[0]["known"])

    def cache_rows(self) -> list[sqlite3.Row]:
        """Every cache entry (all columns but ``inputs``), oldest first."""
        return self.query(
            "SELECT key, parent_key, diff_id, layer_digest, layer_media_type, layer_size, created_by, created,"
            " last_used, hits, parent_entry, base_digest, dockerfile, stage_index, stage_name, line, instruction,"
            " inputs IS NOT NULL AS has_inputs FROM cache ORDER BY created, key"
        )

    def cache_keys_with_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        """Up to ``limit`` keys starting with ``prefix`` (``sha256:`` optional)."""
        if not prefix.startswith("sha256:"):
            prefix = "sha256:" + prefix
        # GLOB, not LIKE: case-sensitive, and a key holds no glob characters.
        if any(c in prefix for c in "*?[]"):
            return []
        rows = self.query("SELECT key FROM cache WHERE key GLOB ? ORDER BY key LIMIT ?", (prefix + "*", limit))
        return [row["key"] for row in rows]

    def cache_inputs(self, key: str) -> dict | None:
        """The recorded inputs of ``key``, or None (an entry from before version 3)."""
        rows = self.query("SELECT inputs FROM cache WHERE key=?", (key,))
        if not rows or rows[0]["inputs"] is None:
            return None
        return json.loads(rows[0]["inputs"])

    def cache_entries_of_step(
        self,
        dockerfile: str,
        stage_index: int,
        *,
        parent_entry: str | None = None,
        line: int | None = None,
        dockerfile_path: str | None = None,
        limit: int = 50,
    ) -> list[sqlite3.Row]:
        """Entries with inputs recorded for a step of ``dockerfile``'s stage
        ``stage_index`` on top of ``parent_entry`` (or, without it, at ``line``),
        and if given, from the Dockerfile at ``dockerfile_path`` (recorded in the
        inputs); most recently used first (``cache/explain.py``)."""
        where, value = ("parent_entry", parent_entry) if parent_entry is not None else ("line", line)
        params: tuple = (dockerfile, stage_index, value)
        path_clause = ""
        if dockerfile_path is not None:
            path_clause = " AND json_extract(inputs, '$.dockerfile_path') = ?"
            params += (dockerfile_path,)
        return self.query(
            "SELECT key, parent_entry, base_digest, line, instruction, inputs FROM cache"
            f" WHERE dockerfile=? AND stage_index=? AND {where}=? AND inputs IS NOT NULL{path_clause}"
            " ORDER BY last_used DESC, created DESC, key LIMIT ?",
            params + (limit,),
        )

    def cache_child_without_inputs(self, parent_key: str, key: str) -> bool:
        """Whether an entry other than ``key`` chains from ``parent_key`` and kept no inputs."""
        rows = self.query(
            "SELECT 1 FROM cache WHERE parent_key=? AND key<>? AND inputs IS NULL LIMIT 1", (parent_key, key)
        )
        return bool(rows)

    def file_list(self, digest: str) -> dict | None:
        """The files a source digest covered, as recorded, or None."""
        rows = self.query("SELECT files FROM file_lists WHERE digest=?", (digest,))
        if not rows:
            return None
        return json.loads(zlib.decompress(rows[0]["files"]))

    @staticmethod
    def _forget_unused_file_lists(conn: sqlite3.Connection) -> None:
        """In a write transaction, after entries went: the file lists no entry names."""
        conn.execute("DELETE FROM cache_file_lists WHERE key NOT IN (SELECT key FROM cache)")
        conn.execute("DELETE FROM file_lists WHERE digest NOT IN (SELECT digest FROM cache_file_lists)")

    def cache_layer_rows(self) -> list[sqlite3.Row]:
        """Rows (key, layer_digest) of every cache entry that made a layer."""
        return self.query("SELECT key, layer_digest FROM cache WHERE layer_digest IS NOT NULL")

    def delete_cache_entry(self, key: str) -> None:
        self.delete_cache_entries([key])

    # --- the stat cache of build contexts ---------------------------------------------

    def statcache_rows(self, low: str, high: str) -> list[sqlite3.Row]:
        """Rows (path, dev, ino, size, mtime_ns, ctime_ns, sha256) with ``low <= path < high``."""
        return self.query(
            "SELECT path, dev, ino, size, mtime_ns, ctime_ns, sha256 FROM statcache WHERE path >= ? AND path < ?",
            (low, high),
        )

    def statcache_row(self, path: str) -> sqlite3.Row | None:
        rows = self.query(
            "SELECT path, dev, ino, size, mtime_ns, ctime_ns, sha256 FROM statcache WHERE path = ?", (path,)
        )
        return rows[0] if rows else None

    def write_statcache(self, rows: list[tuple], selections: list[tuple] = ()) -> None:
        """Stat-cache rows and remembered selections ((key, root, fingerprint, digest)), in one transaction."""
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO statcache (path, dev, ino, size, mtime_ns, ctime_ns, sha256)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.executemany(
                "INSERT OR REPLACE INTO selection_digests (key, root, fingerprint, digest) VALUES (?, ?, ?, ?)",
                selections,
            )

    def selection_digest(self, key: str) -> tuple[str, str] | None:
        """(fingerprint, digest) remembered for a selection key, or None."""
        rows = self.query("SELECT fingerprint, digest FROM selection_digests WHERE key = ?", (key,))
        return (rows[0][0], rows[0][1]) if rows else None

    # --- build records (imgbuild.builder.record) ------------------------------------

    def build_record(self, key: str) -> str | None:
        rows = self.query("SELECT record FROM build_records WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def write_build_record(self, key: str, record: str, keep: int) -> None:
        """Keep ``record`` under ``key``, and only the ``keep`` last used records."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO build_records (key, record, used) VALUES (?, ?, ?)", (key, record, time.time())
            )
            conn.execute(
                "DELETE FROM build_records WHERE key NOT IN (SELECT key FROM build_records ORDER BY used DESC LIMIT ?)",
                (keep,),
            )

    def count_build_record_hit(self, key: str, cache_keys: list[str]) -> None:
        """A build taken from the record ``key``: the record and the cache entries
        it stands for are used now (as each lookup of a cached step counts it), in one transaction."""
        now = time.time()
        with self.transaction() as conn:
            conn.execute("UPDATE build_records SET used = ? WHERE key = ?", (now, key))
            conn.executemany(
                "UPDATE cache SET hits = hits + 1, last_used = ? WHERE key = ?", [(now, k) for k in cache_keys]
            )

    def selection_roots(self) -> list[str]:
        return [row[0] for row in self.query("SELECT DISTINCT root FROM selection_digests")]

    def delete_selections_of(self, roots: list[str]) -> None:
        with self.transaction() as conn:
            conn.executemany("DELETE FROM selection_digests WHERE root=?", [(root,) for root in roots])

    # --- where blobs came from, for cross-repository mounts ---------------------------

    def record_blob_sources(self, registry: str, repository: str, digests: set[str]) -> None:
        now = time.time()
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO blob_sources(digest, registry, repository, last_seen) VALUES (?,?,?,?)",
                [(digest, registry, repository, now) for digest in digests],
            )

    def blob_source_repositories(self, registry: str, digest: str, exclude: str, limit: int) -> list[str]:
        """Repositories of ``registry`` other than ``exclude`` known to hold ``digest``, newest first."""
        rows = self.query(
            "SELECT repository FROM blob_sources WHERE digest=? AND registry=? AND repository<>? "
            "ORDER BY last_seen DESC LIMIT ?",
            (digest, registry, exclude, limit),
        )
        return [row["repository"] for row in rows]

    # --- pruning ------------------------------------------------------------------------

    def cache_rows_lru(self) -> list[sqlite3.Row]:
        """Rows (key, diff_id, layer_digest, created_by, created, last_used, hits) of
        every cache entry, least recently used first."""
        return self.query(
            "SELECT key, diff_id, layer_digest, created_by, created, last_used, hits FROM cache"
            " ORDER BY last_used, created, key"
        )

    def layer_diff_ids(self) -> dict[str, str]:
        """Blob digest -> diff_id for every layer blob the index knows."""
        return {row["digest"]: row["diff_id"] for row in self.query("SELECT digest, diff_id FROM layers")}

    def delete_cache_entries(self, keys: list[str]) -> None:
        """Delete entries, and the file lists only they named."""
        with self.transaction() as conn:
            conn.executemany("DELETE FROM cache WHERE key=?", [(key,) for key in keys])
            self._forget_unused_file_lists(conn)

    def statcache_identities(self) -> list[sqlite3.Row]:
        """Rows (path, dev, ino, size, mtime_ns, ctime_ns) of the whole stat cache."""
        return self.query("SELECT path, dev, ino, size, mtime_ns, ctime_ns FROM statcache")

    def delete_statcache_rows(self, paths: list[str]) -> None:
        with self.transaction() as conn:
            conn.executemany("DELETE FROM statcache WHERE path=?", [(path,) for path in paths])

    # --- checks -------------------------------------------------------------------------

    def quick_check(self) -> list[str]:
        """SQLite's own consistency check: its messages, or ["ok"]."""
        return [row[0] for row in self.query("PRAGMA quick_check")]


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: take the write lock up front, so two
    processes never deadlock upgrading a read lock."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        with full_disk_is_an_error(self.path, "writing the store's index"):
            self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        with full_disk_is_an_error(self.path, "writing the store's index"):
            if exc_type is None:
                self.conn.execute("COMMIT")
                return
            self.conn.execute("ROLLBACK")
        full = _as_disk_full(exc, self.path, "writing the store's index")
        if full is not None:
            raise full from None


@contextlib.contextmanager
def full_disk_is_an_error(path: Path, doing: str) -> Iterator[None]:
    """Turn SQLite's answer to a full disk into DiskFull; other errors pass unchanged."""
    try:
        yield
    except sqlite3.Error as error:
        full = _as_disk_full(error, path, doing)
        if full is None:
            raise
        raise full from None


def _as_disk_full(error: BaseException | None, path: Path, doing: str) -> DiskFull | None:
    """SQLITE_FULL, or an I/O error (such as SQLITE_IOERR_SHMSIZE, growing the WAL
    index) on a file system with no space left, is a full disk."""
    if not isinstance(error, sqlite3.Error):
        return None
    name = getattr(error, "sqlite_errorname", "") or ""
    if name == "SQLITE_FULL" or (name.startswith("SQLITE_IOERR") and _no_space(path)):
        hint = (
            "Free some space on that filesystem (imgbuild needs a little to open its index; "
            "then `imgbuild rmi` can remove images you no longer need)"
        )
        return disk_full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), doing, Path(path).parent, hint)
    return None


def _no_space(path: Path) -> bool:
    try:
        info = os.statvfs(Path(path).parent)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < (1 << 20)


def _enable_wal(conn: sqlite3.Connection, deadline_seconds: float = 60.0) -> None:
    """Switch to WAL, waiting for other processes that open the same new store.

    SQLite answers a journal-mode change that meets another connection's lock
    with "database is locked" at once, without its busy timeout, so two
    processes opening a new store together need this retry (bounded).
    """
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)

"""Helpers for the du and prune tests: real builds through the CLI, and the
store measured by GNU du (not by the code under test)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path

from imagetools import make_busybox_image
from load.loadtools import cli_command, cli_env

from imgbuild.store import Store


def cli(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``imgbuild --root ROOT ARGS...``; fails the test on a non-zero exit."""
    done = subprocess.run(
        cli_command(root, *args), capture_output=True, text=True, env={**cli_env(), **(env or {})}, timeout=300
    )
    assert done.returncode == 0, f"imgbuild {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def cli_json(root: Path, *args: str) -> dict:
    return json.loads(cli(root, *args, "--format", "json").stdout)


def new_store(root: Path) -> Store:
    store = Store(root)
    make_busybox_image(store, "busybox:latest")
    return store


def build(root: Path, context: Path, dockerfile: str, *args: str, env: dict | None = None) -> tuple[int, int]:
    """Build ``dockerfile`` in ``context``; returns (steps cached, steps run)."""
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    done = cli(root, "build", "--progress", "plain", *args, str(context), env=env)
    match = re.search(r"steps: (\d+) cached, (\d+) run", done.stdout + done.stderr)
    assert match, done.stdout + done.stderr
    return int(match.group(1)), int(match.group(2))


def big_run(name: str, kib: int) -> str:
    """A RUN step whose layer holds ``kib`` KiB of random bytes (so no two builds share it)."""
    return f"RUN head -c {kib * 1024} /dev/urandom > /{name}\n"


def measured_bytes(root: Path) -> int:
    """What blobs and snapshots take on disk, as ``du -s -c -B1`` counts it."""
    entries = [str(p) for p in (root / "oci" / "blobs" / "sha256").iterdir()]
    entries += [str(p) for p in (root / "snapshots").iterdir()]
    if not entries:
        return 0
    done = subprocess.run(["du", "-s", "-c", "-B1", *entries], capture_output=True, text=True, check=True)
    return int(done.stdout.splitlines()[-1].split()[0])


def rows(root: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(root / "index.db")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def entries_by_instruction(root: Path) -> dict[str, str]:
    """created_by -> key of every cache entry."""
    return {created_by: key for key, created_by in rows(root, "SELECT key, created_by FROM cache")}


def fsck_clean(root: Path) -> None:
    done = subprocess.run(cli_command(root, "fsck"), capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

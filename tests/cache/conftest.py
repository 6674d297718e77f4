"""Fixtures for the build-cache tests: root and runc, the session's own dockerd
(tests/dockertools.py), a store with busybox, and the CLI (prune's are in prunetools.py).

The inspection tests read the store's real state the way a script would:
through ``imgbuild --root R cache ... --format json`` after real builds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dockertools import running_dockerd
from imagetools import make_busybox_image, require_root_and_runc

from imgbuild.store import Store

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _needs_root_and_runc():
    require_root_and_runc("overlay mounts, runc, dockerd")


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory):
    with running_dockerd(tmp_path_factory.mktemp("dockerd")) as docker:
        yield docker


@pytest.fixture
def root(store_root) -> Path:
    """A fresh store with busybox:latest."""
    make_busybox_image(Store(store_root), "busybox:latest")
    return store_root


def run_cli(root: Path, *args: str, pythonpath: Path = PROJECT, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m imgbuild --root ROOT ARGS`` with imgbuild from ``pythonpath``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(pythonpath)
    env.pop("CI", None)
    completed = subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=str(pythonpath),
    )
    if check and completed.returncode != 0:
        raise AssertionError(f"imgbuild {' '.join(args)} failed ({completed.returncode}):\n{completed.stderr}")
    return completed


def build(root: Path, context: Path, *args: str, pythonpath: Path = PROJECT) -> dict:
    """Build ``context``; the steps as the JSON progress reports them: {"cached": n, "run": n}."""
    completed = run_cli(root, "build", "--progress", "json", *args, str(context), pythonpath=pythonpath)
    events = [json.loads(line) for line in completed.stdout.splitlines() + completed.stderr.splitlines()
              if line.startswith("{")]
    finished = [e for e in events if e.get("event") == "build_finished"]
    assert finished, completed.stderr
    return finished[-1]


def cache_ls(root: Path, *args: str) -> list[dict]:
    completed = run_cli(root, "cache", "ls", "--format", "json", *args)
    return [json.loads(line) for line in completed.stdout.splitlines()]


def cache_inspect(root: Path, key: str) -> dict:
    return json.loads(run_cli(root, "cache", "inspect", "--format", "json", key).stdout)


def cache_tree(root: Path, *args: str) -> list[dict]:
    return json.loads(run_cli(root, "cache", "tree", "--format", "json", *args).stdout)


def write_context(directory: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return directory


@pytest.fixture(name="cli", scope="session")
def _cli():
    return run_cli


@pytest.fixture(name="build", scope="session")
def _build():
    return build


@pytest.fixture(name="ls", scope="session")
def _ls():
    return cache_ls


@pytest.fixture(name="inspect_key", scope="session")
def _inspect():
    return cache_inspect


@pytest.fixture(name="tree", scope="session")
def _tree():
    return cache_tree


@pytest.fixture(name="write_context", scope="session")
def _write_context():
    return write_context

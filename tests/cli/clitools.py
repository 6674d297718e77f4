"""Helpers for the CLI tests that build: a store with busybox, the CLI as a subprocess.

Builds need root and runc (overlay mounts); the CLI runs as users run it,
``python3 -m imgbuild --root ROOT ...``, so exit codes, stdout and stderr are
the real ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]

# ``python -c MODULE_RECORDER OUT ARGS...``: runs imgbuild's __main__ with ARGS
# and writes the names of every module loaded by its exit to OUT, one a line.
MODULE_RECORDER = """\
import atexit, runpy, sys
out = sys.argv[1]
def record():
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
atexit.register(record)
sys.argv = ["imgbuild", *sys.argv[2:]]
runpy.run_module("imgbuild", run_name="__main__")
"""


def cli_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CI", None)
    env.update(extra or {})
    return env


def imgbuild(root: Path, *args: str, input=None, env: dict | None = None, cwd=PROJECT, timeout=120):
    """``python3 -m imgbuild --root ROOT ARGS``; a CompletedProcess with text output
    (``input`` may be text or bytes: a context tar on stdin)."""
    completed = subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(root), *args],
        input=input.encode() if isinstance(input, str) else input,
        capture_output=True,
        env=cli_env(env),
        timeout=timeout,
        cwd=str(cwd),
    )
    completed.stdout = completed.stdout.decode("utf-8", "replace")
    completed.stderr = completed.stderr.decode("utf-8", "replace")
    return completed


def start_imgbuild(root: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """The CLI in the background, in its own session, output piped (for signal tests)."""
    return subprocess.Popen(
        [sys.executable, "-m", "imgbuild", "--root", str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(env),
        cwd=str(PROJECT),
        start_new_session=True,
    )


def write_context(directory: Path, dockerfile: str, files: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in {"Dockerfile": dockerfile, **(files or {})}.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return directory

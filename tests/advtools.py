"""Helpers for the adversarial cases: the sentinel tree, the tally, running the CLI.

Hostile inputs, tried for real: each case ends refused (a clear error) or contained.

A *sentinel tree* on the host (files, a directory, a symlink and a setuid file,
outside every context and store) is hashed before and after each case; a change
is an escape. Marker bytes in the sentinel files must never turn up in an image.
The store most cases use is shared by the session; at the end ``fsck`` must pass
on it and every image tagged in it must still be there, or data was lost.

The counts are printed as one line at the end of the run (``pytest_terminal_summary``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import resource
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from imgbuild.store import Store

PROJECT = Path(__file__).resolve().parents[2]
MARKER = b"HOST-SENTINEL-7f3a9c"  # in every sentinel file; never in an image
CLI_MEMORY = 1 << 30  # RLIMIT_AS for a CLI case: a runaway fails, it does not swap


@dataclass
class Tally:
    """The adversarial cases: each one tried ends refused or contained (once,
    however many builds it makes), and any escape or loss is named."""

    tried: int = 0
    refused: int = 0
    contained: int = 0
    escapes: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    outcome: str | None = None  # of the case running now; None outside a case

    def mark(self, outcome: str) -> None:
        """The running case was refused or contained; a refusal anywhere in a case wins."""
        if self.outcome != "refused":
            self.outcome = outcome


TALLY = Tally()


# --- the sentinel tree --------------------------------------------------------------


@dataclass(frozen=True)
class Sentinel:
    path: Path

    def digest(self) -> str:
        """Names, kinds, modes, owners, contents and link targets, not times."""
        h = hashlib.sha256()
        for directory, dirs, files in os.walk(self.path):
            dirs.sort()
            for name in sorted(dirs + files):
                full = os.path.join(directory, name)
                st = os.lstat(full)
                h.update(f"{os.path.relpath(full, self.path)}|{st.st_mode:o}|{st.st_uid}|{st.st_gid}|".encode())
                if stat.S_ISLNK(st.st_mode):
                    h.update(os.readlink(full).encode())
                elif stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as handle:
                        h.update(handle.read())
                h.update(b"\n")
        return h.hexdigest()


def make_sentinel(path: Path) -> Sentinel:
    path.mkdir()
    (path / "file").write_bytes(MARKER + b" plain file\n")
    (path / "passwd").write_bytes(MARKER + b":x:0:0:root:/root:/bin/sh\n")
    (path / "dir").mkdir()
    (path / "dir" / "inner").write_bytes(MARKER + b" inner\n")
    setuid = path / "setuid"
    setuid.write_bytes(MARKER + b" setuid\n")
    os.chmod(setuid, 0o4755)
    os.symlink("file", path / "link")
    return Sentinel(path)


# --- running the CLI ----------------------------------------------------------------


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CLI_MEMORY, CLI_MEMORY))


@dataclass
class Ran:
    argv: list[str]
    returncode: int | None  # None: the timeout ended it
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(argv: list[str], root: Path, *, timeout: float = 30, env: dict | None = None,
            stdin: bytes | None = None, cwd: Path | None = None, memory: bool = True) -> Ran:
    """``python -m imgbuild --root ROOT ARGV`` with a timeout and (optionally) an address-space cap."""
    full = [sys.executable, "-m", "imgbuild", "--root", str(root), *argv]
    environment = dict(os.environ, **(env or {}))
    environment["PYTHONPATH"] = str(PROJECT)
    process = subprocess.Popen(
        full, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment, cwd=cwd,
        preexec_fn=_limit_memory if memory else None, start_new_session=True,
    )
    try:
        out, err = process.communicate(stdin, timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        out, err = process.communicate()
        code = None
    return Ran(full, code, out.decode(errors="replace"), err.decode(errors="replace"))


def assert_clear_refusal(ran: Ran) -> None:
    """Exit code 1 or 2, a message, no traceback; counts the case as refused."""
    assert ran.returncode is not None, f"hung (killed after the timeout): {ran.argv}\n{ran.output[-2000:]}"
    assert "Traceback" not in ran.output, f"traceback instead of an error:\n{ran.output[-3000:]}"
    assert ran.returncode in (1, 2), f"exit {ran.returncode}, expected a refusal:\n{ran.output[-2000:]}"
    assert ran.stderr.strip(), "refused without a message"
    TALLY.mark("refused")


def assert_no_traceback(ran: Ran) -> None:
    assert ran.returncode is not None, f"hung (killed after the timeout): {ran.argv}\n{ran.output[-2000:]}"
    assert "Traceback" not in ran.output, f"traceback:\n{ran.output[-3000:]}"


def count_contained() -> None:
    TALLY.mark("contained")


def layer_bytes(store: Store, name: str) -> list[bytes]:
    """The uncompressed tars of image ``name``'s layers."""
    image = store.load_image(name)
    tars = []
    for layer in image.layers:
        with store.open_blob(layer.digest) as blob:
            data = blob.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        elif data[:4] == b"\x28\xb5\x2f\xfd":
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        tars.append(data)
    return tars


def assert_contained_image(store: Store, name: str) -> None:
    """Built: no host sentinel bytes in any of its layers; counts the case as contained."""
    for number, tar in enumerate(layer_bytes(store, name)):
        assert MARKER not in tar, f"host file content in layer {number} of {name}"
    TALLY.mark("contained")


def count_refused() -> None:
    TALLY.mark("refused")


def error_line(ran: Ran) -> str:
    """The line that says what went wrong (for the log of each case)."""
    lines = ran.stderr.strip().splitlines()
    return next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "")


def attempt_build(root: Path, store: Store, context: Path, tag: str, *extra: str, timeout: float = 30,
                  env: dict | None = None, memory: bool = True) -> Ran:
    """Build ``context`` (tagged ``tag``); it must end refused or contained.

    ``memory=False`` for builds with RUN: runc (Go) inherits the address-space cap
    and cannot start threads under it.
    """
    ran = run_cli(["build", "-t", tag, "--network", "none", "--progress", "plain", *extra, str(context)],
                  root, timeout=timeout, env=env, memory=memory)
    if ran.returncode == 0:
        assert "Traceback" not in ran.output
        assert_contained_image(store, tag)
    else:
        assert_clear_refusal(ran)
    if ran.returncode:
        print(ran.stderr[-3000:])
    print(f"{tag}: exit {ran.returncode}: {error_line(ran) if ran.returncode else 'built'}")
    return ran


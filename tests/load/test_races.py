"""Races between imgbuild processes on one store, each made to happen at its worst moment.

The load test (test_load.py) runs them at random; here each one is forced:
the racing process (a real ``imgbuild`` CLI process) is started from a hook
at the exact point of the other operation where it used to do damage.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import secrets
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from imagetools import make_busybox_image
from load.loadtools import cli_command, cli_env, image_blobs, make_layered_image, run_cli

import imgbuild.archive.save as archive_save
from imgbuild.cli import main as cli_main
from imgbuild.registry import push as push_module
from imgbuild.store import Store
from imgbuild.store import owner as owner_module
from imgbuild.store.fsck import check_store
from imgbuild.store.gc import collect_garbage

pytestmark = pytest.mark.root


def _store_with_dropped_image(root, name: str) -> tuple[Store, dict[str, int]]:
    """A store with busybox and ``name`` (busybox plus a layer of its own); the blobs
    only ``name`` needs."""
    store = Store(root)
    make_busybox_image(store, "busybox:latest")
    make_layered_image(store, name, "busybox:latest", {"own": secrets.token_hex(8)}, "own layer")
    shared = image_blobs(store, "busybox:latest")
    own = {digest: size for digest, size in image_blobs(store, name).items() if digest not in shared}
    return store, own


def _assert_collected_afterwards(store: Store, own: dict[str, int]) -> None:
    """Once the reader is done, a collection removes what the rmi dropped."""
    result = collect_garbage(Store(store.root))
    assert not result.skipped_reason
    assert set(own) <= set(result.removed)
    assert not [digest for digest in own if store.has_blob(digest)]


def test_rmi_during_a_push_defers_collecting_the_blobs_being_pushed(tmp_path, registry, monkeypatch):
    """``imgbuild rmi`` of the image a push is uploading: the tag goes, the blobs
    stay until the push ends (they used to be collected under it: "blob ... is
    missing from the store")."""
    store, own = _store_with_dropped_image(tmp_path / "store", "leaving:1")
    removals: list[subprocess.CompletedProcess] = []
    real_push_blob = push_module.push_blob

    first = threading.Lock()  # layers are pushed in parallel threads

    def rmi_then_push_blob(client, store_, ref, blob, *rest):
        with first:
            if not removals:
                removals.append(run_cli(store.root, "rmi", "leaving:1"))
        return real_push_blob(client, store_, ref, blob, *rest)

    monkeypatch.setattr(push_module, "push_blob", rmi_then_push_blob)
    target = f"{registry.host}/races-{secrets.token_hex(4)}/leaving:1"
    pushed = push_module.push(store, "leaving:1", target)

    (removal,) = removals
    assert removal.returncode == 0, removal.stderr
    assert "Untagged: leaving:1" in removal.stdout
    assert "kept for now" in removal.stderr  # the collection waited for the push
    raw = subprocess.run(
        ["skopeo", "--insecure-policy", "inspect", "--raw", "--tls-verify=false", f"docker://{target}"],
        capture_output=True,
        timeout=120,
    )
    assert raw.returncode == 0, raw.stderr.decode()
    assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == pushed.digest
    _assert_collected_afterwards(store, own)


def _save_to_file(store: Store, name: str, saved: Path) -> None:
    archive_save.save(store, [name], saved)


def _save_to_stdout(store: Store, name: str, saved: Path, monkeypatch) -> None:
    """``imgbuild save NAME > FILE``, in this process (so the hook runs)."""
    with open(saved, "wb") as out, monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", io.TextIOWrapper(out, write_through=True))
        assert cli_main(["--root", str(store.root), "save", name]) == 0
        sys.stdout.flush()


@pytest.mark.parametrize("to", ["file", "stdout"])
def test_rmi_during_a_save_defers_collecting_the_blobs_being_saved(tmp_path, monkeypatch, to):
    """The same for ``imgbuild save``, to a file and to standard output: the
    archive is complete and loads."""
    store, own = _store_with_dropped_image(tmp_path / "store", "leaving:1")
    removals: list[subprocess.CompletedProcess] = []
    real_add_blob = archive_save._add_blob

    def rmi_then_add_blob(tar, store_, descriptor, name):
        if not removals:
            removals.append(run_cli(store.root, "rmi", "leaving:1"))
        return real_add_blob(tar, store_, descriptor, name)

    monkeypatch.setattr(archive_save, "_add_blob", rmi_then_add_blob)
    saved = tmp_path / "leaving.tar"
    if to == "file":
        _save_to_file(store, "leaving:1", saved)
    else:
        _save_to_stdout(store, "leaving:1", saved, monkeypatch)

    (removal,) = removals
    assert removal.returncode == 0, removal.stderr
    assert "kept for now" in removal.stderr
    other = tmp_path / "other"
    loaded = run_cli(other, "load", "-i", str(saved))
    assert loaded.returncode == 0, loaded.stderr
    assert set(own) <= set(image_blobs(Store(other), "leaving:1"))
    _assert_collected_afterwards(store, own)


# --- owner directories in tmp/: sweepers and exiting owners ------------------------

_OWNER = """
import os, sys
from imgbuild.store import Store
store = Store(sys.argv[1])
print(store.work_dir(), flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), 9)
sys.stdin.readline()  # then exit normally: the owner directory goes with it
"""


def _owner_process(root: Path, how: str) -> tuple[subprocess.Popen, Path]:
    """A process with its owner directory in ``root``'s tmp/; ``kill`` SIGKILLs itself."""
    process = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(root), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    return process, Path(process.stdout.readline().strip())


def _before_the_next_flock(monkeypatch, action) -> None:
    """Run ``action`` once, between the owner module opening a lock file and locking it."""
    done = []

    def act_then_flock(fd, operation):
        if not done:
            done.append(action())
        return fcntl.flock(fd, operation)

    shim = SimpleNamespace(flock=act_then_flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB)
    monkeypatch.setattr(owner_module, "fcntl", shim)


def test_a_sweep_that_loses_the_race_for_a_dead_owner_leaves_it_to_the_winner(tmp_path, monkeypatch):
    """Two builds start after a killed one, and both sweep its work. The one that
    opened the dead owner's lock file just before the other removed it got the
    lock after all, and failed unlinking the lock file (FileNotFoundError: a
    traceback, the build lost)."""
    root = tmp_path / "store"
    store = Store(root)
    killed, directory = _owner_process(root, "kill")
    assert killed.wait(timeout=60) == -9 and directory.is_dir()
    killed.stdin.close()
    killed.stdout.close()
    other_sweeps = []
    _before_the_next_flock(monkeypatch, lambda: other_sweeps.append(run_cli(root, "fsck", "--repair")))

    result = owner_module.sweep_dead_owners(store.tmp_dir)

    (other,) = other_sweeps
    assert other.returncode == 0, other.stdout + other.stderr
    assert f"removed the work of a killed imgbuild process: {directory}" in other.stdout
    assert (result.removed, result.left) == ([], [])
    assert not directory.exists() and not directory.with_name(directory.name + ".lock").exists()


def test_fsck_does_not_take_an_owner_that_just_exited_for_a_dead_one(tmp_path, monkeypatch):
    """A process that ends normally removes its owner directory and lock file, then
    drops the lock. fsck, having opened the lock file just before, got the lock
    and reported the clean exit as the work of a killed process."""
    root = tmp_path / "store"
    store = Store(root)
    live, directory = _owner_process(root, "exit")

    def owner_exits() -> int:
        live.stdin.write("\n")
        live.stdin.close()
        live.stdout.close()
        return live.wait(timeout=60)

    _before_the_next_flock(monkeypatch, owner_exits)
    report = check_store(store)

    assert live.returncode == 0 and not directory.exists()
    assert report.ok, str(report)


# --- two builds that miss the same cache key at once ---------------------------------


class _Gate:
    """Loopback HTTP: each GET gets 16 fresh random hex bytes, but only when the
    test opens its turn (the first request is turn 0, the second turn 1)."""

    def __init__(self):
        self.arrived = threading.Semaphore(0)
        self.turns = [threading.Event(), threading.Event()]
        self._count = 0
        self._lock = threading.Lock()

    def wait_for_request(self, process: subprocess.Popen, log: Path) -> None:
        """Until ``process`` (a build) sends its request."""
        deadline = time.monotonic() + 120
        while not self.arrived.acquire(timeout=0.1):
            assert process.poll() is None, f"the build ended before its download:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the build never downloaded:\n{log.read_text()}"

    def handler(self):
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with gate._lock:
                    turn = gate._count
                    gate._count += 1
                gate.arrived.release()
                gate.turns[min(turn, 1)].wait(timeout=120)
                body = secrets.token_hex(16).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler


@contextmanager
def _gate_server() -> Iterator[tuple[_Gate, str]]:
    gate = _Gate()
    server = ThreadingHTTPServer(("127.0.0.1", 0), gate.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield gate, f"http://127.0.0.1:{server.server_address[1]}/r"
    finally:
        for turn in gate.turns:
            turn.set()
        server.shutdown()
        server.server_close()


def _files_of(store: Store, name: str, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """The content of ``wanted`` files in the image's filesystem (the top-most layer wins)."""
    found = {}
    for layer in store.load_image(name).layers:
        data = gzip.decompress(store.read_blob(layer.digest))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if member.name in wanted and member.isfile():
                    found[member.name] = tar.extractfile(member).read()
    return found


def _start_build(root: Path, context: Path, tag: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cli_command(root, "build", "--progress", "plain", "-t", tag, "--iidfile", f"{log}.iid", str(context)),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(),
        )


def test_two_builds_missing_one_key_at_once_get_one_layer_for_it(tmp_path):
    """A step whose result differs from run to run (a download), missed by two
    builds at once. The second to finish used to replace the first's cache entry
    with its own layer, and then take the first's cached next step, made on top
    of the first's layer: an image whose /copy is not its /r, one no build could
    have made, and a cache that gives the same to every later build."""
    root = tmp_path / "store"
    store = Store(root)
    make_busybox_image(store, "busybox:latest")
    context = tmp_path / "ctx"
    context.mkdir()
    with _gate_server() as (gate, url):
        (context / "Dockerfile").write_text(f"FROM busybox\nRUN wget -q -O /r {url}\nRUN cp /r /copy\n")
        first = _start_build(root, context, "race:first", tmp_path / "first.log")
        gate.wait_for_request(first, tmp_path / "first.log")
        second = _start_build(root, context, "race:second", tmp_path / "second.log")
        gate.wait_for_request(second, tmp_path / "second.log")  # both missed the key
        gate.turns[0].set()  # the first build finishes both steps, then the second its download
        assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()
        gate.turns[1].set()
        assert second.wait(timeout=120) == 0, (tmp_path / "second.log").read_text()
    third = run_cli(root, "build", "--progress", "plain", "-t", "race:third", str(context))
    assert third.returncode == 0, third.stdout + third.stderr

    for tag in ("race:first", "race:second", "race:third"):
        files = _files_of(Store(root), tag, ("r", "copy"))
        assert files["r"] == files["copy"], f"{tag}: /r is {files['r']!r}, /copy {files['copy']!r}"
    ids = {tag: Store(root).image_id(Store(root).resolve(tag)) for tag in ("race:first", "race:second", "race:third")}
    assert len(set(ids.values())) == 1, ids

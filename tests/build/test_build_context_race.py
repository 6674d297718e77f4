"""A build context that changes under the build must not let host files in.

The attacker owns the context directory while the build runs (a pull
request's build script, a second process) and swaps a directory the build
already checked for a symlink to a host directory. Whatever the timing, no
byte of the host directory may land in a layer: the build copies what it
checked or stops with a ContextError.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from imgbuild import safeopen
from imgbuild.builder import copy as copy_module
from imgbuild.builder.builder import build
from imgbuild.builder.options import BuildOptions
from imgbuild.builder.progress import Progress
from imgbuild.errors import ContextError, ImgbuildError
from imgbuild.sandbox import runmounts as runstep_module
from imgbuild.store import Store

SENTINEL = b"HOST-SENTINEL-must-never-be-in-a-layer\n"
INSIDE = b"inside the context\n"
RACE_BUILDS = 500
RACE_SECONDS = 60
COPY_FILE = "FROM scratch\nCOPY a/sub/secret.txt /x\n"
COPY_DIRECTORY = "FROM scratch\nCOPY a /out/\n"


def _use_resolver(monkeypatch, name: str) -> None:
    """Choose how safeopen resolves paths: openat2 where the kernel has it, the
    component-by-component walk where it does not."""
    if name == "walk":
        monkeypatch.setattr(safeopen, "openat2_works", False)
    else:
        assert safeopen._openat2_available(), "this kernel has openat2 (Linux 5.6+)"


@pytest.fixture(params=["openat2", "walk"])
def resolver(request, monkeypatch):
    _use_resolver(monkeypatch, request.param)
    return request.param


def _make_context(tmp_path: Path, dockerfile: str) -> tuple[Path, Path]:
    context = tmp_path / "context"
    (context / "a" / "sub").mkdir(parents=True)
    (context / "a" / "sub" / "secret.txt").write_bytes(INSIDE)
    (context / "Dockerfile").write_text(dockerfile)
    host = tmp_path / "host"
    (host / "sub").mkdir(parents=True)
    (host / "sub" / "secret.txt").write_bytes(SENTINEL)
    return context, host


def _swap_to_host(context: Path, host: Path) -> None:
    """The attacker's move: the checked directory ``a`` becomes a symlink to the host."""
    os.rename(context / "a", context / "a.real")
    os.symlink(host, context / "a")


def _swap_back(context: Path) -> None:
    os.unlink(context / "a")
    os.rename(context / "a.real", context / "a")


def _layers_bytes(store: Store, result) -> bytes:
    """Every layer of the image, decompressed, as one byte string."""
    import gzip

    data = b""
    for layer in result.image.manifest["layers"]:
        blob = store.blob_path(layer["digest"]).read_bytes()
        data += gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    return data


def _build(store: Store, context: Path):
    options = BuildOptions(context=context, no_cache=True, progress="quiet")
    return build(store, options, progress=Progress())


@pytest.mark.parametrize(
    "dockerfile",
    [COPY_FILE, COPY_DIRECTORY],
    ids=["file", "directory"],
)
def test_a_directory_swapped_between_check_and_read_is_refused(
    tmp_path, store_root, monkeypatch, resolver, dockerfile
):
    # Deterministic: the swap happens right after the copy listed (checked)
    # the source and before it opens the first entry.
    context, host = _make_context(tmp_path, dockerfile)
    store = Store(store_root)
    original = copy_module._TreeCopier.copy_entry
    swapped = []

    def attacker_then_copy(self, entry, dest):
        if not swapped:
            _swap_to_host(context, host)
            swapped.append(True)
        return original(self, entry, dest)

    monkeypatch.setattr(copy_module._TreeCopier, "copy_entry", attacker_then_copy)
    with pytest.raises(ContextError, match="changed while the build read it"):
        result = _build(store, context)
        assert SENTINEL not in _layers_bytes(store, result)
    assert swapped


# The walk resolver races only with a file: each race costs ~10 s of CI time,
# and the deterministic tests above cover both resolvers for both shapes.
@pytest.mark.parametrize(
    "resolver_name, dockerfile",
    [("openat2", COPY_FILE), ("openat2", COPY_DIRECTORY), ("walk", COPY_FILE)],
    ids=["openat2-file", "openat2-directory", "walk-file"],
)
def test_racing_directory_swaps_never_put_a_host_file_in_a_layer(
    tmp_path, store_root, monkeypatch, resolver_name, dockerfile
):
    _use_resolver(monkeypatch, resolver_name)
    context, host = _make_context(tmp_path, dockerfile)
    store = Store(store_root)
    stop = threading.Event()

    def attacker():
        # Mostly the real tree, now and then the host for a moment: the
        # checks pass, and some read may land in the moment.
        chance = random.Random(8)
        while not stop.is_set():
            time.sleep(chance.uniform(0, 0.004))
            _swap_to_host(context, host)
            time.sleep(chance.uniform(0, 0.001))
            _swap_back(context)

    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    built = refused = 0
    leaks = []
    deadline = time.monotonic() + RACE_SECONDS
    try:
        for _ in range(RACE_BUILDS):
            if time.monotonic() > deadline:
                break
            try:
                result = _build(store, context)
            except ImgbuildError:
                refused += 1  # the swap was seen: a clear error is the right answer
                continue
            built += 1
            if SENTINEL in _layers_bytes(store, result):
                leaks.append(result.image.digest)
    finally:
        stop.set()
        thread.join()
    assert leaks == [], f"host file in {len(leaks)} of {built} images ({refused} refused)"
    assert built > 0, f"no build got through the race ({refused} refused)"


def test_a_run_bind_mount_of_a_swapped_context_directory_shows_the_checked_one(
    tmp_path, store, monkeypatch, resolver
):
    # RUN --mount=type=bind from the context without an ignore file: the
    # attacker swaps the source directory right after imgbuild resolved the
    # mount's source and before runc mounts it.
    dockerfile = "FROM busybox\nRUN --mount=type=bind,source=a,target=/m cat /m/sub/secret.txt > /seen\n"
    context, host = _make_context(tmp_path, dockerfile)
    original = runstep_module.resolve_in_root
    swapped = []

    def resolve_then_attack(root, path):
        resolved = original(root, path)
        if not swapped:
            _swap_to_host(context, host)
            swapped.append(True)
        return resolved

    monkeypatch.setattr(runstep_module, "resolve_in_root", resolve_then_attack)
    result = _build(store, context)
    assert swapped
    layers = _layers_bytes(store, result)
    assert SENTINEL not in layers
    assert INSIDE in layers


def test_the_copy_copies_what_the_digest_covered(tmp_path, store_root, monkeypatch):
    # The copy takes the list of entries the digest made for the step's key
    # (BuildContext.entries, hand_on), instead of walking the context again:
    # a file that appears in between is not copied (the key never covered it),
    # and one that goes away in between stops the build.
    context, _host = _make_context(tmp_path, COPY_DIRECTORY)
    store = Store(store_root)
    original = copy_module.copy_into
    changes = []

    def change_then_copy(*args, **kwargs):
        changes.pop()()
        return original(*args, **kwargs)

    monkeypatch.setattr(copy_module, "copy_into", change_then_copy)
    changes.append(lambda: (context / "a" / "late.txt").write_bytes(b"after the digest\n"))
    result = _build(store, context)
    assert not changes
    layer = _layers_bytes(store, result)
    assert INSIDE in layer and b"after the digest" not in layer and b"late.txt" not in layer

    changes.append(lambda: (context / "a" / "sub" / "secret.txt").unlink())
    with pytest.raises(ContextError):
        _build(store, context)
    assert not changes

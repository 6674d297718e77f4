"""``kill -9`` of ``imgbuild pull``, ``load`` and ``push`` at seeded random moments.

The image has four layers of 16 MB of seeded random bytes, stored
uncompressed so no compressor sets the pace, and imgbuild reaches the real
registry through a relay on 127.0.0.1 that holds each connection to 32 MB/s
(faults.faulttools.SlowProxy): a transfer takes about a second, and the kill,
drawn from ``random.Random(seed)`` between the moment an uninterrupted run
printed its first line and 90% of its duration, lands mid-transfer. The test
checks that most do (the command had started and not ended).

Pull: each run pulls into a fresh store and SIGKILLs the process group; the
next ``imgbuild pull`` succeeds with the manifest digest of an uninterrupted
pull, every layer has its snapshot (a pull unpacks as it downloads),
``imgbuild fsck`` is clean, and no temp files or mounts remain. Load: the same
with the image as an OCI archive, killed in the second half of a load's time
(it prints nothing before it ends), while it copies and unpacks. Push:
each run pushes from a fresh store (a store remembers where it pushed a blob
and would mount it from there) to a repository name not used before and
SIGKILLs it the same way; the next push succeeds, the registry serves the
manifest with the store's digest, ``skopeo copy`` (which verifies every blob
against its digest) reads the whole image back, and the store's fsck is clean.

IMGBUILD_FAULT_TRANSFER_RUNS=N sets the number of runs of each kind (default
10, about 25 s for pulls and 30 s for pushes here) and IMGBUILD_FAULT_SEED the
first seed (default 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from comparetools import mounts_under
from faults.faulttools import SlowProxy, random_layer
from imagetools import temp_leftovers
from ocitools import compress_layer, push_layout_raw, write_layout

from imgbuild.image import OCI_MANIFEST, Descriptor, chain_ids
from imgbuild.store import Store

pytestmark = pytest.mark.root

PROJECT = Path(__file__).resolve().parents[2]
LAYERS = 4
LAYER_BYTES = 16 << 20
RATE = 32 << 20  # bytes a second, each way of each connection, through SlowProxy


def _runs() -> int:
    return int(os.environ.get("IMGBUILD_FAULT_TRANSFER_RUNS", "10"))


def _seed() -> int:
    return int(os.environ.get("IMGBUILD_FAULT_SEED", "0"))


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CI", None)
    return env


def _imgbuild(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(root), *args],
        capture_output=True, text=True, env=_env(), timeout=timeout,
    )


@dataclass
class Source:
    layout: Path
    manifest: dict


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Source:
    layers = [compress_layer(random_layer(n, LAYER_BYTES), "uncompressed") for n in range(LAYERS)]
    layout = tmp_path_factory.mktemp("transfers") / "layout"
    manifest = write_layout(layout, "big", layers, "imgbuild fault test")
    return Source(layout, manifest)


@pytest.fixture(scope="module")
def slow_registry(registry):
    """The test registry behind a rate-limited relay: ``slow_registry.host``."""
    with SlowProxy(registry.host, RATE) as proxy:
        yield proxy


@dataclass
class Killed:
    started: bool  # the command had begun its transfer (its first line was out)
    finished: bool  # it ended before the kill came


def _killed(argv: list[str], delay: float, output: Path) -> Killed:
    """Run ``argv`` in a session of its own and SIGKILL the group after ``delay``."""
    with open(output, "wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
        time.sleep(delay)
        finished = process.poll() is not None
        if not finished:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    return Killed(started=output.stat().st_size > 0, finished=finished)


@dataclass
class Timing:
    """When an uninterrupted run printed its first line (its transfer begins) and ended."""

    started: float
    ended: float

    def delay(self, rng: random.Random) -> float:
        """A moment within the transfer, drawn from ``rng``.

        Drawn from its first 70 %: the reference run is timed once, and on a
        busy machine a later run can be faster (a pull also unpacks, whose
        time swings with the disk); a kill after the end proves nothing."""
        return rng.uniform(self.started, self.started + 0.7 * (self.ended - self.started))


def _timed(argv: list[str], output: Path) -> Timing:
    began = time.monotonic()
    started = None
    with open(output, "wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=_env())
        while process.poll() is None:
            if started is None and output.stat().st_size:
                started = time.monotonic() - began
            time.sleep(0.005)
    assert process.returncode == 0, output.read_text()
    ended = time.monotonic() - began
    return Timing(started if started is not None else ended, ended)


def _store_problems(root: Path) -> list[str]:
    found = [f"mount {point}" for point in mounts_under(root)]
    fsck = _imgbuild(root, "fsck")
    if fsck.returncode != 0:
        found.append(f"fsck: {fsck.stdout.strip()} {fsck.stderr.strip()}")
    found += [f"temp {name}" for name in temp_leftovers(Store(root))]
    return found


def _check_landings(kind: str, landings: list[Killed]) -> None:
    """Most kills must land mid-operation, or the test proves little."""
    off = [k for k in landings if k.finished or not k.started]
    assert len(off) <= len(landings) // 4, (
        f"{len(off)} of {len(landings)} {kind} kills came before the transfer began or after it ended"
    )


def test_kill9_during_pulls_then_the_next_pull_completes(tmp_path, registry, slow_registry, source, fault_stats):
    repository = f"faults/pull-source-{secrets.token_hex(4)}"
    push_layout_raw(source.layout, source.manifest, registry.host, repository, "1")
    reference = f"{slow_registry.host}/{repository}:1"

    first = tmp_path / "reference" / "store"
    timing = _timed(_pull_command(first, reference), tmp_path / "reference.log")
    expected = Store(first).resolve(reference).digest

    failures, landings = [], []
    for run in range(_runs()):
        rng = random.Random(_seed() + run)
        delay = timing.delay(rng)
        root = tmp_path / f"pull-{run}" / "store"
        root.parent.mkdir()
        landing = _killed(_pull_command(root, reference), delay, root.parent / "killed.log")
        landings.append(landing)
        digest = _pull_ok(root, reference)
        left = _store_problems(root) + _missing_snapshots(root, reference)
        fault_stats.add("pulls", left, digest != expected, landing.finished)
        if left or digest != expected:
            failures.append(f"seed {_seed() + run} (kill after {delay:.2f}s): {digest} {left}")
        shutil.rmtree(root.parent)  # 100+ MB a run
    assert not failures, "\n".join(failures)
    _check_landings("pull", landings)


def _missing_snapshots(root: Path, name: str) -> list[str]:
    """The layers of image ``name`` that have no snapshot: a pull or load unpacks them all."""
    store = Store(root)
    image = store.load_image(name)
    return [f"no snapshot of layer {n}" for n, chain_id in enumerate(chain_ids(image.diff_ids))
            if store.snapshot_path(chain_id) is None]


def test_kill9_during_loads_then_the_next_load_completes(tmp_path, source, fault_stats):
    """``imgbuild load`` unpacks each layer as it copies it in: a kill mid-way leaves nothing."""
    archive = tmp_path / "big.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(source.layout / name, arcname=name)
    # The faster of two reference loads: timed once, a slow run (seen in CI:
    # 6 of 10 kills came after the end) puts the kills past every later load.
    took = float("inf")
    for reference in ("reference", "reference-2"):
        began = time.monotonic()
        done = _imgbuild(tmp_path / reference / "store", "load", "-i", str(archive))
        assert done.returncode == 0, done.stdout + done.stderr
        took = min(took, time.monotonic() - began)
    expected = Store(tmp_path / "reference" / "store").resolve("big").digest

    failures, landings = [], []
    for run in range(_runs()):
        rng = random.Random(_seed() + run)
        # load prints nothing until it is done: a moment in its second half,
        # when Python has started and the layers are being copied and
        # unpacked, short of its end (a later load may still be faster).
        delay = rng.uniform(0.5 * took, 0.8 * took)
        root = tmp_path / f"load-{run}" / "store"
        root.parent.mkdir()
        landing = _killed(_load_command(root, archive), delay, root.parent / "killed.log")
        landing.started = (root / "index.db").exists()
        landings.append(landing)
        done = _imgbuild(root, "load", "-i", str(archive))
        assert done.returncode == 0, done.stdout + done.stderr
        digest = Store(root).resolve("big").digest
        left = _store_problems(root) + _missing_snapshots(root, "big")
        fault_stats.add("loads", left, digest != expected, landing.finished)
        if left or digest != expected:
            failures.append(f"seed {_seed() + run} (kill after {delay:.2f}s): {digest} {left}")
        shutil.rmtree(root.parent)
    assert not failures, "\n".join(failures)
    _check_landings("load", landings)


def _load_command(root: Path, archive: Path) -> list[str]:
    return [sys.executable, "-m", "imgbuild", "--root", str(root), "load", "-i", str(archive)]


def _pull_command(root: Path, reference: str) -> list[str]:
    return [sys.executable, "-m", "imgbuild", "--root", str(root), "pull", reference]


def _push_command(root: Path, target: str) -> list[str]:
    return [sys.executable, "-m", "imgbuild", "--root", str(root), "push", "big:1", target]


def _pull_ok(root: Path, reference: str) -> str:
    done = _imgbuild(root, "pull", reference)
    assert done.returncode == 0, done.stdout + done.stderr
    return Store(root).resolve(reference).digest


def _store_with_image(root: Path, source: Source, tag: str) -> str:
    """Put the layout's image into a store with the store's own API; its manifest digest.

    Not pulled: a store that pulled the blobs from this registry would push
    them by cross-repository mount, and nothing would be uploaded.
    """
    store = Store(root)
    blobs = source.layout / "blobs" / "sha256"
    for layer in source.manifest["layers"]:
        store.write_blob((blobs / layer["digest"].split(":", 1)[1]).read_bytes(), layer["digest"])
    config = source.manifest["config"]["digest"]
    store.write_blob((blobs / config.split(":", 1)[1]).read_bytes(), config)
    data = json.dumps(source.manifest).encode()
    digest = store.write_blob(data)
    store.tag(tag, Descriptor(OCI_MANIFEST, digest, len(data)))
    return digest


def _registry_digest(reference: str) -> str:
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}"],
        capture_output=True, check=True, timeout=60,
    ).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _copies_back(reference: str, destination: Path) -> str:
    """``skopeo copy`` of the pushed image: it verifies every blob; "" or what failed."""
    done = subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{reference}", f"oci:{destination}:x"],
        capture_output=True, text=True, timeout=120,
    )
    return "" if done.returncode == 0 else f"skopeo copy: {done.stderr.strip()}"


def test_kill9_during_pushes_then_the_next_push_completes(tmp_path, registry, slow_registry, source, fault_stats):
    # Each run pushes from a fresh store: a store remembers where it pushed a
    # blob, and would mount it from there rather than upload it again.
    names = f"faults/push-{secrets.token_hex(4)}"
    first = tmp_path / "reference" / "store"
    expected = _store_with_image(first, source, "big:1")
    timing = _timed(_push_command(first, f"{slow_registry.host}/{names}-reference:1"), tmp_path / "reference.log")
    assert _registry_digest(f"{registry.host}/{names}-reference:1") == expected

    failures, landings = [], []
    for run in range(_runs()):
        rng = random.Random(_seed() + run)
        delay = timing.delay(rng)
        root = tmp_path / f"push-{run}" / "store"
        _store_with_image(root, source, "big:1")
        target = f"{registry.host}/{names}-{run}:1"
        slow_target = f"{slow_registry.host}/{names}-{run}:1"
        landing = _killed(_push_command(root, slow_target), delay, root.parent / "killed.log")
        landings.append(landing)
        _push_ok(root, slow_target)
        pushed = _registry_digest(target)
        problems = _store_problems(root)
        copied = _copies_back(target, root.parent / "copy")
        if copied:
            problems.append(copied)
        fault_stats.add("pushes", problems, pushed != expected, landing.finished)
        if problems or pushed != expected:
            failures.append(f"seed {_seed() + run} (kill after {delay:.2f}s): {pushed} {problems}")
        shutil.rmtree(root.parent)  # 100+ MB a run
    assert not failures, "\n".join(failures)
    _check_landings("push", landings)


def _push_ok(root: Path, target: str) -> None:
    done = _imgbuild(root, "push", "big:1", target)
    assert done.returncode == 0, done.stdout + done.stderr

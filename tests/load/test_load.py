"""Eight builds at once on one store, with pushes and garbage collections meanwhile.

One round: a fresh store with two bases (busybox, and ``base2``, busybox plus
a layer), an image to push and three images to drop. Then, started at seeded
random moments within about half a second of each other, 8 real
``python -m imgbuild build`` processes: three of one Dockerfile (two from the
same context directory, one from a copy), two of another, and three more
Dockerfiles. All of them start with the same steps (``FROM busybox``,
``RUN sleep 2 && echo one``, ``COPY shared.txt``) or the same base2 stack, so they race
on the same cache keys, layer blobs and snapshots; one builds with zstd, one
untagged, and identical ones write the same tag. While they run, two
``imgbuild push`` processes push the prepared image to the registry on
127.0.0.1, two ``imgbuild rmi`` processes drop an image each (the
collection that follows defers to the builds' writer lease) and an
``imgbuild fsck`` checks the store; each must exit 0.

Afterwards: every build exited 0; each gives the image ID the same Dockerfile
gives built alone in a fresh store; ``imgbuild fsck`` is clean; no layer is
stored twice (tests/load/loadtools.stored_twice); no mount, runc container or
temp file is left; the pushed image's digest in the registry (``skopeo
inspect --raw``, ``skopeo copy`` to an OCI directory) is the store's; and a
last ``rmi`` with nothing running really collects: the dropped images' blobs
are gone.

IMGBUILD_LOAD_ROUNDS=N repeats the round with fresh stores (default 1: about
15 s with the reference builds, each further round 5 to 10 s here;
docs/security.md gives the full count, 5) and IMGBUILD_LOAD_SEED the first
seed (default 0); the seed orders the starts and draws their stagger.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from comparetools import mounts_under, runc_containers_under
from faults.faulttools import clear_leftovers
from imagetools import make_busybox_image, temp_leftovers
from load.loadtools import (
    cli_command,
    cli_env,
    image_blobs,
    make_layered_image,
    run_cli,
    stored_twice,
)

from imgbuild.store import Store

pytestmark = pytest.mark.root

# The first RUN of a, b and c sleeps: every round then has builds running
# when the pushes and collections start (within 1.2 s), however fast builds get.
COMMON = """\
FROM busybox AS base
RUN sleep 2 && echo one > /one
COPY shared.txt /shared.txt
RUN cat /shared.txt /one > /two
"""
DOCKERFILES = {
    "a": COMMON + "FROM base2\nCOPY --from=base /two /two\nRUN echo a > /a && cat /etc/base2 >> /a\n",
    "b": COMMON + "FROM busybox\nCOPY --from=base /two /two\nCOPY own.txt /own.txt\n",
    "c": "FROM busybox\nRUN sleep 2 && echo one > /one\nCOPY shared.txt /shared.txt\nRUN echo c > /c\n",
    "d": "FROM base2\nCOPY shared.txt /shared.txt\nRUN cat /etc/base2 /shared.txt > /d\n",
}


@dataclass(frozen=True)
class BuildSpec:
    group: str  # builds of one group have identical inputs
    dockerfile: str  # key of DOCKERFILES
    context: str  # context directory name; two specs may share one
    args: tuple[str, ...] = ()


# 8 builds: a three times (two of them from one directory), b twice.
BUILDS = [
    BuildSpec("a", "a", "ctx-a", ("-t", "load/a")),
    BuildSpec("a", "a", "ctx-a", ("-t", "load/a")),
    BuildSpec("a", "a", "ctx-a-copy", ("-t", "load/a")),
    BuildSpec("b", "b", "ctx-b1", ("-t", "load/b")),
    BuildSpec("b", "b", "ctx-b2", ("-t", "load/b")),
    BuildSpec("c", "c", "ctx-c", ("-t", "load/c")),
    BuildSpec("c-zstd", "c", "ctx-c", ("--compression", "zstd")),  # untagged
    BuildSpec("d", "d", "ctx-d", ("-t", "load/d")),
]
# Steps with distinct cache keys among the 8 builds: 3 of COMMON, 2 more of a,
# 2 of b, 1 of c (its first two are COMMON's), 2 of d. c-zstd shares c's keys.
DISTINCT_STEPS = 10
PUSHED = "pushme:latest"
DROPPED = ["drop1:latest", "drop2:latest", "drop3:latest"]


def _rounds() -> int:
    return int(os.environ.get("IMGBUILD_LOAD_ROUNDS", "1"))


def _make_contexts(where: Path) -> Path:
    for spec in BUILDS:
        context = where / spec.context
        if context.exists():
            continue
        context.mkdir(parents=True)
        (context / "Dockerfile").write_text(DOCKERFILES[spec.dockerfile])
        (context / "shared.txt").write_text("shared by every Dockerfile\n")
        (context / "own.txt").write_text("only b copies this\n")
    return where


def _fresh_store(root: Path) -> Store:
    """busybox and base2 (busybox plus a layer), the same bytes in every store."""
    store = Store(root)
    make_busybox_image(store, "busybox:latest")
    make_layered_image(store, "base2:latest", "busybox:latest", {"etc/base2": "base2\n"}, "base2 layer")
    return store


def _prepare_round(store: Store, context_dir: Path, tag: str) -> dict[str, dict[str, int]]:
    """The image to push (built by imgbuild) and the images to drop; their blobs."""
    pushed_context = context_dir / "ctx-pushme"
    pushed_context.mkdir(exist_ok=True)
    (pushed_context / "Dockerfile").write_text("FROM scratch\nCOPY pushed.txt /pushed.txt\nLABEL load=pushme\n")
    (pushed_context / "pushed.txt").write_text(f"pushed in round {tag}\n")
    done = run_cli(store.root, "build", "--progress", "plain", "-t", PUSHED, str(pushed_context))
    assert done.returncode == 0, done.stdout + done.stderr
    dropped = {}
    for name in DROPPED:
        files = {"dropped": f"{name} {secrets.token_hex(8)}\n"}  # a layer no other image has
        make_layered_image(store, name, "busybox:latest", files, f"{name} layer")
        dropped[name] = image_blobs(store, name)
    return dropped


def _references(tmp_path: Path, contexts: Path) -> dict[str, str]:
    """The image ID of each group, built alone in a fresh store."""
    ids = {}
    for spec in BUILDS:
        if spec.group in ids:
            continue
        root = tmp_path / f"reference-{spec.group}" / "store"
        _fresh_store(root)
        iidfile = root.parent / "iid"
        done = run_cli(root, "build", "--progress", "plain", *spec.args, "--iidfile", str(iidfile), str(contexts / spec.context))
        assert done.returncode == 0, done.stdout + done.stderr
        ids[spec.group] = iidfile.read_text().strip()
    return ids


@dataclass
class Started:
    what: str
    process: subprocess.Popen
    log: Path
    builds_running: int  # builds still running when this one started
    iidfile: Path | None = None
    spec: BuildSpec | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Round:
    builds: list[Started] = field(default_factory=list)
    others: list[Started] = field(default_factory=list)


def _start(root: Path, work: Path, what: str, args: list[str], running: int) -> Started:
    log = work / f"{what}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            cli_command(root, *args), stdout=out, stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True
        )
    return Started(what, process, log, running)


def _iidfile(work: Path, what: str) -> Path:
    return work / f"{what}.iid"


def _schedule(rng: random.Random, registry_host: str, repo: str, contexts: Path, work: Path) -> list[tuple[float, str, list[str], BuildSpec | None]]:
    """(delay, name, CLI arguments, spec) for every process of a round, by delay."""
    events = []
    order = list(range(len(BUILDS)))
    rng.shuffle(order)
    delay = 0.0
    for index in order:
        spec = BUILDS[index]
        iidfile = _iidfile(work, f"build-{index}")
        args = ["build", "--progress", "plain", *spec.args, "--iidfile", str(iidfile), str(contexts / spec.context)]
        events.append((delay, f"build-{index}", args, spec))
        delay += rng.uniform(0.0, 0.08)  # all 8 within about 0.3 s, at most 0.56 s
    # The pushes and collections start after the first builds, while they run.
    for number in range(2):
        events.append((rng.uniform(0.3, 1.2), f"push-{number}", ["push", PUSHED, f"{registry_host}/{repo}/pushme:{number}"], None))
        events.append((rng.uniform(0.3, 1.2), f"rmi-{number}", ["rmi", DROPPED[number]], None))
    events.append((rng.uniform(0.3, 1.2), "fsck", ["fsck"], None))
    return sorted(events, key=lambda event: event[0])


def _run_round(root: Path, schedule, work: Path) -> Round:
    result = Round()
    started_at = time.monotonic()
    for delay, what, args, spec in schedule:
        time.sleep(max(0.0, started_at + delay - time.monotonic()))
        running = sum(b.process.poll() is None for b in result.builds)
        started = _start(root, work, what, args, running)
        if spec is not None:
            started.spec = spec
            started.iidfile = _iidfile(work, what)
            result.builds.append(started)
        else:
            result.others.append(started)
    for started in result.builds + result.others:
        try:
            started.process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(started.process.pid, signal.SIGKILL)
            started.process.wait()
    return result


def _skopeo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, timeout=120)


def _pushed_digest_problems(registry_host: str, repo: str, expected: str, work: Path) -> list[str]:
    problems = []
    for number in range(2):
        reference = f"docker://{registry_host}/{repo}/pushme:{number}"
        raw = _skopeo("inspect", "--raw", "--tls-verify=false", reference)
        if raw.returncode != 0:
            problems.append(f"skopeo inspect {reference}: {raw.stderr.decode()}")
            continue
        digest = "sha256:" + hashlib.sha256(raw.stdout).hexdigest()
        if digest != expected:
            problems.append(f"{reference} has manifest {digest}, the store {expected}")
        layout = work / f"copied-{number}"
        copied = _skopeo("copy", "--src-tls-verify=false", reference, f"oci:{layout}:copied")
        if copied.returncode != 0:
            problems.append(f"skopeo copy {reference}: {copied.stderr.decode()}")
            continue
        index = json.loads((layout / "index.json").read_text())
        if index["manifests"][0]["digest"] != expected:
            problems.append(f"skopeo copy of {reference} gave {index['manifests'][0]['digest']}, not {expected}")
    return problems


def _leftovers(root: Path) -> list[str]:
    found = [f"mount {point}" for point in mounts_under(root)]
    found += [f"container {name}" for name in runc_containers_under(root)]
    found += [f"temp {name}" for name in temp_leftovers(Store(root))]
    return found


def _check_round(root: Path, result: Round, references: dict[str, str], load_stats) -> list[str]:
    problems = []
    for build in result.builds:
        load_stats.builds += 1
        if build.process.returncode != 0:
            problems.append(f"{build.what} ({build.spec.group}) exited {build.process.returncode}:\n{build.output()}")
            continue
        load_stats.succeeded += 1
        load_stats.steps_run += _steps_run(build.output())
        image_id = build.iidfile.read_text().strip()
        if image_id != references[build.spec.group]:
            load_stats.mismatches += 1
            problems.append(f"{build.what} ({build.spec.group}) gave {image_id}, alone {references[build.spec.group]}")
    for other in result.others:
        if other.builds_running == 0:
            problems.append(f"{other.what} started when no build ran any more (the round is too short)")
        if other.process.returncode != 0:
            problems.append(f"{other.what} exited {other.process.returncode}:\n{other.output()}")
        if other.what == "fsck":
            load_stats.fsck_runs += 1
        elif other.what.startswith("push"):
            load_stats.pushes += 1
        else:
            load_stats.collections += 1
            load_stats.collections_skipped += "kept for now" in other.output()
    store = Store(root)
    for group in ("a", "b", "c", "d"):
        image_id = store.image_id(store.resolve(f"load/{group}"))
        if image_id != references[group]:
            problems.append(f"tag load/{group} names {image_id}, not {references[group]}")
    return problems


def _steps_run(output: str) -> int:
    found = re.search(r"steps: \d+ cached, (\d+) run", output)
    return int(found.group(1)) if found else 0


def _final_collection(root: Path, dropped: dict[str, dict[str, int]]) -> list[str]:
    """With nothing running, ``rmi`` of the last dropped image collects every dropped blob."""
    done = run_cli(root, "rmi", DROPPED[2])
    if done.returncode != 0 or "kept for now" in done.stderr:
        return [f"the final rmi did not collect: {done.stdout} {done.stderr}"]
    deleted = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("Deleted: ")}
    problems = []
    kept = {"busybox:latest"}  # the dropped images' busybox layer stays: other images use it
    needed = {digest for name in kept for digest in image_blobs(Store(root), name)}
    freed = 0
    for name, blobs in dropped.items():
        for digest, size in blobs.items():
            if digest in needed:
                continue
            if Store(root).has_blob(digest):
                problems.append(f"{name}: blob {digest} is still in the store after the final collection")
            if digest in deleted:
                freed += size
    if not freed:
        problems.append(f"the final collection freed nothing: {done.stdout}")
    return problems


def test_eight_concurrent_builds_with_pushes_and_collections(tmp_path, registry, load_stats):
    contexts = _make_contexts(tmp_path / "contexts")
    references = _references(tmp_path, contexts)
    seed = int(os.environ.get("IMGBUILD_LOAD_SEED", "0"))
    failures = []
    for number in range(_rounds()):
        rng = random.Random(seed + number)
        root = tmp_path / f"round-{number}" / "store"
        work = root.parent / "work"
        work.mkdir(parents=True)
        store = _fresh_store(root)
        dropped = _prepare_round(store, contexts, f"{seed + number}")
        pushed = store.resolve(PUSHED).digest
        repo = f"load-{secrets.token_hex(4)}"
        try:
            result = _run_round(root, _schedule(rng, registry.host, repo, contexts, work), work)
            problems = _check_round(root, result, references, load_stats)
            fsck = run_cli(root, "fsck")
            if fsck.returncode != 0:
                load_stats.fsck_problems += fsck.stdout.count("problem:") or 1
                problems.append(f"fsck: {fsck.stdout} {fsck.stderr}")
            twice = stored_twice(Store(root))
            load_stats.duplicates += len(twice)
            problems += twice
            left = _leftovers(root)
            load_stats.leftovers += len(left)
            problems += left
            problems += _pushed_digest_problems(registry.host, repo, pushed, work)
            problems += _final_collection(root, dropped)
        finally:
            clear_leftovers(root)
        load_stats.rounds += 1
        load_stats.distinct_steps += DISTINCT_STEPS
        if problems:
            failures.append(f"round {number} (seed {seed + number}):\n" + "\n".join(problems))
        else:
            shutil.rmtree(root.parent, ignore_errors=True)  # keep a failed round's store to look at
    assert not failures, "\n\n".join(failures)

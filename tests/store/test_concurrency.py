"""Several imgbuild processes on one store at once, and processes killed mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from store.storetools import blob_files, make_small_image, run_python

from imgbuild.store import Store
from imgbuild.store.fsck import check_store
from imgbuild.store.gc import collect_garbage
from imgbuild.store.owner import dead_owners

WORKERS = 4
IMAGES_PER_WORKER = 5

# Each worker writes images and tags them, tags a name the others also move,
# makes and removes a throwaway image and collects garbage: the collector runs
# while other processes are between writing blobs and tagging them.
WORKER = r"""
import sys, time
from pathlib import Path
from store.storetools import make_small_image
from imgbuild.store import Store
from imgbuild.store.gc import collect_garbage

root, worker, count, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
while not go.exists():
    time.sleep(0.01)
store = Store(root)
for i in range(count):
    files = {f"w{worker}/{i}": f"worker {worker} image {i}", "shared": "the same in every image"}
    image = make_small_image(store, f"w{worker}:{i}", files)
    store.tag("everyone:latest", image.manifest_descriptor)
    make_small_image(store, f"tmp{worker}:{i}", {"tmp": f"throwaway {worker} {i}"})
    store.untag(f"tmp{worker}:{i}")
    collect_garbage(store)
"""


def test_parallel_writers_tags_and_collectors_leave_a_consistent_store(tmp_path):
    root = tmp_path / "store"  # not created yet: the workers also race to create it
    go = tmp_path / "go"
    workers = [
        run_python(
            WORKER, str(root), str(n), str(IMAGES_PER_WORKER), str(go), stderr=subprocess.PIPE
        )
        for n in range(WORKERS)
    ]
    go.touch()
    errors = [worker.communicate(timeout=300)[1].decode() for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * WORKERS, errors

    store = Store(root)
    tags = {name for name, _ in store.refs()}
    expected = {f"w{n}:{i}" for n in range(WORKERS) for i in range(IMAGES_PER_WORKER)}
    assert tags == expected | {"everyone:latest"}
    for name in expected:
        image = store.load_image(name)
        assert all(store.has_blob(layer.digest) for layer in image.layers)
    report = check_store(store)
    assert report.ok, report.problems

    # Nothing but the throwaway images' blobs is garbage.
    collect_garbage(store)
    assert check_store(store).ok
    assert len(store.all_blobs()) == len(expected) * 3  # a manifest, a config and a layer each


KILLED_BLOB_WRITER = r"""
import os, sys
from imgbuild.store import Store
store = Store(sys.argv[1])
chunk = os.urandom(1 << 20)
with store.blob_writer() as blob:
    for i in range(100_000):
        blob.write(chunk)
        if i == 8:
            print("writing", flush=True)
"""


def test_a_blob_writer_killed_mid_blob_leaves_only_a_temp_file(store_root):
    store = Store(store_root)
    before = make_small_image(store, "before:1", {"f": "written before"})
    blobs_before = blob_files(store)

    writer = run_python(KILLED_BLOB_WRITER, str(store_root), stdout=subprocess.PIPE)
    assert writer.stdout.readline() == b"writing\n"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    writer.stdout.close()

    assert blob_files(store) == blobs_before  # no partial blob became visible
    # The temp file is in the dead writer's owner directory, whose lock died with it.
    [dead] = dead_owners(store.tmp_dir)
    leftovers = list(dead.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith("blob-")
    assert leftovers[0].stat().st_size >= 9 << 20

    report = check_store(store)
    assert [(p.kind, p.subject) for p in report.problems] == [("leftover-temp", str(dead))]
    assert check_store(store, repair=True).ok
    assert not dead.exists() and not dead.with_name(dead.name + ".lock").exists()
    # Only this (live) process's own owner directory and lock file remain.
    assert sorted(path.name for path in store.tmp_dir.iterdir()) == [
        store.work_dir().name,
        store.work_dir().name + ".lock",
    ]

    # The store still works, and the dead writer's lease died with it.
    after = make_small_image(store, "after:1", {"f": "written after"})
    assert store.load_image("after:1").digest == after.digest
    assert store.load_image("before:1").digest == before.digest
    store.untag("after:1")
    assert not collect_garbage(store).skipped_reason
    assert check_store(store).ok


KILLED_TAGGER = r"""
import sys
from imgbuild.store import Store
store = Store(sys.argv[1])
descriptor = store.resolve("base:1")
for i in range(100_000):
    store.tag(f"t:{i}", descriptor)
    print(i, flush=True)
"""


def test_a_process_killed_while_tagging_never_leaves_a_torn_index_json(store_root):
    store = Store(store_root)
    make_small_image(store, "base:1", {"f": "x"})
    tagger = run_python(KILLED_TAGGER, str(store_root), stdout=subprocess.PIPE)
    for _ in range(30):
        last_reported = int(tagger.stdout.readline())
    os.kill(tagger.pid, signal.SIGKILL)
    tagger.wait()
    tagger.stdout.close()

    index = json.loads((store.layout / "index.json").read_bytes())
    names = {m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]}
    written = {n for n in names if n.startswith("t:")}
    count = len(written)
    # Every tag the process reported is there, and the tags form an unbroken run.
    assert count >= last_reported + 1
    assert written == {f"t:{i}" for i in range(count)}
    report = check_store(store, repair=True)
    assert report.ok, report.problems

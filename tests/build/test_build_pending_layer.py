"""A step's layer is written while the RUN after it runs (builder/pending.py).

The RUN mounts the step's readied changeset as its top lower layer and
starts its container before that layer's blob, syncs and index rows are
written. What must hold all the same: the RUN sees the tree the layer will
extract to, a failure to write the layer is that step's failure with
nothing left behind, a failed RUN leaves the step below it cached, and a
key another build recorded first (with other content) is built on, as
``BuildCache.record`` promises.
"""

from __future__ import annotations

import errno
import os

import pytest
from comparetools import runc_containers_under
from conftest import mounts_under
from imagetools import temp_leftovers

from imgbuild.builder import rootfs
from imgbuild.builder.rootfs import image_layers
from imgbuild.cache.index import BuildCache
from imgbuild.errors import BuildError, DiskFull, RunError
from imgbuild.sandbox import launcher
from imgbuild.store import Store, atomic

pytestmark = pytest.mark.root


def test_the_layer_below_is_written_while_the_run_runs(build_df, store, monkeypatch):
    events = []
    real_launch = launcher.launch
    real_commit = rootfs.commit_directory

    def watched_launch(*arguments):
        events.append("container started")
        return real_launch(*arguments)

    def watched_commit(store, changes, **options):
        layer = real_commit(store, changes, **options)
        events.append("layer written")
        return layer

    monkeypatch.setattr(launcher, "launch", watched_launch)
    monkeypatch.setattr(rootfs, "commit_directory", watched_commit)
    built = build_df("FROM busybox\nCOPY f /f\nRUN cat /f > /g\n", {"f": "one\n"}, store=store)
    # the COPY's layer while the RUN's container runs, then the RUN's own
    assert events == ["container started", "layer written", "layer written"], events
    assert built.tree()["g"].data == b"one\n"
    assert len(built.image.layers) == 3  # busybox, COPY, RUN
    assert temp_leftovers(store) == []


def test_the_run_sees_the_tree_the_layer_below_extracts_to(build_df, store, tmp_path):
    context = tmp_path / "context"
    files = {f"src/file{n}": f"content {n}\n" for n in range(20)}
    for name, text in files.items():
        path = context / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    built = build_df(
        "FROM busybox\nCOPY src /src\nRUN cd /src && stat -c '%n %y' * > /times && sha256sum * > /sums\n",
        store=store,
        context=context,
    )
    tree = built.tree()
    times = tree["times"].data.decode().splitlines()
    assert len(times) == 20
    # whole seconds, as the COPY's tar records them: the times were set before the RUN started
    assert all(line.endswith(" 2023-11-14 22:13:20.000000000 +0000") for line in times), times
    sums = tree["sums"].data.decode().splitlines()
    assert len(sums) == 20 and all(tree[f"src/{line.split()[1]}"].data for line in sums)


def test_a_failed_write_of_the_layer_below_fails_its_own_step(build_df, store, monkeypatch):
    build_df("FROM busybox\nRUN true\n", store=store)  # the base's snapshot is made here
    snapshots_before = store.db.query("SELECT count(*) FROM snapshots")[0][0]
    real_sync = atomic.sync_tree_files
    calls = []

    def first_sync_fails(fd, limit):
        calls.append(fd)
        if len(calls) == 1:  # the COPY's tree: synced while the RUN's container runs
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_sync(fd, limit)

    monkeypatch.setattr(atomic, "sync_tree_files", first_sync_fails)
    with pytest.raises(DiskFull, match="while committing a layer") as raised:
        build_df("FROM busybox\nCOPY f /f\nRUN sleep 5\n", {"f": "f\n"}, store=store)
    assert "Dockerfile:2" in str(raised.value)  # the COPY, whose layer it was
    assert len(calls) == 1  # the RUN never got to commit
    assert store.db.query("SELECT count(*) FROM snapshots")[0][0] == snapshots_before
    assert temp_leftovers(store) == []
    assert mounts_under(store.root) == []
    assert runc_containers_under(store.root) == []  # the RUN's container was stopped, not waited for


def test_a_run_that_fails_leaves_the_step_below_cached(build_df, store):
    with pytest.raises(RunError):
        build_df("FROM busybox\nCOPY f /f\nRUN exit 3\n", {"f": "f\n"}, store=store)
    # a RUN that fails before its container starts: a secret it requires is missing
    with pytest.raises(BuildError, match="secret nope is required"):
        build_df(
            "FROM busybox\nCOPY g /g\nRUN --mount=type=secret,id=nope,required=true true\n",
            {"g": "g\n"},
            store=store,
        )
    assert temp_leftovers(store) == []
    assert mounts_under(store.root) == []
    hits = []
    for text, files in (("COPY f /f", {"f": "f\n"}), ("COPY g /g", {"g": "g\n"})):
        built = build_df(f"FROM busybox\n{text}\nRUN true\n", files, store=store)
        hits.append(built.result.steps_cached)
    assert hits == [1, 1]  # each COPY came from the cache


def test_a_run_whose_workspace_cannot_be_made_leaves_the_step_below_cached(build_df, store, monkeypatch):
    real_make_temp_dir = Store.make_temp_dir
    made = []

    def second_step_dir_fails(self, prefix):
        if prefix == "step-":
            made.append(prefix)
            if len(made) == 2:  # the RUN's, with the COPY's layer pending below it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_make_temp_dir(self, prefix)

    monkeypatch.setattr(Store, "make_temp_dir", second_step_dir_fails)
    with pytest.raises(OSError, match="No space left"):
        build_df("FROM busybox\nCOPY f /f\nRUN true\n", {"f": "f\n"}, store=store)
    monkeypatch.undo()
    assert temp_leftovers(store) == []
    assert mounts_under(store.root) == []
    built = build_df("FROM busybox\nCOPY f /f\nRUN echo again\n", {"f": "f\n"}, store=store)
    assert built.result.steps_cached == 1  # the COPY's layer was written, and kept


def test_a_key_another_build_recorded_first_is_built_on(build_df, store, monkeypatch):
    other = build_df("FROM busybox\nRUN echo other > /stamp\n", store=store)
    other_layer = image_layers(other.image, "other")[-1]
    real_record = BuildCache.record
    raced = []

    def another_build_first(self, key, parent_key, layer, created_by, **options):
        if layer is not None and "date" in created_by and not raced:
            raced.append(key)  # as if another build had run the same step and recorded it first
            real_record(self, key, parent_key, other_layer, created_by)
        return real_record(self, key, parent_key, layer, created_by, **options)

    monkeypatch.setattr(BuildCache, "record", another_build_first)
    built = build_df("FROM busybox\nRUN date +%s%N > /stamp\nRUN cat /stamp > /copy\n", store=store)
    assert raced
    tree = built.tree()
    # the second RUN ran again, on the layer the key stands for: the image is one a build made
    assert tree["stamp"].data == b"other\n"
    assert tree["copy"].data == b"other\n"
    assert temp_leftovers(store) == []
    assert mounts_under(store.root) == []

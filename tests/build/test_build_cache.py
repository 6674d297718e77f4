"""The layer cache: what must hit, what must miss, and the stat cache on a large context."""

from __future__ import annotations

import json
import os
import time

import pytest

from imgbuild.builder.builder import Builder
from imgbuild.builder.options import BuildOptions
from imgbuild.builder.progress import Progress
from imgbuild.registry.push import push

pytestmark = pytest.mark.root

DOCKERFILE = "FROM busybox\nRUN echo before > /before\nCOPY data /data\nRUN cat /data > /after\n"


def _comparable(config: dict) -> dict:
    """The config without creation times (they differ between builds without SOURCE_DATE_EPOCH)."""
    result = {k: v for k, v in config.items() if k != "created"}
    result["history"] = [
        {k: v for k, v in h.items() if k != "created"} for h in config.get("history", [])
    ]
    return result


def test_identical_rebuild_is_all_cached(build_df, store):
    first = build_df(DOCKERFILE, {"data": "0123456789\n"}, store=store)
    assert (first.result.steps_cached, first.result.steps_run) == (0, 3)
    second = build_df(DOCKERFILE, context=first.context, store=store)
    assert (second.result.steps_cached, second.result.steps_run) == (3, 0)
    assert second.image.diff_ids == first.image.diff_ids
    assert _comparable(second.image.config) == _comparable(first.image.config)
    assert second.tree() == first.tree()


def test_a_cached_rebuild_with_the_same_tag_leaves_index_json_alone(build_df, store):
    first = build_df(DOCKERFILE, {"data": "x\n"}, store=store, tags=["same:1"])
    index = store.layout / "index.json"
    before = os.stat(index)
    second = build_df(DOCKERFILE, context=first.context, store=store, tags=["same:1"])
    assert second.result.steps_run == 0 and second.image.digest == first.image.digest
    after = os.stat(index)
    # not rewritten (a rename would give a new inode): nothing to fsync
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    other = build_df(DOCKERFILE, context=first.context, store=store, tags=["other:1"])
    assert os.stat(index).st_ino != before.st_ino and other.result.steps_run == 0


def test_identical_rebuild_with_source_date_epoch_is_the_same_image(build_df, store):
    first = build_df(DOCKERFILE, {"data": "x\n"}, store=store, source_date_epoch=1700000000)
    second = build_df(DOCKERFILE, context=first.context, store=store, source_date_epoch=1700000000)
    assert second.result.steps_run == 0
    assert second.image.digest == first.image.digest


def test_one_changed_byte_misses_from_that_copy_on(build_df, store):
    first = build_df(DOCKERFILE, {"data": "0123456789\n"}, store=store)
    data = first.context / "data"
    before = os.stat(data)
    data.write_text("0123456780\n")  # same size
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same mtime
    second = build_df(DOCKERFILE, context=first.context, store=store)
    assert (second.result.steps_cached, second.result.steps_run) == (1, 2)
    assert second.tree()["after"].data == b"0123456780\n"


@pytest.mark.parametrize("change", ["xattr", "same_size_bytes"])
def test_a_change_with_the_mtime_restored_misses_after_a_remembered_context(build_df, store, change):
    """The warm builds take the context's digest as remembered (one lstat per
    file, no xattr read); a change that only the ctime shows must still miss."""
    first = build_df(DOCKERFILE, {"data": "0123456789\n"}, store=store)
    time.sleep(0.2)  # files changed within 50 ms of a build are not remembered
    for _ in range(2):
        warm = build_df(DOCKERFILE, context=first.context, store=store)
        assert warm.result.steps_run == 0
    assert store.db.query("SELECT count(*) FROM selection_digests")[0][0] >= 1
    data = first.context / "data"
    before = os.stat(data)
    if change == "xattr":
        os.setxattr(data, "user.x", b"1")  # setfattr -n user.x -v 1 data
    else:
        data.write_text("0123456780\n")
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -d: the same mtime
    changed = build_df(DOCKERFILE, context=first.context, store=store)
    assert (changed.result.steps_cached, changed.result.steps_run) == (1, 2)


def test_touching_a_file_hits(build_df, store):
    first = build_df(DOCKERFILE, {"data": "0123456789\n"}, store=store)
    later = time.time() + 3600
    os.utime(first.context / "data", (later, later))
    second = build_df(DOCKERFILE, context=first.context, store=store)
    assert (second.result.steps_cached, second.result.steps_run) == (3, 0)
    assert second.image.diff_ids == first.image.diff_ids


def test_build_arg_seen_by_run_misses_and_undeclared_one_hits(build_df, store):
    dockerfile = "FROM busybox\nARG VERSION=1\nRUN echo $VERSION > /version\n"
    first = build_df(dockerfile, store=store, build_args={"VERSION": "1"})
    unrelated = build_df(
        dockerfile, context=first.context, store=store, build_args={"VERSION": "1", "OTHER": "x"}
    )
    assert unrelated.result.steps_run == 0
    changed = build_df(dockerfile, context=first.context, store=store, build_args={"VERSION": "2"})
    assert changed.result.steps_run == 1
    assert changed.tree()["version"].data == b"2\n"


def test_arg_declared_in_another_stage_does_not_touch_this_one(build_df, store):
    dockerfile = (
        "FROM busybox AS other\nARG ONLY_OTHER\nRUN echo $ONLY_OTHER > /o\n"
        "FROM busybox\nRUN echo main > /main\nCOPY --from=other /o /o\n"
    )
    first = build_df(dockerfile, store=store, build_args={"ONLY_OTHER": "1"})
    second = build_df(
        dockerfile, context=first.context, store=store, build_args={"ONLY_OTHER": "2"}
    )
    # the other stage's RUN and the COPY that reads its output miss; the main RUN hits
    assert (second.result.steps_cached, second.result.steps_run) == (1, 2)


def test_changed_base_image_digest_misses(build_df, store):
    dockerfile = "FROM busybox\nRUN echo on-base > /on-base\n"
    first = build_df(dockerfile, store=store)
    variant = build_df("FROM busybox\nRUN echo variant > /variant\n", store=store)
    store.tag("busybox:latest", variant.image.manifest_descriptor)
    second = build_df(dockerfile, context=first.context, store=store)
    assert second.result.steps_run == 1
    assert second.tree()["variant"].data == b"variant\n"


def test_label_cmd_and_an_arg_after_the_last_run_miss_nothing(build_df, store):
    # BuildKit's rule: a step that makes no layer does not invalidate the steps after it
    dockerfile = (
        "FROM busybox\nLABEL rev={rev}\nCMD [\"{cmd}\"]\nCOPY data /data\n"
        "RUN cat /data > /after\nARG LATE\nCOPY data /late\n"
    )
    first = build_df(dockerfile.format(rev=1, cmd="sh"), {"data": "d\n"}, store=store)
    edited = dockerfile.format(rev=2, cmd="true")
    second = build_df(edited, context=first.context, store=store, build_args={"LATE": "2"})
    assert (second.result.steps_cached, second.result.steps_run) == (3, 0)
    assert second.image.diff_ids == first.image.diff_ids
    assert (second.config["Labels"], second.config["Cmd"]) == ({"rev": "2"}, ["true"])


def test_arg_and_env_miss_at_the_first_run_after_them_not_at_copies(build_df, store):
    dockerfile = "FROM busybox\nARG V=1\nENV M={m}\nCOPY data /data\nRUN echo $V $M > /vm\nCOPY data /again\n"
    first = build_df(dockerfile.format(m="a"), {"data": "d\n"}, store=store)
    by_arg = build_df(dockerfile.format(m="a"), context=first.context, store=store, build_args={"V": "2"})
    assert (by_arg.result.steps_cached, by_arg.result.steps_run) == (1, 2)
    assert by_arg.tree()["vm"].data == b"2 a\n"
    by_env = build_df(dockerfile.format(m="b"), context=first.context, store=store)
    assert (by_env.result.steps_cached, by_env.result.steps_run) == (1, 2)
    assert by_env.tree()["vm"].data == b"1 b\n"


def _config_variant(store, tag: str, changes: dict) -> None:
    """busybox:latest with the same layers and ``changes`` in its container config."""
    base = store.load_image("busybox:latest")
    config = json.loads(json.dumps(base.config))
    config["config"].update(changes)
    store.tag(tag, store.write_image(config, base.layers).manifest_descriptor)


def test_base_image_with_the_same_layers_and_another_config_hits(build_df, store):
    # BuildKit keys a base image on its layers: what steps take from its config
    # (env, user, working directory) is in their own keys
    dockerfile = "FROM busybox\nCOPY data /abs\nRUN echo $FLAVOUR > /flavour\nCOPY data rel\n"
    first = build_df(dockerfile, {"data": "d\n"}, store=store)
    _config_variant(store, "busybox:latest", {"Labels": {"variant": "1"}})
    labelled = build_df(dockerfile, context=first.context, store=store)
    assert (labelled.result.steps_cached, labelled.result.steps_run) == (3, 0)
    assert labelled.config["Labels"] == {"variant": "1"}
    _config_variant(store, "busybox:latest", {"Env": ["FLAVOUR=new"] + labelled.config["Env"]})
    with_env = build_df(dockerfile, context=first.context, store=store)
    assert (with_env.result.steps_cached, with_env.result.steps_run) == (1, 2)
    assert with_env.tree()["flavour"].data == b"new\n"


def test_copy_keys_on_the_working_directory_only_for_a_relative_dest(build_df, store):
    dockerfile = "FROM busybox\nCOPY data /abs\nCOPY data rel\n"
    first = build_df(dockerfile, {"data": "d\n"}, store=store)
    _config_variant(store, "busybox:latest", {"WorkingDir": "/srv"})
    second = build_df(dockerfile, context=first.context, store=store)
    assert (second.result.steps_cached, second.result.steps_run) == (1, 1)
    assert second.tree()["srv/rel"].data == b"d\n"


def test_no_cache_runs_everything(build_df, store):
    first = build_df(DOCKERFILE, {"data": "d\n"}, store=store, source_date_epoch=0)
    second = build_df(
        DOCKERFILE, context=first.context, store=store, no_cache=True, source_date_epoch=0
    )
    assert (second.result.steps_cached, second.result.steps_run) == (0, 3)
    assert second.image.diff_ids == first.image.diff_ids  # timestamps clamped: the same layers


def test_no_cache_filter_runs_only_that_stage(build_df, store):
    dockerfile = (
        "FROM busybox AS deps\nRUN echo deps > /deps\n"
        "FROM busybox AS final\nCOPY --from=deps /deps /deps\nRUN echo final > /final\n"
    )
    epoch = {"source_date_epoch": 0}  # a rerun then makes the very same layer (times clamped)
    first = build_df(dockerfile, store=store, **epoch)
    filtered = build_df(
        dockerfile, context=first.context, store=store, no_cache_filter=["final"], **epoch
    )
    assert (filtered.result.steps_cached, filtered.result.steps_run) == (1, 2)
    by_index = build_df(
        dockerfile, context=first.context, store=store, no_cache_filter=["0"], **epoch
    )
    # deps runs again, makes the same layer, so the final stage's steps hit
    assert (by_index.result.steps_cached, by_index.result.steps_run) == (2, 1)


def test_pull_re_resolves_the_base_image(build_df, store, registry):
    name = f"{registry.host}/build-tests/pull-base:1"
    push(store, "busybox:latest", name)
    dockerfile = f"FROM {name}\nRUN echo child > /child\n"
    first = build_df(dockerfile, store=store)
    assert first.result.steps_run == 1
    # the registry's tag moves to another image
    newer = build_df("FROM busybox\nRUN echo newer > /newer-base\n", store=store, tags=["newer:1"])
    push(store, "newer:1", name)
    without_pull = build_df(dockerfile, context=first.context, store=store)
    assert without_pull.result.steps_run == 0
    assert "newer-base" not in without_pull.tree()
    with_pull = build_df(dockerfile, context=first.context, store=store, pull=True)
    assert with_pull.result.steps_run == 1
    assert with_pull.image.diff_ids[:2] == newer.image.diff_ids
    assert with_pull.tree()["newer-base"].data == b"newer\n"


def test_warm_rebuild_of_a_large_context_reads_almost_nothing(store, tmp_path):
    """A bind mount of the whole context puts a digest of all 20,000 files in the key.

    (A RUN rather than a COPY: the hashing is the same, and the test does not
    spend its time copying and compressing 20,000 files.)
    """
    context = tmp_path / "big"
    for index in range(20_000):
        directory = context / f"d{index // 500:02d}"
        if index % 500 == 0:
            directory.mkdir(parents=True)
        with open(directory / f"f{index:05d}", "wb") as handle:
            handle.write(b"%d\n" % index)
    (context / "Dockerfile").write_text(
        "FROM busybox\nRUN --mount=type=bind,target=/ctx ls /ctx/d39 | wc -l > /n\n"
    )
    time.sleep(0.1)  # past the stat cache's window for racily clean files

    def build_and_count() -> tuple[int, int]:
        builder = Builder(store, BuildOptions(context=context, progress="quiet"), Progress())
        result = builder.build()
        return builder.context.read_stats.files, result.steps_run

    cold_reads, cold_run = build_and_count()
    assert cold_reads >= 20_000 and cold_run == 1
    warm_reads, warm_run = build_and_count()
    assert warm_run == 0
    assert warm_reads <= 2
    (context / "d07" / "f03500").write_bytes(b"changed\n")
    changed_reads, changed_run = build_and_count()
    assert (changed_reads, changed_run) == (1, 1)


def test_heredoc_file_content_after_expansion_is_in_the_key(build_df, store):
    dockerfile = "FROM busybox\nARG NAME\nCOPY <<EOF /greeting\nhello $NAME\nEOF\n"
    first = build_df(dockerfile, store=store, build_args={"NAME": "first"})
    second = build_df(dockerfile, context=first.context, store=store, build_args={"NAME": "second"})
    assert second.result.steps_run == 1
    assert second.tree()["greeting"].data == b"hello second\n"


def test_empty_run_layer_is_cached_too(build_df, store):
    # the first RUN may keep the runtime's mount points (/proc, /sys); the second changes nothing
    dockerfile = "FROM busybox\nRUN true\nRUN true\nENV A=1\nRUN echo $A > /a\n"
    first = build_df(dockerfile, store=store)
    second = build_df(dockerfile, context=first.context, store=store)
    assert (second.result.steps_cached, second.result.steps_run) == (3, 0)
    assert second.image.diff_ids == first.image.diff_ids
    assert [h.get("empty_layer", False) for h in second.history[2:]] == [True, True, False]


def test_cache_index_records_creator_size_and_hits(build_df, store):
    dockerfile = "FROM busybox\nRUN echo indexed > /indexed\n"
    first = build_df(dockerfile, store=store)
    build_df(dockerfile, context=first.context, store=store)
    build_df(dockerfile, context=first.context, store=store)
    rows = store.db.query(
        "SELECT created_by, layer_size, layer_digest, hits, created, last_used FROM cache "
        "WHERE created_by LIKE '%echo indexed%'"
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["created_by"].startswith("RUN /bin/sh -c echo indexed > /indexed")
    assert row["layer_digest"] == first.image.layers[-1].digest
    assert row["layer_size"] == first.image.layers[-1].size
    assert row["hits"] == 2
    assert row["last_used"] > row["created"]


def test_copy_link_survives_a_change_of_base_image(build_df, store):
    dockerfile = "FROM busybox\nCOPY --link data /linked/data\nRUN cat /linked/data > /after\n"
    first = build_df(dockerfile, {"data": "linked\n"}, store=store)
    variant = build_df("FROM busybox\nRUN echo variant > /variant\n", store=store)
    store.tag("busybox:latest", variant.image.manifest_descriptor)
    second = build_df(dockerfile, context=first.context, store=store)
    assert (second.result.steps_cached, second.result.steps_run) == (
        1,
        1,
    )  # the RUN sees a new base
    assert second.image.diff_ids[-2] == first.image.diff_ids[-2]
    tree = second.tree()
    assert (tree["variant"].data, tree["after"].data) == (b"variant\n", b"linked\n")


def test_copy_from_stage_keys_on_the_files_it_copies(build_df, store):
    """The builder stage reruns and changes other files: the copied file is the same, so it hits."""
    dockerfile = (
        "FROM busybox AS builder\nARG VERSION\nRUN echo $VERSION > /log && echo same > /artifact\n"
        "FROM busybox\nCOPY --from=builder /artifact /artifact\nRUN cat /artifact > /used\n"
    )
    first = build_df(dockerfile, store=store, build_args={"VERSION": "1"})
    second = build_df(dockerfile, context=first.context, store=store, build_args={"VERSION": "2"})
    assert (second.result.steps_cached, second.result.steps_run) == (2, 1)
    assert second.tree()["used"].data == b"same\n"
    third = build_df(
        dockerfile.replace("echo same", "echo changed"), context=first.context, store=store
    )
    assert third.result.steps_run == 3
    assert third.tree()["used"].data == b"changed\n"


def test_bind_mount_from_stage_keys_on_the_files_it_shows(build_df, store):
    dockerfile = (
        "FROM busybox AS builder\nARG VERSION\nRUN echo $VERSION > /log && mkdir /out && echo same > /out/a\n"
        "FROM busybox\nRUN --mount=type=bind,from=builder,source=/out,target=/mnt cat /mnt/a > /used\n"
    )
    first = build_df(dockerfile, store=store, build_args={"VERSION": "1"})
    second = build_df(dockerfile, context=first.context, store=store, build_args={"VERSION": "2"})
    assert (second.result.steps_cached, second.result.steps_run) == (1, 1)
    third = build_df(
        dockerfile.replace("echo same", "echo new"), context=first.context, store=store
    )
    assert third.result.steps_run == 2
    assert third.tree()["used"].data == b"new\n"

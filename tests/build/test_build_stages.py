"""Multi-stage builds: what gets built, --target, parallel stages (a stage waits for
another only where it uses it), and a 120-layer base."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from imgbuild.errors import RunError
from imgbuild.image import Descriptor, Platform, new_config
from imgbuild.layer.write import write_layer

pytestmark = pytest.mark.root


def test_stages_the_target_does_not_need_are_not_built(build_df):
    built = build_df(
        "FROM busybox AS broken\nRUN echo this stage must not run; exit 1\n"
        "FROM busybox AS used\nRUN echo used > /used\n"
        "FROM busybox\nCOPY --from=used /used /used\n"
    )
    assert built.tree()["used"].data == b"used\n"
    assert set(built.result.stages) == {1, 2}


def test_target_stops_at_that_stage(build_df):
    built = build_df(
        "FROM busybox AS base\nRUN echo base > /base\n"
        'FROM base AS mid\nRUN echo mid > /mid\nCMD ["mid"]\n'
        "FROM mid\nRUN exit 1\n",
        target="mid",
    )
    tree = built.tree()
    assert (tree["base"].data, tree["mid"].data) == (b"base\n", b"mid\n")
    assert built.config["Cmd"] == ["mid"]


def _rendezvous_dockerfile(seconds: int) -> str:
    """Two independent stages that each wait for the other's marker: only concurrency passes."""

    def stage(me: str, other: str) -> str:
        return (
            f"FROM busybox AS {me}\n"
            f"RUN --mount=type=cache,id=rendezvous,target=/rv,sharing=shared "
            f"touch /rv/{me}; i=0; "
            f"while [ ! -e /rv/{other} ] && [ $i -lt {seconds * 10} ]; "
            "do sleep 0.1; i=$((i+1)); done; "
            f"test -e /rv/{other} && echo met > /{me}\n"
        )

    return (
        stage("left", "right")
        + stage("right", "left")
        + ("FROM scratch\nCOPY --from=left /left /left\nCOPY --from=right /right /right\n")
    )


def test_independent_stages_run_concurrently(build_df, store):
    built = build_df(_rendezvous_dockerfile(20), store=store, jobs=2)
    tree = built.tree()
    assert (tree["left"].data, tree["right"].data) == (b"met\n", b"met\n")


def test_with_one_job_the_rendezvous_times_out(build_df, store):
    """The same build with --jobs 1: proves the test above can fail."""
    with pytest.raises(RunError) as caught:
        build_df(_rendezvous_dockerfile(5), store=store, jobs=1)
    assert caught.value.exit_status == 1


def _waits_for_the_final_stage_dockerfile(seconds: int) -> str:
    """A stage that waits for a marker the final stage's first RUN writes,
    before the final stage copies from it: it passes only when the final
    stage starts before the stage it copies from has ended (as in BuildKit)."""
    mount = "--mount=type=cache,id=rendezvous-final,target=/rv,sharing=shared"
    return (
        "FROM busybox AS slow\n"
        f"RUN {mount} i=0; while [ ! -e /rv/final ] && [ $i -lt {seconds * 10} ]; "
        "do sleep 0.1; i=$((i+1)); done; test -e /rv/final && echo met > /slow\n"
        "FROM busybox\n"
        f"RUN {mount} touch /rv/final && echo own > /own\n"
        "COPY --from=slow /slow /slow\n"
    )


def test_a_stage_runs_its_own_steps_while_the_stage_it_copies_from_builds(build_df, store):
    built = build_df(_waits_for_the_final_stage_dockerfile(20), store=store, jobs=2)
    tree = built.tree()
    assert (tree["slow"].data, tree["own"].data) == (b"met\n", b"own\n")


def test_with_one_job_the_final_stage_starts_after_the_stage_it_copies_from(build_df, store):
    """The same build with --jobs 1: stages start in plan order, so the wait
    times out (and the test above can fail)."""
    with pytest.raises(RunError) as caught:
        build_df(_waits_for_the_final_stage_dockerfile(3), store=store, jobs=1)
    assert caught.value.exit_status == 1


# --- a deep base image ------------------------------------------------------------------


def _write_layer_dir(store, directory: Path) -> tuple[str, Descriptor]:
    with store.blob_writer() as blob:
        digests = write_layer(directory, blob, compression="gzip", source_date_epoch=0)
    store.record_layer(digests.digest, digests.diff_id, digests.media_type, digests.size)
    return digests.diff_id, Descriptor(digests.media_type, digests.digest, digests.size)


def make_deep_image(store, tag: str, count: int) -> None:
    """busybox plus ``count`` one-file layers; layer 60 deletes layer 59's file (a whiteout)."""
    base = store.load_image("busybox:latest")
    diff_ids, layers = list(base.diff_ids), list(base.layers)
    for number in range(1, count + 1):
        with tempfile.TemporaryDirectory(dir=store.tmp_dir) as work:
            root = Path(work)
            (root / f"layer-{number:03d}").write_text(f"layer {number}\n")
            if number == 60:
                os.mknod(root / "layer-059", stat.S_IFCHR | 0o000, os.makedev(0, 0))
            diff_id, layer = _write_layer_dir(store, root)
        diff_ids.append(diff_id)
        layers.append(layer)
    config = new_config(Platform.host())
    config["config"] = dict(base.config["config"])
    config["rootfs"]["diff_ids"] = diff_ids
    image = store.write_image(config, layers)
    store.tag(tag, image.manifest_descriptor)


def test_build_on_a_120_layer_base(build_df, store):
    make_deep_image(store, "deep:120", 120)
    built = build_df(
        "FROM deep:120\n"
        "RUN cat /layer-001 /layer-120 > /both && ls / | grep -c layer- > /count "
        "&& (test -e /layer-059 && echo present || echo deleted) > /whiteout\n",
        store=store,
    )
    tree = built.tree()
    assert tree["both"].data == b"layer 1\nlayer 120\n"
    assert tree["count"].data == b"119\n"
    assert tree["whiteout"].data == b"deleted\n"
    assert len(built.image.layers) == 122


def test_a_failing_stage_stops_the_stages_running_beside_it(
    store, tmp_path, imgbuild_cli, mounts_under
):
    """The other stage sleeps for 5 minutes; the build must end as soon as the failure is known."""
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM busybox AS slow\nRUN sleep 300\n"
        "FROM busybox AS failing\nRUN sleep 1; exit 4\n"
        "FROM scratch\nCOPY --from=slow / /slow/\nCOPY --from=failing / /failing/\n"
    )
    completed = imgbuild_cli(store.root, "--jobs", "2", str(context), timeout=120)
    assert completed.returncode == 1
    assert "exited with code 4" in completed.stderr
    assert mounts_under(store.root) == []

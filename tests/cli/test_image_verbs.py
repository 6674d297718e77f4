"""The image verbs: images, tag, rmi, inspect, history, save, load, fsck."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from imagetools import BUSYBOX, GROUP, PASSWD, make_busybox_image
from store.storetools import add_layer, blob_files, image_from_layers, make_small_image

from imgbuild.cli.images import created_since, human_duration, human_size
from imgbuild.store import Store

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(store_root):
    return Store(store_root)


@pytest.fixture
def busybox(store):
    return make_busybox_image(store, "busybox:latest")


def image_id(image) -> str:
    return image.config_descriptor.digest.split(":", 1)[1][:12]


# --- images -----------------------------------------------------------------------


def test_images_lists_tags_with_docker_columns(cli, store, busybox):
    newer = make_small_image(
        store, "team/app:1", {"f": "x"}, created="2024-05-06T07:08:09.123456789Z"
    )
    result = cli("images")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    rows = [re.split(r"\s{2,}", line) for line in lines[1:]]
    # SIZE is unpacked, as Docker shows it: the regular files (busybox, passwd, group).
    busybox_size = BUSYBOX.stat().st_size + len(PASSWD) + len(GROUP)
    # Newest first; IMAGE ID is the config digest, as in Docker.
    assert [row[:3] for row in rows] == [
        ["team/app", "1", image_id(newer)],
        ["busybox", "latest", image_id(busybox)],
    ]
    assert re.fullmatch(r"\d+ years ago", rows[1][3])
    assert rows[1][4] == human_size(busybox_size)
    # Columns line up: every row starts its IMAGE ID where the header does.
    column = lines[0].index("IMAGE ID")
    assert all(line[column:].startswith(row[2]) for line, row in zip(lines[1:], rows, strict=True))


def test_images_quiet_json_and_filter(cli, store, busybox):
    store.tag("busybox:1.36", busybox.manifest_descriptor)
    make_small_image(store, None, {"f": "untagged"})
    quiet = cli("images", "-q").stdout.split()
    assert len(quiet) == 2 and image_id(busybox) in quiet  # one line per image, not per tag

    rows = [json.loads(line) for line in cli("images", "--format", "json").stdout.splitlines()]
    by_tag = {(row["Repository"], row["Tag"]): row for row in rows}
    assert set(by_tag) == {("busybox", "latest"), ("busybox", "1.36"), ("<none>", "<none>")}
    assert by_tag["busybox", "latest"]["ID"] == image_id(busybox)  # short, as in Docker
    assert by_tag["busybox", "latest"]["Digest"] == busybox.digest

    filtered = cli("images", "busybox:1.36").stdout.splitlines()
    assert len(filtered) == 2 and filtered[1].startswith("busybox")


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0B"), (999, "999B"), (1000, "1kB"), (1036637, "1.04MB"), (2_130_000_000, "2.13GB")],
)
def test_sizes_read_as_docker_prints_them(size, text):
    assert human_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "Less than a second"),
        (45, "45 seconds"),
        (90, "About a minute"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (3 * 86400, "3 days"),
        (20 * 86400, "2 weeks"),
        (100 * 86400, "3 months"),
        (3 * 365 * 86400, "3 years"),
    ],
)
def test_ages_read_as_docker_prints_them(seconds, text):
    assert human_duration(seconds) == text


def test_created_since_parses_go_timestamps():
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert created_since("2024-01-01T09:00:00.123456789Z", now) == "3 hours ago"
    assert created_since("", now) == "N/A"


# --- tag and rmi --------------------------------------------------------------------


def test_tag_by_name_and_by_image_id(cli, store, busybox):
    assert cli("tag", "busybox", "localhost:5000/team/box:v1").exit_code == 0
    assert cli("tag", image_id(busybox), "docker.io/library/copy").exit_code == 0
    names = {name for name, _ in store.refs()}
    assert names == {"busybox:latest", "localhost:5000/team/box:v1", "copy:latest"}
    assert {d.digest for _, d in store.refs()} == {busybox.digest}


def test_tag_refuses_bad_names_and_unknown_sources(cli, busybox):
    bad = cli("tag", "busybox", "Not/Valid")
    assert bad.exit_code == 2 and "lowercase" in bad.stderr
    missing = cli("tag", "nope", "x:1")
    assert missing.exit_code == 1 and "no image named 'nope'" in missing.stderr


def test_rmi_of_an_unknown_name_fails_clearly(cli, busybox):
    result = cli("rmi", "nope:1")
    assert result.exit_code == 1
    assert "no such image: nope:1" in result.stderr


def test_rmi_untags_and_prunes_what_only_it_used(cli, store, busybox):
    shared = add_layer(store, {"shared": "layer"})
    first = image_from_layers(store, [shared], "first:1")
    second = image_from_layers(store, [shared, add_layer(store, {"own": "layer"})], "second:1")
    before = blob_files(store)

    result = cli("rmi", "first:1", "nope")
    assert result.exit_code == 1  # nope failed, first:1 was still removed
    assert "Untagged: first:1" in result.stdout
    assert f"Deleted: {first.digest}" in result.stdout
    assert "no such image: nope" in result.stderr
    gone = {first.digest, first.config_descriptor.digest}
    assert blob_files(store) == before - {d.split(":", 1)[1] for d in gone}
    assert store.load_image("second:1").digest == second.digest


def test_rmi_frees_the_layers_and_snapshots_a_load_unpacked(cli, store, busybox, tmp_path):
    """load unpacks every layer into a snapshot; rmi frees them with the image,
    as ``docker rmi`` does, and keeps what another image still uses."""
    from cli.foreignimage import umoci_image

    from imgbuild.image import chain_ids

    foreign = umoci_image(tmp_path / "umoci", "team/foreign:1", files={"f": os.urandom(30000)})
    assert cli("load", "-i", str(foreign.archive)).exit_code == 0
    image = store.load_image("team/foreign:1")
    rows = [row for row in store.db.snapshot_rows() if row["diff_id"] in image.diff_ids]
    assert rows, "load unpacks every layer"
    for layer, diff_id, chain_id in zip(busybox.layers, busybox.diff_ids, chain_ids(busybox.diff_ids), strict=True):
        store.ensure_snapshot(layer, diff_id, chain_id)  # as a build on busybox would
    busybox_rows = [row["id"] for row in store.db.snapshot_rows() if row["diff_id"] in busybox.diff_ids]
    assert busybox_rows

    result = cli("rmi", "team/foreign:1")
    assert result.exit_code == 0, result.stderr
    layers = {layer.digest for layer in image.layers}
    assert not layers & {"sha256:" + name for name in blob_files(store)}
    assert not any((store.snapshots_dir / str(row["id"])).exists() for row in rows)
    assert not {row["id"] for row in store.db.snapshot_rows()} & {row["id"] for row in rows}
    # busybox is still tagged: its snapshots stay
    assert {row["id"] for row in store.db.snapshot_rows()} >= set(busybox_rows)
    assert cli("fsck").exit_code == 0


def test_rmi_no_prune_keeps_blobs(cli, store, busybox):
    before = blob_files(store)
    result = cli("rmi", "--no-prune", "busybox")
    assert result.exit_code == 0 and result.stdout == "Untagged: busybox:latest\n"
    assert store.refs() == [] and blob_files(store) == before


def test_rmi_by_id_needs_force_when_several_tags_share_the_image(cli, store, busybox):
    store.tag("busybox:1.36", busybox.manifest_descriptor)
    refused = cli("rmi", image_id(busybox))
    assert refused.exit_code == 1 and "--force" in refused.stderr
    assert len(store.refs()) == 2

    forced = cli("rmi", "-f", image_id(busybox))
    assert forced.exit_code == 0
    assert "Untagged: busybox:1.36" in forced.stdout and "Untagged: busybox:latest" in forced.stdout
    assert store.refs() == [] and blob_files(store) == set()


# --- inspect and history ------------------------------------------------------------


def test_inspect_prints_descriptor_manifest_and_config(cli, busybox):
    result = cli("inspect", "busybox")
    assert result.exit_code == 0
    (document,) = json.loads(result.stdout)
    assert document["Id"] == busybox.config_descriptor.digest
    assert document["Digest"] == busybox.digest
    assert document["RepoTags"] == ["busybox:latest"]
    assert document["Descriptor"]["digest"] == busybox.digest
    assert document["Manifest"] == busybox.manifest
    assert document["ImageConfig"] == busybox.config
    assert document["Config"]["Env"] == busybox.config["config"]["Env"]  # Docker's Config


def test_inspect_reports_unknown_names_and_fails(cli, busybox):
    result = cli("inspect", "busybox", "nope")
    assert result.exit_code == 1
    assert [d["Name"] for d in json.loads(result.stdout)] == ["busybox"]
    assert "nope" in result.stderr


def test_history_is_newest_first_with_missing_ids_and_truncation(cli, store):
    long_command = "/bin/sh -c apt-get update && apt-get install -y curl ca-certificates git"
    history = [
        {"created": "2024-01-01T00:00:00Z", "created_by": "ADD rootfs.tar /"},
        {"created": "2024-01-02T00:00:00Z", "created_by": "ENV A=1", "empty_layer": True},
        {"created": "2024-01-03T00:00:00Z", "created_by": long_command, "comment": "by hand"},
    ]
    layers = [add_layer(store, {"a": "base"}), add_layer(store, {"b": "x" * 5000})]
    image = image_from_layers(store, layers, "hist:1", history=history)

    lines = cli("history", "hist:1").stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
    rows = [re.split(r"\s{2,}", line) for line in lines[1:]]
    assert [row[0] for row in rows] == [image_id(image), "<missing>", "<missing>"]
    assert rows[0][2] == long_command[:44] + "…"
    assert rows[0][3] == "5kB" and rows[0][4] == "by hand"  # unpacked, as Docker shows it
    assert rows[1][2:4] == ["ENV A=1", "0B"]
    assert rows[2][2:4] == ["ADD rootfs.tar /", "4B"]

    full = cli("history", "--no-trunc", "hist:1").stdout
    assert long_command in full and image.config_descriptor.digest in full
    as_json = [
        json.loads(line)
        for line in cli("history", "--format", "json", "hist:1").stdout.splitlines()
    ]
    assert [row["Size"] for row in as_json] == ["5kB", "0B", "4B"]


# --- save, load, fsck ---------------------------------------------------------------


def test_save_and_load_through_the_cli(cli, store, busybox, tmp_path, store_root):
    archive = tmp_path / "busybox.tar"
    assert cli("save", "busybox", "-o", str(archive), "--format", "docker").exit_code == 0
    assert cli("rmi", "busybox").exit_code == 0
    assert store.all_blobs() == []

    loaded = cli("load", "-i", str(archive))
    assert loaded.exit_code == 0
    assert loaded.stdout == "Loaded image: busybox:latest\n"
    assert store.resolve("busybox:latest").digest == busybox.digest


def test_load_of_a_missing_file_fails_clearly(cli, tmp_path):
    result = cli("load", "-i", str(tmp_path / "missing.tar"))
    assert result.exit_code == 1
    assert "cannot open archive" in result.stderr and "missing.tar" in result.stderr


def test_fsck_exit_codes(cli, store, busybox):
    clean = cli("fsck")
    assert clean.exit_code == 0 and "no problems" in clean.stdout

    store.blob_path(busybox.config_descriptor.digest).unlink()
    (store.tmp_dir / "blob-leftover").write_bytes(b"x")
    broken = cli("fsck")
    assert broken.exit_code == 1
    assert f"problem: missing-blob: {busybox.config_descriptor.digest}" in broken.stdout
    assert "leftover-temp" in broken.stdout and "--repair" in broken.stdout

    repaired = cli("fsck", "--repair")
    assert repaired.exit_code == 1  # the missing config cannot be repaired
    assert "repaired: removed leftover temp entry" in repaired.stdout
    assert "leftover-temp" not in repaired.stdout.replace(
        "repaired: removed leftover temp entry", ""
    )


def test_save_to_stdout_piped_into_load_from_stdin(store, busybox, tmp_path):
    other_root = tmp_path / "other"
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    imgbuild = [sys.executable, "-m", "imgbuild"]
    saver = subprocess.Popen(
        [*imgbuild, "--root", str(store.root), "save", "busybox"], stdout=subprocess.PIPE, env=env
    )
    loader = subprocess.run(
        [*imgbuild, "--root", str(other_root), "load"],
        stdin=saver.stdout,
        capture_output=True,
        text=True,
        env=env,
    )
    saver.stdout.close()
    assert saver.wait() == 0
    assert loader.returncode == 0, loader.stderr
    assert loader.stdout == "Loaded image: busybox:latest\n"
    assert Store(other_root).resolve("busybox:latest").digest == busybox.digest

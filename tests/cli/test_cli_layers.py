"""``imgbuild layers``: per layer its step, origin and changed paths, read
from images other tools wrote (a hand-written OCI layout, skopeo's archives,
umoci, docker) and from images imgbuild built; checked against what the
layers really hold."""

from __future__ import annotations

import json
import subprocess
import tracemalloc

import pytest
from cli.craftedimage import layer_tar, write_layout
from cli.foreignimage import umoci_image

LAYER0 = [
    ("dir", "etc"), ("file", "etc/a", b"a" * 100), ("file", "etc/b", b"b" * 200),
    ("dir", "usr"), ("file", "usr/big", b"u" * 5000),
    ("dir", "var"), ("dir", "var/cache"), ("file", "var/cache/x", b"x" * 300), ("file", "var/cache/y", b"y" * 400),
    ("dir", "srv"), ("dir", "srv/d"), ("file", "srv/d/p", b"p" * 1000), ("file", "srv/d/q", b"q" * 2000),
]
LAYER1 = [
    ("dir", "etc"), ("file", "etc/a", b"A" * 150), ("whiteout", "etc/b"),
    ("dir", "opt"), ("file", "opt/n", b"n" * 50), ("symlink", "opt/l", "n"),
]
LAYER2 = [
    ("dir", "srv"), ("whiteout", "srv/d"), ("dir", "usr"), ("whiteout", "usr/big"),
    ("dir", "var/cache"), ("opaque", "var/cache"), ("file", "var/cache/z", b"z" * 10),
]
HISTORY = [
    {"created_by": "/bin/sh -c #(nop) ADD file:0123 in / "},
    {"created_by": "/bin/sh -c #(nop)  ENV A=1", "empty_layer": True},
    {"created_by": "/bin/sh -c echo hi > /opt/n"},
    {"created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]", "empty_layer": True},
    {"created_by": "COPY z /var/cache/ # buildkit"},
]


@pytest.fixture
def crafted(tmp_path):
    layout = tmp_path / "layout"
    write_layout(layout, "v1", [LAYER0, LAYER1, LAYER2], HISTORY)
    return layout


def _json(cli, *argv):
    result = cli("layers", *argv, "--format", "json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _changes(layer):
    return {(row["change"], row["path"], row["size"]) for row in layer["files"]}


def test_layers_of_a_crafted_layout(cli, crafted):
    report = _json(cli, f"oci:{crafted}:v1")
    layers = report["layers"]
    assert [layer["instruction"] for layer in layers] == [
        "ADD file:0123 in /", "RUN echo hi > /opt/n", "COPY z /var/cache/"
    ]
    # the empty_layer steps made no layer: the history says which step made which layer
    assert [step["layer"] for step in report["history"]] == [0, None, 1, None, 2]
    assert [layer["origin"] for layer in layers] == ["unknown"] * 3  # not imgbuild's, no cache records
    assert [layer["size"] for layer in layers] == [9000, 200, 10]

    assert _changes(layers[0]) == {("added", "/" + e[1], len(e[2]) if e[0] == "file" else 0) for e in LAYER0}
    assert _changes(layers[1]) == {
        ("modified", "/etc", 0), ("modified", "/etc/a", 150), ("removed", "/etc/b", 200),
        ("added", "/opt", 0), ("added", "/opt/n", 50), ("added", "/opt/l", 0),
    }
    assert _changes(layers[2]) == {
        ("modified", "/srv", 0), ("removed", "/srv/d", 3000), ("modified", "/usr", 0), ("removed", "/usr/big", 5000),
        ("modified", "/var/cache", 0), ("removed", "/var/cache", 700), ("added", "/var/cache/z", 10),
    }
    removed = {row["path"]: row for row in layers[2]["files"] if row["change"] == "removed"}
    assert removed["/srv/d"]["type"] == "dir" and removed["/srv/d"]["paths"] == 3
    assert removed["/var/cache"]["type"] == "opaque" and removed["/var/cache"]["paths"] == 2
    assert [row for row in layers[1]["files"] if row["path"] == "/opt/l"][0]["link"] == "n"
    assert layers[1]["counts"] == {
        "added": 3, "added_bytes": 50, "modified": 2, "modified_bytes": 150, "removed": 1, "removed_bytes": 200
    }


def test_tree_names_the_layer_of_each_path(cli, crafted):
    report = _json(cli, f"oci:{crafted}:v1", "--tree")
    tree = {row["path"]: (row["layer"], row["size"]) for row in report["tree"]}
    assert tree == {
        "/etc": (1, 0), "/etc/a": (1, 150), "/opt": (1, 0), "/opt/n": (1, 50), "/opt/l": (1, 0),
        "/srv": (2, 0), "/usr": (2, 0), "/var": (0, 0), "/var/cache": (2, 0), "/var/cache/z": (2, 10),
    }
    text = cli("layers", f"oci:{crafted}:v1", "--tree").stdout
    assert "merged filesystem" in text and "/var/cache/z" in text


def test_filters_and_sorting(cli, crafted):
    report = _json(cli, f"oci:{crafted}:v1", "--changes", "removed", "--sort", "size")
    assert [[row["path"] for row in layer["files"]] for layer in report["layers"]] == [
        [], ["/etc/b"], ["/usr/big", "/srv/d", "/var/cache"]
    ]
    assert report["layers"][2]["counts"]["added"] == 1  # the counts stay whole
    report = _json(cli, f"oci:{crafted}:v1", "--min-size", "1000", "--path", "/srv/*")
    assert [[row["path"] for row in layer["files"]] for layer in report["layers"]] == [
        ["/srv/d/p", "/srv/d/q"], [], ["/srv/d"]
    ]
    bad = cli("layers", f"oci:{crafted}:v1", "--changes", "added,renamed")
    assert bad.exit_code == 2 and "renamed" not in bad.stdout and "--changes" in bad.stderr


def test_the_same_image_through_skopeo_archives(cli, crafted, tmp_path):
    want = _json(cli, f"oci:{crafted}:v1")["layers"]
    oci_archive, docker_archive = tmp_path / "oci.tar", tmp_path / "docker.tar"
    for target in (f"oci-archive:{oci_archive}:v1", f"docker-archive:{docker_archive}:crafted/img:v1"):
        subprocess.run(["skopeo", "--insecure-policy", "copy", f"oci:{crafted}:v1", target],
                       check=True, capture_output=True)
    for source in (f"oci-archive:{oci_archive}", f"docker-archive:{docker_archive}"):
        got = _json(cli, source)["layers"]
        assert [(layer["instruction"], layer["files"]) for layer in got] == [
            (layer["instruction"], layer["files"]) for layer in want
        ], source


def test_wrong_tag_and_missing_layout_are_named(cli, crafted, tmp_path):
    result = cli("layers", f"oci:{crafted}:v9")
    assert result.exit_code != 0 and "'v9'" in result.stderr and "v1" in result.stderr
    result = cli("layers", f"oci:{tmp_path}/nothing")
    assert result.exit_code != 0 and "nothing" in result.stderr
    assert "Traceback" not in result.stderr


def test_umoci_image_history_with_empty_layer(cli, tmp_path):
    foreign = umoci_image(tmp_path / "umoci", "team/lay:1", files={"opt/tool": b"t" * 3000})
    assert cli("load", "-i", str(foreign.archive)).exit_code == 0
    report = _json(cli, "team/lay:1")
    (layer,) = report["layers"]
    # umoci records "umoci config" as an empty_layer step before the step with the layer
    assert [(s["created_by"], s["layer"]) for s in report["history"]] == [("umoci config", None), ("umoci insert", 0)]
    assert layer["instruction"] == "umoci insert"
    files = {row["path"]: row for row in layer["files"]}
    assert files["/opt/tool"]["size"] == 3000 and files["/link"]["link"] == "etc/motd"


def test_a_20000_file_layer_is_streamed(cli, tmp_path):
    data = b"x" * 4096
    entries = [("dir", "many")] + [("file", f"many/f{i:05}", data) for i in range(20_000)]
    layout = tmp_path / "big"
    write_layout(layout, "big", [entries], [{"created_by": "many"}])
    assert len(layer_tar(entries)) > 80 << 20  # the layer's tar: more than the memory allowed below
    tracemalloc.start()
    result = cli("layers", f"oci:{layout}:big", "--format", "json", "--sort", "size")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.exit_code == 0, result.stderr
    (layer,) = json.loads(result.stdout)["layers"]
    assert layer["counts"]["added"] == 20_001 and layer["counts"]["added_bytes"] == 20_000 * 4096
    assert len(layer["files"]) == 10_000 and layer["files_left_out"] == 10_001
    # the paths are in memory (tens of MiB for 20,000), never the layer's bytes
    assert peak < 64 << 20, f"peak {peak >> 20} MiB"


def test_image_built_by_imgbuild_names_base_run_and_cached_layers(cli, store_root, tmp_path):
    from imagetools import make_busybox_image

    from imgbuild.store import Store

    make_busybox_image(Store(store_root), "busybox:latest")
    context = tmp_path / "context"
    context.mkdir()
    (context / "data.bin").write_bytes(b"d" * 4096)
    (context / "Dockerfile").write_text(
        "FROM busybox\n"
        "COPY data.bin /data.bin\n"
        "ENV MODE=x\n"
        "RUN rm /data.bin && echo made > /made.txt\n"
    )
    assert cli("build", "-q", "-t", "built:1", str(context)).exit_code == 0
    report = _json(cli, "built:1")
    assert [layer["origin"] for layer in report["layers"]] == ["base", "run", "run"]
    assert [layer["instruction"] for layer in report["layers"]][1:] == [
        "COPY data.bin /data.bin", "RUN rm /data.bin && echo made > /made.txt"
    ]
    env_step = [step for step in report["history"] if "MODE=x" in step["created_by"]]
    assert env_step and env_step[0]["layer"] is None
    assert _changes(report["layers"][1]) >= {("added", "/data.bin", 4096)}
    assert ("removed", "/data.bin", 4096) in _changes(report["layers"][2])
    assert ("added", "/made.txt", 5) in _changes(report["layers"][2])
    # the same build again takes every step from the cache
    assert cli("build", "-q", "-t", "built:1", str(context)).exit_code == 0
    report = _json(cli, "built:1")
    assert [layer["origin"] for layer in report["layers"]] == ["base", "cached", "cached"]
    # dive: /data.bin is in two layers (written, then whited out)
    assert {"path": "/data.bin", "count": 2, "wasted_bytes": 4096} in report["wasted"]["top_wasted"]


def test_a_layout_with_a_symlinked_or_special_blob_is_refused(cli, tmp_path):
    import os

    layout = tmp_path / "layout"
    config = write_layout(layout, "v1", [LAYER0], HISTORY[:1])
    index = json.loads((layout / "index.json").read_text())
    manifest_path = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads(manifest_path.read_text())
    layer_blob = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
    layer_blob.rename(tmp_path / "moved")
    layer_blob.symlink_to(tmp_path / "moved")  # the same bytes, behind a symlink
    result = cli("layers", f"oci:{layout}:v1")
    assert result.exit_code != 0 and "is a symbolic link, not a regular file" in result.stderr
    layer_blob.unlink()
    os.mkfifo(layer_blob)  # reading would block forever
    result = cli("layers", f"oci:{layout}:v1")
    assert result.exit_code != 0 and "not a regular file" in result.stderr
    assert config["rootfs"]["diff_ids"]


def test_tree_ignores_the_changes_filter(cli, crafted):
    report = _json(cli, f"oci:{crafted}:v1", "--tree", "--changes", "removed", "--path", "/etc/*")
    assert [row["path"] for row in report["tree"]] == ["/etc/a"]
    text = cli("layers", f"oci:{crafted}:v1", "--changes", "removed").stdout
    assert "-     700B  /var/cache/* (opaque: all below)" in text

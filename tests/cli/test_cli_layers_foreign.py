"""``layers`` and ``diff`` on images buildah built and on an image pulled from
a registry on loopback."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
from cli.craftedimage import write_layout
from cli.test_cli_layers import HISTORY, LAYER0, LAYER1, LAYER2
from comparetools import make_buildah, remove_buildah


@pytest.fixture
def buildah(tmp_path):
    tool = make_buildah(tmp_path / "buildah")
    yield tool
    assert remove_buildah(tool) == []


def test_buildah_image_layers_and_diff(cli, buildah, tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    (context / "a1").write_bytes(b"1" * 1000)
    (context / "a2").write_bytes(b"2" * 3000)
    (context / "big").write_bytes(b"b" * 20_000)
    (context / "Dockerfile").write_text(
        "FROM scratch\nCOPY a1 /app/a\nENV MODE=one\nCOPY big /app/big\nCOPY a2 /app/a\n"
    )
    built = buildah.build(context / "Dockerfile", context, "bh:1", "--layers")
    assert built.returncode == 0, built.stderr
    layout = tmp_path / "layout"
    buildah.push_oci("bh:1", layout, "one")

    report = json.loads(cli("layers", f"oci:{layout}:one", "--format", "json").stdout)
    layers = report["layers"]
    assert [layer["instruction"].split(" ")[0] for layer in layers] == ["COPY", "COPY", "COPY"]
    env = [step for step in report["history"] if "MODE=one" in step["created_by"]]
    assert env and env[0]["empty_layer"] and env[0]["layer"] is None
    files = [{(r["change"], r["path"], r["size"]) for r in layer["files"] if r["type"] == "file"} for layer in layers]
    assert files == [{("added", "/app/a", 1000)}, {("added", "/app/big", 20_000)}, {("modified", "/app/a", 3000)}]
    assert report["wasted"]["top_wasted"] == [{"path": "/app/a", "count": 2, "wasted_bytes": 4000}]
    assert report["wasted"]["wasted_bytes"] == 4000

    (context / "Dockerfile").write_text("FROM scratch\nCOPY a2 /app/a\nENV MODE=two\n")
    assert buildah.build(context / "Dockerfile", context, "bh:2", "--layers").returncode == 0
    buildah.push_oci("bh:2", layout, "two")
    diff = json.loads(cli("diff", f"oci:{layout}:one", f"oci:{layout}:two", "--format", "json",
                          "--ignore-timestamps").stdout)
    assert {row["field"]: row["b"] for row in diff["config"]}["Env.MODE"] == "two"
    assert [row["path"] for row in diff["files"]["removed"]] == ["/app/big"]
    assert diff["files"]["changed"] == [] and diff["files"]["added"] == []  # /app/a holds a2 in both


def test_image_pulled_from_a_registry(cli, registry, tmp_path):
    layout = tmp_path / "layout"
    write_layout(layout, "v1", [LAYER0, LAYER1, LAYER2], HISTORY)
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
                    f"docker://{registry.host}/crafted/layers:v1"], check=True, capture_output=True)
    from_layout = json.loads(cli("layers", f"oci:{layout}:v1", "--format", "json").stdout)
    pulled = cli("layers", f"{registry.host}/crafted/layers:v1", "--format", "json")
    assert pulled.exit_code == 0, pulled.stderr
    report = json.loads(pulled.stdout)
    assert [layer["files"] for layer in report["layers"]] == [layer["files"] for layer in from_layout["layers"]]
    assert report["wasted"] == from_layout["wasted"]
    # it is in the store now, under the name pull gives it; docker:// always asks the registry
    assert cli("images", "-q", f"{registry.host}/crafted/layers:v1").stdout.strip()
    again = cli("layers", f"docker://{registry.host}/crafted/layers:v1", "--format", "json")
    assert again.exit_code == 0 and json.loads(again.stdout)["digest"] == report["digest"]
    missing = cli("layers", "nosuchimage:1")
    assert missing.exit_code != 0 and "nosuchimage" in missing.stderr


def test_docker_built_image_from_docker_save(cli, tmp_path):
    from dockertools import running_dockerd

    context = tmp_path / "context"
    context.mkdir()
    (context / "a1").write_bytes(b"1" * 1000)
    (context / "a2").write_bytes(b"2" * 3000)
    (context / "Dockerfile").write_text("FROM scratch\nCOPY a1 /app/a\nENV MODE=one\nCOPY a2 /app/a\nCMD [\"/app/a\"]\n")
    archive = tmp_path / "docker.tar"
    # a short directory: containerd's socket path must fit in a sockaddr_un
    with running_dockerd(Path(tempfile.mkdtemp(prefix="imgbuild-dk-"))) as docker:
        docker.run("build", "--network", "none", "-t", "dk/layers:1", str(context), buildkit=False)
        docker.run("save", "-o", str(archive), "dk/layers:1")
    report = json.loads(cli("layers", f"docker-archive:{archive}", "--format", "json").stdout)
    # Docker's classic builder marks ENV and CMD as empty_layer steps between the COPY layers
    assert [(step["instruction"].split(" ")[0], step["layer"]) for step in report["history"]] == [
        ("COPY", 0), ("ENV", None), ("COPY", 1), ("CMD", None)
    ]
    files = [{(r["change"], r["path"], r["size"]) for r in layer["files"] if r["type"] == "file"}
             for layer in report["layers"]]
    assert files == [{("added", "/app/a", 1000)}, {("modified", "/app/a", 3000)}]
    assert report["wasted"]["wasted_bytes"] == 4000 and report["wasted"]["user_size_bytes"] == 3000
    assert report["wasted"]["user_wasted_percent"] == pytest.approx(4000 / 3000)

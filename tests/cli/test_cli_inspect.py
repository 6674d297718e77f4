"""``imgbuild inspect``: Docker's fields and ``-f`` templates, on an image umoci made."""

from __future__ import annotations

import json

import pytest
from cli.foreignimage import umoci_image

ENV = ["PATH=/bin", "GREETING=hello world"]
LABELS = {"org.example.team": "build", "html": "<b>&</b>"}
FILES = {"etc/motd": b"hello from umoci\n", "app/data.bin": b"\x00" * 5000, "app/empty": b""}


@pytest.fixture
def foreign(cli, tmp_path):
    image = umoci_image(
        tmp_path / "umoci", "umoci/app:1", env=ENV, cmd=["sh", "-c", "echo hi"], labels=LABELS, files=FILES
    )
    loaded = cli("load", "-i", str(image.archive))
    assert loaded.exit_code == 0, loaded.stderr
    return image


def test_inspect_has_dockers_top_level_fields(cli, foreign):
    result = cli("inspect", "umoci/app:1")
    assert result.exit_code == 0, result.stderr
    (document,) = json.loads(result.stdout)
    assert document["Id"] == foreign.config_digest  # the image ID is the config digest, as in Docker
    assert document["RepoTags"] == ["umoci/app:1"]
    assert document["RepoDigests"] == [f"umoci/app@{foreign.manifest_digest}"]
    assert document["Digest"] == foreign.manifest_digest
    assert document["Architecture"] and document["Os"] == "linux"
    assert document["Created"].startswith("20")
    assert document["Size"] == foreign.regular_bytes == 5000 + len(b"hello from umoci\n")
    config = document["Config"]
    assert config["Env"] == ENV and config["Cmd"] == ["sh", "-c", "echo hi"]
    assert config["Entrypoint"] is None and config["Labels"] == LABELS
    assert list(config)[:3] == ["Hostname", "Domainname", "User"]  # Docker's container.Config order
    assert document["RootFS"]["Type"] == "layers" and len(document["RootFS"]["Layers"]) == 1
    assert document["ImageConfig"]["config"]["Env"] == ENV  # the stored config, untouched


def test_inspect_by_image_id_and_by_digest_is_the_same_image(cli, foreign):
    by_id = json.loads(cli("inspect", foreign.config_digest.split(":")[1][:12]).stdout)
    by_digest = json.loads(cli("inspect", foreign.manifest_digest).stdout)
    assert by_id[0]["Id"] == by_digest[0]["Id"] == foreign.config_digest


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{.Id}}", "{config}"),
        ("{{.Config.Env}}", "[PATH=/bin GREETING=hello world]"),
        ('{{index .Config.Labels "org.example.team"}}', "build"),
        ("{{.Config.Entrypoint}} {{.Config.Cmd}}", "[] [sh -c echo hi]"),
        ("{{range .RepoTags}}tag={{.}};{{end}}", "tag=umoci/app:1;"),
        ("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}} {{end}}", "html=<b>&</b> org.example.team=build "),
        ("{{.Os}}/{{.Architecture}} {{.Size}}", "linux/{arch} 5017"),
        ("{{if .Config.Entrypoint}}entrypoint{{else}}no entrypoint{{end}}", "no entrypoint"),
        ("{{join .RepoDigests \",\"}}", "umoci/app@{manifest}"),
    ],
)
def test_inspect_format_templates(cli, foreign, template, expected):
    arch = json.loads(cli("inspect", "umoci/app:1").stdout)[0]["Architecture"]
    result = cli("inspect", "-f", template, "umoci/app:1")
    assert result.exit_code == 0, result.stderr
    wanted = expected.format(config=foreign.config_digest, manifest=foreign.manifest_digest, arch=arch)
    assert result.stdout == wanted + "\n"


def test_inspect_json_function_writes_what_docker_writes(cli, foreign):
    result = cli("inspect", "--format", "{{json .Config}}", "umoci/app:1")
    assert result.exit_code == 0, result.stderr
    line = result.stdout.strip()
    assert "\\u003cb\\u003e\\u0026" in line and " " not in line.replace("hello world", "").replace("echo hi", "")
    config = json.loads(line)
    assert config["Env"] == ENV and config["Labels"] == LABELS and config["Entrypoint"] is None
    assert "ExposedPorts" not in config and "Healthcheck" not in config  # omitempty, as in Docker


def test_inspect_one_line_per_name(cli, foreign):
    cli("tag", "umoci/app:1", "other:2")
    result = cli("inspect", "-f", "{{.Id}} {{.RepoTags}}", "umoci/app:1", "other:2")
    assert result.stdout.splitlines() == [f"{foreign.config_digest} [other:2 umoci/app:1]"] * 2


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{.Nope}}", "can't evaluate field Nope"),
        ("{{.Id", "unclosed action"),
        ("{{range .RepoTags}}", "has no {{end}}"),
        ('{{template "x"}}', "not supported"),
        ("{{frobnicate .Id}}", 'function "frobnicate" not defined'),
    ],
)
def test_inspect_bad_templates_are_usage_errors(cli, foreign, template, message):
    result = cli("inspect", "-f", template, "umoci/app:1")
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""

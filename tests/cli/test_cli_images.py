"""``imgbuild images``: --digests, --filter, -a, --format, and SIZE unpacked as Docker shows it."""

from __future__ import annotations

import json
import re

import pytest
from cli.foreignimage import umoci_image
from imagetools import make_busybox_image
from store.storetools import make_small_image

from imgbuild.store import Store

FILES = {"srv/data.bin": b"\x01" * 4000, "srv/readme": b"read me\n"}


@pytest.fixture
def stocked(cli, store_root, tmp_path):
    """A umoci image (loaded from skopeo's archive), busybox, and one untagged image."""
    foreign = umoci_image(tmp_path / "umoci", "team/umoci:1", files=FILES)
    assert cli("load", "-i", str(foreign.archive)).exit_code == 0
    store = Store(store_root)
    busybox = make_busybox_image(store, "busybox:latest")
    untagged = make_small_image(store, None, {"f": "untagged"})
    return foreign, busybox, untagged


def _rows(stdout: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line) for line in stdout.splitlines()]


def test_digests_column_is_the_manifest_digest(cli, stocked):
    foreign, busybox, _ = stocked
    rows = _rows(cli("images", "--digests").stdout)
    assert rows[0] == ["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"]
    by_name = {(row[0], row[1]): row for row in rows[1:]}
    assert by_name["team/umoci", "1"][2] == foreign.manifest_digest
    assert by_name["team/umoci", "1"][3] == foreign.config_digest.split(":")[1][:12]
    assert by_name["busybox", "latest"][2] == busybox.digest


def test_size_is_unpacked_as_docker_shows_it(cli, stocked):
    rows = _rows(cli("images", "team/umoci").stdout)
    assert rows[1][-1] == "4.01kB"  # 4000 + 8 bytes of regular files; the gzip blob is far smaller
    row = json.loads(cli("images", "--format", "json", "team/umoci").stdout)
    assert row["Size"] == row["VirtualSize"] == "4.01kB"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["dangling=true"], ["<none>:<none>"]),
        (["dangling=false"], ["busybox:latest", "team/umoci:1"]),
        (["reference=busybox"], ["busybox:latest"]),
        (["reference=team/*"], ["team/umoci:1"]),
        (["reference=*"], ["busybox:latest"]),  # as in Go's path.Match, * does not cross a /
        (["reference=*/*:1"], ["team/umoci:1"]),
        (["reference=busybox:l*"], ["busybox:latest"]),
        (["dangling=false", "reference=team/umoci:2"], []),
    ],
)
def test_filters(cli, stocked, filters, expected):
    argv = ["images", "--format", "{{.Repository}}:{{.Tag}}"]
    for text in filters:
        argv += ["--filter", text]
    result = cli(*argv)
    assert result.exit_code == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == expected


def test_all_is_accepted_and_lists_the_same(cli, stocked):
    columns = "{{.Repository}} {{.Tag}} {{.ID}} {{.Size}}"  # CREATED may tick between the two
    listed = cli("images", "-a", "--format", columns)
    assert listed.exit_code == 0 and len(listed.stdout.splitlines()) == 3
    assert listed.stdout == cli("images", "--format", columns).stdout


def test_format_templates_and_json(cli, stocked):
    foreign, busybox, untagged = stocked
    ids = cli("images", "--format", "{{.ID}}", "--filter", "reference=team/umoci").stdout
    assert ids == foreign.config_digest.split(":")[1][:12] + "\n"
    full = cli("images", "--no-trunc", "--format", "{{.ID}} {{.Digest}}", "team/umoci").stdout
    assert full == f"{foreign.config_digest} {foreign.manifest_digest}\n"

    rows = [json.loads(line) for line in cli("images", "--format", "json").stdout.splitlines()]
    assert len(rows) == 3
    assert set(rows[0]) == {
        "Containers", "CreatedAt", "CreatedSince", "Digest", "ID", "Repository",
        "SharedSize", "Size", "Tag", "UniqueSize", "VirtualSize",
    }
    dangling = next(row for row in rows if row["Repository"] == "<none>")
    assert dangling["ID"] == untagged.config_descriptor.digest.split(":")[1][:12]
    busybox_row = next(row for row in rows if row["Repository"] == "busybox")
    assert busybox_row["CreatedAt"] == "1970-01-01 00:00:00 +0000 UTC"

    # "\t" as typed in a shell (two characters), which the docker CLI turns into a tab
    table = cli("images", "--format", r"table {{.Repository}}\t{{.Size}}", "--filter", "dangling=false")
    lines = table.stdout.splitlines()
    assert _rows(table.stdout)[0] == ["REPOSITORY", "SIZE"]
    assert lines[1].index(lines[1].split()[1]) == lines[0].index("SIZE")  # aligned columns


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--filter", "color=red"], "dangling, reference and label"),
        (["--filter", "dangling=maybe"], "true or false"),
        (["--format", "{{.Nope}}"], "can't evaluate field Nope"),
    ],
)
def test_bad_filters_and_formats_are_usage_errors(cli, stocked, argv, message):
    result = cli("images", *argv)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_docker_image_subcommands_are_the_verbs(cli, stocked):
    foreign, *_ = stocked
    assert cli("image", "ls", "--format", "{{.ID}}", "team/umoci").stdout == cli(
        "images", "--format", "{{.ID}}", "team/umoci").stdout == foreign.config_digest.split(":")[1][:12] + "\n"
    assert cli("image", "inspect", "-f", "{{.Id}}", "team/umoci:1").stdout == foreign.config_digest + "\n"
    assert cli("image", "rm", "team/umoci:1").exit_code == 0
    assert cli("images", "team/umoci", "-q").stdout == ""

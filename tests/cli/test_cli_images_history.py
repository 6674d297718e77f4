"""``history --format json`` speaks the key style of ``images --format json`` (Docker's)."""

from __future__ import annotations

import json

from cli.foreignimage import umoci_image

FILES = {"opt/tool": b"#!/bin/sh\n" + b"#" * 2990}


def test_history_json_keys_match_images_json(cli, tmp_path):
    foreign = umoci_image(tmp_path / "umoci", "team/hist:1", cmd=["sh"], files=FILES)
    assert cli("load", "-i", str(foreign.archive)).exit_code == 0

    (image_row,) = [json.loads(line) for line in cli("images", "--format", "json").stdout.splitlines()]
    history = [json.loads(line) for line in cli("history", "--format", "json", "team/hist:1").stdout.splitlines()]
    assert [set(row) for row in history] == [
        {"ID", "CreatedAt", "CreatedSince", "CreatedBy", "Size", "Comment"}
    ] * len(history)
    # The keys both have mean the same and read the same.
    assert history[0]["ID"] == image_row["ID"] == foreign.config_digest.split(":")[1][:12]
    assert [row["ID"] for row in history[1:]] == ["<missing>"] * (len(history) - 1)
    assert history[0]["Size"] == image_row["Size"] == "3kB"  # the layer unpacked: 3000 bytes
    assert [row["CreatedBy"] for row in history] == ["umoci insert", "umoci config"]
    assert history[0]["CreatedAt"][:4] == image_row["CreatedAt"][:4] and history[0]["CreatedAt"].endswith(" +0000 UTC")

    raw = [json.loads(line) for line in
           cli("history", "--format", "json", "--no-trunc", "-H", "false", "team/hist:1").stdout.splitlines()]
    assert raw[0]["ID"] == foreign.config_digest and raw[0]["Size"] == "3000"
    assert raw[0]["CreatedAt"].endswith("Z")  # RFC 3339 as the config has it

    template = cli("history", "--format", "{{.CreatedBy}}|{{.Size}}", "team/hist:1")
    assert template.stdout.splitlines() == ["umoci insert|3kB", "umoci config|0B"]

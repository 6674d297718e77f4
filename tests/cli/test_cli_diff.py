"""``imgbuild diff A B``: config, file and package differences between two
images written entry by entry, so every expected difference is known here."""

from __future__ import annotations

import json
import subprocess

import pytest
from cli.craftedimage import write_layout

STATUS_A = b"""Package: libc6
Status: install ok installed
Multi-Arch: same
Architecture: amd64
Version: 2.36-9

Package: curl
Status: install ok installed
Version: 7.88.1-10

Package: gone-but-configured
Status: deinstall ok config-files
Version: 1.0
"""
STATUS_B = STATUS_A.replace(b"7.88.1-10", b"8.5.0-2") + b"""
Package: jq
Status: install ok installed
Description: a JSON processor
 with a continuation line: Version: 9
Version: 1.6-2
"""
REQUESTS = "usr/lib/python3/dist-packages/requests-2.28.1.dist-info"
BASE = [
    ("dir", "etc"), ("file", "etc/conf", b"one\n"), ("file", "etc/touched", b"same\n"),
    ("file", "etc/owned", b"o\n"), ("file", "old.txt", b"old\n"), ("dir", "bin"),
    ("file", "bin/tool", b"#!/bin/sh\n", 0o755), ("symlink", "lnk", "etc/conf"),
    ("file", "var/lib/dpkg/status", STATUS_A),
    ("file", f"{REQUESTS}/METADATA", b"Metadata-Version: 2.1\nName: requests\nVersion: 2.28.1\n\nVersion: 0\n"),
    ("file", "usr/lib/python3/dist-packages/Typing_Extensions-4.0.dist-info/METADATA",
     b"Name: Typing_Extensions\nVersion: 4.0\n"),
    ("file", "app/node_modules/left-pad/package.json", b'{"name": "left-pad", "version": "1.0.0"}'),
    ("file", "app/node_modules/@scope/x/package.json", b'{"name": "@scope/x", "version": "2.0.0"}'),
]
CHANGE = [
    ("file", "etc/conf", b"two\n"), ("file", "etc/touched", b"same\n", 0o644, 0, 1_800_000_000),
    ("file", "etc/owned", b"o\n", 0o644, 1000), ("whiteout", "old.txt"), ("file", "new.txt", b"new\n"),
    ("file", "bin/tool", b"#!/bin/sh\n", 0o700), ("symlink", "lnk", "etc/other"),
    ("file", "var/lib/dpkg/status", STATUS_B), ("whiteout", REQUESTS),
    ("file", "usr/lib/python3/dist-packages/requests-2.31.0.dist-info/METADATA", b"Name: requests\nVersion: 2.31.0\n"),
    ("file", "app/node_modules/left-pad/package.json", b'{"name": "left-pad", "version": "1.3.0"}'),
    ("whiteout", "app/node_modules/@scope"),
    ("file", "app/node_modules/lodash/package.json", b'{"name": "lodash", "version": "4.17.21"}'),
]


@pytest.fixture
def images(tmp_path):
    layout = tmp_path / "layout"
    write_layout(layout, "a", [BASE], [{"created_by": "base", "created": "2026-01-01T00:00:00Z"}],
                 {"Env": ["PATH=/bin", "KEEP=1"], "Cmd": ["sh"], "Labels": {"v": "1"}})
    write_layout(layout, "b", [BASE, CHANGE],
                 [{"created_by": "base", "created": "2026-01-01T00:00:00Z"}, {"created_by": "change"}],
                 {"Env": ["PATH=/usr/bin:/bin", "KEEP=1", "FOO=1"], "Cmd": ["sh"], "User": "app",
                  "Labels": {"v": "2", "new": "x"}})
    return f"oci:{layout}:a", f"oci:{layout}:b"


def _diff(cli, *argv):
    result = cli("diff", *argv, "--format", "json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_config_and_file_differences(cli, images):
    report = _diff(cli, *images)
    config = {row["field"]: (row["a"], row["b"]) for row in report["config"]}
    assert config == {
        "User": (None, "app"), "Env.PATH": ("/bin", "/usr/bin:/bin"), "Env.FOO": (None, "1"),
        "Labels.v": ("1", "2"), "Labels.new": (None, "x"), "history": (["base"], ["base", "change"]),
    }
    files = report["files"]
    assert [row["path"] for row in files["added"]] == [
        "/app/node_modules/lodash", "/app/node_modules/lodash/package.json", "/new.txt",
        "/usr/lib/python3/dist-packages/requests-2.31.0.dist-info",
        "/usr/lib/python3/dist-packages/requests-2.31.0.dist-info/METADATA",
    ]
    assert [row["path"] for row in files["removed"]] == [
        "/app/node_modules/@scope", "/app/node_modules/@scope/x", "/app/node_modules/@scope/x/package.json",
        "/old.txt", f"/{REQUESTS}", f"/{REQUESTS}/METADATA",
    ]
    changed = {row["path"]: row["changes"] for row in files["changed"]}
    assert changed == {
        "/etc/conf": ["content"], "/etc/touched": ["mtime"], "/etc/owned": ["owner"], "/bin/tool": ["mode"],
        "/lnk": ["link"], "/var/lib/dpkg/status": ["content"],
        "/app/node_modules/left-pad/package.json": ["content"],
    }
    conf = next(row for row in files["changed"] if row["path"] == "/etc/conf")
    import hashlib

    assert conf["a"]["sha256"] == "sha256:" + hashlib.sha256(b"one\n").hexdigest()
    assert conf["b"]["sha256"] == "sha256:" + hashlib.sha256(b"two\n").hexdigest()
    assert next(r for r in files["changed"] if r["path"] == "/lnk")["b"]["link"] == "etc/other"


def test_ignore_timestamps(cli, images):
    report = _diff(cli, *images, "--ignore-timestamps")
    changed = {row["path"] for row in report["files"]["changed"]}
    assert "/etc/touched" not in changed and "/etc/conf" in changed


def test_package_differences(cli, images):
    packages = _diff(cli, *images, "--packages")["packages"]
    assert packages["debian"] == {
        "added": [{"name": "jq", "version": "1.6-2"}],
        "removed": [],
        "changed": [{"name": "curl", "a": "7.88.1-10", "b": "8.5.0-2"}],
    }
    assert packages["python"] == {
        "added": [], "removed": [], "changed": [{"name": "requests", "a": "2.28.1", "b": "2.31.0"}],
    }
    assert packages["npm"] == {
        "added": [{"name": "lodash", "version": "4.17.21"}],
        "removed": [{"name": "@scope/x", "version": "2.0.0"}],
        "changed": [{"name": "left-pad", "a": "1.0.0", "b": "1.3.0"}],
    }
    same = _diff(cli, images[0], images[0], "--packages")
    assert same["config"] == [] and same["files"]["counts"] == {"added": 0, "removed": 0, "changed": 0}
    assert all(not any(v.values()) for v in same["packages"].values())
    text = cli("diff", *images, "--packages").stdout
    assert "~ curl 7.88.1-10 -> 8.5.0-2" in text and "~ /etc/conf (content)" in text


def test_diff_of_docker_archive_and_the_layout_it_came_from(cli, images, tmp_path):
    archive = tmp_path / "b.tar"
    layout_b = images[1].removeprefix("oci:")
    subprocess.run(["skopeo", "--insecure-policy", "copy", f"oci:{layout_b}", f"docker-archive:{archive}:team/b:1"],
                   check=True, capture_output=True)
    report = _diff(cli, images[1], f"docker-archive:{archive}", "--packages")
    assert report["files"]["counts"] == {"added": 0, "removed": 0, "changed": 0}
    assert all(not any(v.values()) for v in report["packages"].values())


def test_hostile_package_files_are_skipped(cli, tmp_path):
    deep = b"[" * 200_000 + b"]" * 200_000  # json.loads recurses once per level
    layout = tmp_path / "layout"
    write_layout(layout, "a", [[("file", "app/node_modules/deep/package.json", deep)]], [{"created_by": "a"}])
    write_layout(layout, "b", [[("file", "app/node_modules/ok/package.json", b'{"name": "ok", "version": "1"}'),
                                ("file", "app/node_modules/bad/package.json", b"{not json")]],
                 [{"created_by": "b"}])
    report = _diff(cli, f"oci:{layout}:a", f"oci:{layout}:b", "--packages")
    assert report["packages"]["npm"]["added"] == [{"name": "ok", "version": "1"}]
    assert report["packages"]["npm"]["removed"] == []

"""``imgbuild diff`` between two images imgbuild built: a changed base step,
an added RUN, Debian packages from a dpkg status file the build copied in."""

from __future__ import annotations

import json

from imagetools import make_busybox_image

from imgbuild.store import Store

STATUS = """Package: busybox
Status: install ok installed
Version: {busybox}

Package: tzdata
Status: install ok installed
Version: 2024a-0
"""


def _build(cli, context, tag, status, dockerfile):
    (context / "status").write_text(status)
    (context / "Dockerfile").write_text(dockerfile)
    result = cli("build", "-q", "-t", tag, str(context))
    assert result.exit_code == 0, result.stderr


def test_diff_of_two_builds(cli, store_root, tmp_path):
    make_busybox_image(Store(store_root), "busybox:latest")
    context = tmp_path / "context"
    context.mkdir()
    _build(cli, context, "app:1", STATUS.format(busybox="1:1.35.0-4"),
           "FROM busybox\nCOPY status /var/lib/dpkg/status\nENV STAGE=one\n")
    _build(cli, context, "app:2", STATUS.format(busybox="1:1.36.1-6"),
           "FROM busybox\nCOPY status /var/lib/dpkg/status\nENV STAGE=two\nRUN echo hello > /hello\n")
    result = cli("diff", "app:1", "app:2", "--packages", "--ignore-timestamps", "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    config = {row["field"]: (row["a"], row["b"]) for row in report["config"]}
    assert config["Env.STAGE"] == ("one", "two")
    # the RUN step's layer also holds the mount points runc made (the test busybox has none)
    added = {row["path"]: (row["type"], row["size"]) for row in report["files"]["added"]}
    assert added == {"/hello": ("file", 6), "/dev": ("dir", 0), "/proc": ("dir", 0), "/sys": ("dir", 0)}
    assert report["files"]["removed"] == []
    assert {row["path"]: row["changes"] for row in report["files"]["changed"]} == {
        "/var/lib/dpkg/status": ["content"]
    }
    assert report["packages"]["debian"] == {
        "added": [], "removed": [], "changed": [{"name": "busybox", "a": "1:1.35.0-4", "b": "1:1.36.1-6"}]
    }

"""``imgbuild outline`` run as a real process: arguments, output, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CASES = PROJECT_ROOT / "testdata" / "Dockerfiles"


def imgbuild(*args, stdin: str | None = None, env: dict | None = None, cwd=None):
    full_env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "imgbuild", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=60,
    )


def test_text_outline_of_a_multistage_build():
    result = imgbuild("outline", "--platform", "linux/amd64", str(CASES / "multistage-parallel"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == "Target: stage 3"
    assert lines[2].endswith("[0 left, 1 right]  ->  [3]")
    assert "Stage 2 unused: FROM busybox  [line 7; not needed for the target]" in lines


def test_json_outline_with_target_and_build_args():
    result = imgbuild(
        "outline",
        "--format",
        "json",
        "--platform",
        "linux/amd64",
        "--target",
        "app",
        "--build-arg",
        "PORT=9000",
        "-f",
        str(CASES / "arg-descriptions" / "Dockerfile"),
    )
    assert result.returncode == 0, result.stderr
    outline = json.loads(result.stdout)
    assert outline["target"] == {"index": 0, "name": "app"}
    port = outline["stages"][0]["args"][0]
    assert (port["name"], port["default"], port["value"], port["description"]) == (
        "PORT",
        "8080",
        "9000",
        "the port the application listens on",
    )


def test_build_arg_without_value_comes_from_the_environment(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nARG FROM_ENV\nARG ABSENT\n")
    result = imgbuild(
        "outline",
        "--format",
        "json",
        "--build-arg",
        "FROM_ENV",
        "--build-arg",
        "ABSENT",
        str(tmp_path),
        env={"FROM_ENV": "from the environment"},
    )
    assert result.returncode == 0, result.stderr
    args = {a["name"]: a["value"] for a in json.loads(result.stdout)["stages"][0]["args"]}
    assert args == {"FROM_ENV": "from the environment", "ABSENT": None}


def test_dockerfile_from_stdin():
    result = imgbuild("outline", "-f", "-", stdin="FROM scratch\nCOPY a /a\n")
    assert result.returncode == 0, result.stderr
    assert "Stage 0: FROM scratch" in result.stdout


def test_errors_exit_2_with_file_and_line():
    result = imgbuild("outline", "-f", "-", stdin="FROM busybox\nRUN <<EOF\necho\n")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        'error: Dockerfile:2: unterminated heredoc: no line "EOF" ends it',
        "     2 | RUN <<EOF",
    ]
    assert "Traceback" not in result.stderr


def test_missing_dockerfile_and_unknown_target(tmp_path):
    result = imgbuild("outline", str(tmp_path))
    assert result.returncode == 2
    assert "cannot read Dockerfile" in result.stderr
    (tmp_path / "Dockerfile").write_text("FROM busybox AS a\n")
    result = imgbuild("outline", "--target", "b", str(tmp_path))
    assert result.returncode == 2
    assert 'target stage "b" could not be found' in result.stderr


def test_invalid_utf8_is_shown_not_a_crash(tmp_path):
    (tmp_path / "Dockerfile").write_bytes(b"FROM busybox\nLABEL x=\xff\xfe\n")
    result = imgbuild("outline", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "LABEL x=\ufffd\ufffd" in result.stdout

"""Every testdata/Dockerfiles case is built, not only parsed.

Good cases (with outline.json) must build with imgbuild from the local busybox
image; their RUN steps check their own expectations with ``test``, so a build
that succeeds also proves expansion and scoping were right. Bad cases (with
error.txt) must fail through the command line, as a user runs it: exit code 2,
the first line of error.txt on stderr, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgbuild.errors import ImgbuildError

PROJECT = Path(__file__).resolve().parents[2]
CASES_DIR = PROJECT / "testdata" / "Dockerfiles"
GOOD_CASES = sorted(p.parent.name for p in CASES_DIR.glob("*/outline.json"))
BAD_CASES = sorted(p.parent.name for p in CASES_DIR.glob("*/error.txt"))


def test_there_are_cases_of_both_kinds():
    assert len(GOOD_CASES) >= 30 and len(BAD_CASES) >= 20
    assert not set(GOOD_CASES) & set(BAD_CASES)


def _needed_stages(case_dir: Path) -> set[int]:
    outline = json.loads((case_dir / "outline.json").read_text())
    return {stage["index"] for stage in outline["stages"] if stage["needed"]}


def _build_or_fail(imgbuild_store, case, tag):
    try:
        return imgbuild_store.build(case, tag)
    except ImgbuildError as error:
        failure = f"imgbuild could not build {case.name}:\n{error}"
    pytest.fail(failure)  # outside the except: the build's own traceback adds nothing


@pytest.mark.parametrize("name", GOOD_CASES)
def test_good_case_builds(name, load_case, imgbuild_store):
    """It builds, exactly the stages its outline says the target needs, and a rebuild is cached."""
    case = load_case(name)
    tag = f"testdata-{name}"
    first = _build_or_fail(imgbuild_store, case, tag)
    assert set(first.stages) == _needed_stages(case.directory)
    assert imgbuild_store.store.resolve(tag).digest == first.image.digest

    again = _build_or_fail(imgbuild_store, case, tag)
    assert again.steps_run == 0, (
        f"{name}: {again.steps_run} steps ran again instead of hitting the cache"
    )
    layers = [layer.digest for layer in first.image.layers]
    assert [layer.digest for layer in again.image.layers] == layers


def _bad_case_command(case) -> list[str]:
    argv = ["-f", "Dockerfile"]
    for key, value in case.build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    if case.target:
        argv += ["--target", case.target]
    return argv


@pytest.mark.parametrize("name", BAD_CASES)
def test_bad_case_fails_with_its_error(name, load_case, imgbuild_store, empty_context):
    case = load_case(name)
    expected = (case.directory / "error.txt").read_text().splitlines()[0]
    env = dict(os.environ, PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("CI", None)
    completed = subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(imgbuild_store.root),
         *_bad_case_command(case), str(empty_context)],
        cwd=case.directory, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert "Traceback" not in completed.stderr, completed.stderr
    assert completed.returncode == 2, completed.stderr
    first_line = completed.stderr.splitlines()[0] if completed.stderr else ""
    assert first_line.removeprefix("error: ") == expected

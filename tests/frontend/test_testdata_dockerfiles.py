"""Every case in testdata/Dockerfiles: the outline matches its golden file, or
parsing/planning fails with exactly the expected error.

See testdata/Dockerfiles/README.md for the layout. To regenerate the golden
files after an intended change, run with IMGBUILD_UPDATE_GOLDEN=1 and review
the diff before committing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imgbuild.dockerfile import parse, plan
from imgbuild.dockerfile.outline import render_json, render_text
from imgbuild.errors import DockerfileError

CASES_DIR = Path(__file__).resolve().parents[2] / "testdata" / "Dockerfiles"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "Dockerfile").is_file())
UPDATE = os.environ.get("IMGBUILD_UPDATE_GOLDEN") == "1"


def _options(case: Path) -> dict:
    path = case / "options.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _outline(case: Path) -> str:
    options = _options(case)
    text = (case / "Dockerfile").read_bytes().decode("utf-8")
    dockerfile = parse(text, "Dockerfile")
    result = plan(
        dockerfile,
        build_args=options.get("build_args"),
        target=options.get("target"),
        platform=options.get("platform", "linux/amd64"),
        build_platform="linux/amd64",
    )
    render_text(result)  # must not fail either
    return render_json(result)


def test_there_are_enough_cases():
    good = [c for c in CASES if (CASES_DIR / c / "outline.json").exists()]
    bad = [c for c in CASES if (CASES_DIR / c / "error.txt").exists()]
    assert len(good) + len(bad) == len(CASES) >= 40
    assert len(good) >= 30 and len(bad) >= 20


@pytest.mark.parametrize("name", CASES)
def test_case(name):
    case = CASES_DIR / name
    error_file = case / "error.txt"
    golden = case / "outline.json"
    if error_file.exists() or (UPDATE and name.startswith("bad-")):
        with pytest.raises(DockerfileError) as caught:
            _outline(case)
        if UPDATE:
            error_file.write_text(str(caught.value) + "\n")
        assert str(caught.value) + "\n" == error_file.read_text()
        return
    output = _outline(case)
    if UPDATE:
        golden.write_text(output)
    assert output == golden.read_text()


def test_good_cases_only_use_local_bases():
    """The build engine builds every good case from local images only."""
    for name in CASES:
        case = CASES_DIR / name
        if not (case / "outline.json").exists():
            continue
        outline = json.loads((case / "outline.json").read_text())
        for stage in outline["stages"]:
            assert stage["base_stage"] is not None or stage["base"] in ("busybox", "scratch"), name
            assert set(stage["images"]) <= {"busybox"}, name

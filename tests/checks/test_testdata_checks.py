"""Every case in testdata/Dockerfiles: ``imgbuild check``'s JSON matches its
golden ``checks.json``.

The golden file is what ``imgbuild check --format json`` prints for the case
(its options.json and context/, the file named "Dockerfile"): the warnings,
and the error a bad case fails with. A case whose Dockerfile does not parse
has the warnings of the lines before the error. Regenerate with
IMGBUILD_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imgbuild.cli.check import check_dockerfile, json_report

CASES_DIR = Path(__file__).resolve().parents[2] / "testdata" / "Dockerfiles"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "Dockerfile").is_file())
UPDATE = os.environ.get("IMGBUILD_UPDATE_GOLDEN") == "1"


def report(case: Path, empty_context: Path) -> dict:
    options = json.loads((case / "options.json").read_text()) if (case / "options.json").exists() else {}
    context = case / "context" if (case / "context").is_dir() else empty_context
    text = (case / "Dockerfile").read_bytes().decode("utf-8")
    result, failure = check_dockerfile(
        text, "Dockerfile", context, None,
        build_args=options.get("build_args"), target=options.get("target"),
        platform=options.get("platform", "linux/amd64"),
    )
    return json_report(result, failure)


def test_cases_have_warnings_and_quiet_ones():
    reports = [json.loads((CASES_DIR / name / "checks.json").read_text()) for name in CASES]
    assert len(reports) == len(CASES) >= 40
    assert sum(bool(r["warnings"]) for r in reports) >= 10
    assert sum(not r["warnings"] and r["error"] is None for r in reports) >= 10


@pytest.mark.parametrize("name", CASES)
def test_case(name, tmp_path):
    case = CASES_DIR / name
    golden = case / "checks.json"
    got = report(case, tmp_path)
    if UPDATE:
        golden.write_text(json.dumps(got, indent=2) + "\n")
    assert got == json.loads(golden.read_text())

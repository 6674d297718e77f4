"""docs/checks.md: each rule's Bad example triggers it and its Good one does not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imgbuild.context.dockerignore import IgnoreMatcher
from imgbuild.dockerfile import parse, plan
from imgbuild.dockerfile.checks import RULES, check
from imgbuild.errors import PlanError

DOC = Path(__file__).resolve().parents[2] / "docs" / "checks.md"
BUILD_ONLY = {"InvalidBaseImagePlatform"}  # needs a pulled base image: test_check_cli.py


def sections() -> dict[str, str]:
    text = DOC.read_text()
    parts = re.split(r"^### (\w+)\n", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def example(section: str, label: str) -> str:
    match = re.search(rf"^{label}:\n```dockerfile\n(.*?)```", section, re.MULTILINE | re.DOTALL)
    assert match, f"no {label} example"
    return match.group(1)


def rules_found(dockerfile: str, section: str) -> set[str]:
    ignore = re.search(r"```dockerignore\n(.*?)```", section, re.DOTALL)
    parsed = parse(dockerfile)
    try:
        planned = plan(parsed, {}, None, "linux/amd64", build_platform="linux/amd64")
    except PlanError:
        planned = None
    matcher = IgnoreMatcher(ignore.group(1).splitlines()) if ignore else None
    return {w.rule for w in check(parsed, planned, ignore=matcher).warnings}


def test_every_rule_is_documented():
    assert set(sections()) == set(RULES)


@pytest.mark.parametrize("rule", sorted(set(RULES) - BUILD_ONLY))
def test_bad_and_good_examples(rule):
    section = sections()[rule]
    assert rule in rules_found(example(section, "Bad"), section)
    assert rule not in rules_found(example(section, "Good"), section)

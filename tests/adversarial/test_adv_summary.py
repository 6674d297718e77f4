"""The summary line the adversarial run ends with, seen from outside: a nested run of
two real cases prints it with their counts. A control, not counted as a case."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.control
def test_the_run_ends_with_the_summary_line(tmp_path):
    cases = "test_context_reach_out[copy-dotdot] or test_context_reach_out[symlink-whole-context]"
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "run"),
         "tests/adversarial/test_adv_context.py", "-k", cases],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    summary = [line for line in ran.stdout.splitlines() if line.startswith("adversarial: ")]
    assert summary == ["adversarial: 2 cases tried, 1 refused, 1 contained, 0 escapes, 0 data lost"], ran.stdout

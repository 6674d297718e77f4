"""bench/ runs: one smoke run of the benchmark, imgbuild only (issue 12).

This checks that the harness still works end to end (contexts, base image,
every busybox-based scenario, the cache checks, the reports), so that it
cannot rot between the side-by-side runs. The Debian workloads (Python, Node,
C) are left out: they download hundreds of MB. Speed is never asserted here:
bench/ reports it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from imagetools import require_root_and_runc

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = [
    "cold-small", "warm-small", "small-change", "multistage-cold", "multistage-warm",
    "big-cold", "big-unchanged", "big-change", "big-export",
]  # fmt: skip


@pytest.mark.root
def test_benchmark_smoke_run_reports_every_scenario(tmp_path):
    require_root_and_runc()
    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "IMGBUILD_ROOT"}
    process = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--tools", "imgbuild",
         "--quiet-wait", "0", "--nice", "0", "--workdir-parent", str(tmp_path),
         "--results", str(results)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    reports = list(results.glob("*.json"))
    assert len(reports) == 1, process.stdout[-3000:]
    document = json.loads(reports[0].read_text())

    rows = {row["scenario"]: row for row in document["rows"]}
    assert list(rows) == SCENARIOS  # in issue 12's order
    for scenario, row in rows.items():
        assert row["tool"] == "imgbuild"
        # one run each, none failed, and the cache behaved as the scenario expects
        assert (row["runs"], row["failed"], row["warnings"]) == (1, 0, []), scenario
        assert row["median_s"] > 0 and row["peak_mb"] > 0
    for cold in ("cold-small", "multistage-cold", "big-cold"):
        assert rows[cold]["cached_steps"] == [0], cold
    # A no-op rebuild hits every step; after one edit only the steps before its COPY hit.
    assert rows["warm-small"]["cached_steps"][0] > rows["small-change"]["cached_steps"][0] > 0
    assert rows["big-unchanged"]["cached_steps"][0] > rows["big-change"]["cached_steps"][0] > 0
    assert rows["multistage-warm"]["cached_steps"][0] > 0
    export = document["runs"]["big-export"]["imgbuild"][0]
    assert export["output_bytes"] > 1_000_000  # the smoke's big context is 3 MB, random parts
    assert document["settings"]["smoke"] is True
    assert "| small (10 instructions): cold | imgbuild |" in document["markdown_table"]

    # The headline: issue 12's table, one line per scenario; no peer ran, so no ratio.
    headline = document["headline"]
    assert [line["scenario"] for line in headline] == SCENARIOS
    assert all(line["ratio"] is None and line["runs_ok"] for line in headline)
    assert headline[-1]["case"] == "export as OCI archive"
    assert "| multistage (2 stages x 2 s CPU) | cold | " in document["headline_markdown"]
    assert document["machine"]["cores"] == os.cpu_count()
    # the work dir with its store and contexts is gone
    assert [p.name for p in tmp_path.iterdir()] == ["results"]


def test_layerspeed_smoke_reports_every_candidate(tmp_path):
    process = subprocess.run(
        [sys.executable, str(REPO / "bench" / "layerspeed.py"), "--smoke", "--workdir-parent", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    rows = [line for line in process.stdout.splitlines() if line.startswith("| ") and "candidate" not in line]
    names = [re.split(r"(?<!\\)\|", row)[1].strip() for row in rows]
    assert names == [
        "imgbuild gzip (default)", "imgbuild gzip level 6 (zlib)", "imgbuild zstd (default)",
        "imgbuild uncompressed", "tar \\| gzip -1", "tar \\| zstd -T0 -3", "tar \\| sha256sum",
    ]
    assert [p.name for p in tmp_path.iterdir()] == []  # the generated tree is gone

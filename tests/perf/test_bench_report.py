"""bench/report.py's headline: issue 12's "imgbuild ÷ fastest" column.

The figures are made up here (the smoke run has only imgbuild, so it cannot
show a ratio); what is checked is which peer counts as fastest, the ratio of
medians, and that a failed run or a failed cache check marks its line.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def result(seconds: float, cpu: float, peak_mb: int, cached: int = 0, error: str = ""):
    from tools import BuildResult

    return BuildResult(
        seconds=seconds, peak_kb=peak_mb * 1024, cpu_s=cpu, background_cpu_s=0.0,
        exit_code=1 if error else 0, cached_steps=cached, log_path=Path("/dev/null"), error=error,
    )  # fmt: skip


def test_ratio_is_imgbuild_over_the_fastest_peer_median(report):
    by_tool = {
        "imgbuild": [result(1.5, 1.0, 30), result(1.4, 1.2, 32), result(9.0, 1.1, 31)],
        "buildah": [result(2.0, 3.0, 40), result(2.2, 3.0, 40), result(1.8, 3.0, 40)],
        "docker": [result(1.0, 0.5, 90), result(0.9, 0.4, 95), result(1.2, 0.6, 80)],
    }
    rows = report.summarize("cold-small", "small: cold", by_tool, "none")
    line = report.headline("cold-small", "small", "cold", rows)
    assert line.fastest_peer == "docker"
    assert line.ratio == pytest.approx(1.5 / 1.0)  # medians: one slow run does not count
    assert line.cpu_ratio == pytest.approx(1.1 / 0.5)
    assert line.peak_mb == {"imgbuild": 31, "buildah": 40, "docker": 90}
    assert line.runs_ok

    text = report.headline_text([line], ["imgbuild", "buildah", "docker"])
    header, _, cells = text.splitlines()
    # The column order: buildah, docker, imgbuild, then the ratio.
    assert header.split()[:9] == [
        "workload", "case", "buildah", "s", "docker/BuildKit", "s", "imgbuild", "s", "imgbuild",
    ]
    assert cells.split() == [
        "small", "cold", "2.00", "1.00", "1.50", "1.50", "2.20", "40", "90", "31",
    ]  # fmt: skip
    markdown = report.headline_markdown([line], ["imgbuild", "buildah", "docker"])
    assert markdown.splitlines()[2] == "| small | cold | 2.00 | 1.00 | 1.50 | 1.50 | 2.20 | 40 | 90 | 31 |"


def test_imgbuild_fastest_gives_a_ratio_below_one_and_failures_are_marked(report):
    by_tool = {
        "imgbuild": [result(0.2, 0.2, 25, cached=5)],
        "buildah": [result(0.5, 0.5, 30, cached=9), result(0.4, 0.4, 30, error="exit code 1")],
        "docker": [result(0.4, 0.3, 80, cached=0)],  # a no-op rebuild without a cache hit
    }
    rows = report.summarize("warm-small", "small: warm no-op", by_tool, "all")
    line = report.headline("warm-small", "small", "warm no-op", rows)
    assert line.fastest_peer == "docker"  # buildah's failed run is not its median
    assert line.ratio == pytest.approx(0.5)
    assert not line.runs_ok
    assert " 0.50 !" in report.headline_text([line], ["imgbuild", "buildah", "docker"])


def test_without_peers_there_is_no_ratio(report):
    rows = report.summarize("big-export", "big: export", {"imgbuild": [result(0.4, 0.3, 24)]}, "any")
    line = report.headline("big-export", "big", "export as OCI archive", rows)
    assert (line.fastest_peer, line.ratio, line.runs_ok) == (None, None, True)
    assert report.headline_text([line], ["imgbuild"]).splitlines()[0].split() == [
        "workload", "case", "imgbuild", "s", "imgbuild", "÷", "fastest", "cpu", "÷", "same",
        "imgbuild", "MB",
    ]  # fmt: skip


def test_a_change_that_reran_nothing_is_flagged(report):
    # After one edit docker hit 5 steps, as many as its no-op warm-up: the edit reached nothing.
    by_tool = {"imgbuild": [result(0.4, 0.3, 28, cached=1)], "docker": [result(0.1, 0.1, 80, cached=5)]}
    rows = report.summarize("small-change", "small: change", by_tool, "some", {"imgbuild": 5, "docker": 5})
    warnings = {row.tool: row.warnings for row in rows}
    assert warnings == {
        "imgbuild": [],
        "docker": ["a rebuild after one change hit the cache as often as a no-op rebuild"],
    }
    # Without a no-op's figure (no warm-up ran) there is nothing to compare with.
    rows = report.summarize("small-change", "small: change", by_tool, "some")
    assert all(row.warnings == [] for row in rows)

"""Medians, ratios to imgbuild, the text table and the JSON document."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from tools import BuildResult

REFERENCE_TOOL = "imgbuild"


@dataclass
class Row:
    scenario: str
    title: str
    tool: str
    runs: int
    failed: int
    median_s: float | None
    peak_mb: float | None
    cpu_s: float | None  # median CPU seconds the tool used
    background_cpu_s: float | None  # median CPU seconds others used meanwhile (noise)
    time_ratio: float | None  # this tool's median time / imgbuild's; >1: imgbuild faster
    memory_ratio: float | None  # this tool's peak MB / imgbuild's; >1: imgbuild smaller
    cpu_ratio: float | None  # this tool's CPU / imgbuild's: steadier than wall time under load
    cached_steps: list[int]
    warnings: list[str]


def summarize(
    scenario: str, title: str, by_tool: dict[str, list[BuildResult]], expect: str
) -> list[Row]:
    """One row per tool; expect is "none" (cold), "all" (nothing changed) or "some"."""
    rows = [_row(scenario, title, tool, results, expect) for tool, results in by_tool.items()]
    reference = next((r for r in rows if r.tool == REFERENCE_TOOL), None)
    for row in rows:
        if reference and reference.median_s and row.median_s is not None:
            row.time_ratio = row.median_s / reference.median_s
        if reference and reference.peak_mb and row.peak_mb is not None:
            row.memory_ratio = row.peak_mb / reference.peak_mb
        if reference and reference.cpu_s and row.cpu_s is not None:
            row.cpu_ratio = row.cpu_s / reference.cpu_s
    return rows


def _row(scenario: str, title: str, tool: str, results: list[BuildResult], expect: str) -> Row:
    good = [r for r in results if not r.error]
    warnings = [f"run failed: {r.error}" for r in results if r.error]
    cached = [r.cached_steps for r in good]
    if expect == "none" and any(cached):
        warnings.append("a cold build reported cache hits")
    if expect == "all" and not all(cached):
        warnings.append("an unchanged rebuild reported no cache hit")
    if expect == "some" and not all(cached):
        warnings.append("a rebuild after one change reused nothing")
    return Row(
        scenario=scenario, title=title, tool=tool, runs=len(results), failed=len(results) - len(good),
        median_s=statistics.median(r.seconds for r in good) if good else None,
        peak_mb=statistics.median(r.peak_kb for r in good) / 1024 if good else None,
        cpu_s=statistics.median(r.cpu_s for r in good) if good else None,
        background_cpu_s=statistics.median(r.background_cpu_s for r in good) if good else None,
        time_ratio=None, memory_ratio=None, cpu_ratio=None, cached_steps=cached,
        warnings=warnings,
    )


COLUMNS = [
    "scenario", "tool", "median s", "time ratio", "cpu s", "cpu ratio", "peak MB", "mem ratio",
    "others' cpu s", "runs",
]


def _cells(row: Row) -> list[str]:
    return [
        row.title, row.tool, _num(row.median_s, 2), _num(row.time_ratio, 2), _num(row.cpu_s, 2),
        _num(row.cpu_ratio, 2), _num(row.peak_mb, 0), _num(row.memory_ratio, 2),
        _num(row.background_cpu_s, 2), f"{row.runs - row.failed}/{row.runs}",
    ]


def text_table(rows: list[Row]) -> str:
    lines = [COLUMNS]
    previous = ""
    for row in rows:
        cells = _cells(row)
        if row.scenario == previous:
            cells[0] = ""
        previous = row.scenario
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    out = []
    for index, line in enumerate(lines):
        cells = [
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * (len(COLUMNS) - 2)]
    for row in rows:
        out.append("| " + " | ".join(_cells(row)) + " |")
    return "\n".join(out)


def _num(value: float | None, places: int) -> str:
    return "n/a" if value is None else f"{value:.{places}f}"


def run_record(result: BuildResult) -> dict:
    return {
        "seconds": round(result.seconds, 4),
        "peak_kb": result.peak_kb,
        "cpu_s": round(result.cpu_s, 3),
        "background_cpu_s": round(result.background_cpu_s, 3),
        "quiet_wait_s": round(result.quiet_wait_s, 2),
        "busy_cores_before": round(result.busy_cores_before, 2),
        "after": result.after,
        "exit_code": result.exit_code,
        "cached_steps": result.cached_steps,
        "detail_kb": result.detail,
        "error": result.error,
        "log": str(result.log_path),
    }


def row_record(row: Row) -> dict:
    return asdict(row)

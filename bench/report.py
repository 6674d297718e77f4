"""Medians, ratios, the text tables and the JSON document.

The headline is issue 12's table: per workload and case, each tool's median
seconds and imgbuild ÷ the fastest peer (below 1: imgbuild is fastest), with
every tool's peak memory. The detail table has a row per tool with each
peer's ratio to imgbuild (above 1: imgbuild is faster).
"""

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
    scenario: str, title: str, by_tool: dict[str, list[BuildResult]], expect: str,
    warmup_hits: dict[str, int] | None = None,
) -> list[Row]:
    """One row per tool; expect is "none" (cold), "all" (nothing changed), "some"
    (one file changed) or "any" (an export, which has no cache). warmup_hits:
    each tool's cache hits in its untimed no-op rebuild of the unchanged
    context, which a rebuild after one change must stay under."""
    warmup_hits = warmup_hits or {}
    rows = [
        _row(scenario, title, tool, results, expect, warmup_hits.get(tool, 0))
        for tool, results in by_tool.items()
    ]
    reference = next((r for r in rows if r.tool == REFERENCE_TOOL), None)
    for row in rows:
        if reference and reference.median_s and row.median_s is not None:
            row.time_ratio = row.median_s / reference.median_s
        if reference and reference.peak_mb and row.peak_mb is not None:
            row.memory_ratio = row.peak_mb / reference.peak_mb
        if reference and reference.cpu_s and row.cpu_s is not None:
            row.cpu_ratio = row.cpu_s / reference.cpu_s
    return rows


def _row(
    scenario: str, title: str, tool: str, results: list[BuildResult], expect: str, warmup_hits: int
) -> Row:
    good = [r for r in results if not r.error]
    warnings = [f"run failed: {r.error}" for r in results if r.error]
    cached = [r.cached_steps for r in good]
    if expect == "none" and any(cached):
        warnings.append("a cold build reported cache hits")
    if expect == "all" and not all(cached):
        warnings.append("an unchanged rebuild reported no cache hit")
    if expect == "some" and not all(cached):
        warnings.append("a rebuild after one change reused nothing")
    if expect == "some" and warmup_hits and any(c >= warmup_hits for c in cached):
        warnings.append("a rebuild after one change hit the cache as often as a no-op rebuild")
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
    return _align(lines, left=2)


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
        "output_bytes": result.output_bytes,
        "log": str(result.log_path),
    }


def row_record(row: Row) -> dict:
    return asdict(row)


# The column order: the peers, then imgbuild.
HEADLINE_ORDER = ("buildah", "docker", REFERENCE_TOOL)
HEADLINE_NAMES = {"docker": "docker/BuildKit"}


@dataclass
class Headline:
    """One line of issue 12's table: a workload's case, every tool side by side."""

    scenario: str
    workload: str
    case: str
    seconds: dict[str, float | None]  # median wall time by tool
    peak_mb: dict[str, float | None]  # median peak memory by tool
    fastest_peer: str | None
    ratio: float | None  # imgbuild's median / the fastest peer's median; <1: imgbuild fastest
    cpu_ratio: float | None  # the same for CPU seconds, against the same peer
    runs_ok: bool  # no run failed and every cache check passed


def headline(scenario: str, workload: str, case: str, rows: list[Row]) -> Headline:
    by_tool = {row.tool: row for row in rows}
    peers = [r for r in rows if r.tool != REFERENCE_TOOL and r.median_s is not None]
    fastest = min(peers, key=lambda r: r.median_s or 0.0) if peers else None
    own = by_tool.get(REFERENCE_TOOL)
    ratio = cpu_ratio = None
    if fastest and own and own.median_s is not None and fastest.median_s:
        ratio = own.median_s / fastest.median_s
        if own.cpu_s is not None and fastest.cpu_s:
            cpu_ratio = own.cpu_s / fastest.cpu_s
    return Headline(
        scenario=scenario, workload=workload, case=case,
        seconds={row.tool: row.median_s for row in rows},
        peak_mb={row.tool: row.peak_mb for row in rows},
        fastest_peer=fastest.tool if fastest else None, ratio=ratio, cpu_ratio=cpu_ratio,
        runs_ok=all(not row.warnings for row in rows),
    )


def _headline_tools(tools: list[str]) -> list[str]:
    return [name for name in HEADLINE_ORDER if name in tools]


def _headline_columns(tools: list[str]) -> list[str]:
    names = [HEADLINE_NAMES.get(t, t) for t in tools]
    return [
        "workload", "case", *[f"{n} s" for n in names], "imgbuild ÷ fastest", "cpu ÷ same",
        *[f"{n} MB" for n in names],
    ]


def _headline_cells(line: Headline, tools: list[str]) -> list[str]:
    ratio = _num(line.ratio, 2) + ("" if line.runs_ok else " !")
    return [
        line.workload, line.case, *[_seconds(line.seconds.get(t)) for t in tools], ratio,
        _num(line.cpu_ratio, 2), *[_num(line.peak_mb.get(t), 0) for t in tools],
    ]


def headline_text(lines: list[Headline], tools: list[str]) -> str:
    """The issue's table as text; "!" after a ratio: a run failed or a cache check warned."""
    tools = _headline_tools(tools)
    table = [_headline_columns(tools)]
    previous = ""
    for line in lines:
        cells = _headline_cells(line, tools)
        if line.workload == previous:
            cells[0] = ""
        previous = line.workload
        table.append(cells)
    return _align(table, left=2)


def headline_markdown(lines: list[Headline], tools: list[str]) -> str:
    tools = _headline_tools(tools)
    columns = _headline_columns(tools)
    out = ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]
    for line in lines:
        out.append("| " + " | ".join(_headline_cells(line, tools)) + " |")
    return "\n".join(out)


def headline_record(line: Headline) -> dict:
    return asdict(line)


def machine_line(machine: dict, versions: dict[str, str]) -> str:
    """The machine and tool versions in one paragraph, for the report's head."""
    facts = (
        f"{machine['cores']} cores ({machine['cpu']}), {machine['memory']} RAM, "
        f"Linux {machine['kernel']}, {machine['os']}, Python {machine['python']}, "
        f"{machine['runc']}, work dir on {machine['workdir_filesystem']}"
    )
    return facts + "; " + "; ".join(f"{k}: {v}" for k, v in versions.items())


def _seconds(value: float | None) -> str:
    """Two significant decimals below 1 s (0.083), two places above (13.40)."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _align(table: list[list[str]], left: int) -> str:
    """Columns padded to their widest cell; the first `left` columns left-aligned."""
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    out = []
    for index, line in enumerate(table):
        cells = [
            cell.ljust(widths[i]) if i < left else cell.rjust(widths[i]) for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)

"""Benchmark imgbuild against buildah and docker/BuildKit, in one run.

    python3 bench/run.py [--reps N] [--big-reps N] [--tools imgbuild,buildah,docker]

Run as root (bench/run.sh installs the peers first). Prints a table of median
wall time and peak memory per scenario and tool, with ratios to imgbuild, and
writes the full data to bench/results/DATE.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import report
from measure import wait_for_quiet
from scenarios import (
    SMOKE_SHAPE,
    ContextShape,
    edit_big_context,
    write_big_context,
    write_small_context,
)
from tools import (
    BaseArchives,
    BenchError,
    Buildah,
    BuildResult,
    Docker,
    Imgbuild,
    Tool,
    remove_tree,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ALL_TOOLS = ("imgbuild", "buildah", "docker")
SCENARIO_KEYS = ("cold-small", "warm-small", "big-change", "big-unchanged")
# A build starts once the machine used less than this many cores for 0.5 s.
QUIET_CORES = 0.3


@dataclass
class Scenario:
    key: str
    title: str
    dockerfile: Path
    context: Path
    tag: str
    reps: int
    cold: bool  # each run starts from a fresh tool state
    expect_cached: str  # "none", "all" or "some": what a sane run reports
    before_run: Callable[[int], None] | None = None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="runs per small scenario (default 3)")
    parser.add_argument(
        "--big-reps", type=int, default=3, help="runs per big-context scenario (default 3)"
    )
    parser.add_argument(
        "--tools", default=",".join(ALL_TOOLS), help="comma-separated subset of " + ", ".join(ALL_TOOLS)
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIO_KEYS),
        help="comma-separated subset of " + ", ".join(SCENARIO_KEYS),
    )
    parser.add_argument(
        "--workdir-parent", default="/var/tmp", help="where the temp work dir goes (default /var/tmp)"
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=15.0,
        help="before each build, wait up to this many seconds for the machine to be idle "
        "(default 15; 0 turns it off)",
    )
    parser.add_argument(
        "--nice", type=int, default=-10,
        help="CPU priority for the benchmark and every tool it starts, dockerd included "
        "(default -10; 0 leaves it)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="one run each on a tiny big context: checks the harness"
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS,
        help="where the JSON report and the build logs go (default bench/results)",
    )
    args = parser.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - set(ALL_TOOLS)
    if unknown or "imgbuild" not in args.tools:
        parser.error(f"--tools must include imgbuild and name only {', '.join(ALL_TOOLS)}")
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not args.scenarios or set(args.scenarios) - set(SCENARIO_KEYS):
        parser.error(f"--scenarios must name some of {', '.join(SCENARIO_KEYS)}")
    if args.smoke:
        args.reps = args.big_reps = 1
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run.py: run as root (overlay mounts, runc, dockerd)", file=sys.stderr)
        return 2
    # A SIGTERM takes the same clean-up path as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    raise_priority(args.nice)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    logs = args.results / f"logs-{stamp}"
    logs.mkdir(parents=True)
    workdir = Path(tempfile.mkdtemp(prefix="imgbuild-bench-", dir=args.workdir_parent))
    tools: list[Tool] = []
    started = time.monotonic()
    try:
        return run_benchmark(args, workdir, logs, stamp, tools, started)
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    except BenchError as error:
        print(f"run.py: {error}", file=sys.stderr)
        return 1
    finally:
        cleanup_started = time.monotonic()
        # Last started, first stopped: dockerd goes down before the slow deletes.
        for tool in reversed(tools):
            try:
                tool.stop()
            except Exception as error:  # clean up the others whatever happens
                print(f"cleanup of {tool.name} failed: {error}", file=sys.stderr)
        remove_tree(workdir)
        print(f"cleaned up {workdir} in {time.monotonic() - cleanup_started:.0f}s")


def raise_priority(nice: int) -> None:
    """The same CPU and I/O priority for every tool: children inherit both.

    On a machine shared with other people's test runs this keeps their bursts
    from landing in one tool's timing more than another's.
    """
    if nice == 0:
        return
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    if shutil.which("ionice"):
        subprocess.run(["ionice", "-c", "2", "-n", "0", "-p", str(os.getpid())], check=False)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_benchmark(
    args: argparse.Namespace, workdir: Path, logs: Path, stamp: str, tools: list[Tool],
    started: float,
) -> int:
    # The tree may change while the benchmark runs (others commit): take it first.
    commit = git_head()
    shape = SMOKE_SHAPE if args.smoke else ContextShape()
    small, big, base_context = workdir / "ctx-small", workdir / "ctx-big", workdir / "ctx-base"
    small.mkdir()
    write_small_context(small)
    big.mkdir()
    t0 = time.monotonic()
    files, size = write_big_context(big, shape)
    print(f"generated the big context: {files} files, {size / 1e6:.0f} MB "
          f"in {time.monotonic() - t0:.1f}s")
    make_base_context(base_context)

    imgbuild = Imgbuild(workdir, logs, REPO, sys.executable)
    tools.append(imgbuild)
    base = imgbuild.make_base(base_context)
    unavailable: dict[str, str] = {}
    for name in args.tools:
        if name == "buildah":
            tools.append(Buildah(workdir, logs))
        elif name == "docker":
            tools.append(Docker(workdir, logs))
    versions = {}
    for tool in list(tools):
        try:
            tool.start()
            versions[tool.name] = tool.version()
            tool.fresh_state(base)
        except BenchError as error:
            drop(tool, tools, unavailable, error)
    for name, reason in unavailable.items():
        print(f"NOTE: {name} is left out of this run: {reason}")
    print("versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()))

    scenarios = [
        Scenario("cold-small", "1 cold build, small Dockerfile", small / "Dockerfile", small,
                 "bench-small:1", args.reps, cold=True, expect_cached="none"),
        Scenario("warm-small", "2 warm rebuild, nothing changed", small / "Dockerfile", small,
                 "bench-small:1", args.reps, cold=False, expect_cached="all"),
        Scenario("big-change", "3 big context, one file changed", big / "Dockerfile", big,
                 "bench-big:1", args.big_reps, cold=False, expect_cached="some",
                 before_run=lambda rep: edit_big_context(big, rep + 1)),
        Scenario("big-unchanged", "4 big context, nothing changed", big / "Dockerfile", big,
                 "bench-big:1", args.big_reps, cold=False, expect_cached="all"),
    ]
    rows: list[report.Row] = []
    runs: dict[str, dict[str, list[dict]]] = {}
    for scenario in scenarios:
        if scenario.key not in args.scenarios:
            continue
        by_tool = run_scenario(scenario, tools, base, logs, unavailable, args.quiet_wait)
        rows += report.summarize(scenario.key, scenario.title, by_tool, scenario.expect_cached)
        runs[scenario.key] = {
            name: [report.run_record(r) for r in results] for name, results in by_tool.items()
        }

    table = report.text_table(rows)
    print("\n" + table)
    for row in rows:
        for warning in row.warnings:
            print(f"WARNING {row.scenario} {row.tool}: {warning}")
    for name, reason in unavailable.items():
        print(f"NOTE: {name} was left out: {reason}")
    elapsed = time.monotonic() - started
    document = {
        "date": stamp,
        # The commit the tree was at; uncommitted edits to imgbuild may add to it.
        "imgbuild_commit": commit,
        "elapsed_s": round(elapsed, 1),
        "machine": machine_facts(workdir),
        "versions": versions,
        "unavailable": unavailable,
        "settings": {
            "reps": args.reps, "big_reps": args.big_reps, "smoke": args.smoke,
            "quiet_wait_s": args.quiet_wait, "quiet_cores": QUIET_CORES, "nice": args.nice,
            "big_context": {"files": files, "bytes": size, "shape": shape.__dict__},
            "buildah_storage_driver": Buildah.storage_driver,
        },
        "rows": [report.row_record(r) for r in rows],
        "runs": runs,
        "markdown_table": report.markdown_table(rows),
    }
    out = args.results / f"{stamp}.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {out} (logs in {logs}); total {elapsed / 60:.1f} min")
    return 0


def run_scenario(
    scenario: Scenario, tools: list[Tool], base: BaseArchives, logs: Path,
    unavailable: dict[str, str], quiet_wait: float,
) -> dict[str, list[BuildResult]]:
    """Interleave the tools run by run, so drift in the machine's state does
    not favour one tool."""
    by_tool: dict[str, list[BuildResult]] = {tool.name: [] for tool in tools}
    if not scenario.cold:
        for tool in tools:
            if tool.name in unavailable:
                continue
            os.sync()
            warm = tool.build(scenario.dockerfile, scenario.context, scenario.tag,
                              logs / f"{scenario.key}-{tool.name}-warmup.log")
            print(f"[{scenario.key} warm-up] {tool.name}: {warm.seconds:.2f}s {warm.error}")
    previous = "warm-up" if not scenario.cold else "none"
    for rep in range(scenario.reps):
        if scenario.before_run:
            scenario.before_run(rep)
        for tool in run_order(tools, rep):
            if tool.name in unavailable:
                continue
            if scenario.cold:
                try:
                    tool.fresh_state(base)
                except BenchError as error:
                    unavailable[tool.name] = f"fresh state for {scenario.key} failed: {error}"
                    continue
            log = logs / f"{scenario.key}-{tool.name}-{rep + 1}.log"
            # Flush what earlier builds wrote, so that writeback does not land
            # inside this tool's timing; give every tool the context in the
            # page cache; let other people's bursts pass.
            os.sync()
            read_tree(scenario.context)
            waited, cores = wait_for_quiet(QUIET_CORES, quiet_wait) if quiet_wait else (0.0, 0.0)
            result = tool.build(scenario.dockerfile, scenario.context, scenario.tag, log)
            result.quiet_wait_s, result.busy_cores_before = waited, cores
            result.after, previous = previous, tool.name
            by_tool[tool.name].append(result)
            print(f"[{scenario.key} {rep + 1}/{scenario.reps}] {tool.name}: "
                  f"{result.seconds:.2f}s, {result.peak_kb / 1024:.0f} MB, "
                  f"cpu {result.cpu_s:.2f}s, others' cpu {result.background_cpu_s:.2f}s, "
                  f"{result.cached_steps} cached {result.error}", flush=True)
    return by_tool


def run_order(tools: list[Tool], rep: int) -> list[Tool]:
    """Run rep's order: the permutations of the tools in turn.

    What a build leaves behind (page cache, disk work) can speed up or slow
    down the next tool, so each tool should follow each other one equally
    often: over all permutations every ordered pair is adjacent equally often
    (for 3 tools: 6 runs).
    """
    orders = list(itertools.permutations(tools))
    return list(orders[rep % len(orders)])


def read_tree(directory: Path) -> None:
    """Read every file below directory, so that the page cache holds it.

    The kernel here reclaims pages it sees unused for a few seconds (DAMON), so
    without this a tool that runs later after an edit would read part of the
    context from disk and another would not.
    """
    for folder, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def drop(tool: Tool, tools: list[Tool], unavailable: dict[str, str], error: Exception) -> None:
    unavailable[tool.name] = str(error)
    tools.remove(tool)
    try:
        tool.stop()
    except Exception as stop_error:
        print(f"cleanup of {tool.name} failed: {stop_error}", file=sys.stderr)


def make_base_context(directory: Path) -> None:
    """examples/busybox plus Debian's static busybox, copied (examples/ stays untouched)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise BenchError("busybox is missing: apt-get install busybox-static")
    shutil.copytree(REPO / "examples" / "busybox", directory,
                    ignore=shutil.ignore_patterns("busybox"))
    shutil.copy2(busybox, directory / "busybox")


def git_head() -> str:
    result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                            text=True)
    return result.stdout.strip() or "unknown"


def filesystem_of(path: Path) -> str:
    """"ext4 /dev/vda (rw,relatime,discard,...)" for the mount that holds path."""
    best = ("", "")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4]
            if str(path).startswith(point.rstrip("/") + "/") and len(point) >= len(best[0]):
                tail = fields[fields.index("-") + 1 :]
                best = (point, f"{tail[0]} {tail[1]} on {point} ({tail[2]})")
    return best[1]


def machine_facts(workdir: Path) -> dict:
    def first(path: str, key: str, separator: str = ":") -> str:
        with open(path) as f:
            lines = [line for line in f if line.startswith(key)]
        return lines[0].split(separator, 1)[1].strip() if lines else ""

    return {
        "cores": os.cpu_count(),
        "cpu": first("/proc/cpuinfo", "model name"),
        "memory": first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "os": first("/etc/os-release", "PRETTY_NAME", "=").strip('"'),
        "python": platform.python_version(),
        "runc": subprocess.run(["runc", "--version"], capture_output=True, text=True)
        .stdout.splitlines()[0],
        "workdir_filesystem": filesystem_of(workdir),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

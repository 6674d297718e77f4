"""Benchmark imgbuild against buildah and docker/BuildKit, in one run.

    python3 bench/run.py [--workloads small,multistage,big,python,node,c] [--scenarios KEY,...]
                         [--reps N] [--big-reps N] [--debian-reps N] [--quick-reps N]
                         [--tools imgbuild,buildah,docker] [--smoke]

Run as root (bench/run.sh installs the peers first). Prints the headline
table (median seconds per tool and imgbuild ÷ the fastest peer, as issue 12
has it, with every tool's peak memory), then a table per scenario and tool
with each peer's ratio to imgbuild, and writes the full data to
bench/results/DATE.json. See bench/README.md.
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
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import debian
import report
import scratchfs
from measure import wait_for_quiet
from scenarios import (
    DEBIAN_APPS,
    DEBIAN_IMAGE,
    SMOKE_SHAPE,
    ContextShape,
    DebianApp,
    edit_big_context,
    edit_debian_app,
    edit_small_context,
    write_big_context,
    write_debian_app,
    write_multistage_context,
    write_small_context,
)
from tools import (
    BaseImage,
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
# Each workload's cases, in the order they run (issue 12's table).
WORKLOADS = {
    "small": ("cold-small", "warm-small", "small-change"),
    "multistage": ("multistage-cold", "multistage-warm"),
    "big": ("big-cold", "big-unchanged", "big-change", "big-export"),
    "python": ("python-cold", "python-warm", "python-change"),
    "node": ("node-cold", "node-change"),
    "c": ("c-cold", "c-change"),
}
SCENARIO_KEYS = tuple(key for keys in WORKLOADS.values() for key in keys)
DEBIAN_WORKLOADS = tuple(DEBIAN_APPS)
# What the smoke runs unless --workloads says otherwise: the Debian workloads
# download hundreds of MB and take minutes.
SMOKE_WORKLOADS = ("small", "multistage", "big")
DEBIAN_CACHE = Path("/var/tmp/imgbuild-bench-cache")
# A build starts once the machine used less than this many cores for 0.5 s.
QUIET_CORES = 0.3


@dataclass
class Scenario:
    key: str
    workload: str  # the workload's title, as the report shows it
    case: str  # "cold", "warm no-op", "one file changed", "export as OCI archive"
    dockerfile: Path
    context: Path
    tag: str
    reps: int
    cold: bool  # each run starts from a fresh tool state
    expect_cached: str  # "none", "all", "some" or "any" (an export): what a sane run reports
    bases: list[BaseImage]  # the base images its Dockerfile starts from
    before_run: Callable[[int], None] | None = None
    export: bool = False  # the timed command exports the built image instead of building it
    # Each build that runs steps writes about as many files as the context has
    # (the big workload): a bulk deletion in the minute before slows it most.
    many_files: bool = False

    @property
    def title(self) -> str:
        return f"{self.workload}: {self.case}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reps", type=int, default=3, help="runs per small and multistage scenario (default 3)"
    )
    parser.add_argument(
        "--big-reps", type=int, default=3, help="runs per big-context scenario (default 3)"
    )
    parser.add_argument(
        "--debian-reps", type=int, default=3,
        help="runs per Python, Node and C cold build (default 3)",
    )
    parser.add_argument(
        "--quick-reps", type=int, default=10,
        help="runs per warm no-op and one-file rebuild of the small, multistage, Python, Node and "
        "C workloads (default 10, even: both orders of imgbuild and docker equally often): they "
        "take 0.07-0.3 s, where a few ms of noise swing a median of 3",
    )
    parser.add_argument(
        "--tools", default=",".join(ALL_TOOLS), help="comma-separated subset of " + ", ".join(ALL_TOOLS)
    )
    parser.add_argument(
        "--workloads", default="",
        help="comma-separated subset of " + ", ".join(WORKLOADS)
        + " (default: all; with --smoke: " + ",".join(SMOKE_WORKLOADS) + ")",
    )
    parser.add_argument(
        "--scenarios", default="",
        help="comma-separated subset of " + ", ".join(SCENARIO_KEYS) + " (default: all of the workloads')",
    )
    parser.add_argument(
        "--debian-cache", type=Path, default=DEBIAN_CACHE,
        help=f"where debootstrap's tree is cached between runs (default {DEBIAN_CACHE})",
    )
    parser.add_argument(
        "--workdir-parent", default="/var/tmp", help="where the temp work dir goes (default /var/tmp)"
    )
    parser.add_argument(
        "--scratch-fs", choices=("auto", "on", "off"), default="auto",
        help="run in a journaled ext4 made on a loop device (a sparse file in --workdir-parent); "
        "auto (the default): when --workdir-parent is on ext4 without a journal, except "
        "with --smoke (see bench/scratchfs.py)",
    )
    parser.add_argument(
        "--scratch-gib", type=int, default=scratchfs.DEFAULT_SIZE_GIB,
        help=f"size of the scratch filesystem in GiB (default {scratchfs.DEFAULT_SIZE_GIB}; "
        "the file is sparse, but this much must be free)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=15.0,
        help="before each build, wait up to this many seconds for the machine to be idle "
        "(default 15; 0 turns it off)",
    )
    parser.add_argument(
        "--settle", type=float, default=None,
        help="in a cold case, after every tool's old state is deleted, sync and wait this "
        "many seconds before the first timed build (default: 61 if the work dir is on ext4 "
        "without a journal, which avoids reusing inodes freed in the last minute, 0 elsewhere "
        "and with --smoke)",
    )
    parser.add_argument(
        "--nice", type=int, default=-10,
        help="CPU priority for the benchmark and every tool it starts, dockerd included "
        "(default -10; 0 leaves it)",
    )
    parser.add_argument(
        "--smoke", action="store_true",
        help="one run of each busybox case, small contexts and work: checks the harness",
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
    select_scenarios(parser, args)
    if args.scratch_fs == "auto":
        # The smoke checks the harness, not the figures: no filesystem of its own.
        needed = not args.smoke and inode_reuse_delay(Path(args.workdir_parent)) > 0
        args.scratch_fs = "on" if needed else "off"
    if args.smoke:
        args.reps = args.big_reps = args.debian_reps = args.quick_reps = 1
    return args


def select_scenarios(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """args.scenarios: the keys --workloads and --scenarios select together, in
    WORKLOADS order; args.workloads: the workloads they belong to."""
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if set(workloads) - set(WORKLOADS):
        parser.error(f"--workloads must name some of {', '.join(WORKLOADS)}")
    if not workloads:
        workloads = list(SMOKE_WORKLOADS if args.smoke else WORKLOADS)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if set(scenarios) - set(SCENARIO_KEYS):
        parser.error(f"--scenarios must name some of {', '.join(SCENARIO_KEYS)}")
    if scenarios and not args.workloads:
        workloads = list(WORKLOADS)  # the scenarios named pick the workloads
    args.scenarios = [
        key for w in WORKLOADS if w in workloads for key in WORKLOADS[w]
        if not scenarios or key in scenarios
    ]
    if not args.scenarios:
        parser.error("--workloads and --scenarios select no scenario together")
    args.workloads = [w for w in WORKLOADS if any(k in args.scenarios for k in WORKLOADS[w])]


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
    try:
        with ExitStack() as stack:
            parent = Path(args.workdir_parent)
            if args.scratch_fs == "on":
                parent = make_scratch(stack, parent, args.scratch_gib, logs / "scratchfs.log")
                if parent == Path(args.workdir_parent):
                    args.scratch_fs = "off"  # unavailable: the note said why
            if args.settle is None:
                # The smoke checks the harness, not the figures: no minute per cold run.
                args.settle = 0.0 if args.smoke else inode_reuse_delay(parent)
            workdir = Path(tempfile.mkdtemp(prefix="imgbuild-bench-", dir=parent))
            tools: list[Tool] = []
            stack.callback(clean_up, workdir, tools)
            return run_benchmark(args, workdir, logs, stamp, tools, time.monotonic())
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    except BenchError as error:
        print(f"run.py: {error}", file=sys.stderr)
        return 1


def make_scratch(stack: ExitStack, parent: Path, size_gib: int, log: Path) -> Path:
    """The scratch filesystem's mount point, or parent if it cannot be made."""
    try:
        mountpoint = stack.enter_context(scratchfs.scratch_filesystem(parent, size_gib, log))
    except scratchfs.ScratchUnavailable as error:
        print(f"NOTE: running in {parent}, without a scratch filesystem: {error}")
        return parent
    print(f"scratch filesystem: journaled ext4, {size_gib} GiB, on {mountpoint}")
    return mountpoint


def clean_up(workdir: Path, tools: list[Tool]) -> None:
    started = time.monotonic()
    # Last started, first stopped: dockerd goes down before the slow deletes.
    for tool in reversed(tools):
        try:
            tool.stop()
        except Exception as error:  # clean up the others whatever happens
            print(f"cleanup of {tool.name} failed: {error}", file=sys.stderr)
    remove_tree(workdir)
    print(f"cleaned up {workdir} in {time.monotonic() - started:.0f}s")


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
    contexts, big_facts = write_contexts(args.workloads, workdir, shape)
    base_context = workdir / "ctx-base"
    make_base_context(base_context)

    imgbuild = Imgbuild(workdir, logs, REPO, sys.executable)
    tools.append(imgbuild)
    bases = {"busybox": imgbuild.make_base(base_context)}
    if set(args.workloads) & set(DEBIAN_WORKLOADS):
        t0 = time.monotonic()
        rootfs = debian.rootfs_tar(args.debian_cache, imgbuild.setup_log)
        tree = workdir / "debian-tree"
        added = debian.prepare_tree(rootfs, tree, imgbuild.setup_log)
        print(f"Debian base: host CA certificates added: {', '.join(added) or 'none'}")
        import_args = debian.import_arguments(tree, DEBIAN_IMAGE)
        bases["debian"] = imgbuild.import_base(import_args, DEBIAN_IMAGE, "debian")
        remove_tree(tree)
        print(f"made the Debian base {DEBIAN_IMAGE} from {rootfs} in {time.monotonic() - t0:.0f}s")
    scenarios = [s for s in make_scenarios(args, contexts, big_facts, bases) if s.key in args.scenarios]
    needed = unique_bases(scenarios)
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
            tool.fresh_state(needed)
        except BenchError as error:
            drop(tool, tools, unavailable, error)
    for name, reason in unavailable.items():
        print(f"NOTE: {name} is left out of this run: {reason}")
    print("versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()))

    rows: list[report.Row] = []
    headline: list[report.Headline] = []
    runs: dict[str, dict[str, list[dict]]] = {}
    for scenario in scenarios:
        by_tool, warmup_hits = run_scenario(
            scenario, tools, logs, unavailable, args.quiet_wait, args.settle
        )
        case_rows = report.summarize(
            scenario.key, scenario.title, by_tool, scenario.expect_cached, warmup_hits
        )
        rows += case_rows
        headline.append(report.headline(scenario.key, scenario.workload, scenario.case, case_rows))
        runs[scenario.key] = {
            name: [report.run_record(r) for r in results] for name, results in by_tool.items()
        }

    machine = machine_facts(workdir)
    print("\nmachine: " + report.machine_line(machine, versions))
    print("\n" + report.headline_text(headline, args.tools))
    print("\n" + report.text_table(rows))
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
        "machine": machine,
        "versions": versions,
        "machine_line": report.machine_line(machine, versions),
        "unavailable": unavailable,
        "settings": {
            "reps": args.reps, "big_reps": args.big_reps, "debian_reps": args.debian_reps,
            "quick_reps": args.quick_reps,
            "smoke": args.smoke, "workloads": args.workloads, "scenarios": args.scenarios,
            "quiet_wait_s": args.quiet_wait, "quiet_cores": QUIET_CORES, "nice": args.nice,
            "settle_s": args.settle, "scratch_fs": args.scratch_fs,
            "big_context": big_facts | {"shape": shape.__dict__},
            "buildah_storage_driver": Buildah.storage_driver,
            "debian_cache": str(args.debian_cache) if "debian" in bases else None,
        },
        "headline": [report.headline_record(h) for h in headline],
        "rows": [report.row_record(r) for r in rows],
        "runs": runs,
        "headline_markdown": report.headline_markdown(headline, args.tools),
        "markdown_table": report.markdown_table(rows),
    }
    out = args.results / f"{stamp}.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {out} (logs in {logs}); total {elapsed / 60:.1f} min")
    return 0


def write_contexts(
    workloads: list[str], workdir: Path, shape: ContextShape
) -> tuple[dict[str, Path], dict[str, int]]:
    """Each selected workload's context under workdir, by workload; and the big
    context's files and bytes (empty without it)."""
    contexts: dict[str, Path] = {}
    big_facts: dict[str, int] = {}
    for workload in workloads:
        directory = workdir / f"ctx-{workload}"
        contexts[workload] = directory
        if workload == "small":
            directory.mkdir()
            write_small_context(directory)
        elif workload == "multistage":
            directory.mkdir()
            write_multistage_context(directory, shape)
        elif workload == "big":
            directory.mkdir()
            t0 = time.monotonic()
            files, size = write_big_context(directory, shape)
            big_facts = {"files": files, "bytes": size}
            print(f"generated the big context: {files} files, {size / 1e6:.0f} MB "
                  f"in {time.monotonic() - t0:.1f}s")
        else:
            try:
                write_debian_app(directory, DEBIAN_APPS[workload])
            except ValueError as error:
                raise BenchError(str(error)) from error
    return contexts, big_facts


COLD, WARM, CHANGED, EXPORT = "cold", "warm no-op", "one file changed", "export as OCI archive"


def make_scenarios(
    args: argparse.Namespace, contexts: dict[str, Path], big_facts: dict[str, int],
    bases: dict[str, BaseImage],
) -> list[Scenario]:
    """Every scenario of the selected workloads, in WORKLOADS order."""
    scenarios: list[Scenario] = []
    busybox = [bases["busybox"]]

    def add(key: str, workload: str, case: str, context: Path, tag: str, reps: int,
            needs: list[BaseImage], **options) -> None:
        expect = {COLD: "none", WARM: "all", CHANGED: "some", EXPORT: "any"}[case]
        scenarios.append(Scenario(
            key, workload, case, context / "Dockerfile", context, tag, reps, cold=case == COLD,
            expect_cached=expect, bases=needs, export=case == EXPORT, **options,
        ))  # fmt: skip

    if "small" in contexts:
        small, title = contexts["small"], "small (10 instructions)"
        add("cold-small", title, COLD, small, "bench-small:1", args.reps, busybox)
        add("warm-small", title, WARM, small, "bench-small:1", args.quick_reps, busybox)
        add("small-change", title, CHANGED, small, "bench-small:1", args.quick_reps, busybox,
            before_run=lambda rep: edit_small_context(small, rep + 1))
    if "multistage" in contexts:
        multi, title = contexts["multistage"], "multistage (2 stages x 2 s CPU)"
        add("multistage-cold", title, COLD, multi, "bench-multistage:1", args.reps, busybox)
        add("multistage-warm", title, WARM, multi, "bench-multistage:1", args.quick_reps, busybox)
    if "big" in contexts:
        big, facts = contexts["big"], big_facts
        title = f"big ({facts['files']:,} files, {facts['bytes'] / 1e6:.0f} MB: COPY + RUN)"
        for key, case in (("big-cold", COLD), ("big-unchanged", WARM), ("big-export", EXPORT)):
            add(key, title, case, big, "bench-big:1", args.big_reps, busybox, many_files=True)
        add("big-change", title, CHANGED, big, "bench-big:1", args.big_reps, busybox,
            before_run=lambda rep: edit_big_context(big, rep + 1), many_files=True)
    for workload in DEBIAN_WORKLOADS:
        if workload in contexts:
            add_debian(add, workload, contexts[workload], args.debian_reps, args.quick_reps, bases)
    order = {key: index for index, key in enumerate(SCENARIO_KEYS)}
    return sorted(scenarios, key=lambda s: order[s.key])


DEBIAN_TITLES = {
    "python": "Python app (Debian, apt + venv + pip)",
    "node": "Node app (Debian nodejs, npm ci)",
    "c": "C program (gcc stage -> busybox)",
}


def add_debian(add: Callable, workload: str, context: Path, reps: int, quick_reps: int,
               bases: dict[str, BaseImage]) -> None:
    app: DebianApp = DEBIAN_APPS[workload]
    # The C program's final stage is FROM busybox:local.
    needs = [bases["debian"], bases["busybox"]] if workload == "c" else [bases["debian"]]
    tag = f"bench-{workload}:1"
    for key in WORKLOADS[workload]:
        case = {"cold": COLD, "warm": WARM, "change": CHANGED}[key.split("-", 1)[1]]
        options = {}
        if case == CHANGED:
            options["before_run"] = lambda rep: edit_debian_app(context, app, rep + 1)
        runs = reps if case == COLD else quick_reps
        add(key, DEBIAN_TITLES[workload], case, context, tag, runs, needs, **options)


def unique_bases(scenarios: list[Scenario]) -> list[BaseImage]:
    found: dict[str, BaseImage] = {}
    for scenario in scenarios:
        for base in scenario.bases:
            found.setdefault(base.name, base)
    return list(found.values())


def run_scenario(
    scenario: Scenario, tools: list[Tool], logs: Path, unavailable: dict[str, str],
    quiet_wait: float,
    settle: float = 0.0,
) -> tuple[dict[str, list[BuildResult]], dict[str, int]]:
    """Interleave the tools run by run, so drift in the machine's state does
    not favour one tool. Returns each tool's results and the cache hits of its
    last untimed build (a no-op rebuild, for a change case).

    A cold run first gives every tool its fresh state (deleting the old ones),
    then settles once, then times the tools in turn: on ext4 without a journal
    a file created within a minute of mass deletion costs the kernel a scan of
    the freed inodes (see inode_reuse_delay), which would bill one tool for
    another's clean-up. For the same reason a tool that deletes in bulk after
    its builds runs last (run_order), and in a case whose builds write many
    files the first timed build after any of its builds (warm-ups included)
    waits for the settle too: the next run's first, or its own next run."""
    by_tool: dict[str, list[BuildResult]] = {tool.name: [] for tool in tools}
    warmup_hits: dict[str, int] = {}
    deleted_in_bulk = False  # by a tool's command since the last settle
    if not scenario.cold:
        for tool in tools:
            if tool.name in unavailable:
                continue
            try:
                tool.ensure_bases(scenario.bases)
            except BenchError as error:
                unavailable[tool.name] = f"loading the base images for {scenario.key} failed: {error}"
                continue
            # A change case builds twice: the second build is a no-op for
            # sure, and its cache hits are what an edit must bring down.
            for build in range(2 if scenario.expect_cached == "some" else 1):
                os.sync()
                suffix = f"-{build + 1}" if build else ""
                warm = tool.build(scenario.dockerfile, scenario.context, scenario.tag,
                                  logs / f"{scenario.key}-{tool.name}-warmup{suffix}.log")
                warmup_hits[tool.name] = warm.cached_steps
                deleted_in_bulk = deleted_in_bulk or tool.deletes_in_bulk
                print(f"[{scenario.key} warm-up] {tool.name}: {warm.seconds:.2f}s, "
                      f"{warm.cached_steps} cached {warm.error}")
    previous = "warm-up" if not scenario.cold else "none"
    for rep in range(scenario.reps):
        if scenario.before_run:
            scenario.before_run(rep)
        order = run_order(tools, rep)
        if scenario.cold:
            fresh_states(scenario, order, unavailable)
            settle_after_deletions(settle)
            deleted_in_bulk = False
        for tool in order:
            if tool.name in unavailable:
                continue
            if deleted_in_bulk and scenario.many_files:
                settle_after_deletions(settle)
                deleted_in_bulk = False
            deleted_in_bulk = deleted_in_bulk or tool.deletes_in_bulk
            log = logs / f"{scenario.key}-{tool.name}-{rep + 1}.log"
            # Flush what earlier builds wrote, so that writeback does not land
            # inside this tool's timing; give every tool the context in the
            # page cache; let other people's bursts pass.
            os.sync()
            read_tree(scenario.context)
            waited, cores = wait_for_quiet(QUIET_CORES, quiet_wait) if quiet_wait else (0.0, 0.0)
            if scenario.export:
                result = tool.export(scenario.tag, log)
            else:
                result = tool.build(scenario.dockerfile, scenario.context, scenario.tag, log)
            result.quiet_wait_s, result.busy_cores_before = waited, cores
            result.after, previous = previous, tool.name
            by_tool[tool.name].append(result)
            print(f"[{scenario.key} {rep + 1}/{scenario.reps}] {tool.name}: "
                  f"{result.seconds:.2f}s, {result.peak_kb / 1024:.0f} MB, "
                  f"cpu {result.cpu_s:.2f}s, others' cpu {result.background_cpu_s:.2f}s, "
                  f"{result.cached_steps} cached {result.error}", flush=True)
    return by_tool, warmup_hits


def fresh_states(scenario: Scenario, order: list[Tool], unavailable: dict[str, str]) -> None:
    for tool in order:
        if tool.name in unavailable:
            continue
        try:
            tool.fresh_state(scenario.bases)
        except BenchError as error:
            unavailable[tool.name] = f"fresh state for {scenario.key} failed: {error}"


def settle_after_deletions(seconds: float) -> None:
    """Write back the freed inodes' table blocks, then wait out the kernel's reuse delay."""
    if seconds > 0:
        os.sync()
        time.sleep(seconds)


# ext4 without a journal does not reuse an inode freed less than 60 s ago
# (fs/ext4/ialloc.c: recently_deleted, RECENTCY_MIN; 300 s more while the
# inode table block is dirty, hence the sync first). Until then every new file
# in that block group scans past each such inode: after deleting a 20,000-file
# tree, creating 20,000 files took 4-8 s of system time instead of ~0.5-2 s.
INODE_REUSE_DELAY = 61.0


def inode_reuse_delay(path: Path, mountinfo: str = "/proc/self/mountinfo",
                      sysfs: Path = Path("/sys/fs/ext4")) -> float:
    """INODE_REUSE_DELAY if path is on ext4 without a journal, else 0."""
    fstype, source = "", ""
    best = ""
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            point = fields[4]
            inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                tail = fields[fields.index("-") + 1 :]
                best, fstype, source = point, tail[0], tail[1]
    if fstype != "ext4":
        return 0.0
    try:
        journal = (sysfs / Path(source).name / "journal_task").read_text().strip()
    except OSError:
        return 0.0
    return INODE_REUSE_DELAY if journal == "<none>" else 0.0


def run_order(tools: list[Tool], rep: int) -> list[Tool]:
    """Run rep's order: the permutations of the tools in turn, then the tools
    that delete in bulk after their builds.

    What a build leaves behind (page cache, disk work) can speed up or slow
    down the next tool, so each tool should follow each other one equally
    often: over all permutations every ordered pair is adjacent equally often
    (for 3 tools: 6 runs). Bulk deletions are the exception: the 20,000 files
    buildah deletes after a big build made the next tool's build of the same
    tree take 10 s instead of 4.5 (imgbuild) and 5.3 s (docker), so a tool
    that deletes in bulk never runs before another in the same run.
    """
    first = [tool for tool in tools if not tool.deletes_in_bulk]
    last = [tool for tool in tools if tool.deletes_in_bulk]
    orders = list(itertools.permutations(first))
    return [*orders[rep % len(orders)], *last]


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

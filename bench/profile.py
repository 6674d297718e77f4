"""Where imgbuild's time goes in one benchmark scenario, sampled with py-spy.

    pip install py-spy
    python3 bench/profile.py warm-small|cold-small|big-change|big-unchanged [--runs N]

Sets up a private store and the benchmark's contexts (as bench/run.py does),
records N builds of the scenario with `py-spy record --idle --threads`, and
prints the functions with the largest share of the samples: by self time
(the sampled frame) and inclusive (anywhere on the stack). Idle samples are
kept on purpose, so waiting for runc, disk or a lock shows up too; the main
thread's wait for the stage worker thread is dropped, since the worker's own
samples carry that time. Raw stacks stay in bench/results/profile-*/.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from run import REPO, RESULTS, inode_reuse_delay, make_base_context, make_scratch
from scenarios import ContextShape, edit_big_context, write_big_context, write_small_context
from scratchfs import DEFAULT_SIZE_GIB
from tools import BenchError, Imgbuild, remove_tree

SCENARIOS = ("warm-small", "cold-small", "big-change", "big-unchanged")
# Leaf frames that only mean "this thread waits for another Python thread".
THREAD_WAITS = ("threading.py", "concurrent/futures/_base.py")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("profile.py: py-spy is missing: pip install py-spy", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    out = RESULTS / f"profile-{args.scenario}-{stamp}"
    out.mkdir(parents=True)
    try:
        with ExitStack() as stack:
            parent = Path("/var/tmp")
            # The same filesystem as bench/run.py's runs (see bench/scratchfs.py).
            if inode_reuse_delay(parent) > 0:
                parent = make_scratch(stack, parent, DEFAULT_SIZE_GIB, out / "scratchfs.log")
            workdir = Path(tempfile.mkdtemp(prefix="imgbuild-profile-", dir=parent))
            stack.callback(remove_tree, workdir)
            stacks = profile(args, workdir, out)
    except BenchError as error:
        print(f"profile.py: {error}", file=sys.stderr)
        return 1
    print_hotspots(stacks, args.top)
    print(f"\nraw stacks in {out}")
    return 0


def profile(args: argparse.Namespace, workdir: Path, out: Path) -> Counter[tuple[str, ...]]:
    small, big, base_context = workdir / "ctx-small", workdir / "ctx-big", workdir / "ctx-base"
    small.mkdir()
    write_small_context(small)
    if args.scenario.startswith("big"):
        big.mkdir()
        write_big_context(big, ContextShape())
    make_base_context(base_context)
    tool = Imgbuild(workdir, out, REPO, sys.executable)
    base = [tool.make_base(base_context)]
    tool.fresh_state(base)
    context = big if args.scenario.startswith("big") else small
    if args.scenario != "cold-small":
        tool.build(context / "Dockerfile", context, "profiled:1", out / "warm-up.log")
    stacks: Counter[tuple[str, ...]] = Counter()
    for run in range(args.runs):
        if args.scenario == "cold-small":
            tool.fresh_state(base)
        if args.scenario == "big-change":
            edit_big_context(big, run + 1)
        raw = out / f"run{run + 1}.txt"
        command = tool.command(
            tool.root, "build", "-f", str(context / "Dockerfile"), "-t", "profiled:1",
            "--progress", "plain", str(context),
        )
        record = [
            "py-spy", "record", "--idle", "--threads", "-r", str(args.rate), "-f", "raw",
            "-o", str(raw), "--", *command,
        ]
        with open(out / f"run{run + 1}.log", "wb") as log:
            subprocess.run(record, env=tool.env, stdout=log, stderr=subprocess.STDOUT, check=True)
        stacks.update(read_raw(raw))
    return stacks


def read_raw(path: Path) -> Counter[tuple[str, ...]]:
    """py-spy's raw format: "frame;frame;... COUNT", outermost frame first."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = tuple(f for f in stack.split(";") if not f.startswith("thread ("))
        if not frames or any(wait in frames[-1] for wait in THREAD_WAITS):
            continue
        stacks[tuple(location(f) for f in frames)] += int(count)
    return stacks


def location(frame: str) -> str:
    """"func (path/file.py:123)" -> "path/file.py:func"; stdlib paths shortened."""
    function, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{function}"


def print_hotspots(stacks: Counter[tuple[str, ...]], top: int) -> None:
    total = sum(stacks.values())
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks.items():
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"{total} samples")
    print("\nself time (the sampled frame):")
    for name, count in self_time.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("\ninclusive (anywhere on the stack):")
    for name, count in inclusive.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Layer creation throughput: imgbuild's layer writer against tar | gzip -1 and
tar | zstd -T0 -3 on the same tree (issue 12's target: at least 60% of zstd's
rate, and faster than gzip -1 when the output is gzip).

    python3 bench/layerspeed.py [--dir DIR] [--runs 3] [--smoke] [--workdir-parent /var/tmp]
                                [--baseline OTHER_CHECKOUT]

Without --dir it generates the benchmark's big context (20,002 files, 205 MB;
--smoke: the small shape) in a temp dir. Every candidate writes to /dev/null,
so the figure is the walk, tar encoding, hashing and compression, not the
disk. The tree is read once first, so all start with it in the page cache.

The candidates take turns (one run of each, then the next round), so a
machine that other work slows down for a while slows all of them alike; the
ratio column is the median of each round's ratio to that round's zstd. CPU
seconds (user + system of every thread and process) move less than wall time
on a shared machine.
--baseline adds imgbuild's candidates as written by another checkout (e.g.
``git archive main | tar -x -C /tmp/old``), timed in a child process of
that tree's code: before and after in one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scenarios import SMOKE_SHAPE, ContextShape, write_big_context  # noqa: E402

# name -> (imgbuild compression, level) or a shell pipeline fed by tar
CANDIDATES: dict[str, tuple[str, int | None] | str] = {
    "imgbuild gzip (default)": ("gzip", None),
    "imgbuild gzip level 6 (zlib)": ("gzip", 6),
    "imgbuild zstd (default)": ("zstd", None),
    "imgbuild uncompressed": ("uncompressed", None),
    "tar | gzip -1": "gzip -1",
    "tar | zstd -T0 -3": "zstd -q -T0 -3",
    "tar | sha256sum": "sha256sum",
}


def tar_size(tree: Path) -> int:
    tar = subprocess.run(f"tar -cf - -C '{tree}' . | wc -c", shell=True, check=True, capture_output=True, text=True)
    return int(tar.stdout)


def time_candidate(tree: Path, how, checkout: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, all threads and processes) of one run."""
    if isinstance(how, str):
        before = _children_cpu()
        started = time.perf_counter()
        subprocess.run(f"tar -cf - -C '{tree}' . | {how} > /dev/null", shell=True, check=True)
        return time.perf_counter() - started, _children_cpu() - before
    compression, level = how
    return _time_in_child(tree, compression, level, checkout)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# Run by a child with the checkout first on its path: times write_layer only,
# in a fresh process each time (for this checkout and a baseline alike).
_CHILD = """
import resource, sys, time
from pathlib import Path
from imgbuild.layer.write import write_layer
tree, compression, level = sys.argv[1], sys.argv[2], sys.argv[3]
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
with open("/dev/null", "wb") as out:
    started, cpu_before = time.perf_counter(), cpu()
    write_layer(Path(tree), out, compression=compression, level=None if level == "-" else int(level), source_date_epoch=0)
    print(time.perf_counter() - started, cpu() - cpu_before)
"""


def _time_in_child(tree: Path, compression: str, level: int | None, checkout: Path) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    args = [sys.executable, "-c", _CHILD, str(tree), compression, "-" if level is None else str(level)]
    # cwd too: "python -c" puts the working directory first on sys.path
    done = subprocess.run(args, env=env, cwd=checkout, check=True, capture_output=True, text=True)
    wall, cpu = done.stdout.split()
    return float(wall), float(cpu)


def measure(tree: Path, runs: int, baseline: Path | None = None) -> list[dict]:
    size = tar_size(tree)  # also reads the tree into the page cache
    candidates = [(name, how, HERE.parent) for name, how in CANDIDATES.items()]
    if baseline is not None:
        candidates += [
            (f"baseline: {name}", how, baseline) for name, how in CANDIDATES.items() if not isinstance(how, str)
        ]
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in candidates}
    # each child imports the writer: once before timing, so all find it cached
    _time_in_child(tree, "uncompressed", None, HERE.parent)
    for _ in range(runs):
        for name, how, checkout in candidates:
            seconds[name].append(time_candidate(tree, how, checkout))
    zstd = seconds["tar | zstd -T0 -3"]
    rows = []
    for name, times in seconds.items():
        median = statistics.median(wall for wall, _ in times)
        rows.append({
            "candidate": name,
            "seconds": median,
            "cpu": statistics.median(cpu for _, cpu in times),
            "mb_per_s": size / median / 1e6,
            "share": statistics.median(z[0] / t[0] for z, t in zip(zstd, times, strict=True)),
        })
    return rows


def report(rows: list[dict]) -> str:
    lines = [
        "| candidate | median s | CPU s | MB/s of tar | rate ÷ tar \\| zstd -T0 -3 |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        share = row["share"]
        name = row["candidate"].replace("|", "\\|")  # a markdown table cell
        lines.append(f"| {name} | {row['seconds']:.2f} | {row['cpu']:.2f} | {row['mb_per_s']:.0f} | {share:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="measure this tree (default: generate the big context)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a small tree, one run")
    parser.add_argument("--workdir-parent", default="/var/tmp", help="where the generated tree goes")
    parser.add_argument("--baseline", type=Path, help="also time the writer of this other checkout")
    args = parser.parse_args()
    if args.dir:
        print(report(measure(args.dir, args.runs, args.baseline)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.workdir_parent, prefix="imgbuild-layerspeed-") as work:
        tree = Path(work) / "big"
        tree.mkdir()
        files, size = write_big_context(tree, SMOKE_SHAPE if args.smoke else ContextShape())
        print(f"tree: {files} files, {size / 1e6:.0f} MB")
        print(report(measure(tree, 1 if args.smoke else args.runs, args.baseline)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

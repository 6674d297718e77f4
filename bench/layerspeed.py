"""Layer creation throughput: imgbuild's layer writer against tar | gzip -1 and
tar | zstd -T0 -3 on the same tree (issue 12's target: at least 60% of zstd's
rate, and faster than gzip -1 when the output is gzip).

    python3 bench/layerspeed.py [--dir DIR] [--runs 3] [--smoke] [--workdir-parent /var/tmp]

Without --dir it generates the benchmark's big context (20,002 files, 205 MB;
--smoke: the small shape) in a temp dir. Every candidate writes to /dev/null,
so the figure is the walk, tar encoding, hashing and compression, not the
disk. The tree is read once first, so all start with it in the page cache.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from scenarios import SMOKE_SHAPE, ContextShape, write_big_context  # noqa: E402

from imgbuild.layer.write import write_layer  # noqa: E402

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


def time_candidate(tree: Path, how) -> float:
    started = time.perf_counter()
    if isinstance(how, str):
        subprocess.run(f"tar -cf - -C '{tree}' . | {how} > /dev/null", shell=True, check=True)
    else:
        compression, level = how
        with open("/dev/null", "wb") as out:
            write_layer(tree, out, compression=compression, level=level, source_date_epoch=0)
    return time.perf_counter() - started


def measure(tree: Path, runs: int) -> list[dict]:
    size = tar_size(tree)  # also reads the tree into the page cache
    rows = []
    for name, how in CANDIDATES.items():
        seconds = statistics.median(time_candidate(tree, how) for _ in range(runs))
        rows.append({"candidate": name, "seconds": seconds, "mb_per_s": size / seconds / 1e6})
    return rows


def report(rows: list[dict]) -> str:
    zstd = next(row for row in rows if row["candidate"] == "tar | zstd -T0 -3")
    lines = ["| candidate | median s | MB/s of tar | ÷ tar \\| zstd -T0 -3 |", "|---|---:|---:|---:|"]
    for row in rows:
        share = row["mb_per_s"] / zstd["mb_per_s"]
        name = row["candidate"].replace("|", "\\|")  # a markdown table cell
        lines.append(f"| {name} | {row['seconds']:.2f} | {row['mb_per_s']:.0f} | {share:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="measure this tree (default: generate the big context)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a small tree, one run")
    parser.add_argument("--workdir-parent", default="/var/tmp", help="where the generated tree goes")
    args = parser.parse_args()
    if args.dir:
        print(report(measure(args.dir, args.runs)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.workdir_parent, prefix="imgbuild-layerspeed-") as work:
        tree = Path(work) / "big"
        tree.mkdir()
        files, size = write_big_context(tree, SMOKE_SHAPE if args.smoke else ContextShape())
        print(f"tree: {files} files, {size / 1e6:.0f} MB")
        print(report(measure(tree, 1 if args.smoke else args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``imgbuild diff A B``: config, file and (``--packages``) package differences
between two images. A and B are named as ``imgbuild layers`` takes them.
See docs/inspection.md."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="store name, oci:DIR[:TAG], oci-archive:F, docker-archive:F or REF")
    parser.add_argument("b", metavar="B", help="the image to compare A with")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or json")
    parser.add_argument("--ignore-timestamps", action="store_true",
                        help="leave out the config's created time and file modification times")
    parser.add_argument("--packages", action="store_true",
                        help="also compare installed Debian (dpkg), Python (dist-info) and npm packages")
    parser.add_argument("--platform", help="for multi-platform images: os/arch[/variant]")
    parser.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                        help="speak plain HTTP to HOST when pulling")


def run(args: argparse.Namespace) -> int:
    from imgbuild.image import Platform
    from imgbuild.layerview.imagediff import diff_images, read_side
    from imgbuild.layerview.source import open_image
    from imgbuild.store import Store

    store = Store(args.root)
    platform = Platform.parse(args.platform) if args.platform else None
    sides = [
        read_side(store, open_image(store, name, platform, tuple(args.insecure_registry)), args.packages)
        for name in (args.a, args.b)
    ]
    report = diff_images(*sides, args.ignore_timestamps, args.packages)
    if args.format == "json":
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_table(report)
    return 0


def _print_table(report: dict) -> None:
    from imgbuild.builder.terminal import safe_chars

    print(f"--- {safe_chars(report['a']['image'])} ({report['a']['digest']})")
    print(f"+++ {safe_chars(report['b']['image'])} ({report['b']['digest']})")
    print()
    print("config:" if report["config"] else "config: the same")
    for row in report["config"]:
        print(f"  {row['field']}: {json.dumps(row['a'])} -> {json.dumps(row['b'])}")
    files = report["files"]
    counts = files["counts"]
    print()
    print(f"files: {counts['added']} added, {counts['removed']} removed, {counts['changed']} changed")
    for row in files["added"]:
        print(f"  + {safe_chars(row['path'])}")
    for row in files["removed"]:
        print(f"  - {safe_chars(row['path'])}")
    for row in files["changed"]:
        print(f"  ~ {safe_chars(row['path'])} ({', '.join(row['changes'])})")
    for ecosystem, changes in report.get("packages", {}).items():
        print()
        print(f"{ecosystem} packages: {len(changes['added'])} added, {len(changes['removed'])} removed, "
              f"{len(changes['changed'])} changed")
        for row in changes["added"]:
            print(f"  + {row['name']} {row['version']}")
        for row in changes["removed"]:
            print(f"  - {row['name']} {row['version']}")
        for row in changes["changed"]:
            print(f"  ~ {row['name']} {row['a']} -> {row['b']}")

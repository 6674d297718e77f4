"""``imgbuild layers IMAGE``: each layer's step, size, origin and changed paths;
dive's wasted-space figures; ``--ci`` gates on them; ``--format html`` writes
a report. See docs/inspection.md.

IMAGE is a name in the store, ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``,
``docker-archive:FILE``, or a registry reference (pulled into the store).
"""

from __future__ import annotations

import argparse
import json
import sys

from imgbuild.errors import UsageError
from imgbuild.units import human_size, parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="store name, oci:DIR[:TAG], oci-archive:F, docker-archive:F or REF")
    parser.add_argument("--format", choices=("table", "json", "html"), default="table", help="table (default), json or html")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    parser.add_argument("--changes", default="added,modified,removed", help="which changes to list (default all)")
    parser.add_argument("--sort", choices=("path", "size"), default="path", help="order of the listed paths")
    parser.add_argument("--min-size", default="0", metavar="SIZE", help="list only paths of at least SIZE (10MB, 512k)")
    parser.add_argument("--path", metavar="GLOB", help="list only paths matching GLOB (* crosses /)")
    parser.add_argument("--tree", action="store_true", help="show the merged filesystem with each path's layer")
    parser.add_argument("--platform", help="for a multi-platform image: os/arch[/variant]")
    parser.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                        help="speak plain HTTP to HOST when pulling")
    ci = parser.add_argument_group("CI gate (dive's rules and defaults)")
    ci.add_argument("--ci", action="store_true", help="check dive's thresholds; exit 1 naming any exceeded")
    ci.add_argument("--ci-config", metavar="FILE", help="a .dive-ci file (default ./.dive-ci when it exists)")
    ci.add_argument("--lowest-efficiency", metavar="RATIO", help="fail below this efficiency (dive default 0.9)")
    ci.add_argument("--highest-wasted-bytes", metavar="SIZE", help="fail above this many wasted bytes (default disabled)")
    ci.add_argument("--highest-user-wasted-percent", metavar="RATIO", help="fail above this ratio (default 0.1)")


def run(args: argparse.Namespace) -> int:
    from imgbuild.image import Platform
    from imgbuild.layerview.layers import CHANGES, Options, analyze, tree_rows
    from imgbuild.layerview.source import open_image
    from imgbuild.store import Store

    changes = tuple(word.strip() for word in args.changes.split(",") if word.strip())
    if not changes or any(word not in CHANGES for word in changes):
        raise UsageError(f"--changes {args.changes!r}: give a comma-separated list of {', '.join(CHANGES)}")
    rules = _ci_rules(args) if args.ci else None
    options = Options(changes, args.sort, parse_size(args.min_size, "--min-size"), args.path, args.tree)
    store = Store(args.root)
    platform = Platform.parse(args.platform) if args.platform else None
    source = open_image(store, args.image, platform, tuple(args.insecure_registry))
    analysis = analyze(store, source.image, options)
    # the HTML treemap needs the whole final tree, whatever --path or --min-size list
    tree = tree_rows(analysis, Options()) if args.format == "html" else None
    report = _report(source.label, analysis, tree_rows(analysis, options) if args.tree else tree)
    results = None
    if rules is not None:
        from imgbuild.layerview.wasted import evaluate

        results = evaluate(report["wasted"], rules)
        report["ci"] = [vars(result) for result in results]
    _write(args, report)
    if results is not None:
        failed = [result for result in results if result.status == "fail"]
        for result in failed:
            print(f"FAIL: {result.rule}: {result.message}", file=sys.stderr)
        return 1 if failed else 0
    return 0


def _ci_rules(args: argparse.Namespace) -> dict[str, str]:
    import os

    from imgbuild.layerview.wasted import parse_bytes, read_dive_ci
    from imgbuild.safeopen import read_user_file

    rules: dict[str, str] = {}
    path = args.ci_config or (".dive-ci" if os.path.isfile(".dive-ci") else None)
    if path:
        try:
            text = read_user_file(path, 1 << 20).decode("utf-8", "replace")
        except OSError as error:
            raise UsageError(f"cannot read the CI config {path}: {error.strerror or error}") from None
        rules.update(read_dive_ci(text, path))
    for key in ("lowest_efficiency", "highest_wasted_bytes", "highest_user_wasted_percent"):
        value = getattr(args, key)
        if value is not None:
            rules[key.replace("_", "-")] = value
    if "highest-wasted-bytes" in rules and rules["highest-wasted-bytes"].lower() not in ("", "disabled", "off", "false"):
        parse_bytes(rules["highest-wasted-bytes"], "highest-wasted-bytes")  # a bad value fails before any work
    return rules


def _report(label: str, analysis, tree: list[dict] | None) -> dict:
    image = analysis.image
    report = {
        "image": label,
        "digest": image.digest,
        "config_digest": image.config_descriptor.digest,
        "layers": analysis.layers,
        "history": analysis.history,
        "wasted": analysis.efficiency.summary(),
    }
    if tree is not None:
        report["tree"] = tree
    return report


def _write(args: argparse.Namespace, report: dict) -> None:
    if args.format == "html":
        from imgbuild.layerview.htmlreport import render

        text = render(report)
    elif args.format == "json":
        text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    else:
        text = _table(report)
    if args.output:
        from pathlib import Path

        from imgbuild.store.atomic import write_file_atomic

        try:
            write_file_atomic(Path(args.output).absolute(), text.encode("utf-8", "surrogateescape"))
        except OSError as error:
            raise UsageError(f"cannot write {args.output}: {error.strerror or error}") from None
        return
    if args.format == "html":
        raise UsageError("--format html writes a file: add -o report.html")
    sys.stdout.write(text)


def _table(report: dict) -> str:
    from imgbuild.builder.terminal import safe_chars

    lines = [f"image: {safe_chars(report['image'])}  ({report['digest']})", ""]
    marks = {"added": "+", "modified": "~", "removed": "-"}
    for layer in report["layers"]:
        counts = layer["counts"]
        lines.append(
            f"layer {layer['index']}  {human_size(layer['size']):>8}  {layer['origin']:<7}  "
            f"{safe_chars(layer['instruction'] or '(no history)')}"
        )
        lines.append(
            f"  {layer['digest']}  +{counts['added']} ~{counts['modified']} -{counts['removed']}"
        )
        for row in layer["files"]:
            size = human_size(row["size"]) if row["type"] in ("file", "dir", "opaque") or row["change"] == "removed" else ""
            link = f" -> {safe_chars(row['link'])}" if row.get("link") else ""
            path = safe_chars(row["path"]) + ("/* (opaque: all below)" if row["type"] == "opaque" else "")
            lines.append(f"    {marks[row['change']]} {size:>8}  {path}{link}")
        if layer["files_left_out"]:
            lines.append(f"    ... and {layer['files_left_out']} more")
        lines.append("")
    if "tree" in report:
        lines.append("merged filesystem (LAYER is the layer each path comes from):")
        for row in report["tree"]:
            lines.append(f"  {row['layer']:>5}  {human_size(row['size']):>8}  {safe_chars(row['path'])}")
        lines.append("")
    wasted = report["wasted"]
    lines.append(f"efficiency: {wasted['efficiency'] * 100:.4f} %")
    lines.append(f"wasted bytes: {wasted['wasted_bytes']} ({human_size(wasted['wasted_bytes'])})")
    lines.append(f"user wasted percent: {wasted['user_wasted_percent'] * 100:.4f} %")
    if wasted["top_wasted"]:
        lines.append("count  wasted  path")
        for row in wasted["top_wasted"][:20]:
            lines.append(f"{row['count']:>5}  {human_size(row['wasted_bytes']):>8}  {safe_chars(row['path'])}")
    for result in report.get("ci", []):
        lines.append(f"{result['status'].upper()}: {result['rule']}: {result['message'] or 'ok'}")
    return "\n".join(lines) + "\n"

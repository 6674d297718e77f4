"""``imgbuild cache inspect KEY``: every input of a key, its layer, and what the layer changes.

KEY may be a unique prefix (as ``cache ls`` shows it). ``--format json``
prints one JSON object with the same facts, in full.
"""

from __future__ import annotations

import argparse
import json

from imgbuild.builder.terminal import safe_chars
from imgbuild.cache.inspection import find_key, inspect_entry
from imgbuild.cli.cache_ls import show_table, stage_label
from imgbuild.store import Store
from imgbuild.units import human_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", metavar="KEY", help="a cache key, or a unique prefix of one")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or JSON")


def run(args: argparse.Namespace) -> int:
    store = Store(args.root)
    facts = inspect_entry(store, find_key(store, args.key))
    if args.format == "json":
        print(json.dumps(facts, sort_keys=True, indent=2))
        return 0
    _print_entry(facts["entry"])
    _print_inputs(facts["inputs"], facts["file_lists"])
    _print_layer(facts["layer"])
    return 0


def _print_entry(entry: dict) -> None:
    print(f"key:          {entry['key']}")
    print(f"instruction:  {safe_chars(entry['instruction'])}")
    where = safe_chars(entry["dockerfile"] or "?")
    if entry["line"] is not None:
        where += f":{entry['line']}"
    print(f"step:         {where}, stage {stage_label(entry['stage_index'], entry['stage_name'])}")
    print(f"base image:   {entry['base_digest'] or '?'}")
    print(f"built on:     {entry['parent_entry'] or '-'}")
    print(f"created:      {entry['created']}   last used: {entry['last_used']}   hits: {entry['hits']}")
    print(f"in an image:  {'yes' if entry['in_image'] else 'no'}")


def _print_inputs(inputs: dict | None, file_lists: dict) -> None:
    print()
    if inputs is None:
        print("inputs:       not recorded (the entry was made before the store kept them; a build that hits it records them)")
        return
    print("inputs (what the key is a sha256 of):")
    print(f"  parent key: {inputs['parent'] or '(none: COPY --link)'}")
    for line in json.dumps(inputs["document"], sort_keys=True, indent=2).splitlines():
        print("  " + line)
    for digest, listing in file_lists.items():
        rows = [[f["path"], f["type"], f["mode"], str(f["size"]), f["sha256"][:12]] for f in listing["files"]]
        print()
        show_table(["PATH", "TYPE", "MODE", "SIZE", "SHA256"], rows, title=f"files of {digest}")
        if listing["left_out"]:
            print(f"  ... and {listing['left_out']} more (not kept)")


def _print_layer(layer: dict | None) -> None:
    print()
    if layer is None:
        print("layer:        none (the step changed nothing)")
        return
    print(f"layer:        {layer['digest']} ({human_size(layer['size'])})")
    print(f"diff_id:      {layer['diff_id']}")
    if not layer["in_store"]:
        print("              the blob is no longer in the store")
        return
    changes = layer["changes"]
    counts = changes["counts"]
    if changes["below_known"]:
        written = f"{counts['added']} added, {counts['changed']} changed"
    else:
        written = f"{counts['written']} added or changed (the layers below are not at hand to tell)"
    print(f"changes:      {written} ({human_size(counts['written_bytes'])}), {counts['deleted']} deleted, "
          f"{counts['emptied']} emptied")
    marks = {"added": "+", "changed": "~"}
    rows = [
        [marks.get(f.get("change"), "+~"), f["path"], f["type"], human_size(f["size"]) if f["type"] == "file" else ""]
        for f in changes["written"]
    ]
    rows += [["-", path, "", ""] for path in changes["deleted"]]
    rows += [["-/*", path, "dir", ""] for path in changes["emptied"]]
    show_table(["", "PATH", "TYPE", "SIZE"], rows)
    if changes["left_out"]:
        print(f"... and {changes['left_out']} more paths")

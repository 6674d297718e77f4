"""``imgbuild inspect NAME...``: an image's descriptor, manifest and config as JSON.

Prints a JSON array with one object per name, as ``docker inspect`` does::

    [{"Name": "busybox:latest",      # as asked for
      "Id": "sha256:...",            # the config digest (Docker's image ID)
      "Digest": "sha256:...",        # what the name points at (manifest or index)
      "RepoTags": ["busybox:latest"],
      "Descriptor": {...},           # the index.json entry
      "Index": {...},                # only when the name points at an index
      "Manifest": {...},             # the (platform's) image manifest
      "Config": {...}}]              # the image config

Names that are not found are reported on stderr and make the exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from imgbuild.errors import ImgbuildError
from imgbuild.image import Platform
from imgbuild.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help="a tag, image ID or digest")
    parser.add_argument(
        "--platform", help="for a multi-platform image: os/arch[/variant] (default: this host)"
    )


def run(args: argparse.Namespace) -> int:
    store = Store(args.root)
    platform = Platform.parse(args.platform) if args.platform else None
    results, failed = [], False
    for name in args.names:
        try:
            results.append(inspect_image(store, name, platform))
        except ImgbuildError as error:
            print(f"error: {error}", file=sys.stderr)
            failed = True
    print(json.dumps(results, indent=4))
    return 1 if failed else 0


def inspect_image(store: Store, name: str, platform: Platform | None = None) -> dict:
    descriptor = store.resolve(name)
    image = store.load_image(descriptor, platform)
    result = {
        "Name": name,
        "Id": image.config_descriptor.digest,
        "Digest": descriptor.digest,
        "RepoTags": sorted(tag for tag, d in store.refs() if tag and d.digest == descriptor.digest),
        "Descriptor": descriptor.to_json(),
    }
    if image.digest != descriptor.digest:
        result["Index"] = store.read_json(descriptor.digest, "index")
        result["ManifestDescriptor"] = image.manifest_descriptor.to_json()
    result["Manifest"] = image.manifest
    result["Config"] = image.config
    return result

"""``imgbuild inspect [-f FORMAT] NAME...``: what ``docker image inspect`` shows, as JSON.

Prints a JSON array with one object per name. The fields come first as
Docker has them, so scripts written for Docker work unchanged::

    [{"Id": "sha256:...",             # the image ID: the config digest
      "RepoTags": ["busybox:latest"],
      "RepoDigests": ["busybox@sha256:..."],  # NAME@manifest digest, one per repository
      "Created": "...", "Author": "", "Comment": "",
      "Config": {"User": "", "Env": [...], "Cmd": [...], "Entrypoint": null, ...},
      "Architecture": "amd64", "Os": "linux",
      "Size": 1040000,                 # unpacked, as Docker counts it (see ``images``)
      "RootFS": {"Type": "layers", "Layers": [diff_ids]},
      # and imgbuild's own view of the OCI objects:
      "Name": "busybox",               # as asked for
      "Digest": "sha256:...",          # what the name points at (manifest or index)
      "Descriptor": {...},             # the index.json entry
      "Index": {...},                  # only when the name points at an index
      "Manifest": {...},               # the (platform's) image manifest
      "ImageConfig": {...}}]           # the image config as stored

``-f/--format`` takes Docker's Go templates (``{{.Id}}``, ``{{.Config.Env}}``,
``{{json .Config}}``, ``{{index .Config.Labels "k"}}``, ``{{range}}``; see
imgbuild.gotemplate) and prints one line per name. Names that are not found
are reported on stderr and make the exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from imgbuild.archive.names import split_tag
from imgbuild.cli.images import LayerSizes
from imgbuild.errors import ImgbuildError
from imgbuild.gotemplate import NIL_LIST, NIL_MAP, GoNil, Struct, Template, jsonable
from imgbuild.image import Platform
from imgbuild.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help="a tag, image ID or digest")
    parser.add_argument(
        "-f", "--format", metavar="TEMPLATE",
        help="a Go template, as docker inspect takes it: '{{.Id}}', '{{json .Config}}'",
    )
    parser.add_argument("--type", choices=("image",), help="accepted for docker inspect scripts: only images exist here")
    parser.add_argument(
        "--platform", help="for a multi-platform image: os/arch[/variant] (default: this host)"
    )


def run(args: argparse.Namespace) -> int:
    template = Template(args.format) if args.format else None  # a bad template fails before any work
    store = Store(args.root)
    platform = Platform.parse(args.platform) if args.platform else None
    sizes = LayerSizes(store)
    results, failed = [], False
    for name in args.names:
        try:
            results.append(inspect_image(store, name, platform, sizes))
        except ImgbuildError as error:
            print(f"error: {error}", file=sys.stderr)
            failed = True
    sizes.save()
    if template is not None:
        for result in results:
            print(template.execute(result))
    else:
        print(json.dumps(jsonable(results), indent=4))
    return 1 if failed else 0


def inspect_image(
    store: Store, name: str, platform: Platform | None = None, sizes: LayerSizes | None = None
) -> Struct:
    descriptor = store.resolve(name)
    image = store.load_image(descriptor, platform)
    config = image.config
    tags = sorted(tag for tag, d in store.refs() if tag and d.digest == descriptor.digest)
    size = (sizes or LayerSizes(store)).image_size(image)
    result = Struct(
        Id=image.config_descriptor.digest,
        RepoTags=tags,
        RepoDigests=sorted({f"{split_tag(tag)[0]}@{descriptor.digest}" for tag in tags}),
        Parent="",
        Comment=str(config.get("comment") or ""),
        Created=str(config.get("created") or ""),
        DockerVersion="",
        Author=str(config.get("author") or ""),
        Config=container_config(image.container_config),
        Architecture=str(config.get("architecture") or ""),
        Variant=config.get("variant") or GoNil("", omitempty=True),
        Os=str(config.get("os") or ""),
        Size=size,
        VirtualSize=size,
        RootFS=Struct(Type=str((config.get("rootfs") or {}).get("type") or "layers"), Layers=image.diff_ids),
        Metadata=Struct(LastTagTime="0001-01-01T00:00:00Z"),
        Name=name,
        Digest=descriptor.digest,
        Descriptor=descriptor.to_json(),
    )
    if image.digest != descriptor.digest:
        result["Index"] = store.read_json(descriptor.digest, "index")
        result["ManifestDescriptor"] = image.manifest_descriptor.to_json()
    result["Manifest"] = image.manifest
    result["ImageConfig"] = config
    return result


def container_config(config: dict) -> Struct:
    """Docker's ``Config`` (container.Config) from an image config's ``config``, every
    field present, in Docker's order; what the image lacks is Go's zero value."""

    def value(key: str, zero):
        found = config.get(key)
        return zero if found is None else found

    omitted_map = GoNil("map[]", omitempty=True)
    return Struct(
        Hostname="",
        Domainname="",
        User=value("User", ""),
        AttachStdin=False,
        AttachStdout=False,
        AttachStderr=False,
        ExposedPorts=value("ExposedPorts", omitted_map),
        Tty=False,
        OpenStdin=False,
        StdinOnce=False,
        Env=value("Env", NIL_LIST),
        Cmd=value("Cmd", NIL_LIST),
        Healthcheck=value("Healthcheck", GoNil("<nil>", omitempty=True)),
        ArgsEscaped=value("ArgsEscaped", GoNil("false", omitempty=True)),
        Image="",
        Volumes=value("Volumes", NIL_MAP),
        WorkingDir=value("WorkingDir", ""),
        Entrypoint=value("Entrypoint", NIL_LIST),
        OnBuild=value("OnBuild", NIL_LIST),
        Labels=value("Labels", NIL_MAP),
        StopSignal=value("StopSignal", GoNil("", omitempty=True)),
        Shell=value("Shell", GoNil("[]", omitempty=True)),
    )


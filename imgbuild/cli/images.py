"""``imgbuild images``: list the images in the store, as ``docker images`` does.

    REPOSITORY   TAG       IMAGE ID       CREATED        SIZE
    busybox      latest    e10671464cbb   56 years ago   1.04MB

IMAGE ID is Docker's: the first 12 hex digits of the image's config digest;
DIGEST (``--digests``) is the manifest (or index) digest the name points at.
SIZE is what Docker shows: the image unpacked, i.e. the bytes of the regular
files in its layers (not the compressed blobs in the store; ``imgbuild system
df`` shows those). Each layer's figure is read from its tar once and kept in
``ROOT/layer-sizes.json``.

This module also holds the table, ``--format`` and human-readable formatting
that the other image verbs (history, system df) share.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
from datetime import UTC, datetime

from imgbuild.archive.names import split_tag
from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError, UsageError
from imgbuild.gotemplate import Struct, Template, to_json
from imgbuild.image import Image
from imgbuild.store import Store
from imgbuild.units import human_size


@dataclass
class ImageSummary:
    """One row of ``imgbuild images``."""

    repository: str  # "<none>" for an untagged image
    tag: str  # "<none>" for an untagged image
    image_id: str  # "sha256:<config digest>"
    digest: str  # the manifest (or index) digest the tag points at
    created: str  # the config's "created", RFC 3339, or ""
    size: int  # bytes unpacked: the regular files of every layer, as Docker counts
    labels: dict


def list_images(store: Store) -> list[ImageSummary]:
    """Every entry of the store's index.json, newest first (then by name)."""
    summaries = []
    sizes = LayerSizes(store)
    for name, descriptor in store.refs():
        repository, tag = split_tag(name) if name else ("<none>", "<none>")
        try:
            image = store.load_image(descriptor)
        except ImgbuildError:  # a broken image still gets listed; fsck explains
            summaries.append(
                ImageSummary(repository, tag, descriptor.digest, descriptor.digest, "", 0, {})
            )
            continue
        created = str(image.config.get("created") or "")
        labels = dict(image.container_config.get("Labels") or {})
        summaries.append(
            ImageSummary(
                repository, tag, image.config_descriptor.digest, descriptor.digest, created,
                sizes.image_size(image), labels,
            )
        )
    sizes.save()
    summaries.sort(key=lambda s: (s.repository, s.tag))
    summaries.sort(key=lambda s: _timestamp(s.created), reverse=True)
    return summaries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "IMAGE ID is the config digest (Docker's image ID), DIGEST the manifest digest. SIZE is the "
        "image unpacked, as docker images shows it (the regular files of its layers), not what its "
        "compressed blobs take in the store: see imgbuild system df for that."
    )
    parser.add_argument("repository", nargs="?", help="only images of this REPOSITORY[:TAG]")
    parser.add_argument(
        "-a", "--all", action="store_true",
        help="show all images (accepted for Docker; imgbuild keeps no intermediate images, so it lists the same)",
    )
    parser.add_argument("--digests", action="store_true", help="show the manifest digests")
    parser.add_argument(
        "-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
        help="dangling=true|false, reference=PATTERN (busybox, app:*, */app:1), label=KEY[=VALUE]",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    parser.add_argument("--no-trunc", action="store_true", help="show full image IDs")
    parser.add_argument(
        "--format",
        default="table",
        metavar="FORMAT",
        help="table (default), json (one object per line), or a Go template: "
        "'{{.Repository}}:{{.Tag}}', 'table {{.ID}}\\t{{.Size}}'",
    )


IMAGE_HEADERS = {
    "Containers": "CONTAINERS",
    "CreatedAt": "CREATED AT",
    "CreatedSince": "CREATED",
    "Digest": "DIGEST",
    "ID": "IMAGE ID",
    "Repository": "REPOSITORY",
    "SharedSize": "SHARED SIZE",
    "Size": "SIZE",
    "Tag": "TAG",
    "UniqueSize": "UNIQUE SIZE",
    "VirtualSize": "VIRTUAL SIZE",
}


def run(args: argparse.Namespace) -> int:
    filters = parse_filters(args.filter)
    images = [
        s for s in list_images(Store(args.root))
        if _matches(s, args.repository) and all(keep(s) for keep in filters)
    ]
    if args.quiet:
        seen = []
        for summary in images:
            image_id = short_id(summary.image_id, args.no_trunc)
            if image_id not in seen:
                seen.append(image_id)
        for image_id in seen:
            print(image_id)
        return 0
    rows = [_row(summary, args.no_trunc) for summary in images]
    if args.format == "table":
        columns = "{{.Repository}}\t{{.Tag}}\t" + ("{{.Digest}}\t" if args.digests else "")
        columns += "{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
        print_formatted(rows, "table " + columns, IMAGE_HEADERS)
    else:
        print_formatted(rows, args.format, IMAGE_HEADERS)
    return 0


def _row(summary: ImageSummary, no_trunc: bool) -> Struct:
    """The fields ``docker images --format`` offers, with Docker's values."""
    size = human_size(summary.size)
    return Struct(
        Containers="N/A",
        CreatedAt=created_at(summary.created),
        CreatedSince=created_since(summary.created),
        Digest=summary.digest,
        ID=short_id(summary.image_id, no_trunc),
        Repository=summary.repository,
        SharedSize="N/A",
        Size=size,
        Tag=summary.tag,
        UniqueSize="N/A",
        VirtualSize=size,
    )


# --- filters ----------------------------------------------------------------------


def parse_filters(filters: list[str]) -> list:
    """``--filter KEY=VALUE`` as functions of an ImageSummary; a bad filter is a UsageError."""
    tests = []
    for text in filters:
        key, sep, value = text.partition("=")
        key = key.strip().lower()
        if not sep and key != "label":
            raise UsageError(f"--filter {text!r}: write KEY=VALUE (dangling=true, reference=app:*, label=KEY)")
        if key == "dangling":
            if value.lower() not in ("true", "false", "1", "0"):
                raise UsageError(f"--filter {text!r}: dangling takes true or false")
            wanted = value.lower() in ("true", "1")
            tests.append(lambda s, wanted=wanted: (s.repository == "<none>") == wanted)
        elif key == "reference":
            tests.append(lambda s, pattern=value: reference_matches(pattern, s))
        elif key == "label":
            name, has_value, label_value = value.partition("=")
            tests.append(
                lambda s, n=name, h=has_value, v=label_value: n in s.labels and (not h or s.labels[n] == v)
            )
        else:
            raise UsageError(
                f"--filter {text!r}: imgbuild images knows the filters dangling, reference and label"
            )
    return tests


def reference_matches(pattern: str, summary: ImageSummary) -> bool:
    """Docker's reference filter: a glob over NAME:TAG, or over NAME when the pattern has no tag.
    As in Go's path.Match, ``*`` does not cross a ``/``."""
    if summary.repository == "<none>":
        return False
    if _glob(pattern, f"{summary.repository}:{summary.tag}"):
        return True
    return ":" not in pattern.rsplit("/", 1)[-1] and _glob(pattern, summary.repository)


def _glob(pattern: str, name: str) -> bool:
    pattern_parts, name_parts = pattern.split("/"), name.split("/")
    return len(pattern_parts) == len(name_parts) and all(
        fnmatch.fnmatchcase(part, glob) for glob, part in zip(pattern_parts, name_parts, strict=True)
    )


def _matches(summary: ImageSummary, wanted: str | None) -> bool:
    if wanted is None:
        return True
    if ":" in wanted.rsplit("/", 1)[-1]:
        repository, tag = split_tag(wanted)
        return (summary.repository, summary.tag) == (repository, tag)
    return summary.repository == wanted


# --- unpacked sizes ---------------------------------------------------------------


class LayerSizes:
    """Layer blob digest -> bytes of its regular files, what Docker calls a layer's size.

    Reading a layer means decompressing it, so each figure is kept in
    ``ROOT/layer-sizes.json`` (a layer blob never changes; the file is only a
    memo, and may be deleted at any time).
    """

    def __init__(self, store: Store):
        self.store = store
        self.path = store.root / "layer-sizes.json"
        self.known = self._read()
        self.changed = False

    def _read(self) -> dict[str, int]:
        try:
            with open(self.path, "rb") as handle:
                data = json.loads(handle.read(1 << 24))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int)}

    def image_size(self, image: Image) -> int:
        return sum(self.layer_size(layer.digest, layer.media_type) for layer in image.layers)

    def layer_size(self, digest: str, media_type: str) -> int:
        if digest in self.known:
            return self.known[digest]
        size = _regular_file_bytes(self.store, digest, media_type)
        if size is not None:  # a missing or damaged blob is measured again next time
            self.known[digest] = size
            self.changed = True
        return size or 0

    def save(self) -> None:
        if not self.changed:
            return
        from imgbuild.store.atomic import write_file_atomic

        present = {digest: size for digest, size in self.known.items() if self.store.has_blob(digest)}
        try:
            write_file_atomic(self.path, json.dumps(present, sort_keys=True).encode(), self.store.work_dir(), 0o600)
        except OSError:
            pass  # only a memo: the next listing measures again


def _regular_file_bytes(store: Store, digest: str, media_type: str) -> int | None:
    """Sum of the regular files' sizes in a layer tar (None when the blob is missing or
    damaged: ``imgbuild fsck`` is the one to report that)."""
    from imgbuild.layer.decompress import open_tar_stream
    from imgbuild.layer.tarformat import REGULAR
    from imgbuild.layer.tarread import TarReader

    total = 0
    try:
        with store.open_blob(digest) as blob:
            reader = TarReader(open_tar_stream(blob).read)
            while (entry := reader.next_entry()) is not None:
                if entry.type == REGULAR:
                    total += entry.size
    except (ImgbuildError, OSError):
        return None
    return total


# --- formatting shared by the image verbs ----------------------------------------


def short_id(digest: str, no_trunc: bool = False) -> str:
    """Docker's image ID display: 12 hex digits, or the full ``sha256:...`` with --no-trunc."""
    return digest if no_trunc else digest.split(":", 1)[-1][:12]


def print_formatted(rows: list[Struct], format_text: str, headers: dict[str, str]) -> None:
    """``--format`` as Docker takes it: ``json`` (one object per line, keys sorted),
    ``table TEMPLATE`` (columns split at tabs, with a header row), or a bare
    template (one line per row)."""
    # As the docker CLI does: a typed "\t" or "\n" is a tab or a newline.
    format_text = format_text.replace("\\t", "\t").replace("\\n", "\n")
    if format_text == "json":
        for row in rows:
            print(to_json(dict(row)))
        return
    if format_text.startswith("table"):
        template = Template(format_text[len("table"):].strip() or "\t".join(f"{{{{.{k}}}}}" for k in headers))
        names = Struct({key: headers.get(key, key.upper()) for key in (rows[0] if rows else headers)})
        table = [template.execute(row).split("\t") for row in [names, *rows]]
        print_table(table[0], table[1:])
        return
    template = Template(format_text)
    for row in rows:
        print(template.execute(row))


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Columns as Docker's tabwriter makes them: at least 10 wide, 3 spaces apart."""
    count = max(len(row) for row in [headers, *rows])
    widths = [
        max([10] + [len(row[i]) + 3 for row in [headers, *rows] if i < len(row)]) for i in range(count)
    ]
    for row in [headers, *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        print(("".join(cells) + row[-1]).rstrip())


def created_since(created: str, now: datetime | None = None) -> str:
    """``56 years ago``, as ``docker images`` shows the CREATED column; ``N/A`` if unknown."""
    moment = parse_created(created)
    if moment is None:
        return "N/A"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    return human_duration(seconds) + " ago"


def created_at(created: str) -> str:
    """Docker's CreatedAt: ``2024-05-06 07:08:09 +0000 UTC``; ``N/A`` if unknown."""
    moment = parse_created(created)
    if moment is None:
        return "N/A"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def human_duration(seconds: float) -> str:
    """go-units HumanDuration, the wording Docker uses for ages."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(hours / 24 / 365)} years"


_FRACTION = re.compile(r"\.(\d+)")


def parse_created(created: str) -> datetime | None:
    """Parse an image config's RFC 3339 ``created`` (Go writes nanoseconds; Python takes micro)."""
    if not created:
        return None
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), created.strip(), count=1)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _timestamp(created: str) -> float:
    moment = parse_created(created)
    return moment.timestamp() if moment else 0.0

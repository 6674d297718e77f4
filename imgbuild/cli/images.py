"""``imgbuild images``: list the images in the store, as ``docker images`` does.

    REPOSITORY   TAG       IMAGE ID       CREATED        SIZE
    busybox      latest    e10671464cbb   56 years ago   1.04MB

IMAGE ID is Docker's: the first 12 hex digits of the image's config digest.
SIZE is what the image occupies in the store: config plus (compressed) layer
blobs. This module also holds the table and human-readable formatting that the
other image verbs (history) share.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from imgbuild.archive.names import split_tag
from imgbuild.errors import ImgbuildError
from imgbuild.store import Store
from imgbuild.units import human_size


@dataclass
class ImageSummary:
    repository: str  # "<none>" for an untagged image
    tag: str  # "<none>" for an untagged image
    image_id: str  # "sha256:<config digest>"
    digest: str  # the manifest (or index) digest the tag points at
    created: str  # the config's "created", RFC 3339, or ""
    size: int  # bytes: config + layer blobs


def list_images(store: Store) -> list[ImageSummary]:
    """Every entry of the store's index.json, newest first (then by name)."""
    summaries = []
    for name, descriptor in store.refs():
        repository, tag = split_tag(name) if name else ("<none>", "<none>")
        try:
            image = store.load_image(descriptor)
        except ImgbuildError:  # a broken image still gets listed; fsck explains
            summaries.append(
                ImageSummary(repository, tag, descriptor.digest, descriptor.digest, "", 0)
            )
            continue
        size = image.config_descriptor.size + sum(layer.size for layer in image.layers)
        created = str(image.config.get("created") or "")
        summaries.append(
            ImageSummary(
                repository, tag, image.config_descriptor.digest, descriptor.digest, created, size
            )
        )
    summaries.sort(key=lambda s: (s.repository, s.tag))
    summaries.sort(key=lambda s: _timestamp(s.created), reverse=True)
    return summaries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repository", nargs="?", help="only images of this REPOSITORY[:TAG]")
    parser.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    parser.add_argument("--no-trunc", action="store_true", help="show full image IDs")
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table (default) or one JSON object per line",
    )


def run(args: argparse.Namespace) -> int:
    images = [s for s in list_images(Store(args.root)) if _matches(s, args.repository)]
    if args.quiet:
        seen = []
        for summary in images:
            image_id = short_id(summary.image_id, args.no_trunc)
            if image_id not in seen:
                seen.append(image_id)
        for image_id in seen:
            print(image_id)
        return 0
    if args.format == "json":
        for summary in images:
            print(json.dumps(_json_row(summary), sort_keys=True))
        return 0
    rows = [
        [
            s.repository,
            s.tag,
            short_id(s.image_id, args.no_trunc),
            created_since(s.created),
            human_size(s.size),
        ]
        for s in images
    ]
    print_table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows)
    return 0


def _matches(summary: ImageSummary, wanted: str | None) -> bool:
    if wanted is None:
        return True
    if ":" in wanted.rsplit("/", 1)[-1]:
        repository, tag = split_tag(wanted)
        return (summary.repository, summary.tag) == (repository, tag)
    return summary.repository == wanted


def _json_row(summary: ImageSummary) -> dict:
    row = {key.title().replace("_", ""): value for key, value in asdict(summary).items()}
    row["ID"] = row.pop("ImageId")
    row["CreatedSince"] = created_since(summary.created)
    row["HumanSize"] = human_size(summary.size)
    return row


# --- formatting shared by the image verbs ----------------------------------------


def short_id(digest: str, no_trunc: bool = False) -> str:
    """Docker's image ID display: 12 hex digits, or the full ``sha256:...`` with --no-trunc."""
    return digest if no_trunc else digest.split(":", 1)[-1][:12]


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Columns as Docker's tabwriter makes them: at least 10 wide, 3 spaces apart."""
    widths = [
        max([10, len(header) + 3] + [len(row[i]) + 3 for row in rows])
        for i, header in enumerate(headers)
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

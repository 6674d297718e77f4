"""``imgbuild pull [--platform P] [--insecure-registry HOST] REF``, as ``docker pull``."""

from __future__ import annotations

from imgbuild.image import LAYER_TYPES, Platform
from imgbuild.registry.client import TransferEvent
from imgbuild.registry.pull import pull
from imgbuild.registry.reference import parse_reference
from imgbuild.store import Store


def add_arguments(parser) -> None:
    parser.add_argument("reference", metavar="REF", help="image to pull: [HOST[:PORT]/]NAME[:TAG|@DIGEST]")
    parser.add_argument("--platform", help="os/arch[/variant] to pick from a multi-platform image (default: the host)")
    parser.add_argument(
        "--insecure-registry", action="append", default=[], metavar="HOST",
        help="speak plain HTTP to HOST (repeatable; also $IMGBUILD_INSECURE_REGISTRIES)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the image name")


def run(args) -> int:
    ref = parse_reference(args.reference)
    platform = Platform.parse(args.platform) if args.platform else None
    store = Store(args.root)
    downloaded = []

    def progress(event: TransferEvent) -> None:
        if event.action == "downloaded":
            downloaded.append(event.digest)
        if not args.quiet and event.media_type in LAYER_TYPES:  # Docker lists layers only
            status = {"exists": "Already exists", "downloaded": "Pull complete"}.get(event.action, event.action)
            print(f"{short_id(event.digest)}: {status}", flush=True)

    if not args.quiet:
        print(f"Pulling {ref} ({platform or Platform.host()})", flush=True)
    image = pull(store, args.reference, platform=platform, insecure=args.insecure_registry, progress=progress)
    if args.quiet:
        print(ref.store_name)
        return 0
    print(f"Digest: {image.digest}")
    state = "Downloaded newer image" if downloaded else "Image is up to date"
    print(f"Status: {state} for {ref.store_name}")
    return 0


def short_id(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]

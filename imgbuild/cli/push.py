"""``imgbuild push [--insecure-registry HOST] NAME [REF]``, as ``docker push``.

REF defaults to NAME, so ``imgbuild push 127.0.0.1:5000/app:1`` pushes the local
image of that name to that registry, and ``imgbuild push app:1
127.0.0.1:5000/team/app:1`` pushes ``app:1`` under another name.
"""

from __future__ import annotations

from imgbuild.cli.pull import short_id
from imgbuild.image import LAYER_TYPES
from imgbuild.registry.client import TransferEvent
from imgbuild.registry.push import push
from imgbuild.registry.reference import parse_reference
from imgbuild.store import Store


def add_arguments(parser) -> None:
    parser.add_argument("name", metavar="NAME", help="image in the local store")
    parser.add_argument("reference", metavar="REF", nargs="?", help="where to push it (default: NAME)")
    parser.add_argument(
        "--insecure-registry", action="append", default=[], metavar="HOST",
        help="speak plain HTTP to HOST (repeatable; also $IMGBUILD_INSECURE_REGISTRIES)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the manifest digest")


def run(args) -> int:
    ref = parse_reference(args.reference or args.name)
    store = Store(args.root)

    def progress(event: TransferEvent) -> None:
        if args.quiet or event.media_type not in LAYER_TYPES:  # Docker lists layers only
            return
        status = {
            "exists": "Layer already exists",
            "uploaded": "Pushed",
            "mounted": f"Mounted from {event.detail}",
        }.get(event.action, event.action)
        print(f"{short_id(event.digest)}: {status}", flush=True)

    if not args.quiet:
        print(f"The push refers to repository [{ref.name}]", flush=True)
    descriptor = push(store, args.name, args.reference, insecure=args.insecure_registry, progress=progress)
    if args.quiet:
        print(descriptor.digest)
    else:
        print(f"{ref.tag or 'latest'}: digest: {descriptor.digest} size: {descriptor.size}")
    return 0

"""Registries: references, credentials, the distribution API client, pull and push.

    from imgbuild.registry import pull, push
    image = pull(store, "127.0.0.1:5000/app:1")
    descriptor = push(store, "app:1", "127.0.0.1:5000/team/app:1")

See docs/registry.md for references, credentials, insecure hosts and retries.
"""

from imgbuild.registry.client import RegistryClient, RegistryOptions, TransferEvent
from imgbuild.registry.pull import pull
from imgbuild.registry.push import push
from imgbuild.registry.reference import Reference, parse_reference

__all__ = [
    "Reference",
    "RegistryClient",
    "RegistryOptions",
    "TransferEvent",
    "parse_reference",
    "pull",
    "push",
]

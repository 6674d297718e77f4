"""Cache keys: a sha256 over a JSON document of everything a step depends on.

What goes into each kind of step's document is described in docs/build.md
("The cache key"). Keys are pure functions of their documents: computing one
reads nothing and changes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

# Fields of an instruction that say where it stood, not what it does: moving
# an instruction or adding comments keeps its key.
_POSITION_FIELDS = ("line", "end_line", "source", "comments")


def cache_key(document: dict) -> str:
    data = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def step_keys(parent_key: str, document: dict, *, independent: bool) -> tuple[str, str]:
    """(the key a step's layer is looked up by, the key later steps chain from).

    They are the same key, except for an ``independent`` step (COPY --link):
    its layer is looked up without the layers below it, so it survives a
    change of base image, while the chain of keys still goes on from the parent.
    """
    if not independent:
        key = cache_key({"parent": parent_key, **document})
        return key, key
    lookup_key = cache_key({"parent": "", **document})
    return lookup_key, cache_key({"link": lookup_key, "parent": parent_key})


def instruction_document(instruction) -> dict:
    """An instruction as data for cache keys: every field but where it stood in the file."""
    document = {"kind": type(instruction).__name__}
    for item in dataclasses.fields(instruction):
        if item.name in _POSITION_FIELDS:
            continue
        document[item.name] = _plain(getattr(instruction, item.name))
    return document


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return instruction_document(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value

"""What each cache entry keeps of its key: the inputs, and where its step stood.

A key is a digest: it cannot say why it differs from another. So each entry
keeps the document its key was made of (the same dict ``keys.py`` hashed,
with the parent key), the file lists its source digests covered, and the
step's place (Dockerfile, stage, line, instruction) so that ``imgbuild
cache`` can show every input of a key and later builds can find "the same
step". Secrets are never in a key document (a secret mount names only its
id and target), so they are never here either.
"""

from __future__ import annotations

import os

from imgbuild.dataclass import dataclass

# Inputs documents carry this, so readers can tell their shape.
INPUTS_FORMAT = 1


@dataclass
class StepPlace:
    """Where a step stood when its entry was recorded."""

    parent_entry: str  # the entry of the layer step below it ("" at the start of a chain)
    base_digest: str  # the image the chain started from ("scratch" for none)
    dockerfile: str
    stage_index: int
    stage_name: str | None
    line: int | None
    instruction: str
    # The Dockerfile's absolute path (CONTEXT/- for stdin): two projects' files
    # are both "Dockerfile"; this tells their steps apart (cache/explain.py).
    dockerfile_path: str = ""

    def as_columns(self) -> dict:
        return dict(self.__dict__)


def key_inputs(lookup_key: str, parent_key: str, document: dict, *, chain_key: str, sees: dict | None = None) -> dict:
    """The record of a key: exactly what it was computed from (``keys.step_keys``),
    and, apart (``sees``: not part of the key), the env and args the step saw (``seen_by_step``)."""
    inputs = {"format": INPUTS_FORMAT, "key": lookup_key, "parent": parent_key, "document": document}
    if sees is not None:
        inputs["sees"] = sees
    if chain_key != lookup_key:
        inputs["chain_key"] = chain_key  # COPY --link: later steps chain from this one
    return inputs


def seen_by_step(scope) -> dict:
    """The environment and the ARG values in scope at a step, without proxy
    settings (they may hold credentials, and BuildKit keeps them out of keys).
    Secrets are never variables: a secret mount's value is read at run time."""
    # Here, not at the top: importing the front end's package loads all of it
    # (~12 ms), and a rebuild from the record (builder/lastcopy.py), ``cache
    # inspect`` and cache export read this module without parsing anything.
    from imgbuild.dockerfile.scope import PROXY_ARGS

    env = {name: value for name, value in scope.env_for_run().items() if name not in PROXY_ARGS}
    args = {name: value for name, value in scope.args_in_scope().items() if name not in PROXY_ARGS}
    # which env values an ARG set, so an explanation says "build arg X", not "ENV X"
    from_args = [name for name in scope.names_set_by_args() if name in env]
    return {"env": sorted(env.items()), "args": sorted(args.items()), "from_args": from_args}


def digests_in(document) -> list[str]:
    """Every ``sha256:...`` string in a key document, in order, once each.

    The documents' shapes differ by kind of step (and change as keys do);
    any digest in them that a source selection produced has a file list.
    """
    found: list[str] = []

    def walk(value) -> None:
        if isinstance(value, str):
            if value.startswith("sha256:") and value not in found:
                found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(document)
    return found


def place_of(builder, stage, state) -> StepPlace:
    instruction = state.instruction
    line = getattr(instruction, "line", None)
    source = (getattr(instruction, "source", "") or "").strip()
    return StepPlace(
        parent_entry=state.entry_key,
        base_digest=state.base_digest,
        dockerfile=builder.dockerfile_name,
        stage_index=stage.index,
        stage_name=stage.name,
        line=line or None,  # ONBUILD triggers have no line in this Dockerfile
        instruction=source,
        dockerfile_path=dockerfile_path(builder.options),
    )


def dockerfile_path(options) -> str:
    """Where the build's Dockerfile is, as an absolute path (nothing is read)."""
    if options.dockerfile_text is not None:
        return os.path.join(os.path.abspath(options.context), "-")
    return os.path.abspath(options.dockerfile or options.context / "Dockerfile")

"""The life of a step that makes a layer: key, cache lookup, and on a miss, work and commit.

Each kind of step (RUN, COPY/ADD, WORKDIR) describes itself as a ``LayerWork``:
the document its key is made of, its history line, and what to do in a
workspace on a miss. This module does the rest the same way for all of them.
A step that a RUN follows leaves the writing of its layer to that RUN's
container time (``pending.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from imgbuild.builder import imageconfig as ic
from imgbuild.builder.pending import PendingLayer, settle, take
from imgbuild.builder.progress import Step
from imgbuild.builder.rootfs import Workspace, compressed_as, recompress, workspace
from imgbuild.builder.state import StageState
from imgbuild.cache.inputs import digests_in, key_inputs, place_of, seen_by_step
from imgbuild.cache.keys import step_keys
from imgbuild.dataclass import dataclass
from imgbuild.store import remove_tree


@dataclass
class LayerWork:
    """A step that makes a layer, before it runs.

    ``execute(space)`` does the step's work in a workspace over the layers
    below; ``independent`` (COPY --link) makes the layer and its lookup key
    not depend on those layers. ``runs_container`` (RUN): the work calls
    ``space.meanwhile`` while its container runs.
    """

    document: dict
    created_by: str
    execute: Callable[[Workspace], None]
    independent: bool = False
    runs_container: bool = False


def run_layer_step(
    builder, stage, state: StageState, step: Step, work: LayerWork, created: str | None, *, defer: bool = False
) -> None:
    """Reuse the cached layer for the step's key, or do the work and commit it.

    ``created`` (SOURCE_DATE_EPOCH) or else the time the step's cache entry
    was first built dates the step's history entry, as in BuildKit: a fully
    cached rebuild gives the same image, however much later it runs.

    With ``defer`` (a RUN comes next), a miss stops once its changeset is
    final and leaves the rest in ``state.pending``, for that RUN to do while
    its container runs. A RUN that misses mounts the pending layer it finds
    there; any other step settles it first.
    """
    lookup_key, key = step_keys(state.key, work.document, independent=work.independent)
    record = None  # what the key was made of: built at most once, and only when needed
    cache_disabled = builder.cache_disabled(stage)
    entry = None if cache_disabled else builder.cache.lookup(lookup_key)
    if entry is not None or not work.runs_container:
        settle(state)  # else the RUN takes the pending layer as it opens its workspace
    if entry is not None:
        builder.progress.cached(step)
        builder.count(cached=True)
        layer = entry.layer
    else:
        record = _inputs_of(builder, stage, state, work, lookup_key, key)
        builder.progress.started(step, _why_missed(builder, stage, state, work, record, lookup_key, cache_disabled))
        builder.missed_keys.add(key)  # the steps on top of it miss with it
        builder.prepare_for_runs(stage, state.instruction)
        options = builder.options
        if not work.independent:
            builder.cache.fetch_layers(state.layers)  # layers an imported cache stood for
        below, parent_key = ([], "") if work.independent else (state.layers, state.key)
        if defer:
            space = worked_space(builder.store, work, below, take(state))
            if _readied(space, options.source_date_epoch):
                state.pending = _pending_layer(
                    builder, stage, state, step, work, space, (lookup_key, key, parent_key), created, record,
                    cache_disabled,
                )
                state.key = key
                state.entry_key = lookup_key
                return
            layer = builder.cache.record(lookup_key, parent_key, None, work.created_by, replace=cache_disabled)
        else:
            layer = make_layer(
                builder.store, builder.cache, options, work, below, lookup_key, parent_key,
                replace=cache_disabled, below_pending=take(state),
            )
        builder.progress.done(step)
        builder.count(cached=False)
    end_step(builder, stage, state, work, lookup_key, key, entry, layer, created, record)
    state.key = key
    state.entry_key = lookup_key


def end_step(builder, stage, state: StageState, work: LayerWork, lookup_key: str, key: str, entry, layer, created, record):
    """The step once its layer is known (cached, or made): the stage's
    layers, the step's history entry and the records of its key. Returns the
    layer as the stage lists it (recompressed if need be).

    A step that missed gives the ``record`` of its key's inputs: a pending
    layer's step ends after the state has moved on to the next step."""
    builder.cache.note_used(stage.index, lookup_key)
    entry_layer = layer  # as the cache entry has it (the build's record checks the entry still does)
    if layer is not None:
        options = builder.options
        if not compressed_as(layer.blob.media_type, options.compression):
            builder.cache.fetch_layers([layer])  # recompressing reads it
        layer = recompress(builder.store, layer, options.compression, options.compression_level)
        state.layers.append(layer)
    created = created or first_built(builder.store, builder.cache, lookup_key, entry)
    if builder.journal is not None:
        builder.journal.used(lookup_key, entry_layer, created)
    ic.add_history(state.config, work.created_by, empty_layer=layer is None, created=created)
    # On a hit too: entries from before schema 3 get their record then.
    if needs_inputs(builder.cache, lookup_key, entry):
        record = record or _inputs_of(builder, stage, state, work, lookup_key, key)
        builder.cache.keep_inputs(lookup_key, *record)
    return layer


def make_layer(
    store, cache, options, work: LayerWork, below: list, lookup_key: str, parent_key: str, *,
    replace: bool = False, below_pending: PendingLayer | None = None,
):
    """Do the step's work in a workspace over the layers ``below`` (and a
    pending layer on them), commit it, and record the layer under
    ``lookup_key``; the layer the key stands for."""
    space = worked_space(store, work, below, below_pending)
    try:
        layer = space.commit(
            compression=options.compression,
            level=options.compression_level,
            source_date_epoch=options.source_date_epoch,
        )
    finally:
        remove_tree(space.scratch)
    # Another build may have recorded this key meanwhile: go on with its layer.
    return cache.record(lookup_key, parent_key, layer, work.created_by, replace=replace)


def worked_space(store, work: LayerWork, below: list, below_pending: PendingLayer | None) -> Workspace:
    """A workspace over ``below`` (and a pending layer on them, written by
    the time this returns) with the step's work done in it and unmounted.
    The caller removes its scratch space.

    Another build may have recorded the pending layer's key first, with
    other content: the step then ran on a tree that is not the one below it
    now, and is done again on the layers there are (as ``BuildCache.record``
    has every build go on with the first build's layer)."""
    with workspace(store, below, below=below_pending, keep=True) as space:
        work.execute(space)
        space.meanwhile()  # done already if the work ran its container: the layer below comes first
    if not space.below_replaced():
        return space
    remove_tree(space.scratch)
    return worked_space(store, work, space.parent_layers(), None)


def _readied(space: Workspace, source_date_epoch: int | None) -> bool:
    """``space.ready``: its scratch space removed when it changed nothing (or failed)."""
    try:
        changed = space.ready(source_date_epoch=source_date_epoch)
    except BaseException:
        remove_tree(space.scratch)
        raise
    if not changed:
        remove_tree(space.scratch)
    return changed


def _pending_layer(
    builder, stage, state: StageState, step: Step, work: LayerWork, space: Workspace,
    keys: tuple[str, str, str], created: str | None, record, cache_disabled: bool,
) -> PendingLayer:
    """The rest of a missed step, for later: its layer written from the
    readied ``space``, recorded under its lookup key, and the step ended.
    ``keys``: its lookup key, its key and its parent's key."""
    options = builder.options
    instruction = state.instruction
    lookup_key, key, parent_key = keys

    def write():
        written = space.write(
            compression=options.compression,
            level=options.compression_level,
            source_date_epoch=options.source_date_epoch,
        )
        recorded = builder.cache.record(lookup_key, parent_key, written, work.created_by, replace=cache_disabled)
        builder.progress.done(step)
        builder.count(cached=False)
        return written, end_step(builder, stage, state, work, lookup_key, key, None, recorded, created, record)

    def failed(error):
        return builder.step_failed(step, instruction, error)

    return PendingLayer(space.upper, space.scratch, write, failed)


def needs_inputs(cache, lookup_key: str, entry) -> bool:
    """Does the entry still lack the record of its key's inputs? As the hit's
    lookup read it, if it did."""
    if entry is not None and entry.keeps_inputs is not None:
        return not entry.keeps_inputs
    return cache.needs_inputs(lookup_key)


def first_built(store, cache, lookup_key: str, entry=None) -> str:
    """When the cache entry for ``lookup_key`` was first built: as recorded (as the
    hit's lookup read it), as an imported cache says (its blob still to come), or now."""
    if entry is not None and entry.created is not None:
        return ic.time_text(entry.created)
    row = store.db.cache_entry(lookup_key)
    if row is not None:
        return ic.time_text(row["created"])
    pending = cache.pending_entry(lookup_key)
    created = pending.columns.get("created") if pending is not None else None
    return ic.time_text(created or time.time())


def _inputs_of(builder, stage, state: StageState, work: LayerWork, lookup_key: str, key: str):
    """Where the step stands, what its key was made of, and the files its source digests covered."""
    parent = "" if work.independent else state.key
    sees = seen_by_step(state.scope) if state.scope is not None else None
    place = place_of(builder, stage, state)
    return inputs_record(builder.context, place, lookup_key, parent, work.document, key, sees)


def inputs_record(context, place, lookup_key: str, parent_key: str, document: dict, chain_key: str, sees: dict | None):
    """(place, inputs, listings) as ``BuildCache.keep_inputs`` takes them; the
    listings are of the source digests in ``document``, from ``context``."""
    inputs = key_inputs(lookup_key, parent_key, document, chain_key=chain_key, sees=sees)
    inputs["dockerfile_path"] = place.dockerfile_path  # not in the key: to find this step again
    listings = {}
    for digest in digests_in(document):
        listing = context.listing_of(digest)
        if listing is not None:
            listings[digest] = listing.as_document()
    return place, inputs, listings


def _why_missed(builder, stage, state: StageState, work: LayerWork, record, lookup_key: str, disabled: bool):
    """Why the step missed (``cache/explain.py``), when the progress shows it; else None."""
    if not builder.progress.wants_misses:
        return None
    no_cache = ""
    if disabled:
        no_cache = "--no-cache" if builder.options.no_cache else f"--no-cache-filter {stage.label()}"
    return explained_miss(
        builder.store,
        record,
        lookup_key,
        "" if work.independent else state.key,
        stage.base,
        independent=work.independent,
        no_cache=no_cache,
        parent_missed=state.key in builder.missed_keys,
        imported=builder.cache.sources,
    )


def explained_miss(
    store, record, lookup_key: str, parent_key: str, base: str, *, independent: bool = False,
    no_cache: str = "", parent_missed: bool = False, imported=(),
) -> str:
    """``explain_miss`` of a step, from the (place, inputs, listings) of ``inputs_record``."""
    from imgbuild.cache.explain import MissedStep, explain_miss  # only for a miss that is shown

    place, inputs, listings = record
    missed = MissedStep(
        key=lookup_key,
        parent_key=parent_key,
        inputs=inputs,
        listings=listings,
        place=place,
        base=base,
        independent=independent,
    )
    return explain_miss(store, missed, no_cache=no_cache, parent_missed=parent_missed, imported=imported)

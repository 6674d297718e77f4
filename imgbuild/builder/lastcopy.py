"""A rebuild whose only change is in the files of the target's last COPY: that
one step, from the build record, without the Dockerfile front end or the builder.

Application Dockerfiles end as the docs advise: dependencies first, then
``COPY app.py ./`` (or ``COPY . .``) and only config (USER, EXPOSE, CMD).
Editing a source file then changes that one step. The builder would import
the front end and itself, parse, plan and look up every step again to find
all but that one cached: 17 ms of a rebuild of about 105 ms here
(docs/benchmarks.md, "Issue 12, eleventh round").

So a build that keeps a record (``record.py``) also keeps, when the target
stage's last layer step is such a COPY, what that step needs (``LastCopy``):
its request and key document (without the sources' digests), the key and
layers below it, where it stood and what it saw (for the cache entry's
inputs and for explanations), and the target's config before the image is
written. The next build with the same record key takes this way only if
everything the record checks holds except the selections of that COPY, and
those select the same items (only their contents, modes or times changed).
It then does what ``layerstep.run_layer_step`` does for the step (digest,
key, lookup, copy and commit on a miss, the entry and its inputs, the miss's
explanation), writes the image as ``finalimage`` does, tags it and keeps a
new record. Anything else takes the normal build.

The record keeps a ``LastCopy`` only when the COPY reads the build context
(no ``--from``, heredoc or ``--link``) and no other step selected the same
sources: a selection read by another step too is a change of that step.
"""

from __future__ import annotations

import dataclasses
import json
import time

from imgbuild.builder import imageconfig as ic
from imgbuild.builder.copystep import CopyRequest, Downloads, copy_request, run_copy, source_digests
from imgbuild.builder.finalimage import (
    BuildResult,
    remove_result_files,
    tag_image,
    write_final_image,
    write_result_files,
)
from imgbuild.builder.layerstep import (
    LayerWork,
    explained_miss,
    first_built,
    inputs_record,
    make_layer,
    needs_inputs,
)
from imgbuild.builder.rootfs import recompress
from imgbuild.builder.signals import signals_raise_interrupt
from imgbuild.builder.state import StageResult
from imgbuild.cache.index import BuildCache
from imgbuild.cache.inputs import StepPlace, place_of, seen_by_step
from imgbuild.cache.keys import step_keys
from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError, Interrupted, SourceLocation
from imgbuild.image import Descriptor, Image, LayerRef


@dataclass
class LastCopy:
    """What a rebuild of the target's last COPY needs, as the build that kept the record saw it."""

    stage_index: int
    request: dict  # CopyRequest's fields (``chmod`` as written)
    document: dict  # the step's key document without "sources"
    created_by: str
    parent_key: str
    parent_layers: list[list]  # [diff_id, media type, digest, size] of each layer below it
    place: dict  # StepPlace's columns
    source: str  # the instruction as written, for errors
    sees: dict | None  # the env and args in scope (cache.inputs.seen_by_step)
    base: str  # the stage's FROM, for explanations
    source_date_epoch: int | None  # as the build took it (the flag, a build arg or a global ARG)
    lookup_key: str = ""  # the key the step was looked up by
    history_index: int = -1  # its entry in the config's history
    event: int = -1  # its step among the record's events
    config: dict | None = None  # the target's config, as the stage left it

    @property
    def selections(self) -> list[tuple]:
        """The (source, exclude) selections it reads, as the record names them."""
        return [(source, tuple(self.request["exclude"])) for source in self.request["sources"]]

    def copy_request(self) -> CopyRequest:
        fields = dict(self.request)
        chmod = fields.pop("chmod")
        if chmod:
            from imgbuild.builder.copymode import parse_chmod

            fields["chmod"] = parse_chmod(chmod)
        return CopyRequest(is_add=False, heredocs=[], **fields)

    def layers_below(self) -> list[LayerRef]:
        return [LayerRef(diff_id, Descriptor(kind, digest, size)) for diff_id, kind, digest, size in self.parent_layers]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, document: dict) -> LastCopy:
        return cls(**document)


# --- noted while the builder builds -------------------------------------------------


def last_copy_of(builder, stage, state, instruction, work) -> LastCopy | None:
    """Before a COPY step runs: what a rebuild of it alone would need, or None
    for a COPY this way cannot redo (``after`` fills in the rest)."""
    if instruction.keyword != "COPY" or instruction.from_stage or instruction.heredocs or instruction.link:
        return None
    request = copy_request(state, instruction, is_add=False)
    place = place_of(builder, stage, state)
    return LastCopy(
        stage_index=stage.index,
        request={
            "sources": list(request.sources),
            "dest": request.dest,
            "workdir": request.workdir,
            "chown": request.chown,
            "chmod": instruction.chmod or None,
            "exclude": list(request.exclude),
            "parents": request.parents,
        },
        document={name: value for name, value in work.document.items() if name != "sources"},
        created_by=work.created_by,
        parent_key=state.key,
        parent_layers=[[layer.diff_id, layer.blob.media_type, layer.blob.digest, layer.blob.size] for layer in state.layers],
        place=place.as_columns(),
        source=getattr(state.instruction, "source", "") or "",
        sees=seen_by_step(state.scope) if state.scope is not None else None,
        base=stage.base,
        source_date_epoch=builder.options.source_date_epoch,
    )


def after(last: LastCopy, state) -> LastCopy:
    """The step ran (``run_layer_step``): its key and its history entry."""
    last.lookup_key = state.entry_key
    last.history_index = len(state.config["history"]) - 1
    return last


# --- taking a record --------------------------------------------------------------


def replay(found, args, options, store, started: float, record: dict, changed: list[tuple]) -> bool:
    """Rebuild the record's last COPY, whose selections ``changed``; False
    (nothing done, nothing printed) when this way cannot stand for the build."""
    last = _last_copy_of_record(record)
    if last is None or not set(changed) <= set(last.selections):
        return False
    from imgbuild.builder.progress import Summary, make_progress
    from imgbuild.builder.record import Journal
    from imgbuild.cache.limits import collect_after_build, limits_for
    from imgbuild.context.dockerignore import IgnoreMatcher
    from imgbuild.context.source import BuildContext
    from imgbuild.context.statcache import StatCache

    options = dataclasses.replace(options, source_date_epoch=last.source_date_epoch)
    limits = limits_for(store, options.max_cache, options.min_free)
    journal = Journal(found)  # the selections as this build reads them, for the next record
    context = BuildContext(found.context, IgnoreMatcher(found.ignore_patterns), StatCache(store.db))
    context.keep_listings()
    context.journal = journal
    progress = make_progress(options.progress, explain=options.explain)
    try:
        try:
            with signals_raise_interrupt(), store.build_lease():
                # As the builder's lookups: the entries counted now are kept by a prune meanwhile.
                with store.writer_lease():
                    if not _below_holds(store, record, last):
                        return False
                    lookups = list(record["lookups"])
                    lookups.remove(last.lookup_key)
                    store.db.count_build_record_hit(found.key, lookups)
                progress.begin()
                remove_result_files(options)
                built = _build(store, options, progress, context, record, last)
        finally:
            context.stat_cache.close()
        collect_after_build(store, limits, progress)
        image, run = built.image, built.copied.steps_run
        seconds = time.monotonic() - started
        cached = record["cached"] - run
        write_result_files(options, BuildResult(image, {}, cached, run, seconds, built.tags))
        size = sum(layer.blob.size for layer in built.layers)
        _keep(store, found, record, last, journal, built, size)
        progress.finished(Summary(image.digest, image.config_descriptor.digest, size, cached, run, seconds, built.tags))
    except KeyboardInterrupt:
        raise Interrupted("build interrupted; everything it mounted was unmounted") from None
    except ImgbuildError as error:
        progress.build_failed(error)
        raise
    finally:
        progress.close()
    if args.quiet:
        print(image.config_descriptor.digest)
    return True


def _last_copy_of_record(record: dict) -> LastCopy | None:
    """The record's ``LastCopy``, if it has one whose key only that step looked up."""
    try:
        last = LastCopy.from_json(record["last_copy"]) if record.get("last_copy") else None
        if last is None or record["lookups"].count(last.lookup_key) != 1:
            return None
        return last
    except (TypeError, KeyError, ValueError):  # a record this code cannot read: the builder runs
        return None


def _below_holds(store, record: dict, last: LastCopy) -> bool:
    """Every cache entry but the last COPY's is there as the build used it, and
    the blob of every layer below that COPY."""
    from imgbuild.builder.record import entries_hold

    if not entries_hold(store, [entry for entry in record["entries"] if entry[0] != last.lookup_key]):
        return False
    return all(store.has_blob(layer.blob.digest) for layer in last.layers_below())


@dataclass
class _Copied:
    """What the step gave."""

    layer: LayerRef | None  # as the image has it (None: the copy changed nothing)
    entry_layer: LayerRef | None  # as the cache entry has it
    lookup_key: str
    created: str  # its history time
    steps_run: int  # 0 when its key was cached (an edit undone)


@dataclass
class _Built:
    """The image the rebuild wrote, and what its step gave."""

    image: Image
    tags: list[str]
    layers: list[LayerRef]
    copied: _Copied


def _build(store, options, progress, context, record: dict, last: LastCopy) -> _Built:
    """The steps as the builder shows them, the COPY done as ``run_layer_step``
    does it, and the image as ``finalimage`` writes and tags it."""
    from imgbuild.builder.record import show_events

    events = record["events"]
    show_events(progress, events[: last.event])
    step = progress.new_step(*events[last.event][1:])
    try:
        copied = _copy_step(store, options, progress, context, last, step)
    except ImgbuildError as error:
        if step.state != "failed":
            progress.failed(step, str(error))
        place = StepPlace(**last.place)
        raise error.located(SourceLocation(place.dockerfile, place.line or 0, last.source)) from None
    show_events(progress, events[last.event + 1 :])
    layers = last.layers_below() + ([copied.layer] if copied.layer is not None else [])
    config = json.loads(json.dumps(last.config))
    entry = config["history"][last.history_index]
    entry["created"] = copied.created
    if copied.layer is None:
        entry["empty_layer"] = True
    else:
        entry.pop("empty_layer", None)
    target = StageResult(last.stage_index, None, config, layers, "")
    image = write_final_image(store, options, options.target_platform(), target)
    return _Built(image, tag_image(store, options, image), layers, copied)


def _copy_step(store, options, progress, context, last: LastCopy, step) -> _Copied:
    """The COPY as ``layerstep.run_layer_step`` does a step that is not --link
    and whose parent was cached (no --cache-from: a record never stands for it)."""
    request = last.copy_request()
    downloads = Downloads(None, None)  # a COPY downloads nothing
    document = {**last.document, "sources": source_digests(request, context, downloads)}
    lookup_key, key = step_keys(last.parent_key, document, independent=False)
    place = StepPlace(**last.place)
    cache = BuildCache(store)
    entry = cache.lookup(lookup_key)
    inputs = None
    if entry is not None:
        progress.cached(step)
        layer = entry.layer
    else:
        inputs = inputs_record(context, place, lookup_key, last.parent_key, document, key, last.sees)
        why = None
        if progress.wants_misses:  # every step below it was cached; a record stands for no --no-cache
            why = explained_miss(store, inputs, lookup_key, last.parent_key, last.base)
        progress.started(step, why)

        def execute(space):
            with space.mounted() as merged:
                run_copy(request, context, merged, downloads)

        work = LayerWork(document, last.created_by, execute)
        layer = make_layer(store, cache, options, work, last.layers_below(), lookup_key, last.parent_key)
        progress.done(step)
    entry_layer = layer
    if layer is not None:
        layer = recompress(store, layer, options.compression, options.compression_level)
    epoch = options.source_date_epoch
    created = ic.timestamp(epoch) if epoch is not None else first_built(store, cache, lookup_key, entry)
    if needs_inputs(cache, lookup_key, entry):
        inputs = inputs or inputs_record(context, place, lookup_key, last.parent_key, document, key, last.sees)
        cache.keep_inputs(lookup_key, *inputs)
    return _Copied(layer, entry_layer, lookup_key, created, 0 if entry is not None else 1)


def _keep(store, found, record: dict, last: LastCopy, journal, built: _Built, size: int) -> None:
    """The record of this build, for the next: the old one with the COPY's
    selections, entry and image as they are now; none when this build could
    not tell (a file changed as it was read). A record is only a shortcut:
    one that cannot be written is left out."""
    import sqlite3

    from imgbuild.builder.record import KEEP_RECORDS

    try:
        new = _next_record(store, record, last, journal, built, size)
        if new is not None:
            text = json.dumps(new, sort_keys=True, default=str)
            store.db.write_build_record(found.key, text, KEEP_RECORDS)
    except (ImgbuildError, OSError, sqlite3.Error):
        pass


def _next_record(store, record: dict, last: LastCopy, journal, built: _Built, size: int) -> dict | None:
    from imgbuild.builder.record import image_fields

    if journal.refused is not None:
        return None
    selections = []
    for source, exclude, items, fingerprint in record["selections"]:
        if (source, tuple(exclude)) in last.selections:
            now = journal.selections.get((source, tuple(exclude)))
            if now is None or now["items"] != items or now["fingerprint"] is None:
                return None
            fingerprint = now["fingerprint"]
        selections.append([source, exclude, items, fingerprint])
    copied = built.copied
    lookups = [copied.lookup_key if key == last.lookup_key else key for key in record["lookups"]]
    rows = store.db.cache_layers(sorted(set(lookups)))
    old = {key: [digest, created] for key, digest, created in record["entries"]}
    for key in set(lookups):
        row = rows.get(key)
        if row is None:
            return None
        if key == copied.lookup_key:
            digest = copied.entry_layer.blob.digest if copied.entry_layer is not None else None
            # an entry replaced since the step read it gives another image now
            if row[0] != digest or (last.source_date_epoch is None and ic.time_text(row[1]) != copied.created):
                return None
        elif list(row[:2]) != old.get(key):
            return None
    return {
        **record,
        **image_fields(built.image),
        "size": size,
        "entries": [[key, *rows[key][:2]] for key in sorted(rows)],
        "lookups": lookups,
        "selections": selections,
        "last_copy": dataclasses.replace(last, lookup_key=copied.lookup_key).to_json(),
    }

"""The build: reads the Dockerfile, walks the plan stage by stage, step by step.

A stage starts where its FROM says (``baseimage.py``); each instruction then
either changes the scope and the config (ARG, ENV and the metadata
instructions, ``metadata.py``) or makes a layer: RUN (``runstep.py``),
COPY/ADD (``copystep.py``) and WORKDIR (``workdirstep.py``) describe
themselves as a ``LayerWork``, and ``layerstep.py`` looks their key up and,
on a miss, does the work. Stages the target does not need are skipped; the
others build in parallel threads (``--jobs``), each waiting for another only
where it uses it. The target stage
becomes the image (``finalimage.py``), then the outputs are written.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

from imgbuild import dockerfile as frontend
from imgbuild.builder import imageconfig as ic
from imgbuild.builder.baseimage import base_state, onbuild_triggers, resolve_image
from imgbuild.builder.copystep import plan_copy
from imgbuild.builder.fetch import is_url
from imgbuild.builder.finalimage import (
    BuildResult,
    remove_result_files,
    tag_image,
    write_final_image,
    write_result_files,
)
from imgbuild.builder.lastcopy import after, last_copy_of
from imgbuild.builder.layerstep import run_layer_step
from imgbuild.builder.metadata import apply_metadata
from imgbuild.builder.options import BuildOptions
from imgbuild.builder.outputs import only_pushed, write_outputs
from imgbuild.builder.pending import settle, settle_despite
from imgbuild.builder.progress import Progress, Step, Summary, make_progress
from imgbuild.builder.rootfs import image_layers
from imgbuild.builder.runstep import plan_run
from imgbuild.builder.signals import signals_raise_interrupt
from imgbuild.builder.state import StageResult, StageState
from imgbuild.builder.workdirstep import plan_workdir
from imgbuild.cache.index import BuildCache
from imgbuild.cache.limits import collect_after_build, limits_for
from imgbuild.context.buildfiles import default_dockerfile, load_ignore_patterns, read_build_file
from imgbuild.context.dockerignore import IgnoreMatcher
from imgbuild.context.source import BuildContext
from imgbuild.context.statcache import StatCache
from imgbuild.dockerfile import Add, Arg, Cmd, Copy, Env, Run, Workdir
from imgbuild.dockerfile.checks import check, check_config, warnings_before
from imgbuild.dockerfile.plan import sources_of
from imgbuild.errors import (
    BuildError,
    DockerfileError,
    ImgbuildError,
    Interrupted,
    SourceLocation,
    UsageError,
)
from imgbuild.image import LayerRef
from imgbuild.store import Store, remove_tree
from imgbuild.units import plural

# The steps BuildKit numbers "[2/5]" in its progress: those that make layers.
LAYER_KINDS = (Run, Copy, Add, Workdir)


def _read_ca_certs(paths: list[Path]) -> bytes:
    """The --ca-cert files as one PEM text; without any, the sandbox code is not even loaded."""
    if not paths:
        return b""
    from imgbuild.sandbox.cacerts import read_ca_certs

    return read_ca_certs(paths)


class Builder:
    """One build: what it was asked, and what every stage and step shares while it runs."""

    def __init__(self, store: Store, options: BuildOptions, progress: Progress | None = None, journal=None):
        self.store = store
        # what this build's record (builder/record.py) needs to know; None: no record is kept
        self.journal = journal
        self.options = options
        self.progress = progress or make_progress(options.progress, explain=options.explain)
        self.progress.explain = self.progress.explain or options.explain
        sources = []
        if options.cache_from:  # the cache share code is loaded only for --cache-from/--cache-to
            from imgbuild.cache.share import open_source

            sources = [open_source(spec, store, options.insecure_registries) for spec in options.cache_from]
        for source in sources:
            source.warn = self.progress.warning
        self.cache = BuildCache(store, sources)
        self.cancel = threading.Event()
        self.results: dict[int, StageResult] = {}  # stages that ended, by index
        self.stage_levels: dict[int, int] = {}  # stage index -> its level in the plan
        self.stage_threads: dict[int, int] = {}  # thread ident -> the stage it builds
        self.stage_ended = threading.Condition()  # notified as a stage ends (or the build stops)
        self.stage_failures: list[BaseException] = []
        self.counts_lock = threading.Lock()
        self.steps_cached = 0
        self.steps_run = 0
        self.missed_keys: set[str] = set()  # chain keys of the steps that missed (cache/explain.py)
        self.platform = options.target_platform()
        self.dockerfile_name = "Dockerfile"
        self.context: BuildContext | None = None
        self.secrets = {secret.id: secret for secret in options.secrets}
        self.named_contexts: dict[str, BuildContext] = {}  # --build-context NAME=DIR, opened on use
        self.ca_certs = _read_ca_certs(options.ca_certs)  # PEM; a bad file is a usage error now
        self.lease = None  # the store's build lease while the build runs
        self.base_configs: dict[int, dict] = {}  # stage index -> its base image's config
        # A RUN ran or is about to: its container's delete and the launcher
        # service must end before the build returns (finish_sandbox).
        self.used_sandbox = False

    # --- the whole build ---------------------------------------------------------

    def build(self) -> BuildResult:
        started = time.monotonic()
        # A failed build must not leave the files of an earlier one behind.
        remove_result_files(self.options)
        # A bad IMGBUILD_MAX_CACHE is a usage error before the build, not after it.
        limits = limits_for(self.store, self.options.max_cache, self.options.min_free)
        self._sweep_dead_work()
        text = self._read_dockerfile()
        if self.journal is not None:
            self.journal.read_dockerfile(text)
        parsed = self._parse(text)
        plan = frontend.plan(parsed, self.options.build_args, self.options.target, str(self.platform))
        check_config(parsed, plan.build_args)  # a bad # check= fails now, not after the build
        for name in plan.unused_build_args:
            message = f"build arg {name} was given but no stage declares it (ARG {name})"
            self.progress.warning(message)
            if self.journal is not None:
                self.journal.warned(message)
        self.plan = plan
        epoch = plan.source_date_epoch()
        if self.options.source_date_epoch is None and epoch is not None:
            # BuildKit takes the time from a SOURCE_DATE_EPOCH build arg or global ARG
            self.options = dataclasses.replace(self.options, source_date_epoch=epoch)
        self.context = self._open_context()
        self.context.keep_listings()  # each key's inputs name the files it read
        self.context.journal = self.journal
        try:
            # SIGTERM must clean up like Ctrl-C for the whole build, outputs
            # included: a type=local output copies from a mounted overlay.
            # A registered build, not the writer lease: a prune meanwhile keeps what
            # this build looked up, wrote or resolved (imgbuild.store.lock).
            with signals_raise_interrupt(), self.store.build_lease() as self.lease:
                self._seed_cache_mounts()
                try:
                    self._build_stages(plan)
                except Interrupted:
                    raise
                except ImgbuildError:
                    self._show_checks(parsed, plan)  # BuildKit shows them with the error too
                    raise
                self._run_checks(parsed, plan)
                target = self.results[plan.target]
                elsewhere = self._layers_left_in_registry(target)
                image = write_final_image(self.store, self.options, self.platform, target, elsewhere)
                tags = [] if elsewhere else tag_image(self.store, self.options, image)
                write_outputs(
                    self.store, self.options, image, target.layers, target.base_layers, self.progress,
                    self.cache.fetch_layers,
                )
                if elsewhere:
                    self.progress.info(
                        f"{len(elsewhere)} layer(s) of the image were not downloaded (only pushed): the image is not "
                        "kept in the local store; use --push instead of --output type=registry to keep it"
                    )
                self._export_cache(plan.target)
                self.cache.settle()  # imported entries whose blobs came meanwhile
        except KeyboardInterrupt:
            raise Interrupted("build interrupted; everything it mounted was unmounted") from None
        finally:
            self.context.stat_cache.close()
        collect_after_build(self.store, limits, self.progress)
        seconds = time.monotonic() - started
        result = BuildResult(image, self.results, self.steps_cached, self.steps_run, seconds, tags)
        write_result_files(self.options, result)
        size = sum(layer.blob.size for layer in target.layers)
        if self.journal is not None:
            self.journal.keep(self, result, size)
        self.progress.finished(
            Summary(image.digest, image.config_descriptor.digest, size, self.steps_cached, self.steps_run, seconds, tags)
        )
        return result

    def _parse(self, text: str):
        """Parse; a parse error comes after the check warnings of the lines
        before it, as BuildKit prints them (testWarningsBeforeError)."""
        try:
            return frontend.parse(text, self.dockerfile_name)
        except DockerfileError as error:
            for warning in warnings_before(text, error, self.options.build_args).warnings:
                self.progress.check_warning(warning)
            raise

    def _run_checks(self, parsed, plan) -> None:
        """BuildKit's build checks on the stages built, once their base images
        are known; with ``error=true`` a warning fails the build before any
        image is written, as in BuildKit."""
        result = self._show_checks(parsed, plan)
        error = result.error()
        if error is not None:
            raise error
        if self.journal is not None:
            self.journal.checked(result.warnings)

    def _show_checks(self, parsed, plan):
        result = check(
            parsed, plan, stages=plan.needed, ignore=self.context.ignore,
            base_config=lambda stage: self.base_configs.get(stage.index), base_platforms=True,
        )
        for warning in result.warnings:
            self.progress.check_warning(warning)
        return result

    def _sweep_dead_work(self) -> None:
        """Clean up after imgbuild processes that were killed (kill -9, a crash)
        while they had containers, mounts or work directories in this store."""
        swept = self.store.sweep_dead_work(self.options.runtime)
        if swept.removed:
            self.progress.info(
                f"removed the work of {plural(len(swept.removed), 'killed imgbuild process', 'killed imgbuild processes')} "
                f"({plural(len(swept.unmounted), 'mount')}, {plural(len(swept.containers), 'container')})"
            )
        for reason in swept.left:
            self.progress.warning(f"could not clean up after a killed imgbuild: {reason}")

    def _layers_left_in_registry(self, target) -> frozenset:
        """The final image's layers an imported cache stands for, when the image
        is only pushed: they are mounted from the cache's repository, never
        downloaded ("a fully cached build ... downloads none when it is only
        pushed"). Otherwise every layer is fetched now, and the set is empty."""
        if only_pushed(self.options):
            missing = frozenset(
                layer.blob.digest for layer in target.layers if not self.store.has_blob(layer.blob.digest)
            )
            if missing and all(self.cache.in_registry(digest) for digest in missing):
                return missing
        self.cache.fetch_layers(target.layers)
        return frozenset()

    def _seed_cache_mounts(self) -> None:
        """RUN --mount=type=cache directories an imported cache carries and this store lacks."""
        if not self.cache.sources:
            return
        from imgbuild.cache.sharemounts import seed_cache_mounts

        for source in self.cache.sources:
            try:
                made = seed_cache_mounts(self.store, source)
            except ImgbuildError as error:  # a warm cache mount is a speed-up, not an input
                self.progress.warning(f"cache mounts of {source.where} not used: {error}")
                continue
            if made:
                self.progress.info(f"seeded {made} cache mount(s) from {source.where}")

    def _export_cache(self, target: int) -> None:
        """--cache-to: mode=min the entries behind the final image's layers (the
        target stage and the stages it is FROM), mode=max every stage's."""
        if not self.options.cache_to:
            return
        from imgbuild.cache.share import export_cache

        chain = []
        index = target
        while index is not None:
            chain.insert(0, index)
            index = self.plan.stages[index].base_stage
        for spec in self.options.cache_to:
            stages = sorted(self.cache.used) if spec.mode == "max" else chain
            keys = [key for index in stages for key in self.cache.used.get(index, [])]
            descriptor = export_cache(
                self.store, spec, keys, self.cache, self.options.insecure_registries, self.options.compression
            )
            self.progress.info(f"exported {len(keys)} cache entries to {spec.path or spec.ref} ({descriptor.digest})")

    def _read_dockerfile(self) -> str:
        if self.options.dockerfile_text is not None:
            self.dockerfile_name = "Dockerfile"
            return self.options.dockerfile_text
        path = self.options.dockerfile or default_dockerfile(self.options.context)
        self.dockerfile_name = str(path) if self.options.dockerfile else path.name
        try:
            return read_build_file(self.options.context, path, "Dockerfile").decode("utf-8")
        except FileNotFoundError:
            raise UsageError(f"no Dockerfile at {path}: give one with -f FILE") from None
        except IsADirectoryError:
            raise UsageError(f"the Dockerfile {path} is a directory: give a file with -f FILE") from None
        except OSError as error:  # a directory, unreadable, ...
            raise ImgbuildError(f"cannot read the Dockerfile {path}: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise DockerfileError(f"{path} is not UTF-8 text: {error}") from None

    def _open_context(self) -> BuildContext:
        dockerfile = None if self.options.dockerfile_text is not None else (
            self.options.dockerfile or default_dockerfile(self.options.context)
        )
        patterns = load_ignore_patterns(self.options.context, dockerfile)
        stat_cache = StatCache(self.store.db)
        return BuildContext(self.options.context, IgnoreMatcher(patterns), stat_cache)

    def _build_stages(self, plan) -> None:
        """Starts the stages the target needs, level by level (each stage after
        those it uses), at most ``--jobs`` of them at a time, each on a thread
        of its own. A stage does not wait for the stages it uses before it
        starts, only where it uses one (``stage_result``: its FROM, a ``COPY
        --from``, a ``RUN --mount=from=``), as BuildKit's solver does: the
        final stage's own steps run while the stage it copies from still
        builds. A stage only waits for stages of an earlier level, which start
        before it, so the oldest unfinished stage can always go on. The first
        failure stops the others and is raised here, after every thread has
        ended.

        Plain threads rather than a ThreadPoolExecutor: concurrent.futures
        loads logging and traceback, ~5 ms of every build that parses its
        Dockerfile. The main thread waits on semaphores, not in
        ``Thread.join``: Python 3.11 takes a thread for ended when Ctrl-C
        interrupts a join of it, and would then exit under a running step
        (its container left behind)."""
        self.stage_levels = {index: depth for depth, level in enumerate(plan.levels) for index in level}
        slots = threading.Semaphore(self.options.jobs or os.cpu_count() or 1)
        ended = threading.Semaphore(0)
        threads = []
        try:
            for stage in (plan.stages[index] for level in plan.levels for index in level):
                slots.acquire()
                if self.cancel.is_set():
                    break
                thread = threading.Thread(target=self._stage_thread, args=(stage, slots, ended), name="stage")
                thread.start()
                threads.append(thread)
            for _ in threads:
                ended.acquire()
        except KeyboardInterrupt:  # Ctrl-C reaches the main thread: stop the stages, let them clean up
            self._stop_stages()
            for thread in threads:
                thread.join()
            raise Interrupted("build interrupted; everything it mounted was unmounted") from None
        for thread in threads:
            thread.join()  # they have all ended: this returns at once
        if self.stage_failures:
            raise self.stage_failures[0]

    def _stage_thread(self, stage, slots: threading.Semaphore, ended: threading.Semaphore) -> None:
        self.stage_threads[threading.get_ident()] = stage.index
        try:
            result = self._build_stage(stage)
            with self.stage_ended:
                self.results[result.index] = result
                self.stage_ended.notify_all()
        except BaseException as error:  # raised again by the main thread, after the others ended
            with self.stage_ended:
                self.stage_failures.append(error)
            self._stop_stages()
        finally:
            # This thread's connection to the index: closed as the thread ends, not
            # when the collector gets to it (sqlite3 connections are in a cycle).
            self.store.db.close()
            slots.release()
            ended.release()

    def _stop_stages(self) -> None:
        """Every stage stops at its next step, and those waiting for another stage stop waiting."""
        self.cancel.set()
        with self.stage_ended:
            self.stage_ended.notify_all()

    def stage_result(self, index: int) -> StageResult | None:
        """What a stage built, once it has ended: a stage that uses another waits
        here. None for a stage not of an earlier level than the caller's."""
        caller = self.stage_threads.get(threading.get_ident())
        level = self.stage_levels.get(index)
        if level is None or (caller is not None and level >= self.stage_levels[caller]):
            # Only a base image's ONBUILD trigger can name such a stage (the plan
            # cannot see it): waiting for it could wait for ever.
            return None
        with self.stage_ended:
            while index not in self.results:
                if self.cancel.is_set():
                    raise Interrupted("build stopped")
                self.stage_ended.wait()
            return self.results[index]

    def _wait_for_stages_used_by(self, instruction) -> None:
        """A step that copies or mounts from another stage starts (and is shown)
        once that stage has ended, as BuildKit shows it: not as a step that runs
        while it waits. A stage it cannot wait for is the step's error, later."""
        for origin, _ in sources_of(instruction):
            index = self.plan.source_stage(origin)
            if index is not None:
                self.stage_result(index)

    # --- one stage -------------------------------------------------------------

    def _build_stage(self, stage) -> StageResult:
        try:
            state = base_state(self, stage)
        except ImgbuildError as error:  # a base image missing or of another platform
            raise _located(error, self.dockerfile_name, stage.from_instruction) from None
        scope = self.plan.scope_for(stage.index, ic.env_list(state.config))
        if stage.base_stage is not None:  # FROM an earlier stage: its ARGs carry over
            scope.inherit_args(self.stage_result(stage.base_stage).args)
        state.scope = scope
        instructions = onbuild_triggers(state) + list(stage.instructions)
        # BuildKit names steps "[name 2/5]", and just "[2/5]" in a one-stage Dockerfile
        stage_label = "" if len(self.plan.stages) == 1 else stage.name or f"stage-{stage.index}"
        step_count = sum(isinstance(i, LAYER_KINDS) for i in instructions)
        step_index = 0
        try:
            for position, instruction in enumerate(instructions):
                if not isinstance(instruction, Run):
                    settle(state)  # only a RUN mounts a pending layer (pending.py)
                if self.cancel.is_set():
                    raise Interrupted("build stopped")
                self._wait_for_stages_used_by(instruction)
                step = None
                if isinstance(instruction, LAYER_KINDS):
                    step_index += 1
                    step = self.progress.new_step(
                        stage_label, step_index, step_count, instruction.text, instruction.line, instruction.end_line
                    )
                    if self.journal is not None:
                        self.journal.stepped(stage_label, step_index, step_count, instruction)
                state.instruction = instruction  # for the record of the step's key (layerstep.py)
                # A step a RUN follows leaves its layer to be written while that RUN runs.
                following = instructions[position + 1] if position + 1 < len(instructions) else None
                defer = isinstance(following, Run)
                try:
                    self._step(stage, state, scope, instruction, step, defer)
                except ImgbuildError as error:
                    raise self.step_failed(step, instruction, error) from None
            settle(state)
        except BaseException as error:
            settle_despite(state, error)
            raise
        ic.container_config(state.config)["Env"] = scope.image_env()
        return StageResult(
            stage.index,
            stage.name,
            state.config,
            state.layers,
            state.key,
            state.base_layers,
            base_digest=state.base_digest,
            entry_key=state.entry_key,
            args=scope.args_in_scope(),
        )

    def prepare_for_runs(self, stage, instruction) -> None:
        """A step of ``stage`` missed, so every step after it runs too: if a RUN is
        among them, start the launcher service (sandbox.launcher) now, so that its
        start-up overlaps this step's own work."""
        instructions = stage.instructions
        position = next((n for n, candidate in enumerate(instructions) if candidate is instruction), 0)
        if any(isinstance(candidate, Run) for candidate in instructions[position:]):
            from imgbuild.sandbox import launcher

            self.used_sandbox = True
            launcher.prepare()

    def finish_sandbox(self, *, report_errors: bool) -> None:
        """Wait for the deferred deletes of the RUN steps' containers
        (sandbox.runtime); on the last call (``report_errors`` false: in the
        build's ``finally``, maybe with an error on its way up) also stop the
        launcher service (sandbox.launcher)."""
        if not self.used_sandbox:
            return  # the sandbox modules were never loaded
        from imgbuild.sandbox import launcher, runtime

        runtime.wait_for_deletes(report_errors=report_errors)
        if not report_errors:
            launcher.stop()

    # --- one step ----------------------------------------------------------------

    def step_failed(self, step: Step | None, instruction, error: ImgbuildError) -> ImgbuildError:
        """``error`` as the failure of a step: shown at the step, and located at its instruction."""
        if step is not None and step.state != "failed":
            self.progress.failed(step, str(error))
        return _located(error, self.dockerfile_name, instruction)

    def _step(self, stage, state: StageState, scope, instruction, step: Step | None, defer: bool = False) -> None:
        # None: dated when the image is written, from the layer steps around it
        # (finalimage.fill_created), so a cached rebuild keeps every time.
        epoch = self.options.source_date_epoch
        created = ic.timestamp(epoch) if epoch is not None else None
        if step is not None and self.journal is not None:
            self.journal.layer_step(stage.index, None)  # a layer step: the COPY before it is not the last one
        if isinstance(instruction, Arg):
            resolved = scope.apply(instruction)
            words = [p.name if p.default is None else f"{p.name}={p.default}" for p in resolved.pairs]
            # No key changes here: a RUN after the ARG sees it in its environment
            # (in its key), a COPY only where it expands it (in its instruction).
            ic.add_history(state.config, "ARG " + " ".join(words), empty_layer=True, created=created)
            return
        # ARG and ENV change the scope; every other instruction is only expanded by it
        expanded = scope.apply(instruction) if isinstance(instruction, Env) else frontend.expanded(instruction, scope)
        if isinstance(expanded, Run):
            work = plan_run(self, stage, state, scope, expanded, step)
            run_layer_step(self, stage, state, step, work, created, defer=defer)
        elif isinstance(expanded, (Copy, Add)):
            # Only ADD URLs are downloaded: a COPY makes no directory (nor this
            # process's work directory in the store) that a cache hit would remove again.
            downloads_dir = self.store.make_temp_dir("add-") if any(map(is_url, expanded.sources)) else None
            if downloads_dir is not None and self.journal is not None:
                self.journal.refuse("ADD downloads a URL")
            try:
                work = plan_copy(self, state, expanded, downloads_dir, is_add=isinstance(expanded, Add))
                # A COPY a RUN follows is not the last one: the RUN's step says so to the journal.
                last = last_copy_of(self, stage, state, expanded, work) if self.journal is not None and not defer else None
                run_layer_step(self, stage, state, step, work, created, defer=defer)
                if last is not None:
                    self.journal.layer_step(stage.index, after(last, state))
            finally:
                if downloads_dir is not None:
                    remove_tree(downloads_dir)
        elif isinstance(expanded, Workdir):
            work = plan_workdir(state, expanded)
            if work is None:
                self.progress.cached(step)
                ic.add_history(state.config, "WORKDIR /", empty_layer=True, created=created)
            else:
                run_layer_step(self, stage, state, step, work, created, defer=defer)
        else:
            created_by = apply_metadata(state.config, expanded, cmd_set=state.cmd_set)
            state.cmd_set = state.cmd_set or isinstance(expanded, Cmd)
            if created_by is not None:
                ic.add_history(state.config, created_by, empty_layer=True, created=created)
            # As in BuildKit, a step that makes no layer leaves the key chain alone:
            # what later steps take from it (env, user, workdir, shell) is in their
            # own key documents, so a LABEL or CMD edit misses nothing.

    # --- what the steps ask of the build -------------------------------------------

    def cache_disabled(self, stage) -> bool:
        """``--no-cache``, or ``--no-cache-filter`` naming this stage."""
        if self.options.no_cache:
            return True
        names = {str(stage.index)} | ({stage.name.lower()} if stage.name else set())
        return any(item.lower() in names for item in self.options.no_cache_filter)

    def count(self, *, cached: bool) -> None:
        with self.counts_lock:
            if cached:
                self.steps_cached += 1
            else:
                self.steps_run += 1

    def source_layers(self, origin: str) -> list[LayerRef]:
        """Layers of ``--from=origin``: a stage by name or index, or an image."""
        index = self.plan.source_stage(origin)
        if index is not None:
            result = self.stage_result(index)
            if result is None:
                # only a base image's ONBUILD trigger can name a stage the plan did not see
                raise BuildError(
                    f"--from={origin} names stage {self.plan.stages[index].label()}, which this build"
                    " does not build before this one (an ONBUILD trigger of a base image needs it, and"
                    " imgbuild plans the stages before it reads base images): copy from that stage in"
                    " this Dockerfile"
                )
            self.cache.fetch_layers(result.layers)
            return result.layers
        named = self.options.build_contexts.get(origin)
        if named is not None and named.directory is not None:
            raise BuildError(
                f"--from={origin}: the build context {origin} is a directory; only COPY --from={origin} reads it"
            )
        return image_layers(resolve_image(self, origin), origin)

    def directory_context(self, origin: str) -> BuildContext | None:
        """``--build-context NAME=DIR`` for ``COPY --from=NAME``, read as the build
        context is (a stage of that name comes first); None for anything else."""
        named = self.options.build_contexts.get(origin)
        if named is None or named.directory is None or self.plan.source_stage(origin) is not None:
            return None
        with self.counts_lock:
            if origin not in self.named_contexts:
                label = f"build context {origin}"
                context = BuildContext(named.directory, IgnoreMatcher([]), self.context.stat_cache, label=label)
                context.keep_listings()
                self.named_contexts[origin] = context
            return self.named_contexts[origin]


def build(store: Store, options: BuildOptions, progress: Progress | None = None, journal=None) -> BuildResult:
    """Build ``options.context`` as the options say; returns the image and step counts.
    ``journal`` (``record.Journal``): keep a build record of it for the next rebuild."""
    progress = progress or make_progress(options.progress, explain=options.explain)
    builder = None
    try:
        progress.begin()
        builder = Builder(store, options, progress, journal)
        result = builder.build()
        builder.finish_sandbox(report_errors=True)
        return result
    except ImgbuildError as error:
        progress.build_failed(error)
        raise
    finally:
        if builder is not None:
            builder.finish_sandbox(report_errors=False)
        progress.close()


def _located(error: ImgbuildError, filename: str, instruction) -> ImgbuildError:
    """Give a step's error the Dockerfile line it came from, unless it has one."""
    if isinstance(error, Interrupted):
        return error
    return error.located(SourceLocation(filename, instruction.line, instruction.source))

"""The build engine: walks the plan, stage by stage and step by step.

For every step it computes the cache key (imgbuild.builder.cache), reuses the
layer on a hit, and otherwise runs the step in a workspace over the parent
layers (imgbuild.builder.rootfs): RUN in the sandbox, COPY/ADD with the copy
rules, WORKDIR as a mkdir. Metadata instructions only change the config.
Stages the target does not need are skipped; independent stages build in
parallel threads (``--jobs``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import stat
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from imgbuild import dockerfile as frontend
from imgbuild.builder import imageconfig as ic
from imgbuild.builder.cache import BuildCache, LayerRef, cache_key
from imgbuild.builder.copy import mkdir_all
from imgbuild.builder.copystep import CopyRequest, run_copy
from imgbuild.builder.metadata import apply_metadata
from imgbuild.builder.options import BuildOptions
from imgbuild.builder.outputs import write_outputs
from imgbuild.builder.progress import Progress, Step, Summary, make_progress
from imgbuild.builder.rootfs import image_layers, mounted_layers, recompress, workspace
from imgbuild.context.buildfiles import load_ignore_patterns, read_build_file
from imgbuild.context.dockerignore import IgnoreMatcher
from imgbuild.context.gopath import go_clean
from imgbuild.context.source import BuildContext
from imgbuild.context.statcache import StatCache
from imgbuild.dockerfile import Add, Arg, Cmd, Copy, Env, Run, Workdir
from imgbuild.errors import (
    BuildError,
    DockerfileError,
    ImageNotFound,
    ImgbuildError,
    Interrupted,
    NotADirectory,
    RunError,
    SourceLocation,
)
from imgbuild.image import Image, Platform, new_config
from imgbuild.safeopen import resolve_in_root
from imgbuild.sandbox.overlay import bind_mounted
from imgbuild.sandbox.runmounts import PIPES_DIR, prepared_mounts, script_mount
from imgbuild.sandbox.runtime import RunSpec, run_container
from imgbuild.sandbox.users import resolve_user
from imgbuild.store import Store, normalise_tag, remove_tree

OUTPUT_TAIL_LINES = 20


@dataclass
class StageState:
    """Where a stage is: its config so far, its layers, and the key of the last step."""

    config: dict
    layers: list[LayerRef]
    key: str
    cmd_set: bool = False  # CMD given in this stage (ENTRYPOINT then keeps it)
    base_name: str = ""
    base_layers: int = 0  # how many of ``layers`` come from a base image (never rewritten)


@dataclass
class StageResult:
    index: int
    name: str | None
    config: dict
    layers: list[LayerRef]
    key: str
    base_layers: int = 0


@dataclass
class BuildResult:
    image: Image
    stages: dict[int, StageResult]
    steps_cached: int
    steps_run: int
    seconds: float
    tags: list[str] = field(default_factory=list)


class Builder:
    def __init__(self, store: Store, options: BuildOptions, progress: Progress | None = None):
        self.store = store
        self.options = options
        self.progress = progress or make_progress(options.progress)
        self.cache = BuildCache(store)
        self.cancel = threading.Event()
        self.results: dict[int, StageResult] = {}
        self.counts_lock = threading.Lock()
        self.steps_cached = 0
        self.steps_run = 0
        self.platform = Platform.parse(options.platform) if options.platform else Platform.host()
        self.dockerfile_name = "Dockerfile"
        self.context: BuildContext | None = None
        self.secrets = {secret.id: secret for secret in options.secrets}

    # --- the whole build ---------------------------------------------------------

    def _sweep_dead_work(self) -> None:
        """Clean up after imgbuild processes that were killed (kill -9, a crash)
        while they had containers, mounts or work directories in this store."""
        swept = self.store.sweep_dead_work(self.options.runtime)
        if swept.removed:
            self.progress.info(
                f"removed the work of {len(swept.removed)} killed imgbuild process(es) "
                f"({len(swept.unmounted)} mounts, {len(swept.containers)} containers)"
            )
        for reason in swept.left:
            self.progress.warning(f"could not clean up after a killed imgbuild: {reason}")

    def build(self) -> BuildResult:
        started = time.monotonic()
        self._sweep_dead_work()
        text = self._read_dockerfile()
        parsed = frontend.parse(text, self.dockerfile_name)
        plan = frontend.plan(parsed, self.options.build_args, self.options.target, str(self.platform))
        for name in plan.unused_build_args:
            self.progress.warning(f"build arg {name} was given but no stage declares it (ARG {name})")
        self.plan = plan
        self.context = self._open_context()
        try:
            # SIGTERM must clean up like Ctrl-C for the whole build, outputs
            # included: a type=local output copies from a mounted overlay.
            with signals_raise_interrupt(), self.store.writer_lease():
                self._build_stages(plan)
                target = self.results[plan.target]
                image = self._write_final_image(target)
                tags = self._tag(image)
                write_outputs(self.store, self.options, image, target.layers, target.base_layers, self.progress)
        except KeyboardInterrupt:
            raise Interrupted("build interrupted; everything it mounted was unmounted") from None
        finally:
            self.context.stat_cache.close()
        seconds = time.monotonic() - started
        result = BuildResult(image, self.results, self.steps_cached, self.steps_run, seconds, tags)
        self._write_result_files(result)
        size = sum(layer.blob.size for layer in target.layers)
        self.progress.finished(
            Summary(image.digest, image.config_descriptor.digest, size, self.steps_cached, self.steps_run, seconds, tags)
        )
        return result

    def _read_dockerfile(self) -> str:
        if self.options.dockerfile_text is not None:
            self.dockerfile_name = "Dockerfile"
            return self.options.dockerfile_text
        path = self.options.dockerfile or (self.options.context / "Dockerfile")
        self.dockerfile_name = str(path) if self.options.dockerfile else "Dockerfile"
        try:
            return read_build_file(self.options.context, path, "Dockerfile").decode("utf-8")
        except FileNotFoundError:
            raise ImgbuildError(f"no Dockerfile at {path}: give one with -f FILE") from None
        except OSError as error:  # a directory, unreadable, ...
            raise ImgbuildError(f"cannot read the Dockerfile {path}: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise DockerfileError(f"{path} is not UTF-8 text: {error}") from None

    def _open_context(self) -> BuildContext:
        dockerfile = None if self.options.dockerfile_text is not None else (
            self.options.dockerfile or self.options.context / "Dockerfile"
        )
        patterns = load_ignore_patterns(self.options.context, dockerfile)
        stat_cache = StatCache(self.store.root / "index.db")
        return BuildContext(self.options.context, IgnoreMatcher(patterns), stat_cache)

    def _build_stages(self, plan) -> None:
        jobs = self.options.jobs or os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            try:
                for level in plan.levels:
                    futures = [pool.submit(self._build_stage, plan.stages[index]) for index in level]
                    wait(futures, return_when=FIRST_EXCEPTION)
                    for future in futures:
                        if future.done() and future.exception() is not None:
                            self.cancel.set()
                            wait(futures)
                            raise future.exception()
                    for future in futures:
                        result = future.result()
                        self.results[result.index] = result
            except KeyboardInterrupt:
                self.cancel.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise Interrupted("build interrupted; everything it mounted was unmounted") from None
            except Interrupted:
                self.cancel.set()
                raise

    # --- one stage -------------------------------------------------------------

    def _build_stage(self, stage) -> StageResult:
        try:
            state = self._base_state(stage)
        except ImgbuildError as error:  # a base image missing or of another platform
            raise _located(error, self.dockerfile_name, stage.from_instruction) from None
        scope = self.plan.scope_for(stage.index, ic.env_list(state.config))
        instructions = self._onbuild_triggers(state) + list(stage.instructions)
        # BuildKit names steps "[name 2/5]", and just "[2/5]" in a one-stage Dockerfile
        stage_label = "" if len(self.plan.stages) == 1 else stage.name or f"stage-{stage.index}"
        layer_kinds = (Run, Copy, Add, Workdir)  # the steps BuildKit numbers
        step_count = sum(isinstance(i, layer_kinds) for i in instructions)
        step_index = 0
        for instruction in instructions:
            if self.cancel.is_set():
                raise Interrupted("build stopped")
            step = None
            if isinstance(instruction, layer_kinds):
                step_index += 1
                step = self.progress.new_step(stage_label, step_index, step_count, instruction.source.strip())
            try:
                self._step(stage, state, scope, instruction, step)
            except ImgbuildError as error:
                if step is not None and step.state != "failed":
                    self.progress.failed(step, str(error))
                raise _located(error, self.dockerfile_name, instruction) from None
        ic.container_config(state.config)["Env"] = scope.image_env()
        return StageResult(stage.index, stage.name, state.config, state.layers, state.key, state.base_layers)

    def _base_state(self, stage) -> StageState:
        platform_key = str(self.platform)
        if stage.base_stage is not None:
            base = self.results[stage.base_stage]
            config = json.loads(json.dumps(base.config))
            return StageState(
                config, list(base.layers), base.key, base_name=f"stage {stage.base_stage}", base_layers=base.base_layers
            )
        if stage.base.lower() == "scratch":
            config = new_config(self.platform)
            ic.ensure_path(config)
            ic.container_config(config)["WorkingDir"] = "/"  # BuildKit's empty image has it
            return StageState(config, [], cache_key({"base": "scratch", "platform": platform_key}), base_name="scratch")
        image = self._resolve_image(stage.base, stage.platform)
        config = json.loads(json.dumps(image.config))
        config.pop("created", None)
        ic.ensure_path(config)
        layers = image_layers(image, stage.base)
        key = cache_key({"base": image.digest, "platform": platform_key})
        return StageState(config, layers, key, base_name=stage.base, base_layers=len(layers))

    def _resolve_image(self, name: str, platform_flag: str | None = None) -> Image:
        """A base image for ``platform_flag`` (default: the build's platform)."""
        platform = Platform.parse(platform_flag) if platform_flag else self.platform
        image = self._find_image(name, platform)
        _check_platform(name, image, platform)
        return image

    def _find_image(self, name: str, platform: Platform) -> Image:
        """From the local store, or pulled (always with --pull)."""
        if not self.options.pull:
            for candidate in _local_names(name):
                try:
                    return self.store.load_image(candidate, platform)
                except ImageNotFound:
                    continue
        from imgbuild.registry.pull import pull

        self.progress.info(f"pulling {name}")
        return pull(self.store, name, platform=platform, insecure=self.options.insecure_registries)

    def _onbuild_triggers(self, state: StageState) -> list:
        """A base image's ONBUILD triggers run first; they do not carry over further."""
        triggers = ic.container_config(state.config).pop("OnBuild", None) or []
        parsed = []
        for expression in triggers:
            try:
                parsed.append(frontend.parse_onbuild_trigger(expression))
            except DockerfileError as error:
                raise BuildError(f"ONBUILD trigger {expression!r} of {state.base_name} is invalid: {error.message}") from None
        return parsed

    # --- one step ----------------------------------------------------------------

    def _step(self, stage, state: StageState, scope, instruction, step: Step | None) -> None:
        created = ic.timestamp(self.options.source_date_epoch)
        if isinstance(instruction, Arg):
            resolved = scope.apply(instruction)
            words = [p.name if p.default is None else f"{p.name}={p.default}" for p in resolved.pairs]
            ic.add_history(state.config, "ARG " + " ".join(words), empty_layer=True, created=created)
            state.key = cache_key({"parent": state.key, "args": sorted(scope.args_in_scope().items())})
            return
        # ARG and ENV change the scope; every other instruction is only expanded by it
        expanded = scope.apply(instruction) if isinstance(instruction, Env) else frontend.expanded(instruction, scope)
        if isinstance(expanded, Run):
            self._do_run(stage, state, scope, expanded, step, created)
        elif isinstance(expanded, (Copy, Add)):
            self._do_copy(stage, state, expanded, step, created, is_add=isinstance(expanded, Add))
        elif isinstance(expanded, Workdir):
            self._do_workdir(stage, state, expanded, step, created)
        else:
            created_by = apply_metadata(state.config, expanded, cmd_set=state.cmd_set)
            state.cmd_set = state.cmd_set or isinstance(expanded, Cmd)
            if created_by is not None:
                ic.add_history(state.config, created_by, empty_layer=True, created=created)
            state.key = cache_key({"parent": state.key, "meta": instruction_document(expanded)})

    # --- steps that make layers -----------------------------------------------------

    def _layer_step(
        self,
        stage,
        state: StageState,
        step: Step,
        key_document: dict,
        created_by: str,
        created: str,
        execute,
        *,
        independent: bool = False,
    ) -> None:
        """Reuse the cached layer for this key, or ``execute(workspace)`` and commit.

        ``independent`` (COPY --link) makes the layer and its key not depend on
        the layers below, so it survives a change of base image.
        """
        if independent:
            # The layer is looked up without the layers below; the chain of
            # keys still goes on from the parent for the steps after it.
            parent_key = ""
            lookup_key = cache_key({"parent": "", **key_document})
            key = cache_key({"link": lookup_key, "parent": state.key})
        else:
            parent_key = state.key
            lookup_key = key = cache_key({"parent": state.key, **key_document})
        entry = None if self._cache_disabled(stage) else self.cache.lookup(lookup_key)
        if entry is not None:
            self.progress.cached(step)
            with self.counts_lock:
                self.steps_cached += 1
            layer = entry.layer
        else:
            self.progress.started(step)
            layers_below = [] if independent else state.layers
            with workspace(self.store, layers_below) as space:
                execute(space, state)
                layer = space.commit(
                    compression=self.options.compression,
                    level=self.options.compression_level,
                    source_date_epoch=self.options.source_date_epoch,
                )
            self.cache.record(lookup_key, parent_key, layer, created_by)
            self.progress.done(step)
            with self.counts_lock:
                self.steps_run += 1
        if layer is not None:
            layer = recompress(self.store, layer, self.options.compression, self.options.compression_level)
            state.layers.append(layer)
        ic.add_history(state.config, created_by, empty_layer=layer is None, created=created)
        state.key = key

    def _cache_disabled(self, stage) -> bool:
        if self.options.no_cache:
            return True
        names = {str(stage.index)} | ({stage.name.lower()} if stage.name else set())
        return any(item.lower() in names for item in self.options.no_cache_filter)

    def _do_workdir(self, stage, state, instruction, step, created) -> None:
        path = ic.workdir_path(state.config, instruction.path)
        ic.container_config(state.config)["WorkingDir"] = path
        if path == "/":
            self.progress.cached(step)
            ic.add_history(state.config, "WORKDIR /", empty_layer=True, created=created)
            state.key = cache_key({"parent": state.key, "meta": instruction_document(instruction)})
            return
        user = ic.container_config(state.config).get("User", "")

        def make_directory(space, state):
            with space.mounted() as merged:
                target = resolve_in_root(merged, path)
                if target.is_dir():
                    return
                owner = resolve_user(merged, user) if user else None
                try:
                    mkdir_all(merged, path, (owner.uid, owner.gid) if owner else None)
                except NotADirectory as problem:
                    raise BuildError(
                        f"WORKDIR {path}: {problem}; remove it in an earlier step or choose another WORKDIR"
                    ) from None

        document = {"step": "WORKDIR", "path": path, "user": user}
        self._layer_step(stage, state, step, document, f"WORKDIR {path}", created, make_directory)

    def _do_run(self, stage, state, scope, instruction, step, created) -> None:
        if instruction.security == "insecure":
            raise BuildError("RUN --security=insecure is not allowed: imgbuild always runs steps sandboxed")
        config = ic.container_config(state.config)
        env = scope.env_for_run()
        user = config.get("User", "")
        cwd = config.get("WorkingDir") or "/"
        script = instruction.inline_script()
        if instruction.exec_form:
            argv = list(instruction.command)
        elif script is not None and script.script_name:
            argv = [f"{PIPES_DIR}/{script.script_name}"]
        elif script is not None:
            argv = ic.with_shell(state.config, script.shell_command)
        else:
            argv = ic.with_shell(state.config, " ".join(instruction.command))
        sources, source_keys = self._mount_sources(instruction, stage)
        env.update(scope.proxy_env())  # reaches RUN, stays out of the key (as in BuildKit)
        document = {
            "step": "RUN",
            "instruction": instruction_document(instruction),
            "argv": argv,
            "env": sorted(scope.env_for_run().items()),
            "user": user,
            "cwd": cwd,
            "shell": ic.shell_of(state.config),
            "mount_sources": source_keys,
            "network": self._run_network(instruction),
        }
        history = ic.run_history(argv, sorted(scope.args_in_scope().items())) + " # imgbuild"

        def execute(space, state):
            with ExitStack() as stack, space.mounted() as merged:
                roots = {origin: stack.enter_context(opener()) for origin, opener in sources.items()}
                self._run_in(space, merged, instruction, argv, env, user, cwd, roots, step)

        self._layer_step(stage, state, step, document, history, created, execute)

    def _run_in(self, space, merged: Path, instruction, argv, env: dict, user: str, cwd: str, roots: dict, step) -> None:
        resolved_user = resolve_user(merged, user)
        script = instruction.inline_script()
        with ExitStack() as stack:
            if script is not None and script.script_name:
                script_mounts = [stack.enter_context(script_mount(script.script_name, script.script, space.scratch))]
            else:
                script_mounts = []
            self._run_container(space, merged, instruction, argv, env, resolved_user, cwd, roots, step, script_mounts)

    def _run_container(self, space, merged, instruction, argv, env, resolved_user, cwd, roots, step, extra_mounts):
        with prepared_mounts(
            instruction.mounts,
            store_root=self.store.root,
            workdir=cwd,
            secrets=self.secrets,
            sources=roots,
            scratch=space.scratch,
            cancel=self.cancel,
        ) as prepared:
            run_env = dict(env)
            run_env.update(prepared.env)
            spec = RunSpec(
                args=argv,
                env=[f"{k}={v}" for k, v in run_env.items()],
                cwd=cwd,
                user=resolved_user,
                network=self._run_network(instruction),
                mounts=extra_mounts + prepared.mounts,
            )
            tail: list[str] = []

            def on_output(data: bytes) -> None:
                self.progress.output(step, data)
                tail.extend(data.decode("utf-8", "replace").splitlines())
                del tail[:-OUTPUT_TAIL_LINES]

            status = run_container(
                merged,
                spec,
                runtime=self.options.runtime,
                workdir=space.scratch,
                on_output=on_output,
                cancel=self.cancel,
            )
        if status != 0:
            command = " ".join(instruction.command) if not instruction.exec_form else json.dumps(instruction.command)
            output = "\n".join(f"    {line}" for line in tail)
            message = f"RUN {command} exited with code {status}"
            if output:
                message += f"\n  last {len(tail)} lines of its output:\n{output}"
            self.progress.failed(step, message)
            raise RunError(message, exit_status=status, output_tail="\n".join(tail))

    def _run_network(self, instruction) -> str:
        """``RUN --network=none|host``; ``default`` or no flag means the build's --network."""
        if instruction.network in (None, "", "default"):
            return self.options.network
        return instruction.network

    def _mount_sources(self, instruction, stage) -> tuple[dict, dict]:
        """For RUN --mount=type=bind: openers of the source roots, and their cache-key digests."""
        openers: dict = {}
        keys: dict = {}
        context_sources: dict[str, list] = {}
        for mount in instruction.mounts:
            if mount.type != "bind":
                continue
            origin = mount.from_ or None
            if origin is None:
                source = mount.source or "."
                selected = self.context.select(source, instruction="RUN --mount")
                context_sources[source] = selected
                keys[f"context:{source}"] = self.context.digest(selected)
            else:
                layers = self._source_layers(origin, stage)
                openers[origin] = _layers_opener(self.store, layers)
                source = mount.source or "/"
                keys[f"from:{origin}:{source}"] = _stage_files_key(openers[origin], origin, source)
        if context_sources:
            openers[None] = self._context_view_opener(context_sources)
        return openers, keys

    @contextmanager
    def _context_root(self):
        yield self.options.context

    def _context_view_opener(self, sources: dict[str, list]):
        """The context as a bind mount must show it: without what .dockerignore excludes.

        BuildKit never transfers ignored files, so a RUN must not see them (they
        are not in the cache key either). Without ignore patterns each source
        is bind-mounted into the view from the descriptor the context opened
        without following symlinks, so a directory swapped for a symlink after
        the check cannot redirect the mount; with them, a tree of hard links
        (copies across file systems) of exactly the selected entries. Either
        way each source is at its path as written, where the bind mount looks.
        """

        @contextmanager
        def opener():
            view = self.store.make_temp_dir("context-")
            try:
                if not self.context.ignore:
                    with _pinned_sources(self.context, sources, view):
                        yield view
                    return
                for source, selections in sources.items():
                    target = view / go_clean("/" + source).lstrip("/")
                    for selected in selections:
                        _link_entries(selected.context, selected.entries(), target)
                yield view
            finally:
                remove_tree(view)

        return opener

    def _source_layers(self, origin: str, stage) -> list[LayerRef]:
        """Layers of ``--from=origin``: a stage name or index, or an image."""
        index = self._stage_index(origin)
        if index is not None:
            return self.results[index].layers
        return image_layers(self._resolve_image(origin), origin)

    def _stage_index(self, origin: str) -> int | None:
        """``--from=NAME``: a stage by name or index, else None (then it is an image)."""
        return self.plan.source_stage(origin)

    def _do_copy(self, stage, state, instruction, step, created, is_add: bool) -> None:
        name = "ADD" if is_add else "COPY"
        config = ic.container_config(state.config)
        request = CopyRequest.from_instruction(instruction, is_add=is_add, workdir=config.get("WorkingDir") or "/")
        origin = getattr(instruction, "from_stage", None)
        download_dir = self.store.make_temp_dir("add-")
        try:
            if origin:
                layers = self._source_layers(origin, stage)
                source_opener = _layers_opener(self.store, layers)
                source_key = _copied_files_key(request, source_opener, origin, download_dir)
                context = None
            else:
                context = self.context
                source_opener = self._context_root
                source_key = request.source_digests(context, download_dir)
            document = {
                "step": name,
                "instruction": instruction_document(instruction),
                "workdir": request.workdir,
                "sources": source_key,
            }
            words = [name] + list(instruction.sources) + [f"<<{doc.name}" for doc in instruction.heredocs]
            history = " ".join(words + [instruction.dest]) + " # imgbuild"

            def execute(space, state):
                with space.mounted() as merged, source_opener() as source_root:
                    source_context = context or BuildContext.for_rootfs(Path(source_root), f"stage {origin}")
                    run_copy(request, source_context, merged, download_dir)

            self._layer_step(
                stage, state, step, document, history, created, execute, independent=bool(instruction.link)
            )
        finally:
            remove_tree(download_dir)

    # --- the result ------------------------------------------------------------------

    def _write_final_image(self, target: StageResult) -> Image:
        config = json.loads(json.dumps(target.config))
        if self.options.labels:
            ic.add_labels(config, self.options.labels)
        config["created"] = ic.timestamp(self.options.source_date_epoch)
        config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in target.layers]}
        config["architecture"] = self.platform.architecture
        config["os"] = self.platform.os
        if self.platform.variant:
            config["variant"] = self.platform.variant
        else:
            config.pop("variant", None)
        return self.store.write_image(config, [layer.blob for layer in target.layers])

    def _tag(self, image: Image) -> list[str]:
        tags = [normalise_tag(tag) for tag in self.options.tags]
        for tag in tags:
            self.store.tag(tag, image.manifest_descriptor)
        if not tags:
            self.store.keep_untagged(image.manifest_descriptor)
        return tags

    def _write_result_files(self, result: BuildResult) -> None:
        try:
            self._write_iidfile_and_metadata(result)
        except OSError as error:  # a path the user gave that cannot be written
            raise BuildError(f"cannot write {error.filename}: {error.strerror or error}") from None

    def _write_iidfile_and_metadata(self, result: BuildResult) -> None:
        if self.options.iidfile:
            self.options.iidfile.write_text(result.image.config_descriptor.digest)
        if self.options.metadata_file:
            metadata = {
                "containerimage.digest": result.image.digest,
                "containerimage.config.digest": result.image.config_descriptor.digest,
                "containerimage.descriptor": result.image.manifest_descriptor.to_json(),
                "image.name": ",".join(result.tags),
                "imgbuild.steps.cached": result.steps_cached,
                "imgbuild.steps.run": result.steps_run,
            }
            self.options.metadata_file.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def build(store: Store, options: BuildOptions, progress: Progress | None = None) -> BuildResult:
    """Build ``options.context`` as the options say; returns the image and step counts."""
    builder = Builder(store, options, progress)
    try:
        return builder.build()
    finally:
        builder.progress.close()


# --- helpers ------------------------------------------------------------------------


def instruction_document(instruction) -> dict:
    """An instruction as data for cache keys: every field but where it stood in the file."""
    document = {"kind": type(instruction).__name__}
    for item in dataclasses.fields(instruction):
        if item.name in ("line", "end_line", "source", "comments"):
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


def _check_platform(name: str, image: Image, want: Platform) -> None:
    """Use a single-platform image only for its own platform, as BuildKit does.

    An index has already given the manifest for ``want``; a plain manifest's
    config says its platform, and building on it for another would run its
    binaries anyway and label the result with a platform its layers are not.
    """
    if not image.config.get("architecture") or not image.config.get("os"):
        return
    have = Platform.from_json(image.config)
    if not want.matches(have):
        raise BuildError(
            f"image {name} is for {have}, not {want}: build with --platform {have}, "
            f"or use an image made for {want}"
        )


def _local_names(name: str) -> list[str]:
    """The names a base image may have in the local store: as written, and Docker's short/long forms."""
    names = [name]
    bare = name
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        if name.startswith(prefix):
            bare = name[len(prefix) :]
            names.append(bare)
    if "/" not in bare.split(":")[0]:
        names.append("docker.io/library/" + bare)
    return names


def _layers_opener(store: Store, layers: list[LayerRef]):
    @contextmanager
    def opener():
        with mounted_layers(store, layers) as merged:
            yield merged

    return opener


def _copied_files_key(request: CopyRequest, source_opener, origin: str, download_dir: Path) -> list:
    """COPY --from: digests of exactly the files the copy reads, as for the build context.

    Keying on the whole stage would miss whenever any other file in it changed
    (a log, a timestamp) although what is copied is the same.
    """
    with source_opener() as source_root:
        source_context = BuildContext.for_rootfs(Path(source_root), f"stage {origin}")
        return request.source_digests(source_context, download_dir)


def _stage_files_key(source_opener, origin: str, source: str) -> str:
    """RUN --mount=type=bind,from=...: a digest of the files the mount shows (see above)."""
    with source_opener() as source_root:
        source_context = BuildContext.for_rootfs(Path(source_root), f"stage {origin}")
        return source_context.digest(source_context.select(source, instruction="RUN --mount"))


@contextmanager
def _pinned_sources(context: BuildContext, sources: dict[str, list], view: Path):
    """Bind each directory source onto its path in ``view`` (see the opener above);
    link any other source there through its checked descriptor.

    A file is linked, not bind-mounted: a `rw` bind of a file is an overlay of
    its parent directory, and overlayfs does not see mounts inside a lowerdir.
    """
    with ExitStack() as mounts:
        for source, selections in sources.items():
            target = view / go_clean("/" + source).lstrip("/")
            for selected in selections:
                with context.object_at(selected.relpath) as (fd, st):
                    if not stat.S_ISDIR(st.st_mode):
                        _link_entries(selected.context, selected.entries(), target)
                        continue
                    target.mkdir(parents=True, exist_ok=True)
                    mounts.enter_context(bind_mounted(f"/proc/self/fd/{fd}", target))
        yield


def _link_entries(context: BuildContext, entries, target: Path) -> None:
    """Recreate context entries under ``target``: dirs, symlinks, other files as hard links.

    A file is linked through the descriptor the context opened and checked
    (never by its path string, which a swapped directory could redirect)."""
    for entry in entries:
        path = target / entry.rel if entry.rel else target
        mode = entry.st.st_mode
        if stat.S_ISDIR(mode):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, stat.S_IMODE(mode))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):
            continue  # two bind mounts of overlapping sources: linked once
        if stat.S_ISLNK(mode):
            os.symlink(entry.link or "", path)
        elif stat.S_ISREG(mode):
            with context.open_path(entry) as path_fd:
                try:
                    os.link(f"/proc/self/fd/{path_fd}", path, follow_symlinks=True)
                    continue
                except OSError:  # another file system
                    pass
            _copy_entry_file(context, entry, path)
        else:
            # A FIFO or device node: linked (through the checked O_PATH
            # descriptor, which does not open it) or made again, never opened,
            # so the view shows it as the context does and only the step opens it.
            with context.open_path(entry) as path_fd:
                try:
                    os.link(f"/proc/self/fd/{path_fd}", path, follow_symlinks=True)
                except OSError:
                    os.mknod(path, mode, entry.st.st_rdev)


def _copy_entry_file(context: BuildContext, entry, path: Path) -> None:
    with context.open_for_reading(entry) as src_fd, open(path, "xb") as out:
        with os.fdopen(os.dup(src_fd), "rb") as source:
            shutil.copyfileobj(source, out)
    os.chmod(path, stat.S_IMODE(entry.st.st_mode))
    os.utime(path, ns=(entry.st.st_atime_ns, entry.st.st_mtime_ns))


def _located(error: ImgbuildError, filename: str, instruction) -> ImgbuildError:
    """Give a step's error the Dockerfile line it came from, unless it has one."""
    if isinstance(error, Interrupted):
        return error
    return error.located(SourceLocation(filename, instruction.line, instruction.source))


@contextmanager
def signals_raise_interrupt():
    """SIGTERM behaves like Ctrl-C: the build stops and cleans up (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

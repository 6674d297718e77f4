"""RUN as a build step: its argv, environment and mounts, its key, and running it in the sandbox."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from imgbuild.builder import imageconfig as ic
from imgbuild.builder.layerstep import LayerWork
from imgbuild.builder.rootfs import layers_opener
from imgbuild.builder.state import StageState
from imgbuild.cache.keys import instruction_document
from imgbuild.context.source import BuildContext
from imgbuild.context.views import context_view_opener
from imgbuild.errors import BuildError, RunError
from imgbuild.units import plural

if TYPE_CHECKING:
    from imgbuild.sandbox.spec import RunSpec

# The sandbox modules are imported where a step runs: a cache hit needs none
# of them (tests/perf checks what a fully cached build imports).

OUTPUT_TAIL_LINES = 20
OUTPUT_TAIL_BYTES = 64 * 1024  # enough for the last lines, bounded however long they are


def plan_run(builder, stage, state: StageState, scope, instruction, step) -> LayerWork:
    """The RUN step's key document and, for a miss, how to run it."""
    if instruction.security == "insecure":
        raise BuildError("RUN --security=insecure is not allowed: imgbuild always runs steps sandboxed")
    config = ic.container_config(state.config)
    user = config.get("User", "")
    cwd = config.get("WorkingDir") or "/"
    argv = _argv(state, instruction)
    sources, source_keys = _mount_sources(builder, instruction, stage)
    document = {
        "step": "RUN",
        "instruction": instruction_document(instruction),
        "argv": argv,
        "env": sorted(scope.env_for_run().items()),
        "user": user,
        "cwd": cwd,
        "shell": ic.shell_of(state.config),
        "mount_sources": source_keys,
        "network": run_network(builder, instruction),
    }
    if builder.options.extra_hosts:  # in BuildKit's key too; absent, old keys stay valid
        document["extra_hosts"] = [list(pair) for pair in builder.options.extra_hosts]
    env = scope.env_for_run()
    env.update(scope.proxy_env())  # reaches RUN, stays out of the key (as in BuildKit)
    # the ARGs in the order they were first declared, as BuildKit lists them
    history = ic.run_history(argv, list(scope.args_in_scope().items())) + " # imgbuild"

    def execute(space):
        with ExitStack() as stack, space.mounted() as merged:
            roots = {origin: stack.enter_context(opener()) for origin, opener in sources.items()}
            _run_in(builder, space, merged, instruction, argv, env, user, cwd, roots, step)

    return LayerWork(document, history, execute, runs_container=True)


def run_network(builder, instruction) -> str:
    """``RUN --network=none|host``; ``default`` or no flag means the build's --network."""
    if instruction.network in (None, "", "default"):
        return builder.options.network
    return instruction.network


def _argv(state: StageState, instruction) -> list[str]:
    script = instruction.inline_script()
    if instruction.exec_form:
        return list(instruction.command)
    if script is not None and script.script_name:
        from imgbuild.sandbox.runmounts import PIPES_DIR

        return [f"{PIPES_DIR}/{script.script_name}"]
    if script is not None:
        return ic.with_shell(state.config, script.shell_command)
    return ic.with_shell(state.config, " ".join(instruction.command))


def _mount_sources(builder, instruction, stage) -> tuple[dict, dict]:
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
            selected = builder.context.select(source, instruction="RUN --mount")
            context_sources[source] = selected
            keys[f"context:{source}"] = builder.context.digest(selected)
        else:
            openers[origin] = layers_opener(builder.store, builder.source_layers(origin))
            source = mount.source or "/"
            keys[f"from:{origin}:{source}"] = _stage_files_key(openers[origin], origin, source)
    if context_sources:
        openers[None] = context_view_opener(builder.store, builder.context, context_sources)
    return openers, keys


def _stage_files_key(source_opener, origin: str, source: str) -> str:
    """RUN --mount=type=bind,from=...: a digest of exactly the files the mount shows.

    Keying on the whole stage would miss whenever any other file in it changed
    (a log, a timestamp) although what the mount shows is the same.
    """
    with source_opener() as source_root:
        source_context = BuildContext.for_rootfs(Path(source_root), f"stage {origin}")
        return source_context.digest(source_context.select(source, instruction="RUN --mount"))


def _run_in(builder, space, merged: Path, instruction, argv, env: dict, user: str, cwd: str, roots: dict, step) -> None:
    from imgbuild.sandbox.cacerts import ca_cert_mounts
    from imgbuild.sandbox.runmounts import prepared_mounts, script_mount
    from imgbuild.sandbox.spec import RunSpec
    from imgbuild.sandbox.users import resolve_user

    resolved_user = resolve_user(merged, user)
    script = instruction.inline_script()
    with ExitStack() as stack:
        if script is not None and script.script_name:
            script_mounts = [stack.enter_context(script_mount(script.script_name, script.script, space.scratch))]
        else:
            script_mounts = []
        with prepared_mounts(
            instruction.mounts,
            store_root=builder.store.root,
            workdir=cwd,
            secrets=builder.secrets,
            ssh=builder.options.ssh,
            sources=roots,
            scratch=space.scratch,
            cancel=builder.cancel,
        ) as prepared:
            run_env = dict(env)
            ca_mounts: list = []
            if builder.ca_certs:
                ca_mounts, ca_env = ca_cert_mounts(merged, builder.ca_certs)
                run_env.update(ca_env)
            run_env.update(prepared.env)
            spec = RunSpec(
                args=argv,
                env=[f"{k}={v}" for k, v in run_env.items()],
                cwd=cwd,
                user=resolved_user,
                network=run_network(builder, instruction),
                mounts=ca_mounts + script_mounts + prepared.mounts,
                extra_hosts=list(builder.options.extra_hosts),
            )
            status, tail = _run_container(builder, merged, spec, space, step)
    if status != 0:
        _fail(builder, instruction, status, tail, step)


def _run_container(builder, merged: Path, spec: RunSpec, space, step) -> tuple[int, list[str]]:
    """Run the step; its exit status and the last lines of its output. The
    workspace's pending layer below is written while the container runs.

    The tail is cut into lines only at the end: a chunk may end inside a
    line (or inside a UTF-8 character).
    """
    from imgbuild.sandbox.runtime import run_container

    builder.used_sandbox = True
    tail = bytearray()

    def on_output(data: bytes) -> None:
        builder.progress.output(step, data)
        tail.extend(data)
        del tail[:-OUTPUT_TAIL_BYTES]

    # The container's delete overlaps the unmount and the commit; the build
    # waits for it before it returns (builder.build).
    status = run_container(
        merged, spec, runtime=builder.options.runtime, workdir=space.scratch, on_output=on_output,
        cancel=builder.cancel, defer_delete=True, meanwhile=space.meanwhile,
    )
    lines = bytes(tail).decode("utf-8", "replace").splitlines()
    return status, lines[-OUTPUT_TAIL_LINES:]


def _fail(builder, instruction, status: int, tail: list[str], step) -> None:
    command = " ".join(instruction.command) if not instruction.exec_form else json.dumps(instruction.command)
    output = "\n".join(f"    {line}" for line in tail)
    message = f"RUN {command} exited with code {status}"
    if output:
        message += f"\n  last {plural(len(tail), 'line')} of its output:\n{output}"
    builder.progress.failed(step, message, exit_status=status)
    raise RunError(message, exit_status=status, output_tail="\n".join(tail))

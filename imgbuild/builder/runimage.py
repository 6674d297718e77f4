"""``imgbuild run``: run a built image once, attached, like ``docker run --rm``.

The image's layers are mounted under a throwaway upperdir, and the process
gets what a runtime derives from the image config: Entrypoint + Cmd (or the
given command), Env (plus ``-e``), WorkingDir and User.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from imgbuild.builder import imageconfig as ic
from imgbuild.builder.builder import signals_raise_interrupt
from imgbuild.builder.rootfs import image_layers, workspace
from imgbuild.errors import Interrupted, UsageError
from imgbuild.image import LayerRef
from imgbuild.sandbox.runtime import run_container
from imgbuild.sandbox.spec import Mount, RunSpec
from imgbuild.sandbox.users import resolve_user
from imgbuild.store import Store


@dataclass
class RunOptions:
    image: str
    command: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)  # K=V, or K to take $K
    network: str = "host"
    user: str | None = None
    workdir: str | None = None
    entrypoint: str | None = None
    runtime: str = "runc"
    privileged: bool = False
    volumes: list[str] = field(default_factory=list)  # -v HOST:CONTAINER[:ro|rw]


def argv_for(config: dict, command: list[str], entrypoint: str | None) -> list[str]:
    """Docker's rule: ENTRYPOINT + (command given, else CMD).

    ``entrypoint`` None means not given; given, it replaces the image's
    ENTRYPOINT and drops its CMD, and ``""`` clears the ENTRYPOINT (as
    ``docker run --entrypoint ''``).
    """
    container = ic.container_config(config)
    if entrypoint is None:
        prefix = list(container.get("Entrypoint") or [])
        args = list(command) if command else list(container.get("Cmd") or [])
    else:
        prefix = [entrypoint] if entrypoint else []
        args = list(command)
    argv = prefix + args
    if not argv and entrypoint is not None:
        raise UsageError("--entrypoint '' clears the image's ENTRYPOINT and CMD: give a command to run")
    if not argv:
        raise UsageError("the image has no ENTRYPOINT or CMD: give a command to run")
    return argv


def merged_env(config: dict, extra: list[str], environ: dict) -> list[str]:
    env = ic.env_dict(config)
    for item in extra:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"-e {item!r}: expected KEY=VALUE")
        if sep:
            env[key] = value
        elif key in environ:
            env[key] = environ[key]
    return [f"{k}={v}" for k, v in env.items()]


def volume_mount(text: str) -> Mount:
    """``-v HOST:CONTAINER[:ro|rw]``: a bind mount of an existing host directory or file.

    Only absolute host paths: Docker's named volumes need a daemon to keep them.
    """
    parts = text.split(":")
    access = "rw"
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        access = parts.pop()
    if len(parts) != 2 or not all(part.startswith("/") for part in parts):
        raise UsageError(f"-v {text!r}: expected /HOST/PATH:/CONTAINER/PATH[:ro|rw], both absolute")
    source, destination = parts
    if not os.path.exists(source):
        raise UsageError(f"-v {text!r}: {source} does not exist on this machine; create it first")
    return Mount("bind", destination, source=os.path.realpath(source), readonly=access == "ro")


def run_image(store: Store, options: RunOptions, environ: dict) -> int:
    mounts = [volume_mount(text) for text in options.volumes]
    image = store.load_image(options.image)
    config = image.config
    argv = argv_for(config, options.command, options.entrypoint)
    layers = image_layers(image, options.image)
    try:
        # The lease tells `imgbuild rmi` and `fsck --repair` that the store is
        # in use: the container's root is mounted from a directory in tmp/.
        with store.writer_lease():
            return _run_in_workspace(store, layers, config, argv, options, environ, mounts)
    except KeyboardInterrupt:
        raise Interrupted("interrupted; the container was stopped and its mounts removed") from None


def _run_in_workspace(
    store: Store, layers: list[LayerRef], config: dict, argv: list[str], options, environ, mounts: list[Mount]
) -> int:
    """Mount the image under a throwaway upperdir and run ``argv``; SIGTERM cleans up as Ctrl-C."""
    container = ic.container_config(config)
    with (
        signals_raise_interrupt(),
        workspace(store, layers, prefix="run-") as space,
        space.mounted() as merged,
    ):
        spec = RunSpec(
            args=argv,
            env=merged_env(config, options.env, environ),
            cwd=options.workdir or container.get("WorkingDir") or "/",
            user=resolve_user(merged, options.user if options.user is not None else container.get("User", "")),
            network=options.network,
            mounts=mounts,
            privileged=options.privileged,
        )
        sys.stdout.flush()
        return run_container(merged, spec, runtime=options.runtime, workdir=space.scratch)

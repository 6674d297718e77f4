"""WORKDIR as a build step: the config's working directory, and the directory made if missing."""

from __future__ import annotations

from imgbuild.builder import imageconfig as ic
from imgbuild.builder.layerstep import LayerWork
from imgbuild.builder.state import StageState
from imgbuild.errors import BuildError, NotADirectory
from imgbuild.safeopen import resolve_in_root


def plan_workdir(state: StageState, instruction) -> LayerWork | None:
    """Set the working directory; the layer step that makes it, or None for ``/``
    (which always exists: BuildKit makes no layer and no numbered step run for it)."""
    path = ic.workdir_path(state.config, instruction.path)
    ic.container_config(state.config)["WorkingDir"] = path
    if path == "/":
        return None
    user = ic.container_config(state.config).get("User", "")

    def make_directory(space):
        with space.mounted() as merged:
            target = resolve_in_root(merged, path)
            if target.is_dir():
                return
            from imgbuild.builder.copy import mkdir_all  # the step runs: a miss
            from imgbuild.sandbox.users import resolve_user

            owner = resolve_user(merged, user) if user else None
            try:
                mkdir_all(merged, path, (owner.uid, owner.gid) if owner else None)
            except NotADirectory as problem:
                raise BuildError(
                    f"WORKDIR {path}: {problem}; remove it in an earlier step or choose another WORKDIR"
                ) from None

    document = {"step": "WORKDIR", "path": path, "user": user}
    return LayerWork(document, f"WORKDIR {path}", make_directory)

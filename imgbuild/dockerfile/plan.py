"""Stages and their dependencies: what a build of a given target needs.

BuildKit's rules, which we follow:

- Each FROM starts a stage. ``FROM x AS name`` names it (names are compared
  case-insensitively). The image of a FROM is expanded with the global ARGs;
  if the result is the name of an *earlier* stage, the stage builds on it.
- ``COPY --from=X`` and ``RUN --mount=...,from=X``: X is a stage name or a
  stage index (an earlier stage; a COPY naming a later stage fails once that
  stage is built, as BuildKit dispatches stages in file order);
  anything else is an image reference. (BuildKit looks a numeric mount
  ``from`` up as an image name, which no registry serves; buildah and we
  take it as a stage index, as for COPY.)
- ``--target NAME`` picks the stage to build (default: the last one). Only
  the stages it needs are built; stages whose dependencies are all built can
  be built in parallel (``Plan.levels``).
- Build args that no needed stage declares produce a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import TYPE_CHECKING

from imgbuild.dataclass import dataclass
from imgbuild.dockerfile.instructions import (
    Arg,
    Copy,
    Env,
    From,
    Instruction,
    Onbuild,
    Run,
    description,
)
from imgbuild.dockerfile.scope import PROXY_ARGS, StageScope
from imgbuild.dockerfile.shell import (
    MAX_VALUE,
    Lexer,
    closest,
    go_quote,
    is_too_big_error,
    is_unset_variable_error,
    value_too_big,
)
from imgbuild.errors import DockerfileError, ExpansionError, PlanError, SourceLocation
from imgbuild.image import Platform

if TYPE_CHECKING:
    from imgbuild.dockerfile import Dockerfile


@dataclass
class ArgInfo:
    """An ARG as the outline shows it."""

    name: str
    default: str | None  # as written
    value: str | None  # what it is in this build (None: unset or unknown)
    description: str
    line: int
    problem: str | None = None  # why ``value`` could not be worked out, if so


@dataclass
class Stage:
    """A stage of the Dockerfile: its FROM after expansion and its instructions."""

    index: int
    name: str | None
    base: str  # the FROM image after expansion (or the base stage's name)
    base_stage: int | None  # index of the stage this one builds on
    platform: str | None  # --platform after expansion
    instructions: list[Instruction]  # the stage's instructions after its FROM
    from_instruction: From
    deps: set[int] = field(default_factory=set)  # stages it needs
    images: list[str] = field(default_factory=list)  # images used by COPY --from / mounts
    args: list[ArgInfo] = field(default_factory=list)  # ARGs declared in the stage
    global_args_used: list[str] = field(default_factory=list)  # in FROM / --platform

    @property
    def line(self) -> int:
        return self.from_instruction.line

    @property
    def description(self) -> str:
        """A comment line ``# NAME text`` above ``FROM ... AS NAME`` (BuildKit's rule)."""
        return description(self.from_instruction.comments, self.name or "")

    def label(self) -> str:
        """The stage's name, or its index if it has none."""
        return self.name if self.name else str(self.index)


@dataclass
class Plan:
    """The stages to build for a target, in an order that builds each after what it needs."""

    dockerfile: Dockerfile  # what this plan is for
    stages: list[Stage]
    target: int
    needed: list[int]  # stages the target needs (itself included), in a valid build order
    levels: list[list[int]]  # needed stages grouped: each group only needs earlier groups
    global_args: dict[str, str | None]  # global ARG values for this build (None: unset)
    global_arg_infos: list[ArgInfo]
    predefined_args: dict[str, str]  # platform args
    build_args: dict[str, str]
    unused_build_args: list[str]
    warnings: list[str]

    def scope_for(self, stage_index: int, base_env: list[str] | tuple[str, ...] = ()) -> StageScope:
        """A fresh scope for building ``stage_index`` on a base with ``base_env``."""
        return StageScope(
            global_args=self.global_args,
            build_args=self.build_args,
            base_env=base_env,
            predefined_args=self.predefined_args,
            escape=self.dockerfile.directives.escape,
            filename=self.dockerfile.filename,
        )

    def source_date_epoch(self) -> int | None:
        """BuildKit's ``SOURCE_DATE_EPOCH`` build arg (or the default of a global
        ``ARG SOURCE_DATE_EPOCH``): seconds since the epoch, or None when unset,
        empty or ``context`` (a local context has no time of its own)."""
        value = self.build_args.get("SOURCE_DATE_EPOCH", self.global_args.get("SOURCE_DATE_EPOCH"))
        if value in (None, "", "context"):
            return None
        if value.isascii() and value.isdigit():
            return int(value)
        why = "a stage's time is not supported, " if _stage_named(self.stages, value) else ""
        raise PlanError(
            f"{self.dockerfile.filename}: invalid SOURCE_DATE_EPOCH: {value} ({why}give a number of seconds since 1970)"
        )

    def source_stage(self, reference: str) -> int | None:
        """``COPY --from=X`` / ``RUN --mount=from=X``: the stage X names, or None for an image.

        A number is a stage index (the planner has checked it), anything else a
        stage name if one matches.
        """
        index = _as_int(reference)
        if index is not None:
            return index
        try:
            return self.stage(reference).index
        except KeyError:
            return None

    def stage(self, name_or_index: str | int) -> Stage:
        if isinstance(name_or_index, int):
            return self.stages[name_or_index]
        for stage in self.stages:
            if stage.name == name_or_index.lower():
                return stage
        raise KeyError(name_or_index)


# -- platforms --------------------------------------------------------------------

def host_platform() -> str:
    """The machine we run on, as an OCI platform string (``linux/amd64``)."""
    return str(Platform.host())


def platform_args(target: str | None = None, build: str | None = None) -> dict[str, str]:
    """TARGETPLATFORM/TARGETOS/... and BUILDPLATFORM/BUILDOS/... values."""
    target = target or host_platform()
    build = build or host_platform()
    args = {}
    for prefix, value in (("TARGET", target), ("BUILD", build)):
        os_name, arch, variant = _split_platform(value)
        args[prefix + "PLATFORM"] = value
        args[prefix + "OS"] = os_name
        args[prefix + "ARCH"] = arch
        args[prefix + "VARIANT"] = variant
    return args


def _split_platform(value: str) -> tuple[str, str, str]:
    parts = value.split("/")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise PlanError(f"invalid platform {value!r}: use os/arch[/variant], e.g. linux/amd64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


# -- planning ---------------------------------------------------------------------


def plan(
    dockerfile: Dockerfile,
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    platform: str | None = None,
    *,
    build_platform: str | None = None,
) -> Plan:
    """Work out the stages, their dependencies and what ``target`` needs.

    ``dockerfile`` is what ``imgbuild.dockerfile.parse`` returned; ``platform``
    is the target platform (default: this machine), ``build_platform`` the
    platform the build runs on (default: this machine). Raises PlanError or
    ExpansionError, located in the Dockerfile.
    """
    return _Planner(dockerfile, dict(build_args or {}), platform, build_platform).run(target)


class _Planner:
    def __init__(
        self,
        dockerfile: Dockerfile,
        build_args: dict[str, str],
        platform: str | None,
        build_platform: str | None,
    ):
        self.dockerfile = dockerfile
        self.filename = dockerfile.filename
        self.escape = dockerfile.directives.escape
        self.build_args = build_args
        self.predefined = platform_args(platform, build_platform)
        self.global_env: dict[str, str] = dict(self.predefined)
        self.global_args: dict[str, str | None] = {}
        self.global_infos: list[ArgInfo] = []
        self.global_deps: dict[str, set[str]] = {}  # global ARG -> globals its default read
        self.stages: list[Stage] = []

    def run(self, target_name: str | None) -> Plan:
        body = self._read_global_args()
        self._split_stages(body)
        self._find_dependencies()
        self._check_cycles()
        target = self._find_target(target_name)
        # BuildKit's built-in TARGETSTAGE: the stage being built ("default" if unnamed)
        self.predefined["TARGETSTAGE"] = self.stages[target].name or "default"
        needed = self._needed(target)
        self._check_copy_order(needed)
        levels = self._levels(needed)
        self._describe_args(set(needed))
        unused = self._unused_build_args(needed)
        warnings = list(self.dockerfile.warnings)
        if unused:
            warnings.append(
                "build args not used by any stage being built: "
                + ", ".join(unused)
                + " (declare them with ARG in the stage that needs them)"
            )
        return Plan(
            dockerfile=self.dockerfile,
            stages=self.stages,
            target=target,
            needed=needed,
            levels=levels,
            global_args=self.global_args,
            global_arg_infos=self.global_infos,
            predefined_args=self.predefined,
            build_args=self.build_args,
            unused_build_args=unused,
            warnings=warnings,
        )

    def _error(self, message: str, instruction: Instruction, kind=PlanError) -> DockerfileError:
        return kind(message, SourceLocation(self.filename, instruction.line, instruction.source or instruction.text))

    def _expand_global(
        self, word: str, instruction: Instruction, value_of: str | None = None
    ) -> tuple[str, set[str]]:
        """Expand with the global ARGs; ``value_of`` names the ARG whose value this is."""
        try:
            max_size = MAX_VALUE if value_of is not None else None
            result = Lexer(self.escape, max_size=max_size).process(word, self.global_env)
        except ExpansionError as error:
            if value_of is not None and is_too_big_error(error):
                error = value_too_big(value_of)
            raise self._error(error.message, instruction, ExpansionError) from None
        return result.result, result.matched

    def _read_global_args(self) -> list[Instruction]:
        """Resolve the ARGs before the first FROM; return the instructions after."""
        instructions = self.dockerfile.instructions
        index = 0
        while index < len(instructions) and isinstance(instructions[index], Arg):
            arg = instructions[index]
            for pair in arg.pairs:
                deps: set[str] = set()
                if pair.name in self.build_args:
                    value: str | None = self.build_args[pair.name]
                elif pair.default is not None:
                    value, deps = self._expand_global(pair.default, arg, value_of=pair.name)
                else:
                    value = None
                if value is not None and len(value) > MAX_VALUE:
                    raise self._error(value_too_big(pair.name).message, arg, ExpansionError)
                if value is not None:
                    self.global_env[pair.name] = value
                self.global_args[pair.name] = value
                self.global_deps[pair.name] = deps
                self.global_infos.append(
                    ArgInfo(pair.name, pair.default, value, pair.description, arg.line)
                )
            index += 1
        return instructions[index:]

    def _split_stages(self, body: list[Instruction]) -> None:
        names: dict[str, int] = {}
        for instruction in body:
            if not isinstance(instruction, From):
                self.stages[-1].instructions.append(instruction)
                continue
            index = len(self.stages)
            base, used = self._expand_global(instruction.image, instruction)
            if base == "":
                raise self._error(
                    f"base name ({instruction.image}) should not be blank", instruction
                )
            stage_platform = None
            if instruction.platform is not None:
                stage_platform, platform_used = self._expand_global(
                    instruction.platform, instruction
                )
                used |= platform_used
            base_stage = names.get(base.lower())
            if instruction.stage_name is not None:
                if instruction.stage_name in names:
                    raise self._error(
                        f"duplicate stage name {go_quote(instruction.stage_name)}", instruction
                    )
                names[instruction.stage_name] = index
            stage = Stage(
                index=index,
                name=instruction.stage_name,
                base=base,
                base_stage=base_stage,
                platform=stage_platform,
                instructions=[],
                from_instruction=instruction,
                global_args_used=sorted(used),
            )
            if base_stage is not None:
                stage.deps.add(base_stage)
            self.stages.append(stage)

    def _stage_by_name(self, name: str) -> int | None:
        for stage in self.stages:
            if stage.name is not None and stage.name == name.lower():
                return stage.index
        return None

    def _find_dependencies(self) -> None:
        for stage in self.stages:
            for instruction in stage.instructions + self._inherited_triggers(stage):
                for reference, flag in sources_of(instruction):
                    self._add_source(stage, instruction, reference, flag)

    def _inherited_triggers(self, stage: Stage) -> list[Instruction]:
        """The ONBUILD triggers of the stage this one is built FROM: they run
        first in this stage, so what they copy from, it needs (as BuildKit's
        initOnBuildTriggers)."""
        if stage.base_stage is None:
            return []
        base = self.stages[stage.base_stage]
        return [i.trigger for i in base.instructions if isinstance(i, Onbuild) and i.trigger is not None]

    def _add_source(self, stage: Stage, instruction: Instruction, reference: str, flag: str) -> None:
        """A stage (by name or index) or an image that ``instruction`` reads from."""
        index = _as_int(reference)
        if index is not None:
            if index < 0:
                raise self._error(f"invalid stage index {index}", instruction)
            if index >= stage.index:
                raise self._error(
                    f"{flag}={reference}: a stage index must refer to an earlier stage "
                    f"(this is stage {stage.index}); name the stage with FROM ... AS name instead",
                    instruction,
                )
            stage.deps.add(index)
            return
        by_name = self._stage_by_name(reference)
        if by_name is not None:
            stage.deps.add(by_name)
        elif reference not in stage.images:
            stage.images.append(reference)

    def _check_cycles(self) -> None:
        """Depth-first search over stage dependencies (iterative: no recursion limit)."""
        done: set[int] = set()
        for root in range(len(self.stages)):
            if root in done:
                continue
            chain = [root]  # the stages on the current path
            pending = [iter(sorted(self.stages[root].deps))]
            while pending:
                dep = next(pending[-1], None)
                if dep is None:
                    done.add(chain.pop())
                    pending.pop()
                    continue
                if dep in chain:
                    self._raise_cycle(chain[chain.index(dep) :] + [dep])
                if dep not in done:
                    chain.append(dep)
                    pending.append(iter(sorted(self.stages[dep].deps)))

    def _raise_cycle(self, cycle: list[int]) -> None:
        names = " -> ".join(self.stages[i].label() for i in cycle)
        culprit = self._dependency_instruction(cycle[-2], cycle[-1])
        raise self._error(f"circular dependency between stages: {names}", culprit)

    def _dependency_instruction(self, index: int, dep: int) -> Instruction:
        """The instruction of stage ``index`` that makes it need stage ``dep``."""
        stage = self.stages[index]
        name = self.stages[dep].name
        for instruction in stage.instructions:
            if isinstance(instruction, Copy) and instruction.from_stage is not None:
                if instruction.from_stage.lower() == name or _as_int(instruction.from_stage) == dep:
                    return instruction
            if isinstance(instruction, Run) and any(
                m.from_ and (m.from_.lower() == name or _as_int(m.from_) == dep)
                for m in instruction.mounts
            ):
                return instruction
        return stage.from_instruction

    def _check_copy_order(self, needed: list[int]) -> None:
        """BuildKit dispatches the stages it builds in file order, so a
        ``COPY --from`` that names a later stage fails (as in buildah and Docker)."""
        for index in needed:
            stage = self.stages[index]
            for instruction in stage.instructions + self._inherited_triggers(stage):
                if not isinstance(instruction, Copy) or instruction.from_stage is None:
                    continue
                source = self._stage_by_name(instruction.from_stage)
                if source is not None and source > index:
                    raise self._error(
                        f"cannot copy from stage {go_quote(instruction.from_stage)}, it needs to be "
                        f"defined before current stage {go_quote(stage.name or f'stage-{index}')}: "
                        "move that stage above this one",
                        instruction,
                    )

    def _find_target(self, name: str | None) -> int:
        if not self.stages:
            raise PlanError(f"{self.filename}: dockerfile contains no stages to build (it needs a FROM line)")
        if name is None or name == "":
            return len(self.stages) - 1
        index = self._stage_by_name(name)
        if index is None:
            names = [s.name for s in self.stages if s.name]
            close = closest(name.lower(), names)
            hint = f" (did you mean {close}?)" if close else ""
            raise PlanError(
                f"{self.filename}: target stage {go_quote(name)} could not be found{hint};"
                f" named stages: {', '.join(names) or 'none'}"
            )
        return index

    def _needed(self, target: int) -> list[int]:
        """The target and everything it needs, each after its dependencies."""
        order: list[int] = []
        seen = {target}
        chain = [target]
        pending = [iter(sorted(self.stages[target].deps))]
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                order.append(chain.pop())
                pending.pop()
            elif dep not in seen:
                seen.add(dep)
                chain.append(dep)
                pending.append(iter(sorted(self.stages[dep].deps)))
        return order

    def _levels(self, needed: list[int]) -> list[list[int]]:
        depth: dict[int, int] = {}
        for index in needed:  # dependencies come first in ``needed``
            deps = self.stages[index].deps
            depth[index] = 1 + max((depth[d] for d in deps), default=-1)
        levels: list[list[int]] = [[] for _ in range(max(depth.values()) + 1)]
        for index in sorted(needed):
            levels[depth[index]].append(index)
        return levels

    def _describe_args(self, needed: set[int]) -> None:
        """Fill each stage's ARG list; values only for stages that are built."""
        for stage in self.stages:
            scope = StageScope(
                global_args=self.global_args,
                build_args=self.build_args,
                predefined_args=self.predefined,
                escape=self.escape,
                filename=self.filename,
            )
            problem = None if stage.index in needed else "stage not built"
            for instruction in stage.instructions:
                if isinstance(instruction, (Arg, Env)) and problem is None:
                    try:
                        scope.apply(instruction)
                    except ExpansionError as error:
                        if not is_unset_variable_error(error):
                            raise  # a syntax error: every build of this stage fails
                        # ${X:?} may pass in a real build, where the base image sets X.
                        problem = f"cannot be worked out without the base image: {error.message}"
                if not isinstance(instruction, Arg):
                    continue
                for pair in instruction.pairs:
                    value = scope.args_in_scope().get(pair.name) if problem is None else None
                    stage.args.append(
                        ArgInfo(
                            pair.name,
                            pair.default,
                            value,
                            pair.description,
                            instruction.line,
                            problem,
                        )
                    )

    def _unused_build_args(self, needed: list[int]) -> list[str]:
        used: set[str] = set()
        for index in needed:
            stage = self.stages[index]
            used |= {arg.name for arg in stage.args}
            for name in stage.global_args_used:
                used |= self._global_closure(name)
        unused = []
        for name in self.build_args:
            if name in used or name in PROXY_ARGS or name in self.predefined:
                continue
            if name.startswith("BUILDKIT_") or name == "SOURCE_DATE_EPOCH":
                continue
            unused.append(name)
        return unused

    def _global_closure(self, name: str) -> set[str]:
        """A global ARG and the global ARGs its default reads, transitively."""
        result: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in result:
                continue
            result.add(current)
            todo.extend(self.global_deps.get(current, ()))
        return result


def _stage_named(stages: list[Stage], name: str) -> bool:
    return any(stage.name == name.lower() for stage in stages)


def sources_of(instruction: Instruction) -> list[tuple[str, str]]:
    """What an instruction reads from another stage or an image, as
    (reference, flag): a ``COPY --from`` and the ``RUN --mount`` that take
    ``from=`` (all but tmpfs). The planner makes them dependencies; the
    builder waits for those that are stages."""
    sources = []
    if isinstance(instruction, Copy) and instruction.from_stage is not None:
        sources.append((instruction.from_stage, "COPY --from"))
    if isinstance(instruction, Run):
        sources += [(m.from_, "RUN --mount=from") for m in instruction.mounts if m.from_ and m.type != "tmpfs"]
    return sources


def _as_int(text: str) -> int | None:
    # Go's strconv.Atoi: optional sign, decimal digits.
    body = text[1:] if text[:1] in "+-" else text
    if body and body.isascii() and body.isdigit():
        return int(text)
    return None

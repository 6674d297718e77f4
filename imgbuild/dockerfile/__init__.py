"""The Dockerfile front end: parse, expand and plan, as BuildKit does.

Layers, each usable on its own:

- ``lines.parse_lines``: directives, continuation lines, comments, heredoc
  bodies, flags and arguments (BuildKit's parser; the conformance corpus is
  checked against this layer);
- ``instructions``: one typed dataclass per instruction (BuildKit's
  instructions.Parse);
- ``shell``: Docker's word expansion (``expand_word``, ``expand_words``);
- ``scope``: ARG/ENV visibility in a stage (``StageScope``) and
  ``expanded(instruction, scope)``;
- ``plan``: stages, dependencies, ``--target``, parallel levels;
- ``outline``: what ``imgbuild outline`` prints;
- ``checks``: BuildKit's build checks over the parsed file and its plan.

The entry points are ``parse(text, filename)`` and ``plan(dockerfile, ...)``.
"""

from __future__ import annotations

from dataclasses import field

from imgbuild.dataclass import dataclass
from imgbuild.dockerfile.directives import Directives
from imgbuild.dockerfile.heredoc import Heredoc
from imgbuild.dockerfile.instructions import (
    INSTRUCTION_TYPES,
    Add,
    Arg,
    ArgPair,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    From,
    Healthcheck,
    InlineScript,
    Instruction,
    KeyValue,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    StopSignal,
    User,
    Volume,
    Workdir,
    to_instruction,
)
from imgbuild.dockerfile.lines import InstructionLine, ParsedLines, parse_lines
from imgbuild.dockerfile.mounts import MountSpec
from imgbuild.dockerfile.plan import ArgInfo, Plan, Stage, host_platform, plan, platform_args
from imgbuild.dockerfile.scope import StageScope, expanded
from imgbuild.errors import DockerfileError, SourceLocation

__all__ = [
    "Add",
    "Arg",
    "ArgInfo",
    "ArgPair",
    "Cmd",
    "Copy",
    "Directives",
    "Dockerfile",
    "DockerfileError",
    "Entrypoint",
    "Env",
    "Expose",
    "From",
    "Healthcheck",
    "Heredoc",
    "INSTRUCTION_TYPES",
    "InlineScript",
    "Instruction",
    "InstructionLine",
    "KeyValue",
    "Label",
    "Maintainer",
    "MountSpec",
    "Onbuild",
    "ParsedLines",
    "Plan",
    "Run",
    "Shell",
    "Stage",
    "StageScope",
    "StopSignal",
    "User",
    "Volume",
    "Workdir",
    "expanded",
    "host_platform",
    "parse",
    "parse_lines",
    "parse_onbuild_trigger",
    "plan",
    "platform_args",
]


@dataclass
class Dockerfile:
    """A parsed Dockerfile: its directives and all its instructions in order
    (including the global ARGs before the first FROM)."""

    directives: Directives
    instructions: list[Instruction]
    filename: str = "Dockerfile"
    warnings: list[str] = field(default_factory=list)

    @property
    def escape(self) -> str:
        return self.directives.escape


def parse(text: str, filename: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile; raise DockerfileError (``FILE:LINE: message``).

    Checks everything that does not depend on build args or stages: syntax,
    instructions and their flags and arguments, and that nothing but ARG
    comes before the first FROM.
    """
    parsed = parse_lines(text, filename)
    escape = parsed.directives.escape
    instructions: list[Instruction] = []
    seen_from = False
    for node in parsed.lines:
        instruction = to_instruction(node, filename, escape)
        if isinstance(instruction, From):
            seen_from = True
        elif not seen_from and not isinstance(instruction, Arg):
            first_line = node.source.split("\n", 1)[0].rstrip("\r")
            raise DockerfileError(
                f"no build stage in current context: {instruction.keyword} comes before the "
                "first FROM (only ARG may come before FROM)",
                SourceLocation(filename, node.line, first_line),
            )
        instructions.append(instruction)
    return Dockerfile(parsed.directives, instructions, filename, list(parsed.warnings))


def parse_onbuild_trigger(
    expression: str, escape: str = "\\", filename: str = "ONBUILD"
) -> Instruction:
    """Parse one entry of a base image's OnBuild list (e.g. ``RUN make``).

    BuildKit parses triggers with the default escape character whatever the
    child Dockerfile uses; pass ``escape`` to override. Raises DockerfileError.
    """
    parsed = parse_lines(expression, filename, escape=escape)
    if len(parsed.lines) != 1:
        raise DockerfileError(
            f"an ONBUILD trigger must be exactly one instruction, got {len(parsed.lines)}: "
            f"{expression!r}"
        )
    instruction = to_instruction(parsed.lines[0], filename, parsed.directives.escape)
    if isinstance(instruction, From):
        raise DockerfileError(f"FROM isn't allowed as an ONBUILD trigger: {expression!r}")
    return instruction

"""What ``imgbuild outline`` prints: the stages, build args and steps of a plan.

Two renderings of the same data: ``outline_data`` (a JSON-ready dict, stable
key order) and ``render_text`` (for people).
"""

from __future__ import annotations

import dataclasses
import json

from imgbuild.dockerfile.instructions import Arg, Instruction
from imgbuild.dockerfile.plan import ArgInfo, Plan, Stage
from imgbuild.dockerfile.shell import is_unset_variable_error
from imgbuild.errors import DockerfileError, ExpansionError

# Fields every instruction has; they never change when expanding.
_COMMON_FIELDS = {f.name for f in dataclasses.fields(Instruction)}


def outline_data(plan: Plan) -> dict:
    """The outline as plain data (what ``--format json`` prints)."""
    needed = set(plan.needed)
    level_of = {index: level for level, group in enumerate(plan.levels) for index in group}
    target = plan.stages[plan.target]
    return {
        "filename": plan.dockerfile.filename,
        "target": {"index": target.index, "name": target.name},
        "build_order": plan.levels,
        "global_args": [_arg_data(info) for info in plan.global_arg_infos],
        "stages": [
            _stage_data(plan, stage, stage.index in needed, level_of.get(stage.index))
            for stage in plan.stages
        ],
        "warnings": list(plan.warnings),
    }


def _arg_data(info: ArgInfo) -> dict:
    data = {
        "name": info.name,
        "default": info.default,
        "value": info.value,
        "description": info.description,
        "line": info.line,
    }
    if info.problem:
        data["problem"] = info.problem
    return data


def _stage_data(plan: Plan, stage: Stage, needed: bool, level: int | None) -> dict:
    return {
        "index": stage.index,
        "name": stage.name,
        "description": stage.description,
        "line": stage.line,
        "base": stage.base,
        "base_stage": stage.base_stage,
        "platform": stage.platform,
        "needed": needed,
        "level": level,
        "deps": sorted(stage.deps),
        "images": list(stage.images),
        "global_args_used": list(stage.global_args_used),
        "args": [_arg_data(info) for info in stage.args],
        "steps": _steps(plan, stage, needed),
    }


def _steps(plan: Plan, stage: Stage, needed: bool) -> list[dict]:
    """Each step, and for stages that are built, what expansion makes of it.

    The base image's environment is not known here, so a variable that only
    the base image sets expands to nothing, and ``${X:?}`` makes the step a
    "problem" instead of an error. Syntax errors are raised: every build fails.
    """
    scope = plan.scope_for(stage.index) if needed else None
    steps = []
    for instruction in stage.instructions:
        step = {
            "line": instruction.line,
            "instruction": instruction.keyword,
            "text": instruction.text,
        }
        if scope is not None:
            try:
                result = scope.apply(instruction)
            except ExpansionError as error:
                if not is_unset_variable_error(error):
                    raise  # a syntax error: a build of this stage fails the same way
                step["problem"] = error.message
                scope = None  # later steps would be expanded with a wrong scope
            except DockerfileError as error:
                # e.g. a --mount value that is invalid once expanded: depends on values
                step["problem"] = error.message
                scope = None
            else:
                changes = _changes(instruction, result)
                if changes:
                    step["expanded"] = changes
        steps.append(step)
    return steps


def _changes(before: Instruction, after: Instruction) -> dict:
    """The fields expansion changed, as plain data."""
    if isinstance(after, Arg):
        values = {pair.name: pair.default for pair in after.pairs}
        written = {pair.name: pair.default for pair in before.pairs}
        return {"values": values} if values != written else {}
    changes = {}
    for field in dataclasses.fields(after):
        if field.name in _COMMON_FIELDS:
            continue
        value = getattr(after, field.name)
        if value != getattr(before, field.name):
            changes[field.name] = _plain(value)
    return changes


def _plain(value):
    if dataclasses.is_dataclass(value):
        # compare=False fields are facts for the build checks (KeyValue.legacy), not values
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.compare}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def render_json(plan: Plan) -> str:
    return json.dumps(outline_data(plan), indent=2, ensure_ascii=False) + "\n"


def render_text(plan: Plan) -> str:
    data = outline_data(plan)
    stages = data["stages"]
    out: list[str] = []
    target = stages[data["target"]["index"]]
    out.append(f"Dockerfile: {data['filename']}")
    out.append(f"Target: stage {_stage_title(target)}")
    order = "  ->  ".join(
        "[" + ", ".join(_stage_title(stages[i]) for i in level) + "]"
        for level in data["build_order"]
    )
    out.append(f"Build order (stages in brackets can build in parallel): {order}")
    if data["global_args"]:
        out.append("")
        out.append("Global args (usable in FROM lines):")
        out.extend("  " + _arg_line(arg) for arg in data["global_args"])
    for stage in stages:
        out.append("")
        out.extend(_stage_lines(stage))
    if data["warnings"]:
        out.append("")
        out.append("Warnings:")
        out.extend("  " + warning for warning in data["warnings"])
    return "\n".join(out) + "\n"


def _stage_title(stage: dict) -> str:
    return f"{stage['index']} {stage['name']}" if stage["name"] else str(stage["index"])


def _stage_lines(stage: dict) -> list[str]:
    status = f"needed, level {stage['level']}" if stage["needed"] else "not needed for the target"
    head = f"Stage {_stage_title(stage)}: FROM {stage['base']}"
    if stage["base_stage"] is not None:
        head += f" (stage {stage['base_stage']})"
    if stage["platform"]:
        head += f" (platform {stage['platform']})"
    lines = [f"{head}  [line {stage['line']}; {status}]"]
    if stage["description"]:
        lines.append(f"  {stage['description']}")
    if stage["deps"]:
        lines.append("  needs stages: " + ", ".join(str(d) for d in stage["deps"]))
    if stage["images"]:
        lines.append("  copies from images: " + ", ".join(stage["images"]))
    if stage["global_args_used"]:
        lines.append("  FROM uses: " + ", ".join(stage["global_args_used"]))
    if stage["args"]:
        lines.append("  build args:")
        lines.extend("    " + _arg_line(arg) for arg in stage["args"])
    lines.append("  steps:" if stage["steps"] else "  steps: (none)")
    for step in stage["steps"]:
        lines.append(f"    {step['line']:>4}  {step['text']}")
        if "expanded" in step:
            lines.append("          -> " + _changes_text(step["expanded"]))
        if "problem" in step:
            lines.append(f"          !! {step['problem']}")
    return lines


def _changes_text(changes: dict) -> str:
    parts = []
    for name, value in changes.items():
        if name in ("pairs", "values"):
            items = (
                value.items()
                if isinstance(value, dict)
                else ((pair["key"], pair["value"]) for pair in value)
            )
            text = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in items)
        else:
            text = json.dumps(value, ensure_ascii=False)
        parts.append(f"{name}: {text}")
    return "; ".join(parts)


def _arg_line(arg: dict) -> str:
    if arg.get("problem"):
        value = f"({arg['problem']})"
    elif arg["value"] is None:
        value = "(unset)"
    else:
        value = "= " + json.dumps(arg["value"], ensure_ascii=False)
    text = f"{arg['name']} {value}"
    if arg["default"] is not None:
        text += "  default " + json.dumps(arg["default"], ensure_ascii=False)
    if arg["description"]:
        text += f"  -- {arg['description']}"
    return text

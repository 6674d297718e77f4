"""The instructions that only change the image config, and their history text.

ENV, LABEL, MAINTAINER, EXPOSE, VOLUME, USER, STOPSIGNAL, SHELL, CMD,
ENTRYPOINT, HEALTHCHECK and ONBUILD make no layer: each updates the config
(``imgbuild.builder.imageconfig`` has the rules) and adds a history entry
worded as BuildKit words it. ARG is the scope's business (the engine).
"""

from __future__ import annotations

from imgbuild.builder import imageconfig as ic
from imgbuild.dockerfile import (
    Cmd,
    Entrypoint,
    Env,
    Expose,
    Healthcheck,
    Label,
    Maintainer,
    Onbuild,
    Shell,
    StopSignal,
    User,
    Volume,
)
from imgbuild.errors import BuildError


def apply_metadata(config: dict, instruction, *, cmd_set: bool) -> str | None:
    """Apply an expanded config-only instruction to ``config``.

    Returns the history ``created_by`` text, or None where BuildKit writes no
    history entry (ONBUILD). ``cmd_set`` says whether this stage set CMD
    already (then ENTRYPOINT keeps it).
    """
    container = ic.container_config(config)
    match instruction:
        case Env():
            # The engine writes Env from the stage's scope when the stage ends:
            # rewriting the list here for every ENV made 10,000 of them quadratic.
            return "ENV " + " ".join(f"{p.key}={p.value}" for p in instruction.pairs)
        case Label():
            ic.add_labels(config, {p.key: p.value for p in instruction.pairs})
            return "LABEL " + " ".join(f"{p.key}={p.value}" for p in instruction.pairs)
        case Maintainer():
            config["author"] = instruction.maintainer
            return f"MAINTAINER {instruction.maintainer}"
        case Expose():
            ports = ic.expose_ports(instruction.ports)
            ic.add_ports(config, ports)
            return "EXPOSE " + " ".join(ports)
        case Volume():
            ic.add_volumes(config, instruction.paths)
            return f"VOLUME [{' '.join(instruction.paths)}]"
        case User():
            container["User"] = instruction.user
            return f"USER {instruction.user}"
        case StopSignal():
            container["StopSignal"] = ic.check_stop_signal(instruction.signal)
            return f"STOPSIGNAL {instruction.signal}"
        case Shell():
            container["Shell"] = list(instruction.shell)
            return f"SHELL [{' '.join(instruction.shell)}]"
        case Cmd():
            args = command_args(config, instruction)
            ic.set_cmd(config, args)
            return f"CMD {ic.go_quote_list(args)}"
        case Entrypoint():
            args = command_args(config, instruction)
            ic.set_entrypoint(config, args, cmd_set)
            return f"ENTRYPOINT {ic.go_quote_list(args)}"
        case Healthcheck():
            check = healthcheck_config(instruction)
            container["Healthcheck"] = check
            return healthcheck_history(check)
        case Onbuild():
            container["OnBuild"] = list(container.get("OnBuild") or []) + [instruction.expression]
            return None
    raise BuildError(f"{type(instruction).__name__} is not a config-only instruction")


def command_args(config: dict, instruction) -> list[str]:
    """CMD/ENTRYPOINT argv: exec form as written, shell form through the image's SHELL."""
    if instruction.exec_form:
        return list(instruction.command)
    return ic.with_shell(config, " ".join(instruction.command))


def healthcheck_config(instruction: Healthcheck) -> dict:
    """The config's Healthcheck: durations in nanoseconds, unset ones left out."""
    if instruction.test is None:
        return {"Test": ["NONE"]}
    check: dict = {"Test": list(instruction.test)}
    for field_name, key in (
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start_period", "StartPeriod"),
        ("start_interval", "StartInterval"),
    ):
        value = getattr(instruction, field_name)
        if value:
            check[key] = value
    if instruction.retries:
        check["Retries"] = instruction.retries
    return check


def healthcheck_history(check: dict) -> str:
    """BuildKit's ``HEALTHCHECK %+v`` of the Go struct."""
    return (
        f"HEALTHCHECK &{{Test:[{' '.join(check['Test'])}] Interval:{ic.go_duration(check.get('Interval'))} "
        f"Timeout:{ic.go_duration(check.get('Timeout'))} StartPeriod:{ic.go_duration(check.get('StartPeriod'))} "
        f"StartInterval:{ic.go_duration(check.get('StartInterval'))} Retries:{check.get('Retries', 0)}}}"
    )

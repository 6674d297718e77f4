"""How each instruction changes the image config, and what ``docker history`` shows for it.

Plain functions over the OCI config document (``config["config"]`` holds Env,
Cmd, ...). The rules and the history strings follow BuildKit's Dockerfile
frontend, so images and ``history`` output look as ``docker build`` makes them.
"""

from __future__ import annotations

import posixpath
from datetime import UTC, datetime

from imgbuild.errors import BuildError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ["/bin/sh", "-c"]
HISTORY_COMMENT = "imgbuild.dockerfile.v0"

SIGNALS = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7, "FPE": 8,
    "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15,
    "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22,
    "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29,
    "POLL": 29, "PWR": 30, "SYS": 31,
}  # fmt: skip


def timestamp(epoch: int | None = None) -> str:
    """RFC 3339 time for ``created`` fields: SOURCE_DATE_EPOCH when given, else now."""
    moment = datetime.fromtimestamp(epoch, UTC) if epoch is not None else datetime.now(UTC)
    if epoch is not None:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def time_text(seconds: float) -> str:
    """RFC 3339 time, to the microsecond, of a moment given in seconds since the epoch."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def container_config(config: dict) -> dict:
    if not isinstance(config.get("config"), dict):
        config["config"] = {}
    return config["config"]


def env_list(config: dict) -> list[str]:
    return list(container_config(config).get("Env") or [])


def env_dict(config: dict) -> dict[str, str]:
    result = {}
    for entry in env_list(config):
        key, _, value = entry.partition("=")
        result[key] = value
    return result


def set_env(config: dict, key: str, value: str) -> None:
    """Replace ``key`` in place if present (keeps Env order stable), else append."""
    env = env_list(config)
    for index, entry in enumerate(env):
        if entry.partition("=")[0] == key:
            env[index] = f"{key}={value}"
            break
    else:
        env.append(f"{key}={value}")
    container_config(config)["Env"] = env


def ensure_path(config: dict) -> None:
    """BuildKit gives every stage a PATH, even FROM scratch."""
    if "PATH" not in env_dict(config):
        set_env(config, "PATH", DEFAULT_PATH)


def shell_of(config: dict) -> list[str]:
    return list(container_config(config).get("Shell") or DEFAULT_SHELL)


def with_shell(config: dict, command: str) -> list[str]:
    return shell_of(config) + [command]


def set_cmd(config: dict, args: list[str]) -> None:
    container_config(config)["Cmd"] = list(args)


def set_entrypoint(config: dict, args: list[str], cmd_set_in_stage: bool) -> None:
    """ENTRYPOINT resets a CMD inherited from the base image, not one set in this stage."""
    container_config(config)["Entrypoint"] = list(args)
    if not cmd_set_in_stage:
        container_config(config).pop("Cmd", None)


def workdir_path(config: dict, path: str) -> str:
    """WORKDIR relative to the current one, cleaned, always absolute."""
    current = container_config(config).get("WorkingDir") or "/"
    joined = posixpath.join(current, path) if not path.startswith("/") else path
    cleaned = posixpath.normpath(joined)
    return "/" + cleaned.lstrip("/") if cleaned != "/" else "/"


def add_ports(config: dict, ports: list[str]) -> None:
    exposed = dict(container_config(config).get("ExposedPorts") or {})
    for port in ports:
        exposed[port] = {}
    container_config(config)["ExposedPorts"] = exposed


def add_volumes(config: dict, paths: list[str]) -> None:
    volumes = dict(container_config(config).get("Volumes") or {})
    for path in paths:
        if not path:
            raise BuildError("VOLUME specified can not be an empty string")
        volumes[path] = {}
    container_config(config)["Volumes"] = volumes


def add_labels(config: dict, labels: dict[str, str]) -> None:
    merged = dict(container_config(config).get("Labels") or {})
    merged.update(labels)
    container_config(config)["Labels"] = merged


def check_stop_signal(signal: str) -> str:
    """Accept what Docker accepts: a number, ``SIGTERM``, ``TERM``, ``SIGRTMIN+3``."""
    text = signal.strip()
    if text.isdigit() and 0 < int(text) < 65:
        return text
    name = text.upper().removeprefix("SIG")
    if name in SIGNALS or name.startswith(("RTMIN", "RTMAX")):
        return text
    raise BuildError(f"invalid STOPSIGNAL {signal!r}: use a signal name (SIGTERM) or number (15)")


def go_quote_list(args: list[str]) -> str:
    """Go's ``%q`` of a []string, which BuildKit uses in CMD/ENTRYPOINT history."""
    return "[" + " ".join(go_quote(arg) for arg in args) + "]"


def go_quote(text: str) -> str:
    out = ['"']
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def go_duration(nanoseconds: int | None) -> str:
    """Go's time.Duration string (``30s``, ``1m30s``, ``0s``) for HEALTHCHECK history."""
    if not nanoseconds:
        return "0s"
    seconds, rest = divmod(nanoseconds, 1_000_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = ""
    if hours:
        text += f"{hours}h"
    if hours or minutes:
        text += f"{minutes}m"
    fraction = f"{rest / 1e9:.9f}".rstrip("0").rstrip(".")[1:] if rest else ""
    return text + f"{seconds}{fraction}s"


def add_history(config: dict, created_by: str, *, empty_layer: bool, created: str | None) -> None:
    """``created`` None: the image's final step fills it in (``finalimage.fill_created``)."""
    entry = {"created": created, "created_by": created_by, "comment": HISTORY_COMMENT}
    if empty_layer:
        entry["empty_layer"] = True
    config.setdefault("history", []).append(entry)


def run_history(args: list[str], build_args: list[tuple[str, str]]) -> str:
    """``RUN |2 A=1 B=2 /bin/sh -c make``: BuildKit lists the stage's build args first."""
    words = []
    if build_args:
        words.append(f"|{len(build_args)}")
        words += [f"{key}={value}" for key, value in build_args]
    return "RUN " + " ".join(words + list(args))


def expose_ports(specs: list[str]) -> list[str]:
    """``80``, ``53/udp``, ``8000-8002`` as config keys: ``80/tcp``, ``53/udp``, ``8000/tcp``, ...

    Docker expands ranges (nat.ParsePortSpecs); the protocol defaults to tcp.
    """
    ports = []
    for spec in specs:
        port, _, protocol = spec.partition("/")
        protocol = (protocol or "tcp").lower()
        if protocol not in ("tcp", "udp", "sctp"):
            raise BuildError(f"invalid EXPOSE {spec!r}: the protocol must be tcp, udp or sctp")
        start, _, end = port.partition("-")
        if not start.isdigit() or (end and not end.isdigit()):
            raise BuildError(f"invalid EXPOSE {spec!r}: expected PORT, PORT/PROTO or FROM-TO[/PROTO]")
        first, last = int(start), int(end or start)
        if not 0 < first <= last <= 65535:
            raise BuildError(f"invalid EXPOSE {spec!r}: ports must be 1-65535 and the range ascending")
        ports += [f"{number}/{protocol}" for number in range(first, last + 1)]
    return ports

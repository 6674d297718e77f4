"""Sizes and durations as people write and read them, the way Docker does."""

import re


def human_size(size: float) -> str:
    """go-units HumanSize as docker uses it: decimal units, 3 significant digits (``1.04MB``)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.3g}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str, what: str = "size") -> int:
    """Bytes from ``512MB``, ``10g``, ``1.5GiB`` or ``1048576``, as docker's --keep-storage reads
    them (go-units RAMInBytes: binary units, so ``1KB`` is 1024 bytes). Raises UsageError."""
    from imgbuild.errors import UsageError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtpb]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise UsageError(f"{what} {text!r} is not a size: give bytes or a number with KB, MB, GB or TB (10GB, 512MB)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds from a Go-style duration as docker's ``until=`` takes it (``24h``, ``1h30m``, ``90s``),
    plus ``d`` for days. Raises UsageError."""
    from imgbuild.errors import UsageError

    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise UsageError(f"{what} {text!r} is not a duration: write it like 24h, 90m, 1h30m or 7d")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)



def parse_until_filter(filters: list[str]) -> float | None:
    """The seconds of the last ``--filter until=DURATION`` of a prune verb (None: no filter);
    any other filter is a UsageError."""
    from imgbuild.errors import UsageError

    until = None
    for text in filters:
        name, _, value = text.partition("=")
        if name.strip() != "until" or not value:
            raise UsageError(f"--filter {text!r}: the filter this prune knows is until=DURATION (until=24h)")
        until = parse_duration(value.strip(), "--filter until")
    return until


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 image``, ``2 images``, ``0 entries``: a count with its noun in the right number."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural_form or (noun[:-1] + 'ies' if noun.endswith('y') else noun + 's')}"

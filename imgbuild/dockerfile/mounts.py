"""``RUN --mount=...`` options, parsed and checked as BuildKit does.

The option text is one CSV record of ``key=value`` fields (``type=cache,
target=/root/.cache,sharing=locked``). Unknown keys and values of the wrong
kind are errors. Values may contain ``$variables``: when the Dockerfile is
parsed such values are kept as written and checked only after expansion
(``parse_mount(text, expand=...)``), except ``from``, which may not use
variables at all (BuildKit: "define alias stage instead").
"""

from __future__ import annotations

import re
from collections.abc import Callable

from imgbuild.dataclass import dataclass
from imgbuild.dockerfile.shell import did_you_mean, go_parse_bool, go_quote

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")
_KEYS = (
    "type",
    "from",
    "source",
    "src",
    "target",
    "dst",
    "destination",
    "readonly",
    "ro",
    "readwrite",
    "rw",
    "required",
    "id",
    "sharing",
    "mode",
    "uid",
    "gid",
    "env",
    "size",
)


class MountError(Exception):
    """A bad ``--mount`` value; the caller adds the location."""


@dataclass
class MountSpec:
    """One ``RUN --mount``. Defaults the engine fills in are left empty:

    - cache: ``id`` defaults to the target, ``from`` to an empty directory;
    - secret: ``id`` defaults to the base name of ``target`` and ``target``
      to ``/run/secrets/<id>`` (unless only ``env`` is given);
    - ssh: ``id`` defaults to ``default``, ``target`` to a socket path.

    ``readonly`` already holds the default for the type when not given (bind,
    secret, ssh: read-only; cache, tmpfs: writable).
    """

    type: str = "bind"
    target: str | None = None
    source: str | None = None
    from_: str | None = None
    id: str | None = None
    sharing: str | None = None
    readonly: bool = True
    required: bool = False
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    env: str | None = None
    size: int | None = None  # tmpfs size in bytes
    text: str = ""  # the option text as written
    needs_expansion: bool = False  # some values hold $variables not yet expanded


def parse_mount(text: str, expand: Callable[[str], str] | None = None) -> MountSpec:
    """Parse one ``--mount`` value; raise MountError.

    Without ``expand`` (parse time) values containing ``$`` are kept as
    written and not checked; with it every value is expanded first.
    """
    mount = MountSpec(text=text)
    readonly_given = False
    for field_text in _csv_record(text):
        key, has_value, value = field_text.partition("=")
        key = key.lower()
        if not has_value:
            if key in ("readonly", "ro", "readwrite", "rw"):
                mount.readonly = key in ("readonly", "ro")
                readonly_given = True
                continue
            if key == "required":
                mount.required = True
                continue
            raise MountError(f"invalid field '{field_text}' must be a key=value pair")
        if key not in _KEYS:
            raise MountError(
                f"unexpected key '{key}' in '{field_text}'{did_you_mean(key, _KEYS)}"
                f" (known keys: {', '.join(_KEYS)})"
            )
        if key == "from" and _uses_variable(value):
            raise MountError(
                "'from' doesn't support variable expansion, define alias stage instead"
            )
        if expand is not None:
            value = expand(value)
        elif "$" in value:
            mount.needs_expansion = True
            _set_raw(mount, key, value)
            if key in ("readonly", "ro", "readwrite", "rw"):
                readonly_given = True
            continue
        if _set_value(mount, key, value):
            readonly_given = True
    if not readonly_given:
        mount.readonly = mount.type not in ("cache", "tmpfs")
    if not mount.needs_expansion:
        _check(mount)  # otherwise checked when parsed again after expansion
    return mount


def _uses_variable(value: str) -> bool:
    # A $ followed by anything (a trailing $ is literal), as BuildKit checks.
    index = value.find("$")
    return index != -1 and index != len(value) - 1


def _set_raw(mount: MountSpec, key: str, value: str) -> None:
    """Keep an unexpanded value where a string field can hold it."""
    attribute = _STRING_FIELDS.get(key)
    if attribute is not None:
        setattr(mount, attribute, value)


_STRING_FIELDS = {
    "from": "from_",
    "source": "source",
    "src": "source",
    "target": "target",
    "dst": "target",
    "destination": "target",
    "id": "id",
    "env": "env",
}


def _set_value(mount: MountSpec, key: str, value: str) -> bool:
    """Apply one key=value; True if it set read-only/read-write."""
    if key in _STRING_FIELDS:
        setattr(mount, _STRING_FIELDS[key], value)
    elif key == "type":
        if value.lower() not in MOUNT_TYPES:
            raise MountError(
                f"unsupported mount type {go_quote(value)}{did_you_mean(value.lower(), MOUNT_TYPES)}"
                f" (use one of {', '.join(MOUNT_TYPES)})"
            )
        mount.type = value.lower()
    elif key in ("readonly", "ro"):
        mount.readonly = _go_bool(key, value)
        return True
    elif key in ("readwrite", "rw"):
        mount.readonly = not _go_bool(key, value)
        return True
    elif key == "required":
        mount.required = _go_bool(key, value)
    elif key == "sharing":
        if value.lower() not in SHARING_MODES:
            raise MountError(
                f"unsupported sharing value {value!r} (use one of {', '.join(SHARING_MODES)})"
            )
        mount.sharing = value.lower()
    elif key == "mode":
        mount.mode = _unsigned(key, value, base=8)
    elif key == "uid":
        mount.uid = _unsigned(key, value, base=10)
    elif key == "gid":
        mount.gid = _unsigned(key, value, base=10)
    elif key == "size":
        mount.size = _ram_in_bytes(value)
    return False


def _check(mount: MountSpec) -> None:
    """The combinations BuildKit refuses."""
    if mount.required and mount.type not in ("secret", "ssh"):
        raise MountError(f"unexpected key 'required' for mount type '{mount.type}'")
    owner_types = ("secret", "ssh", "cache")
    for name in ("mode", "uid", "gid"):
        if getattr(mount, name) is not None and mount.type not in owner_types:
            raise MountError(f"{name} not allowed for {mount.type!r} type mounts")
    if mount.size is not None and mount.type != "tmpfs":
        raise MountError(f"size not allowed for {mount.type!r} type mounts")
    if mount.env is not None and mount.type != "secret":
        raise MountError(f"env not allowed for {mount.type!r} type mounts")
    if mount.sharing is not None and mount.type != "cache":
        raise MountError(f"invalid cache sharing set for {mount.type} mount")
    if mount.type == "secret":
        if mount.from_:
            raise MountError("secret mount should not have a from")
        if not (mount.source or mount.target or mount.id or mount.env):
            raise MountError("invalid secret mount. one of source, target, id or env required")
        if mount.source and mount.id:
            raise MountError("both source and id can't be set")


def _go_bool(key: str, value: str) -> bool:
    try:
        return go_parse_bool(value)
    except ValueError:
        raise MountError(f"invalid value for {key}: {value}") from None


def _unsigned(key: str, value: str, base: int) -> int:
    digits = "01234567" if base == 8 else "0123456789"
    if not value or any(ch not in digits for ch in value) or int(value, base) >= 2**32:
        raise MountError(f"invalid value {value} for {key}")
    return int(value, base)


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def _ram_in_bytes(value: str) -> int:
    """Sizes like ``64m`` or ``1.5GiB`` (binary units), as docker's go-units parses them."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)*) ?([kKmMgGtTpP])?[iI]?[bB]?", value)
    if match is None:
        raise MountError(f"invalid size: {value!r}")
    try:
        number = float(match.group(1))
    except ValueError:
        raise MountError(f"invalid size: {value!r}") from None
    return int(number * _SIZE_UNITS[(match.group(2) or "").lower()])


def _csv_record(text: str) -> list[str]:
    """One record of Go's encoding/csv (strict quotes, no trimming)."""
    if text == "":
        raise MountError("failed to parse csv mounts: EOF")
    fields: list[str] = []
    i = 0
    while True:
        if i < len(text) and text[i] == '"':
            value, i = _quoted_field(text, i + 1)
        else:
            end = text.find(",", i)
            end = len(text) if end == -1 else end
            value = text[i:end]
            if '"' in value:
                raise MountError('failed to parse csv mounts: bare " in non-quoted-field')
            i = end
        fields.append(value)
        if i >= len(text):
            return fields
        i += 1  # the comma


def _quoted_field(text: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    while i < len(text):
        ch = text[i]
        if ch != '"':
            out.append(ch)
            i += 1
            continue
        if i + 1 < len(text) and text[i + 1] == '"':
            out.append('"')
            i += 2
            continue
        if i + 1 < len(text) and text[i + 1] != ",":
            raise MountError('failed to parse csv mounts: extraneous or missing " in quoted-field')
        return "".join(out), i + 1
    raise MountError('failed to parse csv mounts: extraneous or missing " in quoted-field')

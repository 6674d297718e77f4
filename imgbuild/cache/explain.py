"""Why a step missed the cache: its inputs against those of an earlier build of the same step.

A key is a digest and cannot say why it differs from another; the inputs
every entry keeps (``inputs.py``) can. When a step misses, the inputs of its
new key are compared with those of the entry an earlier build of the same
step made, and each difference becomes a short sentence: ``build arg
VERSION changed 1.2 → 1.3``, ``2 files changed (src/a.py content, src/b.py
added)``. Nothing is guessed: every sentence comes from a difference between
the two stored documents or their file lists; where the earlier entry kept
no inputs, the explanation says so.

"The same step" (docs/cache.md, "Why a step missed"): an entry recorded from
the same Dockerfile (its name and its absolute path) and stage, on top of the
same entry below: the step below hit, so the earlier builds that went on from
its entry built this step. The first layer step of a stage is matched the same
way (its earlier builds also start a chain). Only when there is no such entry
(a ``COPY --link`` whose step below is new) is a step matched by its position
alone: the same Dockerfile, stage and line. Of the most recently used of
those, the closest is the one of the same kind (RUN, COPY, ...) that differs
in the fewest inputs, then on the same line, then the most recent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import field

from imgbuild.cache.inputs import INPUTS_FORMAT, StepPlace
from imgbuild.dataclass import dataclass

# How much of a value and how many names one sentence shows.
MAX_VALUE_CHARS = 60
MAX_NAMES = 5
# Earlier entries compared for one step (the most recently used).
MAX_CANDIDATES = 8

NO_EARLIER_BUILD = "no earlier build of this step"
PARENT_MISSED = "parent step missed"
NO_INPUTS = (
    "the earlier build of this step kept no inputs (recorded by an older imgbuild): "
    "what changed cannot be told"
)

# Instruction fields by the flag or part of the instruction a user knows them as.
FIELD_NAMES = {
    "command": "command",
    "exec_form": "form (exec or shell)",
    "sources": "sources",
    "dest": "destination",
    "chown": "--chown",
    "chmod": "--chmod",
    "link": "--link",
    "exclude": "--exclude",
    "from_stage": "--from",
    "parents": "--parents",
    "checksum": "--checksum",
    "keep_git_dir": "--keep-git-dir",
    "unpack": "--unpack",
    "mounts": "--mount",
    "network": "--network",
    "security": "--security",
    "heredocs": "heredoc",
}


@dataclass
class MissedStep:
    """A step that missed, with what its key was made of in this build."""

    key: str  # the key it was looked up by
    parent_key: str  # the key it chains from ("" for COPY --link)
    inputs: dict  # ``inputs.key_inputs`` of this build
    listings: dict[str, dict]  # source digest -> the files it covered, in this build
    place: StepPlace
    base: str  # the stage's FROM, for "FROM busybox: ..."
    independent: bool = False  # COPY --link


@dataclass
class Earlier:
    """The entry an earlier build of the step made."""

    key: str
    inputs: dict
    base_digest: str
    instruction: str
    file_list: Callable[[str], dict | None] = field(repr=False)


def explain_miss(
    store, step: MissedStep, *, no_cache: str = "", parent_missed: bool = False, imported=()
) -> str:
    """One line: why ``step`` missed. ``no_cache`` names the flag that disabled
    the cache for it; ``parent_missed``: the step below it missed in this build;
    ``imported``: the build's ``--cache-from`` sources, asked when the store
    has no earlier build of the step."""
    if no_cache:
        return no_cache
    if parent_missed and not step.independent:
        return PARENT_MISSED
    row = store.db.cache_entry(step.key)
    if row is not None and row["layer_digest"] and not store.has_blob(row["layer_digest"]):
        return "its cache entry's layer is no longer in the store (pruned): the step runs again"
    earlier = find_earlier(store.db, step, imported)
    if earlier is None:
        if store.db.cache_child_without_inputs(step.parent_key, step.key):
            return NO_INPUTS
        return NO_EARLIER_BUILD
    if not _readable(earlier):
        return "the earlier build of this step kept its inputs in another format: what changed cannot be told"
    try:
        reasons = differences(earlier, step)
    except (TypeError, ValueError, KeyError, AttributeError):
        # An explanation never fails a build: a stored document of another shape
        # (hand-edited, or imported from a shared cache) is said to be one.
        return "the earlier build's inputs are not in a shape imgbuild reads: what changed cannot be told"
    return "; ".join(reasons) if reasons else "its inputs changed in a way imgbuild cannot name"


def find_earlier(db, step: MissedStep, imported=()) -> Earlier | None:
    """The entry of the closest earlier build of ``step`` (see the module doc):
    in the store, else in the imported caches (their entries carry the same
    record of where each step stood, and the file lists of their sources)."""
    place = step.place
    path = place.dockerfile_path or None

    def entries(**where) -> list:
        rows = db.cache_entries_of_step(place.dockerfile, place.stage_index, limit=MAX_CANDIDATES + 1, **where)
        return [_earlier_of_row(row, db.file_list) for row in rows if row["key"] != step.key]

    candidates = []
    if not step.independent:
        candidates = entries(parent_entry=place.parent_entry, dockerfile_path=path)
    if not candidates and place.line is not None:
        candidates = entries(line=place.line, dockerfile_path=path)
    for source in imported:
        if candidates:
            break
        candidates = _imported_candidates(source, step)
    if not candidates:
        return None
    return _closest(step, candidates[:MAX_CANDIDATES])


def _imported_candidates(source, step: MissedStep) -> list[tuple[Earlier, int | None]]:
    """Entries of one imported cache for ``step``, by the same rule as the store's."""
    place = step.place
    steps = []
    if not step.independent:
        steps = source.steps_at(place.dockerfile, place.stage_index, parent_entry=place.parent_entry)
    if not steps and place.line is not None:
        steps = source.steps_at(place.dockerfile, place.stage_index, line=place.line)
    candidates = []
    for found in steps:
        if found.key == step.key:
            continue
        where = found.place or {}
        earlier = Earlier(
            found.key, found.inputs, where.get("base_digest", ""), where.get("instruction", ""), source.file_list
        )
        candidates.append((earlier, where.get("line")))
    return candidates


def _earlier_of_row(row, file_list) -> tuple[Earlier, int | None]:
    inputs = _loads(row["inputs"])
    return Earlier(row["key"], inputs, row["base_digest"] or "", row["instruction"] or "", file_list), row["line"]


def _closest(step: MissedStep, candidates: list[tuple[Earlier, int | None]]) -> Earlier:
    """Of the earlier entries, the one of the same kind that differs in the
    fewest inputs, then on the same line, then the most recently used."""
    kind = step.inputs.get("document", {}).get("step")
    best, best_score = None, None
    for earlier, line in candidates:  # most recently used first: a later one must score higher
        same_kind = _readable(earlier) and earlier.inputs["document"].get("step") == kind
        changes = _count_differences(earlier, step) if same_kind else 1000
        score = (same_kind, -changes, line == step.place.line)
        if best_score is None or score > best_score:
            best, best_score = earlier, score
    return best


def _count_differences(earlier: Earlier, step: MissedStep) -> int:
    try:
        return len(differences(earlier, step))
    except (TypeError, ValueError, KeyError, AttributeError):
        return 1000


def _readable(earlier: Earlier) -> bool:
    return earlier.inputs.get("format") == INPUTS_FORMAT and isinstance(earlier.inputs.get("document"), dict)


def _loads(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# --- the differences, kind by kind -------------------------------------------------


def differences(earlier: Earlier, step: MissedStep) -> list[str]:
    old_inputs, new_inputs = earlier.inputs, step.inputs
    old, new = old_inputs.get("document", {}), new_inputs.get("document", {})
    if old.get("step") != new.get("step"):
        return [f"instruction changed: {_show(earlier.instruction)} → {_show(step.place.instruction)}"]
    reasons = []
    if not step.independent and not step.place.parent_entry and old_inputs.get("parent") != new_inputs.get("parent"):
        reasons.append(_base_change(earlier, step))
    kind = new.get("step")
    if kind == "RUN":
        reasons += _run_changes(old, new, old_inputs.get("sees") or {}, new_inputs.get("sees") or {}, earlier, step)
    elif kind in ("COPY", "ADD"):
        reasons += _copy_changes(old, new, earlier, step)
    elif kind == "WORKDIR":
        reasons += _value_change("WORKDIR path", old.get("path"), new.get("path"))
        reasons += _value_change("USER", old.get("user"), new.get("user"))
    known = {"step", "instruction", "argv", "env", "user", "cwd", "shell", "mount_sources", "network"}
    known |= {"workdir", "sources", "path"}
    for name in sorted((old.keys() | new.keys()) - known):
        reasons += _value_change(name, old.get(name), new.get(name))
    return reasons


def _base_change(earlier: Earlier, step: MissedStep) -> str:
    # The chain's start is a key over the base image's layers and the platform:
    # the same manifest has the same layers, so then only the platform changed.
    if earlier.base_digest and earlier.base_digest == step.place.base_digest:
        return f"FROM {_show(step.base)}: platform changed"
    return f"FROM {_show(step.base)}: base image layers changed"


def _run_changes(old: dict, new: dict, old_sees: dict, new_sees: dict, earlier: Earlier, step: MissedStep) -> list[str]:
    network_changed = old.get("network") != new.get("network")
    reasons = _instruction_changes(old.get("instruction"), new.get("instruction"), skip={"network"} if network_changed else ())
    reasons += _value_change("SHELL", old.get("shell"), new.get("shell"))
    if old.get("argv") != new.get("argv") and not reasons:
        reasons.append(f"command line changed: {_show(old.get('argv'))} → {_show(new.get('argv'))}")
    reasons += _env_changes(old.get("env") or [], new.get("env") or [], old_sees, new_sees)
    reasons += _value_change("USER", old.get("user"), new.get("user"))
    reasons += _value_change("WORKDIR", old.get("cwd"), new.get("cwd"))
    reasons += _value_change("network", old.get("network"), new.get("network"))
    reasons += _mount_changes(old.get("mount_sources") or {}, new.get("mount_sources") or {}, earlier, step)
    return reasons


def _copy_changes(old: dict, new: dict, earlier: Earlier, step: MissedStep) -> list[str]:
    reasons = _instruction_changes(old.get("instruction"), new.get("instruction"))
    if old.get("workdir") and new.get("workdir"):  # "" when the destination is absolute
        reasons += _value_change("WORKDIR", old.get("workdir"), new.get("workdir"))
    old_sources, new_sources = old.get("sources") or [], new.get("sources") or []
    if len(old_sources) != len(new_sources):
        return reasons or [f"sources changed: {_show(old_sources)} → {_show(new_sources)}"]
    origin = (new.get("instruction") or {}).get("from_stage")
    pairs = []
    for before, after in zip(old_sources, new_sources, strict=True):
        if before == after or not isinstance(before, dict) or not isinstance(after, dict):
            continue
        if "path" in after and before.get("path") == after["path"]:
            if origin:
                reasons.append(f"files of {_show(after['path'])} in {_show(origin)} changed")
            else:
                pairs.append((after["path"], before.get("digest"), after.get("digest")))
        elif "url" in after and before.get("url") == after["url"] and before.get("checksum") == after.get("checksum"):
            reasons.append(f"the content of {_show(after['url'])} changed")
        elif "heredoc" in after and before.get("heredoc") == after["heredoc"] and not reasons:
            reasons.append(f"heredoc {_show(after['heredoc'])} changed")
    if pairs:
        reasons += _files_changed(pairs, earlier, step)
    return reasons


def _mount_changes(old: dict, new: dict, earlier: Earlier, step: MissedStep) -> list[str]:
    reasons = []
    for name in sorted(old.keys() & new.keys()):
        if old[name] == new[name]:
            continue
        kind, _, rest = name.partition(":")
        if kind == "context":
            changed = _files_changed([(rest, old[name], new[name])], earlier, step)
            reasons += [f"bind mount of {_show(rest)}: {reason}" for reason in changed]
        else:
            origin, _, path = rest.rpartition(":")
            reasons.append(f"bind mount of {_show(path)} from {_show(origin)}: files changed")
    return reasons


# --- instruction fields ----------------------------------------------------------


def _instruction_changes(old: dict | None, new: dict | None, skip=()) -> list[str]:
    """The instruction as written if its text changed, else each field its
    expansion changed (a variable in a destination, a --chown, ...)."""
    old, new = old or {}, new or {}
    if old == new:
        return []
    if old.get("text") != new.get("text"):
        return [f"instruction changed: {_show(old.get('text'))} → {_show(new.get('text'))}"]
    reasons = []
    for name in sorted(old.keys() | new.keys()):
        if name in skip or old.get(name) == new.get(name):
            continue
        if name == "heredocs":
            reasons.append(_heredoc_change(old.get(name) or [], new.get(name) or []))
            continue
        reasons += _value_change(FIELD_NAMES.get(name, name), old.get(name), new.get(name))
    return reasons


def _heredoc_change(old: list, new: list) -> str:
    names = [
        _show((after or {}).get("name", "?"))
        for before, after in zip(old, new, strict=False)
        if before != after
    ]
    if len(old) != len(new) or not names:
        return "heredocs changed"
    return f"heredoc {_names(names)} changed"


# --- the environment ----------------------------------------------------------------


def _env_changes(old_env: list, new_env: list, old_sees: dict, new_sees: dict) -> list[str]:
    """Each variable of RUN's environment that changed: a build arg if an ARG set it."""
    old, new = dict(map(tuple, old_env)), dict(map(tuple, new_env))
    old_args, new_args = _set_by_args(old, old_sees), _set_by_args(new, new_sees)
    changes = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        shown = _show(name)
        what = f"build arg {shown}" if name in (new_args if after is not None else old_args) else f"ENV {shown}"
        if before is None:
            changes.append(f"{what} set to {_show(after)}")
        elif after is None:
            changes.append(f"{what} no longer set (was {_show(before)})")
        else:
            changes.append(f"{what} changed {_show(before)} → {_show(after)}")
    if len(changes) > MAX_NAMES:
        changes = changes[:MAX_NAMES] + [f"and {len(changes) - MAX_NAMES} more changes to the environment"]
    return changes


def _set_by_args(env: dict, sees: dict) -> set[str]:
    """The names whose value in ``env`` an ARG set. Inputs since ``from_args``
    was recorded say so; older ones by the ARG in scope having that value."""
    if "from_args" in sees:
        return set(sees["from_args"])
    return {name for name, value in map(tuple, sees.get("args") or []) if env.get(name) == value}


# --- files ------------------------------------------------------------------------------


def _files_changed(pairs: list[tuple[str, str, str]], earlier: Earlier, step: MissedStep) -> list[str]:
    """One sentence for the sources whose digest changed: which files, how.

    ``pairs`` are (source as written, earlier digest, new digest)."""
    changes: list[str] = []
    reasons: list[str] = []
    cut = 0
    for source, before, after in pairs:
        old_list = earlier.file_list(before) if before else None
        new_list = step.listings.get(after) if after else None
        if old_list is None or new_list is None:
            reasons.append(f"files of {_show(source)} changed (the earlier build kept no file list for it)")
            continue
        changes += file_changes(old_list.get("files") or [], new_list.get("files") or [])
        cut += int(old_list.get("left_out") or 0) + int(new_list.get("left_out") or 0)
    if changes:
        count = len(changes)
        reasons.insert(0, f"{count} file{'' if count == 1 else 's'} changed ({_names(changes)})")
    elif pairs and not reasons:
        if cut:
            reasons.append("files changed beyond the ones the file lists keep")
        else:
            # The digest covers what the lists leave out: owners, link targets, xattrs.
            reasons.append("files changed in owner, symlink target or extended attributes")
    return reasons


def file_changes(old_files: list, new_files: list) -> list[str]:
    """``path how`` for each path that differs between two file lists, by path.

    A directory added or removed is left out when a path below it is listed
    as added or removed too: the files say it.
    """
    old = {row[0]: row for row in old_files}
    new = {row[0]: row for row in new_files}
    changes: dict[str, str] = {}
    for path in sorted(old.keys() | new.keys()):
        before, after = old.get(path), new.get(path)
        if before is None:
            changes[path] = "added"
        elif after is None:
            changes[path] = "removed"
        else:
            how = _file_change(before, after)
            if how:
                changes[path] = how
    implied = {
        path
        for path, how in changes.items()
        if how in ("added", "removed")
        and _is_dir(old.get(path) or new.get(path))
        and any(other.startswith(path.rstrip("/") + "/") and changes[other] == how for other in changes)
    }
    return [f"{_path(path)} {how}" for path, how in changes.items() if path not in implied]


def _file_change(before: list, after: list) -> str:
    _, old_kind, old_mode, old_size, old_sha = before
    _, new_kind, new_mode, new_size, new_sha = after
    if old_kind != new_kind:
        return f"type {old_kind} → {new_kind}"
    parts = []
    if old_sha != new_sha or old_size != new_size:
        parts.append("content")
    if old_mode != new_mode:
        parts.append(f"mode {old_mode:04o} → {new_mode:04o}")
    return " and ".join(parts)


def _is_dir(row) -> bool:
    return bool(row) and row[1] == "dir"


def _path(path: str) -> str:
    return _show(path or ".")


# --- showing values --------------------------------------------------------------------


def _value_change(what: str, old, new) -> list[str]:
    if old == new:
        return []
    return [f"{what} changed {_show(old)} → {_show(new)}"]


def _show(value) -> str:
    """A value on one line, at most MAX_VALUE_CHARS long."""
    if value is None or value == "":
        return '""' if value == "" else "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    text = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    text = "".join(char if char.isprintable() else f"\\x{ord(char):02x}" for char in text)
    if len(text) > MAX_VALUE_CHARS:
        text = text[: MAX_VALUE_CHARS - 1] + "…"
    return text


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMES])
    if len(items) > MAX_NAMES:
        shown += f", and {len(items) - MAX_NAMES} more"
    return shown

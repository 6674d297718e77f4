"""Wasted space as dive reckons it, and dive's CI gate.

The definitions are dive's (wagoodman/dive, filetree/efficiency.go and
image/analysis.go), so the figures match what people compare them with:

- Each layer's *leaves* count: the entries of its tar that have no other
  entry of the same layer below them (files, links, empty directories,
  whiteouts; an opaque marker makes its directory a node but is not one).
- A leaf's size is its tar header size; a whiteout counts the bytes of
  everything below the path in dive's stacked tree of the layers before it
  when that path is a directory there, and 0 otherwise. In that tree a path
  is a directory only if the last layer to touch it had a directory entry
  for it (a directory a layer only implies, by naming a path below it, is
  not one), and opaque markers hide nothing.
- A path is *wasted* when leaves at it appear in more than one layer; its
  cumulative size (all its leaves' sizes added) is wasted bytes.
- Efficiency is the sum over all paths of the smallest size seen at each
  path, over the sum of all cumulative sizes (1.0 when that is 0).
- A layer's size is the sum of its entries' header sizes; user size leaves
  out the first layer; user-wasted percent is wasted bytes over user size.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import field

from imgbuild.dataclass import dataclass
from imgbuild.errors import UsageError
from imgbuild.layerview.tree import MergedTree, Node

TOP_PATHS = 100  # wasted paths kept, the biggest first


@dataclass
class PathFigures:
    """How often a path was written across the layers, and the bytes that took."""

    count: int = 0
    cumulative: int = 0
    smallest: int = -1


@dataclass
class Efficiency:
    """Fed one layer at a time (its leaves, and the tree of the layers before it)."""

    paths: dict[str, PathFigures] = field(default_factory=dict)
    layer_sizes: list[int] = field(default_factory=list)
    stacked: MergedTree = field(default_factory=MergedTree)  # dive's view of the layers so far

    def add_layer(self, entries: list[tuple[str, str, int]]) -> None:
        """``entries``: (path, kind, size) of every tar entry of the layer, in order."""
        self.layer_sizes.append(sum(size for _, _, size in entries))
        below = self.stacked
        for path, kind, size in _leaves(entries):
            if kind == "whiteout":
                before = below.get(path)
                size = below.subtree_size(path) if before is not None and before.kind == "dir" else 0
            figures = self.paths.setdefault(path, PathFigures())
            figures.count += 1
            figures.cumulative += size
            if figures.smallest < 0 or size < figures.smallest:
                figures.smallest = size

        _stack(self.stacked, entries, len(self.layer_sizes) - 1)

    def summary(self) -> dict:
        minimum = sum(f.smallest for f in self.paths.values())
        discovered = sum(f.cumulative for f in self.paths.values())
        wasted_paths = [(path, f) for path, f in self.paths.items() if f.count > 1]
        wasted = sum(f.cumulative for _, f in wasted_paths)
        size = sum(self.layer_sizes)
        user_size = size - (self.layer_sizes[0] if self.layer_sizes else 0)
        wasted_paths.sort(key=lambda item: (-item[1].cumulative, item[0]))
        return {
            "efficiency": minimum / discovered if discovered else 1.0,
            "size_bytes": size,
            "user_size_bytes": user_size,
            "wasted_bytes": wasted,
            # dive divides by zero here (NaN/Inf); none of its thresholds can then pass or fail sensibly
            "user_wasted_percent": wasted / user_size if user_size else 0.0,
            "wasted_paths": len(wasted_paths),
            "top_wasted": [
                {"path": path, "count": f.count, "wasted_bytes": f.cumulative} for path, f in wasted_paths[:TOP_PATHS]
            ],
        }


def _leaves(entries: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The entries with nothing of the same layer below them; an opaque marker
    stands for its directory (dive adds the directory, not the marker).
    A path written twice in one tar counts once, with its last entry."""
    last: dict[str, tuple[str, int]] = {}
    inner: set[str] = set()
    for path, kind, size in entries:
        if kind == "opaque":
            last.setdefault(path, ("dir", 0))
        else:
            last[path] = (kind, size)
        parent = posixpath.dirname(path)
        while parent != "/" and parent not in inner:
            inner.add(parent)
            parent = posixpath.dirname(parent)
    return [(path, kind, size) for path, (kind, size) in last.items() if path not in inner and path != "/"]


def _stack(tree: MergedTree, entries: list[tuple[str, str, int]], layer: int) -> None:
    """Put a layer onto dive's stacked tree: whiteouts remove, every path the
    layer names or implies gets the layer's payload (an implied directory's
    is empty: not a directory, size 0), opaque markers only imply their directory."""
    payload: dict[str, Node] = {}
    for path, kind, size in entries:
        if kind == "whiteout":
            tree.remove(path)
        elif kind == "opaque":
            payload.setdefault(path, Node("implied", 0, layer))
        else:
            payload[path] = Node(kind, size, layer)
        parent = posixpath.dirname(path)
        while parent != "/" and parent not in payload:
            payload[parent] = Node("implied", 0, layer)
            parent = posixpath.dirname(parent)
    for path, node in payload.items():
        tree.set(path, node)


# --- the CI gate -------------------------------------------------------------------

DIVE_DEFAULTS = {"lowest-efficiency": "0.9", "highest-wasted-bytes": "disabled", "highest-user-wasted-percent": "0.1"}
_LEGACY_KEYS = {
    "lowestEfficiency": "lowest-efficiency",
    "highestWastedBytes": "highest-wasted-bytes",
    "highestUserWastedPercent": "highest-user-wasted-percent",
}


class CiConfigError(UsageError):
    """A threshold or a .dive-ci file that cannot be read."""


@dataclass
class RuleResult:
    """The outcome of one of dive's CI rules."""

    rule: str  # dive's key
    threshold: str  # as configured
    status: str  # pass, fail, disabled
    message: str


def read_dive_ci(text: str, origin: str) -> dict[str, str]:
    """The ``rules:`` of a .dive-ci file (dive's YAML: snake-case or legacy camelCase keys)."""
    rules: dict[str, str] = {}
    in_rules = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indented = line[0] in " \t"
        key, sep, value = line.strip().partition(":")
        if not sep:
            raise CiConfigError(f"{origin}:{number}: expected KEY: VALUE, got {raw.strip()!r}")
        if not indented:
            in_rules = key == "rules"
            continue
        if not in_rules:
            continue
        key = _LEGACY_KEYS.get(key, key)
        if key not in DIVE_DEFAULTS:
            raise CiConfigError(f"{origin}:{number}: unknown rule {key!r} (dive's rules: {', '.join(DIVE_DEFAULTS)})")
        rules[key] = value.strip().strip("'\"")
    return rules


def evaluate(summary: dict, configured: dict[str, str]) -> list[RuleResult]:
    """Each of dive's three rules against the figures; a rule not configured takes dive's default."""
    rules = {**DIVE_DEFAULTS, **configured}
    return [
        _lowest_efficiency(rules["lowest-efficiency"], summary["efficiency"]),
        _highest_wasted_bytes(rules["highest-wasted-bytes"], summary["wasted_bytes"]),
        _highest_user_wasted(rules["highest-user-wasted-percent"], summary["user_wasted_percent"]),
    ]


def _disabled(value: str) -> bool:
    return value.strip().lower() in ("", "disabled", "off", "false")


def _ratio(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise CiConfigError(f"{key} {value!r} is not a number: give a ratio between 0 and 1, or disabled") from None
    if not 0 <= number <= 1:
        raise CiConfigError(f"{key} {value!r} is outside 0-1: give a ratio, as 0.9 for 90%")
    return number


def _lowest_efficiency(value: str, efficiency: float) -> RuleResult:
    key = "lowest-efficiency"
    if _disabled(value):
        return RuleResult(key, value, "disabled", "rule disabled")
    threshold = _ratio(key, value)
    if threshold > efficiency:
        return RuleResult(key, value, "fail", f"image efficiency is too low (efficiency={efficiency:.2f} < threshold={value})")
    return RuleResult(key, value, "pass", "")


def _highest_wasted_bytes(value: str, wasted: int) -> RuleResult:
    key = "highest-wasted-bytes"
    if _disabled(value):
        return RuleResult(key, value, "disabled", "rule disabled")
    threshold = parse_bytes(value, key)
    if wasted > threshold:
        return RuleResult(key, value, "fail", f"too many bytes wasted (wasted-bytes={wasted} > threshold={value})")
    return RuleResult(key, value, "pass", "")


def _highest_user_wasted(value: str, percent: float) -> RuleResult:
    key = "highest-user-wasted-percent"
    if _disabled(value):
        return RuleResult(key, value, "disabled", "rule disabled")
    threshold = _ratio(key, value)
    if percent > threshold:
        return RuleResult(
            key, value, "fail",
            f"too many bytes wasted, relative to the user bytes added (user-wasted-percent={percent:.2f} > threshold={value})",
        )
    return RuleResult(key, value, "pass", "")


_BYTE_UNITS = {
    "": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4, "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2,
    "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4,
}


def parse_bytes(text: str, what: str) -> int:
    """Bytes as dive reads them (go-humanize ParseBytes): ``20MB`` is 20,000,000, ``20MiB`` 20,971,520."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _BYTE_UNITS:
        raise CiConfigError(f"{what} {text!r} is not a size: give bytes or a number with kB, MB, GB (or KiB, MiB, GiB)")
    return int(float(match.group(1)) * _BYTE_UNITS[match.group(2)])


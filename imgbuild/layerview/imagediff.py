"""``imgbuild diff A B``: what differs between two images — the config, the
files of their merged filesystems, and (``--packages``) the Debian, Python
and npm packages installed in them.

Files are compared by what ``docker run`` would see: the merged tree after
all layers, each file's content by sha256 (streamed while the layers are
read), its mode, owner, link target and, unless timestamps are ignored, its
modification time.
"""

from __future__ import annotations

import json
import re
from dataclasses import field

from imgbuild.cache.inspection import LayerEntry
from imgbuild.dataclass import dataclass
from imgbuild.layerview.layers import Options, analyze
from imgbuild.layerview.tree import MergedTree, Node
from imgbuild.store import Store

MAX_LISTED = 10_000  # paths listed per kind of change; the counts cover all
MAX_DPKG_STATUS = 64 << 20
MAX_PACKAGE_FILE = 1 << 20
CONFIG_FIELDS = ("Entrypoint", "Cmd", "User", "WorkingDir", "StopSignal", "Shell", "Healthcheck",
                 "ExposedPorts", "Volumes", "OnBuild", "ArgsEscaped")
TOP_FIELDS = ("architecture", "os", "variant", "os.version", "author")


@dataclass
class Side:
    """One of the two images ``imgbuild diff`` compares, read."""

    label: str
    image: object
    tree: MergedTree
    packages: dict[str, dict[str, str]] = field(default_factory=dict)


def read_side(store: Store, source, want_packages: bool) -> Side:
    found = PackageFiles() if want_packages else None
    options = Options(hash_files=True, max_files=0, on_file=found.see if found else None)
    analysis = analyze(store, source.image, options)
    packages = found.installed(analysis.tree) if found else {}
    return Side(source.label, source.image, analysis.tree, packages)


def diff_images(a: Side, b: Side, ignore_timestamps: bool, want_packages: bool) -> dict:
    report = {
        "a": {"image": a.label, "digest": a.image.digest},
        "b": {"image": b.label, "digest": b.image.digest},
        "config": config_differences(a.image.config, b.image.config, ignore_timestamps),
        "files": file_differences(a.tree, b.tree, ignore_timestamps),
    }
    if want_packages:
        report["packages"] = package_differences(a.packages, b.packages)
    return report


# --- config ------------------------------------------------------------------------------


def config_differences(a: dict, b: dict, ignore_timestamps: bool) -> list[dict]:
    rows = []
    fields = list(TOP_FIELDS) + ([] if ignore_timestamps else ["created"])
    for name in fields:
        _compare(rows, name, a.get(name), b.get(name))
    inner_a, inner_b = a.get("config") or {}, b.get("config") or {}
    for name in CONFIG_FIELDS:
        _compare(rows, name, inner_a.get(name), inner_b.get(name))
    env_a, env_b = _env(inner_a.get("Env")), _env(inner_b.get("Env"))
    for key in sorted(env_a.keys() | env_b.keys()):
        _compare(rows, f"Env.{key}", env_a.get(key), env_b.get(key))
    labels_a, labels_b = inner_a.get("Labels") or {}, inner_b.get("Labels") or {}
    for key in sorted(labels_a.keys() | labels_b.keys()):
        _compare(rows, f"Labels.{key}", labels_a.get(key), labels_b.get(key))
    steps_a = [h.get("created_by", "") for h in a.get("history") or [] if isinstance(h, dict)]
    steps_b = [h.get("created_by", "") for h in b.get("history") or [] if isinstance(h, dict)]
    _compare(rows, "history", steps_a, steps_b)
    return rows


def _env(values) -> dict[str, str]:
    env = {}
    for item in values or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    return env


def _compare(rows: list, name: str, a, b) -> None:
    if a != b:
        rows.append({"field": name, "a": a, "b": b})


# --- files -------------------------------------------------------------------------------


def file_differences(a: MergedTree, b: MergedTree, ignore_timestamps: bool) -> dict:
    added, removed, changed = [], [], []
    for path in sorted(a.nodes.keys() | b.nodes.keys()):
        if path == "/":
            continue
        old, new = a.get(path), b.get(path)
        if old is None:
            added.append(_file_row(path, new))
        elif new is None:
            removed.append(_file_row(path, old))
        else:
            what = _what_changed(old, new, ignore_timestamps)
            if what:
                changed.append({"path": path, "changes": what, "a": _file_row(path, old), "b": _file_row(path, new)})
    return {
        "counts": {"added": len(added), "removed": len(removed), "changed": len(changed)},
        "added": added[:MAX_LISTED],
        "removed": removed[:MAX_LISTED],
        "changed": changed[:MAX_LISTED],
    }


def _what_changed(old: Node, new: Node, ignore_timestamps: bool) -> list[str]:
    what = []
    if old.kind != new.kind:
        what.append("type")
    elif old.kind == "file" and (old.digest != new.digest or old.size != new.size):
        what.append("content")
    if old.mode != new.mode:
        what.append("mode")
    if (old.uid, old.gid) != (new.uid, new.gid):
        what.append("owner")
    if old.link != new.link:
        what.append("link")
    if not ignore_timestamps and old.mtime_ns // 10**9 != new.mtime_ns // 10**9:
        what.append("mtime")
    return what


def _file_row(path: str, node: Node) -> dict:
    row = {"path": path, "type": node.kind, "size": node.size, "mode": format(node.mode, "04o"),
           "uid": node.uid, "gid": node.gid}
    if node.link:
        row["link"] = node.link
    if node.digest:
        row["sha256"] = node.digest
    return row


# --- packages ----------------------------------------------------------------------------

_DIST_INFO = re.compile(r"/(?:site|dist)-packages/[^/]+\.dist-info/METADATA$")
_NODE_PACKAGE = re.compile(r"/node_modules/(?:@[^/]+/)?[^/]+/package\.json$")


class PackageFiles:
    """Reads the package records files while the layers stream past, keeping
    only (name, version) per file: the last layer to write a file wins, and a
    file the merged tree no longer has is dropped at the end."""

    def __init__(self):
        self.found: dict[str, tuple[str, dict[str, str]]] = {}

    def see(self, entry: LayerEntry) -> None:
        if entry.path == "/var/lib/dpkg/status":
            self.found[entry.path] = ("debian", parse_dpkg_status(entry.read_data(MAX_DPKG_STATUS)))
        elif _DIST_INFO.search(entry.path):
            self.found[entry.path] = ("python", parse_dist_info(entry.read_data(MAX_PACKAGE_FILE)))
        elif _NODE_PACKAGE.search(entry.path):
            self.found[entry.path] = ("npm", parse_package_json(entry.read_data(MAX_PACKAGE_FILE)))

    def installed(self, tree: MergedTree) -> dict[str, dict[str, str]]:
        packages: dict[str, dict[str, str]] = {"debian": {}, "python": {}, "npm": {}}
        for path, (ecosystem, names) in self.found.items():
            node = tree.get(path)
            if node is not None and node.kind == "file":
                packages[ecosystem].update(names)
        return packages


def parse_dpkg_status(data: bytes) -> dict[str, str]:
    """Installed packages of a dpkg status file: ``Status: install ok installed`` only."""
    packages = {}
    for paragraph in data.decode("utf-8", "replace").split("\n\n"):
        fields = _rfc822_fields(paragraph)
        if fields.get("package") and fields.get("status", "").endswith(" installed"):
            name = fields["package"]
            if fields.get("multi-arch") == "same" and fields.get("architecture"):
                name += ":" + fields["architecture"]
            packages[name] = fields.get("version", "")
    return packages


def parse_dist_info(data: bytes) -> dict[str, str]:
    head = data.decode("utf-8", "replace").split("\n\n", 1)[0]
    fields = _rfc822_fields(head)
    if not fields.get("name"):
        return {}
    return {_normalise_python_name(fields["name"]): fields.get("version", "")}


def _normalise_python_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def parse_package_json(data: bytes) -> dict[str, str]:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep, from a hostile image
        return {}
    if not isinstance(document, dict) or not isinstance(document.get("name"), str):
        return {}
    return {document["name"]: str(document.get("version", ""))}


def _rfc822_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        if not line or line[0] in " \t":
            continue  # a continuation line: the fields read here have none worth keeping
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def package_differences(a: dict, b: dict) -> dict:
    report = {}
    for ecosystem in ("debian", "python", "npm"):
        old, new = a.get(ecosystem, {}), b.get(ecosystem, {})
        report[ecosystem] = {
            "added": [{"name": n, "version": new[n]} for n in sorted(new.keys() - old.keys())],
            "removed": [{"name": n, "version": old[n]} for n in sorted(old.keys() - new.keys())],
            "changed": [
                {"name": n, "a": old[n], "b": new[n]} for n in sorted(old.keys() & new.keys()) if old[n] != new[n]
            ],
        }
    return report

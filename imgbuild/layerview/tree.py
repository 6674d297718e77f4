"""The merged filesystem of an image as its layers stack up, path by path,
with the layer each path comes from."""

from __future__ import annotations

import posixpath

from imgbuild.dataclass import dataclass


@dataclass
class Node:
    """A path of the merged image tree, and the layer that last wrote it."""

    kind: str  # file, dir, symlink, ...
    size: int
    layer: int  # index of the layer that last wrote it
    mode: int = 0
    uid: int = 0
    gid: int = 0
    link: str = ""
    digest: str = ""  # sha256 of a file's bytes, when the walk hashed them
    mtime_ns: int = 0


class MergedTree:
    """Paths and what is at them; ``kids`` maps a directory to its entries so
    that a whiteout or an opaque directory drops a subtree without a scan."""

    def __init__(self):
        self.nodes: dict[str, Node] = {"/": Node("dir", 0, -1)}
        self.kids: dict[str, set[str]] = {"/": set()}

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        """Write ``node`` at ``path`` as extraction does: a non-directory replaces a whole subtree."""
        old = self.nodes.get(path)
        if old is not None and old.kind == "dir" and node.kind != "dir":
            self.clear_below(path)
        self.set(path, node)

    def set(self, path: str, node: Node) -> None:
        """Replace what is recorded at ``path``, keeping anything below it."""
        self.nodes[path] = node
        self.kids.setdefault(path, set())
        self._link_parents(path, node.layer)

    def _link_parents(self, path: str, layer: int) -> None:
        # A layer may name /a/b/c without /a/b: the directories on the way appear.
        while path != "/":
            parent = posixpath.dirname(path)
            children = self.kids.get(parent)
            if children is None:
                self.nodes[parent] = Node("dir", 0, layer, 0o755)
                children = self.kids[parent] = set()
            elif path in children:
                return
            children.add(path)
            path = parent

    def remove(self, path: str) -> tuple[int, int]:
        """Drop ``path`` and all below it; (paths, file bytes) dropped."""
        if path not in self.nodes or path == "/":
            return 0, 0
        self.kids.get(posixpath.dirname(path), set()).discard(path)
        return self._drop([path])

    def clear_below(self, path: str) -> tuple[int, int]:
        """Drop everything below the directory ``path`` (an opaque whiteout)."""
        children = self.kids.get(path)
        if not children:
            return 0, 0
        self.kids[path] = set()
        return self._drop(list(children))

    def _drop(self, pending: list[str]) -> tuple[int, int]:
        # Iterative: a hostile layer may nest directories thousands deep.
        count = size = 0
        while pending:
            current = pending.pop()
            node = self.nodes.pop(current, None)
            if node is not None:
                count += 1
                size += node.size
            pending.extend(self.kids.pop(current, ()))
        return count, size

    def subtree_size(self, path: str) -> int:
        """The file bytes at ``path`` and below it."""
        total, pending = 0, [path]
        while pending:
            current = pending.pop()
            node = self.nodes.get(current)
            if node is not None:
                total += node.size
                pending.extend(self.kids.get(current, ()))
        return total

    def paths(self) -> list[str]:
        return sorted(path for path in self.nodes if path != "/")

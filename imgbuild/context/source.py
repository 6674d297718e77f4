"""The build context: what COPY/ADD may read, and a content digest of exactly that.

A ``BuildContext`` is a root directory seen the way BuildKit sees it:

- paths are relative to the root, a leading ``/`` means the root;
- files the ``.dockerignore`` excludes are invisible (an excluded directory
  that an exception re-includes something from is visible, with only that);
- symlinks that are *components of a source path* are followed inside the
  root, as in a chroot; symlinks *inside a copied directory* stay symlinks;
- wildcards match one path component each, as Go's ``filepath.Match``.

As in BuildKit, a source, or a symlink on its path, that leads above the
root (``../x``, ``..`` above the root, an absolute symlink) stays inside
it: ``..`` at the root is the root and an absolute symlink target starts
from the root, as in a chroot. Nothing outside the root is ever read. Files
from the context are owned by 0:0 in the image, as BuildKit resets their
uid/gid on transfer.

A stage's or image's root filesystem (``COPY --from``) is a ``BuildContext``
with ``rootfs=True``: no ignore file, and files keep their owners.

``digest()`` hashes what a copy of the selection reads, never times
(``digest.py``); file contents are remembered in a ``StatCache``, so a warm
rebuild of a large context reads (almost) nothing.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import namedtuple
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import field
from pathlib import Path

from imgbuild import safeopen
from imgbuild.context.digest import ContentHasher, Listing, RememberedSelection, selection_digest
from imgbuild.context.dockerignore import IgnoreMatcher
from imgbuild.context.statcache import StatCache
from imgbuild.dataclass import dataclass
from imgbuild.errors import ContextError
from imgbuild.gopath import go_clean, go_match, has_wildcards

MAX_SYMLINKS = 40  # what Linux allows in one path walk

# Overlayfs bookkeeping, not file content: never copied, never hashed.
_SKIPPED_XATTR_PREFIXES = ("trusted.overlay.",)

_NO_EXCLUDES = IgnoreMatcher([])

class MissingSource(ContextError):
    """A source that is not in the context (or is ignored)."""


# --- what a source selects ---------------------------------------------------


class Entry(namedtuple("Entry", "rel path st relpath link xattrs", defaults=("", None, ()))):
    """One filesystem object a copy of a Selected reads.

    Everything but a regular file's bytes is read with the listing, through
    descriptors (never by path string); the bytes are read later through
    ``BuildContext.open_for_reading``, which checks it is still this inode.
    A tuple, not a dataclass: a walk makes one per file, and a large
    context has tens of thousands. (``collections.namedtuple``, not
    ``typing.NamedTuple``: importing typing costs every build 2 ms.)

    - ``rel`` (str): below the selected item, "/"-separated; "" is the item itself
    - ``path`` (str): where it is on disk, for messages and the stat cache's key only
    - ``st`` (os.stat_result): lstat of it
    - ``relpath`` (str): below the context root: how it is opened
    - ``link`` (str or None): a symlink's target
    - ``xattrs`` (tuple of (name, bytes)): its extended attributes
    """

    __slots__ = ()


@dataclass(frozen=True)
class Selected:
    """One thing a COPY/ADD source resolved to (a wildcard gives one per match).

    ``relpath`` is where it really is (after following symlinks on the way),
    relative to the context root; ``name`` is the name it gets at the
    destination (the last component of the matched path, before following).
    """

    context: BuildContext = field(repr=False, compare=False)
    source: str  # as written in the Dockerfile
    name: str
    relpath: str
    is_dir: bool
    exclude: IgnoreMatcher = field(repr=False, compare=False, default=_NO_EXCLUDES)

    @property
    def path(self) -> Path:
        return self.context.root / self.relpath if self.relpath else self.context.root

    def entries(self, *, hand_on: bool = False) -> list[Entry]:
        """The item and, for a directory, everything below it that the copy
        reads, in sorted order (ignored and --exclude'd paths left out);
        ``hand_on``: see ``BuildContext.entries``."""
        return self.context.entries(self, hand_on=hand_on)

    def open_file(self) -> int:
        """A read descriptor of this item, reached without following symlinks;
        ``safeopen.NotRegularFile`` (an OSError) if it is not a regular file."""
        return self.context.open_item(self.relpath)


def _walk_key(selected: Selected) -> tuple:
    """What decides a walk's entries: where the item is, and what it excludes."""
    return (selected.relpath, selected.is_dir, tuple((p.text, p.exclusion) for p in selected.exclude.patterns))


class BuildContext:
    """A root directory that COPY/ADD sources are selected from (see the module doc)."""

    def __init__(
        self,
        root: Path,
        ignore: IgnoreMatcher,
        stat_cache: StatCache | None = None,
        *,
        rootfs: bool = False,
        label: str = "build context",
    ):
        self.root = Path(root)
        self.ignore = ignore
        self.stat_cache = stat_cache
        self.rootfs = rootfs
        self.label = label
        self.hasher = ContentHasher(stat_cache, self.root)
        self.read_stats = self.hasher.read_stats
        # selection digest -> the files it covered, for the record of each
        # key's inputs (``keep_listings``); None keeps none.
        self.listings: dict[str, Listing] | None = None
        # digests an earlier build remembered: listed only when asked (``listing_of``)
        self._unlisted: dict[str, Sequence[Selected]] = {}
        # what the build's record notes of each selection (imgbuild.builder.record); None: nothing
        self.journal = None
        # The walk the last digest made, (its selection's key, its entries), for
        # the copy of the same step: it takes that list instead of walking the
        # context again (a walk of 20,000 files is ~0.2 s) and so copies just
        # what the digest covered. Each digest replaces or clears it.
        self._handoff: tuple[tuple, list[Entry]] | None = None

    @classmethod
    def for_rootfs(cls, root: Path, label: str = "the source stage") -> BuildContext:
        """A stage or image root filesystem, for ``COPY --from``."""
        return cls(root, IgnoreMatcher([]), None, rootfs=True, label=label)

    # -- ownership as the copy will see it --

    def owner(self, st: os.stat_result) -> tuple[int, int]:
        """uid/gid a copied file gets without --chown: the build context's
        files are 0:0 (BuildKit resets them); a rootfs keeps its owners."""
        if self.rootfs:
            return st.st_uid, st.st_gid
        return 0, 0

    # -- selecting sources --

    def select(
        self, source: str, exclude: Sequence[str] = (), *, instruction: str = "COPY"
    ) -> list[Selected]:
        """Resolve one COPY/ADD source to what it selects, in copy order.

        A plain path that does not exist (or is ignored) is a ContextError. A
        wildcard that matches nothing selects nothing, as in BuildKit, but the
        directory before its first wildcard must exist.
        """
        selected = self._select(source, exclude, instruction)
        if self.journal is not None:
            self.journal.selected(source, exclude, selected)
        return selected

    def _select(self, source: str, exclude: Sequence[str], instruction: str) -> list[Selected]:
        excludes = IgnoreMatcher(list(exclude), source="--exclude")
        parts = [part for part in go_clean("/" + source).split("/") if part]
        first_wildcard = next((i for i, part in enumerate(parts) if has_wildcards(part)), None)
        if first_wildcard is None:
            relpath = self._resolve(source, parts, instruction)
            st = self._lstat_visible(source, relpath, instruction)
            name = parts[-1] if parts else "."
            return [Selected(self, source, name, relpath, stat.S_ISDIR(st.st_mode), excludes)]

        base = self._resolve(source, parts[:first_wildcard], instruction)
        base_st = self._lstat_visible(source, base, instruction)
        if not stat.S_ISDIR(base_st.st_mode):
            return []
        selected = []
        for match in self._glob(base, parts[first_wildcard:]):
            relpath = self._resolve(source, _split(_join(base, match)), instruction)
            st = self._lstat_visible(source, relpath, instruction)
            # --exclude drops matched files; a matched directory is still copied
            # (its destination made), its excluded contents left out, as in BuildKit
            if excludes.ignored(match) and not stat.S_ISDIR(st.st_mode):
                continue
            name = match.rsplit("/", 1)[-1]
            selected.append(
                Selected(self, source, name, relpath, stat.S_ISDIR(st.st_mode), excludes)
            )
        return selected

    def resolve(self, path: str, doing: str, *, confine: bool = True) -> str:
        """The context path ``path`` leads to, symlinks on it followed inside the root.

        ``confine=False`` refuses (ContextError) a path that leads above the
        root instead: the Dockerfile and ignore file are read so.
        """
        return self._resolve(path, _split(path), doing, confine)

    def _resolve(self, source: str, parts: list[str], instruction: str, confine: bool = True) -> str:
        """Follow ``parts`` from the root like a chroot would; return the real relpath.

        Symlinks on the way must themselves be visible (not ignored).
        """
        pending = list(parts)
        resolved: list[str] = []
        last_link: tuple[str, str] | None = None
        confined: tuple[str, str] | None = None  # a symlink that led above the root, for messages
        followed = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                elif last_link is not None:
                    confined = self._confined(source, instruction, last_link, confine)
                continue
            candidate = _join("/".join(resolved), part)
            try:
                with self._object(candidate) as (fd, st):
                    target = safeopen.read_link(fd) if stat.S_ISLNK(st.st_mode) else None
            except (FileNotFoundError, NotADirectoryError):
                raise self._not_found(source, instruction, confined) from None
            if target is None:
                resolved.append(part)
                continue
            if self.ignore.ignored(candidate):
                raise self._not_found(source, instruction)
            followed += 1
            if followed > MAX_SYMLINKS:
                raise ContextError(
                    f"{instruction} failed: too many levels of symbolic links in {source}"
                )
            last_link = (candidate, target)
            if target.startswith("/"):
                confined = self._confined(source, instruction, last_link, confine)
                resolved = []
            pending = _split(target) + pending
        if confined is not None:
            try:
                with self._object("/".join(resolved)):
                    pass
            except (FileNotFoundError, NotADirectoryError):
                raise self._not_found(source, instruction, confined) from None
        return "/".join(resolved)

    def _confined(
        self, source: str, instruction: str, link: tuple[str, str], confine: bool
    ) -> tuple[str, str]:
        if not confine:
            raise ContextError(
                f"{instruction} failed: forbidden path outside the build context: {source}"
                f" (symlink {link[0]} -> {link[1]})"
            )
        return link

    def _lstat_visible(self, source: str, relpath: str, instruction: str) -> os.stat_result:
        try:
            with self._object(relpath) as (_, st):
                pass
        except (FileNotFoundError, NotADirectoryError):
            raise self._not_found(source, instruction) from None
        if not self._visible(relpath, st):
            raise self._not_found(source, instruction)
        return st

    def _visible(self, relpath: str, st: os.stat_result) -> bool:
        """Is this path in the context as BuildKit transfers it?"""
        if not relpath or not self.ignore.ignored(relpath):
            return True
        if not stat.S_ISDIR(st.st_mode) or not self.ignore.may_reinclude_below(relpath):
            return False
        # An excluded directory is there if something below it is re-included.
        below = self._walk(relpath, "", _NO_EXCLUDES, details=False)
        return next(below, None) is not None

    def _glob(self, base: str, patterns: list[str]) -> list[str]:
        """Paths below ``base`` (relative to it) matching one pattern per component.

        Like BuildKit's ResolveWildcards: only real directories are descended
        into (a symlink to a directory is a match, not a way through).
        """
        level = [""]
        for depth, pattern in enumerate(patterns):
            last = depth == len(patterns) - 1
            matches = []
            for directory in level:
                for name, st, _, _ in self._list(_join(base, directory)):
                    try:
                        if not go_match(pattern, name):
                            continue
                    except ValueError:
                        continue  # BuildKit ignores filepath.Match errors: no match
                    relpath = _join(base, _join(directory, name))
                    if last:
                        if self._visible(relpath, st):
                            matches.append(_join(directory, name))
                    elif stat.S_ISDIR(st.st_mode) and self._visible(relpath, st):
                        matches.append(_join(directory, name))
            level = matches
        return level

    def _not_found(
        self, source: str, instruction: str, confined: tuple[str, str] | None = None
    ) -> ContextError:
        if self.rootfs:
            message = f"{instruction} failed: {source}: not found in {self.label}"
        else:
            message = (
                f"{instruction} failed: file not found in build context"
                f" or excluded by .dockerignore: {source}"
            )
        if confined is not None:
            message += (
                f" (the symlink {confined[0]} -> {confined[1]} leads above the {self.label}'s root,"
                " so it is followed inside it, as BuildKit does)"
            )
        return MissingSource(message)

    # -- reading the tree, fd-relative (see safeopen) --

    @contextmanager
    def _object(
        self, relpath: str, expect: os.stat_result | None = None
    ) -> Iterator[tuple[int, os.stat_result]]:
        """An O_PATH descriptor of ``relpath`` and its stat, reached from the
        root without following any symlink (a symlink itself is fine).

        ``expect`` is the stat the caller checked earlier: a different object
        there now is a ContextError, so what was checked is what is read.
        FileNotFoundError/NotADirectoryError pass through for "not found".
        """
        root = safeopen.open_root(self.root)
        try:
            fd, st = safeopen.open_object(root, relpath)
        except (FileNotFoundError, NotADirectoryError):
            if expect is not None:
                raise self._changed(relpath, "it was removed") from None
            raise
        except OSError as error:
            raise self._unreadable(relpath, error) from None
        finally:
            os.close(root)
        try:
            if expect is not None and _identity_of(st) != _identity_of(expect):
                raise self._changed(relpath, "another file took its place")
            yield fd, st
        finally:
            os.close(fd)

    @contextmanager
    def object_at(self, relpath: str) -> Iterator[tuple[int, os.stat_result]]:
        """``relpath``'s O_PATH descriptor and stat, no symlink followed (a
        ContextError if one is now on the way)."""
        try:
            with self._object(relpath) as pinned:
                yield pinned
        except (FileNotFoundError, NotADirectoryError):
            raise self._changed(relpath, "it was removed") from None

    @contextmanager
    def open_for_reading(self, entry: Entry) -> Iterator[int]:
        """A read descriptor of a regular file entry, checked to be the inode
        the listing saw; never a FIFO, device or socket."""
        with self._object(entry.relpath, entry.st) as (path_fd, st):
            try:
                fd = safeopen.reopen_for_reading(path_fd, st)
            except safeopen.NotRegularFile as error:
                raise self._changed(entry.relpath, f"it is now {error.kind}") from None
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def open_path(self, entry: Entry) -> Iterator[int]:
        """The entry's O_PATH descriptor, checked to be the inode the listing saw."""
        with self._object(entry.relpath, entry.st) as (path_fd, _):
            yield path_fd

    def open_item(self, relpath: str) -> int:
        with self._object(relpath) as (path_fd, st):
            return safeopen.reopen_for_reading(path_fd, st)

    def _changed(self, relpath: str, why: str) -> ContextError:
        return ContextError(
            f"{relpath or '.'} in the {self.label} changed while the build read it ({why});"
            f" nothing outside the {self.label} is read: do not change it during a build"
        )

    def _unreadable(self, relpath: str, error: OSError) -> ContextError:
        if error.errno in (errno.ELOOP, errno.EXDEV, errno.EAGAIN):
            return self._changed(relpath, _why_refused(error))
        return ContextError(f"cannot read {relpath or '.'} in the {self.label}: {error.strerror}")

    def _list(
        self, ctx_rel: str, details: bool = False
    ) -> list[tuple[str, os.stat_result, str | None, tuple]]:
        """(name, lstat, symlink target, xattrs) of a directory's children in
        byte order, read through one descriptor; without ``details`` the
        target is None and the xattrs are empty (not read)."""
        root = safeopen.open_root(self.root)
        try:
            dir_fd = safeopen.open_beneath(root, ctx_rel, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            raise self._changed(ctx_rel, "it is no longer a directory") from None
        except OSError as error:
            raise self._unreadable(ctx_rel, error) from None
        finally:
            os.close(root)
        try:
            with os.scandir(dir_fd) as listing:
                children = [(child.name, child.stat(follow_symlinks=False)) for child in listing]
            if all(name.isascii() for name, _ in children):
                children.sort(key=_first)  # the same order as the bytes, cheaper
            else:
                children.sort(key=lambda child: os.fsencode(child[0]))
            if not details:
                return [(name, st, None, ()) for name, st in children]
            return [(name, st, *_details(dir_fd, name, st)) for name, st in children]
        except OSError as error:
            # an entry went away or changed its type between the listing and its stat
            raise self._changed(_join(ctx_rel, os.fsdecode(error.filename or "")), error.strerror) from None
        finally:
            os.close(dir_fd)

    # -- walking a selection --

    def entries(self, selected: Selected, *, details: bool = True, hand_on: bool = False) -> list[Entry]:
        """The item and everything below it that a copy reads (``Selected.entries``).

        Without ``details``, symlink targets and xattrs are not read (None and
        empty): only names and lstat, for ``selection_fingerprint``. With
        ``hand_on`` (a digest's walk), the list is kept for the next walk of
        the same selection, which takes it once instead of walking.
        """
        if not details:
            return self._walk_selected(selected, details=False)
        key = _walk_key(selected)
        handoff, self._handoff = self._handoff, None
        if handoff is not None and handoff[0] == key and not hand_on:
            return handoff[1]
        result = self._walk_selected(selected, details=True)
        if hand_on:
            self._handoff = (key, result)
        return result

    def _walk_selected(self, selected: Selected, details: bool) -> list[Entry]:
        relpath = selected.relpath
        try:
            with self._object(relpath) as (fd, st):
                link = xattrs = None
                if details:
                    link = safeopen.read_link(fd) if stat.S_ISLNK(st.st_mode) else None
                    xattrs = read_xattrs(safeopen.xattr_path(fd), follow=True)
        except (FileNotFoundError, NotADirectoryError):
            raise self._changed(relpath, "it was removed") from None
        result = [Entry("", str(selected.path), st, relpath, link, tuple(xattrs or ()))]
        if stat.S_ISDIR(st.st_mode):
            result.extend(self._walk(relpath, "", selected.exclude, details))
        return result

    def _walk(self, ctx_rel: str, rel: str, exclude: IgnoreMatcher, details: bool = True) -> Iterator[Entry]:
        """Entries below a directory in sorted order, skipping ignored and excluded
        paths; an excluded directory appears only if something below it is
        re-included by an exception (then it must be walked, as BuildKit does)."""
        dir_path = str(self.root / ctx_rel) if ctx_rel else str(self.root)
        # A walk makes these for every file of the context: no calls it can skip.
        ignore = self.ignore if self.ignore else None
        excluding = exclude if exclude else None
        for name, st, link, xattrs in self._list(ctx_rel, details):
            child_ctx = f"{ctx_rel}/{name}" if ctx_rel else name
            child_rel = f"{rel}/{name}" if rel else name
            ignored = ignore is not None and ignore.ignored(child_ctx)
            excluded = excluding is not None and excluding.ignored(child_rel)
            entry = Entry(child_rel, f"{dir_path}/{name}", st, child_ctx, link, xattrs)
            is_dir = stat.S_ISDIR(st.st_mode)
            if not ignored and not excluded:
                yield entry
                if is_dir:
                    yield from self._walk(child_ctx, child_rel, exclude, details)
                continue
            if not is_dir:
                continue
            if ignored and not self.ignore.may_reinclude_below(child_ctx):
                continue
            if excluded and not exclude.may_reinclude_below(child_rel):
                continue
            shown = False
            for below in self._walk(child_ctx, child_rel, exclude, details):
                if not shown:
                    yield entry
                    shown = True
                yield below

    # -- digests --

    def digest(self, selected: Sequence[Selected]) -> str:
        """sha256 over exactly what copying ``selected`` reads, never mtimes (``digest.py``).

        With ``keep_listings`` on, the files it covered are kept under the
        digest. With a stat cache, a digest remembered for the same tree (same
        names and lstat of every entry) is taken as it is (``digest.py``).
        """
        self._handoff = None  # a copy after this digest must not take an older walk
        remembered = RememberedSelection(self, selected) if self.stat_cache is not None else None
        if self.journal is not None:
            self.journal.digested(selected, remembered)
        if remembered is not None:
            known = remembered.known()
            if known is not None:
                if self.listings is not None and known not in self.listings:
                    self._unlisted[known] = selected
                return known
        listing = Listing() if self.listings is not None else None
        digest = selection_digest(self, selected, listing, remembered, hand_on=True)
        if listing is not None:
            self.listings[digest] = listing
        return digest

    def keep_listings(self) -> None:
        """From now on, remember which files each digest covered (``listing_of``)."""
        if self.listings is None:
            self.listings = {}

    def listing_of(self, digest: str) -> Listing | None:
        """The files ``digest`` covered. For a remembered digest (a cache hit
        needs no listing) the files are listed now, as they are now."""
        if self.listings is None:
            return None
        unlisted = self._unlisted.pop(digest, None)
        if unlisted is not None and digest not in self.listings:
            listing = Listing()
            selection_digest(self, unlisted, listing)
            self.listings[digest] = listing
        return self.listings.get(digest)

    def content_sha256(self, entry: Entry) -> str:
        """sha256 of a regular file's bytes, from the caches when its stat is unchanged."""
        return self.hasher.content_sha256(entry, self.open_for_reading)


def _identity_of(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode))


def _why_refused(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "a symlink is now on its path"
    if error.errno == errno.EXDEV:
        return "its path leads outside"
    return error.strerror or str(error)


def _details(dir_fd: int, name: str, st: os.stat_result) -> tuple[str | None, tuple]:
    """A child's symlink target and xattrs, read through its directory's
    descriptor (the /proc path names that very directory; ``name`` itself is
    not followed)."""
    link = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
    return link, tuple(read_xattrs(f"/proc/self/fd/{dir_fd}/{name}"))


def read_xattrs(path: str | Path, *, follow: bool = False) -> list[tuple[str, bytes]]:
    """Extended attributes of a path, sorted, minus overlayfs's own.

    The last component is not followed unless ``follow`` (for a
    ``/proc/self/fd/N`` path, which must be followed to reach the object)."""
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError:
        return []
    result = []
    for name in sorted(names):
        if name.startswith(_SKIPPED_XATTR_PREFIXES):
            continue
        try:
            result.append((name, os.getxattr(path, name, follow_symlinks=follow)))
        except OSError:
            continue
    return result


def _first(pair: tuple) -> str:
    return pair[0]


def _join(head: str, tail: str) -> str:
    if not head:
        return tail
    if not tail:
        return head
    return f"{head}/{tail}"


def _split(path: str) -> list[str]:
    return [part for part in path.split("/") if part]

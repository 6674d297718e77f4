"""COPY and ADD: put selected sources into a root filesystem by Docker's rules.

What happens follows BuildKit (``dockerfile2llb`` dispatchCopy, the file-op
backend and tonistiigi/fsutil ``copy``):

- a directory source copies its contents, not the directory itself; the
  destination directory is created (0755) if missing and keeps its metadata;
- a destination ending in ``/`` (or ``.``) is a directory; a file copied onto
  an existing directory goes inside it under its own name;
- several files need a directory destination (the classic builder's error:
  BuildKit would let the last file silently overwrite the others); several
  directories or archives merge into a destination without a trailing ``/``;
- a relative destination is relative to WORKDIR; missing parents are created
  with mode 0755 (the --chmod permission bits if it is octal, BuildKit >=
  1.15), owned by the --chown user if one is given;
- the destination path resolves symlinks like a chroot: never outside rootfs;
- files keep their mode (with setuid/setgid/sticky), mtime, xattrs and
  hardlinks; ``--chmod`` sets the mode of each copied file and directory,
  octal or symbolic (``copymode.py``);
- owners: --chown if given; otherwise 0:0 for files from the build context
  and the source's own owner for COPY --from a stage or image;
- ADD extracts a local tar archive (plain, gzip, bzip2, xz, zstd, detected by
  content, not by name) into the destination, like Docker's archive.Untar run
  in a chroot of it (``imgbuild.layer.untar``): entry names and link targets
  that climb out with ``..`` or are absolute stay inside the destination;
  entries keep the archive's owners (or get --chown), modes and mtimes.
  Several archives (a wildcard) may go to a destination without a trailing
  ``/``: each is extracted into it;
- ADD of a URL places the downloaded file (see ``fetch.py``), not extracted
  unless ``--unpack=true``; ``--unpack=false`` copies a local archive as is;
- heredocs (``COPY <<EOF``) are files of mode 0644;
- a socket becomes an empty regular file with the socket's mode (BuildKit's
  "socket copied as stub").
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence
from pathlib import Path

from imgbuild.builder.fetch import Fetched
from imgbuild.context.source import Entry, Selected
from imgbuild.dataclass import dataclass
from imgbuild.errors import BuildError, NotADirectory, UntarError, disk_full, is_disk_full
from imgbuild.gopath import go_clean
from imgbuild.safeopen import kind_of, resolve_in_root

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from typing import BinaryIO

    # copymode.py is loaded when a --chmod is parsed (copystep.py), not for every COPY
    from imgbuild.builder.copymode import Chmod

DEFAULT_DIR_MODE = 0o755  # directories a COPY creates, without --chmod
HEREDOC_MODE = 0o644
URL_MODE = 0o600
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class HeredocFile:
    """The body of a ``COPY <<NAME`` heredoc, as a file named NAME."""

    name: str
    content: bytes | str


CopySource = Selected | Fetched | HeredocFile


class _Refused(Exception):
    """A copy cannot be done as asked; ``copy_into`` reports it as a BuildError."""


@dataclass(frozen=True)
class _Destination:
    """Where a COPY or ADD writes: the destination as written and as resolved."""

    text: str  # as written, for messages
    path: str  # absolute and clean, inside the rootfs
    is_dir: bool  # the user said it is a directory (trailing "/", ".")


def copy_into(
    rootfs: Path,
    selected: Sequence[CopySource],
    dest: str,
    *,
    workdir: str = "/",
    chown: tuple[int, int] | None = None,
    chmod: Chmod | int | None = None,
    is_add: bool = False,
    dest_is_dir_hint: bool = False,
    unpack: bool | None = None,
) -> None:
    """Copy sources into ``rootfs`` at ``dest`` with COPY (or ADD) semantics.

    ``selected`` is every source of the instruction in order: what
    ``BuildContext.select`` returned for each path source, ``Fetched`` for a
    URL, ``HeredocFile`` for a heredoc. ``dest_is_dir_hint`` makes the
    destination a directory even without a trailing ``/``. ``unpack`` is ADD
    --unpack: by default ADD extracts local archives, not downloads; True
    extracts downloads too, False neither.
    """
    instruction = "ADD" if is_add else "COPY"
    target = _destination(dest, workdir, dest_is_dir_hint)
    archives = [is_add and _is_archive(item, unpack) for item in selected]
    # Directories (their contents) and archives go into the destination, which
    # makes it a directory (BuildKit: ADD *.tar /dest, COPY dir* /dest); several
    # files still need a "/", where BuildKit would keep only the last one.
    files = sum(
        1 for item, archive in zip(selected, archives, strict=True)
        if not archive and not (isinstance(item, Selected) and item.is_dir)
    )  # fmt: skip
    if files > 1 and not target.is_dir:
        raise BuildError(
            f"When using {instruction} with more than one source file, "
            "the destination must be a directory and end with a /"
        )
    rootfs = Path(rootfs)
    if isinstance(chmod, int):
        from imgbuild.builder.copymode import parse_chmod

        chmod = parse_chmod(f"{chmod:o}")
    dir_mode = chmod.created_dir_mode if chmod is not None else DEFAULT_DIR_MODE
    for item, is_archive in zip(selected, archives, strict=True):
        try:
            if is_archive:
                _extract_archive(rootfs, item, target, chown)
            elif isinstance(item, Selected):
                _copy_selected(rootfs, item, target, chown, chmod, dir_mode)
            elif isinstance(item, Fetched):
                _place_file(
                    rootfs, target, item.filename, item.path, URL_MODE, item.mtime, chown, chmod, dir_mode
                )
            elif isinstance(item, HeredocFile):
                content = item.content.encode() if isinstance(item.content, str) else item.content
                _place_bytes(rootfs, target, item.name, content, chown, chmod, dir_mode)
            else:
                raise TypeError(f"not a copy source: {item!r}")
        except _Refused as problem:
            raise BuildError(f"{instruction} failed: {problem}") from None
        except NotADirectory as problem:
            raise BuildError(
                f"{instruction} failed: {_source_text(item)} to {dest}: {problem}; "
                "remove it in an earlier step or copy to another destination"
            ) from None
        except OSError as error:
            if is_disk_full(error):
                doing = f"{instruction} {_source_text(item)} to {dest} into the step's root"
                raise disk_full(error, doing, rootfs) from None
            raise BuildError(
                f"{instruction} failed: {_source_text(item)} to {dest}: {error}"
            ) from None


def _is_archive(item: CopySource, unpack: bool | None) -> bool:
    """Does ADD extract this source? Local archives unless --unpack=false,
    downloads only with --unpack=true (BuildKit's rule)."""
    if isinstance(item, Selected) and unpack is not False:
        return not item.is_dir and archive_compression(item) is not None
    if isinstance(item, Fetched) and unpack is True:
        return archive_compression(item.path) is not None
    return False


def _source_text(item: object) -> str:
    if isinstance(item, Selected):
        return item.source
    if isinstance(item, Fetched):
        return item.url
    if isinstance(item, HeredocFile):
        return "<<" + item.name
    return repr(item)


def _destination(dest: str, workdir: str, hint: bool) -> _Destination:
    # BuildKit appends "/" to a destination of "." (or ""): it names WORKDIR itself.
    is_dir = hint or dest in ("", ".") or dest.endswith("/")
    absolute = dest if dest.startswith("/") else posixpath.join("/", workdir or "/", dest)
    return _Destination(dest, go_clean(absolute), is_dir)


# --- directories in the rootfs -------------------------------------------------


def _set_owner(path: Path, owner: tuple[int, int]) -> None:
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) != owner:
        os.chown(path, owner[0], owner[1], follow_symlinks=False)


def _mkdir_below(
    rootfs: Path, host_path: Path, chown: tuple[int, int] | None, mode: int = DEFAULT_DIR_MODE
) -> None:
    """Create the missing directories of ``host_path`` (already resolved inside
    ``rootfs``) with ``mode``, owned by ``chown`` or root, as BuildKit's MkdirAll."""
    current = rootfs
    for part in host_path.relative_to(rootfs).parts:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o700)
            os.chmod(current, mode)  # not subject to the umask
            _set_owner(current, chown or (0, 0))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectory("/" + str(current.relative_to(rootfs)), kind_of(st.st_mode))


def mkdir_all(
    rootfs: Path, path: str, chown: tuple[int, int] | None, mode: int = DEFAULT_DIR_MODE
) -> Path:
    """mkdir -p of an image path, resolving existing symlinks like a chroot.

    Raises NotADirectory (naming the image path) if a component exists and is
    not a directory, as Go's MkdirAll fails with ENOTDIR in BuildKit.
    """
    host_path = resolve_in_root(rootfs, path)
    _mkdir_below(rootfs, host_path, chown, mode)
    return host_path


def _prepare(
    rootfs: Path, target: _Destination, chown: tuple[int, int] | None, dir_mode: int = DEFAULT_DIR_MODE
) -> Path:
    """Create what must exist before copying one source; return the resolved destination.

    As fsutil's Copy: a directory destination is created itself, otherwise
    only its parent.
    """
    mkdir_all(rootfs, target.path if target.is_dir else posixpath.dirname(target.path), chown, dir_mode)
    return resolve_in_root(rootfs, target.path)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _file_target(
    rootfs: Path, target: _Destination, name: str, chown: tuple[int, int] | None, dir_mode: int
) -> Path:
    """Where a non-directory source lands: inside the destination if that is an
    existing directory, else at the destination itself (parents created)."""
    dest = _prepare(rootfs, target, chown, dir_mode)
    st = _lstat(dest)
    if st is not None and stat.S_ISDIR(st.st_mode):
        dest = dest / name
    _mkdir_below(rootfs, dest.parent, chown, dir_mode)
    return dest


def _make_room_for_file(path: Path, display: str) -> None:
    """fsutil's ensureEmptyFileTarget: a file may replace a file or symlink, never a directory."""
    st = _lstat(path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        raise _Refused(f"cannot replace directory {display} with a file")
    os.unlink(path)


# --- copying from a context or rootfs ------------------------------------------


def _copy_selected(
    rootfs: Path,
    item: Selected,
    target: _Destination,
    chown: tuple[int, int] | None,
    chmod: Chmod | None,
    dir_mode: int,
) -> None:
    entries = item.entries()
    copier = _TreeCopier(rootfs, item, chown, chmod)
    if not item.is_dir:
        dest = _file_target(rootfs, target, item.name, chown, dir_mode)
        copier.copy_entry(entries[0], dest)
        copier.finish_directories()
        return
    dest = _prepare(rootfs, target, chown, dir_mode)
    st = _lstat(dest)
    if st is None:
        _mkdir_below(rootfs, dest, chown, dir_mode)
    elif not stat.S_ISDIR(st.st_mode):
        raise _Refused(f"cannot copy directory {item.source} to non-directory {target.text}")
    # The destination directory itself keeps its metadata (BuildKit only sets
    # it on a directory it creates while copying, never on the top one).
    for entry in entries[1:]:
        copier.copy_entry(entry, dest / entry.rel)
    copier.finish_directories()


class _TreeCopier:
    """Copies the entries of one source, keeping hardlinks among them."""

    def __init__(
        self, rootfs: Path, item: Selected, chown: tuple[int, int] | None, chmod: Chmod | None
    ):
        self.rootfs = rootfs
        self.item = item
        self.chown = chown
        self.chmod = chmod
        self.first_link: dict[tuple[int, int], Path] = {}
        self.directories: list[tuple[Entry, Path]] = []

    def display(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.rootfs))

    def copy_entry(self, entry: Entry, dest: Path) -> None:
        st = entry.st
        if stat.S_ISDIR(st.st_mode):
            existing = _lstat(dest)
            if existing is None:
                os.mkdir(dest, 0o700)  # final mode set after its children are in
            elif not stat.S_ISDIR(existing.st_mode):
                raise _Refused(
                    f"cannot copy directory {entry.rel or self.item.source}"
                    f" to non-directory {self.display(dest)}"
                )
            self.directories.append((entry, dest))
            return
        if stat.S_ISREG(st.st_mode):
            inode = (st.st_dev, st.st_ino)
            earlier = self.first_link.get(inode) if st.st_nlink > 1 else None
            if earlier is None:
                self.copy_file(entry, dest)
                if st.st_nlink > 1:
                    self.first_link[inode] = dest
                return
            _make_room_for_file(dest, self.display(dest))
            os.link(earlier, dest, follow_symlinks=False)
            self.apply_metadata(entry, dest)
            return
        _make_room_for_file(dest, self.display(dest))
        if stat.S_ISLNK(st.st_mode):
            os.symlink(entry.link or "", dest)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            os.mknod(dest, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev)
        elif stat.S_ISSOCK(st.st_mode):
            # no layer can carry a socket: BuildKit (fsutil) copies it as an empty file
            os.close(os.open(dest, _NEW_FILE, 0o600))
        else:
            return
        self.apply_metadata(entry, dest)

    def copy_file(self, entry: Entry, dest: Path) -> None:
        """A regular file: created, filled and given its metadata through one
        descriptor, so the destination path is looked up once (it is deep in
        an overlay mount, where each lookup is slow), twice if something is
        in the way."""
        with self.item.context.open_for_reading(entry) as src_fd:
            try:
                dst_fd = os.open(dest, _NEW_FILE, 0o600)
            except FileExistsError:
                _make_room_for_file(dest, self.display(dest))
                dst_fd = os.open(dest, _NEW_FILE, 0o600)
            try:
                _copy_fd_to_fd(src_fd, dst_fd)
                self.apply_metadata(entry, dst_fd)
            finally:
                os.close(dst_fd)

    def apply_metadata(self, entry: Entry, dest: Path | int) -> None:
        """fsutil's copyFileInfo: owner, then mode, then times; then xattrs.
        ``dest`` is the path, or a descriptor of the new file (then the
        calls need no lookup; a descriptor is never a symlink)."""
        st = entry.st
        owner = self.chown or self.item.context.owner(st)
        by_path = not isinstance(dest, int)
        os.chown(dest, owner[0], owner[1], follow_symlinks=not by_path)
        if not stat.S_ISLNK(st.st_mode):
            mode = stat.S_IMODE(st.st_mode) if self.chmod is None else self.chmod.apply(st.st_mode)
            os.chmod(dest, mode)  # after chown, which clears setuid/setgid
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=not by_path)
        for name, value in entry.xattrs:
            try:
                os.setxattr(dest, name, value, follow_symlinks=not by_path)
            except OSError:
                pass  # best effort, as BuildKit's xattr error handler

    def finish_directories(self) -> None:
        # Children first, so writing into a directory does not change its mtime afterwards.
        for entry, dest in reversed(self.directories):
            self.apply_metadata(entry, dest)
        self.directories.clear()


def _copy_file_data(source: Path, dest: Path) -> None:
    """Copy a file of imgbuild's own (a download) to a new file ``dest``."""
    src_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dst_fd = os.open(dest, _NEW_FILE, 0o600)
        try:
            _copy_fd_to_fd(src_fd, dst_fd)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def _copy_fd_to_fd(src_fd: int, dst_fd: int) -> None:
    size = os.fstat(src_fd).st_size
    offset = 0
    while offset < size:
        sent = os.sendfile(dst_fd, src_fd, offset, min(size - offset, 1 << 30))
        if sent == 0:
            break
        offset += sent


# --- single files: URLs and heredocs --------------------------------------------


def _finish_single_file(
    dest: Path,
    mode: int,
    mtime: float | None,
    chown: tuple[int, int] | None,
    chmod: Chmod | None,
) -> None:
    owner = chown or (0, 0)
    os.chown(dest, owner[0], owner[1], follow_symlinks=False)
    if chmod is not None:
        mode = chmod.apply(stat.S_IFREG | mode)
    os.chmod(dest, mode)
    if mtime is not None:
        os.utime(dest, (mtime, mtime), follow_symlinks=False)


def _place_file(
    rootfs: Path,
    target: _Destination,
    name: str,
    source: Path,
    mode: int,
    mtime: float | None,
    chown: tuple[int, int] | None,
    chmod: Chmod | None,
    dir_mode: int,
) -> None:
    dest = _file_target(rootfs, target, name, chown, dir_mode)
    _make_room_for_file(dest, "/" + str(dest.relative_to(rootfs)))
    _copy_file_data(source, dest)
    _finish_single_file(dest, mode, mtime, chown, chmod)


def _place_bytes(
    rootfs: Path,
    target: _Destination,
    name: str,
    content: bytes,
    chown: tuple[int, int] | None,
    chmod: Chmod | None,
    dir_mode: int,
) -> None:
    dest = _file_target(rootfs, target, name, chown, dir_mode)
    _make_room_for_file(dest, "/" + str(dest.relative_to(rootfs)))
    fd = os.open(dest, _NEW_FILE, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(content)
    _finish_single_file(dest, HEREDOC_MODE, None, chown, chmod)


# --- ADD: local tar archives (extracted by imgbuild.layer.untar) ----------------


def _open_raw(source: Path | Selected) -> BinaryIO:
    """A context source is opened through its context (no symlink followed,
    regular files only); a plain path is one of the caller's own."""
    if isinstance(source, Selected):
        return os.fdopen(source.open_file(), "rb")
    return open(source, "rb")


def archive_compression(path: Path | Selected) -> str | None:
    """If ``path`` is a tar archive ADD would extract, its compression
    ("none", "gzip", "bzip2", "xz", "zstd"); else None (see ``untar``)."""
    try:
        if isinstance(path, Path) and not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        from imgbuild.layer import untar  # tar code loads only for ADD of a local file

        with _open_raw(path) as raw:
            return untar.archive_compression(raw)
    except OSError:
        return None


def _extract_archive(
    rootfs: Path,
    item: Selected | Fetched,
    target: _Destination,
    chown: tuple[int, int] | None,
) -> None:
    dest = resolve_in_root(rootfs, target.path)
    _mkdir_below(rootfs, dest, chown)
    name = _source_text(item)
    if not stat.S_ISDIR(os.lstat(dest).st_mode):
        raise _Refused(f"cannot extract {name} into non-directory {target.text}")
    from imgbuild.layer import untar

    try:
        with _open_raw(item if isinstance(item, Selected) else item.path) as raw:
            untar.untar(raw, dest, chown=chown, source=name)
    except UntarError as problem:
        raise _Refused(str(problem)) from None

"""The build context as a RUN bind mount shows it: only what .dockerignore lets through.

BuildKit never transfers ignored files, so a ``RUN --mount=type=bind`` of the
context must not see them. A view is a directory in the store's tmp/ with each
selected source at its path as written: directories bind-mounted from the
descriptor the context opened without following symlinks, other entries
hard-linked (or copied, or made again with ``mknod``) through their checked
descriptors, never by path string and never opened if special.
"""

from __future__ import annotations

import os
import shutil
import stat
from contextlib import ExitStack, contextmanager
from pathlib import Path

from imgbuild.context.source import BuildContext
from imgbuild.gopath import go_clean
from imgbuild.store import Store, remove_tree


def context_view_opener(store: Store, context: BuildContext, sources: dict[str, list]):
    """The context as a bind mount must show it: without what .dockerignore excludes.

    BuildKit never transfers ignored files, so a RUN must not see them (they
    are not in the cache key either). Without ignore patterns each source
    is bind-mounted into the view from the descriptor the context opened
    without following symlinks, so a directory swapped for a symlink after
    the check cannot redirect the mount; with them, a tree of hard links
    (copies across file systems) of exactly the selected entries. Either
    way each source is at its path as written, where the bind mount looks.
    """

    @contextmanager
    def opener():
        view = store.make_temp_dir("context-")
        try:
            if not context.ignore:
                with _pinned_sources(context, sources, view):
                    yield view
                return
            for source, selections in sources.items():
                target = view / go_clean("/" + source).lstrip("/")
                for selected in selections:
                    _link_entries(selected.context, selected.entries(), target)
            yield view
        finally:
            remove_tree(view)

    return opener


@contextmanager
def _pinned_sources(context: BuildContext, sources: dict[str, list], view: Path):
    """Bind each directory source onto its path in ``view`` (see the opener above);
    link any other source there through its checked descriptor.

    A file is linked, not bind-mounted: a `rw` bind of a file is an overlay of
    its parent directory, and overlayfs does not see mounts inside a lowerdir.
    """
    with ExitStack() as mounts:
        for source, selections in sources.items():
            target = view / go_clean("/" + source).lstrip("/")
            for selected in selections:
                with context.object_at(selected.relpath) as (fd, st):
                    if not stat.S_ISDIR(st.st_mode):
                        _link_entries(selected.context, selected.entries(), target)
                        continue
                    target.mkdir(parents=True, exist_ok=True)
                    from imgbuild.sandbox.overlay import bind_mounted  # only when a view is mounted

                    mounts.enter_context(bind_mounted(f"/proc/self/fd/{fd}", target))
        yield


def _link_entries(context: BuildContext, entries, target: Path) -> None:
    """Recreate context entries under ``target``: dirs, symlinks, other files as hard links.

    A file is linked through the descriptor the context opened and checked
    (never by its path string, which a swapped directory could redirect)."""
    for entry in entries:
        path = target / entry.rel if entry.rel else target
        mode = entry.st.st_mode
        if stat.S_ISDIR(mode):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, stat.S_IMODE(mode))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):
            continue  # two bind mounts of overlapping sources: linked once
        if stat.S_ISLNK(mode):
            os.symlink(entry.link or "", path)
        elif stat.S_ISREG(mode):
            with context.open_path(entry) as path_fd:
                try:
                    os.link(f"/proc/self/fd/{path_fd}", path, follow_symlinks=True)
                    continue
                except OSError:  # another file system
                    pass
            _copy_entry_file(context, entry, path)
        else:
            # A FIFO or device node: linked (through the checked O_PATH
            # descriptor, which does not open it) or made again, never opened,
            # so the view shows it as the context does and only the step opens it.
            with context.open_path(entry) as path_fd:
                try:
                    os.link(f"/proc/self/fd/{path_fd}", path, follow_symlinks=True)
                except OSError:
                    os.mknod(path, mode, entry.st.st_rdev)


def _copy_entry_file(context: BuildContext, entry, path: Path) -> None:
    with context.open_for_reading(entry) as src_fd, open(path, "xb") as out:
        with os.fdopen(os.dup(src_fd), "rb") as source:
            shutil.copyfileobj(source, out)
    os.chmod(path, stat.S_IMODE(entry.st.st_mode))
    os.utime(path, ns=(entry.st.st_atime_ns, entry.st.st_mtime_ns))

"""overlayfs mounts of snapshot stacks, and cleaning up mounts we own.

A step's root filesystem is an overlay: the parent layers' extracted snapshots
are the lowerdirs (top-most first, as overlayfs wants them) and a fresh, empty
upperdir receives what the step changes.

The mount is made from this process with mount(2), every directory named by
a descriptor, ``/proc/self/fd/N``: short names, whatever the store's path
(commas or colons in it cannot break the option string), and no mount(8)
process per step.

Deep images: the kernel takes mount options as one page (4096 bytes), so
past ~200 layers even those names do not fit (and 120 absolute snapshot
paths would not either). Then, like Docker's overlay2 driver
(its ``l/`` directory of short symlinks) we make a private directory, beside
the work dir, of short symlinks ``0``, ``1``, ... pointing at the lowerdirs
(and ``u``, ``w`` for the upper and work dirs) and run mount(8) with that directory as its working
directory, passing only those relative names. overlayfs resolves the paths once
at mount time, so this works on any kernel, needs no syscall numbers, keeps the
calling process's working directory alone (builds run steps in threads), and
avoids commas or colons in store paths breaking the option string. The newer
``fsconfig(..., "lowerdir+", ...)`` API would avoid the symlinks but needs
Linux 6.8 and raw syscalls through ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from imgbuild.errors import Interrupted, SandboxError
from imgbuild.store.mounts import MNT_DETACH, mount_points, remove_tree, umount2

MAX_LOWERDIRS = 500  # overlayfs's own limit on the depth of a stack (OVL_MAX_STACK)
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")

_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def mount_overlay(
    lowerdirs: list[Path], upperdir: Path, workdir: Path, target: Path
) -> Iterator[Path]:
    """Mount an overlay of ``lowerdirs`` (top-most first) and ``upperdir`` on ``target``.

    Yields the (absolute) mount point and always unmounts it on exit, also when
    the body raises or is interrupted. No lowerdirs (``FROM scratch``) is fine:
    overlayfs needs at least one, so an empty directory stands in.
    ``upperdir``, ``workdir`` (same filesystem as ``upperdir``) and ``target``
    are created if missing.
    """
    if len(lowerdirs) > MAX_LOWERDIRS:
        raise SandboxError(
            f"an image of {len(lowerdirs)} layers is too deep: overlayfs stacks at most "
            f"{MAX_LOWERDIRS} layers; squash some of them"
        )
    for lowerdir in lowerdirs:
        if not Path(lowerdir).is_dir():
            raise SandboxError(f"snapshot directory {lowerdir} is missing; run `imgbuild fsck`")
    for directory in (upperdir, workdir, target):
        Path(directory).mkdir(parents=True, exist_ok=True)
    target = Path(target).resolve()

    mounts_before = _count_mounts_at(target)
    links = None
    try:
        if not _mount_by_descriptors(lowerdirs, Path(upperdir), Path(workdir), target):
            # Beside the work dir, that is in the caller's scratch space (in a store,
            # this process's owner directory): a kill -9 leaves it where the next
            # start's sweep removes it, never in the system's /tmp.
            links = Path(tempfile.mkdtemp(dir=Path(workdir).parent, prefix="overlay-links-"))
            options = _make_short_links(links, lowerdirs, Path(upperdir), Path(workdir))
            _run_mount(options, target, cwd=links)
        yield target
    except BaseException:
        # Keep the original error; a busy mount is still detached.
        finish_despite_interrupts(lambda: _release(target, mounts_before, links, report_busy=False))
        raise
    _release(target, mounts_before, links, report_busy=True)
    _clear_volatile_mark(Path(workdir))


# The upperdir must be the whole diff: redirects and metacopy-only entries
# point into lower layers and would make an incomplete layer tar.
_NO_REDIRECTS = "redirect_dir=off,metacopy=off"
# No sync of the whole upper file system when the overlay is unmounted, and
# sync and fsync in a step do nothing (as Buildah mounts its build
# containers). An upperdir that becomes a layer's snapshot is synced when it
# is committed (builder/rootfs.commit_directory), beside the layer's write;
# every other one is thrown away. Linux 5.10 and later; an older kernel
# refuses the option (EINVAL), and its overlays are mounted without it.
_VOLATILE = ",volatile"
_volatile_refused = False  # the kernel said EINVAL to it once: not asked again
_MAX_OPTIONS = 4000  # the kernel copies one page of mount options
_MAX_DESCRIPTOR_LAYERS = 200  # "/proc/self/fd/NNN:" is 18 bytes
_MS_BIND = 0x1000
_MS_REC = 0x4000
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


@contextmanager
def bind_mounted(source: str, target: Path) -> Iterator[Path]:
    """Bind ``source`` (recursively) onto ``target``, from this process.

    mount(2) is called here rather than by mount(8) so that ``source`` may
    be ``/proc/self/fd/N``: the mount then shows exactly the object that
    descriptor holds, whatever its path has become since it was opened.
    """
    if _libc.mount(os.fsencode(source), os.fsencode(target), None, _MS_BIND | _MS_REC, None) != 0:
        error = ctypes.get_errno()
        raise SandboxError(f"cannot bind-mount {source} on {target}: {os.strerror(error)}")
    try:
        yield target
    finally:
        finish_despite_interrupts(lambda: _unmount(target))


def finish_despite_interrupts(cleanup: Callable[[], None]) -> None:
    """Run an idempotent cleanup to its end even if another interrupt arrives.

    A second Ctrl-C (or SIGTERM turned into an exception) during the cleanup of
    the first must not leave a mount or a container behind. Nothing is lost:
    the caller is already propagating the first interrupt.
    """
    while True:
        try:
            cleanup()
            return
        except (KeyboardInterrupt, Interrupted):
            continue


def _release(target: Path, mounts_before: int, links: Path | None, *, report_busy: bool) -> None:
    try:
        # Counted rather than remembered: an interrupt may land after mount(8)
        # mounted but before we knew it had.
        if _count_mounts_at(target) > mounts_before:
            _unmount(target)
    except SandboxError:
        if report_busy:
            raise
    finally:
        if links is not None:
            shutil.rmtree(links, ignore_errors=True)


def _mount_by_descriptors(lowerdirs: list[Path], upperdir: Path, workdir: Path, target: Path) -> bool:
    """mount(2) from this process, each directory named ``/proc/self/fd/N``; False
    (nothing mounted) when the options would not fit in the kernel's one page.

    The short names need no symlink directory and no mount(8) process (a few
    ms a step); overlayfs resolves them at mount time, so closing the
    descriptors afterwards changes nothing. A stack of more than ~200 layers
    takes the symlink way.
    """
    if not lowerdirs:
        return False  # FROM scratch: the symlink way brings the empty lowerdir overlayfs needs
    if len(lowerdirs) > _MAX_DESCRIPTOR_LAYERS:
        return False  # their names would not fit; and not hundreds of descriptors at once
    directories = [Path(lowerdir) for lowerdir in lowerdirs] + [upperdir, workdir]
    fds: list[int] = []
    try:
        for directory in directories:
            fds.append(os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        names = [f"/proc/self/fd/{fd}" for fd in fds]
        options = (
            f"lowerdir={':'.join(names[:-2])},upperdir={names[-2]},workdir={names[-1]},"
            + _NO_REDIRECTS
        )
        if len(options) + len(_VOLATILE) >= _MAX_OPTIONS:
            return False
        error = _mount_overlay_syscall(target, options + _volatile_option())
        if error == errno.EINVAL and not _volatile_refused:
            error = _mount_overlay_syscall(target, options)
            _note_volatile_refused(error)
        if error:
            raise SandboxError(
                f"cannot mount the overlay on {target}: {os.strerror(error)} "
                "(the kernel log, `dmesg | tail`, usually says why)"
            )
        return True
    finally:
        for fd in fds:
            os.close(fd)


def _clear_volatile_mark(workdir: Path) -> None:
    """After a clean unmount: the mark a volatile mount leaves in its work dir
    (``work/incompat/volatile``), which makes overlayfs refuse these upper and
    work dirs for good (after a crash their contents are not to be trusted).
    This process unmounted them, so they may be mounted again (a test's
    sandbox does; the kernel's overlayfs.rst allows it)."""
    try:
        remove_tree(workdir / "work" / "incompat")  # volatile/dirty, made by the kernel
    except FileNotFoundError:
        pass  # mounted without the option (an older kernel)


def _mount_overlay_syscall(target: Path, options: str) -> int:
    """mount(2) of an overlay with these options; 0 or the errno."""
    if _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, options.encode()) != 0:
        return ctypes.get_errno()
    return 0


def _volatile_option() -> str:
    return "" if _volatile_refused else _VOLATILE


def _note_volatile_refused(error_without: int) -> None:
    """The mount failed with the option and succeeded without it: this kernel has no volatile overlays."""
    global _volatile_refused
    if not error_without:
        _volatile_refused = True


def _make_short_links(links: Path, lowerdirs: list[Path], upperdir: Path, workdir: Path) -> str:
    names = []
    for index, lowerdir in enumerate(lowerdirs):
        name = str(index)
        os.symlink(Path(lowerdir).resolve(), links / name)
        names.append(name)
    if not names:
        (links / "empty").mkdir()
        names.append("empty")
    os.symlink(upperdir.resolve(), links / "u")
    os.symlink(workdir.resolve(), links / "w")
    return f"lowerdir={':'.join(names)},upperdir=u,workdir=w,{_NO_REDIRECTS}"


def _run_mount(options: str, target: Path, cwd: Path) -> None:
    import subprocess  # only here: a COPY over descriptors mounts without it (~3 ms of imports)

    def mount(extra: str) -> subprocess.CompletedProcess:
        command = ["mount", "-t", "overlay", "overlay", "-o", options + extra, str(target)]
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True)

    result = mount(_volatile_option())
    if result.returncode != 0 and not _volatile_refused:
        # mount(8) says "wrong fs type, bad option, ..." for the option an old kernel refuses
        result = mount("")
        _note_volatile_refused(result.returncode)
    if result.returncode != 0:
        raise SandboxError(
            f"cannot mount the overlay on {target}: {result.stderr.strip()} "
            "(the kernel log, `dmesg | tail`, usually says why)"
        )


def _unmount(target: Path) -> None:
    """Unmount ``target``; if it is busy, detach it lazily and report that."""
    error = umount2(target, 0)
    if error == 0:
        return
    if error == errno.EBUSY and umount2(target, MNT_DETACH) == 0:
        raise SandboxError(
            f"{target} was still in use when the step ended; it was detached lazily "
            "(a process of the build may have outlived its step)"
        )
    raise SandboxError(f"cannot unmount {target}: {os.strerror(error)}")


def _count_mounts_at(target: Path) -> int:
    point = os.path.realpath(target)
    return sum(1 for mounted in mount_points() if mounted == point)


def prune_copied_up_dirs(upperdir: Path, lowerdirs: list[Path]) -> list[str]:
    """Remove directories from ``upperdir`` that change nothing in the merged view.

    overlayfs copies a lower directory up as soon as anything is created in it,
    even if that is removed again, as the sandbox does with runtime mount
    stubs (``/etc/hosts`` in an image without one). Such a directory, empty in
    the upperdir, not opaque, and with the same mode, owner, mtime and xattrs as
    the lower directory it shadows, would add a no-op entry to the layer.
    BuildKit's differ skips these too. Call this after unmounting, before
    turning the upperdir into a layer. Returns the removed paths (relative).
    """
    removed = []
    gone: set[str] = set()  # directories removed below, which the walk listed before removing them
    top = os.fspath(upperdir)
    for directory, subdirs, files in os.walk(top, topdown=False):
        # Only an empty directory can go: the walk's own listing rules out
        # the others without a lookup (most of a big RUN layer's directories).
        if directory == top or files or any(os.path.join(directory, name) not in gone for name in subdirs):
            continue
        path = Path(directory)
        relative = path.relative_to(upperdir).as_posix()
        if any(path.iterdir()) or _is_opaque(path) or _is_redirected(path):
            continue
        if _opaque_ancestor(Path(upperdir), relative):
            continue
        shadowed = _lower_directory(lowerdirs, relative)
        if shadowed is not None and _same_directory_metadata(path, shadowed):
            _rmdir_keeping_parent_times(path)
            removed.append(relative)
            gone.add(directory)
    return removed


def _rmdir_keeping_parent_times(path: Path) -> None:
    # The parent may be a no-op copy too; removing an entry must not make it look changed.
    parent = os.lstat(path.parent)
    path.rmdir()
    os.utime(path.parent, ns=(parent.st_atime_ns, parent.st_mtime_ns), follow_symlinks=False)


def _lower_directory(lowerdirs: list[Path], relative: str) -> Path | None:
    """The directory the merged view of the lower stack shows at ``relative``, if any.

    Walks the path component by component as overlayfs does: a whiteout or a
    non-directory hides everything below it, an opaque directory hides the
    layers under its own layer.
    """
    layers = [Path(layer) for layer in lowerdirs]
    parts = relative.split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        visible = []
        for layer in layers:
            try:
                info = os.lstat(layer / prefix)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if not stat.S_ISDIR(info.st_mode):
                break  # a whiteout or a file hides this name in all layers below
            visible.append(layer)
            if _is_opaque(layer / prefix):
                break
        if not visible:
            return None
        layers = visible
    return layers[0] / relative


def _opaque_ancestor(upperdir: Path, relative: str) -> bool:
    parts = relative.split("/")[:-1]
    return any(_is_opaque(upperdir.joinpath(*parts[:depth])) for depth in range(1, len(parts) + 1))


def _is_opaque(path: Path) -> bool:
    return _xattr(path, "trusted.overlay.opaque") == b"y"


def _is_redirected(path: Path) -> bool:
    return _xattr(path, "trusted.overlay.redirect") is not None


def _xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _same_directory_metadata(upper: Path, lower: Path) -> bool:
    a, b = os.lstat(upper), os.lstat(lower)
    same_stat = (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns) == (
        b.st_mode,
        b.st_uid,
        b.st_gid,
        b.st_mtime_ns,
    )
    return same_stat and _user_xattrs(upper) == _user_xattrs(lower)


def _user_xattrs(path: Path) -> dict[str, bytes]:
    """Extended attributes, without the ones overlayfs keeps for itself."""
    values = {}
    for name in os.listxattr(path, follow_symlinks=False):
        if not name.startswith(_OVERLAY_XATTRS):
            values[name] = os.getxattr(path, name, follow_symlinks=False)
    return values

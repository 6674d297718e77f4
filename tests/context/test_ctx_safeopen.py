"""safeopen and the context's reads: no symlink followed, what was checked is what is read.

Both resolvers run: openat2 (this kernel has it) and the component walk
used where it does not.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest

from imgbuild import safeopen
from imgbuild.context.dockerignore import IgnoreMatcher
from imgbuild.context.source import BuildContext
from imgbuild.errors import ContextError


@pytest.fixture(params=["openat2", "walk"], autouse=True)
def resolver(request, monkeypatch):
    if request.param == "walk":
        monkeypatch.setattr(safeopen, "openat2_works", False)
    else:
        assert safeopen._openat2_available(), "this kernel has openat2 (Linux 5.6+)"
    return request.param


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "file").write_bytes(b"inside\n")
    host = tmp_path / "host"
    (host / "b").mkdir(parents=True)
    (host / "b" / "file").write_bytes(b"HOST\n")
    (root / "up").symlink_to(host)
    (root / "a" / "rel").symlink_to("b")
    return root


def _open(root, relpath, flags=os.O_RDONLY):
    root_fd = safeopen.open_root(root)
    try:
        return safeopen.open_beneath(root_fd, relpath, flags)
    finally:
        os.close(root_fd)


def test_a_plain_path_opens(tree):
    fd = _open(tree, "a/b/file")
    try:
        assert os.read(fd, 100) == b"inside\n"
    finally:
        os.close(fd)


@pytest.mark.parametrize("relpath", ["up/b/file", "a/rel/file", "up", "a/rel"])
def test_a_symlink_anywhere_on_the_path_is_eloop(tree, relpath):
    with pytest.raises(OSError) as raised:
        _open(tree, relpath)
    assert raised.value.errno == errno.ELOOP


def test_a_last_component_symlink_opens_as_itself_with_o_path(tree):
    fd = _open(tree, "up", os.O_PATH)
    try:
        assert safeopen.read_link(fd) == str(tree.parent / "host")
    finally:
        os.close(fd)


@pytest.mark.parametrize("relpath", ["../host/b/file", "a/../../host", "/etc/passwd"])
def test_climbing_out_is_refused_before_the_kernel_sees_it(tree, relpath):
    with pytest.raises(OSError) as raised:
        _open(tree, relpath)
    assert raised.value.errno == errno.EXDEV


def test_a_fifo_is_never_opened_for_reading(tree):
    os.mkfifo(tree / "pipe")
    root_fd = safeopen.open_root(tree)
    try:
        with pytest.raises(safeopen.NotRegularFile, match="a FIFO"):
            safeopen.read_regular_file(root_fd, "pipe", 100)
    finally:
        os.close(root_fd)


def test_reads_are_capped(tree):
    (tree / "big").write_bytes(b"x" * 101)
    root_fd = safeopen.open_root(tree)
    try:
        assert safeopen.read_regular_file(root_fd, "a/b/file", 100) == b"inside\n"
        with pytest.raises(safeopen.TooLarge):
            safeopen.read_regular_file(root_fd, "big", 100)
    finally:
        os.close(root_fd)


def _file_entry(tree):
    context = BuildContext(tree, IgnoreMatcher([]))
    (selected,) = context.select("a/b/file")
    return context, selected.entries()[0]


def test_a_file_replaced_after_the_listing_is_not_read(tree):
    context, entry = _file_entry(tree)
    # Written beside it and renamed over it: a new inode (unlink first could reuse the number).
    (tree / "a" / "b" / "new").write_bytes(b"another inode\n")
    os.rename(tree / "a" / "b" / "new", tree / "a" / "b" / "file")
    with pytest.raises(ContextError, match="another file took its place"):
        with context.open_for_reading(entry):
            pass


def test_a_file_replaced_by_a_fifo_after_the_listing_does_not_hang(tree):
    context, entry = _file_entry(tree)
    (tree / "a" / "b" / "file").unlink()
    os.mkfifo(tree / "a" / "b" / "file")
    outcome = []

    def read():
        try:
            with context.open_for_reading(entry):
                outcome.append("opened")
        except ContextError as error:
            outcome.append(str(error))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert outcome and "changed while the build read it" in outcome[0]


def test_a_parent_swapped_for_a_symlink_after_the_listing_is_not_followed(tree):
    context, entry = _file_entry(tree)
    os.rename(tree / "a", tree / "a.real")
    (tree / "a").symlink_to(tree.parent / "host")
    with pytest.raises(ContextError, match="a symlink is now on its path"):
        with context.open_for_reading(entry):
            pass
    # a new selection sees the symlink and follows it inside the context (BuildKit's
    # rule): the absolute target names a path the context does not have
    with pytest.raises(ContextError, match="leads above the build context's root"):
        context.select("a/b/file")


def test_a_source_name_too_long_is_a_context_error_not_a_traceback(tree):
    context = BuildContext(tree, IgnoreMatcher([]))
    with pytest.raises(ContextError, match="File name too long"):
        context.select("x" * 300)

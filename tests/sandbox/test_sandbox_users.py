"""USER resolution against the image's own /etc/passwd and /etc/group, chroot-style paths."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from imgbuild.errors import BuildError
from imgbuild.safeopen import resolve_in_root
from imgbuild.sandbox.users import ResolvedUser, resolve_user

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
app:x:1000:1000:app user:/home/app:/bin/sh
broken:x:notanumber:0::/nowhere:/bin/sh
twin:x:1000:7:second entry for uid 1000:/twin:/bin/sh
"""
GROUP = """root:x:0:root
wheel:x:10:root,app
staff:x:50: app , other
app:x:1000:
"""


@pytest.fixture
def rootfs(tmp_path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


@pytest.mark.parametrize(
    "user, expected",
    [
        ("", ResolvedUser(0, 0, [0, 10], "/root")),
        ("root", ResolvedUser(0, 0, [0, 10], "/root")),
        ("0", ResolvedUser(0, 0, [0, 10], "/root")),
        ("app", ResolvedUser(1000, 1000, [10, 50], "/home/app")),
        ("1000", ResolvedUser(1000, 1000, [10, 50], "/home/app")),  # first entry wins
        ("daemon", ResolvedUser(1, 1, [], "/usr/sbin")),
        ("4242", ResolvedUser(4242, 0, [], "/")),  # a bare uid needs no passwd entry
        ("app:staff", ResolvedUser(1000, 50, [], "/home/app")),  # explicit group: no others
        ("app:50", ResolvedUser(1000, 50, [], "/home/app")),
        ("app:777", ResolvedUser(1000, 777, [], "/home/app")),
        ("4242:4343", ResolvedUser(4242, 4343, [], "/")),
        ("4242:staff", ResolvedUser(4242, 50, [], "/")),
        (":staff", ResolvedUser(0, 50, [], "/root")),
    ],
)
def test_resolve_user(rootfs, user, expected):
    assert resolve_user(rootfs, user) == expected


@pytest.mark.parametrize(
    "user, message",
    [
        ("nobody", "unable to find user nobody: no matching entries in passwd file"),
        ("broken", "unable to find user broken: no matching entries in passwd file"),
        ("app:nogroup", "unable to find group nogroup: no matching entries in group file"),
        ("-1", "uids and gids must be in range 0-2147483647"),
        ("1:2147483648", "uids and gids must be in range 0-2147483647"),
    ],
)
def test_resolve_user_errors(rootfs, user, message):
    with pytest.raises(BuildError, match=message):
        resolve_user(rootfs, user)


def test_without_passwd_and_group_files(tmp_path):
    empty = tmp_path / "scratch"
    empty.mkdir()
    assert resolve_user(empty, "") == ResolvedUser(0, 0, [], "/")
    assert resolve_user(empty, "1000:1000") == ResolvedUser(1000, 1000, [], "/")
    with pytest.raises(BuildError, match="unable to find user app: no matching entries"):
        resolve_user(empty, "app")
    with pytest.raises(BuildError, match="unable to find group staff"):
        resolve_user(empty, "0:staff")


def test_symlinked_passwd_never_leaves_the_rootfs(tmp_path):
    # A file on the "host" that an escaping symlink would reach.
    (tmp_path / "host-passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    os.symlink("/../../../host-passwd", root / "etc" / "passwd")
    with pytest.raises(BuildError, match="unable to find user evil"):
        resolve_user(root, "evil")
    # Inside the root the same link target is the image's own /host-passwd.
    (root / "host-passwd").write_text("inside:x:5:6::/in:/bin/sh\n")
    assert resolve_user(root, "inside") == ResolvedUser(5, 6, [], "/in")


def test_symlinked_etc_is_resolved_inside_the_rootfs(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "real-etc").mkdir(parents=True)
    (root / "real-etc" / "passwd").write_text("inside:x:5:6::/in:/bin/sh\n")
    os.symlink("../../outside", root / "etc")  # climbs to the root and stops there
    with pytest.raises(BuildError, match="unable to find user evil"):
        resolve_user(root, "evil")
    os.remove(root / "etc")
    os.symlink("real-etc/../real-etc", root / "etc")
    assert resolve_user(root, "inside").uid == 5


def test_fifo_as_passwd_is_an_error_not_a_hang(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    os.mkfifo(root / "etc" / "passwd")
    outcome = []

    def resolve():
        try:
            resolve_user(root, "app")
        except BuildError as error:
            outcome.append(str(error))

    worker = threading.Thread(target=resolve, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert len(outcome) == 1
    assert outcome[0].startswith("/etc/passwd in the image is not a regular file")


def test_symlink_loop_is_an_error(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    os.symlink("passwd", root / "etc" / "passwd")
    with pytest.raises(BuildError, match="too many levels of symbolic links"):
        resolve_user(root, "app")


def test_resolve_in_root(tmp_path):
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    os.symlink("/usr/lib", root / "lib")  # absolute: restarts at the root
    os.symlink("../../../../..", root / "usr" / "up")  # climbs no higher than the root
    os.symlink("lib", root / "usr" / "lib64")  # relative to its own directory
    os.symlink("/nowhere/deeper", root / "dangling")

    assert resolve_in_root(root, "/lib/x.so") == root / "usr" / "lib" / "x.so"
    assert resolve_in_root(root, "lib/x.so") == root / "usr" / "lib" / "x.so"
    assert resolve_in_root(root, "/usr/up/usr/up/etc") == root / "etc"
    assert resolve_in_root(root, "/usr/lib64/../../etc/./x") == root / "etc" / "x"
    assert resolve_in_root(root, "/../../..") == root
    assert resolve_in_root(root, "/") == root
    assert resolve_in_root(root, "/dangling/file") == root / "nowhere" / "deeper" / "file"
    assert resolve_in_root(root, "/lib", follow_last=False) == root / "lib"
    assert resolve_in_root(root, "/lib/", follow_last=False) == root / "lib"
    assert resolve_in_root(root, "/usr/lib64/a", follow_last=False) == root / "usr" / "lib" / "a"


def test_resolve_in_root_allows_forty_symlinks(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "target").mkdir()
    os.symlink("target", root / "l0")
    for index in range(1, 40):
        os.symlink(f"l{index - 1}", root / f"l{index}")
    assert resolve_in_root(root, "/l39/f") == root / "target" / "f"
    os.symlink("l39", root / "l40")
    with pytest.raises(BuildError, match="too many levels"):
        resolve_in_root(root, "/l40/f")

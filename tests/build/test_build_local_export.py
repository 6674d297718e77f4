"""``--output type=local`` writes into a directory of the host, as root, from a hostile image.

Real builds through the CLI: device nodes, setuid/setgid files and file
capabilities made by RUN steps; destinations that already hold symlinks out
to a sentinel tree of the host, which is hashed before and after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

# struct vfs_cap_data, revision 2: effective, CAP_NET_RAW (13) permitted.
SETCAP_SOURCE = r"""
#include <stdio.h>
#include <stdint.h>
#include <sys/xattr.h>

int main(int argc, char **argv) {
    uint32_t caps[5] = {0x02000001, 1u << 13, 0, 0, 0};
    for (int i = 1; i < argc; i++) {
        if (setxattr(argv[i], "security.capability", caps, sizeof caps, 0) != 0) {
            perror(argv[i]);
            return 1;
        }
    }
    return 0;
}
"""

SPECIAL_DOCKERFILE = """\
FROM busybox
COPY --chmod=755 setcap /setcap
RUN mkdir /devices && mknod /devices/mem c 1 1 && chmod 666 /devices/mem \\
    && mknod /devices/fifo p \\
    && cp /bin/busybox /suid && chmod 4755 /suid \\
    && cp /bin/busybox /sgid && chown 0:50 /sgid && chmod 2755 /sgid \\
    && cp /bin/busybox /capped && /setcap /capped && rm /setcap \\
    && mkdir /shared && chmod 2775 /shared \\
    && echo plain > /plain && chmod 640 /plain && chown 1000:50 /plain
"""

CAPABILITY = "security.capability"


@pytest.fixture(scope="module")
def setcap_program(tmp_path_factory) -> bytes:
    """A static program that sets a file capability (busybox has no setcap)."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is not installed (scripts/install-deps.sh --test installs it)")
    work = tmp_path_factory.mktemp("setcap")
    (work / "setcap.c").write_text(SETCAP_SOURCE)
    subprocess.run(
        ["gcc", "-static", "-O1", "-o", str(work / "setcap"), str(work / "setcap.c")],
        check=True,
        capture_output=True,
    )
    return (work / "setcap").read_bytes()


@pytest.fixture
def context(tmp_path) -> Path:
    """A build context directory; tests write their Dockerfile into it."""
    directory = tmp_path / "ctx"
    directory.mkdir()
    return directory


@pytest.fixture
def special_context(context, setcap_program) -> Path:
    (context / "Dockerfile").write_text(SPECIAL_DOCKERFILE)
    (context / "setcap").write_bytes(setcap_program)
    return context


def _export(imgbuild_cli, store, context: Path, output: str, *flags: str):
    completed = imgbuild_cli(store.root, "--output", output, *flags, str(context))
    assert "Traceback" not in completed.stderr, completed.stderr
    assert completed.returncode == 0, completed.stderr
    return completed


def _capability(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, CAPABILITY, follow_symlinks=False)
    except OSError:
        return None


def _tree_digest(root: Path) -> str:
    """Everything about a host tree that an escape could change: names, types, modes, owners, bytes."""
    digest = hashlib.sha256()
    for directory, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            digest.update(f"{os.path.relpath(path, root)} {info.st_mode:o} {info.st_uid}:{info.st_gid}\n".encode())
            if stat.S_ISREG(info.st_mode):
                digest.update(Path(path).read_bytes())
            elif stat.S_ISLNK(info.st_mode):
                digest.update(os.readlink(path).encode())
    info = os.lstat(root)
    digest.update(f". {info.st_mode:o} {info.st_uid}:{info.st_gid} {info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _sentinel(tmp_path: Path) -> Path:
    """A host directory that no export may touch."""
    sentinel = tmp_path / "sentinel"
    (sentinel / "etc").mkdir(parents=True)
    (sentinel / "etc" / "passwd").write_text("host:x:0:0:host account:/:/bin/sh\n")
    (sentinel / "file").write_text("host data\n")
    return sentinel


# --- device nodes, set-id bits, capabilities -----------------------------------------------


def test_by_default_no_device_node_setid_bit_or_capability_reaches_the_host(
    store, special_context, imgbuild_cli, tmp_path
):
    dest = tmp_path / "rootfs"
    completed = _export(imgbuild_cli, store, special_context, f"type=local,dest={dest}", "--progress", "plain")
    assert (dest / "devices").is_dir()
    assert not os.path.lexists(dest / "devices" / "mem")
    assert stat.S_ISFIFO(os.lstat(dest / "devices" / "fifo").st_mode)  # a FIFO gives nothing away
    for name in ("suid", "sgid", "capped"):
        info = os.lstat(dest / name)
        assert stat.S_ISREG(info.st_mode), name
        assert stat.S_IMODE(info.st_mode) == 0o755, (name, oct(info.st_mode))
    assert (os.lstat(dest / "sgid").st_uid, os.lstat(dest / "sgid").st_gid) == (0, 50)
    assert _capability(dest / "capped") is None
    assert (dest / "capped").read_bytes() == (dest / "suid").read_bytes()  # the data is all there
    # A setgid directory only passes its group on: it stays.
    assert stat.S_IMODE(os.lstat(dest / "shared").st_mode) == 0o2775
    plain = os.lstat(dest / "plain")
    assert (stat.S_IMODE(plain.st_mode), plain.st_uid, plain.st_gid) == (0o640, 1000, 50)
    warnings = [line for line in completed.stderr.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 2, completed.stderr
    assert "1 device node(s)" in warnings[0] and "/devices/mem" in warnings[0]
    assert "unsafe-special-files=true" in warnings[0]
    assert "cleared on 2 file(s)" in warnings[1] and "dropped from 1" in warnings[1]


def test_unsafe_special_files_makes_them_as_the_image_has_them(
    store, special_context, imgbuild_cli, tmp_path
):
    dest = tmp_path / "rootfs"
    completed = _export(
        imgbuild_cli, store, special_context, f"type=local,dest={dest},unsafe-special-files=true"
    )
    mem = os.lstat(dest / "devices" / "mem")
    assert stat.S_ISCHR(mem.st_mode) and os.major(mem.st_rdev) == 1 and os.minor(mem.st_rdev) == 1
    assert stat.S_IMODE(mem.st_mode) == 0o666
    suid = os.lstat(dest / "suid")
    assert (stat.S_IMODE(suid.st_mode), suid.st_uid) == (0o4755, 0)
    assert stat.S_IMODE(os.lstat(dest / "sgid").st_mode) == 0o2755
    assert _capability(dest / "capped") == bytes.fromhex("0100000200200000" + "00" * 12)
    assert "WARNING" not in completed.stderr


def test_unsafe_special_files_is_only_for_type_local(store, context, imgbuild_cli, tmp_path):
    (context / "Dockerfile").write_text("FROM busybox\n")
    completed = imgbuild_cli(
        store.root, "--output", f"type=tar,dest={tmp_path}/x.tar,unsafe-special-files=true", str(context)
    )
    assert completed.returncode == 2, completed.stderr
    assert "only for type=local" in completed.stderr


# --- what is already in the destination ------------------------------------------------------


def test_a_symlink_in_the_destination_is_replaced_not_followed(store, context, imgbuild_cli, tmp_path):
    sentinel = _sentinel(tmp_path)
    before = _tree_digest(sentinel)
    dest = tmp_path / "rootfs"
    dest.mkdir()
    (dest / "etc").symlink_to(sentinel / "etc")
    (dest / "file").symlink_to(sentinel / "file")
    (dest / "kept").write_text("the user's own file\n")
    (context / "Dockerfile").write_text(
        "FROM busybox\nRUN echo 'image:x:1:1::/:/bin/sh' > /etc/passwd && echo image > /file\n"
    )
    _export(imgbuild_cli, store, context, f"type=local,dest={dest}")
    assert _tree_digest(sentinel) == before
    assert stat.S_ISDIR(os.lstat(dest / "etc").st_mode)
    assert (dest / "etc" / "passwd").read_text() == "image:x:1:1::/:/bin/sh\n"
    assert stat.S_ISREG(os.lstat(dest / "file").st_mode)
    assert (dest / "file").read_text() == "image\n"
    assert (dest / "kept").read_text() == "the user's own file\n"  # merged, not wiped


def test_a_hardlink_in_the_destination_is_replaced_not_written_through(
    store, context, imgbuild_cli, tmp_path
):
    """A hard link to a host file, planted where the image has a file, is unlinked:
    the export writes a new file (O_EXCL), never into the linked inode."""
    sentinel = _sentinel(tmp_path)
    before = _tree_digest(sentinel)
    dest = tmp_path / "rootfs"
    (dest / "etc").mkdir(parents=True)
    os.link(sentinel / "etc" / "passwd", dest / "etc" / "passwd")
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo 'image:x:1:1::/:/bin/sh' > /etc/passwd\n")
    _export(imgbuild_cli, store, context, f"type=local,dest={dest}")
    assert _tree_digest(sentinel) == before
    assert os.lstat(sentinel / "etc" / "passwd").st_nlink == 1
    assert (dest / "etc" / "passwd").read_text() == "image:x:1:1::/:/bin/sh\n"


def test_the_destination_named_through_a_symlink_of_the_user_is_followed(
    store, context, imgbuild_cli, tmp_path
):
    """DIR itself is the user's path, resolved as named (docs/security.md, "Exports")."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "named").symlink_to(real)
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo here > /here\n")
    _export(imgbuild_cli, store, context, f"type=local,dest={tmp_path / 'named'}")
    assert (real / "here").read_text() == "here\n"
    assert os.path.islink(tmp_path / "named")


def test_a_second_export_replaces_the_symlinks_of_the_first(store, context, imgbuild_cli, tmp_path):
    """The first image leaves a symlink out to a host file; the second has a file at that path."""
    sentinel = _sentinel(tmp_path)
    before = _tree_digest(sentinel)
    (context / "Dockerfile").write_text(
        f"FROM busybox AS first\nRUN ln -s {sentinel}/file /target\n"
        "FROM first AS second\nRUN rm /target && echo second > /target\n"
    )
    dest = tmp_path / "rootfs"
    _export(imgbuild_cli, store, context, f"type=local,dest={dest}", "--target", "first")
    assert os.readlink(dest / "target") == f"{sentinel}/file"
    _export(imgbuild_cli, store, context, f"type=local,dest={dest}", "--target", "second")
    assert (sentinel / "file").read_text() == "host data\n"
    assert _tree_digest(sentinel) == before
    assert not os.path.islink(dest / "target") and (dest / "target").read_text() == "second\n"


def test_the_same_export_twice_gives_the_same_tree(store, context, imgbuild_cli, tmp_path, dir_tree):
    (context / "Dockerfile").write_text(
        "FROM busybox\nRUN mkdir -p /a/b && echo x > /a/b/f && ln -s ../a /a/b/up && chmod 700 /a\n"
    )
    dest = tmp_path / "rootfs"
    _export(imgbuild_cli, store, context, f"type=local,dest={dest}")
    first = dir_tree(dest)
    _export(imgbuild_cli, store, context, f"type=local,dest={dest}")
    assert dir_tree(dest) == first
    assert first["a/b/up"].target == "../a" and first["a"].mode == 0o700


def test_a_directory_in_the_way_of_a_file_is_replaced(store, context, imgbuild_cli, tmp_path):
    sentinel = _sentinel(tmp_path)
    before = _tree_digest(sentinel)
    dest = tmp_path / "rootfs"
    (dest / "thing" / "inner").mkdir(parents=True)
    (dest / "thing" / "inner" / "link").symlink_to(sentinel)
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo file > /thing\n")
    _export(imgbuild_cli, store, context, f"type=local,dest={dest}")
    assert (dest / "thing").read_text() == "file\n"
    assert _tree_digest(sentinel) == before


def test_an_entry_that_cannot_be_replaced_is_an_error_naming_it(store, context, imgbuild_cli, tmp_path):
    dest = tmp_path / "rootfs"
    (dest / "etc").mkdir(parents=True)
    (dest / "etc" / "passwd").write_text("immutable\n")
    subprocess.run(["chattr", "+i", str(dest / "etc" / "passwd")], check=True)
    try:
        (context / "Dockerfile").write_text("FROM busybox\nRUN echo image > /etc/passwd\n")
        completed = imgbuild_cli(store.root, "--output", f"type=local,dest={dest}", str(context))
    finally:
        subprocess.run(["chattr", "-i", str(dest / "etc" / "passwd")], check=True)
    assert completed.returncode == 1, completed.stderr
    assert "Traceback" not in completed.stderr
    assert f"cannot write the local output to {dest}: /etc/passwd: Operation not permitted" in completed.stderr
    assert (dest / "etc" / "passwd").read_text() == "immutable\n"


# --- what cp -a kept is kept -----------------------------------------------------------------


def test_hardlinks_times_and_holes_are_kept(store, context, imgbuild_cli, tmp_path):
    (context / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN mkdir /d && echo linked > /a && ln /a /b && ln /a /d/c && ln -s a /s && ln /s /d/s2 \\\n"
        "    && touch -d '2001-02-03 04:05:06' /a /d \\\n"
        "    && echo start > /sparse && truncate -s 1073741824 /sparse\n"
    )
    dest = tmp_path / "rootfs"
    _export(imgbuild_cli, store, context, f"type=local,dest={dest}")
    a, b, c = (os.lstat(dest / name) for name in ("a", "b", "d/c"))
    assert a.st_ino == b.st_ino == c.st_ino and a.st_nlink == 3
    s, s2 = os.lstat(dest / "s"), os.lstat(dest / "d" / "s2")
    assert stat.S_ISLNK(s.st_mode) and s.st_ino == s2.st_ino
    assert (dest / "d" / "c").read_text() == "linked\n"
    for path in (dest / "a", dest / "d"):
        assert os.lstat(path).st_mtime == 981173106, path
    sparse = os.lstat(dest / "sparse")
    assert sparse.st_size == 1 << 30 and sparse.st_blocks * 512 < 1 << 20
    with open(dest / "sparse", "rb") as stream:
        assert stream.read(6) == b"start\n"


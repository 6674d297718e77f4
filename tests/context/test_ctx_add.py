"""ADD: local tar archives (each compression, hostile ones) and URLs from a loopback server."""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import http.server
import io
import lzma
import os
import socket
import stat
import tarfile
import threading
import time

import pytest
import zstandard

from imgbuild.builder.copy import archive_compression, copy_into
from imgbuild.builder.fetch import fetch_url, url_filename
from imgbuild.context.dockerignore import IgnoreMatcher
from imgbuild.context.source import BuildContext
from imgbuild.errors import BuildError

MTIME = 1_234_567_890

COMPRESSORS = {
    "none": lambda data: data,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


def tar_bytes(members):
    """members: list of (TarInfo fields dict, data or None)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            info.mtime = MTIME
            for key, value in fields.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return buffer.getvalue()


def sample_tar():
    return tar_bytes(
        [
            ({"name": "pkg", "type": tarfile.DIRTYPE, "mode": 0o750, "uid": 10, "gid": 20}, None),
            ({"name": "pkg/bin/tool", "mode": 0o4755, "uid": 1000, "gid": 1000}, b"#!tool\n"),
            ({"name": "pkg/link", "type": tarfile.SYMTYPE, "linkname": "bin/tool"}, None),
            (
                # tar writers repeat the target's owner and mode on a hardlink
                {
                    "name": "pkg/hard",
                    "type": tarfile.LNKTYPE,
                    "linkname": "pkg/bin/tool",
                    "mode": 0o4755,
                    "uid": 1000,
                    "gid": 1000,
                },
                None,
            ),
            ({"name": "pkg/fifo", "type": tarfile.FIFOTYPE, "mode": 0o640}, None),
        ]
    )


def context_with(tmp_path, name, data):
    root = tmp_path / "ctx"
    root.mkdir(exist_ok=True)
    (root / name).write_bytes(data)
    return BuildContext(root, IgnoreMatcher([]))


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


@pytest.mark.parametrize("compression", list(COMPRESSORS))
def test_add_extracts_each_archive_kind_detected_by_content(tmp_path, rootfs, compression):
    data = COMPRESSORS[compression](sample_tar())
    ctx = context_with(tmp_path, "payload.bin", data)  # the name says nothing
    assert archive_compression(ctx.root / "payload.bin") == compression
    copy_into(rootfs, ctx.select("payload.bin"), "/opt", is_add=True)
    pkg = rootfs / "opt" / "pkg"
    tool = pkg / "bin" / "tool"
    assert tool.read_bytes() == b"#!tool\n"
    st = os.lstat(tool)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4755, 1000, 1000)
    assert st.st_mtime == MTIME and st.st_nlink == 2
    assert os.lstat(pkg / "hard").st_ino == st.st_ino
    assert os.readlink(pkg / "link") == "bin/tool"
    assert stat.S_ISFIFO(os.lstat(pkg / "fifo").st_mode)
    pkg_st = os.lstat(pkg)
    assert (stat.S_IMODE(pkg_st.st_mode), pkg_st.st_uid, pkg_st.st_gid) == (0o750, 10, 20)
    assert pkg_st.st_mtime == MTIME  # set after its children were written
    # parents the archive implies but does not list are 0755 root
    assert stat.S_IMODE(os.lstat(pkg / "bin").st_mode) == 0o755


def test_copy_does_not_extract_and_add_chown_applies_to_entries(tmp_path, rootfs):
    data = gzip.compress(sample_tar())
    ctx = context_with(tmp_path, "app.tar.gz", data)
    copy_into(rootfs, ctx.select("app.tar.gz"), "/copied/")
    assert (rootfs / "copied" / "app.tar.gz").read_bytes() == data
    copy_into(rootfs, ctx.select("app.tar.gz"), "/added", is_add=True, chown=(7, 8))
    st = os.lstat(rootfs / "added" / "pkg" / "bin" / "tool")
    assert (st.st_uid, st.st_gid) == (7, 8)
    assert os.lstat(rootfs / "added")[4:6] == (7, 8)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("notes.tar", b"just text, not a tar\n" * 40),
        ("empty.tar", tar_bytes([])),  # no entry: BuildKit copies it as a file
        ("broken.tar.gz", b"\x1f\x8b\x08" + b"garbage" * 100),
    ],
)
def test_add_copies_files_that_are_not_archives(tmp_path, rootfs, name, data):
    ctx = context_with(tmp_path, name, data)
    assert archive_compression(ctx.root / name) is None
    copy_into(rootfs, ctx.select(name), "/dst/", is_add=True)
    assert (rootfs / "dst" / name).read_bytes() == data


def test_hostile_archive_absolute_paths_and_symlinks_stay_inside(tmp_path, rootfs):
    host = tmp_path / "host"
    host.mkdir()
    host_abs = str(host)
    data = tar_bytes(
        [
            ({"name": "/abs/file"}, b"abs"),
            ({"name": "/../dotdot-root"}, b"clamped"),
            ({"name": "evil", "type": tarfile.SYMTYPE, "linkname": host_abs}, None),
            ({"name": "evil/pwned"}, b"through the link"),
            ({"name": "hardabs", "type": tarfile.LNKTYPE, "linkname": "/abs/file"}, None),
        ]
    )
    ctx = context_with(tmp_path, "evil.tar", data)
    copy_into(rootfs, ctx.select("evil.tar"), "/dest", is_add=True)
    dest = rootfs / "dest"
    assert (dest / "abs" / "file").read_bytes() == b"abs"
    assert (dest / "dotdot-root").read_bytes() == b"clamped"
    assert os.readlink(dest / "evil") == host_abs  # kept as written ...
    assert os.listdir(host) == []  # ... but never followed out of the destination
    assert (dest / host_abs.lstrip("/") / "pwned").read_bytes() == b"through the link"
    assert os.lstat(dest / "hardabs").st_ino == os.lstat(dest / "abs" / "file").st_ino


@pytest.mark.parametrize(
    "member",
    [
        {"name": "../escape"},
        {"name": "a/../../escape"},
        {"name": "up", "type": tarfile.SYMTYPE, "linkname": "../../../escape"},
        {"name": "sub/up", "type": tarfile.SYMTYPE, "linkname": "../../escape"},
        {"name": "hard", "type": tarfile.LNKTYPE, "linkname": "../escape"},
    ],
)
def test_hostile_archive_climbing_out_is_confined(tmp_path, rootfs, member):
    """As BuildKit (Docker's Untar in a chroot of the destination): ``..`` above the
    destination is the destination; a symlink is stored as written."""
    data = tar_bytes([(dict(member), b"x" if member.get("type") is None else None)])
    ctx = context_with(tmp_path, "evil.tar", data)
    before = sorted(os.listdir(tmp_path))
    try:
        copy_into(rootfs, ctx.select("evil.tar"), "/deep/dest", is_add=True)
    except BuildError as error:  # the hardlink's target, dest/escape, is not there
        assert member.get("type") == tarfile.LNKTYPE, error
    assert sorted(os.listdir(tmp_path)) == before
    assert not (rootfs / "deep" / "escape").exists()
    assert not (rootfs / "escape").exists()
    dest = rootfs / "deep" / "dest"
    if member.get("type") is None:
        assert (dest / "escape").read_bytes() == b"x"
    elif member.get("type") == tarfile.SYMTYPE:
        assert os.readlink(dest / member["name"]) == member["linkname"]


# --- URLs ---------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def web(tmp_path):
    """A plain HTTP server on 127.0.0.1 (free port) serving a temp directory."""
    served = tmp_path / "www"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_add_url_with_good_checksum(tmp_path, rootfs, web):
    served, base = web
    payload = gzip.compress(sample_tar())  # a remote archive is not extracted
    (served / "app.tar.gz").write_bytes(payload)
    os.utime(served / "app.tar.gz", (MTIME, MTIME))
    checksum = "sha256:" + hashlib.sha256(payload).hexdigest()
    fetched = fetch_url(f"{base}/app.tar.gz", tmp_path / "downloads", checksum=checksum)
    assert fetched.digest == checksum
    assert (fetched.filename, fetched.size, fetched.mtime) == ("app.tar.gz", len(payload), MTIME)
    copy_into(rootfs, [fetched], "/srv/", is_add=True)
    target = rootfs / "srv" / "app.tar.gz"
    assert target.read_bytes() == payload
    st = os.lstat(target)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o600, 0, 0, MTIME)
    # to a path without "/" it is that file; --chmod/--chown apply
    copy_into(rootfs, [fetched], "/srv/renamed", is_add=True, chmod=0o644, chown=(1, 2))
    st = os.lstat(rootfs / "srv" / "renamed")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o644, 1, 2)


def test_add_url_with_bad_checksum_fails_and_leaves_nothing(tmp_path, web):
    served, base = web
    (served / "file.txt").write_bytes(b"real content")
    downloads = tmp_path / "downloads"
    wrong = "sha256:" + hashlib.sha256(b"other content").hexdigest()
    with pytest.raises(BuildError, match="checksum mismatch") as error:
        fetch_url(f"{base}/file.txt", downloads, checksum=wrong)
    assert f"{base}/file.txt" in str(error.value)
    assert os.listdir(downloads) == []
    with pytest.raises(BuildError, match="invalid checksum"):
        fetch_url(f"{base}/file.txt", downloads, checksum="md5:abc")


def test_add_url_http_errors_and_unreachable_servers(tmp_path, web):
    _, base = web
    with pytest.raises(BuildError, match="HTTP 404"):
        fetch_url(f"{base}/missing", tmp_path / "dl")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(BuildError, match="cannot download"):
        fetch_url(f"http://127.0.0.1:{closed_port}/x", tmp_path / "dl", timeout=5)
    assert os.listdir(tmp_path / "dl") == []


def test_add_url_without_last_modified_and_digest_without_checksum(tmp_path, web):
    served, base = web
    (served / "data").write_bytes(b"abc")
    before = time.time() - 5
    fetched = fetch_url(f"{base}/data", tmp_path / "dl")
    assert fetched.digest == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert fetched.mtime is not None and fetched.mtime > before  # the server sends Last-Modified


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://example.com/a/b/file.tar.gz", "file.tar.gz"),
        ("https://example.com/a/dir/", "dir"),
        ("https://example.com", "__unnamed__"),
        ("https://example.com/", "__unnamed__"),
        ("https://example.com/x%20y.txt?query=1#frag", "x y.txt"),
    ],
)
def test_url_filename_like_buildkit(url, name):
    assert url_filename(url) == name

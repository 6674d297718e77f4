"""Contexts that reach out: ``..``, absolute paths, symlinks out, special files, ignore tricks.

Every build is FROM scratch (no RUN), so each case is a real CLI build that ends
refused or with an image in which no byte of a host sentinel file appears.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from advtools import attempt_build


def _file(ctx: Path, name: str = "f", data: bytes = b"ok\n") -> None:
    (ctx / name).parent.mkdir(parents=True, exist_ok=True)
    (ctx / name).write_bytes(data)


def _link(ctx: Path, name: str, target: str) -> None:
    (ctx / name).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, ctx / name)


def _relative_to(ctx: Path, target: Path) -> str:
    return os.path.relpath(target, ctx)


def _socket(ctx: Path, name: str) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(ctx / name))
    server.close()


# (id, Dockerfile (SENTINEL is replaced by the sentinel path), setup(ctx, sentinel))
CASES = [
    ("copy-dotdot", "COPY ../outside /x", lambda c, s: None),
    ("copy-dotdot-deep", "COPY ../../../../../../../SENTINEL/file /x", lambda c, s: None),
    ("copy-sub-dotdot", "COPY sub/../../outside /x", lambda c, s: _file(c, "sub/a")),
    ("copy-absolute-etc-passwd", "COPY /etc/passwd /x", lambda c, s: None),
    ("copy-absolute-sentinel", "COPY SENTINEL/file /x", lambda c, s: None),
    ("add-dotdot", "ADD ../outside /x", lambda c, s: None),
    ("add-absolute-sentinel", "ADD SENTINEL/passwd /x", lambda c, s: None),
    ("copy-glob-dotdot", "COPY ../* /x/", lambda c, s: None),
    ("symlink-file-absolute", "COPY l /x", lambda c, s: _link(c, "l", str(s / "file"))),
    ("symlink-file-relative", "COPY l /x", lambda c, s: _link(c, "l", _relative_to(c, s / "file"))),
    ("symlink-dir-absolute", "COPY l/inner /x", lambda c, s: _link(c, "l", str(s / "dir"))),
    ("symlink-dir-relative", "COPY l/inner /x", lambda c, s: _link(c, "l", _relative_to(c, s / "dir"))),
    ("symlink-dir-trailing", "COPY l/ /x/", lambda c, s: _link(c, "l", str(s / "dir"))),
    ("symlink-chain", "COPY a /x", lambda c, s: (_link(c, "a", "b"), _link(c, "b", "c"), _link(c, "c", str(s / "file")))),
    ("symlink-chain-dir", "COPY a/inner /x",
     lambda c, s: (_link(c, "a", "b"), _link(c, "b", _relative_to(c, s / "dir")))),
    ("symlink-in-subdir-up", "COPY d/l /x", lambda c, s: _link(c, "d/l", "../" + _relative_to(c, s / "file"))),
    ("symlink-whole-context", "COPY . /x/",
     lambda c, s: (_file(c), _link(c, "l", str(s / "file")), _link(c, "d", str(s / "dir")))),
    ("symlink-glob", "COPY l* /x/", lambda c, s: (_link(c, "l1", str(s / "file")), _link(c, "l2", str(s)))),
    ("symlink-to-proc-root", "COPY l/file /x", lambda c, s: _link(c, "l", f"/proc/self/root{s}")),
    ("symlink-loop", "COPY a /x", lambda c, s: (_link(c, "a", "b"), _link(c, "b", "a"))),
    ("symlink-to-dev-zero", "COPY z /x", lambda c, s: _link(c, "z", "/dev/zero")),
    ("fifo", "COPY p /x", lambda c, s: os.mkfifo(c / "p")),
    ("fifo-whole-context", "COPY . /x/", lambda c, s: (_file(c), os.mkfifo(c / "p"))),
    ("char-device", "COPY n /x", lambda c, s: os.mknod(c / "n", stat.S_IFCHR | 0o666, os.makedev(1, 3))),
    ("char-device-zero", "COPY z /x", lambda c, s: os.mknod(c / "z", stat.S_IFCHR | 0o666, os.makedev(1, 5))),
    ("char-device-context", "COPY . /x/",
     lambda c, s: (_file(c), os.mknod(c / "z", stat.S_IFCHR | 0o666, os.makedev(1, 5)))),
    ("block-device", "COPY b /x", lambda c, s: os.mknod(c / "b", stat.S_IFBLK | 0o600, os.makedev(7, 0))),
    ("socket", "COPY sock /x", lambda c, s: _socket(c, "sock")),
    ("socket-context", "COPY . /x/", lambda c, s: (_file(c), _socket(c, "sock"))),
    ("add-tar-symlink", "ADD l /x/", lambda c, s: _link(c, "l", str(s / "file"))),
    # .dockerignore and Dockerfile tricks
    ("dockerignore-symlink-out", "COPY . /x/",
     lambda c, s: (_file(c), _link(c, ".dockerignore", str(s / "passwd")))),
    ("dockerignore-fifo", "COPY . /x/", lambda c, s: (_file(c), os.mkfifo(c / ".dockerignore"))),
    ("dockerignore-dev-zero", "COPY . /x/", lambda c, s: (_file(c), _link(c, ".dockerignore", "/dev/zero"))),
    ("dockerignore-negate-dotdot", "COPY . /x/",
     lambda c, s: (_file(c), _file(c, ".dockerignore", b"*\n!../outside\n!" + str(s).encode() + b"/file\n"))),
    ("dockerignore-huge-pattern", "COPY . /x/",
     lambda c, s: (_file(c), _file(c, ".dockerignore", b"*" * 20_000 + b"\n" + b"**/" * 5000 + b"x\n" + b"[" * 5000 + b"\n"))),
    ("dockerignore-many-lines", "COPY . /x/",
     lambda c, s: (_file(c), _file(c, ".dockerignore", b"".join(b"p%d/**\n" % n for n in range(50_000))))),
    ("dockerignore-oversized", "COPY . /x/",
     lambda c, s: (_file(c), _file(c, ".dockerignore", b"#" * (64 << 20)))),
]

DOCKERFILE_CASES = [
    ("dockerfile-symlink-out", lambda c, s: _link(c, "Dockerfile", str(s / "passwd"))),
    ("dockerfile-symlink-relative-out", lambda c, s: _link(c, "Dockerfile", _relative_to(c, s / "passwd"))),
    ("dockerfile-fifo", lambda c, s: os.mkfifo(c / "Dockerfile")),
    ("dockerfile-dev-zero", lambda c, s: _link(c, "Dockerfile", "/dev/zero")),
    ("dockerfile-dev-urandom", lambda c, s: _link(c, "Dockerfile", "/dev/urandom")),
    ("dockerfile-char-device", lambda c, s: os.mknod(c / "Dockerfile", stat.S_IFCHR | 0o666, os.makedev(1, 5))),
    ("dockerfile-directory", lambda c, s: (c / "Dockerfile").mkdir()),
    ("dockerfile-oversized", lambda c, s: _file(c, "Dockerfile", b"FROM scratch\n" + b"#" * (128 << 20))),
]


def _context(tmp_path: Path) -> Path:
    ctx = tmp_path / "deep" / "ctx"
    ctx.mkdir(parents=True)
    (tmp_path / "deep" / "outside").write_bytes(b"HOST-SENTINEL-7f3a9c outside the context\n")
    return ctx


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_context_reach_out(case, tmp_path, sentinel, adv_root, store):
    name, dockerfile, setup = case
    ctx = _context(tmp_path)
    setup(ctx, sentinel.path)
    if not (ctx / "Dockerfile").exists():
        (ctx / "Dockerfile").write_text("FROM scratch\n" + dockerfile.replace("SENTINEL", str(sentinel.path)) + "\n")
    attempt_build(adv_root, store, ctx, f"adv/ctx-{name}:1", timeout=20)


@pytest.mark.parametrize("case", DOCKERFILE_CASES, ids=[case[0] for case in DOCKERFILE_CASES])
def test_dockerfile_not_a_plain_file(case, tmp_path, sentinel, adv_root, store):
    name, setup = case
    ctx = _context(tmp_path)
    setup(ctx, sentinel.path)
    ran = attempt_build(adv_root, store, ctx, f"adv/df-{name}:1", timeout=20)
    assert "HOST-SENTINEL" not in ran.output, "a host file's content was printed"


def test_dockerignore_long_pattern_is_refused(tmp_path, sentinel, adv_root, store):
    """A .dockerignore line of 1 MiB of '*' took time quadratic in its length."""
    ctx = _context(tmp_path)
    _file(ctx)
    _file(ctx, ".dockerignore", b"*" * (1 << 20) + b"\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /x/\n")
    ran = attempt_build(adv_root, store, ctx, "adv/ctx-long-pattern:1", timeout=5)
    assert ran.returncode != 0 and "at most 4096" in ran.output


@pytest.mark.parametrize("where", ["dockerignore", "copy-source"])
def test_backtracking_pattern_is_linear(where, tmp_path, sentinel, adv_root, store):
    """``*a*a*a*a*a*a*a*a*a*b`` against a name of 200 ``a`` backtracked for hours
    in Python's re (Go's regexp, which Docker uses, never backtracks)."""
    ctx = _context(tmp_path)
    _file(ctx, "a" * 200)
    _file(ctx, "keep")
    pattern = "*a" * 12 + "*b"
    if where == "dockerignore":
        _file(ctx, ".dockerignore", pattern.encode() + b"\n")
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /x/\n")
    else:
        (ctx / "Dockerfile").write_text(f"FROM scratch\nCOPY {pattern} keep /x/\n")
    ran = attempt_build(adv_root, store, ctx, f"adv/ctx-backtrack-{where}:1", timeout=10)
    assert ran.returncode == 0, ran.output

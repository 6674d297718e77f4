"""Writes through symlinks the image itself holds: to ``/``, up with ``..``, to the host's paths.

The links point at the host sentinel tree's real path, so a write that follows
one on the host changes the sentinel (an escape); inside the image it must
resolve against the image's root. Reads through such links (``COPY --from``)
must not bring host bytes into the image.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from advtools import attempt_build


def _tar_with(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _up(n: int = 12) -> str:
    return "/".join([".."] * n)


def _setup(ctx: Path, links: dict[str, str]) -> None:
    (ctx / "f").write_bytes(b"pwned\n")
    (ctx / "d").mkdir()
    (ctx / "d" / "file").write_bytes(b"pwned too\n")
    (ctx / "a.tar").write_bytes(_tar_with("file", b"pwned by tar\n"))
    # COPY follows a source that is itself a symlink; the links of a copied
    # directory are copied as links: that is how they get into the image.
    (ctx / "links").mkdir()
    for name, target in links.items():
        (ctx / "links" / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, ctx / "links" / name)


# (id, links in the context (S is the sentinel path), Dockerfile after FROM)
SCRATCH_CASES = [
    ("root-link", {"esc": "/"}, "COPY links/ /\nCOPY f /esc/S/file"),
    ("link-to-sentinel", {"esc": "S"}, "COPY links/ /\nCOPY f /esc/pwn"),
    ("link-to-sentinel-overwrite", {"esc": "S/dir"}, "COPY links/ /\nCOPY f /esc/inner"),
    ("link-to-sentinel-file", {"esc": "S/file"}, "COPY links/ /\nCOPY f /esc"),
    ("link-to-sentinel-symlink", {"esc": "S/link"}, "COPY links/ /\nCOPY f /esc"),
    ("dotdot-link", {"up": _up()}, "COPY links/ /\nCOPY f /up/S/file"),
    ("dotdot-to-sentinel", {"esc": _up() + "S"}, "COPY links/ /\nCOPY f /esc/pwn"),
    ("nested-link", {"a/b": _up(3) + "S"}, "COPY links/ /\nCOPY f /a/b/pwn"),
    ("workdir-through-link", {"esc": "S"}, "COPY links/ /\nWORKDIR /esc\nCOPY f pwn"),
    ("workdir-mkdir-through-link", {"esc": "S"}, "COPY links/ /\nWORKDIR /esc/newdir\nCOPY f pwn"),
    ("workdir-proc-self-root", {}, "WORKDIR /proc/self/rootS\nCOPY f pwn"),
    ("link-to-proc-self-root", {"esc": "/proc/self/root"}, "COPY links/ /\nCOPY f /esc/S/pwn"),
    ("copy-into-proc-path", {}, "COPY f /proc/self/rootS/pwn"),
    ("add-through-link", {"esc": "S"}, "COPY links/ /\nADD f /esc/pwn"),
    ("add-tar-through-link", {"esc": "S"}, "COPY links/ /\nADD a.tar /esc/"),
    ("add-tar-over-sentinel-file", {"esc": "S/dir"}, "COPY links/ /\nADD a.tar /esc/"),
    ("copy-dir-through-link", {"esc": "S/dir"}, "COPY links/ /\nCOPY d/ /esc/"),
    ("chown-through-link", {"esc": "S"}, "COPY links/ /\nCOPY --chown=1234:1234 f /esc/file"),
    ("chmod-setuid-through-link", {"esc": "S"}, "COPY links/ /\nCOPY --chmod=4777 f /esc/setuid"),
    ("link-replaced-by-dir-copy", {"esc": "S"}, "COPY links/ /\nCOPY d /esc"),
    ("copy-from-stage-read-link", {"esc": "S"},
     "COPY links/ /\nFROM scratch\nCOPY --from=0 /esc/file /x"),
    ("copy-from-stage-read-dir-link", {"esc": "S/dir"},
     "COPY links/ /\nFROM scratch\nCOPY --from=0 /esc/ /x/"),
    ("copy-from-stage-read-root-link", {"esc": "/"},
     "COPY links/ /\nFROM scratch\nCOPY --from=0 /escS/file /x"),
    ("copy-from-stage-dotdot", {}, "COPY f /f\nFROM scratch\nCOPY --from=0 /../../../../S/file /x"),
]

# These need RUN (busybox and runc): the links are made inside the container.
RUN_CASES = [
    ("run-ln-root", "RUN ln -s / /escape\nCOPY f /escape/S/pwn"),
    ("run-ln-sentinel", "RUN ln -s S /escape\nCOPY f /escape/pwn"),
    ("run-ln-sentinel-workdir", "RUN ln -s S /escape\nWORKDIR /escape/sub\nCOPY f pwn"),
    ("run-ln-dotdot", f"RUN ln -s {_up()} /up\nCOPY f /up/S/file"),
    ("run-bind-context-link-rw", "RUN --mount=type=bind,source=links/esc,target=/m,rw touch /m/pwn"),
    ("run-bind-stage-link",
     "RUN ln -s S /l\nFROM busybox\nRUN --mount=type=bind,from=0,source=/l,target=/m,rw touch /m/pwn"),
    ("run-bind-context-dir-link-rw", "RUN --mount=type=bind,source=links,target=/m,rw touch /m/esc/pwn"),
    ("run-cache-mount-through-link", "RUN ln -s S /c\nRUN --mount=type=cache,target=/c/cache touch /c/cache/pwn"),
    ("run-tmpfs-through-link", "RUN ln -s S /t\nRUN --mount=type=tmpfs,target=/t/x touch /t/x/pwn"),
]


def _dockerfile(body: str, sentinel: Path, base: str) -> str:
    return f"FROM {base}\n" + body.replace("S", str(sentinel)) + "\n"


@pytest.mark.parametrize("case", SCRATCH_CASES, ids=[case[0] for case in SCRATCH_CASES])
def test_write_through_image_link(case, tmp_path, sentinel, adv_root, store):
    name, links, body = case
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    _setup(ctx, {link: target.replace("S", str(sentinel.path)) for link, target in links.items()})
    (ctx / "Dockerfile").write_text(_dockerfile(body, sentinel.path, "scratch"))
    attempt_build(adv_root, store, ctx, f"adv/dest-{name}:1", timeout=20)


@pytest.mark.parametrize("case", RUN_CASES, ids=[case[0] for case in RUN_CASES])
def test_write_through_link_made_by_run(case, tmp_path, sentinel, adv_root, store):
    name, body = case
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    _setup(ctx, {"esc": str(sentinel.path)})
    (ctx / "Dockerfile").write_text(_dockerfile(body, sentinel.path, "busybox"))
    attempt_build(adv_root, store, ctx, f"adv/run-{name}:1", timeout=40, memory=False)

"""What `imgbuild --version`, a fully cached build and a rebuild after one
file changed import (issue 12).

A warm no-op rebuild is mostly Python start-up and imports, so the modules a
cache hit does not use must stay unloaded: the registry client (requests,
urllib3, ssl), rich (also on a terminal: the tty display is our own),
zstandard, the archive code, the layer writer and extractor, and the sandbox
(overlayfs, runc). A rebuild that reruns one COPY loads the layer writer
and the overlay mount, but still no registry, runc, zstd or --chmod code,
nor logging, concurrent.futures or dockerfile-parse. Each command runs in a
fresh interpreter that writes ``sys.modules`` to a file when it exits.
Creating dataclasses is the biggest part of what imgbuild's own modules do
at import; the last test keeps that from growing by a signature docstring
per class. No time is measured here: bench/ reports speed.
"""

from __future__ import annotations

import ast
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from cli.clitools import MODULE_RECORDER as RECORDER
from imagetools import make_busybox_image, read_terminal, require_root_and_runc

from imgbuild.store import Store

REPO = Path(__file__).resolve().parents[2]


# A rebuild where one copied file changed runs that COPY and writes its
# layer (gzip, ISA-L) into the store, and nothing else.
NEVER_ON_A_COPY = (
    "requests",
    "urllib3",
    "rich",
    "ssl",
    "imgbuild.registry.client",
    "imgbuild.registry.auth",
    "imgbuild.registry.pull",
    "imgbuild.registry.push",
    "imgbuild.registry.sources",
    "imgbuild.http_session",
    "imgbuild.archive",
    "imgbuild.builder.export",
    "imgbuild.layer.extract",
    "imgbuild.layer.decompress",
    "imgbuild.layer.untar",
    "imgbuild.layer.tarread",
    "imgbuild.sandbox.runtime",
    "imgbuild.sandbox.runmounts",
    "imgbuild.sandbox.spec",
    "imgbuild.sandbox.cacerts",
    "imgbuild.sandbox.users",
    "imgbuild.cache.share",
    "imgbuild.cache.prune",
    "imgbuild.store.gc",
    "difflib",
    # the overlay is mounted by mount(2) on descriptors: no mount(8) process
    "subprocess",
    # no --chmod to parse
    "imgbuild.builder.copymode",
    # zstd layers only: zstandard loads platform, which compiles regexes
    "zstandard",
    "platform",
    # ~5 ms each: stages run on plain threads, nothing is logged, and the
    # Dockerfile's lines are split without dockerfile-parse (it loads logging)
    "concurrent.futures",
    "logging",
    "traceback",
    "dockerfile_parse",
)

# Prefixes a cache hit or --version has no use for: all of the above, and
# nothing is copied, written or run (no layer writer, no sandbox at all). (The
# reference parser imgbuild.registry.reference and imgbuild.layer.compression,
# which checks the flags, are cheap and used by every build.)
NEVER_ON_A_HIT = NEVER_ON_A_COPY + (
    "isal",
    "imgbuild.layer.write",
    "imgbuild.sandbox",
    "imgbuild.builder.copy",
    "imgbuild.cache.sharemounts",
    # ~2 ms: names only annotations use are imported under TYPE_CHECKING; the
    # front end (ClassVar) still loads it, and ISA-L's threaded gzip writer
    # for a layer of more than one block
    "typing",
    # its hmac and base64: the store's tokens are os.urandom's hex, as token_hex's
    "secrets",
)

# ISA-L's threaded gzip writer and what it loads: a layer of more than one
# block (1 MiB of tar) only.
LOADED_BY_THE_THREADED_GZIP = ("isal.igzip_threaded", "isal.igzip", "gzip", "typing")

DOCKERFILE = """\
FROM busybox:latest
ARG VERSION=1.0
ENV APP_HOME=/app VERSION=$VERSION
WORKDIR /app
COPY app/ ./
RUN echo built > /app/built.txt
COPY settings.conf /etc/app/settings.conf
USER 1000
CMD ["sh", "/app/main.sh"]
"""


def loaded_modules(tmp_path: Path, *args: str) -> tuple[set[str], subprocess.CompletedProcess]:
    out = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}"
    # limits no disk can pass, so a fuller disk does not bring in the prune
    env = dict(os.environ, PYTHONPATH=str(REPO), IMGBUILD_MAX_CACHE="100%", IMGBUILD_MIN_FREE="0%")
    process = subprocess.run(
        [sys.executable, "-c", RECORDER, str(out), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )
    return set(out.read_text().split("\n")), process


def unwanted(modules: set[str], never: tuple[str, ...] = NEVER_ON_A_HIT) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in never))


def test_version_imports_no_verb(tmp_path):
    modules, process = loaded_modules(tmp_path, "--version")
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("imgbuild ")
    assert unwanted(modules) == []
    assert not [m for m in modules if m.startswith(("imgbuild.cli.", "imgbuild.builder", "imgbuild.store"))]


def _store_and_context(tmp_path, store_root) -> tuple[Path, tuple[str, ...]]:
    """A store with busybox, a context of DOCKERFILE, and the CLI arguments building it."""
    require_root_and_runc()
    make_busybox_image(Store(store_root))
    context = tmp_path / "context"
    (context / "app").mkdir(parents=True)
    (context / "app" / "main.sh").write_text("echo app\n")
    (context / "settings.conf").write_text("mode=test\n")
    (context / "Dockerfile").write_text(DOCKERFILE)
    return context, ("--root", str(store_root), "build", "-t", "lazy:1", "--progress", "plain", str(context))


@pytest.mark.root
def test_fully_cached_build_imports_only_what_a_hit_needs(tmp_path, store_root):
    _context, build = _store_and_context(tmp_path, store_root)

    cold, process = loaded_modules(tmp_path, *build)
    assert process.returncode == 0, process.stderr
    # the recorder sees what a build that runs steps loads: the check below can fail
    assert "imgbuild.layer.write" in cold and "imgbuild.sandbox.runtime" in cold
    assert "typing" in cold and "secrets" in cold

    warm, process = loaded_modules(tmp_path, *build)
    assert process.returncode == 0, process.stderr
    assert "4 cached, 0 run" in process.stdout + process.stderr
    assert unwanted(warm) == []


@pytest.mark.root
def test_rebuild_after_one_file_changed_imports_only_what_a_copy_needs(tmp_path, store_root):
    context, build = _store_and_context(tmp_path, store_root)
    cold, process = loaded_modules(tmp_path, *build)
    assert process.returncode == 0, process.stderr
    # the recorder sees what a build that runs steps loads: the check below can fail
    assert "imgbuild.sandbox.runtime" in cold

    (context / "settings.conf").write_text("mode=changed\n")  # the last COPY reads it
    changed, process = loaded_modules(tmp_path, *build)
    assert process.returncode == 0, process.stderr
    assert "3 cached, 1 run" in process.stdout + process.stderr
    assert "imgbuild.layer.write" in changed  # the COPY wrote a layer
    # A layer of one block is gzipped without ISA-L's threaded writer, whose
    # module loads typing and gzip; the last COPY rerun alone needs no front end.
    assert unwanted(changed, NEVER_ON_A_COPY + LOADED_BY_THE_THREADED_GZIP) == []


def loaded_modules_on_a_terminal(tmp_path: Path, *args: str) -> tuple[set[str], str, int]:
    """As loaded_modules, with stdout and stderr on a pseudo-terminal: the tty display."""
    out = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}"
    env = dict(os.environ, PYTHONPATH=str(REPO), IMGBUILD_MAX_CACHE="100%", IMGBUILD_MIN_FREE="0%")
    env.pop("CI", None)  # in CI, --progress auto is plain even on a terminal
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", RECORDER, str(out), *args],
        stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env,
    )  # fmt: skip
    os.close(follower)
    screen = read_terminal(leader).decode("utf-8", "replace")
    return set(out.read_text().split("\n")), screen, process.wait(timeout=300)


@pytest.mark.root
def test_a_build_on_a_terminal_draws_its_display_without_rich(tmp_path, store_root):
    # rich's Live took ~20 ms to import, which every interactive build paid;
    # imgbuild.builder.terminal draws the display now.
    context, build = _store_and_context(tmp_path, store_root)
    on_a_terminal = tuple(arg for arg in build if arg not in ("--progress", "plain"))  # auto: tty

    cold, screen, code = loaded_modules_on_a_terminal(tmp_path, *on_a_terminal)
    assert code == 0, screen
    assert "imgbuild.builder.terminal" in cold  # the tty display drew the build: the check below can fail
    assert unwanted(cold, ("rich",)) == []

    (context / "settings.conf").write_text("mode=changed\n")
    changed, screen, code = loaded_modules_on_a_terminal(tmp_path, *on_a_terminal)
    assert code == 0, screen
    assert "3 cached, 1 run" in screen
    assert unwanted(changed, NEVER_ON_A_COPY) == []

    warm, screen, code = loaded_modules_on_a_terminal(tmp_path, *on_a_terminal)
    assert code == 0, screen
    assert "4 cached, 0 run" in screen and "imgbuild.builder.terminal" in warm
    assert unwanted(warm) == []


def dataclasses_without_docstring(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef) or ast.get_docstring(node) is not None:
                continue
            names = [ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list]
            if any(name in ("dataclass", "dataclasses.dataclass") for name in names):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    return found


def test_every_dataclass_has_a_docstring():
    # Without one, @dataclass makes a docstring from inspect.signature(cls)
    # when the module is imported: work every build paid for each class.
    assert dataclasses_without_docstring(REPO / "imgbuild") == []

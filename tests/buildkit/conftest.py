"""BuildKit's own Dockerfile integration tests, as behaviours of imgbuild.

Each test here follows one test function of moby/buildkit's
``frontend/dockerfile/dockerfile_*_test.go`` (named by the ``buildkit``
marker: ``@pytest.mark.buildkit("testCopyChmod")``). The Dockerfiles and
assertions are our own; the facts (what BuildKit builds from a Dockerfile)
are BuildKit's. Builds use real runc on the busybox base, as tests/build.

Most behaviours share a build: a module-scoped fixture builds once, and a
parametrised test checks one behaviour per test id. The run ends with the line
``buildkit: N behaviours tested (M BuildKit tests followed)``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from imagetools import make_busybox_image, require_root_and_runc

from imgbuild.builder.builder import build
from imgbuild.builder.options import BuildOptions
from imgbuild.builder.progress import Progress
from imgbuild.errors import ImgbuildError
from imgbuild.store import Store

# The image-tree readers of tests/build (layer blobs read with tarfile, not
# the engine's own code), loaded by path: a conftest is not an importable module.
_spec = importlib.util.spec_from_file_location(
    "buildkit_buildtools", Path(__file__).resolve().parents[1] / "build" / "conftest.py"
)
buildtools = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = buildtools  # dataclasses look their module up there
_spec.loader.exec_module(buildtools)
Built = buildtools.Built
Node = buildtools.Node
write_files = buildtools.write_files


@dataclass
class Tally:
    passed: int = 0
    failed: int = 0
    followed: set[str] = field(default_factory=set)


TALLY = Tally()


def pytest_configure(config):
    config.addinivalue_line("markers", "buildkit(name): the moby/buildkit test function a test follows")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("buildkit")
    if marker is None or report.when != "call" and not (report.when == "setup" and report.failed):
        return
    if report.passed:
        TALLY.passed += 1
        TALLY.followed.update(marker.args)
    elif report.failed:
        TALLY.failed += 1


def pytest_terminal_summary(terminalreporter):
    if not (TALLY.passed or TALLY.failed):
        return
    line = f"buildkit: {TALLY.passed} behaviours tested ({len(TALLY.followed)} BuildKit tests followed)"
    if TALLY.failed:
        line += f", {TALLY.failed} failed"
    terminalreporter.write_line(line, red=bool(TALLY.failed), green=not TALLY.failed)


@pytest.fixture(autouse=True)
def _needs_root_and_runc():
    require_root_and_runc()


@pytest.fixture(scope="session")
def bk_store(tmp_path_factory) -> Store:
    """One store for every build here, with busybox:latest (and busybox as "alpine")."""
    root = tmp_path_factory.mktemp("buildkit") / "store"
    store = Store(root)
    make_busybox_image(store, "busybox:latest")
    make_busybox_image(store, "alpine:latest")  # BuildKit's tests use alpine where any shell does
    return store


class BuildFailed(Exception):
    """A build that was expected to work did not: carries the error."""


@dataclass
class Builder:
    store: Store
    top: Path
    count: int = 0

    def context(self, files: dict | None = None) -> Path:
        self.count += 1
        context = self.top / f"context-{self.count}"
        context.mkdir(parents=True)
        write_files(context, files or {})
        return context

    def build(self, text: str | None, files: dict | None = None, *, context: Path | None = None, **options) -> Built:
        """Build the Dockerfile ``text`` with ``files`` as its context; return what it made.

        ``text`` None: the context already has its Dockerfile.
        """
        if context is None:
            context = self.context(files)
        if text is not None:
            (context / options.pop("dockerfile_name", "Dockerfile")).write_text(text)
        options.setdefault("progress", "quiet")
        result = build(self.store, BuildOptions(context=context, **options), progress=Progress())
        return Built(result, self.store, context)

    def error(self, text: str, files: dict | None = None, **options) -> str:
        """Build the Dockerfile ``text``, which must fail with an imgbuild error; return its message."""
        try:
            self.build(text, files, **options)
        except ImgbuildError as error:
            return str(error)
        raise AssertionError("the build succeeded; BuildKit fails it")


@pytest.fixture(scope="module")
def bk(tmp_path_factory, bk_store) -> Builder:
    return Builder(bk_store, tmp_path_factory.mktemp("bk"))


def cli(store: Store, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The imgbuild CLI on ``store``, for behaviours seen from the command line."""
    return subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(store.root), *args],
        capture_output=True, text=True, env=buildtools.cli_env(), cwd=cwd, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="session")
def imgbuild_cli() -> Callable:
    return cli


def text_of(tree: dict, path: str) -> str:
    """The content of the regular file ``path`` in an image tree."""
    node = tree.get(path.strip("/"))
    assert node is not None, f"{path} is not in the image"
    assert node.kind == "file", f"{path} is a {node.kind}"
    return node.data.decode()


@pytest.fixture(scope="session")
def text() -> Callable:
    return text_of

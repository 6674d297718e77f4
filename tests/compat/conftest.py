"""Compatibility tests: build testdata/Dockerfiles/ with imgbuild and with buildah.

Like dulwich's compat tests against real git, these run the real other tool
(Debian's buildah 1.28, with vfs storage in a temp root) and compare what comes
out. Both images are read through the same real consumers: ``skopeo inspect``
for the image config, ``umoci unpack`` for the flattened root filesystem
(tests/comparetools.py, shared with the interop tests).

Helpers are exposed as fixtures because test modules cannot import a conftest.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from comparetools import (
    CONFIG_FIELDS,
    Buildah,
    Node,
    compared_config,
    inspect_config,
    make_buildah,
    remove_buildah,
    run_tool,
    unpack_tree,
)
from imagetools import make_busybox_image

from imgbuild.build.engine import BuildResult, build
from imgbuild.build.options import BuildOptions
from imgbuild.build.progress import Progress
from imgbuild.store import Store

PROJECT = Path(__file__).resolve().parents[2]
CASES_DIR = PROJECT / "testdata" / "Dockerfiles"
GOOD_CASES = sorted(p.parent.name for p in CASES_DIR.glob("*/outline.json"))
BAD_CASES = sorted(p.parent.name for p in CASES_DIR.glob("*/error.txt"))


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts, runc, buildah)")


# --- the cases -------------------------------------------------------------------------


@dataclass
class Case:
    """One testdata/Dockerfiles case and how to build it."""

    name: str
    directory: Path
    build_args: dict[str, str]
    target: str | None
    platform: str | None
    compat: dict  # compat.json, {} when buildah and imgbuild must agree on everything

    @property
    def dockerfile(self) -> Path:
        return self.directory / "Dockerfile"

    def context(self, empty: Path) -> Path:
        """The case's context/ directory, or ``empty`` when it has none."""
        own = self.directory / "context"
        return own if own.is_dir() else empty


def load_case(name: str, cases_dir: Path = CASES_DIR) -> Case:
    """The case ``cases_dir/name`` with its options.json and compat.json (both optional)."""
    directory = cases_dir / name
    options_file = directory / "options.json"
    options = json.loads(options_file.read_text()) if options_file.exists() else {}
    compat_file = directory / "compat.json"
    compat = json.loads(compat_file.read_text()) if compat_file.exists() else {}
    return Case(
        name,
        directory,
        options.get("build_args", {}),
        options.get("target"),
        options.get("platform"),
        compat,
    )


@pytest.fixture(scope="session")
def empty_context(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("empty-context")


# --- imgbuild ----------------------------------------------------------------------------


@dataclass
class ImgbuildStore:
    """The session's imgbuild store: busybox tagged ``busybox`` and ``busybox:latest``."""

    root: Path
    empty_context: Path

    @property
    def store(self) -> Store:
        return Store(self.root)

    @property
    def layout(self) -> Path:
        return self.root / "oci"

    def build(self, case: Case, tag: str) -> BuildResult:
        options = BuildOptions(
            context=case.context(self.empty_context),
            dockerfile=case.dockerfile,
            tags=[tag],
            build_args=dict(case.build_args),
            target=case.target,
            platform=case.platform,
            progress="quiet",
        )
        return build(self.store, options, progress=Progress())


@pytest.fixture(scope="session")
def imgbuild_store(tmp_path_factory, empty_context) -> ImgbuildStore:
    root = tmp_path_factory.mktemp("imgbuild") / "store"
    store = Store(root)
    image = make_busybox_image(store, "busybox:latest")
    store.tag("busybox", image.manifest_descriptor)
    return ImgbuildStore(root, empty_context)


# --- buildah -----------------------------------------------------------------------------


class CaseBuildah(Buildah):
    def bud(self, case: Case, tag: str, context: Path) -> subprocess.CompletedProcess:
        """``buildah bud`` the case; returns the completed process (not checked).

        ``--force-rm`` removes the working containers even when a build fails.
        """
        options = ["--layers", "--force-rm", "--network", "host", "--pull=never"]
        for key, value in case.build_args.items():
            options += ["--build-arg", f"{key}={value}"]
        if case.target:
            options += ["--target", case.target]
        if case.platform:
            options += ["--platform", case.platform]
        return self.build(case.dockerfile, context, tag, *options)


@pytest.fixture(scope="session")
def buildah(tmp_path_factory, imgbuild_store) -> CaseBuildah:
    """buildah with the session's busybox image as ``localhost/busybox:latest``.

    ``FROM busybox`` then resolves to it locally (``--pull=never``): short names
    are looked up in local storage as ``localhost/NAME`` first. At the end the
    storage is removed after checking that nothing of buildah's is left.
    """
    tool = CaseBuildah(make_buildah(tmp_path_factory.mktemp("buildah")).work)
    run_tool(
        "skopeo", "copy", "--quiet", f"oci:{imgbuild_store.layout}:busybox:latest",
        f"{tool.storage}localhost/busybox:latest",
    )  # fmt: skip
    yield tool
    problems = remove_buildah(tool)
    if problems:
        pytest.fail("buildah left things behind: " + "; ".join(problems))


# --- helpers as fixtures ------------------------------------------------------------------


@pytest.fixture(name="load_case", scope="session")
def _load_case_fixture():
    return load_case


@pytest.fixture(name="unpack_tree", scope="session")
def _unpack_tree_fixture():
    return unpack_tree


@pytest.fixture(name="inspect_config", scope="session")
def _inspect_config_fixture():
    return inspect_config


@pytest.fixture(name="compared_config", scope="session")
def _compared_config_fixture():
    return compared_config


@pytest.fixture(name="config_fields", scope="session")
def _config_fields_fixture():
    return CONFIG_FIELDS


@pytest.fixture(name="node_from_json", scope="session")
def _node_from_json_fixture():
    return Node.from_json

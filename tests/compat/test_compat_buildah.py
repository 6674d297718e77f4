"""Every good testdata/Dockerfiles case built by imgbuild and by buildah 1.28: same image.

Compared: the image config fields in comparetools.CONFIG_FIELDS plus architecture
and os, and the flattened root filesystem (path, type, mode, uid, gid, size,
sha256, symlink target, xattrs; never mtimes), both images read by skopeo and umoci.

Where buildah 1.28 differs from BuildKit, imgbuild follows BuildKit and the
case has a hand-written ``compat.json``:

    why             what buildah does differently (required)
    config          {FIELD: value or null}: BuildKit's value of these fields
    tree            {PATH: node or null}: BuildKit's node at these paths (null: absent),
                    a node as {"type", "mode", "uid", "gid", "content"} (see comparetools.Node)
    buildah_fails   buildah cannot build the case; this text is in its error output.
                    Then "config" lists every expected non-empty field and the
                    expected tree is "base" ("busybox" or "scratch") plus "tree".

A hand-written value that buildah now produces itself is reported as stale.
Every other difference fails the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from comparetools import EMPTY_DIR, Built, differences, drop_known_leftovers, report

from imgbuild.errors import ImgbuildError

CASES_DIR = Path(__file__).resolve().parents[2] / "testdata" / "Dockerfiles"
GOOD_CASES = sorted(p.parent.name for p in CASES_DIR.glob("*/outline.json"))

# runc creates /dev, /proc and /sys when the image has none (our busybox has
# none). buildah, BuildKit and imgbuild all keep these empty directories, so
# the per-case comparisons include them.
RUNC_MOUNT_POINTS = {"dev": EMPTY_DIR, "proc": EMPTY_DIR, "sys": EMPTY_DIR}


# --- building with each tool ----------------------------------------------------------


@pytest.fixture
def build_with_imgbuild(imgbuild_store, unpack_tree, inspect_config, compared_config, tmp_path):
    def run(case, tag: str) -> Built:
        failure = None
        try:
            imgbuild_store.build(case, tag)
        except ImgbuildError as error:
            failure = f"imgbuild could not build {case.name}:\n{error}"
        if failure:  # failed outside the except: the build's own traceback adds nothing
            pytest.fail(failure, pytrace=False)
        ref = f"{tag}:latest"
        config = inspect_config(f"oci:{imgbuild_store.layout}:{ref}")
        tree = unpack_tree(imgbuild_store.layout, ref, tmp_path)
        return Built(compared_config(config), tree)

    return run


@pytest.fixture
def build_with_buildah(buildah, unpack_tree, compared_config, empty_context, tmp_path):
    """Build with buildah; returns (Built or None, buildah's output)."""

    def run(case, tag: str) -> tuple[Built | None, str]:
        completed = buildah.bud(case, tag, case.context(empty_context))
        output = completed.stdout + completed.stderr
        if completed.returncode != 0:
            return None, output
        layout = tmp_path / "buildah-oci"
        buildah.push_oci(tag, layout, tag)
        config = compared_config(buildah.config(tag))
        return Built(config, unpack_tree(layout, tag, tmp_path)), output

    return run


@pytest.fixture(scope="session")
def busybox_base(imgbuild_store, unpack_tree, inspect_config, compared_config, tmp_path_factory):
    """The busybox base image (what a ``"base": "busybox"`` expectation starts from)."""
    config = inspect_config(f"oci:{imgbuild_store.layout}:busybox:latest")
    tree = unpack_tree(imgbuild_store.layout, "busybox:latest", tmp_path_factory.mktemp("base"))
    return Built(compared_config(config), tree)


# --- expectations ------------------------------------------------------------------------


def apply_hand_written(expected: Built, compat: dict, node_from_json) -> list[str]:
    """Put compat.json's values into ``expected``; returns the stale ones."""
    stale = []
    for field, value in compat.get("config", {}).items():
        if expected.config.get(field) == value:
            stale.append(f"config {field}")
        if value is None:
            expected.config.pop(field, None)
        else:
            expected.config[field] = value
    for path, data in compat.get("tree", {}).items():
        node = node_from_json(data) if data is not None else None
        if expected.tree.get(path) == node:
            stale.append(f"tree {path}")
        if node is None:
            expected.tree.pop(path, None)
        else:
            expected.tree[path] = node
    return stale


def hand_written_image(compat: dict, busybox: Built, node_from_json) -> Built:
    """The whole expected image of a case buildah cannot build.

    The platform is the busybox image's (the host's), for a scratch base too.
    """
    config = dict(compat["config"])
    config["architecture"] = busybox.config["architecture"]
    config["os"] = busybox.config["os"]
    tree = dict(busybox.tree) if compat["base"] == "busybox" else {}
    for path, data in compat.get("tree", {}).items():
        if data is None:
            tree.pop(path, None)
        else:
            tree[path] = node_from_json(data)
    return Built(config, tree)


# --- the cases ---------------------------------------------------------------------------


COMPAT_KEYS = {"why", "config", "tree", "buildah_fails", "base"}


def test_every_good_case_is_compared():
    assert len(GOOD_CASES) >= 30


@pytest.mark.parametrize(
    "path", sorted(CASES_DIR.glob("*/compat.json")), ids=lambda p: p.parent.name
)
def test_compat_file_is_well_formed(path, load_case, node_from_json, config_fields):
    """A typo in a hand-written expectation must not silently weaken a comparison."""
    assert path.parent.name in GOOD_CASES, "compat.json belongs to good cases only"
    compat = load_case(path.parent.name).compat
    assert set(compat) <= COMPAT_KEYS, f"unknown keys {set(compat) - COMPAT_KEYS}"
    assert compat.get("why"), "say what buildah does differently"
    assert set(compat.get("config", {})) <= set(config_fields)
    for data in compat.get("tree", {}).values():
        if data is not None:
            node_from_json(data)
    if "buildah_fails" in compat:
        assert compat.get("base") in ("busybox", "scratch")
        assert "config" in compat, "a case buildah cannot build needs its whole config by hand"
    else:
        assert "base" not in compat, "base is only for cases buildah cannot build"


@pytest.mark.parametrize("name", GOOD_CASES)
def test_case_matches_buildah(
    name, load_case, build_with_imgbuild, build_with_buildah, busybox_base, node_from_json
):
    case = load_case(name)
    tag = f"compat-{name}"
    ours = build_with_imgbuild(case, tag)
    theirs, output = build_with_buildah(case, tag)
    compat = case.compat
    if "buildah_fails" in compat:
        assert theirs is None, (
            f"buildah now builds {name}: compare with it instead (drop buildah_fails)"
        )
        assert compat["buildah_fails"] in output, f"buildah failed differently:\n{output[-2000:]}"
        expected = hand_written_image(compat, busybox_base, node_from_json)
    else:
        assert theirs is not None, f"buildah could not build {name}:\n{output[-3000:]}"
        drop_known_leftovers(theirs.tree)
        expected = theirs
        stale = apply_hand_written(expected, compat, node_from_json)
        assert not stale, (
            f"{name}/compat.json: buildah now agrees with BuildKit on {stale}; remove them"
        )
    lines = differences(expected, ours)
    assert not lines, report(name, lines)


# --- known buildah differences no testdata case shows ----------------------------------------
#
# Each builds a small Dockerfile with both tools, checks that buildah still
# shows the difference (so the list stays true) and that imgbuild does what
# BuildKit does.


@pytest.fixture
def inline_case(tmp_path, load_case):
    """A case made here: NAME/Dockerfile and NAME/context/ under tmp_path."""

    def make(name: str, dockerfile: str, files: dict | None = None):
        directory = tmp_path / name
        (directory / "context").mkdir(parents=True)
        (directory / "Dockerfile").write_text(dockerfile)
        for relative, (content, mode) in (files or {}).items():
            path = directory / "context" / relative
            path.write_text(content)
            os.chmod(path, mode)
        return load_case(name, tmp_path)

    return make


def test_copy_keeps_setuid_and_setgid_bits(inline_case, build_with_imgbuild, build_with_buildah):
    case = inline_case(
        "setuid-copy",
        "FROM busybox\nCOPY suid.sh sgid.sh /tools/\n",
        {"suid.sh": ("#!/bin/sh\n", 0o4755), "sgid.sh": ("#!/bin/sh\n", 0o2755)},
    )
    ours = build_with_imgbuild(case, "compat-inline-setuid")
    theirs, output = build_with_buildah(case, "compat-inline-setuid")
    assert theirs is not None, output
    paths = ("tools/suid.sh", "tools/sgid.sh")
    assert [theirs.tree[path].mode for path in paths] == ["0755", "0755"]  # buildah drops them
    assert [ours.tree[path].mode for path in paths] == ["4755", "2755"]


def test_shell_applies_to_shell_form_cmd_and_entrypoint(
    inline_case, build_with_imgbuild, build_with_buildah
):
    case = inline_case(
        "shell-cmd",
        'FROM busybox\nSHELL ["/bin/sh", "-e", "-c"]\nENTRYPOINT echo entry\nCMD echo cmd\n',
    )
    ours = build_with_imgbuild(case, "compat-inline-shell")
    theirs, output = build_with_buildah(case, "compat-inline-shell")
    assert theirs is not None, output
    assert theirs.config["Cmd"] == ["/bin/sh", "-c", "echo cmd"]
    assert ours.config["Entrypoint"] == ["/bin/sh", "-e", "-c", "echo entry"]
    assert ours.config["Cmd"] == ["/bin/sh", "-e", "-c", "echo cmd"]
    assert ours.config["Shell"] == ["/bin/sh", "-e", "-c"]


def test_workdir_is_created_even_if_nothing_uses_it(
    inline_case, build_with_imgbuild, build_with_buildah, node_from_json
):
    case = inline_case("unused-workdir", "FROM busybox\nWORKDIR /never/used\n")
    ours = build_with_imgbuild(case, "compat-inline-workdir")
    theirs, output = build_with_buildah(case, "compat-inline-workdir")
    assert theirs is not None, output
    assert "never" not in theirs.tree
    assert theirs.config["WorkingDir"] == ours.config["WorkingDir"] == "/never/used"
    assert ours.tree["never"] == ours.tree["never/used"] == node_from_json(EMPTY_DIR)


def test_runtime_mount_points_stay_as_in_buildkit(
    inline_case, build_with_imgbuild, build_with_buildah, node_from_json
):
    """runc creates /dev, /proc and /sys for a RUN in an image that lacks them.

    BuildKit removes only the stubs of /etc/hosts, /etc/resolv.conf and RUN
    --mount targets afterwards (executor.MountStubsCleaner), so its image keeps
    empty /dev, /proc and /sys (see moby/buildkit#3455; Debian's docker.io
    20.10 BuildKit does the same here). buildah keeps them too.
    """
    case = inline_case("run-stubs", "FROM busybox\nRUN true\n")
    ours = build_with_imgbuild(case, "compat-inline-stubs")
    theirs, output = build_with_buildah(case, "compat-inline-stubs")
    assert theirs is not None, output
    for path in RUNC_MOUNT_POINTS:
        assert theirs.tree.get(path) == node_from_json(EMPTY_DIR), path
    stub = node_from_json(EMPTY_DIR)
    missing = [path for path in RUNC_MOUNT_POINTS if ours.tree.get(path) != stub]
    assert not missing, f"imgbuild removed the mount points {missing}; BuildKit keeps them"

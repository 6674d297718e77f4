"""Interop tests: what the other tools need (buildah, dockerd, a Debian root filesystem)
and the one summary line at the end of the run.

dockerd is started here once per session (tests/dockertools.py: by hand, as
MACHINE-NOTES says, and stopped by its PID). The Debian root filesystem
comes from ``debootstrap --variant=minbase`` once per machine (tests/debiantools.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from comparetools import make_buildah, remove_buildah
from debiantools import debian_rootfs_tar as make_debian_rootfs_tar
from dockertools import running_dockerd

# test function -> what is counted in the summary line
SUMMARY_TEST = "test_build_on_base_image_from"


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts, runc, buildah, dockerd)")


# --- buildah, the reference ----------------------------------------------------------------


@pytest.fixture(scope="session")
def buildah(tmp_path_factory):
    """buildah with empty storage: it pulls each base from the test registry.

    The overlay driver, not vfs: vfs copies a Debian tree for every layer and
    container. It is also what buildah and podman use on most machines.
    """
    tool = make_buildah(tmp_path_factory.mktemp("buildah"), driver="overlay")
    yield tool
    problems = remove_buildah(tool)
    if problems:
        pytest.fail("buildah left things behind: " + "; ".join(problems))


# --- dockerd -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory):
    with running_dockerd(tmp_path_factory.mktemp("dockerd")) as docker:
        yield docker


# --- a Debian root filesystem, made once per machine (tests/debiantools.py) ----------------------


@pytest.fixture(scope="session")
def debian_rootfs_tar() -> Path:
    """A tarball of ``debootstrap --variant=minbase bookworm``, from the cache or made now."""
    return make_debian_rootfs_tar()


# --- the summary line -------------------------------------------------------------------


_outcomes: dict[str, str] = {}  # producer -> passed, failed, xfailed, xpassed, skipped


def pytest_runtest_logreport(report):
    if f"::{SUMMARY_TEST}[" not in report.nodeid:
        return
    producer = report.nodeid.rsplit("[", 1)[1].rstrip("]")
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            _outcomes[producer] = "xfailed" if report.skipped else "xpassed"
        else:
            _outcomes[producer] = report.outcome
    elif report.outcome != "passed":  # failed or skipped in setup/teardown
        _outcomes.setdefault(producer, "failed" if report.failed else "skipped")


def pytest_terminal_summary(terminalreporter):
    if not _outcomes:
        return
    passed = sorted(p for p, outcome in _outcomes.items() if outcome == "passed")
    others = sorted((p, outcome) for p, outcome in _outcomes.items() if outcome != "passed")
    line = f"interop: {len(passed)}/{len(_outcomes)} producers built and matched buildah"
    if others:
        line += "; not: " + ", ".join(f"{p} ({outcome})" for p, outcome in others)
    terminalreporter.write_line(line)

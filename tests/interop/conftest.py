"""Interop tests: what the other tools need (buildah, dockerd, a Debian root filesystem)
and the one summary line at the end of the run.

dockerd is started here once per session (tests/dockertools.py: by hand, as
MACHINE-NOTES says, and stopped by its PID). The Debian root filesystem
comes from ``debootstrap --variant=minbase`` once per machine: the tarball is
cached under /var/cache/imgbuild-tests (or $IMGBUILD_TEST_CACHE), keyed by
everything that decides its content.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from comparetools import make_buildah, mounts_under, remove_buildah, run_tool
from dockertools import running_dockerd

CACHE_DIR = Path(os.environ.get("IMGBUILD_TEST_CACHE", "/var/cache/imgbuild-tests"))
DEBIAN_SUITE = "bookworm"
DEBIAN_VARIANT = "minbase"
# What a Docker image of Debian leaves out of a debootstrap tree (as the
# official images' debuerreotype does): device nodes, the host's name and
# resolver, apt's downloaded package lists and caches.
DEBIAN_REMOVED = (
    "dev/*", "etc/hostname", "etc/resolv.conf", "var/lib/apt/lists/*",
    "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/log/bootstrap.log",
)  # fmt: skip

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


# --- a Debian root filesystem, made once per machine -----------------------------------------------


def debian_cache_key() -> str:
    """Everything that decides the cached tree's content."""
    recipe = {
        "suite": DEBIAN_SUITE,
        "variant": DEBIAN_VARIANT,
        "removed": DEBIAN_REMOVED,
        "tar": "--numeric-owner --xattrs",
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


@pytest.fixture(scope="session")
def debian_rootfs_tar() -> Path:
    """A tarball of ``debootstrap --variant=minbase bookworm``, from the cache or made now.

    A lock keeps two test runs on one machine from both running debootstrap.
    """
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed; run scripts/install-deps.sh --test")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    name = f"debootstrap-{DEBIAN_SUITE}-{DEBIAN_VARIANT}-{debian_cache_key()}.tar"
    cached = CACHE_DIR / name
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cached.exists():
            _make_debian_tar(cached)
    return cached


def _make_debian_tar(destination: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=destination.parent))
    rootfs = work / "rootfs"
    try:
        completed = subprocess.run(
            ["debootstrap", f"--variant={DEBIAN_VARIANT}", DEBIAN_SUITE, str(rootfs)],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if completed.returncode != 0:
            pytest.fail(
                f"debootstrap failed ({completed.returncode}); it needs Debian's mirror:\n"
                f"{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
            )
        for pattern in DEBIAN_REMOVED:
            for path in rootfs.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        partial = work / "rootfs.tar"
        run_tool("tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), ".")
        os.replace(partial, destination)
    finally:
        # debootstrap mounts /proc and /sys in the tree while it works; a failed
        # run can leave them. Never delete through a mount point.
        for point in mounts_under(work):
            subprocess.run(["umount", point], capture_output=True)
        if not mounts_under(work):
            shutil.rmtree(work)


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

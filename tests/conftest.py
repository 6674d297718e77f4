"""Fixtures shared by all tests: real registries on loopback, store roots, base images.

The registries are Debian's ``docker-registry`` (CNCF Distribution). scripts/test.sh
starts them once and exports IMGBUILD_TEST_REGISTRY / IMGBUILD_TEST_AUTH_REGISTRY;
when those are unset (a developer running plain ``pytest``) the fixtures start
their own on free ports and stop them, by PID, at the end of the session.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from comparetools import mounts_under
from faults.faulttools import FILESYSTEM_BYTES
from registrytools import die_with_parent, free_port, wait_for_registry

PROJECT = Path(__file__).resolve().parent.parent
TESTDATA = PROJECT / "testdata"
AUTH_USER = "imgbuild"
AUTH_PASSWORD = "imgbuild-test-password"


@dataclass
class Registry:
    host: str  # "127.0.0.1:PORT"
    username: str | None = None
    password: str | None = None


def _start_registry(tmp_root: Path, config: str) -> tuple[subprocess.Popen, str]:
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is not installed; run scripts/test.sh (it installs the test dependencies)")
    host = f"127.0.0.1:{free_port()}"
    env = dict(os.environ)
    env["REGISTRY_HTTP_ADDR"] = host
    env["REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"] = str(tmp_root / "storage")
    if config == "auth.yml":
        # only there: Distribution panics on an htpasswd section without a realm
        env["REGISTRY_AUTH_HTPASSWD_PATH"] = str(TESTDATA / "registry" / "htpasswd")
    log = open(tmp_root / "registry.log", "wb")
    process = subprocess.Popen(
        ["docker-registry", "serve", str(TESTDATA / "registry" / config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    wait_for_registry(host, process)
    return process, host


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Registry:
    """A plain-HTTP registry without auth on 127.0.0.1."""
    host = os.environ.get("IMGBUILD_TEST_REGISTRY")
    if host:
        wait_for_registry(host)
        yield Registry(host)
        return
    process, host = _start_registry(tmp_path_factory.mktemp("registry-plain"), "plain.yml")
    yield Registry(host)
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory) -> Registry:
    """A plain-HTTP registry on 127.0.0.1 that wants basic auth (htpasswd)."""
    host = os.environ.get("IMGBUILD_TEST_AUTH_REGISTRY")
    if host:
        wait_for_registry(host)
        yield Registry(host, AUTH_USER, AUTH_PASSWORD)
        return
    process, host = _start_registry(tmp_path_factory.mktemp("registry-auth"), "auth.yml")
    yield Registry(host, AUTH_USER, AUTH_PASSWORD)
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def store_root(tmp_path) -> Path:
    """A fresh, empty imgbuild store root."""
    root = tmp_path / "store"
    root.mkdir()
    return root


def pytest_configure(config):
    # The tests that stop imgbuild with Ctrl-C need SIGINT to reach it. A shell
    # starts a background command (`bash .ci/run &`) with SIGINT ignored, and an
    # ignored signal stays ignored across exec: every imgbuild the tests start
    # would ignore Ctrl-C, and those tests would wait for ever. A handler is
    # reset to the default on exec, so with one here the children get the default.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session, exitstatus):
    """In CI every test must run: a skip there means a tool or the corpus is missing."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and exitstatus == 0:
        reporter.write_line(f"CI: {skipped} test(s) skipped; in CI every test must run (see -ra above)", red=True)
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    """One line for what tests/adversarial, tests/faults and tests/load prove together
    (docs/security.md, "Guarantees and their tests")."""
    from advtools import TALLY
    from faults.faulttools import FAULTS
    from load.loadtools import LOAD

    kills = sum(FAULTS.runs.values())
    if not (TALLY.tried or kills or LOAD.rounds):
        return
    escapes = len(TALLY.escapes)
    # Lost: a tagged image that cannot be read, an fsck problem, or an image that
    # differs from what an undisturbed build makes of the same inputs.
    lost = len(TALLY.lost) + FAULTS.mismatches + LOAD.mismatches + LOAD.fsck_problems
    left = FAULTS.leftovers + LOAD.leftovers
    failed = LOAD.builds - LOAD.succeeded
    line = (
        f"guarantees: {TALLY.tried} hostile inputs ({TALLY.refused} refused, {TALLY.contained} contained), "
        f"{kills} kill -9 runs, {LOAD.builds} concurrent builds ({failed} failed, "
        f"{LOAD.duplicates} layers stored twice): {escapes} escapes, {lost} data lost, {left} left behind"
    )
    bad = escapes or lost or left or failed or LOAD.duplicates
    terminalreporter.write_line(line, red=bool(bad), green=not bad)


def _is_mounted(point: Path) -> bool:
    return str(point) in mounts_under(point)


@pytest.fixture
def small_fs(tmp_path) -> Iterator[Path]:
    """A fresh 64 MiB ext4 (no blocks reserved for root) mounted on a directory of its own."""
    image = tmp_path / "disk.img"
    point = tmp_path / "small"
    point.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(FILESYSTEM_BYTES)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(point)], check=True, capture_output=True)
    try:
        yield point
    finally:
        for point_below in sorted(mounts_under(point), key=len, reverse=True):
            if point_below != str(point):  # a leftover of the test's own failure
                subprocess.run(["umount", "-l", point_below], capture_output=True)
        gc.collect()  # the test's Store objects hold index.db and lock files open there
        if _is_mounted(point) and subprocess.run(["umount", str(point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
            raise AssertionError(f"{point} was busy after the test; detached it lazily")

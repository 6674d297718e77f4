"""Fixtures and the summary line of the adversarial cases (see advtools.py)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from advtools import TALLY, Sentinel, make_sentinel
from imagetools import make_busybox_image

from imgbuild.store import Store
from imgbuild.store.fsck import check_store


@pytest.fixture(scope="session")
def sentinel() -> Sentinel:
    # Under /tmp, away from pytest's tmp dirs, so no context or store is near it.
    top = Path(tempfile.mkdtemp(prefix="imgbuild-adv-sentinel-"))
    made = make_sentinel(top / "tree")
    yield made
    shutil.rmtree(top)


@pytest.fixture(autouse=True)
def _watch_sentinel(request, sentinel):
    """Each case: count it, and hash the sentinel before and after."""
    before = sentinel.digest()
    is_case = request.node.get_closest_marker("control") is None  # a control checks a check; not a case
    TALLY.outcome = None
    yield
    if is_case:
        TALLY.tried += 1
        if TALLY.outcome == "refused":
            TALLY.refused += 1
        elif TALLY.outcome == "contained":
            TALLY.contained += 1
    TALLY.outcome = None
    if sentinel.digest() != before:
        TALLY.escapes.append(request.node.nodeid)
        pytest.fail(f"ESCAPE: the host sentinel tree {sentinel.path} changed during this case")


@pytest.fixture(scope="session")
def adv_root(tmp_path_factory) -> Path:
    """One store for the cases; busybox tagged in it. Checked by fsck at the end."""
    root = tmp_path_factory.mktemp("adv-store") / "store"
    root.mkdir()
    store = Store(root)
    make_busybox_image(store, "busybox:latest")
    yield root
    _check_data_kept(root)


def _check_data_kept(root: Path) -> None:
    store = Store(root)
    report = check_store(store, repair=False)
    for problem in report.problems:
        TALLY.lost.append(f"fsck: {problem}")
    for name, _ in store.refs():
        if name is None:
            continue
        try:
            store.load_image(name)
        except Exception as error:  # any failure here is a lost image
            TALLY.lost.append(f"tagged image {name} unreadable: {error}")
    try:
        store.load_image("busybox:latest")
    except Exception as error:
        TALLY.lost.append(f"busybox:latest gone: {error}")


@pytest.fixture(scope="session")
def store(adv_root) -> Store:
    return Store(adv_root)


def pytest_terminal_summary(terminalreporter):
    if TALLY.tried == 0:
        return
    line = (
        f"adversarial: {TALLY.tried} cases tried, {TALLY.refused} refused, {TALLY.contained} contained, "
        f"{len(TALLY.escapes)} escapes, {len(TALLY.lost)} data lost"
    )
    bad = TALLY.escapes or TALLY.lost
    terminalreporter.write_line(line, red=bool(bad), green=not bad)
    for item in TALLY.escapes:
        terminalreporter.write_line(f"  escape: {item}", red=True)
    for item in TALLY.lost:
        terminalreporter.write_line(f"  data lost: {item}", red=True)


def pytest_sessionfinish(session, exitstatus):
    if (TALLY.escapes or TALLY.lost) and exitstatus == 0:
        session.exitstatus = 1


def pytest_configure(config):
    config.addinivalue_line("markers", "control: checks that a case's check can fail; not counted as a case")

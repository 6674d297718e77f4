"""A RUN that leaves processes behind, or fills /tmp: the step ends, and nothing of it survives.

Docker semantics: a RUN ends when its main process (the shell) exits; its
exit status decides the step; whatever it started in the background dies with
the container. The container has a PID namespace of its own, so when the
shell (its PID 1) exits the kernel kills every process left in it, even one
that daemonized with a double fork and setsid. A RUN's /tmp is a directory of
its root filesystem, as in Docker: what it writes there goes to the step's
upperdir under the store (and into the layer if it stays), never to the host's
/tmp; on a full store the write fails inside the step, and the step with it.

Every background process runs a busybox ``sleep`` through a symlink in a
directory named with a random marker, so its command line is unique on this
host: after the build no process whose command line holds the marker may exist.
"""

from __future__ import annotations

import gzip
import os
import re
import secrets
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from comparetools import mounts_under, runc_containers_under
from faults.faulttools import FILESYSTEM_BYTES
from imagetools import make_busybox_image, temp_leftovers

from imgbuild.store import Store

pytestmark = pytest.mark.root

PROJECT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CI", None)
    return env


def _build(root: Path, context: Path, tag: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(root), "build", "--progress", "plain", "-t", tag,
         str(context)],
        capture_output=True, text=True, env=_env(), timeout=240,
    )


def _context(directory: Path, dockerfile: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "Dockerfile").write_text(dockerfile)
    return directory


def _processes_with(marker: str) -> list[str]:
    """``PID: command line`` of every process on the host whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # it ended meanwhile
        if marker in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def _nothing_left(root: Path, marker: str) -> list[str]:
    found = [f"process {line}" for line in _processes_with(marker)]
    found += [f"container {name}" for name in runc_containers_under(root)]
    found += [f"mount {point}" for point in mounts_under(root)]
    found += [f"temp {name}" for name in temp_leftovers(Store(root))]
    fsck = subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(root), "fsck"],
        capture_output=True, text=True, env=_env(), timeout=120,
    )
    if fsck.returncode != 0:
        found.append(f"fsck: {fsck.stdout} {fsck.stderr}")
    return found


def _store(root: Path) -> Path:
    make_busybox_image(Store(root), "busybox:latest")
    return root


def _background_script(marker: str) -> str:
    """Shell that starts sleepers every way a RUN might: plain &, a subshell's &,
    nohup, and a daemon (double fork, setsid, the first child gone)."""
    sleep = f"/{marker}/sleep"
    return (
        f"mkdir /{marker} && ln -s /bin/busybox {sleep} && "
        f"({sleep} 300 &) ; "
        f"{sleep} 301 & "
        f"nohup {sleep} 302 >/dev/null 2>&1 & "
        f"(setsid sh -c '{sleep} 303 & exit 0' &) ; "
        "sleep 0.5 ; echo started"
    )


@pytest.mark.parametrize("exit_status", [0, 3])
def test_background_processes_of_a_run_end_with_the_step(tmp_path, exit_status):
    marker = f"imgbuild-bg-{secrets.token_hex(6)}"
    root = _store(tmp_path / "store")
    script = _background_script(marker) + f" ; exit {exit_status}"
    context = _context(tmp_path / "ctx", f"FROM busybox\nRUN {script}\n")

    started = time.monotonic()
    done = _build(root, context, "bg")
    took = time.monotonic() - started
    try:
        assert took < 60, f"the build waited {took:.0f} s for its background processes"
        output = done.stdout + done.stderr
        assert "Traceback" not in output, output
        if exit_status == 0:
            assert done.returncode == 0, output
        else:  # the main process decides, as in Docker
            assert done.returncode == 1, output
            assert f"exited with code {exit_status}" in output, output
        assert _nothing_left(root, marker) == []
    finally:
        for line in _processes_with(marker):  # after a failed check: end what the test started
            os.kill(int(line.split(":", 1)[0]), 9)


def test_a_run_that_fills_tmp_writes_under_the_store_not_the_hosts_tmp(tmp_path):
    marker = f"imgbuild-tmp-{secrets.token_hex(6)}"
    root = _store(tmp_path / "store")
    # The file stays in the layer (zeros: a small blob); the step lingers while
    # the test looks for it on the host.
    script = f"dd if=/dev/zero of=/tmp/{marker} bs=1M count=64 2>/dev/null && touch /tmp/{marker}.written && sleep 3"
    context = _context(tmp_path / "ctx", f"FROM busybox\nRUN {script}\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "imgbuild", "--root", str(root), "build", "--progress", "plain", "-t", "fill",
         str(context)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(),
    )
    try:
        upper = _wait_for_upper_file(root, f"tmp/{marker}.written", process)
        written = upper / "tmp" / marker
        assert written.stat().st_size == 64 << 20
        assert not os.path.lexists(f"/tmp/{marker}") and not os.path.lexists(f"/tmp/{marker}.written")
        output = process.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert not os.path.lexists(f"/tmp/{marker}")
    assert f"tmp/{marker}" in _last_layer_names(root, "fill")
    assert _nothing_left(root, marker) == []


def _wait_for_upper_file(root: Path, relative: str, process: subprocess.Popen) -> Path:
    """The upperdir of the running step, once ``relative`` exists in it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for upper in root.glob("tmp/owner-*/step-*/upper"):
            if (upper / relative).exists():
                return upper
        assert process.poll() is None, process.stdout.read().decode(errors="replace")
        time.sleep(0.05)
    raise AssertionError(f"{relative} never appeared in a step's upperdir under {root}")


def _last_layer_names(root: Path, tag: str) -> list[str]:
    store = Store(root)
    image = store.load_image(tag)
    layer = image.manifest["layers"][-1]["digest"]
    with store.open_blob(layer) as blob, gzip.open(blob) as plain, tarfile.open(fileobj=plain, mode="r|") as tar:
        return [member.name.removeprefix("./") for member in tar]


def test_a_run_that_fills_the_store_fails_inside_the_step_and_leaves_nothing(tmp_path, small_fs):
    marker = f"imgbuild-full-{secrets.token_hex(6)}"
    root = _store(small_fs / "store")
    context = _context(
        tmp_path / "ctx", f"FROM busybox\nRUN dd if=/dev/zero of=/tmp/{marker} bs=1M\n"
    )

    failed = _build(root, context, "full")
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output
    assert "Traceback" not in output, output
    assert "No space left on device" in output, output  # dd's own message, in the output tail
    assert not os.path.lexists(f"/tmp/{marker}")
    # The store's small file system is what filled, not the host's /tmp: dd stopped short of 64 MiB.
    records = re.search(r"(\d+)\+\d+ records out", output)
    assert records and int(records.group(1)) < FILESYSTEM_BYTES >> 20, output
    assert _nothing_left(root, marker) == []

    (tmp_path / "ctx" / "Dockerfile").write_text("FROM busybox\nRUN echo fits > /fits\n")
    done = _build(root, tmp_path / "ctx", "full")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _nothing_left(root, marker) == []

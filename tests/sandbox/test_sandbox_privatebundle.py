"""privatebundle.py, the program that starts the runtime with its bundle on a private tmpfs.

Run for real, as the sandbox runs it, with a shell in place of the runtime.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sandbox.sandboxtools import needs_root_and_runc

from imgbuild.sandbox import runtime as sandbox
from imgbuild.sandbox.spec import BundleFiles
from imgbuild.store.mounts import mounts_under

pytestmark = pytest.mark.root
LAUNCHER = Path(sandbox.__file__).with_name("privatebundle.py")


@pytest.fixture(autouse=True)
def _root():
    needs_root_and_runc()


def _launch(mount_point: Path, error_file: Path, files: list[tuple], command: list[str]):
    bundle = BundleFiles()
    for path, data, mode, uid, gid in files:
        bundle.add(path, data, mode, uid, gid)
    payload = bundle.payload()
    return subprocess.run(
        [sys.executable, "-I", "-S", str(LAUNCHER), str(mount_point), "1048576", str(error_file),
         "--", *command],
        input=payload,
        capture_output=True,
        timeout=60,
    )  # fmt: skip


def _file(path: str, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> tuple:
    return path, data, mode, uid, gid


def test_the_files_exist_only_in_the_commands_mount_namespace(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    files = [_file("config.json", b"{}", 0o600), _file("files/0", b"s3cret", 0o440, 1000, 50)]
    script = (
        f"cd {bundle} && stat -c '%a %u %g %n' . files files/0 config.json && cat files/0 && "
        f"echo && grep -c ' {bundle} .* - tmpfs imgbuild-bundle ' /proc/self/mountinfo && umask"
    )
    done = _launch(bundle, tmp_path / "error", files, ["sh", "-c", script])
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == [
        "700 0 0 .",
        "700 0 0 files",
        "440 1000 50 files/0",
        "600 0 0 config.json",
        "s3cret",
        "1",
        "0022",
    ]
    assert list(bundle.iterdir()) == []  # on the host: an empty directory, nothing mounted
    assert mounts_under(tmp_path) == []
    assert not (tmp_path / "error").exists()


@pytest.mark.parametrize("path", ["../escape", "/abs", "a//b", "a/./b", ""])
def test_bad_bundle_paths_are_refused(tmp_path, path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    done = _launch(bundle, tmp_path / "error", [_file(path, b"x", 0o600)], ["true"])
    assert done.returncode == 125
    assert "bad bundle path" in (tmp_path / "error").read_text()
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["bundle", "error"]
    assert list(bundle.iterdir()) == []
    assert mounts_under(tmp_path) == []


def test_a_command_that_cannot_start_is_reported(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    done = _launch(bundle, tmp_path / "error", [], [str(tmp_path / "no-such-runtime")])
    assert done.returncode == 125
    assert "No such file or directory" in (tmp_path / "error").read_text()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"600 0 0 11 999\nconfig.json{}", "truncated bundle payload"),
        (b"600 0 0 11\nconfig.json", "malformed bundle payload at byte 0"),
        (b"600 0 0 1 1\nab" + b"x" * 200, "malformed bundle payload at byte 14"),
    ],
)
def test_a_damaged_payload_is_refused_before_anything_is_written(tmp_path, payload, reason):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(LAUNCHER), str(bundle), "1048576", str(tmp_path / "error"), "--", "true"],
        input=payload, capture_output=True, timeout=60,
    )
    assert done.returncode == 125
    assert (tmp_path / "error").read_text() == reason
    assert list(bundle.iterdir()) == []
    assert mounts_under(tmp_path) == []

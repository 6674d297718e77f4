"""The checks of the cases can fail: the sentinel hash sees each kind of change, and
the image check finds host bytes in a layer. Controls, not counted as cases."""

from __future__ import annotations

import os

import pytest
from advtools import MARKER, assert_contained_image, make_sentinel, run_cli

CHANGES = {
    "content": lambda t: (t / "dir" / "inner").write_bytes(b"changed"),
    "new-file": lambda t: (t / "dir" / "new").write_bytes(b""),
    "mode": lambda t: os.chmod(t / "setuid", 0o755),
    "owner": lambda t: os.chown(t / "file", 1234, 1234),
    "link-target": lambda t: (os.unlink(t / "link"), os.symlink("passwd", t / "link")),
    "removed": lambda t: os.unlink(t / "passwd"),
}


@pytest.mark.control
@pytest.mark.parametrize("change", CHANGES)
def test_the_sentinel_hash_sees_a_change(change, tmp_path):
    tree = make_sentinel(tmp_path / "tree")
    before = tree.digest()
    CHANGES[change](tree.path)
    assert tree.digest() != before


@pytest.mark.control
def test_the_image_check_finds_host_bytes(tmp_path, adv_root, store):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_bytes(MARKER + b" as if read from the host\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY f /f\n")
    ran = run_cli(["build", "-t", "adv/control:1", "--progress", "plain", str(ctx)], adv_root)
    assert ran.returncode == 0, ran.output
    with pytest.raises(AssertionError, match="host file content"):
        assert_contained_image(store, "adv/control:1")

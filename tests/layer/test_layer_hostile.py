"""Hostile layer tars: refused with a clear LayerError, and nothing changes outside the target.

Each test extracts into ``sandbox/target`` next to ``sandbox/outside`` (which
holds a ``secret`` file) and compares everything in the sandbox except the
target before and after: names, types, modes, link counts, contents, times.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard
from layer.layer_support import apply_blob, member, tar_bytes

from imgbuild.errors import LayerError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root, like real extraction"),
]


class Sandbox:
    def __init__(self, root: Path):
        self.root = root
        self.target = root / "target"
        self.outside = root / "outside"
        self.outside.mkdir(parents=True)
        self.secret = self.outside / "secret"
        self.secret.write_bytes(b"secret")
        os.chmod(self.secret, 0o600)
        self.target.mkdir()

    def state(self) -> dict:
        """Everything under the sandbox except the target, as precisely as stat allows."""
        found = {}
        for directory, names, files in os.walk(self.root):
            if Path(directory) == self.root:
                names.remove("target")
            for name in names + files:
                path = Path(directory) / name
                info = path.lstat()
                content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
                found[path] = (info.st_mode, info.st_nlink, info.st_uid, info.st_mtime_ns, content)
        found[self.root] = self.root.lstat().st_mode
        return found


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path / "sandbox")


def refused(sandbox: Sandbox, blob: bytes, match: str, **options) -> LayerError:
    """Apply blob, expect LayerError matching ``match``, and nothing outside the target touched."""
    before = sandbox.state()
    with pytest.raises(LayerError, match=match) as caught:
        apply_blob(blob, sandbox.target, **options)
    assert sandbox.state() == before
    assert sandbox.target.is_dir()  # left for the caller to discard
    return caught.value


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE):
    return member(name, kind, linkname=target)


def test_dotdot_entry(sandbox: Sandbox):
    error = refused(sandbox, tar_bytes(member("../outside/evil", data=b"x")), r"'\.\.'")
    assert "../outside/evil" in str(error)  # the message names the entry


def test_dotdot_inside_the_name(sandbox: Sandbox):
    refused(sandbox, tar_bytes(member("a/../../outside/evil", data=b"x")), r"'\.\.'")


def test_absolute_entry_lands_inside_the_target(sandbox: Sandbox):
    # containerd takes names relative to the root: "/x" is "x" (test_layer_go_rules.py).
    blob = tar_bytes(member(f"{sandbox.outside}/evil", data=b"x"))
    assert os.fsencode(sandbox.outside) + b"/evil" in blob  # really stored absolute
    applied_safely(sandbox, blob)
    assert (sandbox.target / str(sandbox.outside).lstrip("/") / "evil").read_bytes() == b"x"


def test_absolute_entry_climbing_out(sandbox: Sandbox):
    refused(sandbox, tar_bytes(member("/../outside/evil", data=b"x")), "climbs above the root")


def test_symlink_parent_pointing_outside(sandbox: Sandbox):
    blob = tar_bytes(link("escape", str(sandbox.outside)), member("escape/evil", data=b"x"))
    error = refused(sandbox, blob, "symlink")
    assert "escape/evil" in str(error)


def test_relative_symlink_parent_climbing_out(sandbox: Sandbox):
    blob = tar_bytes(link("up", "../../.."), member("up/outside/evil", data=b"x"))
    refused(sandbox, blob, "symlink")


def test_symlink_parent_chain_inside_then_out(sandbox: Sandbox):
    blob = tar_bytes(
        member("a", tarfile.DIRTYPE),
        link("a/b", ".."),
        link("c", "a/b/../outside"),
        member("a/b/c/evil", data=b"x"),
    )
    refused(sandbox, blob, "symlink")


def test_symlink_parent_inside_the_target_is_not_followed_either(sandbox: Sandbox):
    # Simplest safe rule: a parent component is never a symlink, wherever it points.
    blob = tar_bytes(
        member("real", tarfile.DIRTYPE), link("alias", "real"), member("alias/f", data=b"x")
    )
    refused(sandbox, blob, "symlink")


def test_hardlink_to_an_absolute_path_stays_inside(sandbox: Sandbox):
    # Absolute targets resolve inside the root, as in containerd: never the host's file.
    blob = tar_bytes(link("passwd", "/etc/passwd", tarfile.LNKTYPE))
    refused(sandbox, blob, "not an earlier entry")
    blob = tar_bytes(link("secret", str(sandbox.secret), tarfile.LNKTYPE))
    refused(sandbox, blob, "not an earlier entry")


def test_hardlink_climbing_out(sandbox: Sandbox):
    blob = tar_bytes(link("secret", "../outside/secret", tarfile.LNKTYPE))
    refused(sandbox, blob, r"'\.\.'")


def test_hardlink_through_a_symlink(sandbox: Sandbox):
    blob = tar_bytes(
        link("escape", str(sandbox.outside)), link("secret", "escape/secret", tarfile.LNKTYPE)
    )
    refused(sandbox, blob, "symlink")


def test_hardlink_to_something_not_in_the_layer(sandbox: Sandbox):
    refused(sandbox, tar_bytes(link("x", "not/there", tarfile.LNKTYPE)), "not an earlier entry")


@pytest.mark.parametrize("name", [".wh..", ".wh..."])
def test_whiteout_of_dot_or_dotdot(sandbox: Sandbox, name: str):
    refused(sandbox, tar_bytes(member(name, data=b"")), "invalid whiteout|'\\.\\.'")


def test_tar_bomb_of_many_entries(sandbox: Sandbox):
    blob = tar_bytes(*(member(f"f{i}", data=b"") for i in range(50)))
    error = refused(sandbox, blob, "more than 10 entries", max_entries=10)
    assert "tar bomb" in str(error)


def test_too_many_bytes(sandbox: Sandbox):
    blob = gzip.compress(tar_bytes(member("big", data=bytes(5 << 20))))
    assert len(blob) < 100_000  # small download, big content
    refused(sandbox, blob, "bigger than 1048576 bytes", max_bytes=1 << 20)


def test_oversized_extension_header(sandbox: Sandbox):
    info, data = member("f", data=b"x")
    info.pax_headers = {"comment": "c" * (2 << 20)}
    refused(sandbox, tar_bytes((info, data)), "extension header")


def test_truncated_tar_inside_an_entry(sandbox: Sandbox):
    blob = tar_bytes(member("f", data=os.urandom(5000)))
    refused(sandbox, blob[:3000], "truncated")


def test_tar_cut_inside_a_header(sandbox: Sandbox):
    blob = tar_bytes(member("f", data=b"x" * 512), member("g", data=b"y"), end=False)
    refused(sandbox, blob[: 512 + 512 + 100], "truncated")


def test_header_after_a_single_zero_block(sandbox: Sandbox):
    # Go's reader: one zero block must be followed by another or by the end.
    first = tar_bytes(member("f", data=b"x"), end=False)
    blob = first + bytes(512) + tar_bytes(member("g", data=b"y"))
    refused(sandbox, blob, "after a zero block")


def some_layer() -> bytes:
    return tar_bytes(*(member(f"f{i}", data=os.urandom(20_000)) for i in range(10)))


@pytest.mark.parametrize("cut", ["middle", "trailer"])
def test_truncated_gzip(sandbox: Sandbox, cut: str):
    blob = gzip.compress(some_layer())
    end = len(blob) // 2 if cut == "middle" else len(blob) - 3  # inside the CRC/size trailer
    refused(sandbox, blob[:end], "gzip stream is truncated")


def test_corrupt_gzip(sandbox: Sandbox):
    blob = bytearray(gzip.compress(some_layer()))
    blob[len(blob) // 2] ^= 0xFF
    refused(sandbox, bytes(blob), "gzip stream is truncated or corrupt")


def zstd_blob(data: bytes, checksum: bool) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=checksum).compress(data)


@pytest.mark.parametrize(
    "checksum, cut", [(True, "middle"), (True, "checksum"), (False, "middle"), (False, "last-byte")]
)
def test_truncated_zstd(sandbox: Sandbox, checksum: bool, cut: str):
    blob = zstd_blob(some_layer(), checksum)
    end = {"middle": len(blob) // 2, "checksum": len(blob) - 2, "last-byte": len(blob) - 1}[cut]
    refused(sandbox, blob[:end], "zstd stream is truncated")


def test_zstd_with_trailing_garbage(sandbox: Sandbox):
    refused(sandbox, zstd_blob(some_layer(), True) + b"garbage!", "not a zstd frame")


def test_not_a_tar_at_all(sandbox: Sandbox):
    refused(sandbox, b"<html>502 Bad Gateway</html>" + bytes(600), "not a tar stream")


def test_xz_layers_are_refused_clearly(sandbox: Sandbox):
    refused(sandbox, b"\xfd7zXZ\x00" + bytes(100), "xz-compressed")


# Hostile but harmless: these apply, and must still not touch anything outside.


def applied_safely(sandbox: Sandbox, blob: bytes) -> None:
    before = sandbox.state()
    apply_blob(blob, sandbox.target)
    assert sandbox.state() == before


def test_file_replacing_a_symlink_does_not_write_through_it(sandbox: Sandbox):
    blob = tar_bytes(
        link("victim", str(sandbox.secret)), member("victim", data=b"owned", mode=0o777)
    )
    applied_safely(sandbox, blob)
    assert (sandbox.target / "victim").read_bytes() == b"owned"
    assert not (sandbox.target / "victim").is_symlink()


def test_directory_over_a_symlink_does_not_chmod_its_target(sandbox: Sandbox):
    blob = tar_bytes(link("d", str(sandbox.outside)), member("d", tarfile.DIRTYPE, mode=0o777))
    applied_safely(sandbox, blob)
    assert (sandbox.target / "d").is_dir() and not (sandbox.target / "d").is_symlink()


def test_hardlink_to_a_symlink_links_the_symlink(sandbox: Sandbox):
    blob = tar_bytes(link("s", str(sandbox.secret)), link("h", "s", tarfile.LNKTYPE))
    applied_safely(sandbox, blob)
    assert os.readlink(sandbox.target / "h") == str(sandbox.secret)
    assert sandbox.secret.stat().st_nlink == 1


def test_symlink_targets_are_stored_not_followed(sandbox: Sandbox):
    applied_safely(sandbox, tar_bytes(link("etc", "../../../../etc")))
    assert os.readlink(sandbox.target / "etc") == "../../../../etc"


def test_overlay_xattrs_from_a_layer_are_ignored(sandbox: Sandbox):
    info, data = member("d", tarfile.DIRTYPE)
    info.pax_headers = {
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.user.overlay.opaque": "y",
        "SCHILY.xattr.user.fine": "kept",
    }
    applied_safely(sandbox, tar_bytes((info, data)))
    assert os.listxattr(sandbox.target / "d") == ["user.fine"]


def test_a_directory_replaced_by_a_symlink_between_its_entries_is_not_gone_through(sandbox: Sandbox):
    # The extractor keeps the last entry's directory open: the entry that
    # replaces that directory must not leave the next one writing into it
    # (or through the symlink now in its place).
    blob = tar_bytes(
        member("d", tarfile.DIRTYPE, mode=0o755),
        member("d/a", data=b"a"),
        link("d", str(sandbox.outside)),
        member("d/b", data=b"b"),
    )
    refused(sandbox, blob, "symlink")
    assert os.readlink(sandbox.target / "d") == str(sandbox.outside)
    assert not (sandbox.outside / "b").exists()


def test_a_directory_replaced_by_a_file_then_made_again_holds_only_later_entries(sandbox: Sandbox):
    blob = tar_bytes(
        member("d", tarfile.DIRTYPE, mode=0o755),
        member("d/a", data=b"a"),
        member("d", data=b"now a file"),
        member("d", tarfile.DIRTYPE, mode=0o755),
        member("d/b", data=b"b"),
    )
    applied_safely(sandbox, blob)
    assert sorted(os.listdir(sandbox.target / "d")) == ["b"]

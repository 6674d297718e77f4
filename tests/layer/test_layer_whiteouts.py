"""Whiteouts both ways, checked through real overlayfs mounts.

A real overlay mount makes the changeset (its upperdir), our writer turns it
into OCI whiteouts, our extractor turns those back into overlay whiteouts, and
a second overlay mount over the extracted snapshots must show the right tree.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
from layer.layer_support import apply_blob, member, read_tree, tar_bytes, write_blob

from imgbuild.errors import LayerError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for overlay mounts"),
]


def make_base(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "old").write_bytes(b"old")
    (root / "dir" / "sub" / "deep").write_bytes(b"deep")
    (root / "keep").mkdir()
    (root / "keep" / "a").write_bytes(b"a")
    (root / "file").write_bytes(b"file")
    (root / "link").symlink_to("file")


def change_through_overlay(base: Path, upper: Path, overlay) -> None:
    """What a RUN step would do: delete, replace a directory, add a file."""
    merged = overlay([base], upper=upper)
    (merged / "file").unlink()
    (merged / "link").unlink()
    shutil.rmtree(merged / "dir")
    (merged / "dir").mkdir()
    (merged / "dir" / "new").write_bytes(b"new")
    (merged / "keep" / "b").write_bytes(b"b")
    overlay.unmount(merged)


def test_overlay_changeset_becomes_oci_whiteouts(tmp_path: Path, overlay):
    base, upper = tmp_path / "base", tmp_path / "upper"
    make_base(base)
    upper.mkdir()
    change_through_overlay(base, upper, overlay)
    assert stat.S_ISCHR((upper / "file").lstat().st_mode)  # overlay wrote a whiteout

    write_blob(upper, tmp_path / "layer.tar", compression="uncompressed")

    names = [m.name for m in tarfile.open(tmp_path / "layer.tar").getmembers()]
    # Depth first, ordered by the on-disk names (dir, file, keep, link), the
    # opaque marker right after its directory, as Docker writes them.
    assert names == [
        "dir",
        "dir/.wh..wh..opq",
        "dir/new",
        ".wh.file",
        "keep",
        "keep/b",
        ".wh.link",
    ]


def test_extracted_snapshots_stack_in_overlay(tmp_path: Path, overlay):
    base, upper = tmp_path / "base", tmp_path / "upper"
    make_base(base)
    upper.mkdir()
    change_through_overlay(base, upper, overlay)
    expected = read_tree(overlay([upper, base]), with_mtimes=False)  # the truth, from overlay
    write_blob(base, tmp_path / "base.tar.gz")
    write_blob(upper, tmp_path / "upper.tar.zst", compression="zstd")

    apply_blob(tmp_path / "base.tar.gz", tmp_path / "snap1")
    apply_blob(tmp_path / "upper.tar.zst", tmp_path / "snap2")

    snap2 = tmp_path / "snap2"
    assert stat.S_ISCHR((snap2 / "file").lstat().st_mode)
    assert (snap2 / "file").lstat().st_rdev == 0
    assert os.getxattr(snap2 / "dir", "trusted.overlay.opaque") == b"y"
    merged = overlay([snap2, tmp_path / "snap1"])
    assert read_tree(merged, with_mtimes=False) == expected
    assert sorted(os.listdir(merged)) == ["dir", "keep"]
    assert os.listdir(merged / "dir") == ["new"]
    assert sorted(os.listdir(merged / "keep")) == ["a", "b"]


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_whiteout_and_entry_of_the_same_layer(tmp_path: Path, overlay, whiteout_first: bool):
    """OCI: a whiteout hides only lower layers; the same layer's entry stays and is opaque."""
    lower = tar_bytes(
        member("foo", tarfile.DIRTYPE),
        member("foo/from-lower", data=b"lower"),
        member("bar", data=b"lower bar"),
    )
    whiteouts = [member(".wh.foo", data=b""), member(".wh.bar", data=b"")]
    entries = [
        member("foo", tarfile.DIRTYPE),
        member("foo/from-upper", data=b"upper"),
        member("bar", data=b"upper bar"),
    ]
    upper = tar_bytes(*(whiteouts + entries if whiteout_first else entries + whiteouts))
    apply_blob(lower, tmp_path / "snap1")
    apply_blob(upper, tmp_path / "snap2")

    merged = overlay([tmp_path / "snap2", tmp_path / "snap1"])

    assert os.listdir(merged / "foo") == ["from-upper"]
    assert (merged / "bar").read_bytes() == b"upper bar"


def test_opaque_marker_and_plain_whiteout_from_a_hand_made_layer(tmp_path: Path, overlay):
    lower = tar_bytes(
        member("etc", tarfile.DIRTYPE),
        member("etc/a", data=b"a"),
        member("etc/b", data=b"b"),
        member("var", tarfile.DIRTYPE),
        member("var/log", data=b"log"),
    )
    upper = tar_bytes(
        member("etc/.wh..wh..opq", data=b""),  # parent created implicitly, then made opaque
        member("etc/c", data=b"c"),
        member("var/.wh.log", data=b""),
        member("var/.wh..wh.plnk", data=b""),  # AUFS metadata: ignored
    )
    apply_blob(lower, tmp_path / "snap1")
    apply_blob(upper, tmp_path / "snap2")

    merged = overlay([tmp_path / "snap2", tmp_path / "snap1"])

    assert os.listdir(merged / "etc") == ["c"]
    assert os.listdir(merged / "var") == []
    assert not (tmp_path / "snap2" / "var" / ".wh..wh.plnk").exists()


@pytest.mark.parametrize("feature", ["redirect_dir", "metacopy"])
def test_changeset_that_points_into_lower_layers_is_refused(tmp_path: Path, overlay, feature: str):
    base, upper = tmp_path / "base", tmp_path / "upper"
    make_base(base)
    upper.mkdir()
    merged = overlay([base], upper=upper, options=f"{feature}=on")
    if feature == "redirect_dir":
        (merged / "dir").rename(merged / "renamed")  # upper gets a redirect, not the files
    else:
        (merged / "file").chmod(0o600)  # upper gets a data-less metacopy
    overlay.unmount(merged)

    with pytest.raises(LayerError, match="redirect_dir=off,metacopy=off"):
        write_blob(upper, tmp_path / "layer")

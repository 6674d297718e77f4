"""Races between imgbuild processes on one store, each made to happen at its worst moment.

The load test (test_load.py) runs them at random; here each one is forced:
the racing process (a real ``imgbuild`` CLI process) is started from a hook
at the exact point of the other operation where it used to do damage.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import threading

import pytest
from imagetools import make_busybox_image
from load.loadtools import image_blobs, make_layered_image, run_cli

from imgbuild import archive
from imgbuild.registry import push as push_module
from imgbuild.store import Store
from imgbuild.store.gc import collect_garbage

pytestmark = pytest.mark.root


def _store_with_dropped_image(root, name: str) -> tuple[Store, dict[str, int]]:
    """A store with busybox and ``name`` (busybox plus a layer of its own); the blobs
    only ``name`` needs."""
    store = Store(root)
    make_busybox_image(store, "busybox:latest")
    make_layered_image(store, name, "busybox:latest", {"own": secrets.token_hex(8)}, "own layer")
    shared = image_blobs(store, "busybox:latest")
    own = {digest: size for digest, size in image_blobs(store, name).items() if digest not in shared}
    return store, own


def _assert_collected_afterwards(store: Store, own: dict[str, int]) -> None:
    """Once the reader is done, a collection removes what the rmi dropped."""
    result = collect_garbage(Store(store.root))
    assert not result.skipped_reason
    assert set(own) <= set(result.removed)
    assert not [digest for digest in own if store.has_blob(digest)]


def test_rmi_during_a_push_defers_collecting_the_blobs_being_pushed(tmp_path, registry, monkeypatch):
    """``imgbuild rmi`` of the image a push is uploading: the tag goes, the blobs
    stay until the push ends (they used to be collected under it: "blob ... is
    missing from the store")."""
    store, own = _store_with_dropped_image(tmp_path / "store", "leaving:1")
    removals: list[subprocess.CompletedProcess] = []
    real_push_blob = push_module.push_blob

    first = threading.Lock()  # layers are pushed in parallel threads

    def rmi_then_push_blob(client, store_, ref, blob):
        with first:
            if not removals:
                removals.append(run_cli(store.root, "rmi", "leaving:1"))
        return real_push_blob(client, store_, ref, blob)

    monkeypatch.setattr(push_module, "push_blob", rmi_then_push_blob)
    target = f"{registry.host}/races-{secrets.token_hex(4)}/leaving:1"
    pushed = push_module.push(store, "leaving:1", target)

    (removal,) = removals
    assert removal.returncode == 0, removal.stderr
    assert "Untagged: leaving:1" in removal.stdout
    assert "kept for now" in removal.stderr  # the collection waited for the push
    raw = subprocess.run(
        ["skopeo", "--insecure-policy", "inspect", "--raw", "--tls-verify=false", f"docker://{target}"],
        capture_output=True,
        timeout=120,
    )
    assert raw.returncode == 0, raw.stderr.decode()
    assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == pushed.digest
    _assert_collected_afterwards(store, own)


def test_rmi_during_a_save_defers_collecting_the_blobs_being_saved(tmp_path, monkeypatch):
    """The same for ``imgbuild save``: the archive is complete and loads."""
    store, own = _store_with_dropped_image(tmp_path / "store", "leaving:1")
    removals: list[subprocess.CompletedProcess] = []
    real_add_blob = archive._add_blob

    def rmi_then_add_blob(tar, store_, descriptor, name):
        if not removals:
            removals.append(run_cli(store.root, "rmi", "leaving:1"))
        return real_add_blob(tar, store_, descriptor, name)

    monkeypatch.setattr(archive, "_add_blob", rmi_then_add_blob)
    saved = tmp_path / "leaving.tar"
    archive.save(store, ["leaving:1"], saved)

    (removal,) = removals
    assert removal.returncode == 0, removal.stderr
    assert "kept for now" in removal.stderr
    other = tmp_path / "other"
    loaded = run_cli(other, "load", "-i", str(saved))
    assert loaded.returncode == 0, loaded.stderr
    assert set(own) <= set(image_blobs(Store(other), "leaving:1"))
    _assert_collected_afterwards(store, own)

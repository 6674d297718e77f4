"""A RUN step's container is deleted while the step goes on (unmount, commit),
and the build waits for every such delete before it returns."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from imagetools import make_busybox_image

from imgbuild.store import Store


def _containers_under(root: Path) -> list[str]:
    listing = subprocess.run(["runc", "list", "--format", "json"], check=True, capture_output=True, text=True)
    prefix = str(root.resolve()) + "/"
    return [c["id"] for c in json.loads(listing.stdout or "null") or [] if c.get("bundle", "").startswith(prefix)]


def test_no_container_outlives_the_build_though_its_delete_is_slow(build_df, tmp_path):
    # runc, but every `delete` takes a second: a build that did not wait for
    # the deletes it left running would return with the containers still there.
    runtime = tmp_path / "slow-delete-runc"
    runtime.write_text('#!/bin/sh\nfor arg; do [ "$arg" = delete ] && sleep 1; done\nexec runc "$@"\n')
    runtime.chmod(0o755)
    store = Store(tmp_path / "store")
    make_busybox_image(store, "busybox:latest")

    built = build_df("FROM busybox\nRUN echo one > /one\nRUN echo two > /two\n", store=store, runtime=str(runtime))

    assert _containers_under(store.root) == []
    assert built.tree()["two"].data == b"two\n"

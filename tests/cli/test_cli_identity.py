"""One image identity, and the same image from a fully cached build (issue 13).

The image ID is the config digest, as in Docker: ``-q``, ``--iidfile``, the
build summary, ``rmi`` and ``inspect`` agree on it; the manifest digest is the
image's digest (``--metadata-file``'s ``containerimage.digest``). A rebuild
whose every step is cached gives the same bytes, however much later it runs.
"""

from __future__ import annotations

import json
import time

import pytest
from cli.clitools import imgbuild, write_context
from imagetools import make_busybox_image, require_root_and_runc

from imgbuild.store import Store

pytestmark = pytest.mark.root

DOCKERFILE = """\
FROM busybox AS base
ARG VERSION=1
ENV GREETING=hello
RUN echo "$GREETING" > /greeting
FROM base
COPY data.txt /data.txt
LABEL purpose=test
RUN cat /data.txt /greeting > /both
CMD ["cat", "/both"]
"""


@pytest.fixture
def root(store_root):
    require_root_and_runc()
    make_busybox_image(Store(store_root), "busybox:latest")
    return store_root


def untagged_entries(root) -> list[str]:
    index = json.loads((root / "oci" / "index.json").read_text())
    return [m["digest"] for m in index["manifests"] if not m.get("annotations")]


def test_fully_cached_rebuild_gives_the_same_image_byte_for_byte(root, tmp_path):
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"data.txt": "data\n"})
    runs = []
    for name in ("first", "second"):
        metadata = tmp_path / f"{name}.json"
        completed = imgbuild(root, "build", "-q", "--metadata-file", str(metadata), str(context))
        assert completed.returncode == 0, completed.stderr
        runs.append((completed.stdout.strip(), json.loads(metadata.read_text())))
        time.sleep(1.2)  # the rebuild runs later: every clock-based time would differ
    (first_id, first), (second_id, second) = runs
    assert second["imgbuild.steps.run"] == 0 and second["imgbuild.steps.cached"] == first["imgbuild.steps.run"]
    assert first_id == second_id == first["containerimage.config.digest"]
    assert second["containerimage.digest"] == first["containerimage.digest"]
    store = Store(root)
    config = store.load_image(first["containerimage.digest"]).config
    # created is when the last layer step was first built, not when the image was assembled
    assert config["created"] == config["history"][-2]["created"]  # [-1] is CMD
    assert all(entry.get("created") for entry in config["history"])
    # Nothing piles up: the rebuilt image is the one entry kept for the untagged build.
    assert untagged_entries(root) == [first["containerimage.digest"]]


def test_a_step_that_runs_again_gives_a_new_image(root, tmp_path):
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"data.txt": "data\n"})
    first = imgbuild(root, "build", "-q", str(context))
    time.sleep(1.2)
    second = imgbuild(root, "build", "-q", "--no-cache", str(context))
    assert first.returncode == second.returncode == 0, second.stderr
    assert first.stdout != second.stdout  # the layers are the same bytes; their times are not


def test_image_id_is_the_config_digest_everywhere(root, tmp_path):
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"data.txt": "data\n"})
    iidfile, metadata = tmp_path / "iid", tmp_path / "metadata.json"
    completed = imgbuild(
        root, "build", "--progress", "plain", "-t", "app:1", "--iidfile", str(iidfile),
        "--metadata-file", str(metadata), str(context),
    )
    assert completed.returncode == 0, completed.stderr
    quiet = imgbuild(root, "build", "-q", "-t", "app:1", str(context))
    image = Store(root).load_image("app:1")
    image_id, digest = image.config_descriptor.digest, image.digest
    assert quiet.stdout.strip() == iidfile.read_text() == image_id
    results = json.loads(metadata.read_text())
    assert results["containerimage.digest"] == digest
    assert results["containerimage.config.digest"] == image_id
    assert f"image ID {image_id}" in completed.stderr
    assert f"digest {digest}" in completed.stderr
    assert "manifest" not in completed.stderr.split("image ID", 1)[1].splitlines()[1]
    # What the build printed finds the image: the ID, a short ID, the digest, NAME@digest.
    for name in (image_id, image_id.split(":")[1][:12], digest, f"app@{digest}"):
        found = imgbuild(root, "inspect", name)
        assert found.returncode == 0, (name, found.stderr)
        assert image_id.split(":")[1] in found.stdout
    removed = imgbuild(root, "rmi", f"app@{digest}")
    assert removed.returncode == 0, removed.stderr
    assert "app:1" in removed.stdout
    assert imgbuild(root, "inspect", image_id).returncode == 1


def test_rmi_takes_the_image_id_the_build_printed(root, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo x > /x\n")
    built = imgbuild(root, "build", "-q", str(context))
    assert built.returncode == 0, built.stderr
    image_id = built.stdout.strip()
    removed = imgbuild(root, "rmi", image_id)
    assert removed.returncode == 0, removed.stderr
    assert untagged_entries(root) == []


def test_a_build_from_an_imported_cache_gives_the_exporters_image(root, tmp_path):
    """CI on a fresh runner: every step from --cache-from, the same image as the one that exported it."""
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"data.txt": "data\n"})
    cache = tmp_path / "cache"
    exported = imgbuild(root, "build", "-q", "--cache-to", f"type=local,dest={cache},mode=max", str(context))
    assert exported.returncode == 0, exported.stderr
    time.sleep(1.2)
    other = tmp_path / "other-runner"
    make_busybox_image(Store(other), "busybox:latest")
    metadata = tmp_path / "metadata.json"
    imported = imgbuild(
        other, "build", "-q", "--metadata-file", str(metadata), "--cache-from", f"type=local,src={cache}", str(context)
    )
    assert imported.returncode == 0, imported.stderr
    assert json.loads(metadata.read_text())["imgbuild.steps.run"] == 0
    assert imported.stdout == exported.stdout

"""A fully cached rebuild against Docker 20.10's BuildKit on this machine: both give
the same image ID again after a pause, and date the history entries alike
(a layer step when it was first built, a config-only step as the layer step
before it, or the first one; the image as its last step)."""

from __future__ import annotations

import json
import tarfile
import time

import pytest
from cli.clitools import imgbuild, write_context
from dockertools import running_dockerd
from imagetools import make_busybox_image, require_root_and_runc

from imgbuild.archive.save import save
from imgbuild.store import Store

pytestmark = pytest.mark.root

DOCKERFILE = """\
FROM busybox
ENV A=1
RUN echo one > /one
LABEL stage=two
COPY data.txt /data.txt
CMD ["sh"]
"""


@pytest.fixture(scope="module")
def docker(tmp_path_factory):
    with running_dockerd(tmp_path_factory.mktemp("dockerd")) as docker:
        yield docker


def time_pattern(config: dict, base_entries: int) -> list[int]:
    """Which distinct time each new history entry (and then the image) carries, by rank."""
    times = [entry["created"] for entry in config["history"][base_entries:]] + [config["created"]]
    ranks = sorted(set(times))
    return [ranks.index(moment) for moment in times]


def docker_config(docker, image_id: str, work) -> dict:
    archive = work / "saved.tar"
    docker.run("save", "-o", str(archive), image_id)
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        return json.load(tar.extractfile(manifest[0]["Config"]))


def test_cached_rebuild_keeps_the_image_id_and_dates_steps_as_buildkit(docker, store_root, tmp_path):
    require_root_and_runc()
    store = Store(store_root)
    make_busybox_image(store, "busybox:latest")
    save(store, ["busybox:latest"], tmp_path / "busybox.tar", format="docker")
    docker.run("load", "-i", str(tmp_path / "busybox.tar"))
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"data.txt": "data\n"})

    theirs, ours = [], []
    for _ in range(2):
        built = docker.run("build", "--network", "none", "-q", str(context))
        theirs.append(built.stdout.strip())
        mine = imgbuild(store_root, "build", "-q", "--network", "none", str(context))
        assert mine.returncode == 0, mine.stderr
        ours.append(mine.stdout.strip())
        time.sleep(1.2)
    assert theirs[0] == theirs[1]
    assert ours[0] == ours[1]

    base_entries = len(store.load_image("busybox:latest").config["history"])
    expected = time_pattern(docker_config(docker, theirs[0], tmp_path), base_entries)
    # ENV, RUN, LABEL, COPY, CMD, then the image: RUN's time twice before, COPY's after
    assert expected == [0, 0, 0, 1, 1, 1]
    assert time_pattern(store.load_image(ours[0]).config, base_entries) == expected

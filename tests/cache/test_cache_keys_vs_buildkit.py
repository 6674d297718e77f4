"""Cache keys hit exactly when BuildKit's do: the same edits, built by Docker 20.10's
BuildKit and by imgbuild, must leave the same steps cached.

One Dockerfile exercises every kind of thing a step can depend on; each
scenario makes one edit to it, its build args, its context or its base image
and builds it again with both tools, after a first build of the unedited
version with each. Which layer steps were cached is read from BuildKit's
``--progress plain`` ("#N CACHED") and from imgbuild's progress steps.
Where imgbuild differs on purpose, ``EXPECTED_DIFFERENCES`` says why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from imagetools import make_busybox_image

from imgbuild.archive.save import save
from imgbuild.builder.builder import build
from imgbuild.builder.options import BuildOptions
from imgbuild.builder.progress import Progress
from imgbuild.store import Store

pytestmark = pytest.mark.root

BASE = "keys/base:1"
DOCKERFILE = """\
FROM keys/base:1
LABEL rev="{label}"
CMD {cmd}
EXPOSE {expose}
VOLUME {volume}
ARG UNUSED=1
COPY dir /dir
ARG USED_BY_COPY=a
COPY sub/${{USED_BY_COPY}}.txt /used.txt
USER {user}
COPY --chown={chown} owned.txt /owned.txt
ENV MODE={mode}
WORKDIR {workdir}
COPY rel.txt rel.txt
ARG USED_BY_RUN=1
SHELL {shell}
RUN echo "$USED_BY_RUN $MODE"
ARG LATE=1
COPY late.txt /late.txt
"""
TEXT = {
    "label": "1", "cmd": '["sh"]', "expose": "80", "volume": "/data", "user": "1", "chown": "1:1",
    "mode": "one", "workdir": "/work", "shell": '["/bin/sh", "-c"]',
}  # fmt: skip
CONTEXT = {
    ".dockerignore": "dir/*.log\n",
    "dir/plain.txt": "plain\n",
    "dir/ignored.log": "ignored\n",
    "sub/a.txt": "a\n",
    "sub/b.txt": "b\n",
    "owned.txt": "owned\n",
    "rel.txt": "rel\n",
    "late.txt": "late\n",
}


@dataclass
class Scenario:
    name: str
    text: dict = field(default_factory=dict)  # Dockerfile fields changed
    build_args: dict = field(default_factory=dict)
    edit: Callable[[Path], None] | None = None  # changes the context copy
    base: str | None = None  # the image keys/base:1 names for this build


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _touch(path: Path) -> None:
    later = os.stat(path).st_mtime + 3600
    os.utime(path, (later, later))


SCENARIOS = [
    Scenario("nothing changed"),
    Scenario("LABEL value", text={"label": "2"}),
    Scenario("CMD", text={"cmd": '["sh", "-c", "true"]'}),
    Scenario("EXPOSE", text={"expose": "81"}),
    Scenario("VOLUME", text={"volume": "/data2"}),
    Scenario("SHELL", text={"shell": '["/bin/sh", "-ec"]'}),
    Scenario("ARG no step uses, before a RUN", build_args={"UNUSED": "2"}),
    Scenario("ARG declared after the last RUN", build_args={"LATE": "2"}),
    Scenario("ARG a COPY expands", build_args={"USED_BY_COPY": "b"}),
    Scenario("ARG a RUN uses", build_args={"USED_BY_RUN": "2"}),
    Scenario("ENV value", text={"mode": "two"}),
    Scenario("file the first COPY reads", edit=lambda c: _write(c / "dir/plain.txt", "changed\n")),
    Scenario("file .dockerignore hides", edit=lambda c: _write(c / "dir/ignored.log", "changed\n")),
    Scenario("touch (mtime only)", edit=lambda c: _touch(c / "dir/plain.txt")),
    Scenario("base image digest (new layer)", base="keys/variant-layer:1"),
    Scenario("base image label (same layers)", base="keys/variant-label:1"),
    Scenario("base image WorkingDir (same layers)", base="keys/variant-workdir:1"),
    Scenario("WORKDIR", text={"workdir": "/work2"}),
    Scenario("USER", text={"user": "2"}),
    Scenario("--chown", text={"chown": "2:2"}),
]

# scenario -> {step number: why imgbuild's cached-or-not differs from BuildKit's}.
# Empty: in every scenario here imgbuild hits and misses exactly where BuildKit does.
EXPECTED_DIFFERENCES: dict[str, dict[int, str]] = {}


@dataclass
class StepSeen:
    number: int  # 2.. as BuildKit numbers them ([1/N] is FROM)
    text: str
    cached: bool


def test_cache_hits_match_buildkit_for_every_edit(dockerd, tmp_path):
    store = Store(tmp_path / "store")
    _make_bases(store, dockerd, tmp_path)
    baseline = tmp_path / "context"
    _write_context(baseline)
    dockerfile = DOCKERFILE.format(**TEXT)
    first_docker = _docker_build(dockerd, tmp_path, "baseline", dockerfile, baseline, {})
    first_ours = _imgbuild_build(store, dockerfile, baseline, {})
    layer_steps = sum(line.split()[0] in ("COPY", "WORKDIR", "RUN") for line in dockerfile.splitlines())
    assert len(first_docker) == len(first_ours) == layer_steps
    assert not any(step.cached for step in first_docker + first_ours)

    rows = []
    for scenario in SCENARIOS:
        context = tmp_path / f"context-{len(rows)}"
        shutil.copytree(baseline, context, symlinks=True)
        if scenario.edit:
            scenario.edit(context)
        text = DOCKERFILE.format(**{**TEXT, **scenario.text})
        if scenario.base:
            _retag(store, dockerd, scenario.base)
        try:
            theirs = _docker_build(dockerd, tmp_path, str(len(rows)), text, context, scenario.build_args)
            ours = _imgbuild_build(store, text, context, scenario.build_args)
        finally:
            if scenario.base:
                _retag(store, dockerd, "keys/base-original:1")
        rows.append((scenario, theirs, ours))

    table = _table(rows)
    print(table)  # the whole comparison, for -s or -rP
    problems = []
    for scenario, theirs, ours in rows:
        assert [_word(s.text) for s in theirs] == [_word(s.text) for s in ours], table
        allowed = EXPECTED_DIFFERENCES.get(scenario.name, {})
        for their, our in zip(theirs, ours, strict=True):
            differs = their.cached != our.cached
            if differs != (their.number in allowed):
                problems.append(f"{scenario.name}: step {their.number} {their.text}")
    assert not problems, "cached-or-not differs from BuildKit:\n  " + "\n  ".join(problems) + "\n" + table


# --- the two builders ------------------------------------------------------------------------


def _docker_build(docker, work: Path, name: str, text: str, context: Path, build_args: dict) -> list[StepSeen]:
    dockerfile = work / f"Dockerfile.{name}"
    dockerfile.write_text(text)
    args = [f"--build-arg={key}={value}" for key, value in build_args.items()]
    completed = docker.run(
        "build", "--network", "none", "--progress", "plain", "-f", str(dockerfile), *args, str(context)
    )
    return _buildkit_steps(completed.stderr + completed.stdout)


def _buildkit_steps(output: str) -> list[StepSeen]:
    """The numbered steps after FROM, and which of them BuildKit printed CACHED for."""
    names: dict[str, tuple[int, str]] = {}
    cached: set[str] = set()
    for line in output.splitlines():
        named = re.match(r"#(\d+) \[(\d+)/(\d+)\] (.*)$", line)
        if named:
            names[named[1]] = (int(named[2]), named[4])
        elif re.match(r"#(\d+) CACHED$", line):
            cached.add(line.split()[0][1:])
    steps = [StepSeen(number, text, vertex in cached) for vertex, (number, text) in names.items() if number > 1]
    return sorted(steps, key=lambda step: step.number)


def _imgbuild_build(store: Store, text: str, context: Path, build_args: dict) -> list[StepSeen]:
    progress = Progress()
    options = BuildOptions(context=context, dockerfile_text=text, build_args=dict(build_args), network="none")
    build(store, options, progress=progress)
    return [StepSeen(step.index + 1, step.text, step.state == "cached") for step in progress.steps]


# --- base images, context, the table ------------------------------------------------------------


def _make_bases(store: Store, docker, work: Path) -> None:
    """keys/base:1 and two variants of it, in both imgbuild's store and dockerd."""
    make_busybox_image(store, BASE)
    store.tag("keys/base-original:1", store.resolve(BASE))
    empty = work / "empty"
    empty.mkdir()
    options = BuildOptions(
        context=empty, dockerfile_text=f"FROM {BASE}\nRUN echo variant > /variant\n",
        tags=["keys/variant-layer:1"], network="none",
    )  # fmt: skip
    build(store, options, progress=Progress())
    _config_variant(store, "keys/variant-label:1", {"Labels": {"variant": "config-only"}})
    _config_variant(store, "keys/variant-workdir:1", {"WorkingDir": "/srv"})
    archive = work / "bases.tar"
    names = [
        BASE, "keys/base-original:1", "keys/variant-layer:1", "keys/variant-label:1", "keys/variant-workdir:1",
    ]  # fmt: skip
    save(store, names, archive, format="docker")
    docker.run("load", "-i", str(archive))


def _config_variant(store: Store, tag: str, changes: dict) -> None:
    """keys/base:1 with the same layers and ``changes`` in its container config."""
    base = store.load_image(BASE)
    config = json.loads(json.dumps(base.config))
    config["config"].update(changes)
    store.tag(tag, store.write_image(config, base.layers).manifest_descriptor)


def _retag(store: Store, docker, source: str) -> None:
    store.tag(BASE, store.resolve(source))
    docker.run("tag", source, BASE)


def _write_context(root: Path) -> None:
    for name, content in CONTEXT.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def _word(text: str) -> str:
    return text.split()[0].upper()


def _table(rows) -> str:
    lines = ["scenario | step | BuildKit | imgbuild"]
    for scenario, theirs, ours in rows:
        for their, our in zip(theirs, ours, strict=True):
            mark = "" if their.cached == our.cached else "  <-- differs"
            lines.append(
                f"{scenario.name} | {their.number} {our.text} | {_state(their)} | {_state(our)}{mark}"
            )
    return "\n".join(lines)


def _state(step: StepSeen) -> str:
    return "cached" if step.cached else "run"

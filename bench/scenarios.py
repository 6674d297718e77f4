"""The build contexts and Dockerfiles the benchmark builds.

Everything is generated from fixed seeds, so two runs build the same bytes.
The Dockerfiles use only what all three tools accept (Docker 20.10's BuildKit
has no heredocs). The Debian workloads are copies of examples/, pointed at
the benchmark's own Debian base.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

BASE_IMAGE = "busybox:local"
DEBIAN_IMAGE = "bench-debian:bookworm"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

SMALL_DOCKERFILE = f"""\
FROM {BASE_IMAGE}
ARG VERSION=1.0
ENV APP_HOME=/app VERSION=$VERSION
WORKDIR /app
COPY app/ ./
RUN mkdir -p data && for i in $(seq 1 200); do echo "row $i" >> data/rows.txt; done
COPY config/settings.conf /etc/app/settings.conf
RUN find /app -type f | sort | xargs sha256sum > /app/manifest.txt
USER 1000
CMD ["sh", "/app/main.sh"]
"""

# The app source file the small "one file changed" case edits before each run:
# the first COPY takes it, so that COPY and every step after it rerun.
SMALL_CHANGED_FILE = "app/main.sh"

# Two independent stages of CPU work (different work, so no builder can share
# one stage's result with the other), a final stage that copies from both.
# The work's size comes from ContextShape (about 2 s of CPU each by default).
MULTISTAGE_DOCKERFILE = f"""\
FROM {BASE_IMAGE} AS digest
ARG MEGABYTES
RUN mkdir /out && dd if=/dev/zero bs=1M count=$MEGABYTES 2>/dev/null | sha256sum > /out/digest.txt

FROM {BASE_IMAGE} AS count
ARG LOOPS
RUN mkdir /out && i=0 && while [ $i -lt $LOOPS ]; do i=$((i+1)); done && echo $i > /out/count.txt

FROM {BASE_IMAGE}
COPY --from=digest /out/digest.txt /result/digest.txt
COPY --from=count /out/count.txt /result/count.txt
CMD ["cat", "/result/digest.txt", "/result/count.txt"]
"""

# The whole context goes in with one COPY, a RUN reads it, and a late COPY
# takes the one small file the "change" scenario edits (so the edit reaches
# both COPYs: nothing from the big COPY on can come from the cache).
BIG_DOCKERFILE = f"""\
FROM {BASE_IMAGE}
RUN mkdir -p /opt/tools && echo v1 > /opt/tools/version
WORKDIR /ctx
COPY . /ctx/
RUN find /ctx -type f | wc -l > /ctx-file-count
COPY conf/settings.txt /etc/app/settings.txt
"""

# The file the change scenario rewrites before each build.
BIG_CHANGED_FILE = "conf/settings.txt"


@dataclass
class ContextShape:
    """How many files and bytes a generated big context has."""

    small_files: int = 19_990
    small_min: int = 1_000
    small_max: int = 8_000
    big_files: int = 10
    big_size: int = 11 * 1024 * 1024
    files_per_dir: int = 100
    # The multistage workload's CPU work per stage: MB through sha256sum and
    # iterations of a shell loop, each about 2 s of CPU on the reference machine.
    multistage_megabytes: int = 400
    multistage_loops: int = 2_000_000

    def files(self) -> int:
        return self.small_files + self.big_files + 2  # + Dockerfile + settings.txt


SMOKE_SHAPE = ContextShape(
    small_files=300, big_files=2, big_size=1024 * 1024, multistage_megabytes=4,
    multistage_loops=20_000,
)


def write_small_context(directory: Path) -> None:
    """A handful of source files: the kind of context a small service has."""
    app = directory / "app"
    (app / "lib").mkdir(parents=True)
    (directory / "config").mkdir()
    (app / "main.sh").write_text('#!/bin/sh\necho "app $VERSION"\n')
    rng = random.Random(1)
    for i in range(12):
        lines = [f"line {n} {rng.getrandbits(64):016x}" for n in range(40)]
        (app / "lib" / f"module{i:02}.txt").write_text("\n".join(lines) + "\n")
    (directory / "config" / "settings.conf").write_text("mode=production\nworkers=4\n")
    (directory / "Dockerfile").write_text(SMALL_DOCKERFILE)


def edit_small_context(directory: Path, revision: int) -> None:
    """A new revision of the app's entry script, as a developer's edit makes."""
    (directory / SMALL_CHANGED_FILE).write_text(
        f'#!/bin/sh\n# revision {revision}\necho "app $VERSION"\n'
    )


def write_multistage_context(directory: Path, shape: ContextShape) -> None:
    """The Dockerfile with the work's size filled in: the context holds nothing else."""
    text = MULTISTAGE_DOCKERFILE.replace(
        "ARG MEGABYTES", f"ARG MEGABYTES={shape.multistage_megabytes}"
    ).replace("ARG LOOPS", f"ARG LOOPS={shape.multistage_loops}")
    (directory / "Dockerfile").write_text(text)


def write_big_context(directory: Path, shape: ContextShape) -> tuple[int, int]:
    """Many small text-like files plus a few big incompressible ones.

    Small files are slices of a pool of hex text (compressible, like source
    code); big files are pseudo-random bytes (like binaries or images).
    Returns (files, bytes) written.
    """
    rng = random.Random(20_000)
    pool = rng.randbytes(512 * 1024).hex().encode()
    total_bytes = 0
    for index in range(shape.small_files):
        folder = directory / "src" / f"pkg{index // shape.files_per_dir:03}"
        if index % shape.files_per_dir == 0:
            folder.mkdir(parents=True)
        size = rng.randint(shape.small_min, shape.small_max)
        offset = rng.randrange(len(pool) - size)
        header = f"// file {index}\n".encode()
        data = header + pool[offset : offset + size]
        (folder / f"file{index % shape.files_per_dir:03}.txt").write_bytes(data)
        total_bytes += len(data)
    assets = directory / "assets"
    assets.mkdir()
    for index in range(shape.big_files):
        data = rng.randbytes(shape.big_size)
        (assets / f"blob{index:02}.bin").write_bytes(data)
        total_bytes += len(data)
    (directory / "conf").mkdir()
    total_bytes += edit_big_context(directory, 0)
    (directory / "Dockerfile").write_text(BIG_DOCKERFILE)
    return shape.files(), total_bytes + len(BIG_DOCKERFILE)


def edit_big_context(directory: Path, revision: int) -> int:
    """Rewrite the one small file the late COPY reads; returns its size."""
    data = f"revision={revision}\nfeature_flags=a,b,c\n".encode()
    (directory / BIG_CHANGED_FILE).write_bytes(data)
    return len(data)


@dataclass
class DebianApp:
    """One of examples/ as a benchmark workload on the benchmark's Debian base."""

    example: str
    changed_file: str  # the source file the "one file changed" case edits
    # The text in it that the edit extends: the greeting, so that the program
    # changes (a comment would leave gcc's output, and the C image, the same).
    marker: str
    # Text the copy's Dockerfile must contain, and what it becomes.
    rewrites: tuple[tuple[str, str], ...] = ()


DEBIAN_APPS = {
    "python": DebianApp("python-web", "app.py", '"Hello from python-web"'),
    "node": DebianApp("node-web", "server.js", '"Hello from node-web"'),
    # The C workload: gcc in a Debian stage, the program copied into a
    # small busybox final stage (the example's final stage is FROM scratch).
    "c": DebianApp(
        "c-hello", "hello.c", '"Hello from c-hello"', (("\nFROM scratch\n", f"\nFROM {BASE_IMAGE}\n"),)
    ),
}


def write_debian_app(directory: Path, app: DebianApp) -> None:
    """A copy of the example whose BASE defaults to the benchmark's Debian image.

    Rewriting the ARG's default (not passing --build-arg) keeps every tool's
    command line the same as in the other workloads.
    """
    shutil.copytree(EXAMPLES / app.example, directory)
    dockerfile = directory / "Dockerfile"
    text = dockerfile.read_text()
    for old, new in (("ARG BASE=debian:bookworm", f"ARG BASE={DEBIAN_IMAGE}"), *app.rewrites):
        if old not in text:
            raise ValueError(f"{dockerfile}: expected {old!r}; examples/{app.example} changed")
        text = text.replace(old, new)
    dockerfile.write_text(text)
    if (directory / app.changed_file).read_text().count(app.marker) != 1:
        raise ValueError(f"{app.changed_file}: expected {app.marker} once; examples/{app.example} changed")


def edit_debian_app(directory: Path, app: DebianApp, revision: int) -> None:
    """The example's source file with the revision added to its greeting."""
    original = (EXAMPLES / app.example / app.changed_file).read_text()
    edited = original.replace(app.marker, f'{app.marker[:-1]}, revision {revision}"')
    (directory / app.changed_file).write_text(edited)

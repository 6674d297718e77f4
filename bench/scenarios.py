"""The build contexts and Dockerfiles the benchmark builds.

Everything is generated from fixed seeds, so two runs build the same bytes.
The Dockerfiles use only what all three tools accept (Docker 20.10's BuildKit
has no heredocs).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

BASE_IMAGE = "busybox:local"

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

    def files(self) -> int:
        return self.small_files + self.big_files + 2  # + Dockerfile + settings.txt


SMOKE_SHAPE = ContextShape(small_files=300, big_files=2, big_size=1024 * 1024)


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

# imgbuild's own image: Debian, imgbuild installed with pip into a venv, and
# runc for RUN steps. It builds images inside a container that has the
# privileges docs/container.md lists:
#   imgbuild -t imgbuild:dev .
#   imgbuild run --privileged -v /srv/imgbuild-store:/var/lib/imgbuild \
#       -v "$PWD/app:/workspace" imgbuild:dev imgbuild -t app:1 /workspace
# (with Docker: docker run --privileged -v ... imgbuild:dev imgbuild ...).
ARG BASE=debian:bookworm
FROM ${BASE}

# runc runs RUN steps; ca-certificates for pulls, pushes and pip.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv runc ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/imgbuild
ENV PATH=/opt/imgbuild/bin:$PATH

COPY pyproject.toml README.md /src/
COPY imgbuild /src/imgbuild
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install /src && rm -rf /src

# The store must be on a file system overlayfs accepts as an upper layer
# (not the container's own overlay root): mount a volume here.
ENV IMGBUILD_ROOT=/var/lib/imgbuild
VOLUME /var/lib/imgbuild
WORKDIR /workspace
CMD ["imgbuild", "--help"]

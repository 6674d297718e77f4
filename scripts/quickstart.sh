#!/usr/bin/env bash
# Quick start, as root on Debian 12: install imgbuild and what it needs, build
# the example images and run one.
#   bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

export IMGBUILD_ROOT="${IMGBUILD_ROOT:-/var/lib/imgbuild}"
imgbuild=.venv/bin/imgbuild

cp "$(command -v busybox)" examples/busybox/busybox
echo "--- building busybox:local (FROM scratch, Debian's static busybox)"
$imgbuild -t busybox:local examples/busybox
echo "--- building hello:1 (FROM busybox:local)"
$imgbuild -t hello:1 examples/hello
echo "--- imgbuild run hello:1"
$imgbuild run hello:1
echo "--- done: try '$imgbuild images' and '$imgbuild history hello:1' (store: $IMGBUILD_ROOT)"

#!/usr/bin/env bash
# Install what imgbuild needs on Debian 12 (as root) and create the project's
# virtualenv in .venv with imgbuild installed in it (editable).
#   bash scripts/install-deps.sh          runtime needs: runc, busybox, python venv
#   bash scripts/install-deps.sh --test   plus what the test suite uses
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(runc busybox-static python3-venv python3-pip ca-certificates)
extras="."
if [[ "${1:-}" == "--test" ]]; then
    # registry, skopeo, umoci and podman are the real consumers the tests check
    # our images against; buildah is the peer the compat tests compare with.
    packages+=(docker-registry skopeo umoci podman buildah crun zstd openssl)
    # tests/interop builds on base images other tools make: Docker 20.10
    # (docker build/import/save), bsdtar layers, and a Debian root filesystem
    # from debootstrap (cached in /var/cache/imgbuild-tests).
    packages+=(docker.io libarchive-tools debootstrap)
    extras=".[test]"
    # the sandbox tests compile a small static program that probes syscalls
    packages+=(gcc libc6-dev)
    # tests/faults puts a store on a small loop-mounted ext4 to fill its disk
    packages+=(e2fsprogs)
    # tests/cli renders the `imgbuild layers --format html` report in headless Chromium
    packages+=(chromium)
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "imgbuild needs root (overlay mounts, runc): run this as root" >&2
    exit 2
fi

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if (( ${#missing[@]} )); then
    echo "--- apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi

# The virtualenv's interpreter is Debian's python3, which python3-venv and
# python3-pip above belong to, also where another python3 comes first on PATH
# (pyenv, a hand-built one); IMGBUILD_PYTHON names another. It matters for
# speed: a cached build is mostly interpreter start-up and imports, and
# pyenv's python, which loads libpython as a shared library, takes ~15 ms
# longer for those than Debian's single binary (docs/benchmarks.md, "Issue
# 12, eighth round"). A .venv made with another interpreter is made again.
wanted=${IMGBUILD_PYTHON:-/usr/bin/python3}
# Its own path, as venv records it (a pyenv shim or a symlink stands for it).
if ! python=$("$wanted" -c 'import os, sys; print(os.path.realpath(sys.executable))' 2>/dev/null); then
    echo "cannot run the Python interpreter $wanted: install python3-venv, or set IMGBUILD_PYTHON" >&2
    exit 2
fi
if ! grep -qxF "executable = $python" .venv/pyvenv.cfg 2>/dev/null; then
    echo "--- making .venv with $python"
    "$python" -m venv --clear .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# compat mode: a plain path in a .pth file. The default editable finder costs
# ~10 ms at every start of imgbuild (a cached no-op build takes ~100 ms);
# an installed package has no finder either. Setuptools may drop compat mode:
# then the default applies.
.venv/bin/python -m pip install -q -e "$extras" --config-settings editable_mode=compat 2>/dev/null \
    || .venv/bin/python -m pip install -q -e "$extras"
if [[ "${1:-}" == "--test" ]]; then
    .venv/bin/python -m pip install -q ruff
fi

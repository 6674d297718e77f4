#!/usr/bin/env bash
# Benchmark imgbuild against buildah and docker/BuildKit. As root:
#   bash bench/run.sh [--workloads small,multistage,big,python,node,c] [--scenarios KEY,...]
#                     [--reps N] [--big-reps N] [--debian-reps N] [--quick-reps N]
#                     [--tools imgbuild,buildah,docker] [--smoke]
# Installs the peers from Debian if they are missing, then runs bench/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v runc >/dev/null || missing+=(runc)
command -v busybox >/dev/null || missing+=(busybox-static)
command -v debootstrap >/dev/null || missing+=(debootstrap)  # the Debian workloads' base
[[ -x /usr/bin/time ]] || missing+=(time)  # GNU time takes the peak RSS (bench/measure.py)
# The Debian client, not a newer one that may be first on PATH (see bench/README.md).
[[ -x /usr/bin/docker && -x /usr/sbin/dockerd ]] || missing+=(docker.io)

if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    # One at a time: a peer that fails to install is left out of the run
    # (the benchmark says so), the others still run.
    for package in "${missing[@]}"; do
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null; then
            echo "WARNING: apt-get install $package failed; continuing without it"
        fi
    done
fi

# imgbuild's own dependencies (zstandard, isal, ...) come from the project's
# virtualenv, which install-deps.sh creates or updates.
bash scripts/install-deps.sh >/dev/null
exec .venv/bin/python bench/run.py "$@"

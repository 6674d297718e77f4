#!/usr/bin/env bash
# The whole test suite, from a clean checkout, as root on Debian 12:
#   bash scripts/test.sh [pytest args...]
# Installs the system packages and Python deps the tests use, starts two
# registries on 127.0.0.1 (plain and htpasswd), runs ruff and pytest, and
# stops the registries it started (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test

work=$(mktemp -d /tmp/imgbuild-test.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

start_registry() {  # name config port [htpasswd file]
    mkdir -p "$work/$1"
    # The htpasswd path only for the auth registry: Distribution panics on an
    # htpasswd section without a realm.
    env REGISTRY_HTTP_ADDR="127.0.0.1:$3" \
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$work/$1/storage" \
        ${4:+REGISTRY_AUTH_HTPASSWD_PATH="$4"} \
        setsid docker-registry serve "testdata/registry/$2" >"$work/$1/log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        if .venv/bin/python -c "import socket; socket.create_connection(('127.0.0.1', $3), 1)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "registry $1 did not start:" >&2; cat "$work/$1/log" >&2; return 1
}
free_port() { .venv/bin/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }

plain_port=$(free_port); start_registry plain plain.yml "$plain_port"
auth_port=$(free_port); start_registry auth auth.yml "$auth_port" "$PWD/testdata/registry/htpasswd"
export IMGBUILD_TEST_REGISTRY="127.0.0.1:$plain_port"
export IMGBUILD_TEST_AUTH_REGISTRY="127.0.0.1:$auth_port"
echo "--- registries: $IMGBUILD_TEST_REGISTRY (plain), $IMGBUILD_TEST_AUTH_REGISTRY (htpasswd)"

echo "--- ruff"
.venv/bin/ruff check imgbuild tests bench

echo "--- pytest"
# pytest exits 5 when it collects no tests: that is a failure here too.
.venv/bin/python -m pytest -ra "$@"

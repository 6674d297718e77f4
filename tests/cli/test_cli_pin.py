"""``imgbuild pin``: base images pinned to the digests a real registry on 127.0.0.1 serves.

The images are pushed by skopeo (OCI and Docker v2 schema 2 manifests), and the
expected digest is the sha256 of the manifest bytes ``skopeo inspect --raw`` gets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from imagetools import make_busybox_image

from imgbuild.store import Store


@pytest.fixture(autouse=True)
def _no_host_docker_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.delenv("IMGBUILD_INSECURE_REGISTRIES", raising=False)


def _skopeo(*args: str) -> str:
    assert shutil.which("skopeo"), "skopeo is not installed; run scripts/test.sh"
    result = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"skopeo {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def source_layout(tmp_path_factory) -> Path:
    """An OCI layout (a store's) holding the test busybox image as busybox:latest."""
    store = Store(tmp_path_factory.mktemp("pin-source") / "store")
    make_busybox_image(store, "busybox:latest")
    return store.layout


def _push(layout: Path, target: str, manifest_format: str = "oci") -> str:
    """skopeo copy to ``target``; the digest of the manifest the registry now serves."""
    _skopeo("copy", "--dest-tls-verify=false", "--format", manifest_format, f"oci:{layout}:busybox:latest", f"docker://{target}")
    raw = _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{target}").encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _repo(prefix: str) -> str:
    return f"pin/{prefix}-{uuid.uuid4().hex[:8]}"


DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE=alpine:3
# the builder
FROM --platform=$BUILDPLATFORM {oci} AS build
RUN echo build

from {v2s2}   as   other
FROM \\
    {latest} \\
    AS  final
FROM ${{BASE}}
FROM build
FROM scratch
FROM {pinned}
COPY --from=build / /
"""


def test_pin_rewrites_only_the_image_words_and_check_passes_after(cli, registry, source_layout, tmp_path):
    oci_repo, v2_repo, latest_repo = _repo("oci"), _repo("v2s2"), _repo("latest")
    oci_digest = _push(source_layout, f"{registry.host}/{oci_repo}:1.0")
    v2_digest = _push(source_layout, f"{registry.host}/{v2_repo}:2", "v2s2")
    latest_digest = _push(source_layout, f"{registry.host}/{latest_repo}:latest")
    assert oci_digest != v2_digest  # two manifest formats: two digests, both served
    pinned = f"{registry.host}/{oci_repo}:old@sha256:{'0' * 64}"
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(DOCKERFILE.format(
        oci=f"{registry.host}/{oci_repo}:1.0", v2s2=f"{registry.host}/{v2_repo}:2",
        latest=f"{registry.host}/{latest_repo}", pinned=pinned,
    ))  # fmt: skip
    dockerfile.chmod(0o640)

    before = cli("pin", "-f", str(dockerfile), "--check")
    assert before.exit_code == 1
    assert f"{dockerfile}:4: FROM {registry.host}/{oci_repo}:1.0: not pinned to a digest" in before.stdout
    assert f"{dockerfile}:7: FROM {registry.host}/{v2_repo}:2: not pinned" in before.stdout
    assert f"{dockerfile}:8: FROM {registry.host}/{latest_repo}: not pinned" in before.stdout
    assert f"{dockerfile}:11: FROM ${{BASE}}: uses a build arg" in before.stdout
    assert f"{dockerfile}:12: FROM build: an earlier stage" in before.stdout
    assert "3 base image(s) not pinned" in before.stderr

    result = cli("pin", "-f", str(dockerfile))
    assert result.exit_code == 0, result.stderr
    assert dockerfile.read_text() == DOCKERFILE.format(
        oci=f"{registry.host}/{oci_repo}:1.0@{oci_digest}",
        v2s2=f"{registry.host}/{v2_repo}:2@{v2_digest}",
        latest=f"{registry.host}/{latest_repo}:latest@{latest_digest}",
        pinned=pinned,  # already pinned: left alone without --update
    )
    assert dockerfile.stat().st_mode & 0o777 == 0o640
    assert "3 base image(s) pinned" in result.stdout
    assert "already pinned" in result.stdout

    after = cli("pin", "-f", str(dockerfile), "--check")
    assert after.exit_code == 0, after.stdout
    assert "every base image is pinned" in after.stdout
    again = cli("pin", "-f", str(dockerfile))
    assert again.exit_code == 0 and "nothing to change" in again.stdout


def test_update_re_resolves_pinned_tags_to_what_the_registry_serves_now(cli, registry, source_layout, tmp_path):
    target = f"{registry.host}/{_repo('moving')}:stable"
    first = _push(source_layout, target, "oci")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {target}\nCMD [\"sh\"]\n")
    assert cli("pin", "-f", str(dockerfile)).exit_code == 0
    assert dockerfile.read_text() == f"FROM {target}@{first}\nCMD [\"sh\"]\n"

    moved = _push(source_layout, target, "v2s2")  # the tag now names another manifest
    assert moved != first
    left = cli("pin", "-f", str(dockerfile))
    assert left.exit_code == 0 and dockerfile.read_text() == f"FROM {target}@{first}\nCMD [\"sh\"]\n"
    updated = cli("pin", "-f", str(dockerfile), "--update")
    assert updated.exit_code == 0, updated.stderr
    assert dockerfile.read_text() == f"FROM {target}@{moved}\nCMD [\"sh\"]\n"


def test_a_pinned_dockerfile_builds_from_the_pinned_digest(cli, registry, source_layout, tmp_path):
    target = f"{registry.host}/{_repo('build')}:1"
    digest = _push(source_layout, target)
    context = tmp_path / "context"
    context.mkdir()
    (context / "hello.txt").write_text("hello\n")
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(f"FROM {target}\nCOPY hello.txt /\n")
    assert cli("pin", "-f", str(dockerfile)).exit_code == 0
    assert f"@{digest}" in dockerfile.read_text()
    built = cli("build", "--progress", "plain", "-t", "pinned:1", str(context))
    assert built.exit_code == 0, built.stderr
    history = cli("inspect", "pinned:1")
    assert history.exit_code == 0


def test_unknown_tag_is_an_error_naming_the_line_and_the_file_is_unchanged(cli, registry, source_layout, tmp_path):
    repo = _repo("known")
    _push(source_layout, f"{registry.host}/{repo}:1")
    dockerfile = tmp_path / "Dockerfile"
    text = f"FROM {registry.host}/{repo}:1\nFROM {registry.host}/{repo}:no-such-tag\n"
    dockerfile.write_text(text)
    result = cli("pin", "-f", str(dockerfile))
    assert result.exit_code == 1
    assert f"{dockerfile}:2: FROM {registry.host}/{repo}:no-such-tag: cannot resolve it" in result.stderr
    assert "Traceback" not in result.stderr
    assert dockerfile.read_text() == text


def test_check_asks_no_registry(cli, tmp_path):
    """--check is for CI: it works without any registry (port 1 answers nothing)."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM 127.0.0.1:1/app:1@sha256:{'a' * 64}\nFROM scratch\n")
    result = cli("pin", "-f", str(dockerfile), "--check")
    assert result.exit_code == 0, result.stdout
    dockerfile.write_text("FROM 127.0.0.1:1/app:1\n")
    assert cli("pin", "-f", str(dockerfile), "--check").exit_code == 1


def test_missing_or_special_dockerfile_is_a_usage_error(cli, tmp_path):
    result = cli("pin", "-f", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "cannot open" in result.stderr
    assert cli("pin", "-f", str(tmp_path)).exit_code == 2


def test_a_from_the_parsers_read_differently_is_refused(cli, tmp_path):
    """A blank line inside FROM's continuation: BuildKit reads `busybox:1` as the base,
    dockerfile-parse an empty FROM. Pinning would miss the base the build uses."""
    dockerfile = tmp_path / "Dockerfile"
    text = "FROM \\\n\n    127.0.0.1:1/busybox:1\nRUN true\n"
    dockerfile.write_text(text)
    for args in (("--check",), ()):
        result = cli("pin", "-f", str(dockerfile), *args)
        assert result.exit_code == 2, result.stdout
        assert f"{dockerfile}:1: this FROM cannot be pinned safely" in result.stderr
    assert dockerfile.read_text() == text


def test_pin_uses_the_docker_config_credentials(cli, auth_registry, source_layout, tmp_path):
    repo = _repo("private")
    target = f"{auth_registry.host}/{repo}:1"
    _skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", f"{auth_registry.username}:{auth_registry.password}",
        f"oci:{source_layout}:busybox:latest", f"docker://{target}",
    )  # fmt: skip
    raw = _skopeo(
        "inspect", "--raw", "--tls-verify=false", "--creds", f"{auth_registry.username}:{auth_registry.password}",
        f"docker://{target}",
    ).encode()  # fmt: skip
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {target}\n")
    refused = cli("pin", "-f", str(dockerfile))
    assert refused.exit_code == 1 and "cannot resolve it" in refused.stderr
    config = tmp_path / "docker-config"
    config.mkdir()
    auth = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": auth}}}))
    pinned = cli("pin", "-f", str(dockerfile))
    assert pinned.exit_code == 0, pinned.stderr
    assert dockerfile.read_text() == f"FROM {target}@sha256:{hashlib.sha256(raw).hexdigest()}\n"

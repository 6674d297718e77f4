"""``imgbuild pull`` and ``imgbuild push`` as a user runs them: output and exit codes."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from imgbuild.store import Store


def test_push_then_pull(registry, busybox_store, tmp_path, imgbuild_cli, new_repo):
    target = f"{registry.host}/{new_repo('cli')}:1"
    digest = busybox_store.resolve("busybox:latest").digest
    layers = len(busybox_store.load_image("busybox:latest").layers)

    pushed = imgbuild_cli(busybox_store.root, "push", "busybox:latest", target)
    assert pushed.returncode == 0, pushed.stderr
    assert f"The push refers to repository [{target.rsplit(':', 1)[0]}]" in pushed.stdout
    assert pushed.stdout.count(": Pushed") == layers
    assert f"1: digest: {digest} size: " in pushed.stdout

    root = tmp_path / "pulled"
    pulled = imgbuild_cli(root, "pull", target)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.count(": Pull complete") == layers
    assert f"Digest: {digest}" in pulled.stdout
    assert f"Status: Downloaded newer image for {target}" in pulled.stdout
    assert Store(root).resolve(target).digest == digest

    again = imgbuild_cli(root, "pull", "--platform", "linux/" + Store(root).load_image(target).platform.architecture, target)
    assert again.returncode == 0, again.stderr
    assert "Image is up to date" in again.stdout


def test_push_reference_defaults_to_name_and_quiet(registry, busybox_store, imgbuild_cli, new_repo):
    name = f"{registry.host}/{new_repo('cli-self')}:2"
    busybox_store.tag(name, busybox_store.resolve("busybox:latest"))

    result = imgbuild_cli(busybox_store.root, "push", "-q", "--insecure-registry", registry.host, name)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == busybox_store.resolve(name).digest


def test_pull_of_a_missing_tag_fails_naming_it(registry, busybox_store, tmp_path, imgbuild_cli, new_repo):
    repo = new_repo("cli-missing")
    imgbuild_cli(busybox_store.root, "push", "busybox:latest", f"{registry.host}/{repo}:1")

    result = imgbuild_cli(tmp_path / "pulled", "pull", f"{registry.host}/{repo}:nope")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"registry {registry.host} has no tag 'nope' in repository '{repo}'" in result.stderr


def test_bad_input_is_a_usage_error(tmp_path, imgbuild_cli):
    bad_reference = imgbuild_cli(tmp_path / "root", "pull", "Not/A:Valid:Ref")
    assert bad_reference.returncode == 2
    assert "invalid image reference" in bad_reference.stderr

    bad_platform = imgbuild_cli(tmp_path / "root", "pull", "--platform", "amd64", "busybox")
    assert bad_platform.returncode == 2
    assert "invalid platform" in bad_platform.stderr


def test_push_of_an_unknown_image_fails(registry, tmp_path, imgbuild_cli):
    result = imgbuild_cli(tmp_path / "root", "push", "nothing:here", f"{registry.host}/x:1")
    assert result.returncode == 1
    assert "no image named 'nothing:here'" in result.stderr


@pytest.fixture
def loopback_name():
    """A host name (not "localhost", not an IP) that resolves to loopback: the machine's own."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except socket.gaierror:
        addresses = set()
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        pytest.skip(f"the host name {name!r} does not resolve to loopback only")
    return name


def test_insecure_registry_flag(registry, busybox_store, tmp_path, imgbuild_cli, new_repo, loopback_name):
    """A registry under a non-loopback name is HTTPS unless named with --insecure-registry."""
    port = registry.host.rsplit(":", 1)[1]
    host = f"{loopback_name}:{port}"
    target = f"{host}/{new_repo('insecure')}:1"

    refused = imgbuild_cli(busybox_store.root, "push", "busybox:latest", target)
    assert refused.returncode == 1
    assert f"TLS connection to registry {host} failed" in refused.stderr
    assert "--insecure-registry" in refused.stderr

    pushed = imgbuild_cli(busybox_store.root, "push", "--insecure-registry", host, "busybox:latest", target)
    assert pushed.returncode == 0, pushed.stderr
    pulled = imgbuild_cli(tmp_path / "pulled", "pull", "--insecure-registry", loopback_name, target)
    assert pulled.returncode == 0, pulled.stderr

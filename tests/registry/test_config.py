"""Registry configuration: config.json credentials, WWW-Authenticate, insecure hosts."""

from __future__ import annotations

import base64
import json
import os

import pytest

from imgbuild.errors import AuthError
from imgbuild.registry.auth import load_credentials, parse_challenges, realm_may_get_credentials
from imgbuild.registry.client import RegistryClient, RegistryOptions, is_insecure


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_config(directory, document) -> None:
    (directory / "config.json").write_text(json.dumps(document))


def test_base64_auth_from_docker_config(docker_config):
    write_config(docker_config, {"auths": {"reg.example:5000": {"auth": b64("alice:s3cret:with:colons")}}})
    credentials = load_credentials("reg.example:5000")
    assert (credentials.username, credentials.password) == ("alice", "s3cret:with:colons")
    assert credentials.source == str(docker_config / "config.json")
    assert "s3cret" not in repr(credentials)
    assert load_credentials("reg.example:5001") is None
    assert load_credentials("reg.example") is None


def test_username_password_fields_and_url_keys(docker_config):
    write_config(docker_config, {"auths": {"https://reg.example/v1/": {"username": "bob", "password": "pw"}}})
    credentials = load_credentials("reg.example")
    assert (credentials.username, credentials.password) == ("bob", "pw")


def test_docker_hub_key(docker_config):
    write_config(docker_config, {"auths": {"https://index.docker.io/v1/": {"auth": b64("hub:pw")}}})
    assert load_credentials("docker.io").username == "hub"


def test_home_docker_config_when_docker_config_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".docker").mkdir()
    write_config(tmp_path / ".docker", {"auths": {"h:1": {"auth": b64("u:p")}}})
    assert load_credentials("h:1").username == "u"


def test_no_config_file_means_no_credentials(docker_config):
    assert load_credentials("reg.example") is None


@pytest.mark.parametrize(
    "document, message",
    [
        ("{not json", "cannot read registry credentials"),
        ({"auths": {"h": {"auth": "!!!not-base64"}}}, "not valid base64"),
        ({"auths": {"h": {"auth": b64("no-colon-here")}}}, "not of the form"),
    ],
)
def test_broken_config_is_a_clear_error(docker_config, document, message):
    text = document if isinstance(document, str) else json.dumps(document)
    (docker_config / "config.json").write_text(text)
    with pytest.raises(AuthError) as caught:
        load_credentials("h")
    assert message in str(caught.value)
    assert "no-colon-here" not in str(caught.value)


def test_credential_helper(docker_config, tmp_path, monkeypatch):
    """A real docker-credential-* program, speaking the helper protocol on stdin/stdout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-testhelper"
    helper.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 1\n'
        "read server\n"
        'if [ "$server" = "helped.example:5000" ]; then\n'
        '  echo \'{"ServerURL":"helped.example:5000","Username":"helper-user","Secret":"helper-pw"}\'\n'
        "else\n"
        "  echo 'credentials not found in native keychain'; exit 1\n"
        "fi\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    write_config(docker_config, {
        "credHelpers": {"helped.example:5000": "testhelper", "other.example": "testhelper"},
        "auths": {"other.example": {"auth": b64("file-user:file-pw")}},
    })
    credentials = load_credentials("helped.example:5000")
    assert (credentials.username, credentials.password) == ("helper-user", "helper-pw")
    assert "docker-credential-testhelper" in credentials.source
    # the helper has nothing for other.example: the auths entry is used
    assert load_credentials("other.example").username == "file-user"


@pytest.mark.parametrize(
    "header, expected",
    [
        ('Basic realm="registry"', [("basic", {"realm": "registry"})]),
        (
            'Bearer realm="https://auth.example/token",service="registry.example",'
            'scope="repository:library/busybox:pull,push"',
            [("bearer", {"realm": "https://auth.example/token", "service": "registry.example",
                         "scope": "repository:library/busybox:pull,push"})],
        ),
        (
            'Bearer realm="https://a/t", error="insufficient_scope", scope="repository:x:push"',
            [("bearer", {"realm": "https://a/t", "error": "insufficient_scope", "scope": "repository:x:push"})],
        ),
        ('bearer realm=https://a/t,service=s', [("bearer", {"realm": "https://a/t", "service": "s"})]),
        (
            'Basic realm="one", Bearer realm="https://two",service="svc"',
            [("basic", {"realm": "one"}), ("bearer", {"realm": "https://two", "service": "svc"})],
        ),
        ('Basic realm="with \\"quote\\""', [("basic", {"realm": 'with "quote"'})]),
        ("", []),
    ],
)
def test_parse_challenges(header, expected):
    assert [(c.scheme, c.params) for c in parse_challenges(header)] == expected


@pytest.mark.parametrize(
    "host, insecure_list, expected",
    [
        ("localhost", (), True),
        ("localhost:5000", (), True),
        ("127.0.0.1:5000", (), True),
        ("127.1.2.3:5000", (), True),
        ("[::1]:5000", (), True),
        ("registry.example", (), False),
        ("registry.example:5000", (), False),
        ("10.0.0.5:5000", (), False),
        ("registry.example:5000", ("registry.example:5000",), True),
        ("registry.example:5000", ("registry.example",), True),
        ("registry.example:5001", ("registry.example:5000",), False),
        ("10.0.0.5:5000", ("10.0.0.0/8",), True),
        ("11.0.0.5:5000", ("10.0.0.0/8",), False),
        ("registry.example", ("http://registry.example/",), True),
    ],
)
def test_insecure_hosts(host, insecure_list, expected):
    assert is_insecure(host, insecure_list) is expected


@pytest.mark.parametrize(
    "realm,registry_url,expected",
    [
        ("https://auth.example/token", "https://reg.example", True),
        ("https://auth.example/token", "http://127.0.0.1:5000", True),
        ("http://127.0.0.1:5001/token", "http://127.0.0.1:5000", True),  # the registry's own host
        ("http://REG.example:81/t", "http://reg.example:5000", True),
        ("http://localhost:5001/token", "http://127.0.0.1:5000", False),  # another host name
        ("http://auth.example/token", "http://reg.example:5000", False),
        ("http://reg.example/token", "https://reg.example", False),  # a downgrade from https
        ("ftp://reg.example/token", "http://reg.example", False),
        ("http:///token", "http://reg.example", False),
    ],
)
def test_which_token_realms_get_credentials(realm, registry_url, expected):
    assert realm_may_get_credentials(realm, registry_url) is expected


def test_client_scheme(monkeypatch):
    assert RegistryClient("127.0.0.1:5000").scheme == "http"
    assert RegistryClient("registry.example:5000").scheme == "https"
    assert RegistryClient("docker.io").api_host == "registry-1.docker.io"
    assert RegistryClient("docker.io").scheme == "https"
    options = RegistryOptions(insecure_registries=("registry.example:5000",))
    assert RegistryClient("registry.example:5000", options=options).scheme == "http"
    monkeypatch.setenv("IMGBUILD_INSECURE_REGISTRIES", "a.example, registry.example:5000")
    assert RegistryClient("registry.example:5000").scheme == "http"
    assert RegistryClient("b.example").scheme == "https"

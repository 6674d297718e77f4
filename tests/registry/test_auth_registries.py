"""Pull and push against real registries that want credentials: htpasswd basic auth,
and bearer tokens from a token service (the Docker Hub scheme)."""

from __future__ import annotations

import base64
import hashlib
import logging

import pytest

from imgbuild.errors import AuthError
from imgbuild.registry.pull import pull
from imgbuild.registry.push import push


@pytest.fixture(params=["basic", "bearer"])
def secured(request):
    """The basic-auth registry and the token registry, one after the other."""
    return request.getfixturevalue("auth_registry" if request.param == "basic" else "token_registry")


def assert_no_secret(text: str, password: str, username: str) -> None:
    pair = base64.b64encode(f"{username}:{password}".encode()).decode()
    assert password not in text
    assert pair not in text


def test_without_credentials_the_error_names_the_registry(secured, busybox_store, make_store, docker_config, new_repo):
    target = f"{secured.host}/{new_repo('nocreds')}:1"

    with pytest.raises(AuthError) as caught:
        push(busybox_store, "busybox:latest", target)
    message = str(caught.value)
    assert secured.host in message
    assert "no credentials" in message
    assert str(docker_config / "config.json") in message

    with pytest.raises(AuthError, match="requires authentication"):
        pull(make_store("pulled"), target)


def test_with_credentials_push_and_pull_work(secured, login, busybox_store, make_store, new_repo, caplog):
    caplog.set_level(logging.DEBUG)
    login(secured.host, secured.username, secured.password)
    target = f"{secured.host}/{new_repo('creds')}:1"

    pushed = push(busybox_store, "busybox:latest", target)
    image = pull(make_store("pulled"), target)

    assert image.digest == pushed.digest
    assert_no_secret(caplog.text, secured.password, secured.username)


def test_wrong_password_is_refused_without_showing_it(secured, login, busybox_store, make_store, docker_config, new_repo, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-password-7f3a"
    login(secured.host, secured.username, wrong)
    target = f"{secured.host}/{new_repo('wrong')}:1"

    with pytest.raises(AuthError) as push_error:
        push(busybox_store, "busybox:latest", target)
    with pytest.raises(AuthError) as pull_error:
        pull(make_store("pulled"), target)

    for error in (push_error.value, pull_error.value):
        message = str(error)
        assert secured.host in message
        assert "rejected the credentials" in message
        assert str(docker_config / "config.json") in message
        assert_no_secret(message, wrong, secured.username)
    assert_no_secret(caplog.text, wrong, secured.username)


def test_pull_what_skopeo_pushed_with_credentials(auth_registry, login, busybox_store, make_store, skopeo, new_repo):
    target = f"{auth_registry.host}/{new_repo('skopeo-auth')}:v2s2"
    skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", f"{auth_registry.username}:{auth_registry.password}",
        "--format", "v2s2", f"oci:{busybox_store.layout}:busybox:latest", f"docker://{target}",
    )
    raw = skopeo(
        "inspect", "--raw", "--tls-verify=false", "--creds", f"{auth_registry.username}:{auth_registry.password}",
        f"docker://{target}",
    ).encode()
    login(auth_registry.host, auth_registry.username, auth_registry.password)

    image = pull(make_store("pulled"), target)

    assert image.digest == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_bearer_tokens_are_asked_for_the_right_scopes(token_registry, login, busybox_store, make_store, new_repo):
    login(token_registry.host, token_registry.username, token_registry.password)
    repo = new_repo("scopes")
    token_registry.token_requests.clear()

    push(busybox_store, "busybox:latest", f"{token_registry.host}/{repo}:1")
    push_scopes = {s for query in token_registry.token_requests for s in query["scope"]}
    assert f"repository:{repo}:pull,push" in push_scopes
    assert all(q["service"] == ["imgbuild-test-registry"] for q in token_registry.token_requests)
    assert all(q["account"] == [token_registry.username] for q in token_registry.token_requests)

    token_registry.token_requests.clear()
    pull(make_store("pulled"), f"{token_registry.host}/{repo}:1")
    pull_scopes = {s for query in token_registry.token_requests for s in query["scope"]}
    assert pull_scopes == {f"repository:{repo}:pull"}
    # one token serves the whole pull (manifest and parallel blob downloads)
    assert len(token_registry.token_requests) == 1


def test_bearer_cross_repository_mount(token_registry, login, busybox_store, new_repo):
    login(token_registry.host, token_registry.username, token_registry.password)
    first, second = new_repo("mount-src"), new_repo("mount-dst")
    push(busybox_store, "busybox:latest", f"{token_registry.host}/{first}:1")
    token_registry.token_requests.clear()

    events = []
    push(busybox_store, "busybox:latest", f"{token_registry.host}/{second}:1", progress=events.append)

    assert sorted(e.action for e in events) == ["manifest", "mounted", "mounted"]
    scopes = {s for query in token_registry.token_requests for s in query["scope"]}
    assert f"repository:{first}:pull" in scopes


def test_bearer_credentials_reach_a_plain_http_realm_on_the_registrys_own_host(
    token_registry, login, busybox_store, new_repo
):
    login(token_registry.host, token_registry.username, token_registry.password)
    token_registry.token_authorizations.clear()
    push(busybox_store, "busybox:latest", f"{token_registry.host}/{new_repo('own-host')}:1")
    basic = "Basic " + base64.b64encode(f"{token_registry.username}:{token_registry.password}".encode()).decode()
    assert token_registry.token_authorizations and set(token_registry.token_authorizations) == {basic}


def test_credentials_never_go_to_a_plain_http_realm_on_another_host(
    foreign_realm_registry, login, busybox_store, make_store, docker_config, new_repo, tmp_path, monkeypatch
):
    """Neither config.json's credentials nor ~/.netrc's reach the token service."""
    registry = foreign_realm_registry
    login(registry.host, registry.username, registry.password)
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("machine localhost login netrc-user password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NETRC", raising=False)
    registry.token_authorizations.clear()
    target = f"{registry.host}/{new_repo('foreign-realm')}:1"

    with pytest.raises(AuthError) as push_error:
        push(busybox_store, "busybox:latest", target)
    with pytest.raises(AuthError) as pull_error:
        pull(make_store("pulled"), target)

    assert registry.token_authorizations and set(registry.token_authorizations) == {None}
    for error in (push_error.value, pull_error.value):
        message = str(error)
        assert "did not send the credentials" in message
        assert str(docker_config / "config.json") in message and "localhost" in message
        assert_no_secret(message, registry.password, registry.username)


def test_registry_without_auth_never_reads_credentials(registry, busybox_store, make_store, docker_config, new_repo):
    """Credentials are read only when a registry asks, so a broken config.json does not
    stop pulls from registries that need none (its error shows once one does)."""
    (docker_config / "config.json").write_text("{broken json")
    target = f"{registry.host}/{new_repo('anon')}:1"

    pushed = push(busybox_store, "busybox:latest", target)

    assert pull(make_store("pulled"), target).digest == pushed.digest

"""Reference parsing follows Docker's ParseNormalizedNamed (distribution/reference)."""

from __future__ import annotations

import pytest

from imgbuild.errors import UsageError
from imgbuild.registry.reference import parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text, registry, repository, tag, digest",
    [
        # Docker Hub: the default registry, library/ for single names
        ("busybox", "docker.io", "library/busybox", None, None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("library/busybox", "docker.io", "library/busybox", None, None),
        ("user/app", "docker.io", "user/app", None, None),
        ("docker.io/busybox", "docker.io", "library/busybox", None, None),
        ("index.docker.io/user/app:v1", "docker.io", "user/app", "v1", None),
        ("a/b/c/d", "docker.io", "a/b/c/d", None, None),
        # the first component is a host when it has '.' or ':', is localhost, or has upper case
        ("localhost/app", "localhost", "app", None, None),
        ("localhost:5000/app:1", "localhost:5000", "app", "1", None),
        ("127.0.0.1:5000/ns/app:1", "127.0.0.1:5000", "ns/app", "1", None),
        ("registry.example.com/team/app", "registry.example.com", "team/app", None, None),
        ("example:5000/app", "example:5000", "app", None, None),
        ("[::1]:5000/app:tag", "[::1]:5000", "app", "tag", None),
        ("Registry/app", "Registry", "app", None, None),
        ("gcr/app", "docker.io", "gcr/app", None, None),
        # a single name with a port-like suffix is a tag, as in Docker
        ("localhost:5000", "docker.io", "library/localhost", "5000", None),
        # separators inside path components
        ("my-app_x__z---w/a.b", "docker.io", "my-app_x__z---w/a.b", None, None),
        # digests, and a tag next to a digest
        (f"app@{DIGEST}", "docker.io", "library/app", None, DIGEST),
        (f"127.0.0.1:5000/app:1@{DIGEST}", "127.0.0.1:5000", "app", "1", DIGEST),
        # tags: letters, digits, _ . - up to 128, not starting with . or -
        ("app:_x", "docker.io", "library/app", "_x", None),
        ("app:" + "t" * 128, "docker.io", "library/app", "t" * 128, None),
        ("app:V1.0-RC_2", "docker.io", "library/app", "V1.0-RC_2", None),
    ],
)
def test_parse_valid(text, registry, repository, tag, digest):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "expected [HOST[:PORT]/]NAME"),
        ("Busybox", "must be lowercase"),
        ("127.0.0.1:5000/App:1", "must be lowercase"),
        ("a" * 64, "image ID"),
        ("app:", "expected"),
        ("app:-x", "expected"),
        ("app:.x", "expected"),
        ("app:" + "t" * 129, "expected"),
        ("-app", "expected"),
        ("app-", "expected"),
        ("a//b", "expected"),
        ("app/", "expected"),
        ("host:port/app", "expected"),
        ("app@sha256:abc", "expected"),
        ("app@sha512:" + "a" * 128, "only sha256"),
        (f"app@sha256:{'A' * 64}", "only sha256"),
        ("app name", "expected"),
        ("app:tag:tag", "expected"),
        ("my_host.io/app", "not a valid registry host"),
        ("example.com/" + "a" * 250, "longer than 255"),
    ],
)
def test_parse_invalid(text, message):
    with pytest.raises(UsageError) as caught:
        parse_reference(text)
    assert message in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    "text, canonical, familiar, store_name, manifest_reference, api_host",
    [
        ("busybox", "docker.io/library/busybox", "busybox", "busybox:latest", "latest", "registry-1.docker.io"),
        ("docker.io/library/busybox:1", "docker.io/library/busybox:1", "busybox", "busybox:1", "1", "registry-1.docker.io"),
        ("user/app:2", "docker.io/user/app:2", "user/app", "user/app:2", "2", "registry-1.docker.io"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000/app", "127.0.0.1:5000/app", "127.0.0.1:5000/app:latest", "latest", "127.0.0.1:5000"),
        (f"host.io/a:1@{DIGEST}", f"host.io/a:1@{DIGEST}", "host.io/a", f"host.io/a@{DIGEST}", DIGEST, "host.io"),
    ],
)
def test_names(text, canonical, familiar, store_name, manifest_reference, api_host):
    ref = parse_reference(text)
    assert str(ref) == canonical
    assert ref.familiar_name == familiar
    assert ref.store_name == store_name
    assert ref.manifest_reference == manifest_reference
    assert ref.api_host == api_host


def test_reparsing_the_canonical_form_is_stable():
    for text in ("busybox", "user/app:1", "localhost:5000/a/b:c", f"app@{DIGEST}", "[::1]:5000/x"):
        ref = parse_reference(text)
        assert parse_reference(str(ref)) == ref
        assert parse_reference(ref.store_name).store_name == ref.store_name

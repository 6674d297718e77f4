"""Retries and verification, through a proxy in front of the real registry that
answers 503/500, drops connections, cuts blobs short or corrupts them."""

from __future__ import annotations

import pytest
from imagetools import temp_leftovers

from imgbuild.errors import DigestMismatch, RegistryError
from imgbuild.registry.client import RegistryOptions
from imgbuild.registry.pull import pull
from imgbuild.registry.push import push

# Short pauses between tries keep the tests quick; the schedule is the real one.
FAST = RegistryOptions(backoff=0.05)


@pytest.fixture
def pushed(proxy, busybox_store, new_repo):
    """The busybox image pushed (directly, all good) to a fresh repository."""
    target = f"{proxy.host}/{new_repo('retry')}:1"
    descriptor = push(busybox_store, "busybox:latest", target)
    proxy.seen.clear()
    return target, descriptor


def test_pull_survives_503s(proxy, pushed, make_store):
    target, descriptor = pushed
    proxy.fail_first = 3

    image = pull(make_store("pulled"), target, options=FAST)

    assert image.digest == descriptor.digest
    assert [r.status for r in proxy.seen[:3]] == [503, 503, 503]


def test_pull_survives_dropped_connections(proxy, pushed, make_store):
    target, descriptor = pushed
    proxy.drop_first = 2

    image = pull(make_store("pulled"), target, options=FAST)

    assert image.digest == descriptor.digest
    assert [r.status for r in proxy.seen[:2]] == [None, None]


def test_pull_survives_a_blob_cut_short(proxy, pushed, make_store):
    target, descriptor = pushed
    proxy.cut_blob_downloads = 1
    store = make_store("pulled")

    image = pull(store, target, options=FAST)

    assert image.digest == descriptor.digest
    blob_gets = [r.path for r in proxy.seen if r.method == "GET" and "/blobs/" in r.path]
    assert len(blob_gets) == 3  # config, layer, and one of them again
    for layer in image.layers:
        store.read_blob(layer.digest)  # verifies the digest


def test_push_survives_503s_and_drops(proxy, busybox_store, make_store, new_repo):
    target = f"{proxy.host}/{new_repo('flaky-push')}:1"
    proxy.fail_first = 2
    proxy.drop_first = 1

    pushed = push(busybox_store, "busybox:latest", target, options=FAST)

    assert pull(make_store("check"), target).digest == pushed.digest
    assert [r.status for r in proxy.seen[:3]] == [503, 503, None]


@pytest.mark.parametrize("chunked", [False, True])
def test_failed_upload_starts_a_new_session(proxy, busybox_store, make_store, new_repo, chunked):
    target = f"{proxy.host}/{new_repo('reupload')}:1"
    options = RegistryOptions(backoff=0.05, workers=1, chunk_threshold=1000 if chunked else 32 << 20)
    proxy.fail_upload_puts = 1

    pushed = push(busybox_store, "busybox:latest", target, options=options)

    posts = [r for r in proxy.seen if r.method == "POST"]
    assert len(posts) == 3  # two blobs, one of them twice
    assert pull(make_store("check"), target).digest == pushed.digest


def test_permanent_500_gives_up_with_the_status(proxy, pushed, make_store):
    target, _ = pushed
    proxy.always_status = 500
    store = make_store("pulled")

    with pytest.raises(RegistryError) as caught:
        pull(store, target, options=FAST)

    message = str(caught.value)
    assert "500" in message and "Internal Server Error" in message
    assert proxy.host in message
    assert "gave up after 4 attempts" in message
    assert len(proxy.seen) == 4
    assert store.refs() == []


def test_permanent_500_on_push(proxy, busybox_store, new_repo):
    proxy.always_status = 500
    with pytest.raises(RegistryError, match="answered 500"):
        push(busybox_store, "busybox:latest", f"{proxy.host}/{new_repo('down')}:1", options=FAST)


def test_corrupt_blob_is_refused_and_not_stored(proxy, pushed, make_store):
    target, descriptor = pushed
    proxy.corrupt_blobs = True
    store = make_store("pulled")

    with pytest.raises(DigestMismatch) as caught:
        pull(store, target, options=FAST)

    assert proxy.host in str(caught.value)
    assert store.all_blobs() == []
    assert store.refs() == []
    assert temp_leftovers(store) == []

"""Round trips through a real registry, checked with skopeo on the other side."""

from __future__ import annotations

import gzip
import hashlib
import json
import os

import pytest
import requests
from imagetools import recorded_diff_id, temp_leftovers
from ocitools import compress_layer, push_layout_raw, python_tar, write_layout

from imgbuild.errors import DigestMismatch, ImgbuildError, RegistryError, UsageError
from imgbuild.image import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    canonical_json,
    chain_ids,
)
from imgbuild.registry.client import RegistryOptions
from imgbuild.registry.pull import pull
from imgbuild.registry.push import push


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def raw_manifest(skopeo, reference: str) -> bytes:
    return skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{reference}").encode()


def other_platform() -> Platform:
    """A platform that is not the host's, for multi-platform tests."""
    return Platform("linux", "arm64") if Platform.host().architecture != "arm64" else Platform("linux", "amd64")


def assert_image_complete(store, image) -> None:
    """Every blob is in the store and hashes to its name; each layer holds its diff_id
    and is unpacked into the snapshot of its place in the stack.

    The pull extracts each layer as it arrives (as docker pull does), and the
    store records a layer's diff_id only because that extraction verified it.
    """
    store.read_blob(image.digest)
    store.read_blob(image.config_descriptor.digest)
    for layer, diff_id, chain_id in zip(image.layers, image.diff_ids, chain_ids(image.diff_ids), strict=True):
        assert sha256(gzip.decompress(store.read_blob(layer.digest))) == diff_id
        assert recorded_diff_id(store, layer.digest) == diff_id
        assert store.snapshot_path(chain_id) is not None


def test_push_then_skopeo_copies_it_back(registry, busybox_store, skopeo, tmp_path, new_repo):
    target = f"{registry.host}/{new_repo('push')}:v1"
    image = busybox_store.load_image("busybox:latest")

    pushed = push(busybox_store, "busybox:latest", target)

    assert pushed.digest == image.digest
    assert pushed.media_type == OCI_MANIFEST
    assert sha256(raw_manifest(skopeo, target)) == image.digest
    out = tmp_path / "copied"
    skopeo("copy", "--src-tls-verify=false", f"docker://{target}", f"oci:{out}:v1")
    index = json.loads((out / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [image.digest]
    layer = image.layers[0]
    copied_layer = (out / "blobs" / "sha256" / layer.digest.split(":")[1]).read_bytes()
    assert copied_layer == busybox_store.read_blob(layer.digest)


def test_push_reference_defaults_to_name(registry, busybox_store, skopeo, new_repo):
    name = f"{registry.host}/{new_repo('self')}:2"
    busybox_store.tag(name, busybox_store.resolve("busybox:latest"))
    pushed = push(busybox_store, name)
    assert sha256(raw_manifest(skopeo, name)) == pushed.digest


@pytest.mark.parametrize("skopeo_format, media_type", [("v2s2", DOCKER_MANIFEST), ("oci", OCI_MANIFEST)])
def test_pull_what_skopeo_pushed(registry, busybox_store, make_store, skopeo, new_repo, skopeo_format, media_type):
    target = f"{registry.host}/{new_repo('skopeo')}:{skopeo_format}"
    skopeo(
        "copy", "--dest-tls-verify=false", "--format", skopeo_format,
        f"oci:{busybox_store.layout}:busybox:latest", f"docker://{target}",
    )
    registry_digest = sha256(raw_manifest(skopeo, target))

    store = make_store("pulled")
    events = []
    image = pull(store, target, progress=events.append)

    assert image.digest == registry_digest
    assert image.manifest_descriptor.media_type == media_type
    assert image.platform == Platform.host()
    assert store.resolve(target).digest == registry_digest
    assert store.load_image(target).config == busybox_store.load_image("busybox:latest").config
    assert_image_complete(store, image)
    assert sorted(e.action for e in events) == ["downloaded", "downloaded"]


def test_second_pull_downloads_nothing(proxy, busybox_store, make_store, new_repo):
    target = f"{proxy.host}/{new_repo('again')}:1"
    push(busybox_store, "busybox:latest", target)
    store = make_store("pulled")
    pull(store, target)
    proxy.seen.clear()

    events = []
    image = pull(store, target, progress=events.append)

    assert {e.action for e in events} == {"exists"}
    assert [(r.method, "/manifests/" in r.path) for r in proxy.seen] == [("HEAD", True)]
    assert_image_complete(store, image)


def test_pull_by_digest_and_tag_as(registry, busybox_store, make_store, new_repo):
    repo = f"{registry.host}/{new_repo('bydigest')}"
    pushed = push(busybox_store, "busybox:latest", f"{repo}:1")
    store = make_store("pulled")

    image = pull(store, f"{repo}@{pushed.digest}")
    assert image.digest == pushed.digest
    assert store.resolve(f"{repo}@{pushed.digest}").digest == pushed.digest

    pull(store, f"{repo}:1", tag_as="mine:local")
    assert store.resolve("mine:local").digest == pushed.digest


def make_other_platform_image(store):
    """The busybox image again, with a config that says it is for another architecture."""
    base = store.load_image("busybox:latest")
    config = json.loads(json.dumps(base.config))
    config.update(other_platform().to_json())
    other = store.write_image(config, base.layers)
    store.tag("busybox:other", other.manifest_descriptor)
    return base, other


def test_multi_platform_index_pull(registry, busybox_store, make_store, new_repo):
    repo = f"{registry.host}/{new_repo('multi')}"
    host_image, other_image = make_other_platform_image(busybox_store)
    push(busybox_store, "busybox:latest", f"{repo}:host")
    push(busybox_store, "busybox:other", f"{repo}:other")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            Descriptor(OCI_MANIFEST, other_image.digest, other_image.manifest_descriptor.size,
                       platform=other_platform()).to_json(),
            Descriptor(OCI_MANIFEST, host_image.digest, host_image.manifest_descriptor.size,
                       platform=Platform.host()).to_json(),
        ],
    }
    index_bytes = canonical_json(index)
    response = requests.put(
        f"http://{repo.split('/', 1)[0]}/v2/{repo.split('/', 1)[1]}/manifests/all",
        data=index_bytes, headers={"Content-Type": OCI_INDEX}, timeout=30,
    )
    assert response.status_code == 201, response.text

    store = make_store("pulled")
    default = pull(store, f"{repo}:all")
    assert default.digest == host_image.digest
    assert default.platform == Platform.host()
    assert store.read_blob(sha256(index_bytes)) == index_bytes  # the index is kept too

    chosen = pull(make_store("other"), f"{repo}:all", platform=other_platform())
    assert chosen.digest == other_image.digest
    assert chosen.platform == other_platform()

    missing = Platform("linux", "s390x")
    with pytest.raises(ImgbuildError, match="no image for platform linux/s390x"):
        pull(make_store("none"), f"{repo}:all", platform=missing)


def test_push_an_index(registry, busybox_store, skopeo, new_repo):
    host_image, other_image = make_other_platform_image(busybox_store)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            Descriptor(OCI_MANIFEST, host_image.digest, host_image.manifest_descriptor.size,
                       platform=Platform.host()).to_json(),
            Descriptor(OCI_MANIFEST, other_image.digest, other_image.manifest_descriptor.size,
                       platform=other_platform()).to_json(),
        ],
    }
    descriptor = busybox_store.put_json(index, OCI_INDEX)
    busybox_store.tag("busybox:multi", descriptor)
    target = f"{registry.host}/{new_repo('index')}:multi"

    pushed = push(busybox_store, "busybox:multi", target)

    assert pushed.digest == descriptor.digest
    assert pushed.media_type == OCI_INDEX
    assert sha256(raw_manifest(skopeo, target)) == descriptor.digest
    for image in (host_image, other_image):
        repo_at_digest = f"{target.rsplit(':', 1)[0]}@{image.digest}"
        assert sha256(raw_manifest(skopeo, repo_at_digest)) == image.digest


def blob_sizes(store, name: str) -> list[int]:
    image = store.load_image(name)
    return sorted([image.config_descriptor.size, *(layer.size for layer in image.layers)])


def test_monolithic_upload(proxy, busybox_store, skopeo, new_repo):
    target = f"{proxy.host}/{new_repo('mono')}:1"
    pushed = push(busybox_store, "busybox:latest", target)

    uploads = [r for r in proxy.seen if "/blobs/uploads/" in r.path]
    assert "PATCH" not in [r.method for r in uploads]
    puts = sorted(r.body_size for r in uploads if r.method == "PUT")
    assert puts == blob_sizes(busybox_store, "busybox:latest")
    assert sha256(raw_manifest(skopeo, target)) == pushed.digest


def test_chunked_upload(proxy, busybox_store, make_store, new_repo):
    target = f"{proxy.host}/{new_repo('chunked')}:1"
    layer_size = busybox_store.load_image("busybox:latest").layers[0].size
    options = RegistryOptions(chunk_threshold=1000, chunk_size=256 * 1024)

    pushed = push(busybox_store, "busybox:latest", target, options=options)

    patches = [r for r in proxy.seen if r.method == "PATCH"]
    assert len(patches) == -(-layer_size // (256 * 1024))  # ceil: the layer, in chunks
    assert sum(r.body_size for r in patches) == layer_size
    # the config (under the threshold) still went up in one PUT
    config_size = busybox_store.load_image("busybox:latest").config_descriptor.size
    assert config_size in [r.body_size for r in proxy.seen if r.method == "PUT" and "/blobs/uploads/" in r.path]
    image = pull(make_store("pulled"), target)
    assert image.digest == pushed.digest


def test_second_push_to_another_repo_mounts(proxy, busybox_store, make_store, new_repo):
    first = f"{proxy.host}/{new_repo('mount-a')}:1"
    second_repo = new_repo("mount-b")
    push(busybox_store, "busybox:latest", first)
    assert proxy.upload_bytes() > 0
    proxy.seen.clear()

    events = []
    pushed = push(busybox_store, "busybox:latest", f"{proxy.host}/{second_repo}:1", progress=events.append)

    assert proxy.upload_bytes() == 0
    mounts = [r for r in proxy.seen if r.method == "POST" and "mount=" in r.query]
    assert len(mounts) == 2 and all(r.status == 201 for r in mounts)
    assert sorted(e.action for e in events) == ["manifest", "mounted", "mounted"]
    assert {e.detail for e in events if e.action == "mounted"} == {first.split("/", 1)[1].split(":")[0]}
    assert pull(make_store("check"), f"{proxy.host}/{second_repo}:1").digest == pushed.digest


def test_push_after_pull_mounts_from_the_pulled_repo(proxy, busybox_store, make_store, new_repo):
    source = f"{proxy.host}/{new_repo('pulled-from')}:1"
    push(busybox_store, "busybox:latest", source)
    store = make_store("other")
    pull(store, source)
    proxy.seen.clear()

    push(store, source, f"{proxy.host}/{new_repo('pushed-to')}:1")

    assert proxy.upload_bytes() == 0
    assert [r.status for r in proxy.seen if "mount=" in r.query] == [201, 201]


def test_push_skips_blobs_the_repo_has(proxy, busybox_store, new_repo):
    target = f"{proxy.host}/{new_repo('skip')}:1"
    push(busybox_store, "busybox:latest", target)
    proxy.seen.clear()

    events = []
    push(busybox_store, "busybox:latest", target.replace(":1", ":2"), progress=events.append)

    assert sorted(e.action for e in events) == ["exists", "exists", "manifest"]
    assert proxy.upload_bytes() == 0
    assert not [r for r in proxy.seen if r.method == "POST"]


def test_pushing_a_digest_reference_is_refused(busybox_store, registry):
    with pytest.raises(UsageError, match="push to a tag, not a digest"):
        push(busybox_store, "busybox:latest", f"{registry.host}/x@sha256:{'0' * 64}")


def test_pull_of_a_non_image_is_refused(registry, make_store, new_repo):
    """An OCI artifact (not a container config) is refused with a clear error, nothing tagged."""
    repo = new_repo("artifact")
    base = f"http://{registry.host}/v2/{repo}"
    config = b'{"kind":"chart"}'
    config_type = "application/vnd.cncf.helm.config.v1+json"
    upload = requests.post(f"{base}/blobs/uploads/", timeout=30)
    location = requests.compat.urljoin(base, upload.headers["Location"])
    separator = "&" if "?" in location else "?"
    put = requests.put(f"{location}{separator}digest={sha256(config)}", data=config, timeout=30)
    assert put.status_code == 201, put.text
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": sha256(config), "size": len(config)},
        "layers": [],
    })
    put = requests.put(f"{base}/manifests/1", data=manifest, headers={"Content-Type": OCI_MANIFEST}, timeout=30)
    assert put.status_code == 201, put.text

    store = make_store("pulled")
    with pytest.raises(RegistryError, match="is not a container image"):
        pull(store, f"{registry.host}/{repo}:1")
    assert store.refs() == []


def test_pull_unpacks_each_layer_at_its_place_in_the_stack(registry, make_store, new_repo, tmp_path):
    """Layers [a, b, a]: three snapshots, one per chain ID, each holding its layer."""
    a = compress_layer(python_tar({"a": b"a\n"}), "gzip")
    b = compress_layer(python_tar({"b": b"b\n"}), "zstd")
    manifest = write_layout(tmp_path / "layout", "stack", [a, b, a], "test")
    repository = new_repo("stack")
    push_layout_raw(tmp_path / "layout", manifest, registry.host, repository, "1")
    target = f"{registry.host}/{repository}:1"
    store = make_store("pulled")

    image = pull(store, target)

    snapshots = [store.snapshot_path(chain_id) for chain_id in chain_ids(image.diff_ids)]
    assert None not in snapshots and len(set(snapshots)) == 3
    assert [sorted(os.listdir(path)) for path in snapshots] == [["a"], ["b"], ["a"]]
    assert temp_leftovers(store) == []


def test_a_pulled_layer_that_lies_about_its_diff_id_fails_the_pull(registry, make_store, new_repo, tmp_path):
    """The pull unpacks, so it proves every diff_id: a liar is refused, naming the image."""
    good = compress_layer(python_tar({"g": b"good\n"}), "gzip")
    real = python_tar({"f": b"real\n"})
    liar = compress_layer(real, "gzip")
    claimed = sha256(b"something else")
    liar.diff_id = claimed
    repository = new_repo("liar")
    manifest = write_layout(tmp_path / "layout", "liar", [good, liar], "test")
    push_layout_raw(tmp_path / "layout", manifest, registry.host, repository, "1")
    target = f"{registry.host}/{repository}:1"
    store = make_store("pulled")

    with pytest.raises(DigestMismatch) as caught:
        pull(store, target)

    message = str(caught.value)
    assert target in message and claimed in message and sha256(real) in message
    assert store.refs() == []
    assert recorded_diff_id(store, sha256(liar.data)) is None
    assert not store.db.query("SELECT 1 FROM snapshots WHERE diff_id=?", (claimed,))
    assert temp_leftovers(store) == []

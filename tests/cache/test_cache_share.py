"""The cache between machines: --cache-to in root A, --cache-from in an empty root B.

Every RUN calls a loopback HTTP endpoint the test serves, so "no RUN ran" is
counted by the test itself, not read from the progress. Which blobs B took
is counted too: for type=local, the files of the cache directory that ended
up in B's store; for type=registry, the blob GETs through a counting relay
in front of the real registry.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cache.conftest import build, run_cli
from imagetools import make_busybox_image

from imgbuild.store import Store

DOCKERFILE = """\
FROM busybox AS base
RUN wget -q -O /one http://{host}/ran/one
COPY a.txt /a.txt
RUN wget -q -O /two http://{host}/ran/two && cat /a.txt >> /two
FROM base AS full
COPY b.txt /b.txt
RUN wget -q -O /three http://{host}/ran/three && cat /b.txt >> /three
"""


class RunCounter:
    """An HTTP endpoint on 127.0.0.1 that counts the RUN steps calling it, by name."""

    def __init__(self):
        calls: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                calls.append(self.path.rsplit("/", 1)[-1])
                body = b"fixed answer\n"  # the same bytes every time: layers are reproducible
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.calls = calls
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RunCounter:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def taken(self) -> list[str]:
        """The calls since the last look."""
        seen = sorted(self.calls)
        self.calls.clear()
        return seen


class CountingRelay:
    """An HTTP relay to a registry on 127.0.0.1 that records every request.

    The registry builds upload locations from the Host header it is sent, so
    uploads started through the relay go on through it too.
    """

    def __init__(self, upstream: str, refuse_mounts: bool = False):
        requested: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def _relay(self):
                requested.append(f"{self.command} {self.path}")
                if refuse_mounts and self.command == "POST" and "mount=" in self.path:
                    # What a registry that will not mount does: it opens an
                    # ordinary upload instead (202), which the real one answers.
                    self.path = self.path.split("?", 1)[0]
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "transfer-encoding")}
                answer = requests.request(
                    self.command, f"http://{upstream}{self.path}", headers=headers, data=body,
                    timeout=60, allow_redirects=False,
                )
                content = answer.content
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length", "content-encoding"):
                        self.send_header(name, value)
                length = answer.headers.get("Content-Length") if self.command == "HEAD" else str(len(content))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _relay

            def log_message(self, *args):
                pass

        self.requested = requested
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CountingRelay:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def blob_gets(self) -> set[str]:
        return {line.rsplit("/", 1)[-1] for line in self.requested if line.startswith("GET ") and "/blobs/" in line}

    def uploads(self) -> list[str]:
        return [line for line in self.requested if line.startswith("POST ") and "/blobs/uploads/" in line]

    def mounts(self) -> set[str]:
        """Digests the client asked the registry to mount from another repository."""
        found = set()
        for line in self.uploads():
            query = parse_qs(urlsplit(line.split(" ", 1)[1]).query)
            found.update(query.get("mount", []))
        return found

    def blob_puts(self) -> int:
        return sum(1 for line in self.requested if line.startswith("PUT ") and "/blobs/uploads/" in line)


@pytest.fixture(autouse=True)
def _reproducible(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")


@pytest.fixture
def counter():
    with RunCounter() as served:
        yield served


def make_context(tmp_path: Path, host: str) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE.format(host=host))
    (context / "a.txt").write_text("a\n")
    (context / "b.txt").write_text("b\n")
    return context


def empty_root(path: Path) -> Path:
    """A root with only the base image."""
    path.mkdir()
    make_busybox_image(Store(path), "busybox:latest")
    return path


def image_layers(root: Path, digest: str) -> set[str]:
    store = Store(root)
    manifest = json.loads(store.read_blob(digest))
    return {layer["digest"] for layer in manifest["layers"]}


def stored_blobs(root: Path) -> set[str]:
    return set(Store(root).all_blobs())


def layout_blobs(directory: Path) -> set[str]:
    return {"sha256:" + path.name for path in (directory / "blobs" / "sha256").iterdir()}


def cache_entries(directory: Path) -> list[dict]:
    index = json.loads((directory / "index.json").read_text())
    manifest = json.loads((directory / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    return json.loads((directory / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_bytes())["entries"]


def test_local_cache_moves_to_an_empty_root(tmp_path, root, counter):
    context = make_context(tmp_path, counter.host)
    cache = tmp_path / "cache"
    built = build(root, context, "--cache-to", f"type=local,dest={cache},mode=max")
    assert counter.taken() == ["one", "three", "two"]
    assert (cache / "oci-layout").is_file()

    # B: only the base image. The smaller target takes only its own layers.
    root_b = empty_root(tmp_path / "b")
    base_blobs = stored_blobs(root_b)
    partial = build(root_b, context, "--target", "base", "--cache-from", f"type=local,src={cache}")
    assert counter.taken() == []
    assert partial["run"] == 0
    base_layers = image_layers(root_b, partial["image"]) - base_blobs
    assert len(base_layers) == 3
    copied = (stored_blobs(root_b) - base_blobs) & layout_blobs(cache)
    assert copied == base_layers, "only the layers of the target were copied"

    full = build(root_b, context, "--cache-from", f"type=local,src={cache}")
    assert counter.taken() == []
    assert full["image"] == built["image"]
    copied = (stored_blobs(root_b) - base_blobs) & layout_blobs(cache)
    assert copied == image_layers(root_b, full["image"]) - base_blobs
    assert len(copied) == 5

    # C: one source file changed: only the steps after the COPY that reads it run.
    (context / "b.txt").write_text("b changed\n")
    root_c = empty_root(tmp_path / "c")
    changed = build(root_c, context, "--cache-from", f"type=local,src={cache}")
    assert counter.taken() == ["three"]
    assert (changed["cached"], changed["run"]) == (3, 2)


def test_mode_min_exports_only_the_final_stage(tmp_path, root, counter):
    context = make_context(tmp_path, counter.host)
    (context / "Dockerfile").write_text(
        DOCKERFILE.format(host=counter.host) + "FROM busybox\nCOPY --from=full /three /three\n"
    )
    cache = tmp_path / "cache"
    build(root, context, "--cache-to", f"type=local,dest={cache}")
    counter.taken()
    entries = cache_entries(cache)
    assert [entry["created_by"] for entry in entries] == ["COPY /three /three # imgbuild"]
    assert entries[0]["inputs"]["document"], "the key document travels with the entry"
    exported = [blob.read_bytes() for blob in (cache / "blobs" / "sha256").iterdir()]
    assert not any(str(context).encode() in data for data in exported), "the exporting machine's paths stay on it"

    # A target FROM another stage: the layers of both are the image's.
    cache_full = tmp_path / "cache-full"
    build(root, context, "--target", "full", "--cache-to", f"type=local,dest={cache_full}")
    assert len(cache_entries(cache_full)) == 5

    # The other stages are not in it: they run again; the last step is a hit.
    root_b = empty_root(tmp_path / "b")
    result = build(root_b, context, "--cache-from", f"type=local,src={cache}")
    assert counter.taken() == ["one", "three", "two"]
    assert result["cached"] == 1


def test_a_tampered_layer_is_refused(tmp_path, root, counter):
    context = make_context(tmp_path, counter.host)
    cache = tmp_path / "cache"
    build(root, context, "--cache-to", f"type=local,dest={cache}")
    counter.taken()
    config_and_manifest = set()
    index = json.loads((cache / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads((cache / "blobs" / "sha256" / manifest_digest[7:]).read_bytes())
    config_and_manifest = {manifest_digest, manifest["config"]["digest"]}
    for digest in layout_blobs(cache) - config_and_manifest:
        path = cache / "blobs" / "sha256" / digest[7:]
        path.write_bytes(path.read_bytes() + b"x")

    root_b = empty_root(tmp_path / "b")
    completed = run_cli(root_b, "build", "--cache-from", f"type=local,src={cache}", str(context), check=False)
    assert completed.returncode != 0
    assert "from the imported cache" in completed.stderr and "has digest" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not any(digest in stored_blobs(root_b) for digest in layout_blobs(cache) - config_and_manifest)


def test_export_does_not_follow_a_symlink_in_the_directory(tmp_path, root, counter):
    context = make_context(tmp_path, counter.host)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "blobs").symlink_to(elsewhere)
    completed = run_cli(root, "build", "--cache-to", f"type=local,dest={cache}", str(context), check=False)
    assert completed.returncode != 0
    assert "is not a directory (a symlink is not followed)" in completed.stderr
    assert list(elsewhere.iterdir()) == []


def test_cache_mounts_travel_with_cache_mounts_true(tmp_path, root, counter):
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN --mount=type=cache,target=/var/cache/app,id=app sh -c "
        "'mkdir -p /var/cache/app/sub && echo warm > /var/cache/app/sub/state'\n"
    )
    cache = tmp_path / "cache"
    build(root, context, "--cache-to", f"type=local,dest={cache},cache-mounts=true")
    mounts = json.loads(
        (cache / "blobs" / "sha256" / _config_digest_of(cache)[7:]).read_bytes()
    )["cacheMounts"]
    assert len(mounts) == 1

    # B runs a step the cache does not have; its cache mount is the one A left.
    (context / "Dockerfile").write_text(
        "FROM busybox\n"
        f"RUN --mount=type=cache,target=/m,id=app sh -c 'wget -q -O- http://{counter.host}/ran/$(cat /m/sub/state)'\n"
    )
    root_b = empty_root(tmp_path / "b")
    run_cli(root_b, "build", "--cache-from", f"type=local,src={cache}", str(context))
    assert counter.taken() == ["warm"]

    # Without cache-mounts=true nothing of them travels.
    plain = tmp_path / "plain"
    build(root, context, "--cache-to", f"type=local,dest={plain}")
    assert "cacheMounts" not in json.loads((plain / "blobs" / "sha256" / _config_digest_of(plain)[7:]).read_bytes())
    counter.taken()


def _config_digest_of(directory: Path) -> str:
    index = json.loads((directory / "index.json").read_text())
    manifest = json.loads((directory / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    return manifest["config"]["digest"]


def test_a_missing_cache_is_a_warning_and_the_steps_run(tmp_path, root, counter):
    context = make_context(tmp_path, counter.host)
    completed = run_cli(
        root, "build", "--progress", "plain", "--cache-from", f"type=local,src={tmp_path / 'nowhere'}", str(context)
    )
    assert f"--cache-from {tmp_path / 'nowhere'} not used" in completed.stderr
    assert counter.taken() == ["one", "three", "two"]


def test_registry_cache_fetches_only_the_needed_blobs(tmp_path, root, counter, registry):
    context = make_context(tmp_path, counter.host)
    name = f"{registry.host}/cacheshare/app{os.getpid()}{tmp_path.name.replace('_', '').lower()}"
    built = build(root, context, "-t", f"{name}:image", "--push")
    assert counter.taken() == ["one", "three", "two"]

    # The cache goes next to the pushed image: its layers are there, so only
    # the small index (config) blob is uploaded, and every step hit.
    with CountingRelay(registry.host) as relay:
        exported = build(root, context, "--cache-to", f"type=registry,ref={name.replace(registry.host, relay.host)}:cache,mode=max")
        assert exported["run"] == 0
        assert len(relay.uploads()) == 1, relay.requested
    ref = f"{name}:cache"
    manifest = _manifest(registry.host, ref)
    cache_config = manifest["config"]["digest"]
    assert len(manifest["layers"]) == 5

    with CountingRelay(registry.host) as relay:
        relay_ref = ref.replace(registry.host, relay.host)
        root_b = empty_root(tmp_path / "b")
        base_blobs = stored_blobs(root_b)
        partial = build(root_b, context, "--target", "base", "--cache-from", f"type=registry,ref={relay_ref}")
        assert counter.taken() == []
        assert partial["run"] == 0
        wanted = image_layers(root_b, partial["image"]) - base_blobs
        assert len(wanted) == 3
        assert relay.blob_gets() == wanted | {cache_config}, "only the target's layers were pulled"

        full = build(root_b, context, "--cache-from", f"type=registry,ref={relay_ref}")
        assert counter.taken() == []
        assert full["image"] == built["image"]
        assert relay.blob_gets() - {cache_config} == image_layers(root_b, full["image"]) - base_blobs

    # One source file changed, in another empty root: only the steps after its COPY run.
    (context / "a.txt").write_text("a changed\n")
    root_c = empty_root(tmp_path / "c")
    changed = step_misses(root_c, context, "--cache-from", f"type=registry,ref={ref}")
    assert counter.taken() == ["three", "two"]
    assert sorted(changed.values()).count("CACHED") == 1 and len(changed) == 5
    # explained against the imported entry of the same step
    assert changed["COPY a.txt /a.txt"] == "1 file changed (a.txt content)"


def _manifest(host: str, ref: str) -> dict:
    repository, tag = ref.removeprefix(host + "/").rsplit(":", 1)
    answer = requests.get(
        f"http://{host}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=30,
    )
    answer.raise_for_status()
    return answer.json()


def test_a_failed_build_leaves_no_imported_entry_without_its_layer(tmp_path, root, counter):
    """Imported entries are recorded only once their layer is in the store: a
    build that hits the imported cache and then fails before it needed those
    layers leaves nothing fsck objects to, and the next build still hits."""
    context = make_context(tmp_path, counter.host)
    cache = tmp_path / "cache"
    build(root, context, "--cache-to", f"type=local,dest={cache},mode=max")
    counter.taken()

    root_b = empty_root(tmp_path / "b")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("a.txt", "b.txt"):
        (broken / name).write_text((context / name).read_text())
    # Every step hits the imported cache; the last one fails while it is keyed
    # (its source is missing), before anything reads the layers below it.
    (broken / "Dockerfile").write_text((context / "Dockerfile").read_text() + "COPY nothere.txt /x\n")
    failed = run_cli(root_b, "build", "--cache-from", f"type=local,src={cache}", str(broken), check=False)
    assert failed.returncode != 0 and "nothere.txt" in failed.stderr, failed.stderr
    assert counter.taken() == []

    fsck = run_cli(root_b, "fsck", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "cache-missing-layer" not in fsck.stdout + fsck.stderr

    again = build(root_b, context, "--cache-from", f"type=local,src={cache}")
    assert counter.taken() == []
    assert again["run"] == 0
    assert run_cli(root_b, "fsck", check=False).returncode == 0


def step_misses(root: Path, context: Path, *args: str) -> dict[str, str]:
    """Each step's instruction -> why it missed (the JSON progress), or "CACHED"."""
    completed = run_cli(root, "build", "--progress", "json", *args, str(context))
    result = {}
    for line in completed.stderr.splitlines() + completed.stdout.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event["event"] == "step_started":
                result[event["instruction"]] = event.get("miss")
            elif event["event"] == "step_cached":
                result[event["instruction"]] = "CACHED"
    return result


def test_a_miss_is_explained_against_the_imported_cache(tmp_path, root, counter):
    """In an empty store, a step that misses the imported cache is compared
    with the imported entry of the same step: the changed file is named."""
    context = make_context(tmp_path, counter.host)
    cache = tmp_path / "cache"
    build(root, context, "--cache-to", f"type=local,dest={cache},mode=max")
    counter.taken()
    (context / "a.txt").write_text("a changed\n")

    root_b = empty_root(tmp_path / "b")
    misses = step_misses(root_b, context, "--cache-from", f"type=local,src={cache}")
    assert misses["COPY a.txt /a.txt"] == "1 file changed (a.txt content)"
    assert misses[f"RUN wget -q -O /two http://{counter.host}/ran/two && cat /a.txt >> /two"] == "parent step missed"
    assert misses[f"RUN wget -q -O /one http://{counter.host}/ran/one"] == "CACHED"
    assert counter.taken() == ["three", "two"]

    # The same in the plain progress, and with --explain, in another empty store.
    root_c = empty_root(tmp_path / "c")
    plain = run_cli(root_c, "build", "--progress", "plain", "--explain", "--cache-from", f"type=local,src={cache}", str(context))
    output = plain.stdout + plain.stderr
    assert "miss: 1 file changed (a.txt content)" in output, output
    assert "no earlier build of this step" not in output, output
    counter.taken()


def test_a_cached_build_that_is_only_pushed_downloads_no_layer(tmp_path, root, counter, registry):
    """--output type=registry of a fully cached build: the registry mounts the
    layers from the cache's repository (cross-repository blob mount); none is
    downloaded. --push keeps the image in the store too, as docker build --push
    does, so its layers are downloaded; and when the registry will not mount,
    each layer is uploaded."""
    context = make_context(tmp_path, counter.host)
    unique = f"{os.getpid()}{tmp_path.name.replace('_', '').lower()}"
    built = build(root, context, "--cache-to", f"type=registry,ref={registry.host}/onlypushed/cache{unique}:c,mode=max")
    counter.taken()
    cache_manifest = _manifest(registry.host, f"{registry.host}/onlypushed/cache{unique}:c")
    cache_config, cache_layers = cache_manifest["config"]["digest"], {layer["digest"] for layer in cache_manifest["layers"]}

    with CountingRelay(registry.host) as relay:
        root_b = empty_root(tmp_path / "b")
        base_blobs = stored_blobs(root_b)
        pushed = build(
            root_b, context, "--output", f"type=registry,name={relay.host}/onlypushed/app{unique}:1",
            "--cache-from", f"type=registry,ref={relay.host}/onlypushed/cache{unique}:c",
            "--cache-to", f"type=registry,ref={relay.host}/onlypushed/again{unique}:c,mode=max",
        )
        assert counter.taken() == [] and pushed["run"] == 0
        assert pushed["image"] == built["image"]
        own_layers = image_layers(root, built["image"]) - base_blobs
        assert len(own_layers) == 5 and own_layers <= cache_layers
        assert relay.blob_gets() == {cache_config}, "no layer blob was downloaded"
        assert relay.mounts() == own_layers, "every layer of the build was mounted from the cache's repository"
        # PUT: the base layer and the image config, which B has, and the new cache's index
        assert relay.blob_puts() == 3, relay.requested
    again = _manifest(registry.host, f"{registry.host}/onlypushed/again{unique}:c")
    assert {layer["digest"] for layer in again["layers"]} == own_layers
    exported = requests.get(
        f"http://{registry.host}/v2/onlypushed/again{unique}/blobs/{again['config']['digest']}", timeout=30
    ).json()
    assert len(exported["entries"]) == 5, "the entries whose layers never came are exported too"
    assert all(entry["inputs"] and entry["place"] for entry in exported["entries"])
    assert exported["fileLists"]
    assert not own_layers & stored_blobs(root_b)
    assert f"onlypushed/app{unique}" not in run_cli(root_b, "images").stdout, "an image without its layers is not tagged"
    assert run_cli(root_b, "fsck", check=False).returncode == 0
    pushed_manifest = _manifest(registry.host, f"{registry.host}/onlypushed/app{unique}:1")
    assert {layer["digest"] for layer in pushed_manifest["layers"]} >= own_layers

    # The pushed image is whole: a fresh store pulls it, verified, and runs it.
    root_c = tmp_path / "c"
    root_c.mkdir()
    run_cli(root_c, "pull", f"{registry.host}/onlypushed/app{unique}:1")
    assert run_cli(root_c, "fsck", check=False).returncode == 0
    ran = run_cli(root_c, "run", f"{registry.host}/onlypushed/app{unique}:1", "cat", "/three")
    assert ran.stdout == "fixed answer\nb\n"

    # A registry that refuses the mounts: the layers are downloaded, then uploaded.
    with CountingRelay(registry.host, refuse_mounts=True) as relay:
        root_d = empty_root(tmp_path / "d")
        build(
            root_d, context, "-t", f"{relay.host}/onlypushed/other{unique}:1", "--push",
            "--cache-from", f"type=registry,ref={relay.host}/onlypushed/cache{unique}:c",
        )
        assert counter.taken() == []
        assert relay.blob_gets() == own_layers | {cache_config}
        assert relay.blob_puts() == 7  # the five layers, the base layer and the config
    assert own_layers <= stored_blobs(root_d)
    assert run_cli(root_d, "fsck", check=False).returncode == 0
    # --push kept the image in the store, tagged: the pipeline's next step can run it.
    ran = run_cli(root_d, "run", f"{relay.host}/onlypushed/other{unique}:1", "cat", "/three")
    assert ran.stdout == "fixed answer\nb\n"

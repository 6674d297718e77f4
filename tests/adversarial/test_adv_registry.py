"""A hostile registry on 127.0.0.1 (a thread): lies about digests, oversized and endless
answers, redirects to another host, stalls, 500s and connection resets.

The pulls go through ``imgbuild.registry.pull.pull`` with short timeouts and few
retries (``RegistryOptions``; the CLI has no option for them, and its 120 s
default would make a stall case take minutes), plus two through the CLI with its
defaults. Each must end in an ``ImgbuildError`` (refused) or a correct image.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import struct
import tarfile
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from advtools import TALLY, assert_clear_refusal, run_cli
from ocitools import OCI_CONFIG, OCI_MANIFEST, image_config, sha256_digest

from imgbuild.errors import ImgbuildError
from imgbuild.registry.client import MAX_MANIFEST_SIZE, RegistryOptions
from imgbuild.registry.pull import pull
from imgbuild.store import Store
from imgbuild.store.fsck import check_store

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SHORT = RegistryOptions(attempts=2, backoff=0.01, timeout=1.0)


def _layer() -> tuple[bytes, str]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    raw = buffer.getvalue()
    return gzip.compress(raw, mtime=0), sha256_digest(raw)


LAYER, DIFF_ID = _layer()
CONFIG = json.dumps(image_config([DIFF_ID], "hostile registry")).encode()


def _manifest(layer_digest: str | None = None, layer_size: int | None = None, config: bytes = CONFIG,
              layers: int = 1) -> bytes:
    descriptor = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": layer_digest or sha256_digest(LAYER),
        "size": len(LAYER) if layer_size is None else layer_size,
    }
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [descriptor] * layers,
    }).encode()


MANIFEST = _manifest()
BLOBS = {sha256_digest(LAYER): LAYER, sha256_digest(CONFIG): CONFIG}


def _index_chain(depth: int) -> dict[str, bytes]:
    """Indexes pointing at indexes ``depth`` deep; returns name -> body (the top is "top")."""
    bodies = {}
    child = MANIFEST
    child_type = OCI_MANIFEST
    for level in range(depth):
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": child_type, "digest": sha256_digest(child), "size": len(child),
             "platform": {"architecture": json.loads(CONFIG)["architecture"], "os": "linux"}}]}).encode()
        bodies[sha256_digest(child)] = child
        child, child_type = body, OCI_INDEX
        bodies[f"level{level}"] = body
    bodies["top"] = child
    return bodies


INDEX_CHAIN = _index_chain(6)


class Hostile(BaseHTTPRequestHandler):
    """The repository name picks the misbehaviour: /v2/<mode>/manifests/<ref>."""

    protocol_version = "HTTP/1.1"
    other_host = ""  # "127.0.0.2:PORT", set by the fixture

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts == ["v2"] or parts == ["v2", ""]:
            return self.answer(200, b"{}")
        if len(parts) < 4:
            return self.answer(404, b"{}")
        mode, kind, ref = parts[1], parts[2], parts[3]
        handler = getattr(self, "mode_" + mode.replace("-", "_"), None)
        if handler is None:
            return self.answer(404, b"{}")
        return handler(kind, ref)

    # --- plumbing ------------------------------------------------------------

    def answer(self, status: int, body: bytes, content_type: str = "application/json",
               headers: dict | None = None, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
            except OSError:
                pass

    def good(self, kind: str, ref: str) -> None:
        if kind == "manifests":
            return self.answer(200, MANIFEST, OCI_MANIFEST, {"Docker-Content-Digest": sha256_digest(MANIFEST)})
        blob = BLOBS.get(ref)
        if blob is None:
            return self.answer(404, b"{}")
        return self.answer(200, blob, "application/octet-stream")

    def reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    # --- the modes -------------------------------------------------------------

    def mode_wrong_manifest(self, kind, ref):
        if kind == "manifests":
            other = _manifest(layer_size=len(LAYER) + 1)
            return self.answer(200, other, OCI_MANIFEST, {"Docker-Content-Digest": sha256_digest(MANIFEST)})
        return self.good(kind, ref)

    def mode_wrong_blob(self, kind, ref):
        if kind == "blobs" and ref == sha256_digest(LAYER):
            return self.answer(200, gzip.compress(b"\0" * 1024), "application/octet-stream")
        return self.good(kind, ref)

    def mode_wrong_config(self, kind, ref):
        if kind == "blobs" and ref == sha256_digest(CONFIG):
            return self.answer(200, CONFIG.replace(b"linux", b"LINUX"), "application/octet-stream")
        return self.good(kind, ref)

    def mode_blob_extra_bytes(self, kind, ref):
        if kind == "blobs" and ref == sha256_digest(LAYER):
            return self.answer(200, LAYER + b"x" * 100, "application/octet-stream")
        return self.good(kind, ref)

    def mode_blob_short(self, kind, ref):
        if kind == "blobs" and ref == sha256_digest(LAYER):
            self.answer(200, LAYER[:20], "application/octet-stream", length=len(LAYER))
            return self.reset()
        return self.good(kind, ref)

    def mode_size_lie(self, kind, ref):
        if kind == "manifests":
            body = _manifest(layer_size=3)
            return self.answer(200, body, OCI_MANIFEST)
        return self.good(kind, ref)

    def mode_negative_size(self, kind, ref):
        if kind == "manifests":
            return self.answer(200, _manifest(layer_size=-1), OCI_MANIFEST)
        return self.good(kind, ref)

    def mode_digest_traversal(self, kind, ref):
        if kind == "manifests":
            return self.answer(200, _manifest(layer_digest="sha256:../../../../../../etc/passwd"), OCI_MANIFEST)
        return self.good(kind, ref)

    def mode_digest_md5(self, kind, ref):
        if kind == "manifests":
            return self.answer(200, _manifest(layer_digest="md5:" + "0" * 32), OCI_MANIFEST)
        return self.good(kind, ref)

    def mode_oversized_manifest(self, kind, ref):
        if kind == "manifests":
            body = MANIFEST[:-1] + b" " * MAX_MANIFEST_SIZE + b"}"
            return self.answer(200, body, OCI_MANIFEST)
        return self.good(kind, ref)

    def mode_endless_manifest(self, kind, ref):
        """A Content-Length of 1 TB and bytes until the client hangs up."""
        if kind != "manifests":
            return self.good(kind, ref)
        self.send_response(200)
        self.send_header("Content-Type", OCI_MANIFEST)
        self.send_header("Content-Length", str(1 << 40))
        self.end_headers()
        try:
            for _ in range(4096):
                self.wfile.write(b" " * 65536)
        except OSError:
            pass
        self.close_connection = True

    def mode_many_layers(self, kind, ref):
        if kind == "manifests":
            return self.answer(200, _manifest(layers=20_000), OCI_MANIFEST)
        return self.good(kind, ref)

    def mode_not_json(self, kind, ref):
        if kind == "manifests":
            return self.answer(200, b"\xff\xfe<html>" * 100, OCI_MANIFEST)
        return self.good(kind, ref)

    def mode_config_not_json(self, kind, ref):
        config = b"\x00not json"
        if kind == "manifests":
            return self.answer(200, _manifest(config=config), OCI_MANIFEST)
        if ref == sha256_digest(config):
            return self.answer(200, config, "application/octet-stream")
        return self.good(kind, ref)

    def mode_index_too_deep(self, kind, ref):
        if kind == "manifests":
            body = INDEX_CHAIN.get(ref, INDEX_CHAIN["top"])
            media = OCI_INDEX if body is not MANIFEST else OCI_MANIFEST
            return self.answer(200, body, media)
        return self.good(kind, ref)

    def mode_index_self(self, kind, ref):
        if kind == "manifests":
            # an index whose entry names a digest the server answers with the same index
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                {"mediaType": OCI_INDEX, "digest": "sha256:" + "a" * 64, "size": 10}]}).encode()
            return self.answer(200, body, OCI_INDEX)
        return self.good(kind, ref)

    def mode_redirect_other_host(self, kind, ref):
        if kind == "blobs":
            location = f"http://{self.other_host}/v2/good/blobs/{ref}"
            return self.answer(307, b"", headers={"Location": location})
        return self.good(kind, ref)

    def mode_redirect_other_host_wrong(self, kind, ref):
        if kind == "blobs":
            location = f"http://{self.other_host}/v2/wrong-blob/blobs/{ref}"
            return self.answer(307, b"", headers={"Location": location})
        return self.good(kind, ref)

    def mode_redirect_manifest_other_host(self, kind, ref):
        if kind == "manifests":
            location = f"http://{self.other_host}/v2/good/manifests/{ref}"
            return self.answer(302, b"", headers={"Location": location})
        return self.good(kind, ref)

    def mode_redirect_loop(self, kind, ref):
        return self.answer(302, b"", headers={"Location": self.path})

    def mode_redirect_file(self, kind, ref):
        return self.answer(302, b"", headers={"Location": "file:///etc/passwd"})

    def mode_redirect_far(self, kind, ref):
        # a host the machine cannot reach: no traffic leaves 127.0.0.1 if this is refused
        return self.answer(302, b"", headers={"Location": "http://127.0.0.3:1/v2/x"})

    def mode_stall_body(self, kind, ref):
        if kind == "manifests":
            self.send_response(200)
            self.send_header("Content-Type", OCI_MANIFEST)
            self.send_header("Content-Length", str(len(MANIFEST)))
            self.end_headers()
            self.wfile.write(MANIFEST[:10])
            self.wfile.flush()
            time.sleep(6)
            self.close_connection = True
            return
        return self.good(kind, ref)

    def mode_stall_headers(self, kind, ref):
        time.sleep(6)
        self.close_connection = True

    def mode_stall_blob(self, kind, ref):
        if kind == "blobs" and ref == sha256_digest(LAYER):
            self.send_response(200)
            self.send_header("Content-Length", str(len(LAYER)))
            self.end_headers()
            self.wfile.write(LAYER[:5])
            self.wfile.flush()
            time.sleep(6)
            self.close_connection = True
            return
        return self.good(kind, ref)

    def mode_status_500(self, kind, ref):
        return self.answer(500, b'{"errors":[{"code":"UNKNOWN","message":"boom"}]}')

    def mode_blob_500(self, kind, ref):
        if kind == "blobs":
            return self.answer(500, b"")
        return self.good(kind, ref)

    def mode_reset(self, kind, ref):
        return self.reset()

    def mode_blob_reset(self, kind, ref):
        if kind == "blobs":
            return self.reset()
        return self.good(kind, ref)

    def mode_status_404(self, kind, ref):
        return self.answer(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}')

    def mode_auth_other_host(self, kind, ref):
        realm = f"http://{self.other_host}/token"
        return self.answer(401, b"{}", headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="x"'})

    def mode_auth_garbage(self, kind, ref):
        return self.answer(401, b"{}", headers={"WWW-Authenticate": 'Bearer realm="\x00\xff",,,=,"'})

    def mode_good(self, kind, ref):
        return self.good(kind, ref)


def _serve(address: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((address, 0), Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def hostile():
    other = _serve("127.0.0.2")
    Hostile.other_host = f"127.0.0.2:{other.server_address[1]}"
    main = _serve("127.0.0.1")
    yield f"127.0.0.1:{main.server_address[1]}"
    main.shutdown()
    other.shutdown()


MODES = [
    "wrong-manifest", "wrong-blob", "wrong-config", "blob-extra-bytes", "blob-short", "size-lie",
    "negative-size", "digest-traversal", "digest-md5", "oversized-manifest", "endless-manifest",
    "many-layers", "not-json", "config-not-json", "index-too-deep", "index-self",
    "redirect-other-host", "redirect-other-host-wrong", "redirect-manifest-other-host",
    "redirect-loop", "redirect-file", "redirect-far", "stall-body", "stall-headers", "stall-blob",
    "status-500", "blob-500", "reset", "blob-reset", "status-404", "auth-other-host", "auth-garbage",
]


def _by_digest(mode: str) -> bool:
    return mode == "wrong-manifest"


def _fresh_store(tmp_path) -> Store:
    """A store of the case's own: a blob an earlier case left must not hide this one."""
    root = tmp_path / "store"
    root.mkdir()
    return Store(root)


def _fsck(store: Store, mode: str) -> list[str]:
    problems = [f"{mode}: fsck: {problem}" for problem in check_store(store, repair=False).problems]
    TALLY.lost.extend(problems)
    return problems


@pytest.mark.parametrize("mode", MODES)
def test_hostile_registry_pull(mode, hostile, sentinel, tmp_path):
    store = _fresh_store(tmp_path)
    reference = f"{hostile}/{mode}@{sha256_digest(MANIFEST)}" if _by_digest(mode) else f"{hostile}/{mode}:latest"
    started = time.monotonic()
    try:
        options = replace(SHORT, attempts=1) if mode.startswith("stall") else SHORT
        image = pull(store, reference, tag_as=f"adv/reg-{mode}:1", options=options)
    except ImgbuildError as error:
        assert str(error).strip(), "refused without a message"
        print(f"{mode}: refused: {str(error)[:300]}")
        TALLY.mark("refused")
    else:
        # contained: what arrived is the image the registry was asked for, byte for byte
        assert image.digest == sha256_digest(MANIFEST), f"{mode}: pulled something else: {image.digest}"
        with store.open_blob(image.layers[0].digest) as blob:
            assert blob.read() == LAYER
        print(f"{mode}: pulled the right image")
        TALLY.mark("contained")
    assert time.monotonic() - started < 20, "not bounded by the client's timeouts"
    assert not _fsck(store, mode)


@pytest.mark.parametrize("mode", ["size-lie", "negative-size"])
def test_size_lie_about_a_stored_blob(mode, hostile, sentinel, tmp_path):
    store = _fresh_store(tmp_path)
    pull(store, f"{hostile}/good:latest", tag_as="adv/reg-good:1", options=SHORT)
    try:
        pull(store, f"{hostile}/{mode}:latest", tag_as=f"adv/reg-{mode}:1", options=SHORT)
    except ImgbuildError as error:
        assert "manifest is wrong" in str(error)
        TALLY.mark("refused")
    else:
        TALLY.mark("contained")
    problems = check_store(store, repair=False).problems
    assert not problems, f"fsck after the pull: {problems}"


@pytest.mark.parametrize("mode", ["not-json", "oversized-manifest"])
def test_hostile_registry_cli(mode, hostile, sentinel, adv_root):
    """The CLI with its default retries: a clear error, no traceback."""
    ran = run_cli(["pull", f"{hostile}/{mode}:latest"], adv_root, timeout=30)
    assert_clear_refusal(ran)

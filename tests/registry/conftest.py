"""Fixtures for the registry tests: an isolated DOCKER_CONFIG, a misbehaving proxy in
front of the real registry, and a real registry with bearer-token auth.

The proxy is real HTTP on 127.0.0.1 that forwards to the real docker-registry; it
can answer 503/500, drop connections, cut a blob short or corrupt it, and it
records every request it sees so tests can tell what the client really sent.

The token registry is Debian's docker-registry configured for token auth, with a
small token service here that checks a password and signs JWTs (RS256, openssl)
with a certificate the registry trusts, as Docker Hub's auth service does.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from registrytools import die_with_parent, free_port, wait_for_registry

from imgbuild.store import Store

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


# --- credentials ---------------------------------------------------------------------

@pytest.fixture(autouse=True)
def docker_config(tmp_path, monkeypatch) -> Path:
    """An empty DOCKER_CONFIG directory, so the host's ~/.docker never leaks in."""
    directory = tmp_path / "docker-config"
    directory.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    monkeypatch.delenv("IMGBUILD_INSECURE_REGISTRIES", raising=False)
    return directory


@pytest.fixture
def login(docker_config):
    """``login(host, user, password)``: write a config.json ``auths`` entry (base64 auth)."""

    def write(host: str, username: str, password: str) -> None:
        auth = base64.b64encode(f"{username}:{password}".encode()).decode()
        (docker_config / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))

    return write


# --- stores -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def busybox_template(tmp_path_factory) -> Path:
    """A store root with the test busybox image, made once; tests get copies."""
    from imagetools import make_busybox_image

    root = tmp_path_factory.mktemp("busybox-template") / "store"
    store = Store(root)
    make_busybox_image(store, "busybox:latest")
    store.db.close()  # the last connection closing folds the WAL into index.db
    return root


@pytest.fixture
def busybox_store(busybox_template, tmp_path) -> Store:
    """A store of its own holding the test busybox image as ``busybox:latest``."""
    root = tmp_path / "busybox-store"
    shutil.copytree(busybox_template, root, symlinks=True)
    return Store(root)


@pytest.fixture
def make_store(tmp_path):
    """Fresh empty stores: ``make_store("name")``."""

    def make(name: str) -> Store:
        return Store(tmp_path / name)

    return make


@pytest.fixture
def new_repo():
    """``new_repo("app")``: a repository name no other test uses (registries live all session)."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    return make


# --- skopeo -------------------------------------------------------------------------

def _skopeo(*args: str) -> str:
    result = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"skopeo {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


@pytest.fixture
def skopeo():
    """``skopeo(*args)``: run skopeo 1.9, fail the test on an error, return its stdout."""
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed; run scripts/test.sh")
    return _skopeo


# --- the misbehaving proxy -------------------------------------------------------------

@dataclass
class SeenRequest:
    method: str
    path: str
    query: str
    body_size: int
    status: int | None = None  # None: the proxy dropped the connection


@dataclass
class RegistryProxy:
    """Knobs, set by a test before it runs the client; counters count down."""

    backend: str
    host: str = ""
    fail_first: int = 0  # answer this many requests with fail_status
    fail_status: int = 503
    always_status: int | None = None  # answer every request with this status
    drop_first: int = 0  # close the connection without an answer, this many times
    fail_upload_puts: int = 0  # answer this many blob-upload PUTs (the last step) with 503
    cut_blob_downloads: int = 0  # send half of this many blob bodies, then close
    corrupt_blobs: bool = False  # flip a byte in every blob body
    seen: list[SeenRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, knob: str) -> bool:
        with self.lock:
            if getattr(self, knob) > 0:
                setattr(self, knob, getattr(self, knob) - 1)
                return True
            return False

    def upload_bytes(self) -> int:
        """Body bytes the client sent to blob upload URLs (PATCH and PUT)."""
        return sum(r.body_size for r in self.seen if "/blobs/uploads/" in r.path)

    def methods(self, path_part: str) -> list[str]:
        return [r.method for r in self.seen if path_part in r.path]


def _handler_for(proxy: RegistryProxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            self._forward()

        do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        def _forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            seen = SeenRequest(self.command, parts.path, parts.query, len(body))
            with proxy.lock:
                proxy.seen.append(seen)
            if proxy.always_status is not None:
                return self._answer(seen, proxy.always_status)
            if proxy.take("fail_first"):
                return self._answer(seen, proxy.fail_status)
            if proxy.take("drop_first"):
                self.close_connection = True
                return
            if self.command == "PUT" and "/blobs/uploads/" in parts.path and proxy.take("fail_upload_puts"):
                return self._answer(seen, 503)
            status, headers, data = self._ask_backend(body)
            seen.status = status
            is_blob_get = self.command == "GET" and "/blobs/sha256:" in parts.path and status == 200
            if is_blob_get and proxy.corrupt_blobs and data:
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
            self.send_response_only(status)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            if self.command == "HEAD":
                self.send_header("Content-Length", dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if is_blob_get and proxy.take("cut_blob_downloads"):
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(data)

        def _ask_backend(self, body: bytes):
            connection = HTTPConnection(proxy.backend, timeout=60)
            try:
                # Header by header: clients send Accept several times, and a dict would
                # keep only the last one.
                connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        connection.putheader(name, value)
                if body or self.command in ("PUT", "POST", "PATCH"):
                    connection.putheader("Content-Length", str(len(body)))
                connection.endheaders(body or None)
                response = connection.getresponse()
                data = response.read()
                return response.status, response.getheaders(), data
            finally:
                connection.close()

        def _answer(self, seen: SeenRequest, status: int):
            seen.status = status
            data = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "proxy says no"}]}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler


@pytest.fixture
def proxy(registry):
    """A RegistryProxy in front of the plain test registry, stopped after the test."""
    knobs = RegistryProxy(registry.host)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(knobs))
    server.daemon_threads = True
    knobs.host = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield knobs
    server.shutdown()
    server.server_close()


# --- a registry with bearer-token auth -------------------------------------------------

TOKEN_USER = "token-user"
TOKEN_PASSWORD = "token-secret-password"
TOKEN_SERVICE = "imgbuild-test-registry"
TOKEN_ISSUER = "imgbuild-test-issuer"


@dataclass
class TokenRegistry:
    host: str
    username: str
    password: str
    token_requests: list[dict]  # query parameters of every token request
    token_authorizations: list[str | None]  # the Authorization header of every token request


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign_jwt(claims: dict, key: Path, cert_der: bytes) -> str:
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(cert_der).decode()]}
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(key)],
        input=signing_input.encode(), capture_output=True, check=True,
    ).stdout
    return f"{signing_input}.{_b64url(signature)}"


def _token_handler(key: Path, cert_der: bytes, requests_seen: list[dict], authorizations: list[str | None]):
    expected = "Basic " + base64.b64encode(f"{TOKEN_USER}:{TOKEN_PASSWORD}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            query = parse_qs(urlsplit(self.path).query)
            requests_seen.append(query)
            authorizations.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            access = []
            for scope in query.get("scope", []):
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
            now = int(time.time())
            claims = {
                "iss": TOKEN_ISSUER, "sub": TOKEN_USER, "aud": TOKEN_SERVICE,
                "exp": now + 300, "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex,
                "access": access,
            }
            body = json.dumps({"token": _sign_jwt(claims, key, cert_der), "expires_in": 300}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory):
    """A real docker-registry that wants bearer tokens from our token service."""
    yield from _token_registry(tmp_path_factory, realm_host="127.0.0.1")


@pytest.fixture(scope="session")
def foreign_realm_registry(tmp_path_factory):
    """The same, but the registry (on 127.0.0.1) names its plain-HTTP token realm
    as ``localhost``: another host, as a realm elsewhere on the network would be."""
    yield from _token_registry(tmp_path_factory, realm_host="localhost")


def _token_registry(tmp_path_factory, realm_host: str):
    if shutil.which("docker-registry") is None or shutil.which("openssl") is None:
        pytest.fail("docker-registry and openssl are needed; run scripts/test.sh")
    work = tmp_path_factory.mktemp("token-registry")
    key, cert = work / "key.pem", work / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=imgbuild-test-token-issuer"],
        capture_output=True, check=True,
    )
    cert_der = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-outform", "DER"], capture_output=True, check=True
    ).stdout

    requests_seen: list[dict] = []
    authorizations: list[str | None] = []
    handler = _token_handler(key, cert_der, requests_seen, authorizations)
    token_server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    token_server.daemon_threads = True
    threading.Thread(target=token_server.serve_forever, daemon=True).start()
    realm = f"http://{realm_host}:{token_server.server_address[1]}/token"

    host = f"127.0.0.1:{free_port()}"
    config = work / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'storage'}\n"
        f"http:\n  addr: {host}\n"
        "auth:\n  token:\n"
        f"    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n"
        f"    rootcertbundle: {cert}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    log = open(work / "registry.log", "wb")
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, preexec_fn=die_with_parent,
    )
    try:
        wait_for_registry(host, process)
        yield TokenRegistry(host, TOKEN_USER, TOKEN_PASSWORD, requests_seen, authorizations)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        token_server.shutdown()
        token_server.server_close()


# --- the CLI ------------------------------------------------------------------------


def _run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    project = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(root), *args],
        capture_output=True, text=True, timeout=120, cwd=project,
    )


@pytest.fixture
def imgbuild_cli():
    """``imgbuild_cli(root, *args)``: run the imgbuild CLI in a subprocess."""
    return _run_cli

"""An OCI distribution API client for one registry, on ``requests``.

What it speaks (OCI distribution spec, as Docker and Distribution implement it):

- manifests: ``GET``/``HEAD``/``PUT /v2/<name>/manifests/<tag or digest>``;
- blobs: ``GET``/``HEAD /v2/<name>/blobs/<digest>``; uploads start with
  ``POST /v2/<name>/blobs/uploads/`` and end with ``PUT <location>?digest=``,
  in one body (monolithic) or in ``PATCH`` chunks with ``Content-Range`` first
  (chunked, for blobs above ``RegistryOptions.chunk_threshold``); a cross-repository
  mount is ``POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>``.

Plain HTTP is used only for loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``)
and hosts named as insecure; everything else is HTTPS with certificate checks.
Requests are retried with exponential backoff on 5xx/429 answers and dropped
connections. Blob downloads are verified against their digest as they stream
into the store, so a corrupt blob never becomes visible there.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, BinaryIO
from urllib.parse import urlencode, urljoin, urlsplit

import requests
import urllib3

from imgbuild import __version__
from imgbuild.dataclass import dataclass
from imgbuild.errors import AuthError, DigestMismatch, ManifestNotFound, RegistryError
from imgbuild.http_session import Session
from imgbuild.image import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    media_type_of,
    parse_json_document,
    sha256_digest,
)
from imgbuild.registry.auth import Authenticator, docker_config_path
from imgbuild.registry.reference import DOCKER_HUB, DOCKER_HUB_API_HOST
from imgbuild.store import Store

log = logging.getLogger("imgbuild.registry")

MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])
SCHEMA1_TYPES = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
# containerd's limit too: a manifest is small, a bigger answer is an attack or a mistake.
MAX_MANIFEST_SIZE = 4 << 20
READ_CHUNK = 1 << 20
RETRY_STATUSES = {429, 500, 502, 503, 504}
INSECURE_ENV = "IMGBUILD_INSECURE_REGISTRIES"

# A connection that broke before or while an answer arrived. requests wraps most of
# these; a body read with raw.stream() raises urllib3's own.
DROPPED = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
)


@dataclass(frozen=True)
class RegistryOptions:
    """How to talk to registries; the defaults suit real registries."""

    insecure_registries: tuple[str, ...] = ()  # hosts (host, host:port or CIDR) on plain HTTP
    chunk_threshold: int = 32 << 20  # blobs bigger than this are uploaded in chunks
    chunk_size: int = 16 << 20
    attempts: int = 4  # tries per request (or per blob transfer) before giving up
    backoff: float = 0.5  # seconds before the 2nd try; doubled for each further try
    timeout: float = 120.0  # seconds to wait for the server to send anything
    workers: int = 3  # parallel blob transfers


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as the registry sent it: the exact bytes and their descriptor."""

    descriptor: Descriptor
    data: bytes
    document: dict

    @property
    def is_index(self) -> bool:
        return self.descriptor.media_type in INDEX_TYPES


@dataclass(frozen=True)
class TransferEvent:
    """One step of a pull or push, for progress output.

    ``action`` is one of: ``exists`` (already there, nothing sent), ``downloaded``,
    ``mounted`` (``detail`` is the source repository), ``uploaded``, ``manifest``.
    """

    action: str
    digest: str
    size: int
    media_type: str = ""
    detail: str = ""


Progress = Callable[[TransferEvent], None]


def run_in_parallel(function: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, function(item))`` as each finishes; the first failure cancels the rest."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="registry") as pool:
        futures = {pool.submit(function, item): item for item in items}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    raise error
                yield futures[future], future.result()


class _Transient(Exception):
    """A failure worth retrying (5xx, 429, dropped connection); message is user-readable."""


def insecure_registries(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The insecure registry list: ``extra`` plus ``$IMGBUILD_INSECURE_REGISTRIES`` (commas)."""
    from_env = [h.strip() for h in os.environ.get(INSECURE_ENV, "").split(",")]
    return tuple(h for h in [*extra, *from_env] if h)


def is_insecure(host: str, insecure: Iterable[str] = ()) -> bool:
    """Whether ``host`` (``name[:port]``, ``[v6]:port``) may be spoken to over plain HTTP."""
    hostname = _hostname(host)
    if hostname == "localhost" or _is_loopback(hostname):
        return True
    for entry in insecure:
        entry = entry.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
        if entry in (host, hostname):
            return True
        if "/" in entry and _in_network(hostname, entry):
            return True
    return False


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_loopback(hostname: str) -> bool:
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _in_network(hostname: str, cidr: str) -> bool:
    try:
        return ipaddress.ip_address(hostname) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


class RegistryClient:
    """The distribution API of one registry, usable from several threads at once.

    ``registry`` is the registry part of a reference (``docker.io``, ``host:5000``).
    ``for_push`` asks for push rights in bearer tokens from the start, so a push
    does not need a second token after its first HEAD.
    """

    def __init__(self, registry: str, *, for_push: bool = False, options: RegistryOptions | None = None):
        self.registry = registry
        self.options = options or RegistryOptions()
        self.for_push = for_push
        self.api_host = DOCKER_HUB_API_HOST if registry == DOCKER_HUB else registry
        insecure = insecure_registries(self.options.insecure_registries)
        self.scheme = "http" if is_insecure(self.api_host, insecure) else "https"
        self.auth = Authenticator(registry, docker_config_path(), f"{self.scheme}://{self.api_host}")
        self._local = threading.local()

    # --- manifests ------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """Fetch a manifest or index by tag or digest; a digest reference is verified."""
        what = f"pull manifest {self._where(repository, reference)}"

        def attempt() -> tuple[bytes, str]:
            response = self._request_once(
                "GET", self._url(repository, "manifests", reference), repository,
                headers={"Accept": MANIFEST_ACCEPT}, stream=True,
            )
            with response:
                self._check(response, what, repository, reference, expected=(200,))
                return _read_limited(response, MAX_MANIFEST_SIZE, what), response.headers.get("Content-Type", "")

        data, content_type = self._with_retries(attempt, what)
        digest = sha256_digest(data)
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatch(
                f"{what}: the registry sent a manifest whose digest is {digest}, not the one asked for"
            )
        document = parse_json_document(data, f"manifest {self._where(repository, reference)}")
        media_type = _manifest_media_type(document, content_type)
        if media_type in SCHEMA1_TYPES or document.get("schemaVersion") == 1:
            raise RegistryError(
                f"{self._where(repository, reference)} is a Docker schema 1 image, which imgbuild "
                "does not read; push it again with a current tool to get a schema 2 manifest"
            )
        if media_type not in MANIFEST_TYPES + INDEX_TYPES:
            raise RegistryError(f"{what}: unsupported manifest media type {media_type!r}")
        return Manifest(Descriptor(media_type, digest, len(data)), data, document)

    def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        """The descriptor of a manifest without its body, or None if there is no such manifest.

        None too when the registry does not say the digest (the caller then GETs).
        """
        what = f"check manifest {self._where(repository, reference)}"
        response = self._request(
            "HEAD", self._url(repository, "manifests", reference), repository, what,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if response.status_code == 404:
            return None
        self._check(response, what, repository, reference, expected=(200,))
        digest = response.headers.get("Docker-Content-Digest", "")
        size = response.headers.get("Content-Length", "")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if not digest.startswith("sha256:") or not size.isdigit():
            return None
        return Descriptor(media_type, digest, int(size))

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """Upload a manifest (exact bytes) under a tag or its digest; return its digest."""
        what = f"push manifest {self._where(repository, reference)}"
        response = self._request(
            "PUT", self._url(repository, "manifests", reference), repository, what,
            headers={"Content-Type": media_type}, body=lambda: data,
        )
        self._check(response, what, repository, reference, expected=(200, 201, 202))
        return sha256_digest(data)

    # --- blobs ----------------------------------------------------------------

    def has_blob(self, repository: str, digest: str) -> bool:
        what = f"check blob {digest} in {self._where(repository)}"
        response = self._request("HEAD", self._url(repository, "blobs", digest), repository, what)
        if response.status_code == 404:
            return False
        self._check(response, what, repository, expected=(200,))
        return True

    def fetch_blob(self, repository: str, descriptor: Descriptor, store: Store) -> None:
        """Download a blob straight into ``store``, verifying its size and digest.

        A connection dropped mid-body starts the download again; a digest
        mismatch raises DigestMismatch and leaves nothing in the store.
        """
        what = f"pull blob {descriptor.digest} from {self._where(repository)}"
        self._with_retries(lambda: self._fetch_blob_once(repository, descriptor, store, what), what)

    def _fetch_blob_once(self, repository: str, descriptor: Descriptor, store: Store, what: str) -> None:
        response = self._request_once("GET", self._url(repository, "blobs", descriptor.digest), repository, stream=True)
        with response:
            self._check(response, what, repository, expected=(200,))
            try:
                with store.blob_writer(descriptor.digest) as writer:
                    received = 0
                    for chunk in response.raw.stream(READ_CHUNK, decode_content=False):
                        received += len(chunk)
                        if received > descriptor.size:
                            raise RegistryError(f"{what}: the registry sent more than the {descriptor.size} bytes the manifest announces")
                        writer.write(chunk)
                    if received != descriptor.size:
                        raise RegistryError(f"{what}: the registry sent {received} bytes, the manifest announces {descriptor.size}")
            except DROPPED as error:
                raise _Transient(f"the connection dropped during the download ({_reason(error)})") from None
            except DigestMismatch as error:
                raise DigestMismatch(f"{what}: the content does not match its digest ({error}); nothing was stored") from None

    def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Ask the registry to link a blob it has in ``from_repository``; True if it did.

        On False the registry has opened an upload session instead; we leave it to
        expire (Distribution purges stale uploads) and start our own upload.
        """
        what = f"mount blob {digest} from {from_repository} into {self._where(repository)}"
        url = self._url(repository, "blobs", "uploads/") + "?" + urlencode({"mount": digest, "from": from_repository})
        response = self._request("POST", url, repository, what, mount_from=from_repository)
        self._check(response, what, repository, expected=(201, 202))
        return response.status_code == 201

    def upload_blob(self, repository: str, descriptor: Descriptor, open_blob: Callable[[], BinaryIO]) -> None:
        """Upload a blob: monolithic up to the chunk threshold, chunked above it.

        A failed attempt (5xx, dropped connection) starts a new upload session.
        """
        what = f"push blob {descriptor.digest} to {self._where(repository)}"
        self._with_retries(lambda: self._upload_blob_once(repository, descriptor, open_blob, what), what)

    def _upload_blob_once(self, repository, descriptor, open_blob, what) -> None:
        response = self._request_once("POST", self._url(repository, "blobs", "uploads/"), repository)
        self._check(response, what, repository, expected=(202,))
        location = self._location(response, what)
        with open_blob() as blob:
            if descriptor.size > self.options.chunk_threshold:
                location = self._send_chunks(repository, location, blob, what)
                final_body = b""
            else:
                # requests sends a file with Content-Length from its size; an empty
                # file it would send chunked, so an empty blob goes as b"".
                final_body = blob if descriptor.size else b""
            url = _with_query(location, digest=descriptor.digest)
            response = self._request_once(
                "PUT", url, repository, headers={"Content-Type": "application/octet-stream"},
                body=lambda: _rewound(final_body),
            )
        self._check(response, what, repository, expected=(201, 204))

    def _send_chunks(self, repository: str, location: str, blob: BinaryIO, what: str) -> str:
        offset = 0
        while chunk := blob.read(self.options.chunk_size):
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                "Content-Length": str(len(chunk)),
            }
            response = self._request_once("PATCH", location, repository, headers=headers, body=lambda c=chunk: c)
            self._check(response, what, repository, expected=(202, 204))
            location = self._location(response, what)
            offset += len(chunk)
        return location

    # --- requests, retries, auth ------------------------------------------------

    def _request(self, method: str, url: str, repository: str, what: str, **kwargs) -> requests.Response:
        """One request, retried on transient failures; the caller checks the status."""
        return self._with_retries(lambda: self._request_once(method, url, repository, **kwargs), what)

    def _with_retries(self, attempt: Callable[[], Any], what: str) -> Any:
        attempts = max(1, self.options.attempts)
        for number in range(1, attempts + 1):
            try:
                return attempt()
            except _Transient as error:
                if number == attempts:
                    raise RegistryError(f"{what}: {error} (gave up after {attempts} attempts)") from None
                delay = self.options.backoff * 2 ** (number - 1)
                log.info("%s; retrying in %.1f s (attempt %d of %d)", error, delay, number + 1, attempts)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _request_once(
        self,
        method: str,
        url: str,
        repository: str,
        *,
        headers: dict | None = None,
        body: Callable[[], Any] | None = None,
        stream: bool = False,
        mount_from: str | None = None,
    ) -> requests.Response:
        """Send once (plus one resend after a 401 handshake). Raises _Transient to retry."""
        scopes = self._scopes(repository, mount_from)
        same_host = urlsplit(url).netloc == self.api_host
        for auth_round in range(2):
            request_headers = dict(headers or {})
            authorization = self.auth.authorization(scopes) if same_host else None
            if authorization:
                request_headers["Authorization"] = authorization
            try:
                response = self._session().request(
                    method, url, headers=request_headers, data=body() if body else None,
                    stream=stream, timeout=(15, self.options.timeout), allow_redirects=True,
                )
            except requests.exceptions.SSLError as error:
                # Not transient: retrying a certificate problem only delays the message.
                raise RegistryError(
                    f"TLS connection to registry {self.registry} failed ({_reason(error)}); if it "
                    "serves plain HTTP, name it with --insecure-registry"
                ) from None
            except DROPPED as error:
                raise _Transient(f"connection to registry {self.registry} failed ({_reason(error)})") from None
            except requests.RequestException as error:
                raise RegistryError(f"request to registry {self.registry} failed ({_reason(error)})") from None
            log.debug("%s %s -> %d", method, _path(url), response.status_code)
            if response.status_code in RETRY_STATUSES:
                message = _registry_message(response)
                response.close()
                raise _Transient(
                    f"registry {self.registry} answered {response.status_code} {response.reason} "
                    f"to {method} {_path(url)}{': ' + message if message else ''}"
                )
            if response.status_code != 401 or not same_host:
                return response
            challenge = response.headers.get("WWW-Authenticate", "")
            response.close()
            self.auth.handle_unauthorized(
                challenge, scopes, sent_authorization=authorization is not None,
                final=auth_round == 1, repository=repository, get_token=self._get_token,
            )
        raise AssertionError("unreachable: the second 401 raises in handle_unauthorized")

    def _get_token(self, url: str, params: dict, headers: dict) -> requests.Response:
        def attempt() -> requests.Response:
            try:
                response = self._session().get(url, params=params, headers=headers, timeout=(15, 60))
            except DROPPED as error:
                raise _Transient(f"connection to token service {_path(url)} failed ({_reason(error)})") from None
            if response.status_code in RETRY_STATUSES:
                raise _Transient(f"token service {_path(url)} answered {response.status_code} {response.reason}")
            return response

        return self._with_retries(attempt, f"get a token from {_path(url)}")

    def _scopes(self, repository: str, mount_from: str | None) -> tuple[str, ...]:
        actions = "pull,push" if self.for_push else "pull"
        scopes = [f"repository:{repository}:{actions}"]
        if mount_from:
            scopes.append(f"repository:{mount_from}:pull")
        return tuple(scopes)

    def _session(self) -> requests.Session:
        # One session (connection pool) per thread: requests.Session is not
        # documented as thread-safe.
        session = getattr(self._local, "session", None)
        if session is None:
            session = Session()  # never sends ~/.netrc logins (see imgbuild.http_session)
            session.headers["User-Agent"] = f"imgbuild/{__version__}"
            self._local.session = session
        return session

    # --- helpers ----------------------------------------------------------------

    def _url(self, repository: str, kind: str, reference: str) -> str:
        return f"{self.scheme}://{self.api_host}/v2/{repository}/{kind}/{reference}"

    def _where(self, repository: str, reference: str | None = None) -> str:
        if reference is None:
            return f"{self.registry}/{repository}"
        separator = "@" if reference.startswith("sha256:") else ":"
        return f"{self.registry}/{repository}{separator}{reference}"

    def _location(self, response: requests.Response, what: str) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{what}: registry {self.registry} started an upload without a Location header")
        return urljoin(response.url, location)

    def _check(
        self,
        response: requests.Response,
        what: str,
        repository: str,
        reference: str | None = None,
        *,
        expected: tuple[int, ...],
    ) -> None:
        """Raise the error a user can act on unless the status is one of ``expected``."""
        status = response.status_code
        if status in expected:
            return
        message = _registry_message(response)
        detail = f" ({message})" if message else ""
        if status == 401:
            raise AuthError(f"{what}: registry {self.registry} requires authentication{detail}; check the credentials in {self.auth.config_source}")
        if status == 403:
            raise AuthError(
                f"{what}: registry {self.registry} denied access to repository {repository}{detail}; "
                f"check that the credentials in {self.auth.config_source} allow it"
            )
        if status == 404 and reference is not None:
            kind = "digest" if reference.startswith("sha256:") else "tag"
            raise ManifestNotFound(
                f"image {self._where(repository, reference)} not found: registry {self.registry} "
                f"has no {kind} {reference!r} in repository {repository!r}{detail}"
            )
        raise RegistryError(f"{what}: registry {self.registry} answered {status} {response.reason}{detail}")


def _manifest_media_type(document: dict, content_type: str) -> str:
    declared = document.get("mediaType")
    if declared:
        return declared
    header = content_type.split(";")[0].strip()
    if header in MANIFEST_TYPES + INDEX_TYPES + SCHEMA1_TYPES:
        return header
    return media_type_of(document, header)


def _read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    parts, size = [], 0
    try:
        for chunk in response.raw.stream(READ_CHUNK, decode_content=True):
            size += len(chunk)
            if size > limit:
                raise RegistryError(f"{what}: the manifest is larger than {limit} bytes")
            parts.append(chunk)
    except DROPPED as error:
        raise _Transient(f"the connection dropped ({_reason(error)})") from None
    return b"".join(parts)


def _registry_message(response: requests.Response) -> str:
    """The registry's own error text (``{"errors": [{"code", "message"}]}``), shortened."""
    if response.request is not None and response.request.method == "HEAD":
        return ""
    try:
        body = response.content[:4096]
        errors = json.loads(body).get("errors") or []
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError, TypeError, requests.RequestException, urllib3.exceptions.HTTPError):
        text = ""
    return text[:300]


def _with_query(url: str, **params: str) -> str:
    # Append without re-encoding the registry's own query (upload state), byte for byte.
    separator = "&" if urlsplit(url).query else "?"
    return f"{url}{separator}{urlencode(params)}"


def _rewound(body: Any) -> Any:
    if hasattr(body, "seek"):
        body.seek(0)
    return body


def _path(url: str) -> str:
    """A URL's path, without the host or query (which may hold upload state)."""
    return urlsplit(url).path


def _reason(error: BaseException) -> str:
    """A short cause for a connection error, without requests' long nested repr."""
    text = str(error)
    for marker in ("Connection refused", "Connection reset", "Connection aborted", "Remote end closed",
                   "timed out", "IncompleteRead", "Name or service not known", "certificate verify failed",
                   "wrong version number"):
        if marker in text:
            return marker.lower()
    return type(error).__name__

"""Registry credentials and the authentication handshake.

Credentials come from Docker's client config, ``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json``: a credential helper named in ``credHelpers`` (per
registry) or ``credsStore`` (for all), else the ``auths`` entry (base64 ``auth``
of ``user:password``, or ``username``/``password``).

The handshake is the one the OCI distribution spec and Docker use: a request
without credentials gets ``401`` with ``WWW-Authenticate``. ``Basic`` means: send
the credentials with every request. ``Bearer realm=...,service=...,scope=...``
means: ask the realm for a token for those scopes (with basic credentials if we
have any, anonymously otherwise) and send ``Authorization: Bearer <token>``.

The credentials go to a token realm only where they cannot be read on the way
(``realm_may_get_credentials``): over https, or over plain HTTP to the host of a
registry that is itself reached over plain HTTP (a loopback or
``--insecure-registry`` registry, which gets them in clear text with Basic auth
anyway). Docker and containers/image send them to any realm the registry names.

Secrets never appear in messages or logs: errors name the registry and the file
the credentials came from, never the username, password or token.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from imgbuild.dataclass import dataclass
from imgbuild.errors import AuthError, RegistryError

log = logging.getLogger("imgbuild.registry")

# The key `docker login` writes for Docker Hub, and the names that mean Docker Hub.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
DOCKER_HUB_HOSTS = {"docker.io", "index.docker.io", "registry-1.docker.io"}

TOKEN_MIN_LIFETIME = 60  # seconds; the spec's default when the server gives none


@dataclass(frozen=True)
class Credentials:
    """A registry user name and password, and where they came from."""

    username: str
    password: str = field(repr=False)
    source: str = ""  # where they came from, for messages: a file or a helper


def docker_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``, as the docker CLI."""
    directory = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(directory) / "config.json"


def config_hostname(key: str) -> str:
    """The host of a config.json ``auths`` key: ``https://host:5000/v1/`` -> ``host:5000``."""
    key = key.strip()
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    return key.split("/", 1)[0]


def registry_hostnames(registry: str) -> set[str]:
    """The config.json hostnames that hold credentials for ``registry``."""
    return set(DOCKER_HUB_HOSTS) if registry in DOCKER_HUB_HOSTS else {registry}


def load_credentials(registry: str, config_path: Path | None = None) -> Credentials | None:
    """Credentials for ``registry`` (as in a reference: ``docker.io``, ``host:5000``), or None."""
    path = config_path or docker_config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise AuthError(f"cannot read registry credentials from {path}: {_describe(error)}") from None
    if not isinstance(config, dict):
        raise AuthError(f"cannot read registry credentials from {path}: not a JSON object")

    hostnames = registry_hostnames(registry)
    helpers = config.get("credHelpers") or {}
    helper = next((name for key, name in helpers.items() if config_hostname(key) in hostnames), None)
    helper = helper or config.get("credsStore")
    if helper:
        credentials = _from_helper(helper, registry)
        if credentials is not None:
            return credentials
    return _from_auths(config.get("auths") or {}, hostnames, path)


def _from_auths(auths: dict, hostnames: set[str], path: Path) -> Credentials | None:
    for key, entry in auths.items():
        if config_hostname(key) not in hostnames or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(entry["auth"], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise AuthError(f"the `auth` entry for {key} in {path} is not valid base64 of user:password") from None
            username, colon, password = decoded.partition(":")
            if not colon:
                raise AuthError(f"the `auth` entry for {key} in {path} is not of the form base64(user:password)")
            return Credentials(username, password, str(path))
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""), str(path))
        if entry.get("identitytoken"):
            log.warning("identity tokens in %s are not supported; using no credentials for %s", path, key)
    return None


def _from_helper(helper: str, registry: str) -> Credentials | None:
    """Ask ``docker-credential-<helper> get``, per docker-credential-helpers' protocol."""
    program = f"docker-credential-{helper}"
    if shutil.which(program) is None:
        log.warning("credential helper %s is not installed; looking in `auths` instead", program)
        return None
    server = DOCKER_HUB_CONFIG_KEY if registry in DOCKER_HUB_HOSTS else registry
    try:
        result = subprocess.run(
            [program, "get"], input=server.encode(), capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise AuthError(f"credential helper {program} failed for {registry}: {_describe(error)}") from None
    if result.returncode != 0:
        if b"credentials not found" in result.stdout + result.stderr:
            return None
        raise AuthError(f"credential helper {program} failed for {registry} (exit status {result.returncode})")
    try:
        answer = json.loads(result.stdout)
        username, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise AuthError(f"credential helper {program} gave an answer that is not its JSON format") from None
    if username == "<token>":
        log.warning("identity tokens from %s are not supported; using no credentials for %s", program, registry)
        return None
    return Credentials(username, secret, f"credential helper {program}")


# --- WWW-Authenticate ---------------------------------------------------------------

@dataclass(frozen=True)
class Challenge:
    """One challenge of a registry's WWW-Authenticate header."""

    scheme: str  # lower-case: "basic", "bearer"
    params: dict[str, str]


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_CHALLENGE_PART = re.compile(
    rf'\s*(?:(?P<key>{_TOKEN})\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^,\s]*))'
    rf"|(?P<scheme>{_TOKEN}))\s*,?"
)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` (RFC 7235): one or more ``Scheme k=v, k="v"`` challenges."""
    challenges: list[Challenge] = []
    position = 0
    while position < len(header):
        match = _CHALLENGE_PART.match(header, position)
        if not match or match.end() == position:
            break
        position = match.end()
        if match.group("scheme"):
            challenges.append(Challenge(match.group("scheme").lower(), {}))
        elif challenges:
            value = match.group("quoted")
            value = re.sub(r"\\(.)", r"\1", value) if value is not None else match.group("bare")
            challenges[-1].params[match.group("key").lower()] = value
    return challenges


# --- the handshake ---------------------------------------------------------------


def realm_may_get_credentials(realm: str, registry_url: str) -> bool:
    """May the basic credentials for the registry at ``registry_url`` go to ``realm``?

    Over https, yes. Over plain HTTP only to the registry's own host, and only
    when the registry itself is plain HTTP: then they take no path in clear text
    that the registry's own traffic does not already take. A plain-HTTP realm of
    an https registry, or on another host, would hand them to anyone on the way.
    """
    realm_parts, registry_parts = urlsplit(realm), urlsplit(registry_url)
    if realm_parts.scheme == "https":
        return True
    return (
        realm_parts.scheme == "http"
        and registry_parts.scheme == "http"
        and realm_parts.hostname is not None
        and realm_parts.hostname == registry_parts.hostname
    )


# (url, params, headers) -> requests.Response; the client supplies it, with its retries.
TokenGetter = Callable[[str, dict, dict], Any]


class Authenticator:
    """The authentication state for one registry, shared by the client's threads."""

    def __init__(self, registry: str, config_path: Path, registry_url: str | None = None):
        self.registry = registry
        self.registry_url = registry_url or f"https://{registry}"  # scheme and host the API is reached at
        self.config_path = config_path
        self.config_source = str(config_path)  # where we look, for "no credentials" messages
        self._credentials: Credentials | None = None
        self._credentials_loaded = False
        self._credentials_lock = threading.Lock()  # apart: token fetches read credentials
        self._scheme: str | None = None  # learnt from the first 401
        self._bearer: dict[str, str] = {}  # realm, service
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._token_lock = threading.Lock()
        self._withheld_from: str | None = None  # a realm that got no credentials (plain HTTP)

    @property
    def credentials(self) -> Credentials | None:
        """Read on first need, so an anonymous registry never runs a credential helper."""
        with self._credentials_lock:
            if not self._credentials_loaded:
                self._credentials = load_credentials(self.registry, self.config_path)
                self._credentials_loaded = True
            return self._credentials

    def authorization(self, scopes: tuple[str, ...]) -> str | None:
        """The ``Authorization`` header value to send now, or None."""
        if self._scheme == "basic" and self.credentials:
            return _basic_header(self.credentials)
        if self._scheme == "bearer":
            with self._token_lock:
                cached = self._tokens.get(scopes)
            if cached and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
        return None

    def handle_unauthorized(
        self,
        challenge_header: str,
        scopes: tuple[str, ...],
        *,
        sent_authorization: bool,
        final: bool,
        repository: str,
        get_token: TokenGetter,
    ) -> None:
        """React to a 401: learn the scheme, fetch a token; raise AuthError if hopeless.

        ``final`` means a retry with fresh credentials was already refused.
        """
        challenges = {c.scheme: c for c in parse_challenges(challenge_header)}
        bearer = challenges.get("bearer")
        if final and bearer and bearer.params.get("error") == "insufficient_scope":
            raise self._denied(repository, bearer.params.get("scope", ""))
        if final or (sent_authorization and bearer is None):
            raise self._refused(repository)
        if "bearer" in challenges:
            self._scheme = "bearer"
            self._bearer = challenges["bearer"].params
            with self._token_lock:
                self._tokens.pop(scopes, None)
                self._fetch_token(scopes, challenges["bearer"].params.get("scope", ""), repository, get_token)
        elif "basic" in challenges:
            if self.credentials is None:
                raise self._missing(repository)
            self._scheme = "basic"
        else:
            raise AuthError(
                f"registry {self.registry} refused access to repository {repository} (401) "
                "without saying how to authenticate (no usable WWW-Authenticate header)"
            )

    def _fetch_token(self, scopes: tuple[str, ...], challenge_scope: str, repository: str, get_token) -> None:
        realm = self._bearer.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise AuthError(f"registry {self.registry} named an unusable token realm {realm!r}")
        wanted = sorted(set(scopes) | set(challenge_scope.split()))
        params: dict = {"scope": wanted}
        if self._bearer.get("service"):
            params["service"] = self._bearer["service"]
        headers = {}
        if self.credentials and realm_may_get_credentials(realm, self.registry_url):
            params["account"] = self.credentials.username
            headers["Authorization"] = _basic_header(self.credentials)
        elif self.credentials and self._withheld_from != realm:
            self._withheld_from = realm
            log.warning(
                "registry %s names the plain-HTTP token service %s; asking it for an anonymous "
                "token, without the credentials from %s", self.registry, realm, self.credentials.source,
            )
        response = get_token(realm, params, headers)
        if response.status_code in (401, 403):
            raise self._refused(repository) if self.credentials else self._missing(repository)
        if response.status_code != 200:
            raise RegistryError(
                f"the token service of registry {self.registry} answered {response.status_code} "
                f"{response.reason} (repository {repository})"
            )
        try:
            answer = response.json()
            token = answer.get("token") or answer.get("access_token")
            lifetime = max(int(answer.get("expires_in") or TOKEN_MIN_LIFETIME), TOKEN_MIN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not token:
            raise RegistryError(f"the token service of registry {self.registry} gave no token")
        # Renew a little early so a token never expires in flight.
        self._tokens[scopes] = (token, time.monotonic() + lifetime - 10)

    def _missing(self, repository: str) -> AuthError:
        return AuthError(
            f"registry {self.registry} requires authentication for repository {repository}, "
            f"and there are no credentials for {self.registry} in {self.config_source}: add an "
            f"`auths` entry for it there (or run `docker login {self.registry}`); "
            "DOCKER_CONFIG selects another config directory"
        )

    def _withheld(self, repository: str) -> AuthError:
        return AuthError(
            f"registry {self.registry} refused anonymous access to repository {repository}, and "
            f"imgbuild did not send the credentials from {self.credentials.source} to its token "
            f"service {self._withheld_from}: that is plain HTTP on another host than the registry "
            "(or the registry is https), where anyone on the way could read them; configure the "
            "registry's token realm with https"
        )

    def _denied(self, repository: str, scope: str) -> AuthError:
        if self._withheld_from:
            return self._withheld(repository)
        whose = f"the credentials from {self.credentials.source}" if self.credentials else "anonymous access"
        return AuthError(
            f"registry {self.registry} denied {scope or 'access'} for repository {repository} "
            f"with {whose}: check that the account may do this (credentials are read from "
            f"{self.config_source})"
        )

    def _refused(self, repository: str) -> AuthError:
        if self.credentials is None:
            return self._missing(repository)
        if self._withheld_from:
            return self._withheld(repository)
        return AuthError(
            f"registry {self.registry} rejected the credentials from {self.credentials.source} "
            f"for repository {repository}: check the username and password for {self.registry} "
            "there (or run `docker login` again)"
        )


def _basic_header(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


def _describe(error: BaseException) -> str:
    return getattr(error, "strerror", None) or type(error).__name__

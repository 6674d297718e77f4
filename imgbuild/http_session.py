"""HTTP sessions that take proxies and CA bundles from the environment, never ``~/.netrc``.

``requests`` trusts the environment by default (``trust_env``): that gives us
``HTTPS_PROXY``/``NO_PROXY`` and ``REQUESTS_CA_BUNDLE``, which users behind a
proxy need, but it also reads ``~/.netrc`` and sends the login found there for
a URL's host with every request that carries no auth of its own, and again
after each redirect. The hosts we talk to are named by whoever wrote the
Dockerfile (``ADD <URL>``) or runs the registry (its token realm, its blob
redirects): they must not receive the user's netrc logins. Docker, BuildKit
and containers/image never read ``~/.netrc`` either.
"""

from __future__ import annotations

import requests
from requests.auth import AuthBase


class _NoNetrcAuth(AuthBase):
    """Adds nothing to a request; as the session's auth it keeps requests from
    looking up ``~/.netrc`` (it only does so when a session has no auth)."""

    def __call__(self, request):
        return request


class Session(requests.Session):
    """A ``requests.Session`` with the environment's proxies and CA bundle, without netrc."""

    def __init__(self) -> None:
        super().__init__()
        self.auth = _NoNetrcAuth()

    def rebuild_auth(self, prepared_request, response) -> None:
        # requests' own rule for a redirect, minus its ~/.netrc lookup for the new host:
        # an Authorization header never follows a redirect to another host or scheme.
        headers = prepared_request.headers
        if "Authorization" in headers and self.should_strip_auth(response.request.url, prepared_request.url):
            del headers["Authorization"]

"""ADD <URL>: download a remote file, verify ``--checksum``, describe it for the cache key.

Follows BuildKit's HTTP source: the file is never extracted, its name is the
last element of the URL path (``__unnamed__`` if there is none), it gets mode
0600 and owner 0:0 in the image (unless --chmod/--chown), and its mtime is the
``Last-Modified`` header when the server sends one.

The cache key of an ADD from a URL is the digest of the bytes downloaded
(``Fetched.digest``); with ``--checksum`` that digest is known before the
download, which lets the caller skip it on a cache hit.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
import urllib.parse
from pathlib import Path

from imgbuild.dataclass import dataclass
from imgbuild.errors import BuildError

UNNAMED = "__unnamed__"
CHUNK = 1 << 20
_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True)
class Fetched:
    """A downloaded file, ready for ``copy_into``."""

    url: str
    path: Path  # the downloaded bytes on the local disk
    filename: str  # the name it gets when the destination is a directory
    digest: str  # "sha256:<hex>" of the bytes (the cache key input)
    size: int
    mtime: float | None  # from Last-Modified, seconds since the epoch


def is_url(source: str) -> bool:
    """Is an ADD source a remote URL (rather than a path in the context)?"""
    return source.startswith(("http://", "https://"))


def url_filename(url: str) -> str:
    """The file name BuildKit gives a downloaded URL: the last element of its path."""
    path = urllib.parse.urlsplit(url).path
    base = posixpath.basename(posixpath.normpath(urllib.parse.unquote(path))) if path else ""
    if base in ("", ".", "/", ".."):
        return UNNAMED
    return base


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``--checksum=sha256:<hex>`` into (algorithm, hex); BuildError if malformed."""
    algorithm, sep, value = checksum.partition(":")
    length = _ALGORITHMS.get(algorithm)
    if not sep or length is None:
        raise BuildError(f"invalid checksum {checksum!r}: want sha256:<hex> (or sha384/sha512)")
    if len(value) != length or any(char not in "0123456789abcdef" for char in value):
        raise BuildError(
            f"invalid checksum {checksum!r}: {algorithm} needs {length} lowercase hex digits"
        )
    return algorithm, value


def fetch_url(
    url: str, download_dir: Path, *, checksum: str | None = None, timeout: float = 60.0
) -> Fetched:
    """Download ``url`` into a new file in ``download_dir`` and verify ``checksum``.

    A network failure, an HTTP error status or a checksum mismatch is a
    BuildError naming the URL; nothing is left behind in that case.
    """
    # only ADD <URL> needs requests; keep it out of every build's start-up
    import requests

    from imgbuild.http_session import Session

    expected = parse_checksum(checksum) if checksum else None
    download_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="add-", dir=download_dir)
    path = Path(name)
    try:
        sha256 = hashlib.sha256()
        verify = hashlib.new(expected[0]) if expected else None
        size = 0
        with os.fdopen(fd, "wb") as out:
            try:
                # environment proxies and CA bundle, but never ~/.netrc logins (see http_session)
                with Session() as session, session.get(url, stream=True, timeout=timeout) as response:
                    if response.status_code >= 400:
                        raise BuildError(
                            f"ADD failed: {url}: HTTP {response.status_code} {response.reason}"
                        )
                    last_modified = response.headers.get("Last-Modified")
                    for chunk in response.iter_content(CHUNK):
                        out.write(chunk)
                        sha256.update(chunk)
                        if verify is not None:
                            verify.update(chunk)
                        size += len(chunk)
            except requests.RequestException as error:
                raise BuildError(f"ADD failed: cannot download {url}: {error}") from None
        if expected is not None and verify.hexdigest() != expected[1]:
            raise BuildError(
                f"ADD failed: checksum mismatch for {url}: expected {checksum}, "
                f"got {expected[0]}:{verify.hexdigest()}"
            )
        mtime = _http_date(last_modified)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return Fetched(url, path, url_filename(url), "sha256:" + sha256.hexdigest(), size, mtime)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        import email.utils  # only for an ADD URL's Last-Modified

        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None

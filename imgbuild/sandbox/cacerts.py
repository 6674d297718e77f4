"""``--ca-cert FILE``: extra certificates a RUN step trusts while it runs, and nowhere else.

Behind a TLS-intercepting proxy (many companies', and our own build machines')
``pip install`` and ``npm ci`` in a RUN step fail unless the step trusts the
proxy's CA. Baking the CA into the image leaks it into every layer after. Here
the step instead gets, for its duration only:

- a bundle made outside the root filesystem: the image's own CA bundle (if it
  has one) followed by the extra certificates. It lives in the container's
  private bundle (a tmpfs, see ``sandbox/runtime.py``) like a secret file, and
  is bound read-only at ``BUNDLE_PATH`` and over each distribution trust store
  file the image already has (Debian/Ubuntu, RHEL/Fedora, Alpine). A store the
  image does not have is left alone: binding over a file that ``apt-get
  install ca-certificates`` is about to create would make its
  ``update-ca-certificates`` fail (it renames a new bundle onto the old one).
- ``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE``, ``PIP_CERT``, ``NODE_EXTRA_CA_CERTS``
  and ``CURL_CA_BUNDLE`` naming ``BUNDLE_PATH``, for the tools that read them.

None of it is part of the step's cache key, config or history: a build with a
different proxy CA, or none, hits the same cache, as BuildKit's proxy variables do.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from pathlib import Path

from imgbuild.errors import UsageError
from imgbuild.safeopen import (
    TooLarge,
    open_object,
    read_capped,
    reopen_for_reading,
    resolve_in_root,
)
from imgbuild.sandbox.spec import Mount, PrivateFile

# Where the bundle always is, whatever the distribution: the variables name it.
BUNDLE_PATH = "/run/imgbuild/ca-certificates.crt"
# The distributions' single-file trust stores, in the order their own bundle is looked for.
TRUST_STORES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu (and Alpine's ca-certificates)
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL, Fedora, CentOS
    "/etc/ssl/cert.pem",  # Alpine, and OpenSSL's default on several others
)
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")
MAX_CERT_FILE = 1024 * 1024  # a proxy CA is a few KiB; a whole distribution bundle ~250 KiB
MAX_IMAGE_BUNDLE = 4 * 1024 * 1024  # the image's own bundle: read no more than this

_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.DOTALL
)


def read_ca_certs(paths: list[Path]) -> bytes:
    """The certificates of every ``--ca-cert`` file, as one PEM text; a UsageError naming
    the file when one cannot be read, is not a regular file, is too large, or holds no
    valid certificate. Anything besides the certificates (comments, a key by mistake)
    is left out."""
    return b"".join(_certificates_of(Path(path)) for path in paths)


def _certificates_of(path: Path) -> bytes:
    data = _read_cert_file(path)
    blocks = _PEM_BLOCK.findall(data)
    if not blocks:
        raise UsageError(
            f"--ca-cert {path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE----- "
            "blocks, as in /usr/local/share/ca-certificates/*.crt; convert a DER file with "
            "`openssl x509 -inform der -in FILE -out FILE.pem`)"
        )
    return b"".join(_checked_pem(path, number, body) for number, body in enumerate(blocks, 1))


def _read_cert_file(path: Path) -> bytes:
    """The file's bytes: a regular file (a symlink to one is fine: the user named it), at
    most MAX_CERT_FILE bytes. O_NONBLOCK so that a FIFO given by mistake cannot hang us
    before the check refuses it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise UsageError(f"--ca-cert {path}: cannot open it: {error.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(f"--ca-cert {path}: not a regular file; give a PEM certificate file")
        return read_capped(fd, MAX_CERT_FILE)
    except TooLarge:
        raise UsageError(
            f"--ca-cert {path}: larger than {MAX_CERT_FILE // 1024} KiB; give the CA certificate "
            "itself, not an archive"
        ) from None
    except OSError as error:
        raise UsageError(f"--ca-cert {path}: cannot read it: {error.strerror}") from None
    finally:
        os.close(fd)


def _checked_pem(path: Path, number: int, body: bytes) -> bytes:
    """One certificate block, checked by OpenSSL, written back in a normal form."""
    import ssl  # here, not at the top: a build without --ca-cert loads no OpenSSL

    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
        # OpenSSL parses it as an X.509 certificate (no default store loaded: only this one)
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
    except (binascii.Error, ValueError, ssl.SSLError) as error:
        raise UsageError(
            f"--ca-cert {path}: certificate {number} in it is not a valid X.509 certificate ({error})"
        ) from None
    return ssl.DER_cert_to_PEM_cert(der).encode("ascii")


def image_bundle(rootfs: Path) -> tuple[bytes, list[str]]:
    """The image's own CA bundle (the first trust store it has) and every trust store
    path it has, resolved in the root filesystem (a symlinked store is bound at its
    target, which is what the tools open)."""
    own = b""
    present = []
    for store in TRUST_STORES:
        resolved = _in_root(rootfs, store)
        data = _read_image_file(rootfs, resolved.lstrip("/"))
        if data is None or resolved in present:
            continue
        present.append(resolved)
        if not own:
            own = data
    return own, present


def _read_image_file(rootfs: Path, relative: str) -> bytes | None:
    """A regular file of the image, opened below the root following no symlink, at most
    MAX_IMAGE_BUNDLE bytes; None when it is not there or is anything else (a device
    node is never opened)."""
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        path_fd, info = open_object(root_fd, relative)
    except OSError:
        return None
    finally:
        os.close(root_fd)
    try:
        fd = reopen_for_reading(path_fd, info)
    except OSError:  # NotRegularFile among them
        return None
    finally:
        os.close(path_fd)
    try:
        return read_capped(fd, MAX_IMAGE_BUNDLE)
    except OSError:  # TooLarge among them: not a bundle we want to copy
        return None
    finally:
        os.close(fd)


def _in_root(rootfs: Path, path: str) -> str:
    """``path`` as the container sees it after resolving symlinks inside the root."""
    return "/" + resolve_in_root(rootfs, path).relative_to(rootfs).as_posix()


def ca_cert_mounts(rootfs: Path, extra: bytes) -> tuple[list[Mount], dict[str, str]]:
    """The read-only binds of the step's bundle and the variables that name it."""
    own, present = image_bundle(rootfs)
    if own and not own.endswith(b"\n"):
        own += b"\n"
    bundle = PrivateFile(own + extra, mode=0o444)
    announced = _in_root(rootfs, BUNDLE_PATH)
    destinations = [announced, *(path for path in present if path != announced)]
    mounts = [Mount("bind", destination, readonly=True, private=bundle) for destination in destinations]
    return mounts, dict.fromkeys(CA_VARIABLES, BUNDLE_PATH)

"""``--ca-cert``: RUN steps trust extra CAs while they run, and the CA is nowhere after.

A real TLS server on 127.0.0.1 with a certificate from a CA made here by the
``openssl`` CLI; a real ``curl`` (the host's, with its libraries, in a busybox
image) fetches from it in a RUN step under runc. busybox's own ``wget`` would
not do: it does not verify certificates at all, so it would succeed either way.
"""

from __future__ import annotations

import gzip
import http.server
import json
import os
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from imagetools import make_busybox_rootfs, require_root_and_runc

from imgbuild.builder.builder import build
from imgbuild.builder.options import BuildOptions
from imgbuild.builder.progress import Progress
from imgbuild.cli import main
from imgbuild.errors import RunError
from imgbuild.image import Descriptor, Platform, new_config
from imgbuild.layer.write import write_layer
from imgbuild.store import Store

DEBIAN_BUNDLE = "etc/ssl/certs/ca-certificates.crt"


@pytest.fixture(autouse=True)
def _needs_root_and_runc():
    require_root_and_runc()


# --- a PKI and TLS servers made here ---------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> Path:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=imgbuild test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.crt"


def _make_server_cert(directory: Path, ca: str, name: str) -> tuple[Path, Path]:
    (directory / f"{name}.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=127.0.0.1", cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.crt", directory / f"{name}.key"


class _Server:
    """An HTTPS server on 127.0.0.1 answering every GET with ``body``."""

    def __init__(self, cert: Path, key: Path, body: bytes):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server API)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Pki:
    def __init__(self, directory: Path):
        self.directory = directory
        # "own": the CA the image already trusts; "proxy": what --ca-cert adds
        self.own_ca = _make_ca(directory, "own-ca")
        self.proxy_ca = _make_ca(directory, "proxy-ca")
        self.other_ca = _make_ca(directory, "other-ca")
        self.own_server = _Server(*_make_server_cert(directory, "own-ca", "own-server"), b"served-by-own\n")
        self.proxy_server = _Server(*_make_server_cert(directory, "proxy-ca", "proxy-server"), b"served-by-proxy\n")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    made = Pki(tmp_path_factory.mktemp("pki"))
    yield made
    made.own_server.stop()
    made.proxy_server.stop()


# --- an image with a real, verifying TLS client ------------------------------------------


def _libraries(binary: str) -> list[str]:
    output = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    found = []
    for line in output.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0]
        if path.startswith("/"):
            found.append(path)
    return found


@pytest.fixture(scope="module")
def curl_rootfs(tmp_path_factory) -> Path:
    """busybox plus the host's curl and its shared libraries, at the host's paths."""
    root = make_busybox_rootfs(tmp_path_factory.mktemp("curlbox") / "rootfs")
    curl = shutil.which("curl")
    assert curl, "curl is not installed (scripts/install-deps.sh installs it)"
    for path in [curl, *_libraries(curl)]:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), target)
    return root


def _write_image(store: Store, rootfs: Path, tag: str) -> None:
    with store.blob_writer() as blob:
        digests = write_layer(rootfs, blob, compression="gzip", source_date_epoch=0)
    store.record_layer(digests.digest, digests.diff_id, digests.media_type, digests.size)
    config = new_config(Platform.host())
    config["config"] = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    config["rootfs"]["diff_ids"] = [digests.diff_id]
    config["created"] = "1970-01-01T00:00:00Z"
    image = store.write_image(config, [Descriptor(digests.media_type, digests.digest, digests.size)])
    store.tag(tag, image.manifest_descriptor)


def _image_with(store: Store, base: Path, work: Path, files: dict[str, bytes], links: dict[str, str]) -> None:
    """``curlbox:latest``: the curl rootfs plus ``files`` and symlinks ``links``."""
    rootfs = work / "image-rootfs"
    shutil.copytree(base, rootfs, symlinks=True)
    for name, data in files.items():
        (rootfs / name).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / name).write_bytes(data)
    for name, target in links.items():
        (rootfs / name).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / name).symlink_to(target)
    _write_image(store, rootfs, "curlbox:latest")


def _build(store: Store, context: Path, dockerfile: str, **options):
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    return build(store, BuildOptions(context=context, progress="quiet", **options), progress=Progress())


def _layer_bytes(store: Store, image) -> list[bytes]:
    return [gzip.decompress(store.read_blob(layer.digest)) for layer in image.layers]


def _file_in_layers(store: Store, image, name: str) -> bytes | None:
    """The content of ``name`` in the image's top-most layer that has it (tar, by hand)."""
    import io
    import tarfile

    found = None
    for data in _layer_bytes(store, image):
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if member.name.strip("./") == name and member.isfile():
                    found = tar.extractfile(member).read()
    return found


def _pem_body(path: Path) -> bytes:
    """A line of the certificate's base64, to look for in layers, configs and blobs."""
    lines = path.read_bytes().splitlines()
    start = lines.index(b"-----BEGIN CERTIFICATE-----")
    return lines[start + 3]


# --- the tests -------------------------------------------------------------------------------


FETCH = "RUN curl -sS --max-time 20 {proxy} > /from-proxy && curl -sS --max-time 20 {own} > /from-own\n"


def test_run_trusts_ca_cert_only_with_the_flag_and_keeps_the_image_bundle(pki, curl_rootfs, store_root, tmp_path):
    store = Store(store_root)
    _image_with(store, curl_rootfs, tmp_path, {DEBIAN_BUNDLE: pki.own_ca.read_bytes()}, {})
    dockerfile = "FROM curlbox\n" + FETCH.format(proxy=pki.proxy_server.url, own=pki.own_server.url)

    with pytest.raises(RunError) as refused:
        _build(store, tmp_path / "without", dockerfile)
    assert refused.value.exit_status == 60  # curl: peer certificate cannot be authenticated

    result = _build(store, tmp_path / "with", dockerfile, ca_certs=[pki.proxy_ca], tags=["fetched:1"])
    assert _file_in_layers(store, result.image, "from-proxy") == b"served-by-proxy\n"
    # the image's own bundle was in the step's bundle too
    assert _file_in_layers(store, result.image, "from-own") == b"served-by-own\n"
    # the image's trust store is as it was, and nothing of the mounts reached the layer
    assert _file_in_layers(store, result.image, DEBIAN_BUNDLE) == pki.own_ca.read_bytes()
    step_layer = _layer_bytes(store, result.image)[-1]
    assert b"ca-certificates.crt" not in step_layer and b"run/imgbuild" not in step_layer
    needle = _pem_body(pki.proxy_ca)
    assert not any(needle in data for data in _layer_bytes(store, result.image))
    config_text = json.dumps(result.image.config)
    assert needle.decode() not in config_text and "SSL_CERT_FILE" not in config_text
    assert "ca-cert" not in config_text and str(pki.proxy_ca) not in config_text


def test_ca_cert_is_not_part_of_the_cache_key(pki, curl_rootfs, store_root, tmp_path):
    store = Store(store_root)
    _image_with(store, curl_rootfs, tmp_path, {DEBIAN_BUNDLE: pki.own_ca.read_bytes()}, {})
    dockerfile = "FROM curlbox\n" + FETCH.format(proxy=pki.proxy_server.url, own=pki.own_server.url)
    first = _build(store, tmp_path / "first", dockerfile, ca_certs=[pki.proxy_ca], source_date_epoch=0)
    assert first.steps_run == 1
    other = _build(
        store, tmp_path / "other", dockerfile, ca_certs=[pki.other_ca, pki.proxy_ca], source_date_epoch=0
    )
    without = _build(store, tmp_path / "none", dockerfile, source_date_epoch=0)
    for rebuilt in (other, without):
        assert (rebuilt.steps_run, rebuilt.steps_cached) == (0, 1)
        assert rebuilt.image.digest == first.image.digest
    # and nothing in the whole store holds the certificate: index, blobs, snapshots
    needle = _pem_body(pki.proxy_ca)
    assert _files_holding(store_root, needle) == []


def _files_holding(root: Path, needle: bytes) -> list[str]:
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            data = Path(path).read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            if needle in data:
                found.append(path)
    return found


def test_step_sees_the_bundle_at_every_trust_store_the_image_has_and_the_variables(
    pki, curl_rootfs, store_root, tmp_path
):
    """Debian's file and RHEL's are bound; Alpine's symlink to Debian's path is that same
    file; the variables name /run/imgbuild/ca-certificates.crt; all hold both CAs."""
    store = Store(store_root)
    own = pki.own_ca.read_bytes()
    _image_with(
        store, curl_rootfs, tmp_path,
        {DEBIAN_BUNDLE: own, "etc/pki/tls/certs/ca-bundle.crt": own},
        {"etc/ssl/cert.pem": "certs/ca-certificates.crt"},
    )  # fmt: skip
    variables = "SSL_CERT_FILE REQUESTS_CA_BUNDLE PIP_CERT NODE_EXTRA_CA_CERTS CURL_CA_BUNDLE"
    dockerfile = (
        "FROM curlbox\n"
        f"RUN for v in {variables}; do eval echo $v=\\$$v; done > /variables && "
        "for f in /run/imgbuild/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt "
        "/etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do "
        'echo "$f $(grep -c BEGIN $f) $(stat -L -c %a $f)"; done > /counts && '
        "(echo changed > /etc/ssl/certs/ca-certificates.crt 2>/dev/null && echo writable || echo read-only) > /ro\n"
        "USER app\n"
        "RUN grep -c BEGIN $SSL_CERT_FILE > /tmp/as-app\n"
    )
    result = _build(store, tmp_path / "ctx", dockerfile, ca_certs=[pki.proxy_ca])
    expected = "".join(f"{name}=/run/imgbuild/ca-certificates.crt\n" for name in variables.split())
    assert _file_in_layers(store, result.image, "variables").decode() == expected
    assert _file_in_layers(store, result.image, "counts").decode() == (
        "/run/imgbuild/ca-certificates.crt 2 444\n"
        "/etc/ssl/certs/ca-certificates.crt 2 444\n"
        "/etc/pki/tls/certs/ca-bundle.crt 2 444\n"
        "/etc/ssl/cert.pem 2 444\n"
    )
    assert _file_in_layers(store, result.image, "ro") == b"read-only\n"
    assert _file_in_layers(store, result.image, "tmp/as-app") == b"2\n"
    assert _file_in_layers(store, result.image, "etc/pki/tls/certs/ca-bundle.crt") == own


def test_image_without_a_trust_store_gets_only_the_announced_bundle(pki, curl_rootfs, store_root, tmp_path):
    """No store is made where the image has none (apt-get install ca-certificates would then
    fail to rename its new bundle onto a mount point); curl finds the CA through the variable."""
    store = Store(store_root)
    _image_with(store, curl_rootfs, tmp_path, {}, {})
    dockerfile = (
        "FROM curlbox\n"
        f"RUN curl -sS --max-time 20 {pki.proxy_server.url} > /from-proxy && "
        "(ls /etc/ssl/certs 2>&1 || true) > /ls && "
        "mkdir -p /etc/ssl/certs && echo mine > /etc/ssl/certs/ca-certificates.crt.new && "
        "mv /etc/ssl/certs/ca-certificates.crt.new /etc/ssl/certs/ca-certificates.crt\n"
    )
    result = _build(store, tmp_path / "ctx", dockerfile, ca_certs=[pki.proxy_ca])
    assert _file_in_layers(store, result.image, "from-proxy") == b"served-by-proxy\n"
    assert b"No such file" in _file_in_layers(store, result.image, "ls")
    assert _file_in_layers(store, result.image, DEBIAN_BUNDLE) == b"mine\n"
    step_layer = _layer_bytes(store, result.image)[-1]
    assert b"run/imgbuild" not in step_layer


def test_trust_store_symlinks_are_resolved_inside_the_root(pki, curl_rootfs, store_root, tmp_path):
    """A trust store that is a symlink out of the image (to a host file holding a PEM) is
    neither read from the host nor mounted over it: it resolves inside the root, where
    nothing is, so the step's bundle holds the extra CA alone."""
    store = Store(store_root)
    host_file = tmp_path / "host-bundle.pem"
    host_file.write_bytes(pki.other_ca.read_bytes())
    escape = "../../../../../../../.." + str(host_file)
    _image_with(store, curl_rootfs, tmp_path, {}, {DEBIAN_BUNDLE: escape, "etc/ssl/cert.pem": str(host_file)})
    dockerfile = "FROM curlbox\nRUN grep -c BEGIN $SSL_CERT_FILE > /count; ls /tmp > /tmp-list\n"
    result = _build(store, tmp_path / "ctx", dockerfile, ca_certs=[pki.proxy_ca])
    assert _file_in_layers(store, result.image, "count") == b"1\n"
    assert host_file.read_bytes() == pki.other_ca.read_bytes()
    step_layer = _layer_bytes(store, result.image)[-1]
    assert b"host-bundle" not in step_layer and b"run/imgbuild" not in step_layer


# --- bad --ca-cert files: usage errors naming the file -------------------------------------


def _cli_build(capsys, store_root: Path, context: Path, *ca_args: str) -> tuple[int, str]:
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text("FROM scratch\nCOPY Dockerfile /\n")
    capsys.readouterr()
    code = main(["--root", str(store_root), "build", "--progress", "plain", *ca_args, str(context)])
    return code, capsys.readouterr().err


def test_bad_ca_cert_files_are_usage_errors_naming_the_file(pki, store_root, tmp_path, capsys):
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("just text\n")
    bad_body = tmp_path / "bad.pem"
    bad_body.write_text("-----BEGIN CERTIFICATE-----\nAAAAbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    key_only = tmp_path / "key.pem"
    key_only.write_bytes((pki.directory / "proxy-ca.key").read_bytes())
    huge = tmp_path / "huge.pem"
    huge.write_bytes(pki.proxy_ca.read_bytes() * 2000)
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    cases = {
        tmp_path / "missing.pem": "cannot open it",
        tmp_path: "not a regular file",
        fifo: "not a regular file",
        not_pem: "no PEM certificate",
        key_only: "no PEM certificate",
        bad_body: "certificate 1 in it is not a valid X.509 certificate",
        huge: "larger than 1024 KiB",
    }
    for path, message in cases.items():
        code, err = _cli_build(capsys, store_root, tmp_path / "ctx", "--ca-cert", str(pki.proxy_ca), "--ca-cert", str(path))
        assert code == 2, (path, err)
        assert f"--ca-cert {path}: {message}" in err, err
        assert "Traceback" not in err


def test_good_ca_cert_with_text_around_it_builds(pki, store_root, tmp_path, capsys):
    """A bundle with comments between certificates (as `openssl x509 -text` writes) is fine."""
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(b"# our proxy\n" + pki.proxy_ca.read_bytes() + b"subject=...\n" + pki.own_ca.read_bytes())
    code, err = _cli_build(capsys, store_root, tmp_path / "ctx", "--ca-cert", str(mixed))
    assert code == 0, err


# --- the real use: PyPI through this machine's TLS-intercepting proxy ----------------------------


def test_pypi_through_the_hosts_intercepting_proxy_needs_its_ca(curl_rootfs, store_root, tmp_path):
    """docs/MACHINE-NOTES: HTTPS to PyPI passes a TLS-intercepting proxy whose CA the host
    trusts through /usr/local/share/ca-certificates/*.crt. An image that trusts nothing
    reaches PyPI only with those given as --ca-cert. (A Debian base with pip is the
    examples' business; curl shows the same trust path without one.)"""
    # A runner without an intercepting proxy has no extra CA there; its whole system bundle
    # then plays the same part (the image itself still trusts nothing).
    proxy_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    proxy_cas = proxy_cas or [Path("/etc/ssl/certs/ca-certificates.crt")]
    store = Store(store_root)
    _image_with(store, curl_rootfs, tmp_path, {}, {})
    dockerfile = (
        "FROM curlbox\n"
        "RUN curl -sS --max-time 60 https://pypi.org/simple/six/ > /six.html && grep -c 'six-' /six.html\n"
    )
    with pytest.raises(RunError) as refused:
        _build(store, tmp_path / "without", dockerfile)
    assert refused.value.exit_status in (60, 77)  # cannot verify the peer / no CA file
    result = _build(store, tmp_path / "with", dockerfile, ca_certs=proxy_cas)
    assert b"six-1." in _file_in_layers(store, result.image, "six.html")
    needles = [_pem_body(path) for path in proxy_cas]
    assert not any(needle in data for needle in needles for data in _layer_bytes(store, result.image))

"""ADD as BuildKit's dockerfile_add_test.go (and testSymlinkDestination) pin it down:
local archives, URLs from a server on 127.0.0.1, --chmod, --chown, --checksum, --unpack.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import http.server
import io
import tarfile
import threading
import time

import pytest

MODIFIED = int(time.time()) - 24 * 3600  # a day ago, as BuildKit's test (no false positive with "now")


def tar_bytes(members: list[tuple[dict, bytes | None]]) -> bytes:
    """A tar archive of (TarInfo fields, data) pairs."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for key, value in fields.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


FOO_TAR = tar_bytes([({"name": "foo", "mode": 0o644}, b"content0")])
BAR_TAR = tar_bytes([({"name": "bar", "mode": 0o644}, b"content1")])
FOO_TGZ = gzip.compress(FOO_TAR, mtime=0)


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[bytes, int | None]] = {}

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, modified = route
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if modified is not None:
            self.send_header("Last-Modified", email.utils.formatdate(modified, usegmt=True))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    """An HTTP server on 127.0.0.1 with BuildKit's test routes."""
    _Handler.routes = {
        "/foo": (b"content1", None),
        "/": (b"content2", MODIFIED),
        "/t.tar.gz": (FOO_TGZ, None),
    }
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


ADD_DOCKERFILE = """\
FROM busybox
ADD t.tar /a1/
ADD t.tar.gz /a2/
ADD --unpack=false t.tar.gz /a3/
COPY t.tar.gz /a4/
ADD {url}/t.tar.gz /a5/
ADD --unpack=true {url}/t.tar.gz /a6/
ADD {url}/t.tar.gz /a7/newname.tar.gz
ADD implied.tar.gz /a8/
ADD rootfs.tar /a9/
ADD payload.tar /a9/
ADD --chown=100:200 t.tar /a10/
ADD *.tar2 /a11
ADD link.tar /a12/
COPY foo /a12/symlink/
ADD {url}/foo /dest/
ADD {url}/ /dest/
ARG mode
ADD --chmod=644 {url}/foo /tmp/foo1
ADD --chmod=755 {url}/foo /tmp/foo2
ADD --chmod=0413 {url}/foo /tmp/foo3
ADD --chmod=${{mode}} {url}/foo /tmp/foo4
ADD --checksum=sha256:{digest} {url}/foo /sum/foo
ENV DIGEST=sha256:{digest}
ENV LINK={url}/foo
ADD --checksum=${{DIGEST}} ${{LINK}} /sum/foo-env
ADD climb.tar /a13/
"""


def _context_files() -> dict:
    implied = tar_bytes([
        ({"name": "etc/dnf/", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
        ({"name": "etc/dnf/dnf.conf", "mode": 0o644}, b"dnf.conf"),
    ])  # fmt: skip
    rootfs = tar_bytes([
        ({"name": "run/", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
        ({"name": "var/", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
        ({"name": "var/run", "type": tarfile.SYMTYPE, "linkname": "/run", "mode": 0o777}, None),
    ])  # fmt: skip
    head = "var/run/act/actions/broad/.git/HEAD"
    payload = tar_bytes(
        [({"name": d, "type": tarfile.DIRTYPE, "mode": 0o755}, None)
         for d in ("var/run/act/", "var/run/act/actions/", "var/run/act/actions/broad/", "var/run/act/actions/broad/.git/")]
        + [({"name": head, "mode": 0o644}, b"ref: refs/heads/main\n"),
           ({"name": head + ".link", "type": tarfile.LNKTYPE, "linkname": head, "mode": 0o644}, None)]
    )  # fmt: skip
    link = tar_bytes([({"name": "symlink", "type": tarfile.SYMTYPE, "linkname": "../tmp/symlink-target", "mode": 0o755}, None)])
    climb = tar_bytes([
        ({"name": "../../escaped", "mode": 0o644}, b"climbed"),
        ({"name": "up", "type": tarfile.SYMTYPE, "linkname": "../../../../etc/passwd"}, None),
    ])  # fmt: skip
    return {
        "t.tar": FOO_TAR, "t.tar.gz": FOO_TGZ, "implied.tar.gz": gzip.compress(implied),
        "rootfs.tar": rootfs, "payload.tar": payload, "a.tar2": FOO_TAR, "b.tar2": BAR_TAR,
        "link.tar": link, "foo": "content0", "climb.tar": climb,
    }  # fmt: skip


@pytest.fixture(scope="module")
def built(bk, server):
    digest = hashlib.sha256(b"content1").hexdigest()
    dockerfile = ADD_DOCKERFILE.format(url=server, digest=digest)
    return bk.build(dockerfile, _context_files(), build_args={"mode": "400"})


@pytest.fixture(scope="module")
def tree(built):
    return built.tree()


def _data(tree, path):
    node = tree.get(path)
    return node.data if node is not None else None


def _mode(tree, path):
    return oct(tree[path].mode)


CHECKS = [
    ("testDockerfileAddArchive", "tar-extracted", lambda t: (_data(t, "a1/foo"), b"content0")),
    ("testDockerfileAddArchive", "tar-gz-extracted", lambda t: (_data(t, "a2/foo"), b"content0")),
    ("testDockerfileAddArchive", "unpack-false-keeps-archive", lambda t: ((_data(t, "a3/t.tar.gz"), "a3/foo" in t), (FOO_TGZ, False))),
    ("testDockerfileAddArchive", "copy-never-extracts", lambda t: (_data(t, "a4/t.tar.gz"), FOO_TGZ)),
    ("testDockerfileAddArchive", "url-archive-not-extracted", lambda t: ((_data(t, "a5/t.tar.gz"), "a5/foo" in t), (FOO_TGZ, False))),
    ("testDockerfileAddArchive", "url-unpack-true-extracts", lambda t: (_data(t, "a6/foo"), b"content0")),
    ("testDockerfileAddArchive", "url-to-new-name", lambda t: (_data(t, "a7/newname.tar.gz"), FOO_TGZ)),
    ("testDockerfileAddArchiveWithImpliedParentDir", "implied-parents", lambda t: (_data(t, "a8/etc/dnf/dnf.conf"), b"dnf.conf")),
    ("testDockerfileAddArchiveThroughAbsoluteSymlink", "through-absolute-symlink",
     lambda t: (_data(t, "a9/run/act/actions/broad/.git/HEAD"), b"ref: refs/heads/main\n")),
    ("testDockerfileAddArchiveThroughAbsoluteSymlink", "hardlink-through-absolute-symlink",
     lambda t: (_data(t, "a9/run/act/actions/broad/.git/HEAD.link"), b"ref: refs/heads/main\n")),
    ("testDockerfileAddArchiveThroughAbsoluteSymlink", "symlink-kept",
     lambda t: ((t["a9/var/run"].kind, t["a9/var/run"].target), ("symlink", "/run"))),
    ("testDockerfileAddChownArchive", "chown-archive-file", lambda t: ((t["a10/foo"].uid, t["a10/foo"].gid), (100, 200))),
    ("testDockerfileAddChownArchive", "chown-archive-dest-dir", lambda t: ((t["a10"].uid, t["a10"].gid), (100, 200))),
    ("testDockerfileAddChownArchive", "chown-archive-content", lambda t: (_data(t, "a10/foo"), b"content0")),
    # several archives into a destination without "/" (buildah 1.28 refuses it)
    ("testDockerfileAddArchiveWildcard", "wildcard-archives-first", lambda t: (_data(t, "a11/foo"), b"content0")),
    ("testDockerfileAddArchiveWildcard", "wildcard-archives-second", lambda t: (_data(t, "a11/bar"), b"content1")),
    # an archive symlink climbing above the destination stays inside the image
    ("testSymlinkDestination", "archive-symlink-kept-as-written",
     lambda t: (t["a12/symlink"].target, "../tmp/symlink-target")),
    ("testSymlinkDestination", "copy-through-archive-symlink", lambda t: (_data(t, "tmp/symlink-target/foo"), b"content0")),
    ("testSymlinkDestination", "archive-entry-climbing-confined",
     lambda t: ((_data(t, "a13/escaped"), "escaped" in t), (b"climbed", False))),
    ("testDockerfileADDFromURL", "url-named-by-path", lambda t: (_data(t, "dest/foo"), b"content1")),
    ("testDockerfileADDFromURL", "url-without-name", lambda t: (_data(t, "dest/__unnamed__"), b"content2")),
    ("testDockerfileADDFromURL", "url-default-mode", lambda t: (_mode(t, "dest/foo"), oct(0o600))),
    ("testAddURLChmod", "url-chmod-644", lambda t: (_mode(t, "tmp/foo1"), oct(0o644))),
    ("testAddURLChmod", "url-chmod-755", lambda t: (_mode(t, "tmp/foo2"), oct(0o755))),
    ("testAddURLChmod", "url-chmod-0413", lambda t: (_mode(t, "tmp/foo3"), oct(0o413))),
    ("testAddURLChmod", "url-chmod-build-arg", lambda t: (_mode(t, "tmp/foo4"), oct(0o400))),
    ("testAddChecksum", "checksum-valid", lambda t: (_data(t, "sum/foo"), b"content1")),
    ("testAddChecksum", "checksum-from-env", lambda t: (_data(t, "sum/foo-env"), b"content1")),
]


@pytest.mark.parametrize(
    "check", [pytest.param(c, id=i, marks=pytest.mark.buildkit(b)) for b, i, c in CHECKS]
)
def test_add(check, tree):
    actual, expected = check(tree)
    assert actual == expected


@pytest.mark.buildkit("testDockerfileADDFromURL")
def test_url_mtime_is_last_modified(built):
    """The file's mtime is the server's Last-Modified (read from the layer tars)."""
    mtimes = []
    for layer in built.image.layers:
        data = gzip.decompress(built.store.read_blob(layer.digest))
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            mtimes += [m.mtime for m in archive.getmembers() if m.name.rstrip("/") == "dest/__unnamed__"]
    assert mtimes == [MODIFIED]


ERRORS = [
    ("testAddInvalidChmod", "chmod-not-octal", "FROM scratch\nADD --chmod=64a foo /\n",
     "invalid chmod parameter: '64a'. it should be octal string and between 0 and 07777"),
    ("testAddInvalidChmod", "chmod-too-big", "FROM scratch\nADD --chmod=10000 foo /\n",
     "invalid chmod parameter: '10000'. it should be octal string and between 0 and 07777"),
    ("testAddChecksum", "checksum-mismatch", "FROM scratch\nADD --checksum=sha256:" + hashlib.sha256(b"").hexdigest()
     + " URL/foo /tmp/foo\n", "checksum mismatch"),
    ("testAddChecksum", "checksum-md5-unsupported", "FROM scratch\nADD --checksum=md5:7e55db001d319a94b0b713529a756623 URL/foo /tmp/foo\n",
     "invalid checksum"),
    ("testAddChecksum", "checksum-unknown-algorithm", "FROM scratch\nADD --checksum=unknown:" + hashlib.sha256(b"content1").hexdigest()
     + " URL/foo /tmp/foo\n", "invalid checksum"),
    ("testAddChecksum", "checksum-without-algorithm", "FROM scratch\nADD --checksum=" + hashlib.sha256(b"content1").hexdigest()
     + " URL/foo /tmp/foo\n", "invalid checksum"),
    ("testAddChecksum", "checksum-needs-url", "FROM scratch\nADD --checksum=sha256:" + hashlib.sha256(b"foo").hexdigest()
     + " foo /tmp/foo\n", "http(s) URL"),
]


@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [pytest.param(d, m, id=i, marks=pytest.mark.buildkit(b)) for b, i, d, m in ERRORS],
)
def test_add_errors(bk, server, dockerfile, message):
    assert message in bk.error(dockerfile.replace("URL", server), {"foo": "foo"})

"""COPY and ADD by Docker's rules, checked in the resulting image's file tree."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import socket
import stat
import tarfile
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import zstandard

from imgbuild.errors import BuildError, ContextError, ImgbuildError

pytestmark = pytest.mark.root

FILES = {
    "a.txt": "a\n",
    "b.txt": "b\n",
    "c.log": "log\n",
    "dir/one": "1\n",
    "dir/sub/two": "2\n",
    "dir/skip.log": "skip\n",
}


def _summary(node):
    return (node.kind, oct(node.mode), node.uid, node.gid, node.data)


# --- sources and destinations ----------------------------------------------------------


def test_directory_source_copies_its_contents(build_df):
    tree = build_df("FROM scratch\nCOPY dir /dest/\nCOPY dir /nodir\n", FILES).tree()
    assert tree["dest/one"].data == b"1\n"
    assert tree["dest/sub/two"].data == b"2\n"
    assert "dest/dir" not in tree
    assert tree["nodir/sub/two"].data == b"2\n"
    assert _summary(tree["dest"])[:4] == ("dir", "0o755", 0, 0)


def test_trailing_slash_makes_a_directory(build_df):
    tree = build_df(
        "FROM busybox\nCOPY a.txt /newdir/\nCOPY a.txt /plainfile\nCOPY a.txt /tmp\nCOPY a.txt .\n",
        FILES,
    ).tree()
    assert tree["newdir"].kind == "dir"
    assert tree["newdir/a.txt"].data == b"a\n"
    assert tree["plainfile"].kind == "file"
    assert tree["tmp/a.txt"].data == b"a\n"  # an existing directory takes the file inside
    assert tree["tmp"].mode == 0o1777  # and keeps its metadata
    assert tree["a.txt"].data == b"a\n"


def test_wildcards(build_df):
    tree = build_df(
        "FROM scratch\nCOPY *.txt /w/\nCOPY d?r/sub/t* /q/\nCOPY nomatch* /none/\n", FILES
    ).tree()
    assert sorted(n for n in tree if n.startswith("w/")) == ["w/a.txt", "w/b.txt"]
    assert tree["q/two"].data == b"2\n"


def test_several_sources_need_a_directory_destination(build_df):
    with pytest.raises(BuildError) as caught:
        build_df("FROM scratch\nCOPY a.txt b.txt /notadir\n", FILES)
    assert "Dockerfile:2" in str(caught.value)
    assert "/notadir" in str(caught.value)
    tree = build_df("FROM scratch\nCOPY a.txt b.txt /isadir/\n", FILES).tree()
    assert {"isadir/a.txt", "isadir/b.txt"} <= set(tree)


def test_missing_parents_are_created(build_df):
    tree = build_df("FROM scratch\nCOPY a.txt /x/y/z/file\n", FILES).tree()
    for parent in ("x", "x/y", "x/y/z"):
        assert _summary(tree[parent])[:4] == ("dir", "0o755", 0, 0)
    assert tree["x/y/z/file"].data == b"a\n"


@pytest.mark.parametrize(
    "dest,source",
    [("/a/b/c", "a.txt"), ("/a/b", "a.txt"), ("/a/", "a.txt"), ("/a/", "dir"), ("/link/b", "dir")],
)
def test_destination_below_a_file_is_a_clear_error(build_df, dest, source):
    with pytest.raises(BuildError) as caught:
        build_df(f"FROM busybox\nRUN touch /a && ln -s /a /link\nCOPY {source} {dest}\n", FILES)
    assert caught.value.location.line == 3
    assert f"{source} to {dest}: /a is not a directory (it is a regular file)" in str(caught.value)


def test_relative_destination_follows_workdir(build_df):
    tree = build_df("FROM scratch\nWORKDIR /app\nCOPY a.txt rel/\nCOPY b.txt ./\n", FILES).tree()
    assert tree["app/rel/a.txt"].data == b"a\n"
    assert tree["app/b.txt"].data == b"b\n"


def test_modes_and_symlinks_are_kept(build_df, tmp_path):
    context = tmp_path / "ctx"
    (context / "tree").mkdir(parents=True)
    (context / "tree" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(context / "tree" / "run.sh", 0o4755)
    os.symlink("run.sh", context / "tree" / "link")
    tree = build_df("FROM scratch\nCOPY tree /t/\n", context=context).tree()
    assert _summary(tree["t/run.sh"])[:4] == ("file", "0o4755", 0, 0)
    assert (tree["t/link"].kind, tree["t/link"].target) == ("symlink", "run.sh")


# --- --chown and --chmod ---------------------------------------------------------------------


def test_chown_by_name_and_id_owns_created_parents(build_df):
    built = build_df(
        "FROM busybox\n"
        "RUN echo 'odd:x:2000:50::/:/bin/sh' >> /etc/passwd\n"
        "COPY --chown=app:staff a.txt /named/parent/a.txt\n"
        "COPY --chown=1234:5678 b.txt /numeric/b.txt\n"
        "COPY --chown=1234 b.txt /uid-only/b.txt\n"
        "COPY --chown=odd dir /user-only/\n",
        FILES,
    )
    tree = built.tree()
    for path in ("named", "named/parent", "named/parent/a.txt"):
        assert (tree[path].uid, tree[path].gid) == (1000, 50), path
    for path in ("numeric", "numeric/b.txt"):
        assert (tree[path].uid, tree[path].gid) == (1234, 5678), path
    assert (tree["uid-only/b.txt"].uid, tree["uid-only/b.txt"].gid) == (1234, 1234)
    # a user name without a group takes the user's primary group, as BuildKit does
    for path in ("user-only", "user-only/one", "user-only/sub", "user-only/sub/two"):
        assert (tree[path].uid, tree[path].gid) == (2000, 50), path


def test_chown_unknown_user_fails(build_df):
    with pytest.raises(BuildError, match="nosuchuser"):
        build_df("FROM busybox\nCOPY --chown=nosuchuser a.txt /a\n", FILES)


def test_chmod(build_df):
    tree = build_df(
        "FROM scratch\nCOPY --chmod=640 a.txt /m/a\nCOPY --chmod=0700 dir /md/\n", FILES
    ).tree()
    assert tree["m/a"].mode == 0o640
    assert tree["m"].mode == 0o640  # a created parent gets the mode too (BuildKit >= 1.15)
    assert tree["md/one"].mode == 0o700
    assert tree["md/sub"].mode == 0o700


# --- --from, --exclude, --link --------------------------------------------------------------------


def test_copy_from_stage_index_and_image(build_df, shared_store):
    built = build_df(
        "FROM busybox AS builder\nRUN echo made > /made && chown 1000:1000 /made\n"
        "FROM busybox\nRUN echo second > /second\n"
        "FROM scratch\n"
        "COPY --from=builder /made /by-name\n"
        "COPY --from=1 /second /by-index\n"
        "COPY --from=busybox:latest /bin/busybox /by-image\n",
    )
    tree = built.tree()
    assert (tree["by-name"].data, tree["by-name"].uid) == (b"made\n", 1000)  # --from keeps owners
    assert tree["by-index"].data == b"second\n"
    busybox = open("/usr/bin/busybox", "rb").read()
    assert tree["by-image"].data == busybox
    assert tree["by-image"].mode == 0o755


def test_exclude(build_df):
    tree = build_df("FROM scratch\nCOPY --exclude=*.log --exclude=sub dir /d/\n", FILES).tree()
    assert sorted(tree) == ["d", "d/one"]


def test_link_layer_does_not_depend_on_the_base(build_df):
    on_busybox = build_df("FROM busybox\nCOPY --link dir /linked/\n", FILES)
    on_scratch = build_df("FROM scratch\nCOPY --link dir /linked/\n", FILES)
    assert on_busybox.image.diff_ids[-1] == on_scratch.image.diff_ids[-1]
    assert on_busybox.tree()["linked/sub/two"].data == b"2\n"
    assert "bin/busybox" in on_busybox.tree()


# --- sources outside the context, .dockerignore ----------------------------------------------


def test_sources_outside_the_context_are_confined_to_it(build_df, tmp_path):
    """As BuildKit: ``..`` above the context root is the root, and a symlink out of
    the context resolves inside it; a file outside is never read."""
    context = tmp_path / "inside"
    context.mkdir()
    (tmp_path / "outside.txt").write_text("outside\n")
    os.symlink("/etc/passwd", context / "abs-link")
    os.symlink("../outside.txt", context / "rel-link")
    for source in ("../outside.txt", "abs-link", "rel-link"):
        with pytest.raises(ImgbuildError) as caught:
            build_df(f"FROM scratch\nCOPY {source} /x\n", context=context)
        assert isinstance(caught.value, (ContextError, BuildError))
        assert "Dockerfile:2" in str(caught.value)
    (context / "outside.txt").write_text("inside\n")
    for source in ("../outside.txt", "rel-link"):
        tree = build_df(f"FROM scratch\nCOPY {source} /x\n", context=context).tree()
        assert tree["x"].data == b"inside\n"


def test_special_files_in_the_context_are_copied_as_nodes_never_read(imgbuild_cli, store, tmp_path):
    """A FIFO and device nodes are made again in the layer (as BuildKit transfers them),
    never opened: a FIFO would block the build, /dev/zero would feed it bytes without
    end. A socket, which no layer can carry, becomes an empty file, as in BuildKit."""
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\nCOPY . /x/\n")
    os.mkfifo(context / "fifo")
    os.mknod(context / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    os.mknod(context / "loop", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(context / "sock"))
    server.close()
    done = imgbuild_cli(store.root, "build", "-q", "-t", "special:1", str(context), timeout=60)
    assert done.returncode == 0, done.stderr
    (layer,) = store.load_image("special:1").layers
    with tarfile.open(fileobj=io.BytesIO(store.read_blob(layer.digest)), mode="r:gz") as tar:
        members = {m.name.removeprefix("./").rstrip("/"): m for m in tar.getmembers()}
    assert members["x/fifo"].isfifo()
    zero, loop = members["x/zero"], members["x/loop"]
    assert zero.ischr() and (zero.devmajor, zero.devminor, zero.size) == (1, 5, 0)
    assert loop.isblk() and (loop.devmajor, loop.devminor) == (7, 0)
    assert members["x/sock"].isreg() and members["x/sock"].size == 0


def test_dockerignore_rules(build_df):
    files = {
        **FILES,
        ".dockerignore": "*.log\n**/secret*\ndir/sub\n!keep.log\n",
        "keep.log": "kept\n",
        "deep/er/secret.key": "no\n",
        "deep/er/public": "yes\n",
    }
    tree = build_df("FROM scratch\nCOPY . /ctx/\n", files).tree()
    names = {n.removeprefix("ctx/") for n in tree if n.startswith("ctx/")}
    assert "c.log" not in names and "dir/skip.log" in names  # *.log is only the top level
    assert "keep.log" in names
    assert "deep/er/secret.key" not in names and "deep/er/public" in names
    assert "dir/sub" not in names and "dir/one" in names
    with pytest.raises(ContextError):
        build_df("FROM scratch\nCOPY c.log /\n", files)


def test_dockerfile_specific_ignore_file_wins(build_df, tmp_path):
    context = tmp_path / "ctx"
    context.mkdir()
    (context / ".dockerignore").write_text("a.txt\n")
    (context / "build.Dockerfile.dockerignore").write_text("b.txt\n")
    dockerfile = context / "build.Dockerfile"
    dockerfile.write_text("FROM scratch\nCOPY . /ctx/\n")
    tree = build_df("", FILES, context=context, dockerfile=dockerfile).tree()
    assert "ctx/a.txt" in tree
    assert "ctx/b.txt" not in tree


# --- ADD ---------------------------------------------------------------------------------------


def _tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, uid in (
            ("pkg/readme", b"read me\n", 123),
            ("pkg/bin/tool", b"#!/bin/sh\n", 0),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid, info.mode = len(data), uid, uid, 0o750
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_add_extracts_local_archives(build_df):
    raw = _tar_bytes()
    archives = {
        "plain.tar": raw,
        "a.tar.gz": gzip.compress(raw),
        "b.tbz": bz2.compress(raw),
        "c.txz": lzma.compress(raw),
        "d.tar.zst": zstandard.ZstdCompressor().compress(raw),
        "not-an-archive.gz": b"plain text, named .gz\n",
    }
    dockerfile = "FROM scratch\n" + "".join(f"ADD {name} /x/{name}/\n" for name in archives)
    tree = build_df(dockerfile, archives).tree()
    for name in ("plain.tar", "a.tar.gz", "b.tbz", "c.txz", "d.tar.zst"):
        readme = tree[f"x/{name}/pkg/readme"]
        assert (readme.data, readme.uid, readme.mode) == (b"read me\n", 123, 0o750), name
        assert tree[f"x/{name}/pkg/bin/tool"].data == b"#!/bin/sh\n"
    assert tree["x/not-an-archive.gz/not-an-archive.gz"].data == b"plain text, named .gz\n"
    copied = build_df("FROM scratch\nCOPY a.tar.gz /copied/\n", archives).tree()
    assert copied["copied/a.tar.gz"].data == archives["a.tar.gz"]  # COPY never extracts


def test_add_archive_through_a_file_is_a_clear_error(build_df):
    """pkg/readme cannot be extracted where pkg is a file: say so, relative to the destination."""
    with pytest.raises(BuildError) as caught:
        build_df("FROM busybox\nRUN mkdir /x && touch /x/pkg\nADD t.tar /x/\n", {"t.tar": _tar_bytes()})
    assert caught.value.location.line == 3
    assert "t.tar: cannot extract pkg/readme: pkg below the destination is not a directory" in str(
        caught.value
    )
    with pytest.raises(BuildError, match="t.tar to /a/x/: /a is not a directory"):
        build_df("FROM busybox\nRUN touch /a\nADD t.tar /a/x/\n", {"t.tar": _tar_bytes()})


@pytest.fixture
def http_files(tmp_path):
    """A loopback http.server serving a directory; yields (directory, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_add_url_with_checksum(build_df, http_files):
    served, base = http_files
    (served / "tool.sh").write_text("downloaded\n")
    (served / "bundle.tar.gz").write_bytes(gzip.compress(_tar_bytes()))
    good = "sha256:" + hashlib.sha256(b"downloaded\n").hexdigest()
    tree = build_df(
        f"FROM scratch\nADD --checksum={good} {base}/tool.sh /dl/\nADD {base}/bundle.tar.gz /dl/\n"
    ).tree()
    assert _summary(tree["dl/tool.sh"]) == ("file", "0o600", 0, 0, b"downloaded\n")
    assert tree["dl/bundle.tar.gz"].kind == "file"  # remote archives are not extracted
    bad = "sha256:" + "0" * 64
    with pytest.raises(BuildError) as caught:
        build_df(f"FROM scratch\nADD --checksum={bad} {base}/tool.sh /dl/\n")
    assert "checksum" in str(caught.value).lower()


class _RecordingHandler(BaseHTTPRequestHandler):
    """Serves /file (and /redirect to it), and as a proxy any absolute URL; records
    the request line and Authorization header of every request in ``seen``."""

    seen: list[tuple[str, str | None]] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/file")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"served\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def recording_server():
    handler = type("Handler", (_RecordingHandler,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler.seen, server.server_address[1]
    server.shutdown()
    server.server_close()


def test_add_url_never_sends_netrc_logins_but_uses_the_proxy(
    build_df, recording_server, tmp_path, monkeypatch
):
    """requests sends ~/.netrc logins by default (and again after a redirect)."""
    seen, port = recording_server
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(
        "machine 127.0.0.1 login netrc-user password netrc-secret\n"
        "machine files.invalid login netrc-user password netrc-secret\n"
    )
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    for name in ("NETRC", "NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    base = f"http://127.0.0.1:{port}"
    tree = build_df(f"FROM scratch\nADD {base}/file /direct\nADD {base}/redirect /redirected\n").tree()
    assert tree["direct"].data == tree["redirected"].data == b"served\n"
    assert [path for path, _ in seen] == ["/file", "/redirect", "/file"]

    # the environment's proxy is still used: the proxy gets the absolute URL
    monkeypatch.setenv("http_proxy", base)
    tree = build_df("FROM scratch\nADD http://files.invalid/proxied /proxied\n").tree()
    assert tree["proxied"].data == b"served\n"
    assert seen[-1][0] == "http://files.invalid/proxied"
    assert [authorization for _, authorization in seen] == [None] * 4


def test_copy_heredoc_files(build_df):
    tree = build_df(
        "FROM scratch\nARG NAME=world\n"
        "COPY <<EOF /greeting\nhello $NAME\nEOF\n"
        'COPY <<"EOF" /literal\nhello $NAME\nEOF\n'
        "COPY --chmod=755 <<EOF /script.sh\n#!/bin/sh\nEOF\n"
        "COPY <<one <<two /many/\nfirst\none\nsecond\ntwo\n"
    ).tree()
    assert _summary(tree["greeting"]) == ("file", "0o644", 0, 0, b"hello world\n")
    assert tree["literal"].data == b"hello $NAME\n"
    assert tree["script.sh"].mode == 0o755
    assert tree["many/one"].data == b"first\n"
    assert tree["many/two"].data == b"second\n"


def test_add_url_content_is_in_the_cache_key(build_df, store, http_files):
    served, base = http_files
    (served / "remote.txt").write_text("version 1\n")
    dockerfile = f"FROM busybox\nADD {base}/remote.txt /remote.txt\nRUN cat /remote.txt > /seen\n"
    first = build_df(dockerfile, store=store)
    (served / "remote.txt").write_text("version 2\n")
    second = build_df(dockerfile, context=first.context, store=store)
    assert second.result.steps_run == 2
    assert second.tree()["seen"].data == b"version 2\n"


def test_add_url_with_checksum_hits_without_downloading(build_df, store, http_files):
    served, base = http_files
    (served / "pinned.txt").write_text("pinned\n")
    checksum = "sha256:" + hashlib.sha256(b"pinned\n").hexdigest()
    dockerfile = f"FROM busybox\nADD --checksum={checksum} {base}/pinned.txt /pinned.txt\n"
    first = build_df(dockerfile, store=store)
    (served / "pinned.txt").unlink()  # a download now would fail
    second = build_df(dockerfile, context=first.context, store=store)
    assert second.result.steps_cached == 1
    assert second.tree()["pinned.txt"].data == b"pinned\n"


def test_add_archive_with_chown(build_df):
    tree = build_df(
        "FROM busybox\nADD --chown=app:staff pkg.tar /opt/\n", {"pkg.tar": _tar_bytes()}
    ).tree()
    for path in ("opt/pkg", "opt/pkg/readme", "opt/pkg/bin/tool"):
        assert (tree[path].uid, tree[path].gid) == (1000, 50), path


def test_changed_mode_of_a_copied_file_misses(build_df, store):
    first = build_df("FROM busybox\nCOPY run.sh /\n", {"run.sh": "#!/bin/sh\n"}, store=store)
    os.chmod(first.context / "run.sh", 0o755)
    second = build_df("FROM busybox\nCOPY run.sh /\n", context=first.context, store=store)
    assert second.result.steps_run == 1
    assert second.tree()["run.sh"].mode == 0o755

"""COPY as BuildKit's dockerfile_copy_test.go pins it down (and WORKDIR-relative copies).

Two builds: one with only context copies (no RUN), one with stages made by RUN
whose owners and symlinks the copies must keep. Each check is one behaviour,
named by the BuildKit test it follows; it returns (what imgbuild made, what
BuildKit makes).
"""

from __future__ import annotations

import os

import pytest

CONTEXT_DOCKERFILE = """\
FROM busybox
ENV empty=""
COPY testfile $empty
COPY testfile /sample/
WORKDIR /var/www
COPY --link testfile .
WORKDIR /var/www2
COPY --link testfile $empty
WORKDIR /
COPY testfile nomatch* /wild/
COPY link/foo /through/
COPY followdir /fd/
COPY followdir/sub /fbar
COPY fooln /
COPY ln/l* /alllinks/
COPY sub sub
COPY sub sub
COPY files/foo.go dest/foo.go
COPY files/foo.go dest/foo.go
COPY files dest
ENV FOO=bar
COPY $FOO /baz
COPY *.go /gofiles/
COPY f*.go foo2.go
COPY sub/* /subdest/
COPY sub/*/dir2/foo /subdest2/
COPY sub/*/dir2/foo /subdest3/bar
COPY sub/dir1/ subdest4
COPY sub/dir1/. subdest5
COPY sub/dir1 subdest6
WORKDIR /test1
WORKDIR test2
COPY foo ./
ADD foo ./bar/baz
COPY foo ./bar/baz2
WORKDIR ..
COPY foo ./
COPY foo /test3/
WORKDIR /test4
COPY foo .
WORKDIR /test5/test6
COPY foo ../
WORKDIR /
COPY test-äöü.txt test-%C3%A4%C3%B6%C3%BC.txt test+aou.txt /uni/
ARG group
ENV owner=1000
COPY --chown=daemon foo /chown/foo
COPY --chown=1000:nogroup bardir /chown/baz
COPY --chown=${owner}:${group} foo /chown/foobis
COPY --chown=app:app bardir /dest-app
COPY --chown=${owner}:${group} bardir /dest01
ADD --chown=${owner}:${group} foo /addchown
ARG mode
COPY --chmod=0644 foo /cm/
COPY --chmod=777 bar /cm/baz
COPY --chmod=0 foo /cm/foobis
COPY --chmod=777 foo /parent/foo
COPY --chmod=770 foo /parent/sub/foo
COPY --chmod=${mode} foo /cm/footer
COPY ../foo ../../bar /climb/
COPY uplink /climb/uplink
COPY abslink/foo.go /climb/absfoo.go
"""

CONTEXT_FILES = {
    "testfile": "contents0",
    "foo": "foo-contents",
    "bar": "bar-contents",
    "barf": "barf-contents",
    "foo.go": "foo.go-contents",
    "bar.go": "bar.go-contents",
    "files/foo.go": "files-foo.go-contents",
    "sub/dir1/dir2/foo": "sub-foo-contents",
    "sub2/foo": "through-contents",
    "ln/lfile": "lfile-contents",
    "ln/subfile": "subfile-contents",
    "ln/baz": "baz-contents",
    "bardir/sub": "",
    "test-äöü.txt": "foo",
    "test-%C3%A4%C3%B6%C3%BC.txt": "bar",
    "test+aou.txt": "baz",
}


def _context_tree(bk):
    context = bk.context(CONTEXT_FILES)
    os.symlink("sub2", context / "link")
    (context / "followdir").mkdir()
    os.symlink("../barf", context / "followdir" / "sub")
    os.symlink("barf", context / "fooln")
    os.symlink("subfile", context / "ln" / "l0")
    os.symlink("second", context / "ln" / "l1")
    os.symlink("baz", context / "ln" / "second")
    os.chmod(context / "bar", 0o700)
    os.symlink("../../../../foo", context / "uplink")  # climbs above the context root
    os.symlink("/", context / "abslink")  # absolute: the context root
    built = bk.build(
        CONTEXT_DOCKERFILE, context=context, build_args={"group": "nogroup", "mode": "755"}  # our busybox names gid 65534 nogroup
    )
    return built.tree()


@pytest.fixture(scope="module")
def tree(bk):
    return _context_tree(bk)


def _owner(tree, path):
    node = tree[path]
    return (node.uid, node.gid)


def _mode(tree, path):
    return oct(tree[path].mode)


def _data(tree, path):
    node = tree.get(path)
    return node.data.decode() if node is not None and node.data is not None else node


CHECKS = [
    ("testEmptyDestDir", "empty-dest-is-workdir", lambda t: (_data(t, "testfile"), "contents0")),
    ("testPreserveDestDirSlash", "dest-slash-is-dir", lambda t: (_data(t, "sample/testfile"), "contents0")),
    ("testCopyLinkDotDestDir", "link-dot-dest", lambda t: (_data(t, "var/www/testfile"), "contents0")),
    ("testCopyLinkEmptyDestDir", "link-empty-dest", lambda t: (_data(t, "var/www2/testfile"), "contents0")),
    ("testEmptyWildcard", "unmatched-wildcard-copies-the-rest", lambda t: (_data(t, "wild/testfile"), "contents0")),
    ("testEmptyWildcard", "unmatched-wildcard-adds-nothing", lambda t: (sorted(k for k in t if k.startswith("wild/")), ["wild/testfile"])),
    ("testCopyThroughSymlinkContext", "source-through-dir-symlink", lambda t: (_data(t, "through/foo"), "through-contents")),
    ("testCopyFollowAllSymlinks", "symlink-inside-dir-stays-link", lambda t: ((t["fd/sub"].kind, t["fd/sub"].target), ("symlink", "../barf"))),
    ("testCopyFollowAllSymlinks", "symlink-source-followed", lambda t: (_data(t, "fbar"), "barf-contents")),
    ("testCopySymlinks", "symlink-source-copied-as-file", lambda t: ((t["fooln"].kind, _data(t, "fooln")), ("file", "barf-contents"))),
    ("testCopySymlinks", "wildcard-plain-file", lambda t: (_data(t, "alllinks/lfile"), "lfile-contents")),
    ("testCopySymlinks", "wildcard-symlink-followed", lambda t: (_data(t, "alllinks/l0"), "subfile-contents")),
    ("testCopySymlinks", "wildcard-symlink-chain-followed", lambda t: (_data(t, "alllinks/l1"), "baz-contents")),
    ("testCopyOverrideFiles", "dir-copied-twice", lambda t: (_data(t, "sub/dir1/dir2/foo"), "sub-foo-contents")),
    ("testCopyOverrideFiles", "file-copied-twice-then-dir", lambda t: (_data(t, "dest/foo.go"), "files-foo.go-contents")),
    ("testCopyVarSubstitution", "env-in-source", lambda t: (_data(t, "baz"), "bar-contents")),
    ("testCopyWildcards", "glob-into-dir", lambda t: ((_data(t, "gofiles/foo.go"), _data(t, "gofiles/bar.go")), ("foo.go-contents", "bar.go-contents"))),
    ("testCopyWildcards", "glob-one-match-to-file", lambda t: (_data(t, "foo2.go"), "foo.go-contents")),
    ("testCopyWildcards", "glob-dir-copies-contents", lambda t: (_data(t, "subdest/dir2/foo"), "sub-foo-contents")),
    ("testCopyWildcards", "glob-middle-component-into-dir", lambda t: (_data(t, "subdest2/foo"), "sub-foo-contents")),
    ("testCopyWildcards", "glob-middle-component-to-file", lambda t: (_data(t, "subdest3/bar"), "sub-foo-contents")),
    ("testCopyWildcards", "dir-with-slash-to-new-dir", lambda t: (_data(t, "subdest4/dir2/foo"), "sub-foo-contents")),
    ("testCopyWildcards", "dir-dot-to-new-dir", lambda t: (_data(t, "subdest5/dir2/foo"), "sub-foo-contents")),
    ("testCopyWildcards", "dir-to-new-dir", lambda t: (_data(t, "subdest6/dir2/foo"), "sub-foo-contents")),
    ("testCopyRelative", "relative-workdir-dest", lambda t: (_data(t, "test1/test2/foo"), "foo-contents")),
    ("testCopyRelative", "add-relative-new-parents", lambda t: (_data(t, "test1/test2/bar/baz"), "foo-contents")),
    ("testCopyRelative", "copy-relative-new-parents", lambda t: (_data(t, "test1/test2/bar/baz2"), "foo-contents")),
    ("testCopyRelative", "workdir-dotdot", lambda t: (_data(t, "test1/foo"), "foo-contents")),
    ("testCopyRelative", "absolute-dest-dir", lambda t: (_data(t, "test3/foo"), "foo-contents")),
    ("testCopyRelative", "dot-dest", lambda t: (_data(t, "test4/foo"), "foo-contents")),
    ("testCopyRelative", "dotdot-dest", lambda t: (_data(t, "test5/foo"), "foo-contents")),
    ("testCopyUnicodePath", "unicode-name", lambda t: (_data(t, "uni/test-äöü.txt"), "foo")),
    ("testCopyUnicodePath", "percent-name-not-decoded", lambda t: (_data(t, "uni/test-%C3%A4%C3%B6%C3%BC.txt"), "bar")),
    ("testCopyUnicodePath", "plus-name", lambda t: (_data(t, "uni/test+aou.txt"), "baz")),
    ("testCopyChown", "chown-user-name-takes-its-group", lambda t: (_owner(t, "chown/foo"), (1, 1))),
    ("testCopyChown", "chown-uid-and-group-name", lambda t: (_owner(t, "chown/baz/sub"), (1000, 65534))),
    ("testCopyChown", "chown-expands-env-and-arg", lambda t: (_owner(t, "chown/foobis"), (1000, 65534))),
    ("testCopyChownCreateDest", "chown-created-dest-dir", lambda t: (_owner(t, "dest-app"), (1000, 1000))),
    ("testCopyChownCreateDest", "chown-created-dest-dir-expanded", lambda t: (_owner(t, "dest01"), (1000, 65534))),
    ("testDockerfileAddChownExpand", "add-chown-expanded", lambda t: (_owner(t, "addchown"), (1000, 65534))),
    ("testCopyChmod", "chmod-0644", lambda t: (_mode(t, "cm/foo"), oct(0o644))),
    ("testCopyChmod", "chmod-777-over-0700", lambda t: (_mode(t, "cm/baz"), oct(0o777))),
    ("testCopyChmod", "chmod-0", lambda t: (_mode(t, "cm/foobis"), oct(0))),
    # dockerfile >= 1.15: the directories a --chmod copy creates get its mode (buildah 1.28: 0755)
    ("testCopyChmod", "chmod-created-parent", lambda t: (_mode(t, "parent"), oct(0o777))),
    ("testCopyChmod", "chmod-created-nested-parent", lambda t: (_mode(t, "parent/sub"), oct(0o770))),
    ("testCopyChmod", "chmod-from-build-arg", lambda t: (_mode(t, "cm/footer"), oct(0o755))),
    # COPY sources above the context root are confined to it (buildah 1.28 refuses them)
    ("testCopyRelative", "source-dotdot-confined-to-root", lambda t: ((_data(t, "climb/foo"), _data(t, "climb/bar")), ("foo-contents", "bar-contents"))),
    ("testCopyFollowAllSymlinks", "symlink-climbing-above-context-confined", lambda t: (_data(t, "climb/uplink"), "foo-contents")),
    ("testCopyThroughSymlinkContext", "absolute-symlink-resolved-in-context", lambda t: (_data(t, "climb/absfoo.go"), "foo.go-contents")),
]


@pytest.mark.parametrize(
    "check", [pytest.param(c, id=i, marks=pytest.mark.buildkit(b)) for b, i, c in CHECKS]
)
def test_copy_from_context(check, tree):
    actual, expected = check(tree)
    assert actual == expected


STAGES_DOCKERFILE = """\
FROM busybox AS source
RUN touch /file && chown 100:200 /file \\
 && mkdir -p /dir/subdir && touch /dir/subdir/nestedfile \\
 && chown 100:200 /dir && chown 101:201 /dir/subdir && chown 102:202 /dir/subdir/nestedfile \\
 && mkdir -p /out/sub && ln -s /out/sub /sub && ln -s out/sub /sub2 && echo -n data > /sub/foo
WORKDIR /foo
COPY Dockerfile /

FROM busybox AS test_base
RUN for d in /existingdir /existing2; do mkdir -p $d/existingsubdir && touch $d/existingfile \\
 && chown 500:600 $d && chown 501:601 $d/existingsubdir $d/existingfile; done

FROM test_base AS final
COPY --from=source /file .
COPY --from=source /dir /dir
COPY --from=source /dir/. /existingdir
COPY --from=source --chown=300:400 /file /c/file
COPY --from=source --chown=300:400 /dir /c/dir
COPY --from=source --chown=300:400 /dir/. /existing2
COPY --from=source /sub/foo /through/
COPY --from=source /sub2/foo /through/bar
COPY --from=source Dockerfile /rel/
COPY --from=busybox /etc/passwd /implicit
"""

STAGE_CHECKS = [
    ("testCopyChownExistingDir", "file-keeps-owner", lambda t: (_owner(t, "file"), (100, 200))),
    ("testCopyChownExistingDir", "created-dest-dir-is-root", lambda t: (_owner(t, "dir"), (0, 0))),
    ("testCopyChownExistingDir", "subdir-keeps-owner", lambda t: (_owner(t, "dir/subdir"), (101, 201))),
    ("testCopyChownExistingDir", "nested-file-keeps-owner", lambda t: (_owner(t, "dir/subdir/nestedfile"), (102, 202))),
    ("testCopyChownExistingDir", "existing-dir-owner-unchanged", lambda t: (_owner(t, "existingdir"), (500, 600))),
    ("testCopyChownExistingDir", "existing-subdir-unchanged", lambda t: (_owner(t, "existingdir/existingsubdir"), (501, 601))),
    ("testCopyChownExistingDir", "existing-file-unchanged", lambda t: (_owner(t, "existingdir/existingfile"), (501, 601))),
    ("testCopyChownExistingDir", "new-subdir-keeps-owner", lambda t: (_owner(t, "existingdir/subdir"), (101, 201))),
    ("testCopyChownExistingDir", "new-nested-file-keeps-owner", lambda t: (_owner(t, "existingdir/subdir/nestedfile"), (102, 202))),
    ("testCopyChownExistingDir", "chown-file", lambda t: (_owner(t, "c/file"), (300, 400))),
    ("testCopyChownExistingDir", "chown-created-dest-dir", lambda t: (_owner(t, "c/dir"), (300, 400))),
    ("testCopyChownExistingDir", "chown-subdir", lambda t: (_owner(t, "c/dir/subdir"), (300, 400))),
    ("testCopyChownExistingDir", "chown-nested-file", lambda t: (_owner(t, "c/dir/subdir/nestedfile"), (300, 400))),
    ("testCopyChownExistingDir", "chown-leaves-existing-dir", lambda t: (_owner(t, "existing2"), (500, 600))),
    ("testCopyChownExistingDir", "chown-leaves-existing-file", lambda t: (_owner(t, "existing2/existingfile"), (501, 601))),
    ("testCopyChownExistingDir", "chown-new-subdir", lambda t: (_owner(t, "existing2/subdir"), (300, 400))),
    ("testCopyChownExistingDir", "chown-new-nested-file", lambda t: (_owner(t, "existing2/subdir/nestedfile"), (300, 400))),
    ("testCopyThroughSymlinkMultiStage", "absolute-symlink-in-stage", lambda t: (_data(t, "through/foo"), "data")),
    ("testCopyThroughSymlinkMultiStage", "relative-symlink-in-stage", lambda t: (_data(t, "through/bar"), "data")),
    ("testWorkdirCopyIgnoreRelative", "from-source-relative-to-root", lambda t: (_data(t, "rel/Dockerfile"), STAGES_DOCKERFILE)),
    ("testMultiStageImplicitFrom", "copy-from-image-name", lambda t: ("root:x:0:0" in _data(t, "implicit"), True)),
]


@pytest.fixture(scope="module")
def stages_tree(bk):
    return bk.build(STAGES_DOCKERFILE).tree()


@pytest.mark.parametrize(
    "check", [pytest.param(c, id=i, marks=pytest.mark.buildkit(b)) for b, i, c in STAGE_CHECKS]
)
def test_copy_from_stages(check, stages_tree):
    actual, expected = check(stages_tree)
    assert actual == expected


@pytest.mark.buildkit("testMultiStageCaseInsensitive")
def test_stage_names_are_case_insensitive(bk):
    dockerfile = (
        "FROM busybox AS STAge0\nCOPY foo bar\n"
        "FROM busybox AS staGE1\nCOPY --from=staGE0 bar baz\n"
        "FROM busybox\nCOPY --from=stage1 baz bax\n"
    )
    tree = bk.build(dockerfile, {"foo": "foo-contents"}, target="Stage1").tree()
    assert tree["baz"].data == b"foo-contents"


ERRORS = [
    ("testDockerfileCopyFromArgs", "from-no-expansion", "FROM scratch\nCOPY --from=$FOO . .\n",
     "variable expansion is not supported for --from"),
    ("testCopyInvalidChmod", "chmod-not-octal", "FROM scratch\nCOPY --chmod=64a foo /\n",
     "invalid chmod parameter: '64a'. it should be octal string and between 0 and 07777"),
    ("testCopyInvalidChmod", "chmod-too-big", "FROM scratch\nCOPY --chmod=10000 foo /\n",
     "invalid chmod parameter: '10000'. it should be octal string and between 0 and 07777"),
    ("testOutOfOrderStage", "copy-from-later-stage", "FROM busybox AS target\nCOPY --from=build /Dockerfile /out\n"
     "FROM busybox AS build\nCOPY /Dockerfile /d2\nFROM target\n",
     'cannot copy from stage "build", it needs to be defined before current stage "target"'),
    ("testOutOfOrderStage", "copy-from-later-stage-dir", "FROM busybox AS target\nCOPY --from=build / /out\n"
     "FROM busybox AS build\nCOPY /Dockerfile /d2\nFROM target\n",
     'cannot copy from stage "build", it needs to be defined before current stage "target"'),
]


@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [pytest.param(d, m, id=i, marks=pytest.mark.buildkit(b)) for b, i, d, m in ERRORS],
)
def test_copy_errors(bk, dockerfile, message):
    assert message in bk.error(dockerfile, {"foo": "foo-contents"})


# testChmodNonOctal: the expected modes are what busybox chmod(1) makes of the
# same input, so the check does not rest on our own reading of the syntax.
SYMBOLIC = [
    ("file", "f1", "go-w"),
    ("file", "f2", "u=rw,g=r,o=r"),
    ("file", "f3", "a+X"),
    ("dir", "d1", "go-w"),
    ("dir", "d2", "u+rw,g+r,o-x,o+w"),
    ("dir", "d3", "a+X"),
    ("file", "f4", "u=rwX,go=rX"),
    ("dir", "d4", "u=rwX,go=rX"),
    ("file", "f6", "+x"),
    ("xfile", "f7", "g=u"),
    ("xfile", "f8", "u+s,o="),
]


def _symbolic_dockerfile() -> str:
    expected, copies = [], []
    for src, dst, mode in SYMBOLIC:
        expected.append(f"RUN cp -a /input/{src} /expected/{dst} && chmod {mode} /expected/{dst}")
        if src == "dir":  # COPY copies a directory's contents: nest it to copy the directory itself
            expected.append(f"RUN mkdir -p /input/dirs/{dst} && cp -a /input/{src} /input/dirs/{dst}/{dst}")
            copies.append(f"COPY --from=base --chmod={mode} /input/dirs/{dst} /")
        else:
            copies.append(f"COPY --from=base --chmod={mode} /input/{src} /{dst}")
    expected, copies = "\n".join(expected), "\n".join(copies)
    return (
        "FROM busybox AS base\n"
        "RUN mkdir /input /expected && touch /input/file /input/xfile && chmod 666 /input/file"
        " && chmod 740 /input/xfile && mkdir /input/dir && chmod 124 /input/dir\n"
        f"{expected}\nFROM scratch AS result\n{copies}\n"
        "FROM base\nCOPY --from=result / /actual/\n"
    )


@pytest.fixture(scope="module")
def symbolic_tree(bk):
    return bk.build(_symbolic_dockerfile()).tree()


@pytest.mark.buildkit("testChmodNonOctal")
@pytest.mark.parametrize("dst", [d for _, d, _ in SYMBOLIC], ids=[f"{d}-{m}" for _, d, m in SYMBOLIC])
def test_chmod_symbolic(symbolic_tree, dst):
    """dockerfile >= 1.14: --chmod takes chmod(1)'s symbolic modes (buildah 1.28 refuses them)."""
    assert oct(symbolic_tree[f"actual/{dst}"].mode) == oct(symbolic_tree[f"expected/{dst}"].mode)


@pytest.mark.buildkit("testChmodNonOctal")
def test_chmod_symbolic_x_looks_at_the_mode_before(bk):
    """BuildKit's mode parser (dchapes-mode) gives X where the file had an x bit
    before the change; busybox chmod, which BuildKit's own test uses for its
    expectations, looks at the mode so far and would give 0644 here."""
    context = bk.context({"x": "#!/bin/sh\n"})
    (context / "x").chmod(0o740)
    tree = bk.build("FROM scratch\nCOPY --chmod=u=rwX,go=rX x /x\nCOPY --chmod=a-x,a+X x /y\n", context=context).tree()
    assert (oct(tree["x"].mode), oct(tree["y"].mode)) == (oct(0o755), oct(0o751))


@pytest.mark.buildkit("testChmodNonOctal")
def test_chmod_symbolic_created_parent_keeps_default_mode(bk):
    tree = bk.build("FROM scratch\nCOPY --chmod=go-w foo /made/foo\n", {"foo": "x"}).tree()
    assert (oct(tree["made"].mode), oct(tree["made/foo"].mode)) == (oct(0o755), oct(0o644))


@pytest.mark.buildkit("testCopyChmod")
def test_chmod_octal_sets_special_bits(bk):
    """fsutil's copyFileInfo: an octal --chmod is the whole mode, setuid and sticky included."""
    tree = bk.build("FROM scratch\nCOPY --chmod=4755 foo /suid\nCOPY --chmod=1777 foo /sticky\n", {"foo": "x"}).tree()
    assert (oct(tree["suid"].mode), oct(tree["sticky"].mode)) == (oct(0o4755), oct(0o1777))


@pytest.mark.buildkit("testCopySocket")
def test_socket_copied_as_empty_file(bk):
    """fsutil copies a socket "as stub": an empty regular file (imgbuild skipped it before)."""
    import socket

    context = bk.context()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(context / "socket.sock"))
    server.close()
    os.chmod(context / "socket.sock", 0o600)
    node = bk.build("FROM scratch\nCOPY . /\n", context=context).tree()["socket.sock"]
    assert (node.kind, node.data, oct(node.mode)) == ("file", b"", oct(0o600))

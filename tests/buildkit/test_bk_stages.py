"""ONBUILD, stages and targets, errors, the Dockerfile and .dockerignore, WORKDIR,
RUN mounts, secrets and networks, as BuildKit's dockerfile_onbuild_test.go,
dockerfile_multistage_test.go, dockerfile_core_test.go, dockerfile_cmd_test.go,
dockerfile_dockerignore_test.go, dockerfile_workdir_test.go,
dockerfile_mount_test.go, dockerfile_secrets_test.go,
dockerfile_runnetwork_test.go and dockerfile_parents_test.go pin them down."""

from __future__ import annotations

import os

import pytest

from imgbuild.builder.options import parse_secret

# --- ONBUILD ---------------------------------------------------------------------------


@pytest.mark.buildkit("testOnBuildCleared")
def test_onbuild_runs_once(bk):
    bk.build("FROM busybox\nONBUILD RUN mkdir -p /out && echo -n 11 >> /out/foo\n", tags=["bk/onbuild-a:1"])
    bk.build("FROM bk/onbuild-a:1\n", tags=["bk/onbuild-b:1"])
    tree = bk.build("FROM bk/onbuild-b:1 AS base\nFROM scratch\nCOPY --from=base /out /\n").tree()
    assert tree["foo"].data == b"11"  # ran in b, not again in this build


@pytest.mark.buildkit("testOnBuildCleared")
def test_onbuild_not_kept_in_child_image(bk):
    bk.build("FROM busybox\nONBUILD RUN true\n", tags=["bk/onbuild-c:1"])
    assert "OnBuild" not in bk.build("FROM bk/onbuild-c:1\n").config


@pytest.mark.buildkit("testOnBuildWithChildStage")
def test_onbuild_runs_in_first_stage_only(bk):
    bk.build("FROM busybox\nONBUILD RUN mkdir -p /out && touch /out/didrun\n", tags=["bk/onbuild-child:1"])
    tree = bk.build(
        "FROM bk/onbuild-child:1 AS base\nRUN [ -f /out/didrun ] && touch /step1\nRUN rm /out/didrun\n"
        "RUN [ ! -f /out/didrun ] && touch /step2\nFROM base AS child\nRUN [ ! -f /out/didrun ] && touch /step3\n"
        "FROM scratch\nCOPY --from=child /step* /\n"
    ).tree()
    assert {"step1", "step2", "step3"} <= set(tree)


@pytest.mark.buildkit("testOnBuildInheritedStageRun")
def test_onbuild_of_a_stage_runs_in_stage_built_from_it(bk):
    tree = bk.build(
        "FROM busybox AS base\nONBUILD RUN mkdir -p /out && echo -n 11 >> /out/foo\n"
        "FROM base AS mid\nRUN cp /out/foo /out/bar\nFROM scratch\nCOPY --from=mid /out/bar /\n"
    ).tree()
    assert tree["bar"].data == b"11"


@pytest.mark.buildkit("testOnBuildInheritedStageWithFrom")
def test_onbuild_copy_from_in_stage_built_from_it(bk):
    """The trigger's --from makes the child stage need that stage (before: a KeyError)."""
    tree = bk.build(
        "FROM alpine AS src\nRUN mkdir -p /in && echo -n 12 > /in/file\n"
        "FROM busybox AS base\nONBUILD COPY --from=src /in/file /out/foo\n"
        "FROM base AS mid\nRUN cp /out/foo /out/bar\nFROM scratch\nCOPY --from=mid /out/bar /\n"
    ).tree()
    assert tree["bar"].data == b"12"


@pytest.mark.buildkit("testOnBuildNewDeps")
def test_onbuild_copy_from_image(bk):
    bk.build("FROM busybox\nRUN echo 3.21 > /etc/alpine-release\n", tags=["bk/alpine-release:1"])
    bk.build("FROM busybox\nONBUILD COPY --from=bk/alpine-release:1 /etc/alpine-release /out/alpine-release2\n",
             tags=["bk/onbuild-deps:1"])  # fmt: skip
    tree = bk.build(
        "FROM bk/onbuild-deps:1 AS base\nRUN cat /out/alpine-release2 > /out/alpine-release3\n"
        "FROM scratch\nCOPY --from=base /out /\n"
    ).tree()
    assert tree["alpine-release3"].data == b"3.21\n"


@pytest.mark.buildkit("testOnBuildWithCacheMount")
def test_onbuild_with_cache_mount(bk):
    bk.build("FROM busybox\nONBUILD RUN --mount=type=cache,target=/cache echo -n 42 >> /cache/foo && echo -n 11 >> /bar\n",
             tags=["bk/onbuild-cache:1"])  # fmt: skip
    bk.build('FROM bk/onbuild-cache:1\nRUN --mount=type=cache,target=/cache [ "$(cat /cache/foo)" = "42" ] && [ "$(cat /bar)" = "11" ]\n')


@pytest.mark.buildkit("testDockerfileScratchConfig")
def test_arg_of_base_stage_seen_in_child_stage(bk):
    """BuildKit's dispatch state appends the base stage's ARGs to a stage built FROM it."""
    tree = bk.build("FROM busybox AS base\nARG FOO=bar\nFROM base AS child\nRUN echo -n \"$FOO\" > /x\n").tree()
    assert tree["x"].data == b"bar"


# --- stages, targets and errors -------------------------------------------------------------

ERRORS = [
    ("testTargetMistype", "target-did-you-mean", "FROM scratch AS build\nCOPY Dockerfile /out\nFROM scratch\nCOPY --from=build /out /\n",
     {"target": "bulid"}, 'target stage "bulid" could not be found (did you mean build?)'),
    ("testEmptyStages", "no-stages", "ARG foo=bar\n", {}, "dockerfile contains no stages to build"),
    ("testDockerfileInvalidInstruction", "unknown-instruction", 'FROM scratch\nFNTRYPOINT ["/bin/sh", "-c", "echo invalidinstruction"]\n',
     {}, "unknown instruction: FNTRYPOINT"),
    ("testDockerfileInvalidInstruction", "unknown-instruction-did-you-mean", 'FROM scratch\nFNTRYPOINT ["/bin/sh"]\n',
     {}, "did you mean ENTRYPOINT?"),
    ("testMountInvalid", "unknown-flag", "FROM scratch\nRUN --mont=target=/mytmp,type=tmpfs /bin/true\n", {}, "unknown flag: --mont"),
    ("testMountInvalid", "unknown-flag-did-you-mean", "FROM scratch\nRUN --mont=target=/mytmp,type=tmpfs /bin/true\n", {}, "did you mean mount?"),
    ("testMountInvalid", "unknown-key", "FROM scratch\nRUN --mount=typ=tmpfs /bin/true\n", {}, "unexpected key 'typ'"),
    ("testMountInvalid", "unknown-key-did-you-mean", "FROM scratch\nRUN --mount=typ=tmpfs /bin/true\n", {}, "did you mean type?"),
    ("testMountInvalid", "unknown-type", "FROM scratch\nRUN --mount=type=tmp /bin/true\n", {}, 'unsupported mount type "tmp"'),
    ("testMountInvalid", "unknown-type-did-you-mean", "FROM scratch\nRUN --mount=type=tmp /bin/true\n", {}, "did you mean tmpfs?"),
    ("testMountFromError", "mount-from-no-expansion", "FROM busybox AS test\nRUN touch /tmp/test\nFROM busybox\nENV ttt=test\n"
     "RUN --mount=from=$ttt,type=cache,target=/tmp ls\n", {}, "'from' doesn't support variable expansion, define alias stage instead"),
    ("testSecretRequiredWithoutValue", "required-secret-missing", "FROM busybox\nRUN --mount=type=secret,required=true,id=mysecret foo\n",
     {}, "mysecret"),
    ("testDockerignoreInvalid", "bare-exclamation", "FROM scratch\nCOPY . .\n", {"files": {".dockerignore": "!\n"}}, ".dockerignore"),
]


@pytest.mark.parametrize(
    ("dockerfile", "options", "message"),
    [pytest.param(d, o, m, id=i, marks=pytest.mark.buildkit(b)) for b, i, d, o, m in ERRORS],
)
def test_errors(bk, dockerfile, options, message):
    options = dict(options)
    files = options.pop("files", {})
    assert message in bk.error(dockerfile, files, **options)


@pytest.mark.buildkit("testDockerfileLowercase")
def test_lowercase_dockerfile_name(bk):
    context = bk.context()
    (context / "dockerfile").write_text("FROM scratch\nENV from=lowercase\n")
    assert "from=lowercase" in bk.build(None, context=context).config["Env"]


@pytest.mark.buildkit("testSymlinkedDockerfile")
def test_dockerfile_symlink_in_context(bk):
    context = bk.context({"Dockerfile.web": "FROM scratch\nENV foo bar\n"})
    os.symlink("Dockerfile.web", context / "Dockerfile")
    assert "foo=bar" in bk.build(None, context=context).config["Env"]


@pytest.mark.buildkit("testContextChangeDirToFile")
def test_context_dir_replaced_by_file(bk):
    context = bk.context({"foo/bar": "contents"})
    bk.build("FROM scratch\nCOPY foo /\n", context=context)
    (context / "foo" / "bar").unlink()
    (context / "foo").rmdir()
    (context / "foo").write_text("contents2")
    assert bk.build("FROM scratch\nCOPY foo /\n", context=context).tree()["foo"].data == b"contents2"


# --- .dockerignore ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ignored(bk):
    files = {
        "foo": "foo-contents", "bar": "bar-contents", "baz": "baz-contents", "bay": "bay-contents",
        ".dockerignore": "\nba*\nDockerfile\n!bay\n.dockerignore\n",
    }  # fmt: skip
    return bk.build("FROM scratch\nCOPY . .\n", files).tree()


IGNORE_CHECKS = [
    ("kept", "foo", b"foo-contents"),
    ("ignore-file-itself", ".dockerignore", None),
    ("dockerfile-ignored", "Dockerfile", None),
    ("wildcard-ignored", "bar", None),
    ("wildcard-ignored-2", "baz", None),
    ("exception-kept", "bay", b"bay-contents"),
]


@pytest.mark.buildkit("testDockerignore")
@pytest.mark.parametrize(("path", "content"), [(p, c) for _, p, c in IGNORE_CHECKS], ids=[i for i, _, _ in IGNORE_CHECKS])
def test_dockerignore(ignored, path, content):
    node = ignored.get(path)
    assert (node.data if node else None) == content


@pytest.mark.buildkit("testDockerignoreOverride")
@pytest.mark.parametrize(("dockerfile_name", "present", "absent"), [("Dockerfile", "foo", "bar"), ("Dockerfile2", "bar", "foo")])
def test_dockerfile_specific_ignore_file(bk, dockerfile_name, present, absent):
    files = {"Dockerfile.dockerignore": "bar\n", "Dockerfile2.dockerignore": "foo\n", "foo": "c", "bar": "c"}
    context = bk.context(files)
    tree = bk.build("FROM scratch\nCOPY . .\n", context=context, dockerfile_name=dockerfile_name,
                    dockerfile=context / dockerfile_name).tree()  # fmt: skip
    assert present in tree and absent not in tree


# --- WORKDIR --------------------------------------------------------------------------------


@pytest.mark.buildkit("testWorkdirCreatesDir")
def test_workdir_creates_dir(bk):
    tree = bk.build("FROM scratch\nWORKDIR /foo\nWORKDIR /\n").tree()
    assert tree["foo"].kind == "dir"


USERS = "RUN echo 'user:x:1001:1001::/home/user:/bin/sh' >> /etc/passwd && echo 'user:x:1001:' >> /etc/group\n"


@pytest.mark.buildkit("testWorkdirUser")
def test_workdir_owned_by_user(bk):
    bk.build("FROM busybox\n" + USERS + 'USER user\nWORKDIR /mydir\nRUN [ "$(stat -c "%U %G" /mydir)" == "user user" ]\n')


@pytest.mark.buildkit("testWorkdirExists")
def test_workdir_existing_keeps_owner(bk):
    bk.build("FROM busybox\n" + USERS + "RUN mkdir /mydir && chown user:user /mydir\nWORKDIR /mydir\n"
             'RUN [ "$(stat -c "%U %G" /mydir)" == "user user" ]\n')  # fmt: skip


# --- RUN --mount, secrets, network -----------------------------------------------------------

MOUNTS = [
    ("testMountContext", "bind-context", 'RUN --mount=target=/context [ "$(cat /context/testfile)" == "contents0" ]'),
    ("testMountTmpfs", "tmpfs-not-kept", "RUN --mount=target=/mytmp,type=tmpfs touch /mytmp/foo\nRUN [ ! -f /mytmp/foo ]"),
    ("testCacheMountUser", "cache-uid-gid-mode",
     'RUN --mount=type=cache,target=/mycache,uid=1001,gid=1002,mode=0751 [ "$(stat -c "%u %g %f" /mycache)" == "1001 1002 41e9" ]'),
    ("testCacheMountDefaultID", "cache-id-is-target",
     "RUN --mount=type=cache,target=/mycache touch /mycache/foo\nRUN --mount=type=cache,target=/mycache2 [ ! -f /mycache2/foo ]\n"
     "RUN --mount=type=cache,target=/mycache [ -f /mycache/foo ]"),
    ("testMountEnvVar", "target-from-env",
     "ENV SOME_PATH=/mycache3\nRUN --mount=type=cache,target=/mycache3 touch /mycache3/foo\n"
     "RUN --mount=type=cache,target=$SOME_PATH [ -f $SOME_PATH/foo ]"),
    ("testMountArg", "type-from-arg",
     "ARG MNT_TYPE=cache\nRUN --mount=type=$MNT_TYPE,target=/mycache4 touch /mycache4/foo\n"
     "RUN --mount=type=cache,target=/mycache4 [ -f /mycache4/foo ]"),
    ("testMountMetaArg", "target-from-global-arg",
     "ARG META_PATH\nRUN --mount=type=cache,id=mycache,target=/tmp/meta touch /tmp/meta/foo\n"
     "RUN --mount=type=cache,id=mycache,target=$META_PATH [ -f /tmp/meta/foo ]"),
    ("testMountTmpfsSize", "tmpfs-size",
     "RUN --mount=type=tmpfs,target=/dev/shm,size=128m mount | grep /dev/shm | grep size=131072k"),
    ("testMountDuplicate", "bind-dir-and-file",
     "RUN --mount=source=.,target=/tmp/test --mount=source=b.txt,target=/tmp/b.txt "
     '[ "$(cat /tmp/test/a.txt /tmp/b.txt)" = "$(printf "foo\\nbar")" ]'),
    ("testSecretFileParams", "secret-owner-mode",
     'RUN --mount=type=secret,required=false,mode=741,uid=100,gid=102,target=/mysecret [ "$(stat -c "%u %g %f" /mysecret)" = "100 102 81e1" ]'),
    ("testSecretFileParams", "secret-no-stub-left", "RUN --mount=type=secret,required=false,target=/mysecret2 true\nRUN [ ! -e /mysecret2 ]"),
    ("testSecretAsEnviron", "secret-as-env",
     'ENV SECRET_ENV=foo\nRUN --mount=type=secret,id=mysecret,env=SECRET_ENV [ "$SECRET_ENV" == "pw" ] && [ ! -f /run/secrets/mysecret ] || false'),
    ("testSecretAsEnvironWithFileMount", "secret-env-and-file",
     'RUN --mount=type=secret,id=mysecret,target=/run/secrets/secret,env=SECRET_ENV2 [ "$SECRET_ENV2" == "pw" ] && [ -f /run/secrets/secret ] || false'),
    ("testRunNoNetwork", "network-none", "RUN --network=none ! ip link show eth0"),
]


@pytest.mark.parametrize(
    "steps", [pytest.param(s, id=i, marks=pytest.mark.buildkit(b)) for b, i, s in MOUNTS]
)
def test_run_mounts(bk, tmp_path, steps):
    """Each builds (a RUN that checks fails the build); META_PATH is a global ARG."""
    secret = tmp_path / "secret"
    secret.write_text("pw")
    bk.build(
        "ARG META_PATH=/tmp/meta\nFROM busybox\n" + steps + "\n",
        {"testfile": "contents0", "a.txt": "foo\n", "b.txt": "bar\n"},
        secrets=[parse_secret(f"id=mysecret,src={secret}")],
    )


@pytest.mark.buildkit("testMountEnvAcrossStages")
def test_mount_env_across_stages(bk):
    bk.build(
        "FROM busybox as stage1\nENV MNT_ID=mycache5\nENV MNT_TYPE2=cache\n"
        "RUN --mount=type=cache,id=mycache5,target=/abcabc touch /abcabc/foo\n"
        "RUN --mount=type=$MNT_TYPE2,id=$MNT_ID,target=/cbacba [ -f /cbacba/foo ]\n"
        "FROM stage1\nRUN --mount=type=$MNT_TYPE2,id=$MNT_ID,target=/whatever [ -f /whatever/foo ]\n"
    )


# --- COPY --parents ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parents(bk):
    files = {"foo1/foo2/bar": "testing", "foo1/foo2/baz": "testing2"}
    return bk.build("FROM scratch\nCOPY --parents foo1/foo2/bar /\nWORKDIR /test\nCOPY --parents foo1/foo2/ba* .\n", files).tree()


@pytest.mark.buildkit("testCopyParents")
@pytest.mark.parametrize(("path", "content"), [("foo1/foo2/bar", b"testing"), ("test/foo1/foo2/bar", b"testing"),
                                               ("test/foo1/foo2/baz", b"testing2")])  # fmt: skip
def test_copy_parents(parents, path, content):
    assert parents[path].data == content


RELATIVE_PARENTS = """\
FROM busybox AS base
WORKDIR /test
RUN mkdir -p a/b/c/d/e a/b2/c/d/e a/b/c2/d/e a/b/c2/d/e2 && touch a/b/c/d/foo a/b/c/d/e/bay a/b2/c/d/e/bar
FROM scratch
COPY --from=base --parents /test/a/b/./c/d /pivot/
COPY --from=base --parents /test/a/b/c/d/. /dot/
COPY --from=base --parents ./test/a/b/c/d /start/
COPY --from=base --parents /test/a/./b/./c /double/
COPY --from=base --parents /test/a/./*/c /wildcard/
"""

RELATIVE_CHECKS = [
    ("pivot-keeps-after-pivot", "pivot/c/d/foo", True),
    ("pivot-drops-before-pivot", "pivot/a", False),
    ("dot-end-keeps-whole-path", "dot/test/a/b/c/d/foo", True),
    ("relative-source-from-root", "start/test/a/b/c/d/e", True),
    ("last-pivot-wins", "double/b/c/d/foo", True),
    ("wildcard-after-pivot", "wildcard/b2/c/d/e/bar", True),
]


@pytest.fixture(scope="module")
def relative_parents(bk):
    return bk.build(RELATIVE_PARENTS).tree()


@pytest.mark.buildkit("testCopyRelativeParents")
@pytest.mark.parametrize(("path", "present"), [(p, e) for _, p, e in RELATIVE_CHECKS], ids=[i for i, _, _ in RELATIVE_CHECKS])
def test_copy_relative_parents(relative_parents, path, present):
    assert (path in relative_parents) == present


# --- COPY/ADD --exclude (exclude_patterns_test.go, the local-context half) -------------------

EXCLUDE_DOCKERFILE = """\
FROM scratch as builder1
COPY --exclude=*/*.png --exclude=*/*.jpeg . /1
FROM scratch as builder2
COPY --exclude=*/*.pdf --exclude=*/*.txt . /2
FROM scratch as builder3
ADD --exclude=*.mp3 dir3/ /3/
FROM scratch as builder4
COPY --exclude=*.mp3 --exclude=*.jpeg --exclude=*.png --exclude=*.pdf --exclude=*.txt dir* /4/
FROM scratch as builder5
ADD --exclude=*.mp* --exclude=*.jpeg --exclude=*.png --exclude=*.pdf dir* /5
FROM scratch as builder6
ADD --exclude=* dir* /6
FROM scratch
COPY --from=builder1 / /builder1
COPY --from=builder2 / /builder2
COPY --from=builder3 / /builder3
COPY --from=builder4 / /builder4
COPY --from=builder5 / /builder5
COPY --from=builder6 / /builder6
"""

EXCLUDE_FILES = {
    "dir1/file-101.png": "2", "dir1/file-102.txt": "3", "dir1/file-103.jpeg": "4",
    "dir2/file-201.pdf": "6", "dir2/file-202.jpeg": "7", "dir2/file-203.png": "8",
    "dir3/file-301.mp3": "9", "dir3/file-302.mpeg": "10", "dir4/file-401.txt": "11",
}  # fmt: skip

# (path, expected content or symlink target; None: excluded)
EXCLUDE_CASES = [
    ("builder1/1/dir1/file-101.png", None), ("builder1/1/dir1/file-102.txt", "3"),
    ("builder1/1/dir1/file-103.jpeg", None), ("builder1/1/dir2/file-201.pdf", "6"),
    ("builder1/1/dir2/file-202.jpeg", None), ("builder1/1/dir2/file-203.png", None),
    ("builder1/1/dir3/file-301.mp3", "9"), ("builder1/1/dir3/file-302.mpeg", "10"),
    ("builder1/1/dir4/file-401.txt", "11"), ("builder1/1/dir4/file-402.txt", "file-401.txt"),
    ("builder1/1/dir4/file-403.txt", "file-404.txt"),
    ("builder2/2/dir1/file-101.png", "2"), ("builder2/2/dir1/file-102.txt", None),
    ("builder2/2/dir1/file-103.jpeg", "4"), ("builder2/2/dir2/file-201.pdf", None),
    ("builder2/2/dir2/file-202.jpeg", "7"), ("builder2/2/dir2/file-203.png", "8"),
    ("builder2/2/dir3/file-301.mp3", "9"), ("builder2/2/dir3/file-302.mpeg", "10"),
    ("builder2/2/dir4/file-401.txt", None), ("builder2/2/dir4/file-402.txt", None),
    ("builder2/2/dir4/file-403.txt", None),
    ("builder3/3/file-301.mp3", None), ("builder3/3/file-302.mpeg", "10"),
    ("builder4/4/file-101.png", None), ("builder4/4/file-102.txt", None),
    ("builder4/4/file-103.jpeg", None), ("builder4/4/file-201.pdf", None),
    ("builder4/4/file-202.jpeg", None), ("builder4/4/file-203.png", None),
    ("builder4/4/file-301.mp3", None), ("builder4/4/file-302.mpeg", "10"),
    ("builder4/4/file-401.txt", None), ("builder4/4/file-402.txt", None),
    ("builder4/4/file-403.txt", None),
    ("builder5/5/file-101.png", None), ("builder5/5/file-102.txt", "3"),
    ("builder5/5/file-103.jpeg", None), ("builder5/5/file-201.pdf", None),
    ("builder5/5/file-202.jpeg", None), ("builder5/5/file-203.png", None),
    ("builder5/5/file-301.mp3", None), ("builder5/5/file-302.mpeg", None),
    ("builder5/5/file-401.txt", "11"), ("builder5/5/file-402.txt", "file-401.txt"),
    ("builder5/5/file-403.txt", "file-404.txt"),
]  # fmt: skip


@pytest.fixture(scope="module")
def excluded(bk):
    context = bk.context(EXCLUDE_FILES)
    os.symlink("file-401.txt", context / "dir4" / "file-402.txt")
    os.symlink("file-404.txt", context / "dir4" / "file-403.txt")
    (context / ".dockerignore").write_text("Dockerfile\n")
    return bk.build(EXCLUDE_DOCKERFILE, context=context).tree()


@pytest.mark.buildkit("testExcludedFilesOnCopy")
@pytest.mark.parametrize(("path", "expected"), EXCLUDE_CASES, ids=[p for p, _ in EXCLUDE_CASES])
def test_exclude(excluded, path, expected):
    node = excluded.get(path)
    if expected is None:
        assert node is None
    else:
        assert (node.target if node.kind == "symlink" else node.data.decode()) == expected


@pytest.mark.buildkit("testExcludedFilesOnCopy")
def test_exclude_everything_leaves_empty_dir(excluded):
    """Several directories into /6 without a trailing "/" (buildah 1.28 refuses that)."""
    assert excluded["builder6/6"].kind == "dir"
    assert not [name for name in excluded if name.startswith("builder6/6/")]


@pytest.mark.buildkit("testCacheMountSourceEscape")
def test_cache_mount_source_through_symlink_fails(bk):
    message = bk.error(
        "FROM busybox AS init\n"
        "RUN --mount=type=cache,id=sourceescape,target=/cache mkdir -p /cache/sel && echo benign > /cache/sel/benign.txt\n"
        "FROM init AS link\nRUN --mount=type=cache,id=sourceescape,target=/cache rm -rf /cache/sel && ln -s /etc /cache/sel\n"
        "FROM link AS victim\nRUN --mount=type=cache,id=sourceescape,source=sel,target=/victim cat /victim/hostname\n"
        "FROM scratch\nCOPY --from=victim /etc/hostname /hostname\n",
        no_cache=True,
    )
    assert "sel" in message


@pytest.mark.buildkit("testWorkdirSourceDateEpochReproducible")
def test_workdir_reproducible_with_source_date_epoch(bk):
    digests = {
        bk.build("FROM alpine\nWORKDIR /mydir\n", source_date_epoch=1234567890, no_cache=True).image.digest
        for _ in range(2)
    }
    assert len(digests) == 1


def test_onbuild_of_image_copying_from_an_unplanned_stage_is_a_clear_error(bk):
    """Not a BuildKit behaviour (not counted): a known difference (docs/dockerfile.md).
    BuildKit (testOnBuildNamedContext) reads base images while it plans and builds
    the stage such a trigger names; imgbuild says what to do (before: a KeyError)."""
    bk.build("FROM busybox\nONBUILD COPY --from=otherstage /testfile /out/foo\n", tags=["bk/onbuild-named:1"])
    message = bk.error(
        "FROM busybox AS otherstage\nRUN echo -n hello > /testfile\nFROM bk/onbuild-named:1 AS inputstage\n"
        "FROM scratch\nCOPY --from=inputstage /out/foo /bar\n"
    )
    assert "--from=otherstage names stage otherstage, which this build does not build" in message


def test_onbuild_of_image_copying_from_a_stage_that_waits_for_it_is_a_clear_error(bk):
    """Not a BuildKit behaviour (not counted). The trigger runs in stage `a` and
    names stage `later`, which copies from `a`: each would wait for the other.
    A stage waits only for stages of an earlier level, so this is an error, not
    a build that hangs."""
    bk.build("FROM busybox\nONBUILD COPY --from=later /later /later\n", tags=["bk/onbuild-later:1"])
    message = bk.error(
        "FROM bk/onbuild-later:1 AS a\nRUN echo a > /a\n"
        "FROM busybox AS later\nCOPY --from=a /a /a\nRUN echo later > /later\n"
    )
    assert "--from=later names stage later, which this build does not build before this one" in message

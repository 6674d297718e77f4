"""Step caching as BuildKit's dockerfile_cache_test.go and testCopyWildcardCache pin it
down: what a rebuild reuses, and what makes it run a step again."""

from __future__ import annotations

import pytest

UNIQUE = (
    "FROM busybox AS s0\nRUN cat /dev/urandom | head -c 100 | sha256sum > unique\n"
    "FROM busybox AS s1\nRUN cat /dev/urandom | head -c 100 | sha256sum > unique2\n"
    "FROM scratch\nCOPY --from=s0 unique /\nCOPY --from=s1 unique2 /\n"
)


@pytest.fixture(scope="module")
def no_cache_runs(bk):
    context = bk.context()
    runs = []
    for options in ({}, {"no_cache": True}, {"no_cache_filter": ["s1"]}):
        tree = bk.build(UNIQUE, context=context, **options).tree()
        runs.append((tree["unique"].data, tree["unique2"].data))
    return runs


@pytest.mark.buildkit("testNoCache")
def test_no_cache_reruns_first_stage(no_cache_runs):
    assert no_cache_runs[0][0] != no_cache_runs[1][0]


@pytest.mark.buildkit("testNoCache")
def test_no_cache_reruns_second_stage(no_cache_runs):
    assert no_cache_runs[0][1] != no_cache_runs[1][1]


@pytest.mark.buildkit("testNoCache")
def test_no_cache_filter_keeps_other_stages(no_cache_runs):
    assert no_cache_runs[2][0] == no_cache_runs[1][0]


@pytest.mark.buildkit("testNoCache")
def test_no_cache_filter_reruns_named_stage(no_cache_runs):
    assert no_cache_runs[2][1] not in (no_cache_runs[0][1], no_cache_runs[1][1])


WILDCARD = (
    "FROM busybox AS base\nCOPY foo* files/\nRUN cat /dev/urandom | head -c 100 | sha256sum > unique\n"
    "COPY bar files/\nFROM scratch\nCOPY --from=base unique /\n"
)


@pytest.fixture(scope="module")
def wildcard_runs(bk):
    context = bk.context({"foo1": "foo1-data", "foo2": "foo2-data", "bar": "bar-data"})
    first = bk.build(WILDCARD, context=context).tree()["unique"].data
    (context / "bar").write_text("bar-data-mod")
    second = bk.build(WILDCARD, context=context).tree()["unique"].data
    (context / "foo2").write_text("foo2-data-mod")
    third = bk.build(WILDCARD, context=context).tree()["unique"].data
    return first, second, third


@pytest.mark.buildkit("testCopyWildcardCache")
def test_later_copy_change_keeps_earlier_steps(wildcard_runs):
    assert wildcard_runs[1] == wildcard_runs[0]


@pytest.mark.buildkit("testCopyWildcardCache")
def test_wildcard_match_change_reruns(wildcard_runs):
    assert wildcard_runs[2] != wildcard_runs[0]


@pytest.mark.buildkit("testWildcardRenameCache")
def test_renamed_wildcard_match_misses_the_cache(bk):
    dockerfile = "FROM alpine\nCOPY file* /files/\nRUN ls /files/file1\n"
    context = bk.context({"file1": "foo"})
    bk.build(dockerfile, context=context)
    (context / "file1").rename(context / "file2")
    assert "RUN ls /files/file1" in bk.error(dockerfile, context=context)


@pytest.mark.buildkit("testDockerfileDirs")
def test_copy_and_run_in_root_workdir(bk):
    bk.build(
        "FROM busybox\nCOPY foo /foo2\nCOPY foo /\nRUN echo -n bar > foo3\nRUN test -f foo\n"
        "RUN cmp -s foo foo2\nRUN cmp -s foo foo3\n",
        {"foo": "bar"},
    )


@pytest.mark.buildkit("testMountRWCache")
def test_rw_bind_from_stage_keyed_by_what_it_mounts(bk):
    """The build stage reruns (its cachebust file changed) but makes the same out/:
    the RUN that mounts out/ read-write is still a cache hit."""
    dockerfile = (
        "from busybox AS build\ncopy cachebust /\nrun mkdir out && echo foo > out/foo\n"
        "from busybox as second\nRUN --mount=from=build,src=out,target=/out,rw touch /out/bar"
        " && cat /dev/urandom | head -c 100 | sha256sum > /unique\n"
        "from scratch\nCOPY --from=second /unique /unique\n"
    )
    context = bk.context({"cachebust": "0"})
    first = bk.build(dockerfile, context=context).tree()["unique"].data
    (context / "cachebust").write_text("1")
    assert bk.build(dockerfile, context=context).tree()["unique"].data == first


@pytest.mark.buildkit("testCacheMountParallel")
def test_nested_cache_mounts_in_parallel_stages(bk):
    dockerfile = (
        "FROM alpine AS b1\nRUN --mount=type=cache,target=/foo/bar --mount=type=cache,target=/foo/bar/baz echo 1\n"
        "FROM alpine AS b2\nRUN --mount=type=cache,target=/foo/bar --mount=type=cache,target=/foo/bar/baz echo 2\n"
        "FROM scratch\nCOPY --from=b1 /etc/passwd p1\nCOPY --from=b2 /etc/passwd p2\n"
    )
    for _ in range(3):
        tree = bk.build(dockerfile, no_cache=True).tree()
        assert tree["p1"].data == tree["p2"].data

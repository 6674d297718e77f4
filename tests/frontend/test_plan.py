"""Stages, dependencies, --target, parallel levels and planning errors."""

from __future__ import annotations

import pytest

from imgbuild.dockerfile import parse, plan, platform_args
from imgbuild.errors import DockerfileError, ExpansionError, PlanError

AMD64 = {"platform": "linux/amd64", "build_platform": "linux/amd64"}

DIAMOND = """\
FROM busybox AS base
RUN true
FROM base AS left
RUN true
FROM base AS right
RUN true
FROM busybox AS other
RUN true
FROM scratch AS final
COPY --from=left /a /a
COPY --from=right /b /b
RUN --mount=type=bind,from=other,target=/o true
"""


def make(text, **options):
    return plan(parse(text), **{**AMD64, **options})


def test_dependencies_and_levels():
    result = make(DIAMOND)
    assert [sorted(s.deps) for s in result.stages] == [[], [0], [0], [], [1, 2, 3]]
    assert [s.base_stage for s in result.stages] == [None, 0, 0, None, None]
    assert result.target == 4
    assert result.needed == [0, 1, 2, 3, 4]
    assert result.levels == [[0, 3], [1, 2], [4]]


def test_target_builds_only_what_it_needs():
    result = make(DIAMOND, target="LEFT")
    assert result.target == 1
    assert result.needed == [0, 1]
    assert result.levels == [[0], [1]]


def test_needed_order_puts_dependencies_first():
    result = make(DIAMOND)
    position = {index: i for i, index in enumerate(result.needed)}
    for index in result.needed:
        for dep in result.stages[index].deps:
            assert position[dep] < position[index]


def test_copy_from_index_image_and_later_stage():
    text = (
        "FROM busybox AS a\nCOPY --from=c /x /x\n"
        "FROM busybox\nCOPY --from=0 /y /y\nCOPY --from=alpine:3 /z /z\n"
        "FROM busybox AS c\n"
    )
    result = make(text)
    assert result.stages[0].deps == {2}
    assert result.stages[1].deps == {0}
    assert result.stages[1].images == ["alpine:3"]
    assert result.needed == [2]  # the default target is the last stage: stage a is not built
    # building a: BuildKit dispatches stages in file order, so a later stage cannot be copied from
    with pytest.raises(PlanError, match='cannot copy from stage "c", it needs to be defined before current stage "a"'):
        make(text, target="a")


def test_mount_from_index_is_a_stage_like_copy_from():
    result = make(
        "FROM busybox\nRUN true\n"
        "FROM busybox\nRUN --mount=type=bind,from=0,target=/m true\n"
        "RUN --mount=type=cache,from=0,target=/c true\n"
    )
    assert result.stages[1].deps == {0}
    assert result.stages[1].images == []
    assert result.needed == [0, 1]
    assert result.source_stage("0") == 0


def test_from_a_later_stage_name_is_an_image():
    result = make("FROM later AS first\nFROM busybox AS later\n")
    assert result.stages[0].base_stage is None and result.stages[0].base == "later"


def test_global_args_in_from_and_platform():
    text = (
        "ARG REGISTRY=localhost:5000\nARG IMAGE=${REGISTRY}/busybox\n"
        "FROM --platform=$TARGETPLATFORM $IMAGE AS one\n"
    )
    result = make(text, build_args={"REGISTRY": "r.example"}, platform="linux/arm64")
    assert result.stages[0].base == "r.example/busybox"
    assert result.stages[0].platform == "linux/arm64"
    assert result.global_args == {"REGISTRY": "r.example", "IMAGE": "r.example/busybox"}
    assert result.stages[0].global_args_used == ["IMAGE", "TARGETPLATFORM"]
    assert result.unused_build_args == []


def test_unused_build_args_warn():
    text = (
        "ARG GLOBAL_UNUSED\nARG BASE=busybox\nFROM $BASE\nARG USED\n"
        "FROM busybox AS other\nARG ELSEWHERE\n"
    )
    result = make(
        text,
        build_args={
            "USED": "1",
            "BASE": "b",
            "GLOBAL_UNUSED": "1",
            "ELSEWHERE": "1",
            "NOWHERE": "1",
            "HTTPS_PROXY": "p",
            "BUILDKIT_INLINE_CACHE": "1",
        },
        target=None,
    )
    # default target is "other": USED and BASE belong to stage 0, which is not built
    assert result.unused_build_args == ["USED", "BASE", "GLOBAL_UNUSED", "NOWHERE"]
    assert any("NOWHERE" in warning for warning in result.warnings)
    first = make(
        text.replace("FROM busybox AS other\nARG ELSEWHERE\n", ""),
        build_args={"USED": "1", "BASE": "busybox"},
    )
    assert first.unused_build_args == []


def test_stage_args_for_the_outline():
    text = (
        "# ARG1 described\nARG ARG1=g\nFROM busybox\n# X the x\nARG X=$Y ARG1\nENV Y=1\nARG Z=$Y\n"
    )
    result = make(text, build_args={"X": "cli"})
    stage = result.stages[0]
    assert [(a.name, a.default, a.value, a.description) for a in stage.args] == [
        ("X", "$Y", "cli", "the x"),
        ("ARG1", None, "g", ""),
        ("Z", "$Y", "1", ""),
    ]
    assert [(a.name, a.value, a.description) for a in result.global_arg_infos] == [
        ("ARG1", "g", "described")
    ]


def test_stage_args_that_need_the_base_image_are_reported_not_fatal():
    result = make('FROM busybox\nARG P="${PATH:?from the base image}"\n')
    (arg,) = result.stages[0].args
    assert arg.value is None and "base image" in arg.problem


@pytest.mark.parametrize(
    "text,options,line,message",
    [
        ("FROM a AS x\nFROM b AS x\n", {}, 2, 'duplicate stage name "x"'),
        (
            "FROM a AS one\nCOPY --from=two /a /a\nFROM b AS two\nCOPY --from=one /b /b\n",
            {},
            4,
            "circular dependency between stages: one -> two -> one",
        ),
        (
            "FROM a AS self\nRUN --mount=from=self,target=/x true\n",
            {},
            2,
            "circular dependency between stages: self -> self",
        ),
        ("FROM a\nCOPY --from=0 /a /a\n", {}, 2, "a stage index must refer to an earlier stage"),
        ("FROM a\nCOPY --from=-1 /a /a\n", {}, 2, "invalid stage index -1"),
        (
            "FROM a\nRUN --mount=from=0,target=/x true\n",
            {},
            2,
            "RUN --mount=from=0: a stage index must refer to an earlier stage",
        ),
        ("FROM a\nRUN --mount=from=-1,target=/x true\n", {}, 2, "invalid stage index -1"),
        ("ARG B\nFROM $B\n", {}, 2, "base name ($B) should not be blank"),
        ('FROM "a\n', {}, 1, "failed to process"),
    ],
)
def test_plan_errors(text, options, line, message):
    with pytest.raises(DockerfileError) as caught:
        make(text, **options)
    assert caught.value.location.line == line
    assert message in caught.value.message


def test_unknown_target():
    with pytest.raises(PlanError) as caught:
        make("FROM a AS build\nFROM b\n", target="deploy")
    assert str(caught.value) == (
        'Dockerfile: target stage "deploy" could not be found; named stages: build'
    )
    with pytest.raises(PlanError) as caught:
        make("FROM a AS build\nFROM b\n", target="bulid")
    assert 'target stage "bulid" could not be found (did you mean build?)' in str(caught.value)


def test_global_arg_errors():
    with pytest.raises(ExpansionError) as caught:
        make('ARG R="${HOST:?set HOST}"\nFROM $R\n')
    assert caught.value.location.line == 1 and "HOST: set HOST" in caught.value.message
    assert (
        make('ARG R="${HOST:?set HOST}"\nFROM $R\n', build_args={"R": "ok"}).stages[0].base == "ok"
    )


def test_platform_args_and_bad_platform():
    assert platform_args("linux/arm/v7", "linux/amd64") == {
        "TARGETPLATFORM": "linux/arm/v7",
        "TARGETOS": "linux",
        "TARGETARCH": "arm",
        "TARGETVARIANT": "v7",
        "BUILDPLATFORM": "linux/amd64",
        "BUILDOS": "linux",
        "BUILDARCH": "amd64",
        "BUILDVARIANT": "",
    }
    with pytest.raises(PlanError, match="invalid platform"):
        make("FROM a\n", platform="amd64")


def test_many_chained_stages_do_not_hit_recursion_limits():
    text = "FROM busybox AS s0\n" + "".join(f"FROM s{i} AS s{i + 1}\n" for i in range(3000))
    result = make(text)
    assert result.needed == list(range(3001))
    assert len(result.levels) == 3001


def test_syntax_errors_in_stages_being_built_are_errors_but_not_elsewhere():
    text = 'FROM busybox AS broken\nENV A="unterminated\nFROM busybox\nRUN true\n'
    assert make(text).needed == [1]  # the broken stage is not built: no error
    with pytest.raises(ExpansionError) as caught:
        make(text, target="broken")
    assert caught.value.location.line == 2
    assert "matching double-quote" in caught.value.message

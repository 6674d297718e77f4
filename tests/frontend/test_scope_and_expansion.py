"""ARG/ENV scoping per stage and which instruction fields are expanded."""

from __future__ import annotations

import pytest

from imgbuild.dockerfile import StageScope, expanded, parse, plan
from imgbuild.errors import ExpansionError

AMD64 = {"platform": "linux/amd64", "build_platform": "linux/amd64"}


def walk(text: str, build_args=None, base_env=(), stage=0):
    """Plan ``text`` and apply every instruction of ``stage`` to a fresh scope.

    Returns the scope and the expanded instructions.
    """
    result = plan(parse(text), build_args=build_args, **AMD64)
    scope = result.scope_for(stage, list(base_env))
    done = [scope.apply(inst) for inst in result.stages[stage].instructions]
    return scope, done


def test_global_args_need_redeclaring():
    scope, _ = walk("ARG G=global\nFROM x\n")
    assert "G" not in scope.env_for_run()
    scope, _ = walk("ARG G=global\nFROM x\nARG G\n")
    assert scope.env_for_run()["G"] == "global"


def test_stage_default_wins_over_global_and_build_arg_over_both():
    text = "ARG V=global\nFROM x\nARG V=stage\n"
    assert walk(text)[0].env_for_run()["V"] == "stage"
    assert walk(text, {"V": "cli"})[0].env_for_run()["V"] == "cli"
    assert walk("ARG V=global\nFROM x\nARG V\n", {"V": "cli"})[0].env_for_run()["V"] == "cli"


def test_declared_without_value_is_unset():
    scope, (arg,) = walk("FROM x\nARG U\n")
    assert "U" not in scope.env_for_run()
    assert scope.is_declared("U") and scope.args_in_scope() == {}
    assert arg.pairs[0].default is None


def test_arg_defaults_see_earlier_names_and_the_env():
    scope, (arg,) = walk("FROM x\nARG A=1 B=${A}2 C=$HOME\n", base_env=["HOME=/root"])
    assert [(p.name, p.default) for p in arg.pairs] == [("A", "1"), ("B", "12"), ("C", "/root")]


def test_env_pairs_see_the_environment_before_the_instruction():
    scope, (_, env) = walk("FROM x\nENV A=1\nENV A=2 B=$A\n")
    assert [(p.key, p.value) for p in env.pairs] == [("A", "2"), ("B", "1")]
    assert scope.image_env() == ["A=2", "B=1"]


def test_env_after_arg_wins_and_arg_after_env_wins_for_run_only():
    scope, _ = walk("FROM x\nARG M=arg\nENV M=env\n")
    assert scope.env_for_run()["M"] == "env"
    scope, _ = walk("FROM x\nENV M=env\nARG M=arg\n")
    assert scope.env_for_run()["M"] == "arg"
    assert scope.image_env() == ["M=env"]  # ARG values are never persisted


def test_base_env_is_kept_and_overridden():
    scope, _ = walk("FROM x\nENV PATH=/opt/bin:$PATH\n", base_env=["PATH=/bin", "LANG=C"])
    assert scope.image_env() == ["PATH=/opt/bin:/bin", "LANG=C"]


def test_predefined_platform_args():
    text = "FROM --platform=$BUILDPLATFORM x\nARG TARGETARCH BUILDOS TARGETVARIANT\n"
    result = plan(parse(text), platform="linux/arm/v7", build_platform="linux/amd64")
    assert result.stages[0].platform == "linux/amd64"
    scope = result.scope_for(0)
    for instruction in result.stages[0].instructions:
        scope.apply(instruction)
    assert scope.args_in_scope() == {"TARGETARCH": "arm", "BUILDOS": "linux", "TARGETVARIANT": "v7"}


def test_proxy_build_args_reach_run_but_not_the_scope():
    scope, _ = walk("FROM x\n", {"HTTP_PROXY": "http://proxy:3128", "https_proxy": "h"})
    # BuildKit gives RUN each proxy value under both spellings
    assert scope.proxy_env() == {
        "HTTP_PROXY": "http://proxy:3128", "http_proxy": "http://proxy:3128", "HTTPS_PROXY": "h", "https_proxy": "h",
    }  # fmt: skip
    assert "HTTP_PROXY" not in scope.env_for_run()
    scope, _ = walk("FROM x\nARG HTTP_PROXY\n", {"HTTP_PROXY": "p"})
    assert scope.env_for_run()["HTTP_PROXY"] == "p" and scope.proxy_env() == {"http_proxy": "p"}


def test_args_used_reports_arg_values_read_by_a_step():
    result = plan(parse("FROM x\nARG A=1 B=2\nENV E=e\nWORKDIR /$A/$E\nRUN echo $B\n"), **AMD64)
    scope = result.scope_for(0)
    arg, env, workdir, run = result.stages[0].instructions
    scope.apply(arg)
    scope.apply(env)
    scope.start_step()
    assert expanded(workdir, scope).path == "/1/e"
    assert scope.args_used() == {"A": "1"}  # E is an ENV value, part of the image config
    scope.start_step()
    assert expanded(run, scope) == run  # RUN's command is left to the shell
    assert scope.args_used() == {}
    assert scope.args_in_scope() == {"A": "1", "B": "2"}  # what a RUN cache key needs


def test_expanded_fields():
    text = (
        "FROM x\n"
        "ARG D=/dst U=1000 P=8080 M=0640 S=SIGTERM T=cache V=/vol\n"
        "COPY --chown=$U:$U --chmod=$M --from=build --exclude=$D src/$P $D/\n"
        "ADD --checksum=sha256:$P --chown=$U a $D\n"
        "EXPOSE $P 9000/udp\n"
        "VOLUME $V ${V}2\n"
        "USER $U\n"
        "WORKDIR $D\n"
        "STOPSIGNAL $S\n"
        "LABEL l=$U\n"
        "RUN --mount=type=$T,target=$D echo $P\n"
        "CMD echo $P\n"
        "HEALTHCHECK CMD echo $P\n"
        "ONBUILD RUN echo $P\n"
        'SHELL ["/bin/sh", "-c", "$P"]\n'
    )
    _, done = walk(text)
    (_, copy, add, expose, volume, user, workdir, stop, label, run, cmd, health, onbuild, shell) = (
        done
    )
    assert (copy.sources, copy.dest, copy.chown, copy.chmod) == (
        ["src/8080"],
        "/dst/",
        "1000:1000",
        "0640",
    )
    assert (copy.from_stage, copy.exclude) == ("build", ["$D"])  # as BuildKit: not expanded
    assert (add.sources, add.dest, add.checksum, add.chown) == (
        ["a"],
        "/dst",
        "sha256:8080",
        "1000",
    )
    assert expose.ports == ["8080", "9000/udp"]
    assert volume.paths == ["/vol", "/vol2"]
    assert (user.user, workdir.path, stop.signal) == ("1000", "/dst", "SIGTERM")
    assert [(p.key, p.value) for p in label.pairs] == [("l", "1000")]
    assert (run.mounts[0].type, run.mounts[0].target, run.mounts[0].readonly) == (
        "cache",
        "/dst",
        False,
    )
    assert run.command == ["echo $P"] and cmd.command == ["echo $P"]
    assert health.test == ["CMD-SHELL", "echo $P"]
    assert onbuild.expression == "RUN echo $P"
    assert shell.shell == ["/bin/sh", "-c", "$P"]


def test_expose_can_expand_into_several_ports():
    _, (_, expose) = walk('FROM x\nARG PORTS="80 443"\nEXPOSE $PORTS\n')
    assert expose.ports == ["80", "443"]


def test_copy_heredocs_expand_without_quote_processing():
    _, (_, copy) = walk("FROM x\nARG N=world\nCOPY <<A <<'B' /d/\n\"hi\" $N \\$N\nA\n$N\nB\n")
    first, second = copy.heredocs
    assert first.content == '"hi" world $N\n'  # quotes stay, \$ is an escaped $
    assert second.content == "$N\n"


def test_from_is_expanded_with_global_args_only():
    result = plan(parse("ARG TAG=1.36\nFROM busybox:$TAG AS a\nARG TAG=stage\nFROM a\n"), **AMD64)
    assert [s.base for s in result.stages] == ["busybox:1.36", "a"]
    scope = result.scope_for(1)
    from_instruction = result.stages[1].from_instruction
    assert expanded(from_instruction, scope).image == "a"


def test_expansion_errors_carry_the_location():
    result = plan(parse("FROM x\nRUN true\nWORKDIR ${NOPE:?set NOPE}\n"), **AMD64)
    scope = result.scope_for(0)
    workdir = result.stages[0].instructions[1]
    with pytest.raises(ExpansionError) as caught:
        expanded(workdir, scope)
    assert str(caught.value).startswith("Dockerfile:3: failed to process")
    assert caught.value.location.line == 3


def test_arg_default_error_is_deferred_when_a_build_arg_overrides():
    scope, (arg,) = walk("FROM x\nARG R=${MISSING:?needed}\n", {"R": "given"})
    assert arg.pairs[0].default == "given"
    with pytest.raises(ExpansionError):
        walk("FROM x\nARG R=${MISSING:?needed}\n")


def test_scope_can_be_built_by_hand():
    scope = StageScope(
        global_args={"G": "g", "UNSET": None},
        build_args={},
        base_env=["A=1"],
        predefined_args={"TARGETOS": "linux"},
        escape="`",
    )
    assert scope.expand("`$A$A") == "$A1"
    assert scope.expand_global("$G-$TARGETOS-$UNSET") == "g-linux-"


# --- bounds on expansion (docs/dockerfile.md, "Limits") ------------------------------


def _doubling(instruction: str, times: int) -> str:
    return "".join(f"{instruction} a=${{a}}${{a}}\n" for _ in range(times))


@pytest.mark.parametrize(
    "text, line",
    [
        # 2**40 characters if nothing stopped it; 2**21 is the first over 1 MiB
        ("FROM x\nENV a=x\n" + _doubling("ENV", 40), 23),
        ("FROM x\nARG a=x\n" + _doubling("ARG", 40), 23),
        ("ARG a=x\n" + _doubling("ARG", 40) + "FROM x\n", 22),
    ],
)
def test_a_doubling_chain_stops_at_the_value_cap(text, line):
    with pytest.raises(ExpansionError) as caught:
        walk(text)
    assert caught.value.location.line == line
    assert "the value of a grows beyond 1 MiB" in str(caught.value)


def test_replace_all_cannot_multiply_a_value_past_the_cap():
    """``${a//?/$a}`` squares the length: stopped while it grows, not after."""
    text = "FROM x\nARG a=" + "x" * 4096 + "\nENV b=${a//?/${a}}\n"
    with pytest.raises(ExpansionError, match="the value of b grows beyond 1 MiB"):
        walk(text)


def test_one_instruction_cannot_expand_a_large_value_many_times():
    big = "x" * 600_000
    text = "FROM x\nARG big\nLABEL " + " ".join(f"k{i}=$big" for i in range(8)) + "\n"
    with pytest.raises(ExpansionError, match="the expansions of this instruction grow beyond 4 MiB") as caught:
        walk(text, {"big": big})
    assert caught.value.location.line == 3


def test_the_variables_of_a_stage_are_bounded_together():
    big = "x" * 900_000
    text = "FROM x\nARG big\n" + "".join(f"ENV c{i}=$big\n" for i in range(5))
    with pytest.raises(ExpansionError, match="the variables of this stage .* grow beyond 4 MiB") as caught:
        walk(text, {"big": big})
    assert caught.value.location.line == 6  # big and c0..c3: 4.5 million characters


def test_values_and_words_under_the_caps_expand():
    big = "x" * 1_000_000
    scope, done = walk("FROM x\nARG big\nENV copy=$big\nLABEL k=$big\n", {"big": big})
    assert scope.env_for_run()["copy"] == big
    assert done[-1].pairs[0].value == big
    # text written in the Dockerfile itself does not count as growth
    literal = "y" * 2_000_000
    assert walk(f"FROM x\nLABEL k={literal}\n")[1][0].pairs[0].value == literal

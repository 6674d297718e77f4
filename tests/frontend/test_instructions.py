"""Typed instructions: fields, flags, and the errors BuildKit gives for bad ones."""

from __future__ import annotations

import pytest

from imgbuild.dockerfile import (
    Add,
    Arg,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    From,
    Healthcheck,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    StopSignal,
    User,
    Volume,
    Workdir,
    parse,
    parse_onbuild_trigger,
)
from imgbuild.dockerfile.instructions import parse_go_duration
from imgbuild.errors import DockerfileError


def only(text: str):
    """The instructions after ``FROM x``."""
    return parse("FROM x\n" + text).instructions[1:]


def one(text: str):
    (instruction,) = only(text)
    return instruction


def error_of(text: str) -> DockerfileError:
    with pytest.raises(DockerfileError) as caught:
        parse(text)
    return caught.value


def test_from():
    first, second = parse(
        "FROM --platform=$BUILDPLATFORM img:1 AS Build\nFROM build\n"
    ).instructions
    assert isinstance(first, From)
    assert (first.image, first.stage_name, first.platform) == ("img:1", "build", "$BUILDPLATFORM")
    assert (second.image, second.stage_name, second.platform) == ("build", None, None)
    assert "FROM requires either one or three" in error_of("FROM a b\n").message
    assert "invalid name for build stage" in error_of("FROM a AS 9x\n").message
    assert "unknown flag: --plat: did you mean platform?" in error_of("FROM --plat=x a\n").message


def test_run_shell_and_exec_form():
    shell_form, exec_form, bare = only('RUN echo "$HOME"\nRUN ["echo", "$HOME"]\nRUN\n')
    assert isinstance(shell_form, Run)
    assert (shell_form.command, shell_form.exec_form) == (['echo "$HOME"'], False)
    assert (exec_form.command, exec_form.exec_form) == (["echo", "$HOME"], True)
    assert (bare.command, bare.exec_form) == ([], False)


def test_run_flags():
    run = one(
        "RUN --network=none --security=sandbox --mount=type=cache,target=/c,id=x,"
        "sharing=locked,mode=0700,uid=1,gid=2 --mount=type=tmpfs,target=/t,size=2m make\n"
    )
    assert (run.network, run.security) == ("none", "sandbox")
    cache, tmpfs = run.mounts
    assert (cache.type, cache.target, cache.id, cache.sharing, cache.readonly) == (
        "cache",
        "/c",
        "x",
        "locked",
        False,
    )
    assert (cache.mode, cache.uid, cache.gid) == (0o700, 1, 2)
    assert (tmpfs.type, tmpfs.size, tmpfs.readonly) == ("tmpfs", 2 * 1024 * 1024, False)


def test_mount_defaults_and_checks():
    bind, secret, ssh = one(
        "RUN --mount=target=/src,from=build --mount=type=secret,id=tok,required "
        "--mount=type=ssh,rw true\n"
    ).mounts
    assert (bind.type, bind.from_, bind.readonly) == ("bind", "build", True)
    assert (secret.type, secret.id, secret.required, secret.readonly) == (
        "secret",
        "tok",
        True,
        True,
    )
    assert (ssh.type, ssh.readonly) == ("ssh", False)
    bad = {
        "RUN --mount=type=nfs,target=/x true": "unsupported mount type",
        "RUN --mount=type=cache,target=/x,colour=red true": "unexpected key 'colour'",
        "RUN --mount=type=bind,target=/x,mode=0755 true": "mode not allowed for 'bind'",
        "RUN --mount=type=bind,target=/x,sharing=locked true": "invalid cache sharing",
        "RUN --mount=type=cache,target=/x,sharing=maybe true": "unsupported sharing value",
        "RUN --mount=type=cache,target=/x,required true": "unexpected key 'required'",
        "RUN --mount=type=secret true": "invalid secret mount",
        "RUN --mount=type=secret,id=a,source=b true": "both source and id",
        "RUN --mount=type=cache,target=/x,uid=-1 true": "invalid value -1 for uid",
        "RUN --mount=type=bind,target=/x,ro=maybe true": "invalid value for ro",
        # \" survives the flag splitting, so the CSV parser sees a bare quote
        'RUN --mount=type=bind,target=/x,source=a\\"b true': 'bare "',
        "RUN --mount=target true": "must be a key=value pair",
        "RUN --mount=type=cache,target=/x,size=1m true": "size not allowed",
        "RUN --network=bridge true": "unsupported network mode",
        "RUN --security=root true": "unsupported security mode",
        "RUN --mount true": "Missing a value on flag: --mount",
    }
    for text, message in bad.items():
        assert message in error_of(f"FROM x\n{text}\n").message, text


def test_mount_values_with_variables_are_checked_after_expansion():
    (mount,) = one("RUN --mount=type=$T,target=$DIR,mode=$M true\n").mounts
    assert mount.needs_expansion and mount.target == "$DIR" and mount.mode is None
    assert (
        "doesn't support variable expansion"
        in error_of("FROM x\nRUN --mount=from=${STAGE},target=/x true\n").message
    )


def test_cmd_entrypoint():
    cmd, entrypoint, empty = only('CMD ["a", "b"]\nENTRYPOINT exec app --flag\nCMD []\n')
    assert isinstance(cmd, Cmd) and isinstance(entrypoint, Entrypoint)
    assert (cmd.command, cmd.exec_form) == (["a", "b"], True)
    assert (entrypoint.command, entrypoint.exec_form) == (["exec app --flag"], False)
    assert (empty.command, empty.exec_form) == ([], True)


def test_copy_and_add_flags():
    copy = one(
        "COPY --from=build --chown=1:2 --chmod=0755 --link --exclude=*.o "
        "--exclude=tmp --parents a b /dest/\n"
    )
    assert isinstance(copy, Copy)
    assert (copy.sources, copy.dest, copy.from_stage) == (["a", "b"], "/dest/", "build")
    assert (copy.chown, copy.chmod, copy.link, copy.parents) == ("1:2", "0755", True, True)
    assert copy.exclude == ["*.o", "tmp"]
    add = one(
        "ADD --checksum=sha256:abc --keep-git-dir=true --unpack=false --link=false "
        "https://example.com/x.tgz /x\n"
    )
    assert isinstance(add, Add)
    assert (add.checksum, add.keep_git_dir, add.unpack, add.link) == (
        "sha256:abc",
        True,
        False,
        False,
    )
    assert add.sources == ["https://example.com/x.tgz"]
    assert "unknown flag: --from (ADD accepts" in error_of("FROM x\nADD --from=a b c\n").message
    assert (
        "Duplicate flag specified: --chown"
        in error_of("FROM x\nCOPY --chown=1 --chown=2 a b\n").message
    )
    assert (
        "Expecting boolean value for flag --link, not: yes"
        in error_of("FROM x\nCOPY --link=yes a b\n").message
    )
    assert "Missing a value on flag: --link" in error_of("FROM x\nCOPY --link= a b\n").message
    assert "Missing a value on flag: --chown" in error_of("FROM x\nCOPY --chown a b\n").message


def test_copy_json_form_keeps_spaces():
    copy = one('COPY ["my file", "other file", "/dest dir/"]\n')
    assert (copy.sources, copy.dest, copy.exec_form) == (
        ["my file", "other file"],
        "/dest dir/",
        True,
    )


def test_copy_heredocs_are_inline_files():
    copy = one("COPY a <<ONE <<-'TWO' /dest/\nhello $X\nONE\n\tno tab\n\tTWO\n")
    assert copy.sources == ["a"]
    assert [(h.name, h.content, h.expand) for h in copy.heredocs] == [
        ("ONE", "hello $X\n", True),
        ("TWO", "no tab\n", False),
    ]
    assert (
        "cannot accept a heredoc as a destination"
        in error_of("FROM x\nCOPY a <<EOF\nx\nEOF\n").message
    )
    assert "requires at least two arguments" in error_of("FROM x\nCOPY a\n").message


def test_copy_from_with_variables_is_rejected_like_buildkit():
    message = error_of("ARG S=a\nFROM x\nCOPY --from=$S /a /b\n").message
    assert message.startswith("variable expansion is not supported for --from")


def test_env_label_arg():
    env, label, arg = only('ENV A=1 B="x y"\nLABEL k v w\nARG N M=1 O=\n')
    assert isinstance(env, Env) and isinstance(label, Label) and isinstance(arg, Arg)
    assert [(p.key, p.value) for p in env.pairs] == [("A", "1"), ("B", '"x y"')]
    assert [(p.key, p.value) for p in label.pairs] == [("k", "v w")]
    assert [(p.name, p.default) for p in arg.pairs] == [("N", None), ("M", "1"), ("O", "")]
    assert "ENV names can not be blank" in error_of("FROM x\nENV =a\n").message
    assert "ARG names can not be blank" in error_of("FROM x\nARG =a\n").message
    assert "ARG requires at least one argument" in error_of("FROM x\nARG\n").message


def test_arg_descriptions_follow_buildkit():
    arg = one("# A the a value\n# nothing about B\n# C  two spaces\nARG A=1 B C\n")
    assert [(p.name, p.description) for p in arg.pairs] == [
        ("A", "the a value"),
        ("B", ""),
        ("C", " two spaces"),
    ]


def test_simple_instructions():
    expose, volume, json_volume, workdir, user, shell, stop, maint = only(
        'EXPOSE 80 53/udp 8000-8010\nVOLUME /a /b\nVOLUME ["/c d"]\nWORKDIR /w x\n'
        'USER app:app\nSHELL ["/bin/bash", "-c"]\nSTOPSIGNAL SIGINT\nMAINTAINER me <m@e>\n'
    )
    assert isinstance(expose, Expose) and expose.ports == ["80", "53/udp", "8000-8010"]
    assert isinstance(volume, Volume) and volume.paths == ["/a", "/b"]
    assert json_volume.paths == ["/c d"] and json_volume.exec_form
    assert isinstance(workdir, Workdir) and workdir.path == "/w x"
    assert isinstance(user, User) and user.user == "app:app"
    assert isinstance(shell, Shell) and shell.shell == ["/bin/bash", "-c"]
    assert isinstance(stop, StopSignal) and stop.signal == "SIGINT"
    assert isinstance(maint, Maintainer) and maint.maintainer == "me <m@e>"
    assert "requires the arguments to be in JSON form" in error_of("FROM x\nSHELL sh -c\n").message
    assert (
        "VOLUME specified can not be an empty string" in error_of('FROM x\nVOLUME [""]\n').message
    )
    assert "EXPOSE requires at least one argument" in error_of("FROM x\nEXPOSE\n").message
    assert "WORKDIR requires exactly one argument" in error_of("FROM x\nWORKDIR\n").message


def test_healthcheck():
    full, exec_form, none = only(
        "HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=0s --start-interval=2s "
        "--retries=3 CMD curl -f http://localhost/\n"
        'HEALTHCHECK CMD ["/bin/check", "arg"]\n'
        "HEALTHCHECK NONE\n"
    )
    assert isinstance(full, Healthcheck)
    assert full.test == ["CMD-SHELL", "curl -f http://localhost/"]
    assert (full.interval, full.timeout, full.start_period, full.start_interval, full.retries) == (
        90 * 10**9,
        500 * 10**6,
        0,
        2 * 10**9,
        3,
    )
    assert exec_form.test == ["CMD", "/bin/check", "arg"] and exec_form.interval is None
    assert none.test is None
    bad = {
        "HEALTHCHECK --interval=10 CMD x": "missing unit",
        "HEALTHCHECK --timeout=1us CMD x": "cannot be less than 1ms",
        "HEALTHCHECK --retries=-1 CMD x": "--retries cannot be negative",
        "HEALTHCHECK --retries=many CMD x": "--retries: invalid value",
        "HEALTHCHECK CONNECT TCP 7000": 'Unknown type "CONNECT"',
        "HEALTHCHECK CMD": "Missing command after HEALTHCHECK CMD",
        "HEALTHCHECK NONE extra": "HEALTHCHECK NONE takes no arguments",
        "HEALTHCHECK": "HEALTHCHECK requires at least one argument",
    }
    for text, message in bad.items():
        assert message in error_of(f"FROM x\n{text}\n").message, text


@pytest.mark.parametrize(
    "text,nanoseconds",
    [
        ("0", 0),
        ("1h", 3600 * 10**9),
        ("1.5s", 1_500_000_000),
        ("2h45m", 9900 * 10**9),
        ("300ms", 300_000_000),
        ("1µs", 1000),
        ("1us", 1000),
        ("-1.5h", -5400 * 10**9),
        (".5m", 30 * 10**9),
    ],
)
def test_go_durations(text, nanoseconds):
    assert parse_go_duration(text) == nanoseconds


@pytest.mark.parametrize("text", ["", "1", "s", "1x", "1.s.", ".s", "9999999999h"])
def test_bad_go_durations(text):
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_onbuild():
    onbuild = one("ONBUILD COPY --chown=1 . /app \\\n  /other\n")
    assert isinstance(onbuild, Onbuild)
    assert onbuild.expression == "COPY --chown=1 . /app   /other"
    assert isinstance(onbuild.trigger, Copy) and onbuild.trigger.chown == "1"
    heredoc = one("ONBUILD RUN <<EOF\necho hi\nEOF\n")
    assert heredoc.expression == "RUN <<EOF\necho hi\nEOF"
    assert heredoc.trigger.heredocs[0].content == "echo hi\n"
    assert "Chaining ONBUILD" in error_of("FROM x\nONBUILD ONBUILD RUN x\n").message
    assert "FROM isn't allowed" in error_of("FROM x\nONBUILD FROM y\n").message
    assert "MAINTAINER isn't allowed" in error_of("FROM x\nONBUILD MAINTAINER y\n").message
    assert "unknown instruction: FOO" in error_of("FROM x\nONBUILD FOO bar\n").message


def test_parse_onbuild_trigger_round_trips_the_expression():
    onbuild = one("ONBUILD RUN <<EOF\necho hi\nEOF\n")
    trigger = parse_onbuild_trigger(onbuild.expression)
    assert isinstance(trigger, Run)
    assert trigger.heredocs[0].content == "echo hi\n"
    assert parse_onbuild_trigger("ADD a\\b /c", escape="`").sources == ["a\\b"]
    with pytest.raises(DockerfileError, match="exactly one instruction"):
        parse_onbuild_trigger("RUN a\nRUN b")
    with pytest.raises(DockerfileError, match="FROM isn't allowed"):
        parse_onbuild_trigger("FROM busybox")


def test_run_inline_scripts():
    script, plain, complex_, none = only(
        "RUN <<EOF\n#!/bin/sh\necho a\nEOF\n"
        "RUN <<-EOF\n\techo b\n\tEOF\n"
        "RUN cat <<A > /a\none\nA\n"
        "RUN echo no heredoc\n"
    )
    assert (script.inline_script().script_name, script.inline_script().script) == (
        "EOF",
        "#!/bin/sh\necho a\n",
    )
    assert plain.inline_script().shell_command == "echo b\n"
    assert complex_.inline_script().shell_command == "cat <<A > /a\none\nA"
    assert none.inline_script() is None


def test_instruction_before_from():
    error = error_of("ARG A\nRUN x\nFROM y\n")
    assert error.location.line == 2
    assert error.message.startswith("no build stage in current context")


def test_unknown_instruction_suggests():
    assert (
        error_of("FROM x\nWORKDR /\n").message
        == "unknown instruction: WORKDR (did you mean WORKDIR?)"
    )
    assert error_of("FROM x\nBLAH\n").message == "unknown instruction: BLAH"


def test_stopsignal_and_healthcheck_none_ignore_flags_like_buildkit():
    stop, health = only("STOPSIGNAL --anything 9\nHEALTHCHECK --interval=bogus NONE\n")
    assert stop.signal == "9" and health.test is None


def test_common_fields():
    (run,) = only("# builds it\nRUN make \\\n  all\n")
    assert (run.line, run.end_line) == (3, 4)
    assert run.source == "RUN make \\\n  all"
    assert run.text == "RUN make   all"
    assert run.comments == ["builds it"]

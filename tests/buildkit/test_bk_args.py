"""ARG, ENV and the image config as BuildKit's dockerfile_args_test.go,
dockerfile_image_test.go, dockerfile_cmd_test.go and dockerfile_core_test.go pin
them down."""

from __future__ import annotations

import datetime

import pytest


def _out(built, path="out"):
    return built.tree()[path].data.decode()


@pytest.mark.buildkit("testMultiArgs")
def test_several_args_per_line(bk):
    dockerfile = (
        'ARG a1="foo bar" a2=box\nARG a3="$a2-foo"\nFROM busy$a2 AS build\n'
        'ARG a3 a4="123 456" a1\nRUN echo -n "$a1:$a3:$a4" > /out\n'
        "FROM scratch\nCOPY --from=build /out .\n"
    )
    assert _out(bk.build(dockerfile)) == "foo bar:box-foo:123 456"


@pytest.mark.buildkit("testQuotedMetaArgs")
def test_quoted_global_args(bk):
    dockerfile = (
        'ARG a1="box"\nARG a2="$a1-foo"\nFROM busy$a1 AS build\nARG a2\nARG a3="bar-$a2"\n'
        "RUN echo -n $a3 > /out\nFROM scratch\nCOPY --from=build /out .\n"
    )
    assert _out(bk.build(dockerfile)) == "bar-box-foo"


@pytest.mark.buildkit("testGlobalArg")
def test_global_arg_in_from_overridden(bk):
    built = bk.build("ARG tag=nosuchtag\nFROM busybox:${tag}\n", build_args={"tag": "latest"})
    assert built.config["Cmd"] == ["sh"]


@pytest.mark.buildkit("testGlobalArg")
def test_global_arg_default_names_a_missing_image(bk):
    assert "nosuchtag" in bk.error("ARG tag=nosuchtag\nFROM busybox:${tag}\n")


@pytest.mark.buildkit("testGlobalArgErrors")
def test_global_arg_required_message(bk):
    assert "FOO: custom error" in bk.error('ARG FOO=${FOO:?"custom error"}\nFROM busybox\n')


@pytest.mark.buildkit("testGlobalArgErrors")
def test_global_arg_required_given(bk):
    bk.build('ARG FOO=${FOO:?"custom error"}\nFROM busybox\n', build_args={"FOO": "bar"})


ARG_DEFAULT = 'FROM scratch\nARG FOO\nARG BAR=${FOO:?"foo missing"}\n'


@pytest.mark.buildkit("testArgDefaultExpansion")
def test_arg_default_required_message(bk):
    assert "FOO: foo missing" in bk.error(ARG_DEFAULT)


@pytest.mark.buildkit("testArgDefaultExpansion")
@pytest.mark.parametrize("given", ["FOO", "BAR"])
def test_arg_default_not_needed_when_given(bk, given):
    bk.build(ARG_DEFAULT, build_args={given: "123"})


BUILTIN = (
    "FROM busybox AS build\nARG FOO\nARG BAR\nARG BAZ=bazcontent\n"
    "RUN echo -n $HTTP_PROXY::$NO_PROXY::$FOO::$BAR::$BAZ > /out\n"
    "FROM scratch\nCOPY --from=build /out /\n"
)


@pytest.fixture(scope="module")
def builtin_outputs(bk):
    context = bk.context()
    runs = [
        {"FOO": "foocontents", "http_proxy": "hpvalue", "NO_PROXY": "npvalue"},
        {"FOO": "foocontents", "http_proxy": "hpvalue2"},
        {"FOO": "foocontents2", "http_proxy": "hpvalue2"},
    ]
    return [_out(bk.build(BUILTIN, context=context, build_args=args)) for args in runs]


@pytest.mark.buildkit("testBuiltinArgs")
def test_proxy_args_reach_run_undeclared(builtin_outputs):
    assert builtin_outputs[0] == "hpvalue::npvalue::foocontents::::bazcontent"


@pytest.mark.buildkit("testBuiltinArgs")
def test_proxy_args_not_in_cache_key(builtin_outputs):
    assert builtin_outputs[1] == "hpvalue::npvalue::foocontents::::bazcontent"


@pytest.mark.buildkit("testBuiltinArgs")
def test_changed_arg_invalidates_cache(builtin_outputs):
    assert builtin_outputs[2] == "hpvalue2::::foocontents2::::bazcontent"


DEFAULT_ENV = (
    "ARG image=idlebox\nFROM busy${image#idle} AS build\nARG my_arg\n"
    'ENV my_arg "my_arg=${my_arg:-def_val}"\nENV my_trimmed_arg "${my_arg%%e*}"\n'
    "COPY myscript.sh myscript.sh\nRUN ./myscript.sh $my_arg $my_trimmed_arg\n"
    "FROM scratch\nCOPY --from=build /out /out\n"
)


@pytest.mark.buildkit("testDefaultEnvWithArgs")
@pytest.mark.parametrize(
    ("value", "expected"),
    [("", "my_arg=def_val my_arg=def_val my_arg=d"), ("override", "my_arg=override my_arg=override my_arg=ov")],
    ids=["empty", "override"],
)
def test_env_from_arg_default(bk, value, expected):
    context = bk.context({"myscript.sh": "#!/bin/sh\necho -n $my_arg $* > /out\n"})
    (context / "myscript.sh").chmod(0o755)
    assert _out(bk.build(DEFAULT_ENV, context=context, build_args={"my_arg": value})) == expected


@pytest.fixture(scope="module")
def empty_arg_env(bk):
    dockerfile = "FROM busybox AS build\nARG FOO\nARG BAR=\nRUN env > env.txt\nFROM scratch\nCOPY --from=build env.txt .\n"
    return _out(bk.build(dockerfile), "env.txt").splitlines()


@pytest.mark.buildkit("testEmptyStringArgInEnv")
def test_empty_arg_is_in_run_env(empty_arg_env):
    assert "BAR=" in empty_arg_env


@pytest.mark.buildkit("testEmptyStringArgInEnv")
def test_unset_arg_is_not_in_run_env(empty_arg_env):
    assert not [line for line in empty_arg_env if line.startswith("FOO=")]


@pytest.mark.buildkit("testEnvEmptyFormatting")
def test_env_percent_kept(bk):
    bk.build("FROM busybox AS build\nENV myenv foo%sbar\nRUN [ \"$myenv\" = 'foo%sbar' ]\n")


TARGET_STAGE = (
    'FROM busybox AS base\nWORKDIR /out\nRUN echo -n "value:$TARGETSTAGE" > /out/first\n'
    'ARG TARGETSTAGE\nRUN echo -n "value:$TARGETSTAGE" > /out/second\n'
    "FROM scratch AS foo\nCOPY --from=base /out/ /\nFROM scratch\nCOPY --from=base /out/ /\n"
)


@pytest.mark.buildkit("testTargetStageNameArg")
@pytest.mark.parametrize(
    ("extra", "target", "expected"),
    [("", "foo", "foo"), ("", None, "default"), ("FROM scratch AS final\nCOPY --from=base /out/ /\n", None, "final")],
    ids=["named-target", "unnamed-target", "named-last-stage"],
)
def test_targetstage_arg(bk, extra, target, expected):
    tree = bk.build(TARGET_STAGE + extra, target=target).tree()
    assert tree["first"].data == b"value:"  # not declared yet: unset
    assert tree["second"].data == f"value:{expected}".encode()


@pytest.mark.buildkit("testExposeExpansion")
def test_expose_expands_to_several_ports(bk):
    built = bk.build('FROM scratch\nARG PORTS="3000 4000/udp"\nEXPOSE $PORTS\nEXPOSE 5000\n')
    assert sorted(built.config["ExposedPorts"]) == ["3000/tcp", "4000/udp", "5000/tcp"]


@pytest.fixture(scope="module")
def labels(bk):
    return bk.build("FROM scratch\nLABEL foo=bar\n", labels={"bar": "baz"}).config["Labels"]


@pytest.mark.buildkit("testLabels")
def test_label_instruction(labels):
    assert labels["foo"] == "bar"


@pytest.mark.buildkit("testLabels")
def test_label_option(labels):
    assert labels["bar"] == "baz"


@pytest.fixture(scope="module")
def scratch_env(bk):
    return bk.build("FROM scratch\nENV foo=bar\n")


SCRATCH_CHECKS = [
    ("os-set", lambda b: bool(b.image.config.get("os")), True),
    ("architecture-set", lambda b: bool(b.image.config.get("architecture")), True),
    ("workdir-set", lambda b: bool(b.config.get("WorkingDir")), True),
    ("rootfs-type-layers", lambda b: b.image.config["rootfs"]["type"], "layers"),
    ("no-diff-ids", lambda b: b.image.config["rootfs"]["diff_ids"], []),
    ("one-history-entry", lambda b: len(b.history), 1),
    ("history-names-env", lambda b: "ENV foo=bar" in b.history[0]["created_by"], True),
    ("history-empty-layer", lambda b: b.history[0].get("empty_layer"), True),
    ("env-kept", lambda b: "foo=bar" in b.config["Env"], True),
]


@pytest.mark.parametrize(
    ("check", "expected"),
    [pytest.param(c, e, id=i, marks=pytest.mark.buildkit("testDockerfileScratchConfig")) for i, c, e in SCRATCH_CHECKS],
)
def test_scratch_config(scratch_env, check, expected):
    assert check(scratch_env) == expected


@pytest.fixture(scope="module")
def shell_entrypoint(bk):
    bk.build('FROM scratch\nCMD ["test"]\n', tags=["bk/cmd-test:1"])
    return bk.build('FROM bk/cmd-test:1\nSHELL ["ls"]\nENTRYPOINT my entrypoint\n').config


@pytest.mark.buildkit("testCmdShell")
def test_entrypoint_uses_shell(shell_entrypoint):
    assert shell_entrypoint["Entrypoint"] == ["ls", "my entrypoint"]


@pytest.mark.buildkit("testCmdShell")
def test_entrypoint_resets_base_cmd(shell_entrypoint):
    assert shell_entrypoint.get("Cmd") is None


@pytest.fixture(scope="module")
def default_shell(bk):
    return bk.build("FROM scratch\nENTRYPOINT foo bar\nCOPY Dockerfile .\n")


@pytest.mark.buildkit("testDefaultShellAndPath")
def test_default_shell_on_linux(default_shell):
    assert default_shell.config["Entrypoint"] == ["/bin/sh", "-c", "foo bar"]


@pytest.mark.buildkit("testDefaultShellAndPath")
def test_default_path_on_scratch(default_shell):
    assert default_shell.config["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


@pytest.mark.buildkit("testDefaultShellAndPath")
def test_one_layer_for_one_copy(default_shell):
    assert len(default_shell.image.layers) == 1


@pytest.mark.buildkit("testIgnoreEntrypoint")
def test_run_ignores_entrypoint(bk):
    bk.build('FROM busybox\nENTRYPOINT ["/nosuchcmd"]\nRUN ["ls"]\n')


@pytest.mark.buildkit("testInvalidJSONCommands")
def test_json_then_text_runs_in_shell(bk):
    """BuildKit >= 1.9: the whole line goes to the shell, which fails on it (Docker 20.10
    ignored the text after the array and ran echo)."""
    assert "this is invalid" in bk.error('FROM busybox\nRUN ["echo", "hello"]this is invalid\n')


@pytest.mark.buildkit("testInvalidJSONCommands")
def test_json_then_text_entrypoint_is_shell_form(bk):
    built = bk.build("FROM busybox\nENTRYPOINT []random string\n")
    assert built.config["Entrypoint"] == ["/bin/sh", "-c", "[]random string"]


@pytest.mark.buildkit("testDockerfileInvalidCommand")
def test_failed_run_names_command_and_status(bk):
    message = bk.error("FROM busybox\nRUN invalidcmd\n")
    assert "RUN invalidcmd" in message and "exited with code 127" in message


@pytest.mark.buildkit("testUserAdditionalGids")
def test_user_additional_gids(bk):
    bk.build(
        "FROM busybox\nRUN echo 'wheel:x:10:root' >> /etc/group\n"
        'SHELL ["/bin/sh", "-euxc"]\n'
        'RUN [ "$(id)" = "uid=0(root) gid=0(root) groups=0(root),10(wheel)" ]\n'
        'USER 1234\nRUN [ "$(id)" = "uid=1234 gid=0(root) groups=0(root)" ]\n'
        'USER 1234:1234\nRUN [ "$(id)" = "uid=1234 gid=1234 groups=1234" ]\n'
        'USER daemon\nRUN [ "$(id)" = "uid=1(daemon) gid=1(daemon) groups=1(daemon)" ]\n'
    )


USER_STEPS = [
    ("root-default", "", "0:0/root:root/0 10:root wheel"),
    ("user-name", "dockerio", "1001:1001/dockerio:dockerio/1001 1002:dockerio supplementary"),
    ("user-uid", "1001", "1001:1001/dockerio:dockerio/1001 1002:dockerio supplementary"),
    ("name-name", "dockerio:dockerio", "1001:1001/dockerio:dockerio/1001:dockerio"),
    ("uid-name", "1001:dockerio", "1001:1001/dockerio:dockerio/1001:dockerio"),
    ("name-gid", "dockerio:1001", "1001:1001/dockerio:dockerio/1001:dockerio"),
    ("uid-gid", "1001:1001", "1001:1001/dockerio:dockerio/1001:dockerio"),
    ("name-supplementary", "dockerio:supplementary", "1001:1002/dockerio:supplementary/1002:supplementary"),
    ("name-supplementary-gid", "dockerio:1002", "1001:1002/dockerio:supplementary/1002:supplementary"),
    ("uid-supplementary", "1001:supplementary", "1001:1002/dockerio:supplementary/1002:supplementary"),
    ("uid-supplementary-gid", "1001:1002", "1001:1002/dockerio:supplementary/1002:supplementary"),
    ("unknown-ids", "1042:1043", "1042:1043/1042:1043/1043:1043"),
]


@pytest.fixture(scope="module")
def user_ids(bk):
    lines = [
        "FROM busybox AS base",
        "RUN mkdir -m 0777 /out && echo 'wheel:x:10:root' >> /etc/group",
        "RUN echo 'dockerio:x:1001:1001::/bin:/bin/false' >> /etc/passwd && echo 'dockerio:x:1001:' >> /etc/group"
        " && echo 'supplementary:x:1002:dockerio' >> /etc/group",
    ]
    for name, user, _ in USER_STEPS:
        lines.append(f"USER {user or 'root'}")
        lines.append(
            'RUN echo -n "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" > /out/' + name
        )
    lines += ["USER daemon", "RUN id -un > /out/daemonuser", "FROM scratch", "COPY --from=base /out /", "USER nobody"]
    return bk.build("\n".join(lines) + "\n")


@pytest.mark.buildkit("testUser")
@pytest.mark.parametrize(("name", "expected"), [(n, e) for n, _, e in USER_STEPS], ids=[n for n, _, _ in USER_STEPS])
def test_user_ids(user_ids, name, expected):
    assert user_ids.tree()[name].data.decode() == expected


@pytest.mark.buildkit("testUser")
def test_user_name_in_run(user_ids):
    assert user_ids.tree()["daemonuser"].data == b"daemon\n"


@pytest.mark.buildkit("testUser")
def test_user_in_config(user_ids):
    assert user_ids.config["User"] == "nobody"


# --- SOURCE_DATE_EPOCH (dockerfile_source_date_epoch_test.go) --------------------------------

EPOCH = 1_700_000_000
EPOCH_TEXT = "2023-11-14T22:13:20Z"


@pytest.fixture(scope="module")
def epoch_from_build_arg(bk):
    return bk.build("FROM scratch\nENTRYPOINT foo bar\nCOPY Dockerfile .\n", build_args={"SOURCE_DATE_EPOCH": str(EPOCH)})


@pytest.mark.buildkit("testSourceDateEpochWithoutExporter")
def test_epoch_build_arg_sets_created(epoch_from_build_arg):
    assert epoch_from_build_arg.image.config["created"] == EPOCH_TEXT


@pytest.mark.buildkit("testSourceDateEpochWithoutExporter")
def test_epoch_build_arg_sets_history_times(epoch_from_build_arg):
    assert {entry["created"] for entry in epoch_from_build_arg.history} == {EPOCH_TEXT}


def _is_now(created: str) -> bool:
    """A ``created`` time within a minute of now: no epoch was applied."""
    when = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    return abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60


GLOBAL_EPOCH = f"ARG SOURCE_DATE_EPOCH={EPOCH}\nFROM scratch\nCOPY Dockerfile .\n"


@pytest.mark.buildkit("testSourceDateEpochDockerfileDefault")
def test_epoch_global_arg_default(bk):
    assert bk.build(GLOBAL_EPOCH).image.config["created"] == EPOCH_TEXT


@pytest.mark.buildkit("testSourceDateEpochDockerfileDefaultOverride")
def test_epoch_build_arg_overrides_default(bk):
    built = bk.build(GLOBAL_EPOCH, build_args={"SOURCE_DATE_EPOCH": str(EPOCH + 3600)})
    assert built.image.config["created"] == "2023-11-14T23:13:20Z"


@pytest.mark.buildkit("testSourceDateEpochDockerfileDefaultReset")
def test_epoch_empty_build_arg_resets_default(bk):
    built = bk.build(GLOBAL_EPOCH, build_args={"SOURCE_DATE_EPOCH": ""})
    assert _is_now(built.image.config["created"])


@pytest.mark.buildkit("testSourceDateEpochDockerfileDefaultInvalid")
def test_epoch_invalid_default(bk):
    message = bk.error("ARG SOURCE_DATE_EPOCH=not-a-timestamp\nFROM scratch\nCOPY Dockerfile .\n")
    assert "invalid SOURCE_DATE_EPOCH: not-a-timestamp" in message


@pytest.mark.buildkit("testSourceDateEpochContextLocalUnset")
def test_epoch_from_local_context_is_unset(bk):
    built = bk.build("FROM scratch\nCOPY Dockerfile .\n", build_args={"SOURCE_DATE_EPOCH": "context"})
    assert _is_now(built.image.config["created"])

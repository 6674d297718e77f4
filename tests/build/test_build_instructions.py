"""Every Dockerfile instruction, checked in the image it builds: config and file tree."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.root

NANOSECONDS = 1_000_000_000
# The runtime creates these mount points when an image lacks them, and, as in
# BuildKit (moby/buildkit#3455), they stay in the RUN's layer as empty dirs.
RUNTIME_MOUNT_POINTS = {"proc", "sys", "dev"}


# --- FROM ---------------------------------------------------------------------------


def test_from_scratch_has_only_what_was_copied(build_df):
    built = build_df("FROM scratch\nCOPY a.txt /a.txt\n", {"a.txt": "alpha\n"})
    tree = built.tree()
    assert set(tree) == {"a.txt"}
    node = tree["a.txt"]
    assert (node.kind, node.mode, node.uid, node.gid, node.data) == (
        "file",
        0o644,
        0,
        0,
        b"alpha\n",
    )
    assert built.config["Env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    ]
    assert len(built.image.layers) == 1


def test_from_image_keeps_base_layers_and_config(build_df, shared_store):
    base = shared_store.load_image("busybox:latest")
    built = build_df("FROM busybox\nRUN echo hi > /from-image\n")
    assert built.image.diff_ids[:1] == base.diff_ids
    assert len(built.image.layers) == 2
    assert built.config["Cmd"] == ["sh"]
    assert built.tree()["from-image"].data == b"hi\n"
    assert built.tree()["bin/busybox"].kind == "file"


def test_from_pinned_digest_uses_the_local_image(build_df, shared_store):
    """A digest names immutable content: a store that has it needs no registry (port 1 has none)."""
    digest = shared_store.resolve("busybox:latest").digest
    for pull in (False, True):
        built = build_df(
            f"FROM 127.0.0.1:1/library/busybox@{digest}\nRUN echo pinned > /pinned\n", pull=pull
        )
        assert built.tree()["pinned"].data == b"pinned\n"
        assert built.image.diff_ids[0] == shared_store.load_image("busybox:latest").diff_ids[0]


def test_from_stage_continues_that_stage(build_df):
    built = build_df(
        "FROM busybox AS one\nRUN echo one > /one\nENV FROM_ONE=1\nFROM one\nRUN cat /one > /two\n"
    )
    tree = built.tree()
    assert tree["one"].data == b"one\n"
    assert tree["two"].data == b"one\n"
    assert "FROM_ONE=1" in built.config["Env"]


def test_from_platform_flag_and_target_platform(build_df):
    built = build_df(
        "FROM --platform=$BUILDPLATFORM busybox AS tools\nRUN echo built > /tool\n"
        "FROM scratch\nARG TARGETPLATFORM\nCOPY --from=tools /tool /tool\n",
        platform="linux/arm64",
    )
    assert built.image.config["architecture"] == "arm64"
    assert built.image.config["os"] == "linux"
    assert built.tree()["tool"].data == b"built\n"


def test_base_image_of_another_platform_is_an_error(build_df):
    """busybox here is linux/amd64 only: an arm64 build must not label its layers arm64."""
    from imgbuild.errors import ImgbuildError

    for dockerfile, options in (
        ("FROM busybox\nRUN true\n", {"platform": "linux/arm64"}),
        ("FROM --platform=linux/arm64 busybox\nRUN true\n", {}),
    ):
        with pytest.raises(ImgbuildError) as caught:
            build_df(dockerfile, **options)
        assert "linux/arm64" in str(caught.value) and "linux/amd64" in str(caught.value)
        assert "Dockerfile:1" in str(caught.value)


# --- RUN ----------------------------------------------------------------------------


def test_run_shell_form_and_exec_form(build_df):
    built = build_df(
        "FROM busybox\n"
        "RUN echo shell $HOME > /shell-form\n"
        'RUN ["/bin/sh", "-c", "echo exec $0 > /exec-form", "zero"]\n'
        'RUN ["touch", "/$HOME-not-expanded"]\n'
    )
    tree = built.tree()
    assert tree["shell-form"].data == b"shell /root\n"
    assert tree["exec-form"].data == b"exec zero\n"
    assert "$HOME-not-expanded" in tree
    created = [h["created_by"] for h in built.history if "RUN" in h["created_by"]]
    assert created[0] == "RUN /bin/sh -c echo shell $HOME > /shell-form # imgbuild"


def test_run_heredocs(build_df):
    dockerfile = (
        "FROM busybox\n"
        "ENV WHO=env-value\n"
        "RUN <<EOF\n"
        "echo one > /h-plain\n"
        "echo two >> /h-plain\n"
        "EOF\n"
        "RUN <<EOF\n"
        "#!/bin/sh\n"
        'echo "script $0" > /h-shebang\n'
        "EOF\n"
        "RUN <<-EOT\n"
        "\techo tabs stripped > /h-dash\n"
        "\tEOT\n"
        "RUN cat <<'EOF' > /h-quoted\n"
        "$WHO\n"
        "EOF\n"
        "RUN cat <<EOF > /h-unquoted\n"
        "$WHO\n"
        "EOF\n"
        "RUN cat <<A > /h-two && cat <<B >> /h-two\n"
        "first\n"
        "A\n"
        "second\n"
        "B\n"
    )
    tree = build_df(dockerfile).tree()
    assert tree["h-plain"].data == b"one\ntwo\n"
    assert tree["h-shebang"].data == b"script /dev/pipes/EOF\n"
    assert tree["h-dash"].data == b"tabs stripped\n"
    assert tree["h-quoted"].data == b"$WHO\n"
    assert tree["h-unquoted"].data == b"env-value\n"
    assert tree["h-two"].data == b"first\nsecond\n"
    assert not any(name.startswith("dev/") for name in tree)


def test_run_network_none_has_only_loopback(build_df):
    built = build_df(
        "FROM busybox\nRUN --network=none ls /sys/class/net > /net-none\n"
        "RUN ls /sys/class/net > /net-host\n"
    )
    tree = built.tree()
    assert tree["net-none"].data.split() == [b"lo"]
    assert len(tree["net-host"].data.split()) > 1  # the host's interfaces


def test_run_network_default_is_the_build_network(build_df):
    dockerfile = "FROM busybox\nRUN --network=default ls /sys/class/net > /net-default\n"
    assert build_df(dockerfile, network="none").tree()["net-default"].data.split() == [b"lo"]
    assert len(build_df(dockerfile).tree()["net-default"].data.split()) > 1


def test_run_environment_hostname_and_etc_files_never_in_layer(build_df, layer_names):
    built = build_df(
        "FROM busybox\n"
        "RUN cat /etc/hosts > /seen-hosts && cat /etc/resolv.conf > /seen-resolv "
        "&& cat /etc/hostname > /seen-hostname && hostname > /seen-uname\n"
    )
    tree = built.tree()
    assert b"localhost" in tree["seen-hosts"].data
    assert tree["seen-hostname"].data.strip() == tree["seen-uname"].data.strip() != b""
    assert "seen-resolv" in tree
    assert layer_names(built.store, built.image.layers[-1]) - RUNTIME_MOUNT_POINTS == {
        "seen-hosts",
        "seen-resolv",
        "seen-hostname",
        "seen-uname",
    }


def test_etc_files_on_an_image_without_etc(build_df):
    built = build_df(
        "FROM scratch\nCOPY --chmod=755 busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "sh", "-c", '
        '"/bin/busybox cat /etc/hosts /etc/resolv.conf /etc/hostname > /seen"]\n',
        {"busybox": open("/usr/bin/busybox", "rb").read()},
    )
    tree = built.tree()
    assert b"localhost" in tree["seen"].data
    assert not any(name == "etc" or name.startswith("etc/") for name in tree)
    assert set(tree) - RUNTIME_MOUNT_POINTS == {"bin", "bin/busybox", "seen"}
    assert all(tree[name].kind == "dir" for name in RUNTIME_MOUNT_POINTS & set(tree))


def test_run_that_changes_nothing_adds_no_layer(build_df, layer_names):
    """The first RUN on this base may leave the mount points; the next ones change nothing."""
    built = build_df("FROM busybox\nRUN true\nRUN true\nRUN echo x > /x && rm /x\n")
    runs = [h for h in built.history if h["created_by"].startswith("RUN")]
    assert [h.get("empty_layer", False) for h in runs[1:]] == [True, True]
    assert len(built.image.layers) == 1 + sum(not h.get("empty_layer") for h in built.history[1:])
    for layer in built.image.layers[1:]:
        assert layer_names(built.store, layer) <= RUNTIME_MOUNT_POINTS


# --- CMD and ENTRYPOINT --------------------------------------------------------------


def test_cmd_exec_and_shell_form(build_df):
    assert build_df('FROM busybox\nCMD ["echo", "a b"]\n').config["Cmd"] == ["echo", "a b"]
    assert build_df("FROM busybox\nCMD echo $HOME\n").config["Cmd"] == [
        "/bin/sh",
        "-c",
        "echo $HOME",
    ]


def test_entrypoint_resets_base_cmd(build_df):
    config = build_df('FROM busybox\nENTRYPOINT ["/bin/echo"]\n').config
    assert config["Entrypoint"] == ["/bin/echo"]
    assert config.get("Cmd") is None


def test_entrypoint_keeps_cmd_of_same_stage(build_df):
    config = build_df('FROM busybox\nCMD ["world"]\nENTRYPOINT ["/bin/echo", "hello"]\n').config
    assert config["Entrypoint"] == ["/bin/echo", "hello"]
    assert config["Cmd"] == ["world"]


def test_entrypoint_shell_form(build_df):
    config = build_df("FROM busybox\nENTRYPOINT exec echo hi\n").config
    assert config["Entrypoint"] == ["/bin/sh", "-c", "exec echo hi"]


# --- ENV and ARG -----------------------------------------------------------------


def test_env_both_forms_persisted_and_seen_by_run(build_df):
    built = build_df(
        'FROM busybox\nENV A=1 B="two words"\nENV C legacy form value\nENV D=${A}-$B\n'
        'RUN echo "$A|$B|$C|$D" > /env-seen\n'
    )
    env = built.config["Env"]
    assert {"A=1", "B=two words", "C=legacy form value", "D=1-two words"} <= set(env)
    assert built.tree()["env-seen"].data == b"1|two words|legacy form value|1-two words\n"


def test_arg_not_persisted_but_seen_by_run(build_df):
    built = build_df('FROM busybox\nARG COLOR=blue\nARG SIZE\nRUN echo "$COLOR/$SIZE" > /args\n')
    assert built.tree()["args"].data == b"blue/\n"
    assert not any(entry.startswith(("COLOR=", "SIZE=")) for entry in built.config["Env"])
    run = [h["created_by"] for h in built.history if h["created_by"].startswith("RUN")][0]
    # as BuildKit: only args with a value are listed
    assert run.startswith('RUN |1 COLOR=blue /bin/sh -c echo "$COLOR/$SIZE"')


def test_build_arg_overrides_default(build_df):
    built = build_df(
        'FROM busybox\nARG COLOR=blue\nRUN echo "$COLOR" > /args\n', build_args={"COLOR": "red"}
    )
    assert built.tree()["args"].data == b"red\n"


def test_global_arg_in_from(build_df, shared_store):
    shared_store.tag("busybox:global-arg", shared_store.resolve("busybox:latest"))
    built = build_df(
        "ARG BASE=nothing:here\nFROM ${BASE}\nARG BASE\nRUN echo $BASE > /base\n",
        build_args={"BASE": "busybox:global-arg"},
    )
    assert built.tree()["base"].data == b"busybox:global-arg\n"


# --- WORKDIR and USER -----------------------------------------------------------------


def test_workdir_created_relative_and_owned_by_user(build_df):
    built = build_df(
        "FROM busybox\nWORKDIR /a\nWORKDIR b\nRUN pwd > /pwd\n"
        "USER app\nWORKDIR /owned/deep\nRUN pwd > /tmp/pwd2\n"
    )
    tree = built.tree()
    assert built.config["WorkingDir"] == "/owned/deep"
    assert tree["pwd"].data == b"/a/b\n"
    assert tree["tmp/pwd2"].data == b"/owned/deep\n"
    assert (tree["a"].kind, tree["a"].uid, tree["a/b"].mode) == ("dir", 0, 0o755)
    assert (tree["owned"].uid, tree["owned"].gid) == (1000, 1000)
    assert (tree["owned/deep"].uid, tree["owned/deep"].gid) == (1000, 1000)


@pytest.mark.parametrize("workdir", ["/a/b", "/a", "/link/b"])
def test_workdir_through_a_file_is_a_located_error(build_df, workdir):
    """Was a NotADirectoryError traceback (or, for /a itself, a file as WorkingDir)."""
    from imgbuild.errors import BuildError

    with pytest.raises(BuildError) as caught:
        build_df(f"FROM busybox\nRUN touch /a && ln -s /a /link\nWORKDIR {workdir}\n")
    message = str(caught.value)
    assert caught.value.location.line == 3
    assert f"WORKDIR {workdir}: /a is not a directory (it is a regular file)" in message


def test_workdir_through_a_file_on_the_command_line(store, tmp_path, imgbuild_cli, no_traceback):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN touch /a\nWORKDIR /a/b\n")
    completed = imgbuild_cli(store.root, str(tmp_path))
    no_traceback(completed)
    assert completed.returncode == 1
    assert "Dockerfile:3: WORKDIR /a/b: /a is not a directory" in completed.stderr


def test_user_by_name_and_by_ids(build_df):
    built = build_df(
        "FROM busybox\nUSER app\nRUN id > /tmp/id-name\nUSER 1234:50\nRUN id > /tmp/id-num\n"
        "USER root\nRUN id -u > /id-root\n"
    )
    tree = built.tree()
    by_name = tree["tmp/id-name"].data.decode()
    assert "uid=1000(app) gid=1000(app)" in by_name and "50(staff)" in by_name
    assert tree["tmp/id-name"].uid == 1000
    assert "uid=1234 gid=50(staff)" in tree["tmp/id-num"].data.decode()
    assert (tree["tmp/id-num"].uid, tree["tmp/id-num"].gid) == (1234, 50)
    assert tree["id-root"].data == b"0\n"
    assert built.config["User"] == "root"


# --- metadata instructions ---------------------------------------------------------------


def test_expose_volume_label_stopsignal_maintainer(build_df):
    built = build_df(
        "FROM busybox\nEXPOSE 80 53/udp 8000-8002\nEXPOSE 443/TCP\n"
        'VOLUME ["/data", "/logs"]\nVOLUME /cache\n'
        'LABEL a=1 "b c"="two words"\nLABEL a=override\n'
        "STOPSIGNAL SIGKILL\nMAINTAINER Jane Doe <jane@example.com>\n",
        labels={"from-cli": "yes", "b c": "cli wins"},
    )
    config = built.config
    assert config["ExposedPorts"] == {
        "80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}, "8002/tcp": {}, "443/tcp": {}
    }  # fmt: skip
    assert config["Volumes"] == {"/data": {}, "/logs": {}, "/cache": {}}
    assert config["Labels"] == {"a": "override", "b c": "cli wins", "from-cli": "yes"}
    assert config["StopSignal"] == "SIGKILL"
    assert built.image.config["author"] == "Jane Doe <jane@example.com>"
    assert len(built.image.layers) == 1
    assert all(h.get("empty_layer") for h in built.history[1:])


def test_shell_changes_shell_form_run_cmd_entrypoint(build_df):
    built = build_df(
        "FROM busybox\n"
        'RUN printf \'#!/bin/sh\\necho "wrapped $*" >> /shell.log\\nexec /bin/sh "$@"\\n\' > /wrap'
        " && chmod 755 /wrap\n"
        'SHELL ["/wrap", "-c"]\n'
        "RUN echo inner > /inner\n"
        "CMD run me\n"
        "ENTRYPOINT enter here\n"
    )
    tree = built.tree()
    assert tree["shell.log"].data == b"wrapped -c echo inner > /inner\n"
    assert tree["inner"].data == b"inner\n"
    assert built.config["Shell"] == ["/wrap", "-c"]
    assert built.config["Entrypoint"] == ["/wrap", "-c", "enter here"]
    assert built.config["Cmd"] == ["/wrap", "-c", "run me"]


def test_healthcheck_durations_in_nanoseconds(build_df):
    config = build_df(
        "FROM busybox\nHEALTHCHECK --interval=30s --timeout=1m30s --start-period=500ms "
        "--start-interval=2s --retries=4 CMD wget -q localhost\n"
    ).config
    assert config["Healthcheck"] == {
        "Test": ["CMD-SHELL", "wget -q localhost"],
        "Interval": 30 * NANOSECONDS,
        "Timeout": 90 * NANOSECONDS,
        "StartPeriod": NANOSECONDS // 2,
        "StartInterval": 2 * NANOSECONDS,
        "Retries": 4,
    }
    exec_form = build_df('FROM busybox\nHEALTHCHECK CMD ["true"]\n').config["Healthcheck"]
    assert exec_form == {"Test": ["CMD", "true"]}
    none = build_df('FROM busybox\nHEALTHCHECK CMD ["true"]\nHEALTHCHECK NONE\n').config[
        "Healthcheck"
    ]
    assert none == {"Test": ["NONE"]}


def test_onbuild_recorded_run_once_and_not_inherited(build_df, shared_store):
    parent = build_df(
        "FROM busybox\nONBUILD RUN echo triggered >> /onbuild\nONBUILD ENV FROM_TRIGGER=1\n",
        tags=["onbuild-parent:1"],
    )
    assert parent.config["OnBuild"] == ["RUN echo triggered >> /onbuild", "ENV FROM_TRIGGER=1"]
    assert "onbuild" not in parent.tree()
    child = build_df("FROM onbuild-parent:1\nRUN echo child > /child\n", tags=["onbuild-child:1"])
    assert child.tree()["onbuild"].data == b"triggered\n"
    assert "FROM_TRIGGER=1" in child.config["Env"]
    assert not child.config.get("OnBuild")
    grandchild = build_df("FROM onbuild-child:1\nRUN echo grandchild > /grandchild\n")
    assert grandchild.tree()["onbuild"].data == b"triggered\n"


# --- corners -------------------------------------------------------------------------------


def test_whiteouts_and_opaque_directories_from_run(build_df, layer_names):
    built = build_df(
        "FROM busybox\nRUN mkdir -p /d/keep && echo old > /d/old && echo a > /f1 && echo b > /f2\n"
        "RUN rm /f1 && rm -rf /d && mkdir /d && echo new > /d/new && chmod 600 /f2\n"
    )
    tree = built.tree()
    assert "f1" not in tree
    assert sorted(n for n in tree if n.startswith("d/")) == ["d/new"]
    assert (tree["f2"].mode, tree["f2"].data) == (0o600, b"b\n")
    names = layer_names(built.store, built.image.layers[-1])
    assert ".wh.f1" in names and "d/.wh..wh..opq" in names


def test_hardlinks_made_by_run(build_df):
    tree = build_df("FROM busybox\nRUN echo linked > /one && ln /one /two\n").tree()
    assert tree["one"].data == tree["two"].data == b"linked\n"


def test_copy_ignores_user_but_workdir_follows_it(build_df):
    tree = build_df(
        "FROM busybox\nUSER app\nCOPY a.txt /made-by-copy/\nWORKDIR /made-by-workdir\n",
        {"a.txt": "a\n"},
    ).tree()
    assert (tree["made-by-copy"].uid, tree["made-by-copy/a.txt"].uid) == (0, 0)
    assert tree["made-by-workdir"].uid == 1000


def test_copy_through_a_symlinked_directory(build_df):
    tree = build_df(
        "FROM busybox\nRUN mkdir /real && ln -s /real /link\nCOPY a.txt /link/\n", {"a.txt": "a\n"}
    ).tree()
    assert tree["link"].kind == "symlink"
    assert tree["real/a.txt"].data == b"a\n"


def test_global_arg_needs_redeclaring_in_the_stage(build_df):
    tree = build_df(
        'ARG OUTER=outer\nFROM busybox\nRUN echo "[$OUTER]" > /not-declared\n'
        'ARG OUTER\nRUN echo "[$OUTER]" > /declared\nARG FROM_ARG=x\nENV PERSISTED=$FROM_ARG\n'
    ).tree()
    assert tree["not-declared"].data == b"[]\n"
    assert tree["declared"].data == b"[outer]\n"


def test_platform_args(build_df):
    built = build_df(
        "FROM busybox\nARG TARGETARCH\nARG TARGETPLATFORM\n"
        "RUN echo $TARGETPLATFORM $TARGETARCH > /p\n"
    )
    assert built.tree()["p"].data == b"linux/amd64 amd64\n"


def test_proxy_build_args_reach_run_but_not_history_or_key(build_df, store):
    dockerfile = 'FROM busybox\nRUN echo "$HTTP_PROXY" > /proxy\n'
    first = build_df(dockerfile, store=store, build_args={"HTTP_PROXY": "http://127.0.0.1:9"})
    assert first.tree()["proxy"].data == b"http://127.0.0.1:9\n"
    assert not any("127.0.0.1:9" in h["created_by"] for h in first.history)
    assert not any(entry.startswith("HTTP_PROXY") for entry in first.config["Env"])
    second = build_df(
        dockerfile,
        context=first.context,
        store=store,
        build_args={"HTTP_PROXY": "http://127.0.0.1:8"},
    )
    assert second.result.steps_run == 0


def test_unknown_user_for_run_is_an_error(build_df):
    from imgbuild.errors import ImgbuildError

    with pytest.raises(ImgbuildError) as caught:
        build_df("FROM busybox\nUSER nosuchuser\nRUN true\n")
    assert "nosuchuser" in str(caught.value)
    assert "Dockerfile:3" in str(caught.value)


def test_onbuild_copy_reads_the_child_context(build_df):
    build_df("FROM busybox\nONBUILD COPY app.txt /app/\n", tags=["onbuild-copy:1"])
    built = build_df("FROM onbuild-copy:1\n", {"app.txt": "from the child\n"})
    assert built.tree()["app/app.txt"].data == b"from the child\n"


def test_stage_names_are_case_insensitive(build_df):
    tree = build_df(
        "FROM busybox AS Builder\nRUN echo x > /x\nFROM scratch\nCOPY --from=BUILDER /x /x\n"
    ).tree()
    assert tree["x"].data == b"x\n"


def test_dockerignore_may_exclude_the_dockerfile(build_df):
    tree = build_df(
        "FROM scratch\nCOPY . /ctx/\n", {".dockerignore": "Dockerfile\n.dockerignore\n", "a": "a\n"}
    ).tree()
    assert sorted(tree) == ["ctx", "ctx/a"]

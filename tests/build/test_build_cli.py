"""``imgbuild [build]`` as users and CI run it: exit codes, messages, progress, stdin, digests."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest
from imagetools import make_busybox_image, read_terminal

from imgbuild.store import Store

pytestmark = pytest.mark.root


@pytest.fixture
def context(tmp_path, write_files):
    """A build context directory; tests write their Dockerfile into it."""
    directory = tmp_path / "ctx"
    directory.mkdir()
    write_files(directory, {"data.txt": "data\n"})
    return directory


# --- exit codes and messages ---------------------------------------------------------------


def test_failing_run_exits_1_with_line_command_status_and_output(
    store, context, imgbuild_cli, no_traceback
):
    (context / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN echo fine > /fine\n"
        "RUN for i in 1 2 3 4 5; do echo output-line-$i; done; echo to-stderr >&2; exit 3\n"
    )
    completed = imgbuild_cli(store.root, "--progress", "plain", "-t", "fails:1", str(context))
    assert completed.returncode == 1
    no_traceback(completed)
    error = completed.stderr[completed.stderr.index("error:") :]
    assert "Dockerfile:3:" in error
    assert "echo output-line-$i" in error
    assert "exited with code 3" in error
    assert "output-line-5" in error and "to-stderr" in error


@pytest.mark.parametrize(
    "dockerfile, line",
    [
        ("FROM busybox\nBOGUS instruction\n", 2),
        ("FROM busybox\nRUN true\nCOPY --nosuchflag=1 a b\n", 3),
        ("FROM busybox\nCOPY --from=7 /x /y\n", 2),
        ("FROM busybox AS a\nRUN true\nCOPY --from=a /x /y\n", 3),
        ("RUN true\n", 1),
    ],
)
def test_bad_dockerfile_exits_2_with_location(
    store, context, imgbuild_cli, no_traceback, dockerfile, line
):
    (context / "Dockerfile").write_text(dockerfile)
    completed = imgbuild_cli(store.root, str(context))
    no_traceback(completed)
    assert completed.returncode == 2
    assert f"Dockerfile:{line}:" in completed.stderr


def test_usage_errors_exit_2(store, context, imgbuild_cli, no_traceback, tmp_path):
    (context / "Dockerfile").write_text("FROM busybox\n")
    for args in (
        ["--output", "type=nonsense", str(context)],
        ["--secret", "src=/nowhere", str(context)],
        [str(tmp_path / "no-such-context")],
        ["--progress", "fancy", str(context)],
        ["--push", str(context)],
        ["--jobs", "-1", str(context)],
    ):
        completed = imgbuild_cli(store.root, *args)
        assert completed.returncode == 2, (args, completed.stderr)
        no_traceback(completed)
        assert completed.stderr.startswith("error:") or "error:" in completed.stderr


def test_unreadable_dockerfile_is_an_error(store, context, imgbuild_cli, no_traceback):
    for flags in (["-f", str(context / "missing")], ["-f", str(context)]):
        completed = imgbuild_cli(store.root, *flags, str(context))
        no_traceback(completed)
        assert completed.returncode in (1, 2), completed.stderr
        assert str(context) in completed.stderr


def test_missing_copy_source_is_a_located_error(store, context, imgbuild_cli, no_traceback):
    (context / "Dockerfile").write_text("FROM busybox\nCOPY missing.txt /\n")
    completed = imgbuild_cli(store.root, str(context))
    assert completed.returncode == 1
    no_traceback(completed)
    assert "Dockerfile:2:" in completed.stderr and "missing.txt" in completed.stderr


# --- stdin Dockerfile, default verb -------------------------------------------------------------


def test_dockerfile_from_stdin_and_default_verb_equal_build(store, context, imgbuild_cli):
    dockerfile = "FROM busybox\nCOPY data.txt /data.txt\nRUN cat /data.txt > /copy\n"
    (context / "Dockerfile").write_text(dockerfile)
    epoch = {"SOURCE_DATE_EPOCH": "1700000000"}
    explicit = imgbuild_cli(store.root, "build", "-q", "-t", "verb:1", str(context), env=epoch)
    assert explicit.returncode == 0, explicit.stderr
    (context / "Dockerfile").unlink()
    (context / "Other.Dockerfile").write_text(dockerfile)
    implicit = imgbuild_cli(
        store.root, "-q", "-f", "Other.Dockerfile", "-t", "verb:2", ".", cwd=context, env=epoch
    )
    assert implicit.returncode == 0, implicit.stderr
    from_stdin = imgbuild_cli(
        store.root,
        "build",
        "-q",
        "-f",
        "-",
        "-t",
        "verb:3",
        str(context),
        input=dockerfile,
        env=epoch,
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    digests = {explicit.stdout.strip(), implicit.stdout.strip(), from_stdin.stdout.strip()}
    assert len(digests) == 1 and digests.pop().startswith("sha256:")
    names = {Store(store.root).resolve(f"verb:{n}").digest for n in (1, 2, 3)}
    assert len(names) == 1


def test_quiet_iidfile_and_metadata_name_the_same_image_id(store, context, imgbuild_cli, tmp_path):
    """-q printed the manifest digest while --iidfile held the config digest; both are the image ID."""
    (context / "Dockerfile").write_text("FROM busybox\nCOPY data.txt /\n")
    iidfile, metadata_file = tmp_path / "iid", tmp_path / "metadata.json"
    completed = imgbuild_cli(
        store.root, "-q", "-t", "iid:1", "--iidfile", str(iidfile), "--metadata-file", str(metadata_file),
        str(context),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    image = Store(store.root).load_image("iid:1")
    image_id = image.config_descriptor.digest
    assert completed.stdout == image_id + "\n"
    assert iidfile.read_text() == image_id
    metadata = json.loads(metadata_file.read_text())
    assert metadata["containerimage.config.digest"] == image_id
    assert metadata["containerimage.digest"] == image.digest != image_id


# --- progress ----------------------------------------------------------------------------------


def test_progress_plain(store, context, imgbuild_cli):
    (context / "Dockerfile").write_text(
        "FROM busybox\nRUN echo plain-output-line\nCOPY data.txt /\n"
    )
    completed = imgbuild_cli(store.root, "--progress", "plain", "-t", "plain:1", str(context))
    assert completed.returncode == 0, completed.stderr
    lines = completed.stderr.splitlines()
    assert "#1 [1/2] RUN echo plain-output-line" in lines
    assert "#1 plain-output-line" in lines
    assert any(line.startswith("#1 DONE ") for line in lines)
    assert "#2 [2/2] COPY data.txt /" in lines
    image = Store(store.root).load_image("plain:1")
    assert f"image ID {image.config_descriptor.digest}" in lines
    assert any(line.startswith(f"  digest {image.digest}, size ") for line in lines)
    again = imgbuild_cli(store.root, "--progress", "plain", "-t", "plain:1", str(context))
    assert "#1 CACHED" in again.stderr.splitlines()
    assert "steps: 2 cached, 0 run" in again.stderr


def test_progress_json(store, context, imgbuild_cli):
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo json-output\nCOPY data.txt /\n")
    completed = imgbuild_cli(store.root, "--progress", "json", "-t", "json:1", str(context))
    assert completed.returncode == 0, completed.stderr
    events = [
        json.loads(line) for line in completed.stderr.splitlines()
    ]  # every line is one object
    kinds = [event["event"] for event in events]
    assert kinds.count("step_started") == 2 and kinds.count("step_done") == 2
    assert kinds[-1] == "build_finished"
    assert any(e["event"] == "step_output" and "json-output" in e["output"] for e in events)
    finished = events[-1]
    assert finished["image"] == Store(store.root).resolve("json:1").digest
    assert (finished["cached"], finished["run"]) == (0, 2)


def _run_on_a_terminal(args: list[str], env: dict) -> tuple[int, str]:
    """Run the CLI with its stdout and stderr on a pseudo-terminal; its exit code and output."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    output = read_terminal(leader)
    return process.wait(timeout=60), output.decode("utf-8", "replace")


def test_ci_variable_makes_auto_progress_plain_on_a_terminal(store, context, cli_env):
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo on-a-terminal\n")
    args = [sys.executable, "-m", "imgbuild", "--root", str(store.root), "--no-cache", str(context)]
    code, output = _run_on_a_terminal(args, cli_env({"CI": "1"}))
    assert code == 0, output
    assert "#1 [1/1] RUN echo on-a-terminal" in output
    code, output = _run_on_a_terminal(args, cli_env())
    assert code == 0, output
    assert "#1 [1/1]" not in output  # the live display instead
    assert "[1/1] RUN echo on-a-terminal" in output


# --- reproducible builds -------------------------------------------------------------------------


def test_source_date_epoch_gives_the_same_digest_in_two_stores(tmp_path, context, imgbuild_cli):
    (context / "Dockerfile").write_text(
        "FROM busybox\nENV A=1\nCOPY data.txt /data.txt\n"
        "RUN echo $A > /a && mkdir -p /var/made && touch /var/made/x\n"
        'WORKDIR /w\nCMD ["cat", "/a"]\n'
    )
    digests = []
    for name in ("one", "two"):
        root = tmp_path / name
        make_busybox_image(Store(root), "busybox:latest")
        completed = imgbuild_cli(
            root, "-q", "-t", "repro:1", str(context), env={"SOURCE_DATE_EPOCH": "1234567890"}
        )
        assert completed.returncode == 0, completed.stderr
        digests.append(completed.stdout.strip())
    assert digests[0] == digests[1]
    config = Store(tmp_path / "one").load_image("repro:1").config
    assert config["created"] == "2009-02-13T23:31:30Z"


def test_missing_base_image_is_a_located_error(
    store, context, imgbuild_cli, no_traceback, registry
):
    (context / "Dockerfile").write_text(f"FROM {registry.host}/no/such-image:1\nRUN true\n")
    completed = imgbuild_cli(store.root, str(context))
    assert completed.returncode == 1
    no_traceback(completed)
    assert "Dockerfile:1:" in completed.stderr and "no/such-image" in completed.stderr


def test_unwritable_result_paths_are_errors_not_tracebacks(
    store, context, imgbuild_cli, no_traceback, tmp_path
):
    (context / "Dockerfile").write_text("FROM busybox\nCOPY data.txt /\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    for flags in (
        ["--iidfile", f"{blocker}/iid"],
        ["--metadata-file", f"{blocker}/metadata.json"],
        ["--output", f"type=local,dest={blocker}/rootfs"],
        ["--output", f"type=oci,dest={blocker}/image.tar"],
        ["--output", f"type=oci,dest={blocker}/layout,tar=false"],
        ["--output", f"type=docker,dest={blocker}/image.tar"],
    ):
        completed = imgbuild_cli(store.root, *flags, str(context))
        no_traceback(completed)
        assert completed.returncode == 1, (flags, completed.stderr)
        assert f"{blocker}/" in completed.stderr

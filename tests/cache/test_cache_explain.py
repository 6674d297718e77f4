"""Why a step missed: ``--progress json|plain`` and ``--explain``, after real builds.

Each test builds a context, makes one kind of change, builds again and checks
the exact sentence the progress gives for each step that ran (JSON ``miss``
field of ``step_started``; ``#N miss: ...`` in plain; the list after the
build with ``--explain``).
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from imagetools import read_terminal

pytestmark = pytest.mark.root

DOCKERFILE = """\
FROM busybox
ARG VERSION=1.2
ENV MODE=fast
COPY src /app/src
RUN echo $VERSION $MODE > /tmp/version
WORKDIR /work
"""

COPY = "COPY src /app/src"
RUN = "RUN echo $VERSION $MODE > /tmp/version"
WORKDIR = "WORKDIR /work"

FILES = {
    "Dockerfile": DOCKERFILE,
    "src/app.py": "print('hello')\n",
    "src/old.txt": "to be removed\n",
    "docs/x.md": "not copied\n",
}


def misses(cli, root: Path, context: Path, *args: str) -> dict[str, str]:
    """Each step's instruction -> why it missed, or "CACHED", from the JSON progress."""
    completed = cli(root, "build", "--progress", "json", *args, str(context))
    result = {}
    for line in completed.stderr.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event["event"] == "step_started":
            result[event["instruction"]] = event.get("miss")
        elif event["event"] == "step_cached":
            assert "miss" not in event
            result[event["instruction"]] = "CACHED"
    return result


@pytest.fixture
def project(root, tmp_path, cli, write_context):
    """A store and a context built once; returns (root, context)."""
    context = write_context(tmp_path / "ctx", FILES)
    first = misses(cli, root, context)
    assert first == {COPY: "no earlier build of this step", RUN: "parent step missed", WORKDIR: "parent step missed"}
    return root, context


def test_a_fully_cached_build_explains_nothing(project, cli):
    root, context = project
    assert misses(cli, root, context) == {COPY: "CACHED", RUN: "CACHED", WORKDIR: "CACHED"}


def test_files_changed_added_and_removed(project, cli):
    root, context = project
    (context / "src/app.py").write_text("print('changed')\n")
    (context / "src/new.py").write_text("new\n")
    (context / "src/old.txt").unlink()
    (context / "docs/x.md").write_text("not read by any step\n")
    assert misses(cli, root, context) == {
        COPY: "3 files changed (src/app.py content, src/new.py added, src/old.txt removed)",
        RUN: "parent step missed",
        WORKDIR: "parent step missed",
    }


def test_each_kind_of_file_change_alone(project, cli):
    root, context = project
    (context / "src/app.py").write_text("print('changed')\n")
    assert misses(cli, root, context)[COPY] == "1 file changed (src/app.py content)"
    (context / "src/new.py").write_text("new\n")
    assert misses(cli, root, context)[COPY] == "1 file changed (src/new.py added)"
    (context / "src/old.txt").unlink()
    assert misses(cli, root, context)[COPY] == "1 file changed (src/old.txt removed)"
    (context / "src/app.py").chmod(0o755)
    assert misses(cli, root, context)[COPY] == "1 file changed (src/app.py mode 0644 → 0755)"


def test_a_new_directory_is_named_by_its_files(project, cli):
    root, context = project
    (context / "src/lib").mkdir()
    (context / "src/lib/util.py").write_text("X = 1\n")
    assert misses(cli, root, context)[COPY] == "1 file changed (src/lib/util.py added)"


def test_at_most_five_files_are_named(project, cli):
    root, context = project
    for number in range(8):
        (context / f"src/f{number}.txt").write_text(f"{number}\n")
    assert misses(cli, root, context)[COPY] == (
        "8 files changed (src/f0.txt added, src/f1.txt added, src/f2.txt added, src/f3.txt added, "
        "src/f4.txt added, and 3 more)"
    )


def test_build_arg_used_by_run(project, cli):
    root, context = project
    assert misses(cli, root, context, "--build-arg", "VERSION=1.3") == {
        COPY: "CACHED",
        RUN: "build arg VERSION changed 1.2 → 1.3",
        WORKDIR: "parent step missed",
    }


def test_env_value(project, cli):
    root, context = project
    (context / "Dockerfile").write_text(DOCKERFILE.replace("MODE=fast", "MODE=slow"))
    assert misses(cli, root, context) == {COPY: "CACHED", RUN: "ENV MODE changed fast → slow", WORKDIR: "parent step missed"}


def test_instruction_text(project, cli):
    root, context = project
    (context / "Dockerfile").write_text(DOCKERFILE.replace("> /tmp/version", "> /tmp/v"))
    assert misses(cli, root, context)["RUN echo $VERSION $MODE > /tmp/v"] == (
        "instruction changed: RUN echo $VERSION $MODE > /tmp/version → RUN echo $VERSION $MODE > /tmp/v"
    )


def test_a_value_expanded_into_the_instruction(project, cli):
    root, context = project
    dockerfile = DOCKERFILE.replace("COPY src /app/src", "COPY src /app/$VERSION")
    (context / "Dockerfile").write_text(dockerfile)
    assert misses(cli, root, context)["COPY src /app/$VERSION"] == (
        "instruction changed: COPY src /app/src → COPY src /app/$VERSION"
    )
    assert misses(cli, root, context, "--build-arg", "VERSION=2")["COPY src /app/$VERSION"] == (
        "destination changed /app/1.2 → /app/2"
    )


def test_user_workdir_and_shell(project, cli):
    root, context = project
    dockerfile = DOCKERFILE.replace("RUN echo", "USER nobody\nRUN echo")
    (context / "Dockerfile").write_text(dockerfile)
    assert misses(cli, root, context)[RUN] == 'USER changed "" → nobody'
    (context / "Dockerfile").write_text(DOCKERFILE.replace("RUN echo", "WORKDIR /app\nRUN echo"))
    steps = misses(cli, root, context)
    assert steps["WORKDIR /app"] == f"instruction changed: {RUN} → WORKDIR /app"
    (context / "Dockerfile").write_text(DOCKERFILE.replace("RUN echo", 'SHELL ["/bin/sh", "-ec"]\nRUN echo'))
    assert misses(cli, root, context)[RUN] == 'SHELL changed ["/bin/sh","-c"] → ["/bin/sh","-ec"]'


def test_network(project, cli):
    root, context = project
    assert misses(cli, root, context, "--network", "none")[RUN] == "network changed host → none"


def test_no_cache(project, cli):
    root, context = project
    assert set(misses(cli, root, context, "--no-cache").values()) == {"--no-cache"}


def test_no_cache_filter_names_the_stage(root, tmp_path, cli, write_context):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": "FROM busybox AS one\nRUN echo 1 > /one\n\nFROM busybox AS two\nRUN echo 2 > /two\n",
    })
    misses(cli, root, context, "--target", "one")
    assert misses(cli, root, context, "--target", "one", "--no-cache-filter", "one") == {
        "RUN echo 1 > /one": "--no-cache-filter one"
    }


def test_base_image_layers(root, tmp_path, cli, write_context):
    base = write_context(tmp_path / "base", {"Dockerfile": "FROM busybox\nRUN echo 1 > /base\n"})
    cli(root, "build", "--progress", "plain", "-t", "base:test", str(base))
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM base:test\nRUN echo app > /app\n", "f": "x"})
    assert misses(cli, root, context) == {"RUN echo app > /app": "no earlier build of this step"}
    # the base's config alone (a label): same layers, every step still hits
    (base / "Dockerfile").write_text("FROM busybox\nRUN echo 1 > /base\nLABEL a=b\n")
    cli(root, "build", "--progress", "plain", "-t", "base:test", str(base))
    assert misses(cli, root, context) == {"RUN echo app > /app": "CACHED"}
    (base / "Dockerfile").write_text("FROM busybox\nRUN echo 2 > /base\n")
    cli(root, "build", "--progress", "plain", "-t", "base:test", str(base))
    assert misses(cli, root, context) == {"RUN echo app > /app": "FROM base:test: base image layers changed"}


def test_bind_mount_sources(root, tmp_path, cli, write_context):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": "FROM busybox\nRUN --mount=type=bind,source=conf,target=/conf cat /conf/a > /a\n",
        "conf/a": "1\n",
    })
    step = "RUN --mount=type=bind,source=conf,target=/conf cat /conf/a > /a"
    misses(cli, root, context)
    (context / "conf/a").write_text("2\n")
    assert misses(cli, root, context) == {step: "bind mount of conf: 1 file changed (conf/a content)"}


def test_copy_from_a_stage(root, tmp_path, cli, write_context):
    dockerfile = "FROM busybox AS build\nCOPY v /v\n\nFROM busybox\nCOPY --from=build /v /v\n"
    context = write_context(tmp_path / "ctx", {"Dockerfile": dockerfile, "v": "1\n"})
    misses(cli, root, context)
    (context / "v").write_text("2\n")
    assert misses(cli, root, context) == {"COPY v /v": "1 file changed (v content)", "COPY --from=build /v /v": "files of /v in build changed"}


def test_two_projects_with_a_dockerfile_each_are_not_compared(root, tmp_path, cli, write_context):
    """Both are "Dockerfile" in stage 0: the Dockerfile's path tells their steps apart."""
    one = write_context(tmp_path / "one", {"Dockerfile": "FROM busybox\nRUN echo one > /x\n"})
    two = write_context(tmp_path / "two", {"Dockerfile": "FROM busybox\nRUN echo two > /x\n"})
    misses(cli, root, one)
    assert misses(cli, root, two) == {"RUN echo two > /x": "no earlier build of this step"}


def test_entries_that_kept_no_inputs_say_so(project, cli):
    root, context = project
    with sqlite3.connect(root / "index.db") as db:  # as an older imgbuild left them
        db.execute("UPDATE cache SET inputs = NULL, dockerfile = NULL, stage_index = NULL, parent_entry = NULL")
    (context / "src/app.py").write_text("print('changed')\n")
    assert misses(cli, root, context)[COPY] == (
        "the earlier build of this step kept no inputs (recorded by an older imgbuild): what changed cannot be told"
    )


def test_plain_progress_and_explain(project, cli):
    root, context = project
    completed = cli(root, "build", "--progress", "plain", "--explain", "--build-arg", "VERSION=2", str(context))
    lines = completed.stderr.splitlines()
    assert "#1 CACHED" in lines
    run_at = lines.index(f"#2 [2/3] {RUN}")
    assert lines[run_at + 1] == "#2 miss: build arg VERSION changed 1.2 → 2"
    assert "#3 miss: parent step missed" in lines
    listed = lines.index("why steps missed the cache:")
    assert lines[listed + 1 : listed + 3] == [
        f"  [2/3] {RUN}: build arg VERSION changed 1.2 → 2",
        f"  [3/3] {WORKDIR}: parent step missed",
    ]
    cached = cli(root, "build", "--progress", "plain", "--explain", "--build-arg", "VERSION=2", str(context))
    assert "every step was cached" in cached.stderr.splitlines()
    assert "miss:" not in cached.stderr


def test_secrets_never_appear(root, tmp_path, cli, write_context):
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-value-1\n")
    dockerfile = "FROM busybox\nARG V=1\nRUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null; echo $V\n"
    context = write_context(tmp_path / "ctx", {"Dockerfile": dockerfile})
    step = "RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null; echo $V"
    misses(cli, root, context, "--secret", f"id=tok,src={secret}")
    secret.write_text("s3cr3t-value-2\n")
    completed = cli(root, "build", "--progress", "json", "--secret", f"id=tok,src={secret}", "--build-arg", "V=2", str(context))
    assert "s3cr3t" not in completed.stderr
    assert json.loads([line for line in completed.stderr.splitlines() if "step_started" in line][0])["miss"] == (
        "build arg V changed 1 → 2"
    )
    assert step in completed.stderr


def test_explain_on_a_terminal(project):
    """The live display on a pty (progress auto): the reasons after the build, no traceback."""
    import os
    import pty
    import subprocess
    import sys

    root, context = project
    leader, follower = pty.openpty()
    env = dict(os.environ, COLUMNS="200", TERM="xterm", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    env.pop("CI", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "imgbuild", "--root", str(root), "build", "--explain",
         "--build-arg", "VERSION=7", str(context)],
        stdout=subprocess.DEVNULL, stderr=follower, env=env,
    )
    os.close(follower)
    output = read_terminal(leader)
    assert process.wait(timeout=120) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode())  # colours, cursor moves
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines()]
    assert "miss: build arg VERSION changed 1.2 → 7" in lines  # live, under its step
    assert "why steps missed the cache:" in lines
    assert f"[2/3] {RUN}: build arg VERSION changed 1.2 → 7" in lines
    assert f"[3/3] {WORKDIR}: parent step missed" in lines
    assert "Traceback" not in output.decode()


def test_a_stored_document_of_another_shape_never_fails_the_build(project, cli):
    root, context = project
    odd = {"format": 1, "document": {"step": "RUN", "env": 5}, "dockerfile_path": str(context / "Dockerfile")}
    with sqlite3.connect(root / "index.db") as db:  # hand-edited, or from a shared cache
        db.execute("UPDATE cache SET inputs = ? WHERE instruction LIKE 'RUN%'", (json.dumps(odd),))
    assert misses(cli, root, context, "--build-arg", "VERSION=9")[RUN] == (
        "the earlier build's inputs are not in a shape imgbuild reads: what changed cannot be told"
    )

"""``imgbuild cache ls|inspect|tree`` against the store's real state, read as JSON."""

from __future__ import annotations

import hashlib
import json

import pytest
from imagetools import read_terminal

pytestmark = pytest.mark.root

DOCKERFILE = """\
FROM busybox AS base
ARG VERSION=1.0
LABEL rev=abc
COPY src /app/src
RUN echo built $VERSION > /app/version && rm /app/src/old.txt

FROM base AS final
WORKDIR /work
RUN --mount=type=bind,source=conf,target=/conf cat /conf/a > /work/a
"""

FILES = {
    "Dockerfile": DOCKERFILE,
    "src/app.py": "print('hello')\n",
    "src/old.txt": "to be deleted\n",
    "src/lib/util.py": "X = 1\n" * 100,
    "conf/a": "config a\n",
}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def built(root, tmp_path, build, write_context):
    context = write_context(tmp_path / "ctx", FILES)
    finished = build(root, context, "-t", "app:1")
    assert (finished["cached"], finished["run"]) == (0, 4)
    return root, context


def _by_instruction(entries: list[dict]) -> dict[str, dict]:
    return {entry["instruction"].split()[0] + ":" + str(entry["line"]): entry for entry in entries}


def test_ls_has_one_row_per_layer_step_with_where_it_stood(built, ls):
    root, _ = built
    entries = ls(root)
    rows = _by_instruction(entries)
    assert sorted(rows) == ["COPY:4", "RUN:5", "RUN:9", "WORKDIR:8"]
    copy = rows["COPY:4"]
    assert copy["instruction"] == "COPY src /app/src"
    assert (copy["stage_index"], copy["stage_name"], copy["dockerfile"]) == (0, "base", "Dockerfile")
    assert rows["RUN:9"]["stage_name"] == "final"
    assert all(entry["in_image"] for entry in entries)
    assert all(entry["hits"] == 0 and entry["has_inputs"] for entry in entries)
    assert copy["layer_size"] > 0 and copy["layer_digest"].startswith("sha256:")
    assert copy["short_key"] == copy["key"].removeprefix("sha256:")[:12]


def test_ls_counts_hits_and_sees_images_go(built, build, ls, cli):
    root, context = built
    assert build(root, context, "-t", "app:1")["cached"] == 4
    assert {entry["hits"] for entry in ls(root)} == {1}
    cli(root, "rmi", "app:1")
    assert not any(entry["in_image"] for entry in ls(root))
    assert ls(root, "--filter", "in-image=false") == ls(root)
    assert ls(root, "--filter", "in-image=true") == []


def test_ls_filters(built, ls, cli):
    root, _ = built
    assert {e["line"] for e in ls(root, "--filter", "stage=final")} == {8, 9}
    assert {e["line"] for e in ls(root, "--filter", "stage=0")} == {4, 5}
    assert [e["line"] for e in ls(root, "--filter", "instruction=copy")] == [4]
    key = ls(root, "--filter", "instruction=copy")[0]["key"]
    assert [e["key"] for e in ls(root, "--filter", "key=" + key[7:19])] == [key]
    refused = cli(root, "cache", "ls", "--filter", "colour=red", check=False)
    assert refused.returncode == 2 and "colour=red" in refused.stderr and "Traceback" not in refused.stderr


def test_table_output_shows_the_same_rows(built, ls, cli):
    root, _ = built
    table = cli(root, "cache", "ls").stdout.splitlines()
    assert table[0].split()[:4] == ["KEY", "STAGE", "LINE", "INSTRUCTION"]
    assert sorted(line.split()[0] for line in table[1:]) == sorted(e["short_key"] for e in ls(root))


def test_inspect_shows_every_input_and_the_files_read(built, ls, inspect_key):
    root, _ = built
    copy = _by_instruction(ls(root))["COPY:4"]
    facts = inspect_key(root, copy["short_key"])
    inputs = facts["inputs"]
    assert inputs["key"] == copy["key"]
    assert inputs["parent"] == copy["parent_key"]
    assert inputs["document"]["step"] == "COPY"
    assert inputs["sees"]["args"] == [["VERSION", "1.0"]]
    (listing,) = facts["file_lists"].values()
    files = {f["path"]: f for f in listing["files"]}
    assert files["src/app.py"] == {
        "path": "src/app.py", "type": "file", "mode": "0644", "size": 15, "sha256": _sha256(FILES["src/app.py"])
    }
    assert files["src/lib"]["type"] == "dir"
    assert files["src/lib/util.py"]["size"] == 600
    written = {f["path"]: f for f in facts["layer"]["changes"]["written"]}
    assert written["/app/src/lib/util.py"] == {
        "path": "/app/src/lib/util.py", "type": "file", "size": 600, "change": "added"
    }
    assert facts["layer"]["changes"]["below_known"] and facts["layer"]["changes"]["deleted"] == []


def test_inspect_shows_what_a_run_deleted_and_its_env(built, ls, inspect_key):
    root, _ = built
    run = _by_instruction(ls(root))["RUN:5"]
    facts = inspect_key(root, run["key"])
    changes = facts["layer"]["changes"]
    assert changes["deleted"] == ["/app/src/old.txt"]
    change = {f["path"]: f["change"] for f in changes["written"]}
    # /app and /app/src come from the COPY below (changed: a file went), /app/version is new
    assert (change["/app"], change["/app/src"], change["/app/version"]) == ("changed", "changed", "added")
    assert (changes["counts"]["added"], changes["counts"]["changed"]) == (
        list(change.values()).count("added"), list(change.values()).count("changed")
    )
    assert ["VERSION", "1.0"] in facts["inputs"]["document"]["env"]
    assert facts["entry"]["parent_entry"] == _by_instruction(ls(root))["COPY:4"]["key"]


def test_inspect_lists_the_files_of_a_bind_mount(built, ls, inspect_key):
    root, _ = built
    facts = inspect_key(root, _by_instruction(ls(root))["RUN:9"]["key"])
    (listing,) = facts["file_lists"].values()
    assert [f["path"] for f in listing["files"]] == ["conf", "conf/a"]
    assert listing["files"][1]["sha256"] == _sha256(FILES["conf/a"])


def test_inspect_refuses_unknown_and_ambiguous_keys(built, cli):
    root, _ = built
    missing = cli(root, "cache", "inspect", "ffffffffffff", check=False)
    assert missing.returncode == 1 and "no cache entry" in missing.stderr and "Traceback" not in missing.stderr
    short = cli(root, "cache", "inspect", "ab", check=False)
    assert short.returncode == 2 and "too short" in short.stderr


def test_a_file_list_is_stored_once_for_two_entries(root, tmp_path, build, inspect_key, ls, write_context):
    """Two Dockerfiles copying the same files: two entries, one stored list (by digest)."""
    context = write_context(tmp_path / "ctx", {"src/a": "a\n", "Dockerfile": "FROM busybox\nCOPY src /s\n"})
    (tmp_path / "ctx" / "Other").write_text("FROM busybox\nRUN true\nCOPY src /s\n")
    build(root, context)
    build(root, context, "-f", str(context / "Other"))
    copies = [e for e in ls(root) if e["instruction"] == "COPY src /s"]
    assert len(copies) == 2 and copies[0]["key"] != copies[1]["key"]
    lists = [inspect_key(root, e["key"])["file_lists"] for e in copies]
    assert lists[0] == lists[1] and len(lists[0]) == 1
    assert {e["dockerfile"] for e in copies} == {"Dockerfile", str(context / "Other")}


def test_a_file_list_goes_with_the_last_entry_that_names_it(root, tmp_path, build, ls, inspect_key, cli, write_context):
    import sqlite3

    context = write_context(tmp_path / "ctx", {"src/a": "a\n", "Dockerfile": "FROM busybox\nCOPY src /s\n"})
    # the same files to another place: another layer, the same source digest
    (tmp_path / "ctx" / "Other").write_text("FROM busybox\nRUN true\nCOPY src /t\n")
    build(root, context, "-t", "one:1")
    build(root, context, "-f", str(context / "Other"), "-t", "two:1")

    def lists() -> int:
        with sqlite3.connect(root / "index.db") as db:
            return db.execute("SELECT count(*) FROM file_lists").fetchone()[0]

    assert lists() == 1
    cli(root, "rmi", "two:1")
    cli(root, "cache", "prune")  # two:1's entries go; one:1's COPY stays, and the list it shares
    assert [e["instruction"] for e in ls(root)] == ["COPY src /s"] and lists() == 1
    (listing,) = inspect_key(root, ls(root)[0]["key"])["file_lists"].values()
    assert [f["path"] for f in listing["files"]] == ["src", "src/a"]
    cli(root, "cache", "prune", "--all")
    assert ls(root) == [] and lists() == 0


def test_tree_links_each_entry_to_the_one_below(built, ls, tree):
    root, _ = built
    rows = _by_instruction(ls(root))
    (chain,) = tree(root)
    assert chain["base"] == rows["COPY:4"]["base_digest"]
    path = []
    nodes = chain["children"]
    while nodes:
        (node,) = nodes
        path.append(node["instruction"].split()[0] + ":" + str(node["line"]))
        nodes = node["children"]
    assert path == ["COPY:4", "RUN:5", "WORKDIR:8", "RUN:9"]


def test_tree_of_an_image_leaves_other_chains_out(built, build, tree, write_context, tmp_path):
    root, _ = built
    other = write_context(tmp_path / "other", {"Dockerfile": "FROM busybox\nRUN echo other > /o\n"})
    build(root, other, "-t", "other:1")
    assert len(tree(root)[0]["children"]) == 2  # two chains on busybox
    (chain,) = tree(root, "other:1")
    (node,) = chain["children"]
    assert node["instruction"] == "RUN echo other > /o" and node["children"] == []


def test_secrets_never_reach_the_stored_inputs(root, tmp_path, build, ls, inspect_key, cli, write_context):
    secret_file = tmp_path / "token"
    secret_file.write_text("file-secret-4711")
    dockerfile = (
        "FROM busybox\n"
        "RUN --mount=type=secret,id=tok --mount=type=secret,id=envtok,env=TOKEN "
        # the values reached the step (checked by length: the Dockerfile must not hold them)
        "test $(cat /run/secrets/tok | wc -c) -eq 16 && test ${#TOKEN} -eq 15 && echo ok > /ok\n"
    )
    context = write_context(tmp_path / "ctx", {"Dockerfile": dockerfile})
    env_secret = {"SECRET_VALUE": "env-secret-0815"}
    completed = _build_with_env(cli, root, context, env_secret, secret_file)
    assert completed.returncode == 0, completed.stderr
    (entry,) = ls(root)
    stored = json.dumps(inspect_key(root, entry["key"]))
    assert "tok" in stored  # the mount is recorded, by id
    assert "file-secret-4711" not in stored and "env-secret-0815" not in stored
    with open(root / "index.db", "rb") as db:
        everything = db.read()
    for name in ("index.db-wal",):
        path = root / name
        if path.exists():
            everything += path.read_bytes()
    assert b"file-secret-4711" not in everything and b"env-secret-0815" not in everything


def _build_with_env(cli, root, context, env: dict, secret_file):
    import os

    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return cli(
            root, "build", "--progress", "plain", "--secret", f"id=tok,src={secret_file}",
            "--secret", "id=envtok,env=SECRET_VALUE", str(context), check=False,
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_names_that_are_not_utf8_are_listed_and_printed(root, tmp_path, build, ls, inspect_key, cli, write_context):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY . /c\n"})
    (context / "src").mkdir()
    with open(bytes(context / "src") + b"/bad\xff\x1b[31m.txt", "wb") as file:
        file.write(b"x")
    build(root, context)
    (entry,) = ls(root)
    (listing,) = inspect_key(root, entry["key"])["file_lists"].values()
    assert "src/bad\udcff\x1b[31m.txt" in [f["path"] for f in listing["files"]]
    text = cli(root, "cache", "inspect", entry["key"]).stdout
    assert "bad\ufffd?[31m.txt" in text and "\x1b" not in text


def test_on_a_terminal_the_tables_are_rich(built, ls):
    """The same rows on a terminal (a pty): rich's table and tree, no traceback."""
    import os
    import pty
    import subprocess
    import sys

    root, _ = built
    entries = ls(root)
    for verb in (["ls"], ["tree"], ["inspect", entries[0]["key"]]):
        leader, follower = pty.openpty()
        env = dict(os.environ, COLUMNS="200", TERM="xterm")
        env.pop("CI", None)
        process = subprocess.Popen(
            [sys.executable, "-m", "imgbuild", "--root", str(root), "cache", *verb],
            stdout=follower, stderr=subprocess.PIPE, env=env,
        )
        os.close(follower)
        output = read_terminal(leader)
        assert process.wait(timeout=60) == 0, process.stderr.read()
        text = output.decode()
        assert entries[0]["short_key"] in text or entries[0]["key"] in text
        if verb == ["ls"]:
            assert all(entry["short_key"] in text for entry in entries)

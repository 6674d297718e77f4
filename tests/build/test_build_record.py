"""Build records (imgbuild.builder.record): a fully cached rebuild without the builder.

Every build here is the real CLI in a fresh interpreter on a real store. A
build taken from its record never imports the builder
(``imgbuild.builder.builder``), so the modules loaded say which way a build
went; what it gave is compared with the normal path, the same build with
``IMGBUILD_NO_BUILD_RECORD=1``. Each change that must miss the record is
made after a build that kept one: the build after it must run the builder
and give the image the normal path gives.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli.clitools import MODULE_RECORDER as RECORDER
from cli.clitools import cli_env
from comparetools import run_tool
from imagetools import make_busybox_image, make_busybox_rootfs
from ocitools import BUSYBOX_PATH

from imgbuild.store import Store
from imgbuild.store.index_db import SCHEMA_VERSION

PROJECT = Path(__file__).resolve().parents[2]
BYPASS = {"IMGBUILD_NO_BUILD_RECORD": "1"}
# The store's automatic collection stays off: other work on the machine can
# take the disk below the default 20% free, and a store over its limits is
# (rightly) not taken from a record.
UNLIMITED = {"IMGBUILD_MIN_FREE": "0", "IMGBUILD_MAX_CACHE": "100%"}


DOCKERFILE = """\
FROM busybox
ARG V=none
COPY a.txt /a.txt
RUN echo "v=$V" > /v && cat /a.txt > /copy-of-a
COPY d* /dirs/
RUN --mount=type=bind,source=m.txt,target=/m cp /m /m-copy
COPY tree/ /tree/
WORKDIR /
"""


class Built:
    def __init__(self, completed: subprocess.CompletedProcess, modules: set[str]):
        self.completed = completed
        self.modules = modules

    @property
    def from_record(self) -> bool:
        return "imgbuild.builder.builder" not in self.modules

    @property
    def image_id(self) -> str:
        return self.completed.stdout.strip().splitlines()[-1]


@pytest.fixture
def context(tmp_path) -> Path:
    directory = tmp_path / "context"
    directory.mkdir()
    (directory / "Dockerfile").write_text(DOCKERFILE)
    (directory / "a.txt").write_text("aaaa\n")
    (directory / "m.txt").write_text("mount\n")
    (directory / "d1").mkdir()
    (directory / "d1" / "one").write_text("1\n")
    (directory / "tree" / "sub").mkdir(parents=True)
    (directory / "tree" / "sub" / "file").write_text("file\n")
    (directory / "tree" / "other").write_text("other\n")
    return directory


def build(root: Path, context: Path, *flags: str, env: dict | None = None, tmp: Path) -> Built:
    """``imgbuild build -q -t t:1 FLAGS CONTEXT`` (a fresh interpreter), and the modules it loaded."""
    modules_file = tmp / "modules.txt"
    completed = subprocess.run(
        [sys.executable, "-c", RECORDER, str(modules_file), "--root", str(root), "build", *flags, str(context)],
        capture_output=True,
        text=True,
        env=cli_env({**UNLIMITED, **(env or {})}),
        cwd=str(PROJECT),
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    modules = set(modules_file.read_text().split("\n"))
    return Built(completed, modules)


def tagged(root: Path, tag: str = "t:1") -> str:
    """The config digest (image ID) ``tag`` points at, read from the store."""
    return Store(root).load_image(tag).config_descriptor.digest


@pytest.fixture
def builds(store, context, tmp_path):
    """builds(*flags, env=..., at=context) -> Built, on this test's store, tagged t:1."""

    def run(*flags: str, env: dict | None = None, at: Path | None = None) -> Built:
        return build(store.root, at or context, "-q", "-t", "t:1", *flags, env=env, tmp=tmp_path)

    return run


def test_a_noop_rebuild_comes_from_the_record_with_the_image_of_the_normal_path(builds, store):
    first = builds()
    assert not first.from_record
    again = builds()
    assert again.from_record
    assert not any(name.startswith("imgbuild.dockerfile") for name in again.modules)  # nor the front end
    normal = builds(env=BYPASS)
    assert not normal.from_record
    assert again.image_id == first.image_id == normal.image_id == tagged(store.root)


def test_a_record_leaves_index_json_alone_when_the_tag_is_there(builds, store, tmp_path):
    builds()
    other = tmp_path / "other"
    other.mkdir()
    (other / "Dockerfile").write_text("FROM busybox\nRUN echo other > /other\n")
    build(store.root, other, "-q", "-t", "t:2", tmp=tmp_path)  # t:1 is no longer the last entry
    index = store.root / "oci" / "index.json"
    before = (index.read_bytes(), index.stat().st_ino, index.stat().st_mtime_ns)
    assert builds().from_record
    assert (index.read_bytes(), index.stat().st_ino, index.stat().st_mtime_ns) == before


def test_a_record_is_not_a_cache_miss_of_a_step(builds, store):
    """Hits count as the normal path counts them: once per step and build."""
    builds()
    hits = dict(_hits(store.root))
    assert builds().from_record
    after_record = dict(_hits(store.root))
    builds(env=BYPASS)
    after_normal = dict(_hits(store.root))
    assert {key: after_record[key] - hits[key] for key in hits} == {
        key: after_normal[key] - after_record[key] for key in hits
    }
    assert set(after_record.values()) != set(hits.values())


def _hits(root: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(root / "index.db") as db:
        return db.execute("SELECT key, hits FROM cache").fetchall()


@pytest.mark.parametrize("mode", ["plain", "json", "quiet", "explain"])
def test_the_record_prints_what_the_normal_path_prints(store, context, tmp_path, mode):
    (context / "Dockerfile").write_text(DOCKERFILE + "ENV LEGACY value\n")  # a build-check warning
    flags = ["-t", "t:1", "--build-arg", "UNUSED=1", "--progress", "plain" if mode == "explain" else mode]
    flags += {"quiet": ["-q"], "explain": ["--explain"]}.get(mode, [])
    build(store.root, context, *flags, tmp=tmp_path)
    taken = build(store.root, context, *flags, tmp=tmp_path)
    assert taken.from_record
    normal = build(store.root, context, *flags, env=BYPASS, tmp=tmp_path)
    assert not normal.from_record
    assert _shown(taken.completed.stdout) == _shown(normal.completed.stdout)
    assert _shown(taken.completed.stderr) == _shown(normal.completed.stderr)
    if mode in ("plain", "explain"):
        assert "CACHED" in taken.completed.stderr and "UNUSED" in taken.completed.stderr
        assert "LegacyKeyValueFormat" in taken.completed.stderr
    if mode == "explain":
        assert "every step was cached" in taken.completed.stderr


def _shown(text: str) -> list:
    """Output without what differs from run to run: the clock and the seconds taken."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            event.pop("time", None)
            event.pop("seconds", None)
            lines.append(event)
        else:
            lines.append(re.sub(r", [0-9.]+s$", "", line))
    return lines


def _edit_same_size_keep_mtime(context: Path, root: Path) -> None:
    path = context / "tree" / "sub" / "file"
    st = path.stat()
    path.write_text("FILE\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _xattr(context: Path, root: Path) -> None:
    os.setxattr(context / "tree" / "other", "user.note", b"1")


def _move_base(context: Path, root: Path) -> None:
    other = context.parent / "other-base"
    other.mkdir()
    (other / "Dockerfile").write_text("FROM busybox\nRUN echo moved > /moved\n")
    subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(root), "build", "-q", "-t", "busybox:latest", str(other)],
        check=True, capture_output=True, env=cli_env(), cwd=str(PROJECT),
    )


CHANGES = {
    "dockerfile": lambda c, r: (c / "Dockerfile").write_text(DOCKERFILE + "ENV E=1\n"),
    "dockerignore": lambda c, r: (c / ".dockerignore").write_text("tree/other\n"),
    "edited_same_size_mtime_restored": _edit_same_size_keep_mtime,
    "added": lambda c, r: (c / "tree" / "new").write_text("new\n"),
    "added_to_wildcard": lambda c, r: (c / "d2").mkdir(),
    "removed": lambda c, r: (c / "tree" / "other").unlink(),
    "renamed": lambda c, r: (c / "tree" / "other").rename(c / "tree" / "renamed"),
    "chmod": lambda c, r: (c / "tree" / "other").chmod(0o600),
    "xattr": _xattr,
    "bind_mounted_file": lambda c, r: (c / "m.txt").write_text("mounted, longer\n"),
    "base_tag_moved": _move_base,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_misses_the_record_and_gives_the_normal_image(builds, store, context, change):
    first = builds()
    assert builds().from_record
    CHANGES[change](context, store.root)
    changed = builds()
    assert not changed.from_record
    assert changed.image_id != first.image_id
    normal = builds(env=BYPASS)
    assert normal.image_id == changed.image_id == tagged(store.root)
    again = builds()  # the build that missed kept the record of the new image
    assert again.from_record and again.image_id == changed.image_id


@pytest.mark.parametrize("before, after", [("V=1", "V=2"), ("V=1", "W=1")])
def test_a_build_arg_change_misses_the_record(builds, store, before, after):
    first = builds("--build-arg", before)
    assert builds("--build-arg", before).from_record
    changed = builds("--build-arg", after)
    assert not changed.from_record
    assert changed.image_id != first.image_id
    assert builds("--build-arg", after, env=BYPASS).image_id == changed.image_id


def test_the_environment_value_of_a_bare_build_arg_is_in_the_key(builds, store):
    first = builds("--build-arg", "V", env={"V": "one"})
    assert builds("--build-arg", "V", env={"V": "one"}).from_record
    changed = builds("--build-arg", "V", env={"V": "two"})
    assert not changed.from_record and changed.image_id != first.image_id
    unset = builds("--build-arg", "V")
    assert not unset.from_record
    assert unset.image_id == builds("--build-arg", "V", env=BYPASS).image_id
    assert unset.image_id not in (first.image_id, changed.image_id)


def test_an_image_removed_by_rmi_is_built_again(builds, store, context):
    first = builds()
    assert builds().from_record
    subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(store.root), "rmi", "t:1"],
        check=True, capture_output=True, env=cli_env(), cwd=str(PROJECT),
    )
    again = builds()
    assert not again.from_record
    assert again.image_id == first.image_id == tagged(store.root)
    image = Store(store.root).load_image("t:1")
    assert all(Store(store.root).has_blob(layer.digest) for layer in image.layers)


def test_an_image_prune_that_removed_the_base_fails_the_build_as_the_normal_path_does(builds, store, context):
    builds()
    assert builds().from_record
    imgbuild = [sys.executable, "-m", "imgbuild", "--root", str(store.root)]
    subprocess.run([*imgbuild, "image", "prune", "-a", "-f"], check=True, capture_output=True, env=cli_env(), cwd=str(PROJECT))
    failed = subprocess.run(
        [*imgbuild, "build", "-q", "-t", "t:1", str(context)], capture_output=True, text=True, env=cli_env(), cwd=str(PROJECT)
    )
    assert failed.returncode == 1 and "busybox" in failed.stderr, failed.stderr


def test_a_pruned_cache_misses_the_record(builds, store):
    first = builds()
    assert builds().from_record
    subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(store.root), "cache", "prune", "--all"],
        check=True, capture_output=True, env=cli_env(), cwd=str(PROJECT),
    )
    again = builds()
    assert not again.from_record
    # the RUN steps ran again: their history dates the image anew
    assert again.image_id != first.image_id
    assert builds(env=BYPASS).image_id == again.image_id == tagged(store.root)


def test_a_no_cache_build_takes_no_record_and_the_next_build_its_entries(builds, store):
    first = builds()
    assert builds().from_record
    fresh = builds("--no-cache")
    assert not fresh.from_record and fresh.image_id != first.image_id
    # the entries --no-cache replaced stand for another image now: the old record does not hold
    after = builds()
    assert not after.from_record
    assert after.image_id == fresh.image_id == builds(env=BYPASS).image_id


def test_flags_the_record_cannot_stand_for_take_the_normal_path(builds, store, tmp_path):
    builds()
    assert builds().from_record
    out = tmp_path / "image.tar"
    assert not builds("--output", f"type=oci,dest={out}").from_record
    assert out.is_file()
    assert not builds("--no-cache-filter", "0").from_record


def test_a_store_over_its_limits_is_not_taken_from_a_record(builds, store):
    builds()
    assert builds().from_record
    assert not builds("--max-cache", "1KB").from_record


def test_a_disk_filled_by_something_else_still_takes_the_record(builds, store):
    """Less free than --min-free, but the store is below the reserve (10% of the
    disk, at most 10GB) that a full disk never collects under: the collection
    would prune nothing, so the record stands."""
    builds()
    assert builds("--min-free", "100%").from_record


def test_iidfile_is_written_from_the_record(builds, store, tmp_path):
    iidfile = tmp_path / "iid"
    first = builds("--iidfile", str(iidfile))
    iidfile.write_text("stale")
    taken = builds("--iidfile", str(iidfile))
    assert taken.from_record
    assert iidfile.read_text() == first.image_id


def test_a_store_of_version_4_gets_the_records_table(store_root):
    """Version 4 had neither the records (5) nor the snapshots' sizes (6)."""
    Store(store_root)
    with sqlite3.connect(store_root / "index.db") as db:
        db.execute("DROP TABLE build_records")
        db.execute("ALTER TABLE snapshots DROP COLUMN disk_bytes")
        db.execute("PRAGMA user_version = 4")
    Store(store_root)
    with sqlite3.connect(store_root / "index.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        assert db.execute("SELECT count(*) FROM build_records").fetchone()[0] == 0
        assert "disk_bytes" in {row[1] for row in db.execute("PRAGMA table_info(snapshots)")}


def test_a_change_to_imgbuild_itself_misses_the_record(builds, store, tmp_path):
    """The version string stays the same through a development install or an
    upgrade from git: a record kept by other code is not taken."""
    code = tmp_path / "code"
    shutil.copytree(PROJECT / "imgbuild", code / "imgbuild", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(code), "PYTHONSAFEPATH": "1"}  # not the checkout from the working directory
    runs = subprocess.run(
        [sys.executable, "-c", "import imgbuild; print(imgbuild.__file__)"],
        capture_output=True, text=True, check=True, env=cli_env(env), cwd=str(PROJECT),
    )  # fmt: skip
    assert runs.stdout.startswith(str(code))  # the copy is what the builds run
    assert not builds(env=env).from_record
    assert builds(env=env).from_record
    module = code / "imgbuild" / "image.py"
    os.utime(module, ns=(module.stat().st_atime_ns, module.stat().st_mtime_ns + 10**9))
    assert not builds(env=env).from_record
    assert builds(env=env).from_record


def test_work_left_by_a_killed_build_takes_the_builder_which_cleans_it_up(builds, store):
    """What a kill -9 leaves in tmp/ (an owner directory whose lock nobody
    holds) is swept by the builder first; a record does not skip that."""
    builds()
    assert builds().from_record
    left = store.root / "tmp" / "owner-999999-0123456789abcdef"
    (left / "work").mkdir(parents=True)
    left.with_name(left.name + ".lock").touch()
    assert not builds().from_record
    assert not left.exists() and not left.with_name(left.name + ".lock").exists()
    assert builds().from_record


# --- the target's last COPY, rebuilt from the record (builder/lastcopy.py) ----------

APP = """\
FROM busybox
ARG V=none
COPY a.txt /a.txt
RUN --mount=type=bind,source=m.txt,target=/m cp /m /m-copy && echo "v=$V" > /v
WORKDIR /app
COPY app/ ./
USER 1000
EXPOSE 8000
HEALTHCHECK CMD ["true"]
CMD ["sh", "/app/main.sh"]
"""


EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}


@pytest.fixture
def app(tmp_path) -> Path:
    directory = tmp_path / "app-context"
    (directory / "app" / "lib").mkdir(parents=True)
    files = {"Dockerfile": APP, "a.txt": "a\n", "m.txt": "m\n", "app/main.sh": "echo one\n", "app/lib/util.sh": "u=1\n"}
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def _last_copy(built: Built) -> bool:
    return built.from_record and "imgbuild.builder.lastcopy" in built.modules


def _edit(app: Path, text: str = "echo two\n") -> None:
    (app / "app" / "main.sh").write_text(text)
    # Past the stat cache's racy window (50 ms): the build that reads the
    # edit can then trust its digest, and keeps a record of it.
    time.sleep(0.1)


def test_an_edit_under_the_last_copy_rebuilds_that_step_alone_as_the_normal_path_would(builds, store, app):
    first = builds(at=app)
    assert builds(at=app).from_record
    _edit(app)
    taken = builds(at=app)
    assert _last_copy(taken)
    assert not any(name.startswith("imgbuild.dockerfile") for name in taken.modules)  # nor the front end
    assert taken.image_id != first.image_id
    normal = builds(env=BYPASS, at=app)
    assert not normal.from_record
    assert normal.image_id == taken.image_id == tagged(store.root)
    again = builds(at=app)  # the rebuild kept the record of its image: a no-op is a plain replay
    assert again.from_record and not _last_copy(again) and again.image_id == taken.image_id


def test_an_edit_undone_finds_the_copy_cached_and_gives_the_first_image(builds, store, app):
    first = builds(at=app)
    _edit(app)
    edited = builds(at=app)
    assert _last_copy(edited) and edited.image_id != first.image_id
    _edit(app, "echo one\n")
    undone = builds(at=app)
    assert _last_copy(undone) and undone.image_id == first.image_id == tagged(store.root)


def test_with_source_date_epoch_it_gives_the_image_a_build_without_cache_gives(builds, store, app):
    builds(at=app, env=EPOCH)
    _edit(app)
    taken = builds(at=app, env=EPOCH)
    assert _last_copy(taken)
    manifest = Store(store.root).load_image("t:1").digest
    fresh = builds("--no-cache", at=app, env=EPOCH)
    assert not fresh.from_record
    assert fresh.image_id == taken.image_id and Store(store.root).load_image("t:1").digest == manifest


def test_the_cache_entry_keeps_the_inputs_a_normal_build_keeps(store, app, tmp_path):
    """The step's entry, its inputs, where it stood and its file list, as the
    normal path records them for the same key in another store (the layers
    made the same with SOURCE_DATE_EPOCH: the WORKDIR's time is the build's)."""
    build(store.root, app, "-q", "-t", "t:1", env=EPOCH, tmp=tmp_path)
    _edit(app)
    assert _last_copy(build(store.root, app, "-q", "-t", "t:1", env=EPOCH, tmp=tmp_path))
    other = Store(tmp_path / "other-store")
    make_busybox_image(other, "busybox:latest")
    build(other.root, app, "-q", "-t", "t:1", env={**EPOCH, **BYPASS}, tmp=tmp_path)
    ours, theirs = _entries(store.root), _entries(other.root)
    # the same keys, and ours has the last COPY of the first content too
    assert theirs.keys() < ours.keys() and len(ours) == len(theirs) + 1
    assert [ours[key][0] for key in ours.keys() - theirs.keys()] == ["COPY app/ ./ # imgbuild"]
    assert {key: ours[key] for key in theirs} == theirs


def _entries(root: Path) -> dict:
    """key -> what the index keeps of each entry and its file lists, except when and how often it was used."""
    columns = "created_by, parent_key, diff_id, layer_digest, inputs, parent_entry, base_digest, dockerfile, stage_index, line, instruction"
    with sqlite3.connect(root / "index.db") as db:
        rows = {row[0]: row[1:] for row in db.execute(f"SELECT key, {columns} FROM cache")}
        lists = db.execute("SELECT key, files FROM cache_file_lists JOIN file_lists USING (digest)").fetchall()
    return {key: (*row, sorted(files for k, files in lists if k == key)) for key, row in rows.items()}


@pytest.mark.parametrize("mode", ["plain", "json", "explain"])
def test_the_last_copy_prints_what_the_normal_path_prints(store, app, tmp_path, mode):
    flags = ["-t", "t:1", "--progress", "plain" if mode == "explain" else mode]
    flags += ["--explain"] if mode == "explain" else []
    build(store.root, app, *flags, env=EPOCH, tmp=tmp_path)
    _edit(app)
    taken = build(store.root, app, *flags, env=EPOCH, tmp=tmp_path)
    assert _last_copy(taken)
    # the same edit, in another store, for the normal path (with SOURCE_DATE_EPOCH,
    # the layers and so the sizes printed are the same: the WORKDIR's time is the build's)
    other = Store(tmp_path / "other-store")
    make_busybox_image(other, "busybox:latest")
    _edit(app, "echo one\n")
    build(other.root, app, *flags, env=EPOCH, tmp=tmp_path)
    _edit(app)
    normal = build(other.root, app, *flags, env={**EPOCH, **BYPASS}, tmp=tmp_path)
    assert not normal.from_record
    assert _steps_shown(taken.completed.stdout) == _steps_shown(normal.completed.stdout)
    assert _steps_shown(taken.completed.stderr) == _steps_shown(normal.completed.stderr)
    if mode != "json":
        assert "1 file changed" in taken.completed.stderr and "3 cached, 1 run" in taken.completed.stderr, taken.completed.stderr


def _steps_shown(text: str) -> list:
    """``_shown``, and without the digests (the builds' times differ) or how long the step took."""
    shown = _shown(re.sub(r"sha256:[0-9a-f]{64}", "sha256:*", text))
    for event in shown:
        if isinstance(event, dict):
            event.pop("duration", None)
    return shown


LAST_COPY_CHANGES = {
    "edited": lambda c: _edit(c),
    "added": lambda c: (c / "app" / "new.sh").write_text("new\n"),
    "removed": lambda c: (c / "app" / "lib" / "util.sh").unlink(),
    "chmod": lambda c: (c / "app" / "main.sh").chmod(0o700),
}
BUILDER_CHANGES = {
    "earlier_copy": lambda c: (c / "a.txt").write_text("changed\n"),
    "bind_mount": lambda c: (c / "m.txt").write_text("changed\n"),
    "dockerfile": lambda c: (c / "Dockerfile").write_text(APP + "ENV E=1\n"),
}


@pytest.mark.parametrize("change", sorted(LAST_COPY_CHANGES) + sorted(BUILDER_CHANGES))
def test_only_a_change_under_the_last_copy_takes_it_alone(builds, store, app, change):
    first = builds(at=app)
    if change in BUILDER_CHANGES:
        BUILDER_CHANGES[change](app)
        _edit(app)  # with the last COPY's files too
    else:
        LAST_COPY_CHANGES[change](app)
    changed = builds(at=app)
    assert _last_copy(changed) == (change in LAST_COPY_CHANGES)
    assert changed.from_record == (change in LAST_COPY_CHANGES)
    assert changed.image_id != first.image_id
    assert builds(env=BYPASS, at=app).image_id == changed.image_id == tagged(store.root)


@pytest.mark.parametrize(
    "dockerfile",
    [
        # another step reads the same files: its key changes too
        APP.replace("WORKDIR /app\n", "RUN --mount=type=bind,source=app,target=/src ls /src > /listing\nWORKDIR /app\n"),
        APP.replace("COPY a.txt /a.txt\n", "COPY app/ /early/\n"),
        # the COPY is not the last layer step
        APP + "RUN echo after > /tmp/after\n",
        # nor one the record can redo alone
        APP.replace("COPY app/ ./", "COPY --link app/ ./"),
    ],
    ids=["bind_mounted_too", "copied_twice", "run_after", "link"],
)
def test_a_copy_that_is_not_alone_takes_the_builder(builds, store, app, dockerfile):
    (app / "Dockerfile").write_text(dockerfile)
    first = builds(at=app)
    _edit(app)
    changed = builds(at=app)
    assert not changed.from_record and changed.image_id != first.image_id
    assert builds(env=BYPASS, at=app).image_id == changed.image_id == tagged(store.root)


MULTISTAGE = """\
FROM busybox AS deps
RUN echo deps > /deps
FROM busybox
COPY --from=deps /deps /deps
COPY app/ /app/
CMD ["sh", "/app/main.sh"]
"""


def test_the_last_copy_of_a_multistage_target(builds, store, app):
    (app / "Dockerfile").write_text(MULTISTAGE)
    first = builds(at=app)
    _edit(app)
    taken = builds(at=app)
    assert _last_copy(taken) and taken.image_id != first.image_id
    assert builds(env=BYPASS, at=app).image_id == taken.image_id == tagged(store.root)


def test_the_last_copy_on_a_base_umoci_made_and_skopeo_converted(builds, store, app, tmp_path):
    """The layers below the COPY come from other tools (umoci's layer, in a
    docker-archive that skopeo wrote: Docker media types), and umoci reads
    the image the replay wrote."""
    layout = tmp_path / "umoci-layout"
    run_tool("umoci", "init", "--layout", str(layout))
    run_tool("umoci", "new", "--image", f"{layout}:1")
    run_tool("umoci", "config", "--image", f"{layout}:1", "--config.env", BUSYBOX_PATH, "--config.cmd", "sh")
    run_tool("umoci", "insert", "--image", f"{layout}:1", str(make_busybox_rootfs(tmp_path / "rootfs")), "/")
    archive = tmp_path / "base.tar"
    run_tool("skopeo", "copy", "--quiet", f"oci:{layout}:1", f"docker-archive:{archive}:umoci-base:1")
    loaded = subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(store.root), "load", "-q", "-i", str(archive)],
        capture_output=True, text=True, env=cli_env(), cwd=str(PROJECT),
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    (app / "Dockerfile").write_text(APP.replace("FROM busybox", "FROM umoci-base:1"))
    first = builds(at=app)
    _edit(app)
    taken = builds(at=app)
    assert _last_copy(taken) and taken.image_id != first.image_id
    assert builds(env=BYPASS, at=app).image_id == taken.image_id == tagged(store.root)
    bundle = tmp_path / "bundle"
    run_tool("umoci", "unpack", "--image", f"{store.root / 'oci'}:t:1", str(bundle))
    assert (bundle / "rootfs" / "app" / "main.sh").read_text() == "echo two\n"
    assert (bundle / "rootfs" / "app" / "lib" / "util.sh").read_text() == "u=1\n"

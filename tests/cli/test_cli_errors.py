"""Usage errors as users meet them (issue 13): unknown verbs, help, names, flags checked first.

Every usage error exits 2 and ends with where to read the right usage; a flag
that is wrong is refused before any step runs, whether or not a step would.
"""

from __future__ import annotations

import json

import pytest
from cli.clitools import imgbuild, write_context
from imagetools import make_busybox_image, require_root_and_runc

from imgbuild.cli import main
from imgbuild.store import Store

DOCKERFILE = "FROM busybox\nRUN echo ran > /ran\n"


@pytest.fixture
def root(store_root):
    require_root_and_runc()
    make_busybox_image(Store(store_root), "busybox:latest")
    return store_root


def in_process(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- verbs and help ----------------------------------------------------------------------


@pytest.mark.parametrize("word", ["bulid", "ps"])
def test_an_unknown_verb_is_an_error_not_a_build(capsys, store_root, tmp_path, monkeypatch, word):
    monkeypatch.chdir(tmp_path)
    code, out, err = in_process(capsys, "--root", str(store_root), word)
    assert code == 2
    assert err == f"error: '{word}' is not an imgbuild command; see 'imgbuild --help'\n"
    assert out == ""


def test_a_directory_without_the_verb_is_still_a_build_context(capsys, store_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app").mkdir()  # no Dockerfile in it: the build says so
    code, _, err = in_process(capsys, "--root", str(store_root), "app")
    assert code == 2
    assert "no Dockerfile at app/Dockerfile" in err and err.rstrip().endswith("see 'imgbuild build --help'")


def test_bare_imgbuild_prints_help(capsys, store_root):
    for argv in ([], ["--root", str(store_root)]):
        code, out, err = in_process(capsys, *argv)
        assert code == 0 and err == ""
        assert out.startswith("usage: imgbuild") and "build" in out and "images" in out


@pytest.mark.parametrize(
    ("argv", "verb"),
    [
        (["build"], "build"),
        (["build", "--jobs", "many", "."], "build"),
        (["build", "--no-such-flag", "."], "build"),
        (["--progress", "fancy", "."], "build"),
        (["tag", "only-one"], "tag"),
        (["rmi"], "rmi"),
        (["cache", "prune", "--keep-storage", "lots"], "cache"),
    ],
)
def test_usage_errors_exit_2_and_say_where_the_help_is(capsys, store_root, tmp_path, monkeypatch, argv, verb):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    code, _, err = in_process(capsys, "--root", str(store_root), *argv)
    assert code == 2, err
    assert err.startswith("error: ") and err.rstrip().endswith(f"; see 'imgbuild {verb} --help'"), err
    assert err.count("--help") == 1


def test_a_missing_dockerfile_is_a_usage_error(root, tmp_path):
    context = tmp_path / "ctx"
    context.mkdir()
    for flags in ([], ["-f", str(context / "Nope.Dockerfile")], ["-f", str(context)]):
        completed = imgbuild(root, "build", *flags, str(context))
        assert completed.returncode == 2, completed.stderr
        assert completed.stderr.rstrip().endswith("see 'imgbuild build --help'"), completed.stderr
        assert "Traceback" not in completed.stderr


# --- names and result files -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["Bad:Tag", "ok:bad tag", "app@sha256:" + "a" * 64, "app:-x"])
def test_build_checks_tag_names_as_tag_does(root, tmp_path, name):
    context = write_context(tmp_path / "ctx", DOCKERFILE)
    built = imgbuild(root, "build", "--progress", "plain", "-t", name, str(context))
    assert built.returncode == 2, built.stderr
    assert f"-t {name!r}" in built.stderr
    assert "#1 " not in built.stderr  # refused before any step
    tagged = imgbuild(root, "tag", "busybox", name)
    assert tagged.returncode == 2  # the same rule
    names = [m.get("annotations", {}) for m in json.loads((root / "oci" / "index.json").read_text())["manifests"]]
    assert names == [{"org.opencontainers.image.ref.name": "busybox:latest"}]


def test_build_stores_names_as_tag_does(root, tmp_path):
    context = write_context(tmp_path / "ctx", DOCKERFILE)
    built = imgbuild(root, "build", "-q", "-t", "docker.io/library/app", str(context))
    assert built.returncode == 0, built.stderr
    assert Store(root).load_image("app:latest").config_descriptor.digest == built.stdout.strip()


def test_a_failed_build_leaves_no_old_result_files(root, tmp_path):
    iidfile, metadata = tmp_path / "iid", tmp_path / "metadata.json"
    good = write_context(tmp_path / "good", DOCKERFILE)
    built = imgbuild(root, "build", "--iidfile", str(iidfile), "--metadata-file", str(metadata), str(good))
    assert built.returncode == 0 and iidfile.exists() and metadata.exists()
    bad = write_context(tmp_path / "bad", "FROM busybox\nRUN exit 3\n")
    failed = imgbuild(root, "build", "--iidfile", str(iidfile), "--metadata-file", str(metadata), str(bad))
    assert failed.returncode == 1
    assert not iidfile.exists() and not metadata.exists()


# --- flags checked before any work ---------------------------------------------------------------


def cache_entries(root) -> int:
    return len(Store(root).db.cache_rows())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--compression-level", "99"], "gzip compression level must be"),
        (["--compression", "zstd", "--compression-level", "30"], "zstd compression level must be"),
        (["--output", "type=oci,dest=x.tar,compression-level=12"], "gzip compression level must be"),
        (["--platform", "linux/amd64,linux/arm64"], "multi-platform builds are not supported yet"),
        (["--platform", "linux"], "invalid platform 'linux'"),
        (["--runtime", "no-such-runtime"], "OCI runtime 'no-such-runtime' not found"),
    ],
)
def test_bad_flags_are_refused_before_any_step_runs(root, tmp_path, flags, message):
    context = write_context(tmp_path / "ctx", DOCKERFILE)
    completed = imgbuild(root, "build", "--progress", "plain", *flags, str(context), cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr
    assert "#1 " not in completed.stderr and cache_entries(root) == 0


def test_a_missing_runtime_is_refused_even_when_every_step_is_cached(root, tmp_path):
    context = write_context(tmp_path / "ctx", DOCKERFILE)
    assert imgbuild(root, "build", str(context)).returncode == 0
    completed = imgbuild(root, "build", "--runtime", "no-such-runtime", str(context))
    assert completed.returncode == 2
    assert "OCI runtime 'no-such-runtime' not found" in completed.stderr


def test_a_bare_label_gets_an_empty_value_as_in_docker(root, tmp_path):
    context = write_context(tmp_path / "ctx", DOCKERFILE)
    built = imgbuild(root, "build", "-q", "-t", "labels:1", "--label", "bad", "--label", "k=v", str(context))
    assert built.returncode == 0, built.stderr
    labels = Store(root).load_image("labels:1").config["config"]["Labels"]
    assert labels == {"bad": "", "k": "v"}


@pytest.mark.parametrize("argv", [["images"], ["--version"], ["no-such-verb"], ["build", "--no-such-flag"]])
def test_main_leaves_a_callers_garbage_collector_as_it_was(capsys, tmp_path, argv):
    # main() turns the collector off while it imports a verb; a caller in the
    # same process gets it back on, and none of its objects frozen.
    import gc

    frozen = gc.get_freeze_count()
    main(["--root", str(tmp_path), *argv])
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen

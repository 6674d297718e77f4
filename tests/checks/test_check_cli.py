"""``imgbuild check``, ``imgbuild build --check`` and the checks of a real
build: warnings printed at the end, ``error=true`` failing the build, and
InvalidBaseImagePlatform on a base image made for another architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgbuild.cli import main
from imgbuild.dockerfile import parse, plan
from imgbuild.dockerfile.checks import check
from imgbuild.image import Platform
from imgbuild.store import Store


@pytest.fixture
def run(store_root, capsys):
    def run_cli(*argv: str):
        capsys.readouterr()
        code = main(["--root", str(store_root), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run_cli


def context(tmp_path: Path, dockerfile: str, dockerignore: str | None = None) -> Path:
    directory = tmp_path / "ctx"
    directory.mkdir()
    (directory / "Dockerfile").write_text(dockerfile)
    (directory / "hello.txt").write_text("hello\n")
    if dockerignore is not None:
        (directory / ".dockerignore").write_text(dockerignore)
    return directory


SLOPPY = "FROM scratch as Base\nCOPY hello.txt Dockerfile /\nCMD cat /hello.txt\n"


def test_check_prints_each_warning_with_its_line(run, tmp_path):
    ctx = context(tmp_path, SLOPPY, dockerignore="Dockerfile\n")
    code, out, err = run("check", str(ctx))
    assert code == 0, err
    assert out.splitlines() == [
        "Dockerfile:1: StageNameCasing: Stage name 'Base' should be lowercase",
        "     1 | FROM scratch as Base",
        "Dockerfile:1: FromAsCasing: 'as' and 'FROM' keywords' casing do not match",
        "     1 | FROM scratch as Base",
        'Dockerfile:2: CopyIgnoredFile: Attempting to Copy file "Dockerfile" that is excluded by .dockerignore',
        "     2 | COPY hello.txt Dockerfile /",
        "Dockerfile:3: JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior "
        "related to OS signals",
        "     3 | CMD cat /hello.txt",
        "Check complete, 4 warnings have been found!",
    ]


def test_check_json_and_error_true(run, tmp_path):
    ctx = context(tmp_path, "# check=error=true;skip=JSONArgsRecommended\n" + SLOPPY)
    code, out, err = run("check", "--format", "json", str(ctx))
    assert code == 1
    document = json.loads(out)
    assert [(w["rule"], w["line"]) for w in document["warnings"]] == [("StageNameCasing", 2), ("FromAsCasing", 2)]
    assert document["warnings"][0]["url"] == "https://docs.docker.com/go/dockerfile/rule/stage-name-casing/"
    assert document["warnings"][0]["description"] == "Stage names should be lowercase"
    assert "lint violation found for rules: FromAsCasing, StageNameCasing" in document["error"]
    assert "lint violation found" in err


def test_clean_dockerfile_has_no_warnings(run, tmp_path):
    ctx = context(tmp_path, 'FROM scratch\nCOPY hello.txt /\nCMD ["/hello.txt"]\n')
    code, out, _ = run("check", "-f", str(ctx / "Dockerfile"), str(ctx))
    assert (code, out) == (0, "Check complete, no warnings found.\n")


def test_build_check_builds_nothing(run, tmp_path, store_root):
    ctx = context(tmp_path, SLOPPY)
    code, out, err = run("build", "--check", "-t", "sloppy:1", str(ctx))
    assert code == 0, err
    assert "Check complete, 3 warnings have been found!" in out
    code, out, _ = run("images", "-q")
    assert out.strip() == ""


def test_build_prints_warnings_at_the_end(run, tmp_path):
    ctx = context(tmp_path, SLOPPY)
    code, out, err = run("build", "--progress", "plain", "-t", "sloppy:1", str(ctx))
    assert code == 0, err
    text = out + err
    assert "WARNING: Dockerfile:1: StageNameCasing: Stage name 'Base' should be lowercase" in text
    assert "WARNING: Dockerfile:3: JSONArgsRecommended:" in text
    assert text.index("WARNING: Dockerfile:1") > text.index("COPY hello.txt")


def test_build_json_progress_has_warning_events(run, tmp_path):
    ctx = context(tmp_path, SLOPPY)
    code, out, err = run("build", "--progress", "json", "--build-arg",
                         "BUILDKIT_DOCKERFILE_CHECK=skip=StageNameCasing,JSONArgsRecommended", str(ctx))
    assert code == 0, err
    events = [json.loads(line) for line in (out + err).splitlines() if line.startswith("{")]
    checks = [e["check"] for e in events if e["event"] == "warning" and "check" in e]
    assert [(c["rule"], c["line"]) for c in checks] == [("FromAsCasing", 1)]


def test_build_fails_with_error_true(run, tmp_path):
    """testRuleCheckOption: error=true from the build arg fails the build."""
    ctx = context(tmp_path, SLOPPY)
    code, out, err = run("build", "--progress", "plain", "-t", "sloppy:1", "--build-arg",
                         "BUILDKIT_DOCKERFILE_CHECK=skip=StageNameCasing,JSONArgsRecommended;error=true", str(ctx))
    assert code == 1
    assert "lint violation found for rules: FromAsCasing" in err
    assert run("images", "-q")[1].strip() == ""


def test_bad_check_directive_fails_before_building(run, tmp_path):
    ctx = context(tmp_path, "# check=skip=A;wrong\nFROM scratch\n")
    code, _, err = run("build", "--progress", "plain", str(ctx))
    assert code == 2
    assert 'invalid check option "wrong"' in err


def test_base_image_of_another_platform(run, tmp_path, store_root):
    """testBaseImagePlatformMismatch: BuildKit warns (InvalidBaseImagePlatform)
    and builds; imgbuild keeps refusing such a base (docs/checks.md). A check
    reports it for a base in the local store, as docker build --check does
    for the images it resolves; one that is not there is never pulled."""
    ctx = context(tmp_path, "FROM scratch\nCOPY hello.txt /\n")
    assert run("build", "--progress", "plain", "-t", "base:host", str(ctx))[0] == 0
    store = Store(store_root)
    base = store.load_image("base:host")
    config = json.loads(json.dumps(base.config))
    other = "arm64" if Platform.host().architecture != "arm64" else "amd64"
    config["architecture"] = other
    store.tag("base:other", store.write_image(config, base.layers).manifest_descriptor)

    (ctx / "Dockerfile").write_text("FROM base:other\nENV foo=bar\n")
    code, out, err = run("check", str(ctx))
    assert code == 0, err
    assert (
        f'Dockerfile:1: InvalidBaseImagePlatform: Base image base:other was pulled with platform "linux/{other}", '
        f'expected "linux/{Platform.host().architecture}" for current build'
    ) in out, out
    code, out, err = run("build", "--check", str(ctx))
    assert code == 0 and "InvalidBaseImagePlatform" in out, out + err
    (ctx / "Dockerfile").write_text("FROM base:notinthestore\nENV foo=bar\n")
    code, out, err = run("check", str(ctx))
    assert (code, out) == (0, "Check complete, no warnings found.\n")
    (ctx / "Dockerfile").write_text("FROM base:other\nENV foo=bar\n")
    code, out, err = run("build", "--progress", "plain", "-t", "child:1", str(ctx))
    assert code == 1
    assert f"image base:other is for linux/{other}" in err


def test_base_image_platform_rule_compares_os_and_architecture():
    """The rule as a build would report it, given the pulled base's config."""
    parsed = parse("FROM base:other\nENV foo=bar\n")
    planned = plan(parsed, {}, None, "linux/amd64", build_platform="linux/amd64")
    for arch, expected in (("arm64", ["InvalidBaseImagePlatform"]), ("amd64", [])):
        config = {"os": "linux", "architecture": arch, "config": {}}
        result = check(parsed, planned, base_config=lambda stage, c=config: c, base_platforms=True)
        assert [w.rule for w in result.warnings] == expected
    (warning,) = check(parsed, planned, base_config=lambda stage: {"os": "linux", "architecture": "arm64"},
                       base_platforms=True).warnings
    assert warning.message == (
        'Base image base:other was pulled with platform "linux/arm64", expected "linux/amd64" for current build'
    )


def test_check_reads_stdin_and_follows_a_plan_error(tmp_path):
    """``-f -`` reads standard input (a real process); a duplicate stage name
    is reported by DuplicateStageName, then fails as the build would (exit 2)."""
    import os
    import subprocess
    import sys

    project = Path(__file__).resolve().parents[2]
    completed = subprocess.run(
        [sys.executable, "-m", "imgbuild", "--root", str(tmp_path / "root"), "check", "-f", "-", str(tmp_path)],
        input="FROM scratch AS b\nFROM scratch AS b\n", capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(project)},
    )
    assert completed.returncode == 2
    assert completed.stdout.startswith(
        'Dockerfile:2: DuplicateStageName: Duplicate stage name "b", stage names should be unique\n'
    )
    assert 'error: Dockerfile:2: duplicate stage name "b"' in completed.stderr


def test_warnings_before_a_parse_error(run, tmp_path):
    """testWarningsBeforeError: the lines before the error are checked."""
    ctx = context(tmp_path, "\nFROM scratch AS BadStageName\nMAINTAINER me@example.org\nBADCMD\n")
    code, out, err = run("check", str(ctx))
    assert code == 2
    assert [line for line in out.splitlines() if not line.startswith(" ")] == [
        "Dockerfile:2: StageNameCasing: Stage name 'BadStageName' should be lowercase",
        "Dockerfile:3: MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label",
        "Check complete, 2 warnings have been found!",
    ]
    assert "Dockerfile:4: unknown instruction: BADCMD" in err


def test_build_shows_warnings_with_its_error(run, tmp_path):
    """testWarningsBeforeError: a build that fails at a parse error shows the
    warnings of the lines before it; one that fails in a step shows them all."""
    ctx = context(tmp_path, "\nFROM scratch AS BadStageName\nMAINTAINER me@example.org\nBADCMD\n")
    code, out, err = run("build", "--progress", "plain", str(ctx))
    assert code == 2
    assert "WARNING: Dockerfile:2: StageNameCasing: Stage name 'BadStageName' should be lowercase" in out + err
    assert "WARNING: Dockerfile:3: MaintainerDeprecated:" in out + err
    assert "unknown instruction: BADCMD" in err

    (ctx / "Dockerfile").write_text("FROM scratch\nMAINTAINER me@example.org\nCOPY missing.txt /\n")
    code, out, err = run("build", "--progress", "plain", str(ctx))
    assert code != 0
    assert "WARNING: Dockerfile:2: MaintainerDeprecated:" in out + err
    assert "missing.txt" in err

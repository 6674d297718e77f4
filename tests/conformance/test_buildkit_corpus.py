"""BuildKit's own parser and shell-lexer test data, run against imgbuild.

The corpus lives outside the project, at ``<project root>/../shared/
conformance/buildkit/`` (see its README for the formats). When ``CI`` is set a
missing corpus is a failure; otherwise those tests are skipped. Each corpus
case is one test; ``conftest.py`` here prints a summary line with the counts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgbuild.dockerfile import parse, parse_lines, plan
from imgbuild.dockerfile.lines import InstructionLine
from imgbuild.dockerfile.shell import expand_word, expand_words, go_quote
from imgbuild.errors import DockerfileError, ExpansionError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CORPUS = PROJECT_ROOT.parent / "shared" / "conformance" / "buildkit"
PARSER_DIR = CORPUS / "frontend" / "dockerfile" / "parser"
SHELL_DIR = CORPUS / "frontend" / "dockerfile" / "shell"

# BuildKit runs envVarTest with this environment and escape character \.
ENV_VAR_TEST_ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}


def _listdir(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def _env_var_cases() -> list[tuple[int, str, str]]:
    """(line number, input, expected) for every A and U line of envVarTest."""
    path = SHELL_DIR / "envVarTest"
    if not path.is_file():
        return []
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if line.startswith("#") or not line.strip():
            continue
        fields = line.strip().split("|")
        assert len(fields) == 3, f"envVarTest line {number}: {line!r}"
        platform, source, expected = (f.strip() for f in fields)
        if platform in ("A", "U"):
            cases.append((number, source, expected))
    return cases


def _words_cases() -> list[tuple[int, str, list[str], dict[str, str]]]:
    """(line number, input, expected words, environment) for wordsTest.

    ``ENV NAME=VALUE`` lines add to the environment of the lines after them;
    the parsing of the file follows BuildKit's own test exactly (inputs are
    trimmed, expected words are only left-trimmed).
    """
    path = SHELL_DIR / "wordsTest"
    if not path.is_file():
        return []
    cases = []
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if line.startswith("#") or line == "":
            continue
        if line.startswith("ENV "):
            name, _, value = line[3:].lstrip(" ").partition("=")
            env[name] = value
            continue
        fields = line.split("|")
        assert len(fields) == 2, f"wordsTest line {number}: {line!r}"
        cases.append((number, fields[0].strip(), fields[1].lstrip(" ").split(","), dict(env)))
    return cases


PARSER_CASES = _listdir(PARSER_DIR / "testfiles")
NEGATIVE_CASES = _listdir(PARSER_DIR / "testfiles-negative")
ENV_VAR_CASES = _env_var_cases()
WORDS_CASES = _words_cases()


def test_corpus_is_present():
    if CORPUS.is_dir():
        return
    message = f"BuildKit conformance corpus not found at {CORPUS}"
    if os.environ.get("CI"):
        pytest.fail(message + " (required when CI is set)")
    pytest.skip(message)


def test_corpus_is_complete():
    """All of it must run: a partial copy would let cases go missing silently."""
    if not CORPUS.is_dir() and not os.environ.get("CI"):
        pytest.skip("corpus not present")
    assert len(PARSER_CASES) == 33
    assert len(NEGATIVE_CASES) == 4
    assert len(ENV_VAR_CASES) > 200
    assert len(WORDS_CASES) > 20


def dump(node: InstructionLine) -> str:
    """One instruction in BuildKit's parse-tree dump notation (``Node.Dump``)."""
    text = node.keyword.lower()
    if node.flags:
        text += " [" + " ".join(go_quote(flag) for flag in node.flags) + "]"
    if node.trigger is not None:
        text += " (" + dump(node.trigger) + ")"
    for arg in node.args:
        text += " " + go_quote(arg)
    return text


@pytest.mark.parametrize("name", PARSER_CASES)
def test_parser_testfile(name):
    case = PARSER_DIR / "testfiles" / name
    text = (case / "Dockerfile").read_bytes().decode("utf-8")
    expected = (case / "result").read_bytes().decode("utf-8").splitlines()
    got = [f"({dump(node)})" for node in parse_lines(text).lines]
    assert got == expected


@pytest.mark.parametrize("name", NEGATIVE_CASES)
def test_negative_testfile(name):
    text = (PARSER_DIR / "testfiles-negative" / name / "Dockerfile").read_bytes().decode()
    with pytest.raises(DockerfileError):
        parse_lines(text)
    with pytest.raises(DockerfileError):
        parse(text)


# BuildKit's parser accepts every file in testfiles/, but some are not valid
# Dockerfiles past the parser (BuildKit's instructions.Parse rejects them).
# imgbuild's full parse must agree; the first error is the one reported.
TYPED_REJECTIONS = {
    "flags": (3, "unknown flag: --user"),
    "health": (4, "HEALTHCHECK requires at least one argument"),
    "json": (1, "no build stage in current context"),
    "jeztah-invalid-json-json-inside-string": (1, "no build stage in current context"),
    "jeztah-invalid-json-json-inside-string-double": (1, "no build stage in current context"),
    "jeztah-invalid-json-single-quotes": (1, "no build stage in current context"),
    "jeztah-invalid-json-unterminated-bracket": (1, "no build stage in current context"),
    "jeztah-invalid-json-unterminated-string": (1, "no build stage in current context"),
}


# Files that parse but whose build fails when the ENV values are expanded, in
# BuildKit as here ('a\'b': a backslash does not escape inside single quotes).
PLAN_REJECTIONS = {
    "env": (12, "unexpected end of statement while looking for matching single-quote"),
}


@pytest.mark.parametrize("name", PARSER_CASES)
def test_parser_testfile_full_parse(name):
    text = (PARSER_DIR / "testfiles" / name / "Dockerfile").read_bytes().decode("utf-8")
    if name in TYPED_REJECTIONS:
        line, message = TYPED_REJECTIONS[name]
        with pytest.raises(DockerfileError) as caught:
            parse(text)
        assert caught.value.location.line == line
        assert caught.value.message.startswith(message)
        return
    dockerfile = parse(text)
    if name in PLAN_REJECTIONS:
        line, message = PLAN_REJECTIONS[name]
        with pytest.raises(ExpansionError) as caught:
            plan(dockerfile, platform="linux/amd64", build_platform="linux/amd64")
        assert caught.value.location.line == line
        assert caught.value.message.endswith(message)
    else:
        plan(dockerfile, platform="linux/amd64", build_platform="linux/amd64")


@pytest.mark.parametrize(
    "source,expected",
    [(s, e) for _, s, e in ENV_VAR_CASES],
    ids=[f"line{n}" for n, _, _ in ENV_VAR_CASES],
)
def test_env_var(source, expected):
    if expected == "error":
        with pytest.raises(ExpansionError):
            expand_word(source, ENV_VAR_TEST_ENV)
    else:
        assert expand_word(source, ENV_VAR_TEST_ENV) == expected


@pytest.mark.parametrize(
    "source,expected,env",
    [(s, e, env) for _, s, e, env in WORDS_CASES],
    ids=[f"line{n}" for n, _, _, _ in WORDS_CASES],
)
def test_words(source, expected, env):
    try:
        got = expand_words(source, env)
    except ExpansionError:
        got = ["error"]
    assert got == expected

"""Random and mutated Dockerfiles: the front end returns a result or raises
DockerfileError, never another exception, and never hangs."""

from __future__ import annotations

import signal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgbuild.dockerfile import expanded, parse, plan
from imgbuild.dockerfile.outline import render_json, render_text
from imgbuild.dockerfile.shell import expand_word, expand_words
from imgbuild.errors import DockerfileError

CASES = Path(__file__).resolve().parents[2] / "testdata" / "Dockerfiles"
SEEDS = sorted(
    (p / "Dockerfile").read_text(encoding="utf-8")
    for p in CASES.iterdir()
    if (p / "Dockerfile").is_file()
)
KEYWORDS = [
    "FROM",
    "RUN",
    "CMD",
    "COPY",
    "ADD",
    "ENV",
    "ARG",
    "LABEL",
    "EXPOSE",
    "VOLUME",
    "WORKDIR",
    "USER",
    "SHELL",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "ONBUILD",
    "MAINTAINER",
    "ENTRYPOINT",
    "AS",
    "NONE",
    "CMD-SHELL",
]
# Fragments that exercise the tricky parts: quotes, escapes, heredocs, flags, JSON.
FRAGMENTS = [
    "\\\n",
    "`\n",
    "<<EOF",
    "<<-'X'",
    "\nEOF\n",
    "\nX\n",
    "\t",
    "${",
    "}",
    "$A",
    "${A:-b}",
    "${A#*}",
    "${A//x/y}",
    '"',
    "'",
    "[",
    "]",
    '["a"]',
    "--mount=",
    "--from=",
    "type=cache,target=/c",
    "=",
    "# escape=`\n",
    "# syntax=x\n",
    "\n#",
    " ",
    "\n",
    "\r\n",
    "\ufeff",
    "\\",
    "`",
    ",",
    "AS s",
    "--platform=$BUILDPLATFORM",
]

TEXT = st.text(st.sampled_from(list("aAzZ09 \t\n\\`'\"$={}[],:#<>-/._*?@!%+")), max_size=200)
TOKENS = st.lists(st.sampled_from(KEYWORDS + FRAGMENTS) | TEXT, max_size=40).map("".join)


@st.composite
def mutated_seed(draw):
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        if kind == "insert":
            text = text[:position] + draw(TOKENS) + text[position:]
        elif kind == "delete":
            text = text[:position] + text[position + draw(st.integers(1, 20)) :]
        elif kind == "replace":
            text = text[:position] + draw(st.sampled_from(FRAGMENTS)) + text[position + 1 :]
        else:
            text = text[:position] + text[position : position + 40] + text[position:]
    return text


def _alarm(signum, frame):
    raise TimeoutError("the front end took more than 20 s on one input")


def exercise(text: str) -> None:
    """Everything the CLI and the engine do with a Dockerfile before building."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)  # a hang guard, not a performance assertion
    try:
        try:
            dockerfile = parse(text)
            result = plan(
                dockerfile,
                build_args={"A": "x y"},
                platform="linux/amd64",
                build_platform="linux/amd64",
            )
            render_text(result)
            render_json(result)
            for index in result.needed:
                scope = result.scope_for(index, ["PATH=/bin"])
                for instruction in result.stages[index].instructions:
                    scope.start_step()
                    expanded(instruction, scope)
                    scope.apply(instruction)
                    scope.args_used()
        except DockerfileError:
            pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


FUZZ_SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ_SETTINGS
@given(TOKENS)
def test_random_dockerfiles(text):
    exercise(text)


@FUZZ_SETTINGS
@given(st.sampled_from(["FROM busybox\n", "ARG A\nFROM $A\n"]), TOKENS)
def test_random_instructions_after_from(head, body):
    exercise(head + body)


@FUZZ_SETTINGS
@given(mutated_seed())
def test_mutated_testdata(text):
    exercise(text)


@FUZZ_SETTINGS
@given(TEXT, st.sampled_from(["\\", "`"]))
def test_word_expansion(word, escape):
    env = {"A": "a b", "EMPTY": ""}
    try:
        expand_word(word, env, escape)
        expand_words(word, env, escape)
    except DockerfileError:
        pass


ADVERSARIAL = {
    "deeply nested ${}": "FROM busybox\nENV A=" + "${a:-" * 3000 + "}" * 3000 + "\n",
    "deeply nested ${} in EXPOSE": "FROM busybox\nEXPOSE " + "${a:-" * 3000 + "}" * 3000 + "\n",
    "deeply nested ${} before a heredoc": "FROM busybox\nRUN "
    + "${a:-" * 3000
    + " <<EOF\nx\nEOF\n",
    "ONBUILD chain": "FROM busybox\n" + "ONBUILD " * 3000 + "RUN x\n",
    "deeply nested JSON": "FROM busybox\nCMD " + "[" * 100000 + "\n",
    "NUL characters": "FROM busybox\x00\nRUN \x00\n",
    "lone surrogate": 'FROM busybox\nLABEL a=\ud800\nCMD ["\\ud800"]\n',
    "long continuation": "FROM busybox\nRUN x \\\n" + " y \\\n" * 20000 + "z\n",
    "big heredoc": "FROM busybox\nCOPY <<EOF /x\n" + "$A line\n" * 20000 + "EOF\n",
}


def test_adversarial_inputs():
    for name, text in ADVERSARIAL.items():
        try:
            exercise(text)
        except Exception as error:  # pragma: no cover - the failure message names the input
            raise AssertionError(f"{name}: {type(error).__name__}: {error}") from error

"""The checks never crash: mutated testdata Dockerfiles give warnings or a
DockerfileError, nothing else (a traceback would reach the user)."""

from __future__ import annotations

import random
from pathlib import Path

from imgbuild.dockerfile import parse, plan
from imgbuild.dockerfile.checks import check, warnings_before
from imgbuild.errors import DockerfileError

CASES_DIR = Path(__file__).resolve().parents[2] / "testdata" / "Dockerfiles"
# What the rules look at: variables, casing, continuations, check comments, ports, names.
PIECES = ["$", "${", "}", "${A:-", "\\\n", "\n\n", " AS ", " as ", "--platform=$X ", "EXPOSE 1:2/TCP\n",
          "WORKDIR x\n", "# check=skip=all\n", "# check=bogus\n", "ONBUILD ENV a b\n", "ARG password\n",
          '"', "[", "]", "from ", "\nFROM base:tag AS x\n", "COPY --from=x . .\n"]


def test_mutated_dockerfiles_never_crash_the_checks():
    rng = random.Random(15)
    texts = [path.read_text() for path in sorted(CASES_DIR.glob("*/Dockerfile"))]
    checked = 0
    for _ in range(1500):
        text = rng.choice(texts)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(PIECES) + text[at:]
        try:
            parsed = parse(text)
        except DockerfileError as error:
            warnings_before(text, error)
            continue
        try:
            planned = plan(parsed)
        except DockerfileError:
            planned = None
        try:
            check(parsed, planned)
        except DockerfileError:  # a bad # check= comment at the top
            continue
        checked += 1
    assert checked > 150  # enough mutants parse to exercise every rule

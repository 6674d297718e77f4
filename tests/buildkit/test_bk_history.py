"""Image history as BuildKit's dockerfile_history_test.go pins it down (the entries
after the base image's)."""

from __future__ import annotations

import pytest

HISTORY_DOCKERFILE = """\
FROM busybox AS base
ENV foo=bar
COPY foo /foo2
FROM busybox
LABEL lbl=val
COPY --from=base foo2 foo3
WORKDIR /
RUN echo bar > foo4
RUN ["ls"]
EXPOSE 2375 5000 1234/udp
"""


@pytest.fixture(scope="module")
def history(bk):
    built = bk.build(HISTORY_DOCKERFILE, {"foo": "contents0"})
    return built.history[1:]  # after the base image's one entry


CHECKS = [
    ("label-entry", lambda h: "lbl=val" in h[0]["created_by"], True),
    ("label-empty-layer", lambda h: h[0].get("empty_layer"), True),
    ("copy-entry", lambda h: "COPY foo2 foo3" in h[1]["created_by"], True),
    ("copy-has-layer", lambda h: bool(h[1].get("empty_layer")), False),
    ("workdir-entry", lambda h: "WORKDIR /" in h[2]["created_by"], True),
    ("workdir-root-empty-layer", lambda h: h[2].get("empty_layer"), True),
    ("run-entry", lambda h: "echo bar > foo4" in h[3]["created_by"], True),
    ("run-has-layer", lambda h: bool(h[3].get("empty_layer")), False),
    ("exec-run-entry", lambda h: "RUN ls" in h[4]["created_by"], True),
    ("expose-entry", lambda h: "EXPOSE" in h[5]["created_by"], True),
    ("expose-empty-layer", lambda h: h[5].get("empty_layer"), True),
    ("every-entry-dated", lambda h: all(entry.get("created") for entry in h), True),
]


@pytest.mark.parametrize(
    ("check", "expected"),
    [pytest.param(c, e, id=i, marks=pytest.mark.buildkit("testExportedHistory")) for i, c, e in CHECKS],
)
def test_history(history, check, expected):
    assert check(history) == expected


@pytest.fixture(scope="module")
def flattened(bk):
    built = bk.build("FROM busybox\nARG foo=bar\nARG bar=123\nARG foo=bar2\nRUN ls /etc/\n")
    return built.history[1:]


FLATTEN_CHECKS = [
    ("one-entry-per-arg-and-run", lambda h: len(h), 4),
    ("arg-entry", lambda h: "ARG bar=123" in h[1]["created_by"], True),
    ("redeclared-arg-entry", lambda h: "ARG foo=bar2" in h[2]["created_by"], True),
    ("run-names-command", lambda h: "ls /etc/" in h[3]["created_by"], True),
    ("run-lists-arg-count", lambda h: "RUN |2 " in h[3]["created_by"], True),
    ("run-lists-args-in-declared-order", lambda h: "RUN |2 foo=bar2 bar=123 " in h[3]["created_by"], True),
    ("run-has-last-value-only", lambda h: "foo=bar2" in h[3]["created_by"] and "foo=bar " not in h[3]["created_by"], True),
]


@pytest.mark.parametrize(
    ("check", "expected"),
    [pytest.param(c, e, id=i, marks=pytest.mark.buildkit("testExportedHistoryFlattenArgs")) for i, c, e in FLATTEN_CHECKS],
)
def test_history_flatten_args(flattened, check, expected):
    assert check(flattened) == expected

"""What a build shows while it runs (issue 13): whole multi-line instructions, RUN
output in the order it was written, JSON events for programs, plain lines
wherever a live display cannot run.

docs/progress.md documents the JSON events these tests read.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import subprocess
import sys

import pytest
from cli.clitools import cli_env, imgbuild, write_context
from imagetools import make_busybox_image, read_terminal, require_root_and_runc

from imgbuild.store import Store

pytestmark = pytest.mark.root


@pytest.fixture
def root(store_root):
    require_root_and_runc()
    make_busybox_image(Store(store_root), "busybox:latest")
    return store_root


def json_events(stream: str) -> list[dict]:
    """Every line of ``stream`` as a JSON event: a line that is not one fails the test."""
    return [json.loads(line) for line in stream.splitlines()]


# --- multi-line instructions ---------------------------------------------------------------------

MULTI_LINE = """\
FROM busybox
RUN echo first-part && \\
    echo second-part && \\
    exit 4
"""


def test_a_multi_line_instruction_is_shown_whole(root, tmp_path):
    context = write_context(tmp_path / "ctx", MULTI_LINE)
    plain = imgbuild(root, "build", "--progress", "plain", str(context))
    assert plain.returncode == 1
    whole = "RUN echo first-part &&     echo second-part &&     exit 4"
    assert f"#1 [1/1] {whole}" in plain.stderr.splitlines()
    # the error snippet quotes every line the instruction spans, each with its number
    snippet = plain.stderr[plain.stderr.index("error: Dockerfile:2:") :]
    assert "     2 | RUN echo first-part && \\" in snippet
    assert "     3 |     echo second-part && \\" in snippet
    assert "     4 |     exit 4" in snippet

    events = json_events(imgbuild(root, "build", "--progress", "json", str(context)).stderr)
    started = next(e for e in events if e["event"] == "step_started")
    assert (started["instruction"], started["line"], started["end_line"]) == (whole, 2, 4)
    failed = next(e for e in events if e["event"] == "build_failed")
    assert (failed["line"], failed["end_line"], failed["exit_code"]) == (2, 4, 1)


def test_a_dockerfile_error_quotes_every_line_of_its_instruction(root, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\nCOPY --nosuchflag=1 \\\n    a b\n")
    completed = imgbuild(root, "build", str(context))
    assert completed.returncode == 2
    assert "     2 | COPY --nosuchflag=1 \\\n     3 |     a b" in completed.stderr


# --- the output of a failed RUN ----------------------------------------------------------------------

INTERLEAVED = (
    "FROM busybox\n"
    "RUN i=0; while [ $i -lt 30 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done; "
    "echo last-words >&2; exit 3\n"
)


def test_failed_run_output_keeps_the_order_it_was_written_in(root, tmp_path):
    context = write_context(tmp_path / "ctx", INTERLEAVED)
    written = [f"{kind}-{i}" for i in range(30) for kind in ("out", "err")] + ["last-words"]
    for _ in range(3):  # the two streams raced through two pipes: the order varied from run to run
        completed = imgbuild(root, "build", "--progress", "plain", str(context))
        assert completed.returncode == 1
        shown = [line[3:] for line in completed.stderr.splitlines() if re.fullmatch(r"#1 (out|err)-\d+|#1 last-words", line)]
        assert shown == written
        tail = completed.stderr[completed.stderr.index("last 20 lines of its output:") :].splitlines()[1:21]
        assert [line.strip() for line in tail] == written[-20:]


def test_the_tail_of_a_short_output_says_line_not_lines(root, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo only-one; exit 5\n")
    completed = imgbuild(root, "build", str(context))
    assert completed.returncode == 1
    assert "last 1 line of its output:\n    only-one" in completed.stderr


# --- --progress json ------------------------------------------------------------------------------------


def test_json_progress_is_versioned_json_only(root, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\nCOPY data.txt /\nRUN echo json-output\n", {"data.txt": "x"})
    completed = imgbuild(root, "build", "--progress", "json", "-t", "json:1", str(context))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""
    events = json_events(completed.stderr)
    assert all(event["schema"] == 1 and isinstance(event["time"], float) for event in events)
    assert events[0]["event"] == "build_started" and events[-1]["event"] == "build_finished"
    output = [e for e in events if e["event"] == "step_output"]
    assert output and all(e["stream"] == "stdout+stderr" for e in output)
    assert "json-output\n" in "".join(e["output"] for e in output)
    image = Store(root).load_image("json:1")
    finished = events[-1]
    assert finished["image_id"] == image.config_descriptor.digest
    assert finished["digest"] == image.digest
    assert finished["tags"] == ["json:1"]


def test_json_progress_reports_a_failed_build_as_an_event(root, tmp_path):
    context = write_context(
        tmp_path / "ctx", "FROM busybox\nRUN echo before\nCOPY missing.txt /\nRUN true\n"
    )
    completed = imgbuild(root, "build", "--progress", "json", str(context))
    assert completed.returncode == 1
    events = json_events(completed.stderr)  # no "error:" text among the events
    failed_steps = [e for e in events if e["event"] == "step_failed"]
    assert [e["step"] for e in failed_steps] == [2]
    started = [e["step"] for e in events if e["event"] == "step_started"]
    assert 2 in started
    order = [(e["event"], e.get("step")) for e in events]
    assert order.index(("step_started", 2)) < order.index(("step_failed", 2))
    final = events[-1]
    assert final["event"] == "build_failed"
    assert final["exit_code"] == 1 and (final["file"], final["line"]) == ("Dockerfile", 3)
    assert "missing.txt" in final["error"]


def test_json_progress_reports_the_exit_status_of_a_failed_run(root, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN exit 7\n")
    events = json_events(imgbuild(root, "build", "--progress", "json", str(context)).stderr)
    failed = next(e for e in events if e["event"] == "step_failed")
    assert failed["exit_status"] == 7 and failed["line"] == 2


def test_json_progress_reports_a_usage_error_as_an_event(root, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\n")
    completed = imgbuild(root, "build", "--progress", "json", "--compression-level", "99", str(context))
    assert completed.returncode == 2
    (event,) = json_events(completed.stderr)
    assert event["event"] == "build_failed" and event["exit_code"] == 2
    assert "compression level" in event["error"]


# --- where a live display cannot run ----------------------------------------------------------------


def test_tty_progress_without_a_terminal_is_plain(root, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo no-terminal\n")
    completed = imgbuild(root, "build", "--progress", "tty", str(context))
    assert completed.returncode == 0, completed.stderr
    assert "#1 [1/1] RUN echo no-terminal" in completed.stderr.splitlines()
    assert "\x1b[" not in completed.stderr  # no cursor movement in a log file


def on_a_terminal(args: list[str], env: dict) -> tuple[int, str]:
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    output = read_terminal(leader)
    return process.wait(timeout=60), output.decode("utf-8", "replace")


@pytest.mark.parametrize(("ci", "plain"), [("false", False), ("0", False), ("true", True), ("1", True)])
def test_ci_false_is_not_ci(root, tmp_path, ci, plain):
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo on-a-terminal\n")
    args = [sys.executable, "-m", "imgbuild", "--root", str(root), "build", "--no-cache", str(context)]
    code, output = on_a_terminal(args, cli_env({"CI": ci}))
    assert code == 0, output
    assert ("#1 [1/1] RUN echo on-a-terminal" in output) == plain
    assert "[1/1] RUN echo on-a-terminal" in output


# --- the tty display: what reaches the terminal --------------------------------------------------

# Sequences a RUN step (or a package's install script) can print, and the
# Dockerfile can hold, that must not drive the user's terminal: set the
# window title (OSC), clear the screen, move the cursor, answer back (DECID),
# the 8-bit CSI (U+009B, as UTF-8: the output is decoded as UTF-8), a bell,
# a right-to-left override (U+202E) that would reorder what follows.
HOSTILE_OUTPUT = "\\033]0;pwned\\007\\033[2J\\033[10;10H\\033Z\\302\\233" "6n\\007\\342\\200\\256"
OUR_SEQUENCE = re.compile(r"\x1b\[(?:[0-9;]*m|[0-9]*A|J|\?25[lh])")  # colors, up, erase, cursor


def test_tty_display_keeps_escape_sequences_off_the_terminal(root, tmp_path):
    # The step fails, so its last lines stay in the display's last frame and
    # in the error the CLI prints; the title also rides in the Dockerfile's text.
    dockerfile = (
        "FROM busybox\n"
        f"RUN printf 'before\\n{HOSTILE_OUTPUT}after\\n\\033[31mred\\033[0m\\n'; echo '\x1b]0;in-dockerfile\x07'; exit 3\n"
    )
    context = write_context(tmp_path / "ctx", dockerfile)
    args = [sys.executable, "-m", "imgbuild", "--root", str(root), "build", "--no-cache", str(context)]
    code, output = on_a_terminal(args, cli_env())
    assert code == 1, output
    assert "✗ [1/1] RUN printf" in output  # the live display drew it, and the error follows
    assert "exited with code 3" in output
    shown = OUR_SEQUENCE.sub("", output)
    assert "after" in shown and "red" in shown  # the lines, without what drove the terminal
    for control in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert control not in shown, repr(shown)
    assert "in-dockerfile" not in shown  # an OSC is dropped whole (in the label, the output and the error)


def test_plain_output_keeps_what_a_step_wrote(root, tmp_path):
    # The plain display is a log, as BuildKit's: bytes as the step wrote them.
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN printf '\\033[31mred\\033[0m\\n'\n")
    completed = imgbuild(root, "build", "--no-cache", "--progress", "plain", str(context))
    assert completed.returncode == 0, completed.stderr
    assert "#1 \x1b[31mred\x1b[0m" in completed.stderr.splitlines()


def test_what_is_written_to_stderr_during_the_display_shows_above_it():
    """A logged warning or a stray print while the display is live (imgbuild's
    layer writer logs one for a socket it skips) goes above the frame, whole."""
    import threading

    from imgbuild.builder.terminal import LiveRegion

    leader, follower = pty.openpty()
    stream = os.fdopen(follower, "w", encoding="utf-8", closefd=True)
    steps = ["▶ [1/1] RUN make"]
    region = LiveRegion(stream, threading.RLock(), lambda: [("yellow", step, "  1.0s") for step in steps])
    saved = sys.stderr
    region.start()
    try:
        region.refresh()
        print("WARNING: skipping socket /tmp/x", file=sys.stderr)
        steps[0] = "✓ [1/1] RUN make"
        region.stop()
    finally:
        region.stop()
        assert sys.stderr is saved  # given back, whatever happened
    stream.close()
    screen = read_terminal(leader, timeout=5).decode()
    warning = screen.index("WARNING: skipping socket /tmp/x")
    assert screen.index("▶ [1/1] RUN make") < warning < screen.rindex("✓ [1/1] RUN make  1.0s")
    assert screen.endswith("✓ [1/1] RUN make  1.0s\x1b[0m\r\n\x1b[?25h")


def test_a_terminal_that_went_away_does_not_end_the_build():
    """Closing the terminal (an ssh session that dropped) makes its writes fail
    with EIO; the display gives up drawing and the build goes on."""
    import threading

    from imgbuild.builder.terminal import LiveRegion

    leader, follower = pty.openpty()
    stream = os.fdopen(follower, "w", encoding="utf-8", closefd=True)
    region = LiveRegion(stream, threading.RLock(), lambda: [("", "▶ [1/1] RUN make", "  1.0s")])
    region.start()
    os.close(leader)
    try:
        region.refresh()
        region.stop()  # neither raises
    finally:
        region.stop()
        with contextlib.suppress(OSError):  # what the failed writes left in the buffer
            stream.close()

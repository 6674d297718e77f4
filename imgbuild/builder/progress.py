"""Build progress for people and machines: a live display, plain lines, JSON events.

The engine calls one ``Progress`` object; which one is chosen by ``--progress``
(``auto`` means tty on a terminal, plain when ``CI`` is set or the stream is not
a terminal; ``tty`` without a terminal is plain too). Every method is
thread-safe because stages build concurrently. The JSON events and their
fields are documented in docs/progress.md; ``SCHEMA`` is their version.
"""

from __future__ import annotations

import codecs
import json
import os
import sys
import threading
import time
from collections import deque
from dataclasses import field

from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError, UsageError, exit_code_of
from imgbuild.units import human_size

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from typing import TextIO

MODES = ("auto", "tty", "plain", "json", "quiet")
SCHEMA = 1  # of the JSON events: a field renamed or retyped makes it 2 (docs/progress.md)
# RUN's stdout and stderr share one pipe, so that their order is kept (docs/progress.md)
RUN_OUTPUT = "stdout+stderr"


@dataclass
class Step:
    """One build step as the user sees it: ``[stage 2/5] RUN make``."""

    number: int  # global, 1-based, in the order steps start
    stage: str
    index: int  # 1-based within the stage
    count: int  # steps in the stage
    text: str  # the instruction, its continuation lines joined (as BuildKit shows it)
    line: int = 0  # where it is in the Dockerfile: first and last line (0: not known)
    end_line: int = 0
    state: str = "waiting"  # waiting, running, cached, done, failed
    started: float = 0.0
    duration: float = 0.0
    tail: deque = field(default_factory=lambda: deque(maxlen=6))
    miss: str | None = None  # why it missed the cache (imgbuild.cache.explain), when asked
    partial: str = ""  # output after its last newline, shown once the line ends
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    @property
    def label(self) -> str:
        prefix = f"{self.stage} " if self.stage else ""
        return f"[{prefix}{self.index}/{self.count}] {self.text}"


@dataclass
class Summary:
    """The lines printed when a build finished: image, size, step counts and tags."""

    image_digest: str
    config_digest: str
    size: int
    steps_cached: int
    steps_run: int
    seconds: float
    tags: list[str] = field(default_factory=list)


def choose_mode(mode: str, stream: TextIO | None = None) -> str:
    if mode not in MODES:
        raise UsageError(f"--progress must be one of {', '.join(MODES[:-1])}, not {mode!r}")
    stream = stream or sys.stderr
    if mode == "auto":
        return "plain" if in_ci() or not stream.isatty() else "tty"
    if mode == "tty" and not stream.isatty():
        return "plain"  # a live display needs a terminal; a log file gets lines
    return mode


def in_ci() -> bool:
    """``CI`` set to something other than false (CI=false is a common way to say "not CI")."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def make_progress(mode: str, stream: TextIO | None = None, *, explain: bool = False) -> Progress:
    """``explain`` (``--explain``): list why each step missed after the build."""
    stream = stream or sys.stderr
    mode = choose_mode(mode, stream)
    if mode == "tty":
        progress: Progress = TtyProgress(stream)
    elif mode == "json":
        progress = JsonProgress(stream)
    elif mode == "quiet":
        progress = Progress()
    else:
        progress = PlainProgress(stream)
    progress.explain = explain
    return progress


class Progress:
    """Silent base: records steps and counts, shows nothing."""

    # Whether the display shows why each step missed as it starts (plain and
    # JSON always do); ``explain`` lists them after the build (--explain).
    shows_misses = False

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.steps: list[Step] = []
        self.explain = False

    @property
    def wants_misses(self) -> bool:
        return self.shows_misses or self.explain

    def begin(self) -> None:
        with self.lock:
            self._show_begin()

    def new_step(self, stage: str, index: int, count: int, text: str, line: int = 0, end_line: int = 0) -> Step:
        with self.lock:
            step = Step(len(self.steps) + 1, stage, index, count, " ".join(text.splitlines()), line, end_line or line)
            self.steps.append(step)
            return step

    def started(self, step: Step, miss: str | None = None) -> None:
        with self.lock:
            step.state = "running"
            step.miss = miss
            step.started = time.monotonic()
            self._show_started(step)

    def cached(self, step: Step) -> None:
        with self.lock:
            step.state = "cached"
            self._show_cached(step)

    def output(self, step: Step, data: bytes, stream: str = RUN_OUTPUT) -> None:
        """Output of a running step, in chunks as it comes: shown a whole line at a time."""
        with self.lock:
            lines = (step.partial + step.decoder.decode(data)).split("\n")
            step.partial = lines.pop()
            self._lines(step, lines, stream)

    def _flush(self, step: Step) -> None:
        """The output's last line, if it did not end with a newline."""
        rest = step.partial + step.decoder.decode(b"", final=True)
        step.partial = ""
        if rest:
            self._lines(step, [rest], RUN_OUTPUT)

    def _lines(self, step: Step, lines: list[str], stream: str) -> None:
        if lines:
            step.tail.extend(lines)
            self._show_output(step, lines, stream)

    def done(self, step: Step) -> None:
        with self.lock:
            self._flush(step)
            step.state = "done"
            step.duration = time.monotonic() - step.started
            self._show_done(step)

    def failed(self, step: Step, message: str, exit_status: int | None = None) -> None:
        """A step failed; ``exit_status`` is a RUN command's. A step that failed
        before it started (a COPY source missing) is shown started first."""
        with self.lock:
            if step.state == "waiting":
                self.started(step)
            self._flush(step)
            step.state = "failed"
            step.duration = time.monotonic() - step.started if step.started else 0.0
            self._show_failed(step, message, exit_status)

    def build_failed(self, error: ImgbuildError) -> None:
        """The build ended with ``error``: the JSON display reports it (and marks
        it reported, so the CLI does not print it again); the others leave it to the CLI."""
        with self.lock:
            self._show_build_failed(error)

    def info(self, message: str) -> None:
        with self.lock:
            self._show_info(message)

    def warning(self, message: str) -> None:
        with self.lock:
            self._show_warning(message)

    def check_warning(self, warning) -> None:
        """A build check's warning (``imgbuild.dockerfile.checks.CheckWarning``)."""
        with self.lock:
            self._show_check(warning)

    def _show_check(self, warning) -> None:
        self._show_warning(warning.format())

    def finished(self, summary: Summary) -> None:
        with self.lock:
            if self.explain:
                self._show_misses(miss_lines(self.steps))
            self._show_summary(summary)

    def close(self) -> None:
        pass

    # what each display does; the silent base does nothing
    def _show_begin(self) -> None: ...
    def _show_started(self, step: Step) -> None: ...
    def _show_cached(self, step: Step) -> None: ...
    def _show_output(self, step: Step, lines: list[str], stream: str) -> None: ...
    def _show_done(self, step: Step) -> None: ...
    def _show_failed(self, step: Step, message: str, exit_status: int | None) -> None: ...
    def _show_build_failed(self, error: ImgbuildError) -> None: ...
    def _show_info(self, message: str) -> None: ...
    def _show_warning(self, message: str) -> None: ...
    def _show_summary(self, summary: Summary) -> None: ...
    def _show_misses(self, lines: list[str]) -> None: ...


def miss_lines(steps: list[Step]) -> list[str]:
    """``--explain`` after the build: a line per step that ran, saying why."""
    missed = [step for step in steps if step.miss]
    if not missed:
        return ["every step was cached"] if steps and all(s.state == "cached" for s in steps) else []
    return ["why steps missed the cache:"] + [f"  {step.label}: {step.miss}" for step in missed]


def summary_lines(summary: Summary) -> list[str]:
    # "image ID" is Docker's: the config digest (what -q and --iidfile give);
    # the digest is the manifest's (NAME@DIGEST, --metadata-file's containerimage.digest)
    lines = [
        f"image ID {summary.config_digest}",
        f"  digest {summary.image_digest}, size {human_size(summary.size)}",
        f"  steps: {summary.steps_cached} cached, {summary.steps_run} run, {summary.seconds:.1f}s",
    ]
    lines += [f"  tagged {tag}" for tag in summary.tags]
    return lines


class PlainProgress(Progress):
    """BuildKit-style plain lines, one event a line, for CI logs."""

    def __init__(self, stream: TextIO):
        super().__init__()
        self.stream = stream

    def _print(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    shows_misses = True

    def _show_started(self, step: Step) -> None:
        self._print(f"#{step.number} {step.label}")
        if step.miss:
            self._print(f"#{step.number} miss: {step.miss}")

    def _show_cached(self, step: Step) -> None:
        self._print(f"#{step.number} {step.label}")
        self._print(f"#{step.number} CACHED")

    def _show_output(self, step: Step, lines: list[str], stream: str) -> None:
        for line in lines:
            self._print(f"#{step.number} {line}")

    def _show_done(self, step: Step) -> None:
        self._print(f"#{step.number} DONE {step.duration:.1f}s")

    def _show_failed(self, step: Step, message: str, exit_status: int | None) -> None:
        self._print(f"#{step.number} ERROR: {message.splitlines()[0] if message else ''}")

    def _show_info(self, message: str) -> None:
        self._print(message)

    def _show_warning(self, message: str) -> None:
        self._print(f"WARNING: {message}")

    def _show_summary(self, summary: Summary) -> None:
        for line in summary_lines(summary):
            self._print(line)

    def _show_misses(self, lines: list[str]) -> None:
        for line in lines:
            self._print(line)


class JsonProgress(Progress):
    """One JSON object a line, for programs that watch a build (docs/progress.md).

    Nothing else is written to its stream while it is in use: warnings that
    imgbuild logs become ``warning`` events, and the error that ends a build
    is a ``build_failed`` event instead of the CLI's ``error:`` line.
    """

    def __init__(self, stream: TextIO):
        super().__init__()
        self.stream = stream
        import logging  # only here: a cached build taken from its record prints without it

        self.log_handler = _event_log_handler(self)
        logging.getLogger("imgbuild").addHandler(self.log_handler)

    def _emit(self, event: str, **fields) -> None:
        record = {"event": event, "schema": SCHEMA, "time": round(time.time(), 3), **fields}
        self.stream.write(json.dumps(record, sort_keys=True) + "\n")
        self.stream.flush()

    shows_misses = True

    def _step_fields(self, step: Step) -> dict:
        fields = {
            "step": step.number,
            "stage": step.stage,
            "index": step.index,
            "count": step.count,
            "instruction": step.text,
            "line": step.line,
            "end_line": step.end_line,
        }
        if step.miss:
            fields["miss"] = step.miss
        return fields

    def _show_begin(self) -> None:
        from imgbuild import __version__

        self._emit("build_started", version=__version__)

    def _show_started(self, step: Step) -> None:
        self._emit("step_started", **self._step_fields(step))

    def _show_cached(self, step: Step) -> None:
        self._emit("step_cached", **self._step_fields(step))

    def _show_output(self, step: Step, lines: list[str], stream: str) -> None:
        self._emit("step_output", step=step.number, stream=stream, output="".join(line + "\n" for line in lines))

    def _show_done(self, step: Step) -> None:
        self._emit("step_done", duration=round(step.duration, 3), **self._step_fields(step))

    def _show_failed(self, step: Step, message: str, exit_status: int | None) -> None:
        fields = {"error": message, "duration": round(step.duration, 3), **self._step_fields(step)}
        if exit_status is not None:
            fields["exit_status"] = exit_status
        self._emit("step_failed", **fields)

    def _show_build_failed(self, error: ImgbuildError) -> None:
        fields: dict = {"error": str(error), "exit_code": exit_code_of(error)}
        if error.location is not None:
            fields["file"] = error.location.filename
            fields["line"] = error.location.line
            fields["end_line"] = error.location.line + max(len(error.location.text.splitlines()), 1) - 1
        self._emit("build_failed", **fields)
        error.reported = True

    def _show_info(self, message: str) -> None:
        self._emit("info", message=message)

    def _show_warning(self, message: str) -> None:
        self._emit("warning", message=message)

    def _show_check(self, warning) -> None:
        self._emit("warning", message=warning.format(), check=warning.to_json())

    def _show_summary(self, summary: Summary) -> None:
        self._emit(
            "build_finished",
            image_id=summary.config_digest,
            digest=summary.image_digest,
            # the names of schema 0, kept for the programs that read them
            image=summary.image_digest,
            config=summary.config_digest,
            size=summary.size,
            cached=summary.steps_cached,
            run=summary.steps_run,
            seconds=round(summary.seconds, 3),
            tags=summary.tags,
        )

    def close(self) -> None:
        import logging

        logging.getLogger("imgbuild").removeHandler(self.log_handler)


def _event_log_handler(progress: JsonProgress):
    """A handler that makes imgbuild's logged warnings ``warning`` events (not text on the JSON stream)."""
    import logging

    class EventLogHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            progress.warning(record.getMessage())

    return EventLogHandler(logging.WARNING)


class TtyProgress(Progress):
    """A live display on a terminal: every step with its state and time, a
    tail of running output (``terminal.LiveRegion``; what it shows from
    outside is stripped of control characters there)."""

    STATE_STYLE = {
        "waiting": ("dim", "·"),
        "running": ("yellow", "▶"),
        "cached": ("cyan", "✓"),
        "done": ("green", "✓"),
        "failed": ("bold red", "✗"),
    }

    def __init__(self, stream: TextIO):
        super().__init__()
        from imgbuild.builder.terminal import LiveRegion

        self.messages: list[str] = []
        self.region = LiveRegion(stream, self.lock, self._frame)
        self.region.start()

    def _frame(self) -> list[tuple[str, str, str]]:
        lines = [("yellow", message, "") for message in self.messages]
        for step in self.steps:
            style, mark = self.STATE_STYLE[step.state]
            seconds = time.monotonic() - step.started if step.state == "running" else step.duration
            timing = "CACHED" if step.state == "cached" else f"{seconds:.1f}s"
            lines.append((style, f"{mark} {step.label}", f"  {timing}"))
            if step.miss:
                lines.append(("dim", f"    miss: {step.miss}", ""))
            if step.state in ("running", "failed"):
                lines += [("dim", f"    {tail_line}", "") for tail_line in step.tail]
        return lines

    def _show_warning(self, message: str) -> None:
        self.messages.append(f"WARNING: {message}")

    def _show_info(self, message: str) -> None:
        self.messages.append(message)

    def _show_summary(self, summary: Summary) -> None:
        self.region.stop()
        for line in summary_lines(summary):
            self.region.print(line)

    def _show_misses(self, lines: list[str]) -> None:
        self.region.stop()
        for line in lines:
            self.region.print(line)

    def close(self) -> None:
        self.region.stop()

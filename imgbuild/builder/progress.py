"""Build progress for people and machines: a live rich display, plain lines, JSON events.

The engine calls one ``Progress`` object; which one is chosen by ``--progress``
(``auto`` means tty on a terminal, plain when ``CI`` is set or stdout is not a
terminal). Every method is thread-safe because stages build concurrently.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

from imgbuild.errors import UsageError
from imgbuild.units import human_size

MODES = ("auto", "tty", "plain", "json", "quiet")


@dataclass
class Step:
    """One build step as the user sees it: ``[stage 2/5] RUN make``."""

    number: int  # global, 1-based, in the order steps start
    stage: str
    index: int  # 1-based within the stage
    count: int  # steps in the stage
    text: str  # the instruction as written (first line)
    state: str = "waiting"  # waiting, running, cached, done, failed
    started: float = 0.0
    duration: float = 0.0
    tail: deque = field(default_factory=lambda: deque(maxlen=6))
    miss: str | None = None  # why it missed the cache (imgbuild.cache.explain), when asked


    @property
    def label(self) -> str:
        prefix = f"{self.stage} " if self.stage else ""
        return f"[{prefix}{self.index}/{self.count}] {self.text}"


@dataclass
class Summary:
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
    if mode != "auto":
        return mode
    stream = stream or sys.stderr
    if os.environ.get("CI") or not stream.isatty():
        return "plain"
    return "tty"


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

    def new_step(self, stage: str, index: int, count: int, text: str) -> Step:
        with self.lock:
            step = Step(len(self.steps) + 1, stage, index, count, text.splitlines()[0] if text else "")
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

    def output(self, step: Step, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        with self.lock:
            for line in text.splitlines():
                step.tail.append(line)
            self._show_output(step, text)

    def done(self, step: Step) -> None:
        with self.lock:
            step.state = "done"
            step.duration = time.monotonic() - step.started
            self._show_done(step)

    def failed(self, step: Step, message: str) -> None:
        with self.lock:
            step.state = "failed"
            step.duration = time.monotonic() - step.started if step.started else 0.0
            self._show_failed(step, message)

    def info(self, message: str) -> None:
        with self.lock:
            self._show_info(message)

    def warning(self, message: str) -> None:
        with self.lock:
            self._show_warning(message)

    def finished(self, summary: Summary) -> None:
        with self.lock:
            if self.explain:
                self._show_misses(miss_lines(self.steps))
            self._show_summary(summary)

    def close(self) -> None:
        pass

    # what each display does; the silent base does nothing
    def _show_started(self, step: Step) -> None: ...
    def _show_cached(self, step: Step) -> None: ...
    def _show_output(self, step: Step, text: str) -> None: ...
    def _show_done(self, step: Step) -> None: ...
    def _show_failed(self, step: Step, message: str) -> None: ...
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

    def _show_output(self, step: Step, text: str) -> None:
        for line in text.splitlines():
            self._print(f"#{step.number} {line}")

    def _show_done(self, step: Step) -> None:
        self._print(f"#{step.number} DONE {step.duration:.1f}s")

    def _show_failed(self, step: Step, message: str) -> None:
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
    """One JSON object a line, for programs that watch a build."""

    def __init__(self, stream: TextIO):
        super().__init__()
        self.stream = stream

    def _emit(self, event: str, **fields) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        self.stream.write(json.dumps(record, sort_keys=True) + "\n")
        self.stream.flush()

    shows_misses = True

    def _step_fields(self, step: Step) -> dict:
        fields = {"step": step.number, "stage": step.stage, "index": step.index, "count": step.count, "instruction": step.text}
        if step.miss:
            fields["miss"] = step.miss
        return fields

    def _show_started(self, step: Step) -> None:
        self._emit("step_started", **self._step_fields(step))

    def _show_cached(self, step: Step) -> None:
        self._emit("step_cached", **self._step_fields(step))

    def _show_output(self, step: Step, text: str) -> None:
        self._emit("step_output", step=step.number, output=text)

    def _show_done(self, step: Step) -> None:
        self._emit("step_done", duration=round(step.duration, 3), **self._step_fields(step))

    def _show_failed(self, step: Step, message: str) -> None:
        self._emit("step_failed", error=message, duration=round(step.duration, 3), **self._step_fields(step))

    def _show_info(self, message: str) -> None:
        self._emit("info", message=message)

    def _show_warning(self, message: str) -> None:
        self._emit("warning", message=message)

    def _show_summary(self, summary: Summary) -> None:
        self._emit(
            "build_finished",
            image=summary.image_digest,
            config=summary.config_digest,
            size=summary.size,
            cached=summary.steps_cached,
            run=summary.steps_run,
            seconds=round(summary.seconds, 3),
            tags=summary.tags,
        )


class TtyProgress(Progress):
    """A live rich display: every step with its state and time, a tail of running output."""

    STATE_STYLE = {
        "waiting": ("dim", "·"),
        "running": ("yellow", "▶"),
        "cached": ("cyan", "✓"),
        "done": ("green", "✓"),
        "failed": ("bold red", "✗"),
    }

    def __init__(self, stream: TextIO):
        super().__init__()
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream)
        self.messages: list[str] = []
        self.live = Live(console=self.console, refresh_per_second=8, transient=False, get_renderable=self._render)
        self.live.start()

    def _render(self):
        from rich.console import Group
        from rich.text import Text

        with self.lock:
            lines = []
            for message in self.messages:
                lines.append(Text(message, style="yellow"))
            for step in self.steps:
                style, mark = self.STATE_STYLE[step.state]
                seconds = time.monotonic() - step.started if step.state == "running" else step.duration
                timing = "CACHED" if step.state == "cached" else f"{seconds:.1f}s"
                lines.append(Text(f"{mark} {step.label}  {timing}", style=style))
                if step.miss:
                    lines.append(Text(f"    miss: {step.miss}", style="dim"))
                if step.state in ("running", "failed"):
                    for tail_line in step.tail:
                        lines.append(Text(f"    {tail_line}", style="dim"))
            return Group(*lines)

    def _show_warning(self, message: str) -> None:
        self.messages.append(f"WARNING: {message}")

    def _show_info(self, message: str) -> None:
        self.messages.append(message)

    def _show_summary(self, summary: Summary) -> None:
        self.live.stop()
        for line in summary_lines(summary):
            self.console.print(line, highlight=False)

    def _show_misses(self, lines: list[str]) -> None:
        self.live.stop()
        for line in lines:
            self.console.print(line, highlight=False, markup=False)

    def close(self) -> None:
        self.live.stop()

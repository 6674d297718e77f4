"""The tty display's terminal: lines at its bottom redrawn in place, and text made safe to show.

What the display shows comes partly from outside: the Dockerfile's text, file
names of the context, what RUN steps print. ``printable`` keeps the escape
sequences and other control characters in it from reaching the terminal,
where they could move the cursor, clear the screen, retitle the window or
answer back (rich, which drew the display before, passed ESC sequences on).
The plain display is a log, as BuildKit's is, and is left as written.

``LiveRegion`` is what rich's ``Live`` did for us, in the little the display
needs: about 1 ms to import instead of 20, which every interactive build paid.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from typing import TextIO

# CSI (colors, cursor movement, erasing), OSC (window title, hyperlinks,
# clipboard), DCS/SOS/PM/APC strings and the other ESC sequences, in their
# 7-bit and 8-bit (C1) forms: dropped whole, so that colored output reads cleanly.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)

STYLES = {"dim": "2", "yellow": "33", "cyan": "36", "green": "32", "bold red": "1;31"}
REFRESH_SECONDS = 0.125  # 8 frames a second, as rich's Live drew them


def printable(text: str) -> str:
    """``text`` as a terminal should show it in one line: what a carriage
    return leaves of a rewritten line (a progress bar's last state), without
    escape sequences, tabs as spaces, the rest as ``safe_chars`` leaves it."""
    text = text.rstrip("\r").rpartition("\r")[2]
    return safe_chars(_ESCAPE_SEQUENCE.sub("", text).expandtabs())


def safe_chars(text: str) -> str:
    """``text`` with nothing a terminal would act on or hide: bytes that were
    not UTF-8 (kept with surrogate escapes, as file names are) as U+FFFD, and
    every character that is not printable (controls, format characters such
    as bidirectional overrides) as "?". For file names and instructions in
    the verbs' tables as much as for the tty display."""
    if text.isascii() and text.isprintable():
        return text
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


def fit(text: str, columns: int) -> str:
    """``text`` cut to ``columns`` terminal cells: a line that wraps would throw
    off the count of lines to move back up over."""
    if text.isascii():
        return text if len(text) <= columns else text[: columns - 3] + "..."
    import unicodedata  # only for text that is not ASCII

    widths = [0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text]
    if sum(widths) <= columns:
        return text
    used = 0
    for index, width in enumerate(widths):
        if used + width > columns - 3:
            return text[:index] + "..."
        used += width
    return text


class LiveRegion:
    """The last lines of a terminal, redrawn in place until ``stop``.

    ``frame()`` gives the lines as (style, text, end): style a key of STYLES
    or "", end what must stay visible at the line's end when the text is cut
    to the terminal's width (a step's time). It is called with ``lock`` held,
    the lock its data is kept under; its text is made ``printable`` here. The
    region redraws on a timer (running steps' times change) and on ``refresh()``.

    While it is live, what else is written to sys.stdout or sys.stderr (a
    logged warning, a stray print) is kept and printed above the region,
    instead of landing in the middle of it.
    """

    def __init__(self, stream: TextIO, lock: threading.RLock, frame: Callable[[], list[tuple[str, str, str]]]):
        self.stream = stream
        self.lock = lock
        self.frame = frame
        self.colors = "NO_COLOR" not in os.environ  # https://no-color.org
        self.drawn = 0  # lines of the frame on the screen
        self.live = False
        self.written: list[str] = []  # what others wrote meanwhile, not yet printed
        self.partial = ""  # ... after its last newline
        self.saved: tuple[TextIO, TextIO] | None = None
        self.stopped = threading.Event()

    def start(self) -> None:
        with self.lock:
            self.live = True
            self.saved = (sys.stdout, sys.stderr)
            sys.stdout = _Redirected(self, sys.stdout)
            sys.stderr = _Redirected(self, sys.stderr)
        threading.Thread(target=self._redraw_until_stopped, name="progress", daemon=True).start()

    def refresh(self) -> None:
        with self.lock:
            if self.live:
                self._draw(final=False)

    def stop(self) -> None:
        """Draw the last frame whole and leave it on the screen; idempotent."""
        with self.lock:
            if not self.live:
                return
            self.live = False
            self.stopped.set()
            sys.stdout, sys.stderr = self.saved
            if self.partial:  # written without a newline at the end
                self.written.append(self.partial)
                self.partial = ""
            self._draw(final=True)

    def print(self, line: str) -> None:
        """A line below the region, once it stopped."""
        self.stream.write(printable(line) + "\n")
        self.stream.flush()

    def take_written(self, text: str) -> None:
        with self.lock:
            lines = (self.partial + text).split("\n")
            self.partial = lines.pop()
            self.written += lines

    def _redraw_until_stopped(self) -> None:
        # The thread takes the lock only to draw and never holds it while it
        # waits, so stop() (called with the lock held) need not join it.
        while not self.stopped.wait(REFRESH_SECONDS):
            self.refresh()

    def _draw(self, final: bool) -> None:
        columns, rows = _terminal_size(self.stream)
        width = columns - 1  # a line as wide as the terminal wraps on some terminals
        lines = [(style, fit(printable(text), width - len(end)) + end) for style, text, end in self.frame()]
        above = [fit(printable(text), width) for text in self.written]
        self.written = []
        if not final and len(lines) > rows - 1:  # the cursor cannot move above the screen's top
            lines = lines[len(lines) - (rows - 1) :]
        if not (self.drawn or lines or above):
            return  # nothing shown yet: a build taken whole from its record may never show a frame
        parts = [f"\r\x1b[{self.drawn}A" if self.drawn else "", "\x1b[J"]
        parts += [text + "\n" for text in above]
        parts += [self._styled(style, text) + "\n" for style, text in lines]
        parts.append("\x1b[?25h" if final else "\x1b[?25l")  # no cursor blinking in the frame
        try:
            self.stream.write("".join(parts))
            self.stream.flush()
        except OSError:  # the terminal went away (a closed ssh session): the build goes on without it
            self.drawn = 0
            return
        self.drawn = 0 if final else len(lines)

    def _styled(self, style: str, text: str) -> str:
        if not (self.colors and style):
            return text
        return f"\x1b[{STYLES[style]}m{text}\x1b[0m"


class _Redirected:
    """sys.stdout or sys.stderr while a region is live: text goes above it;
    everything else (fileno, encoding, ...) is the stream's."""

    def __init__(self, region: LiveRegion, stream: TextIO):
        self._region = region
        self._stream = stream

    def write(self, text: str) -> int:
        self._region.take_written(text)
        return len(text)

    def flush(self) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _terminal_size(stream: TextIO) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):  # not a terminal after all, or closed
        return 80, 24
    # 0: a terminal that never said (a pseudo-terminal nobody sized); a tiny
    # one is drawn as if it were a little bigger, which it then wraps
    return max(size.columns or 80, 20), max(size.lines or 24, 3)

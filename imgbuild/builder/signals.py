"""Signals that stop a build the way Ctrl-C does, so that every ``with`` block
unwinds: mounts are unmounted, containers deleted, scratch removed."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from imgbuild.errors import Terminated


def signals_raise_interrupt():
    """SIGTERM behaves like Ctrl-C: the build stops and cleans up (main thread only)."""
    return signal_raises(signal.SIGTERM, Terminated)


@contextmanager
def signal_raises(signum: int, exception: type[BaseException]):
    """Within the block, signal ``signum`` raises ``exception`` (an interrupt the
    ``with`` blocks unwind from); a no-op outside the main thread, where Python
    cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise exception

    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)

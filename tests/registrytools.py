"""Starting Debian's docker-registry for tests: free ports, readiness, no leftovers."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import time

import requests

PR_SET_PDEATHSIG = 1  # prctl(2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """In the child (preexec_fn): get SIGTERM when pytest dies, so a killed test
    run leaves no registry behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_for_registry(host: str, process: subprocess.Popen | None = None, seconds: float = 30) -> None:
    """Poll ``http://HOST/v2/`` until it answers (any status)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"docker-registry on {host} exited with {process.returncode}")
        try:
            requests.get(f"http://{host}/v2/", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"docker-registry on {host} did not answer within {seconds:.0f} s")

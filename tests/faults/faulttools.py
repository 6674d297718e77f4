"""Helpers for the fault tests: what a killed build may leave under a store."""

from __future__ import annotations

import io
import random
import socket
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from comparetools import mounts_under, runc_containers_under

FILESYSTEM_BYTES = 64 << 20  # the small file system (conftest.small_fs) a store fills


def random_layer(seed: int, size: int) -> bytes:
    """A layer tar holding one file of ``size`` seeded random (incompressible) bytes."""
    data = random.Random(seed).randbytes(size)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data-{seed}.bin")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def clear_leftovers(root: Path) -> None:
    """After a failed check: delete what a killed build left, so later tests run."""
    for container in runc_containers_under(root):
        subprocess.run(["runc", "delete", "--force", container], capture_output=True)
    for point in mounts_under(root):  # deepest first
        subprocess.run(["umount", "-l", point], capture_output=True)


class SlowProxy:
    """A TCP relay on 127.0.0.1 to ``upstream`` ("host:port") at a bounded rate.

    Loopback moves a registry's blobs at hundreds of MB/s, so a pull or push
    is over before a kill can land in it; through this relay a transfer lasts
    long enough to be interrupted. Each direction of each connection is held
    to ``rate`` bytes a second. The registry behind it is the real one: it
    builds its upload locations from the Host header, so they name the relay.
    """

    def __init__(self, upstream: str, rate: int):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rate = rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # accept() wakes up to see ``stopped``
        self.stopped = threading.Event()
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> SlowProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        chunk = 64 << 10
        try:
            while data := source.recv(chunk):
                sink.sendall(data)
                time.sleep(len(data) / self.rate)
        except OSError:
            pass  # the other side went away (a killed client): close both
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()


@dataclass
class FaultStats:
    runs: dict[str, int] = field(default_factory=dict)  # kill -9 runs by kind: builds, pulls, pushes
    leftovers: int = 0
    mismatches: int = 0
    finished_first: int = 0  # operations that ended before their kill came

    def add(self, kind: str, leftovers: list[str], mismatch: bool, finished_first: bool) -> None:
        """Count one kill -9 run of ``kind`` and what the check after it found."""
        self.runs[kind] = self.runs.get(kind, 0) + 1
        self.leftovers += len(leftovers)
        self.mismatches += bool(mismatch)
        self.finished_first += bool(finished_first)

    def summary(self) -> str:
        total = sum(self.runs.values())
        kinds = ", ".join(f"{count} {kind}" for kind, count in self.runs.items())
        line = (
            f"faults: {total} kill -9 runs ({kinds}), {self.leftovers} leftovers, "
            f"{self.mismatches} digest mismatches"
        )
        if self.finished_first:
            line += f" ({self.finished_first} ended before the kill)"
        return line


FAULTS = FaultStats()  # the kill -9 runs of this pytest session

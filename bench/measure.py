"""Wall time and peak memory of one command, and of a running daemon.

Peak memory of a command is the ru_maxrss of its process tree as wait4 sees
it: the largest resident set of any single process in the tree that was
waited for (the command itself, runc, the RUN process...), not the sum.
GNU time takes it (its %M is wait4's ru_maxrss) because a child spawned
straight from this process would be charged this process's own peak: Linux
carries the high-water mark of the memory a process had before exec into its
ru_maxrss, and Python's subprocess uses vfork, so that memory is ours. GNU
time forks from a process of about 1.5 MB, so its child starts clean.
A daemon's peak is its VmHWM from /proc/PID/status; writing "5" to
/proc/PID/clear_refs resets that high-water mark to the current RSS, so each
build gets its own figure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CommandRun:
    argv: list[str]
    seconds: float
    peak_kb: int
    cpu_s: float  # user + system CPU of the command's waited-for tree
    machine_busy_s: float  # CPU seconds the whole machine was busy meanwhile
    exit_code: int
    timed_out: bool
    log_path: Path


GNU_TIME = "/usr/bin/time"


def run_measured(
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    timeout: float = 900.0,
) -> CommandRun:
    """Run argv with its output going to log_path; time it and take its max RSS."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    usage_path = log_path.with_suffix(".usage")
    wrapped = [GNU_TIME, "-f", "%M %U %S", "-o", str(usage_path), "--", *argv]
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        busy_before = machine_busy_seconds()
        start = time.monotonic()
        # Its own session, so a timeout can kill the whole tree.
        process = subprocess.Popen(
            wrapped, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        killed = threading.Event()
        timer = threading.Timer(timeout, _kill_group, args=(process.pid, killed))
        timer.start()
        try:
            process.wait()
        finally:
            timer.cancel()
        seconds = time.monotonic() - start
        busy = machine_busy_seconds() - busy_before
    peak, cpu = _read_usage(usage_path)
    return CommandRun(
        argv=argv, seconds=seconds, peak_kb=peak, cpu_s=cpu, machine_busy_s=busy,
        exit_code=process.returncode, timed_out=killed.is_set(), log_path=log_path,
    )


def _read_usage(path: Path) -> tuple[int, float]:
    """GNU time's "%M %U %S" line: (max RSS KiB, CPU seconds); (0, 0.0) if missing.

    On failure GNU time writes a "Command exited with ..." line first.
    """
    try:
        peak, user, system = path.read_text().strip().splitlines()[-1].split()
        return int(peak), float(user) + float(system)
    except (FileNotFoundError, IndexError, ValueError):
        return 0, 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(threshold: float, max_wait: float, window: float = 0.5) -> tuple[float, float]:
    """Wait until the machine used under threshold cores over the last window.

    Other people's work on a shared machine lands inside a tool's timing; this
    lets a burst pass. Gives up after max_wait. Returns (seconds waited, cores
    busy in the last window).
    """
    start = time.monotonic()
    while True:
        before = machine_busy_seconds()
        time.sleep(window)
        cores = (machine_busy_seconds() - before) / window
        waited = time.monotonic() - start
        if cores < threshold or waited >= max_wait:
            return waited, cores


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its reaped children (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    # utime, stime, cutime, cstime are fields 14-17 of stat; 12-15 after "(comm) ".
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _kill_group(pid: int, killed: threading.Event) -> None:
    killed.set()
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def reset_peak(pid: int) -> None:
    """Reset a process's VmHWM to its current RSS (Linux >= 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def peak_kb(pid: int) -> int:
    """VmHWM of a running process, in KiB (0 if it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def process_name(pid: int) -> str:
    """The command name of a running process ("" if there is none)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def children_named(parent_pid: int, name: str) -> list[int]:
    """PIDs of the direct children of parent_pid whose command name is name."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # The comm field is in parentheses and may contain spaces.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == parent_pid and comm == name:
            found.append(int(entry))
    return found

"""One adapter per builder: give it a fresh state, build, measure, clean up.

Every adapter keeps all its state under the benchmark's work directory and
stops only the processes it started.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from measure import (
    CommandRun,
    children_named,
    cpu_seconds,
    peak_kb,
    process_name,
    reset_peak,
    run_measured,
)
from scenarios import BASE_IMAGE

BUILD_TIMEOUT = 900.0


class BenchError(Exception):
    """A setup step failed; the message says which command and why."""


class ToolUnavailable(BenchError):
    """This tool cannot run on this machine; the benchmark goes on without it."""


@dataclass
class BuildResult:
    seconds: float
    peak_kb: int
    cpu_s: float  # CPU the tool used (for docker: client + daemons)
    background_cpu_s: float  # CPU others on the machine used meanwhile: noise
    exit_code: int
    cached_steps: int
    log_path: Path
    # Extra memory figures (KiB), e.g. the docker client and each daemon.
    detail: dict[str, int] = field(default_factory=dict)
    error: str = ""
    quiet_wait_s: float = 0.0  # how long run.py waited for an idle machine first
    busy_cores_before: float = 0.0  # the machine's load just before the build
    after: str = ""  # the tool whose timed build ran just before this one
    output_bytes: int = 0  # the size of what an export wrote


def run_checked(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> str:
    """Run a setup command; raise BenchError with its output tail if it fails."""
    result = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(argv) + "\n" + result.stdout + result.stderr)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise BenchError(f"{' '.join(argv)} exited {result.returncode}: " + " | ".join(tail))
    return result.stdout


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below directory, deepest first."""
    prefix = str(directory.resolve())
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def unmount_under(directory: Path) -> None:
    """Unmount what our tools left mounted below our own work directory."""
    for point in mounts_under(directory):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def remove_tree(directory: Path) -> None:
    if directory.exists():
        unmount_under(directory)
        shutil.rmtree(directory)


def count_lines(path: Path, pattern: str) -> int:
    return len(re.findall(pattern, path.read_text(errors="replace"), flags=re.MULTILINE))


class Tool:
    name = ""
    # A regex matching one cache hit in the tool's build output.
    cache_hit_pattern = ""
    # Does each build end by deleting about as many files as its steps wrote
    # or read? On ext4 without a journal that slows whoever creates files in
    # the next minute (run.py: run_order, run_scenario).
    deletes_in_bulk = False

    def __init__(self, workdir: Path, logs: Path):
        self.workdir = workdir / self.name
        self.logs = logs
        self.workdir.mkdir(parents=True)
        self.setup_log = logs / f"{self.name}-setup.log"

    def start(self) -> None:
        """Start what the tool needs (a daemon); raise ToolUnavailable if it cannot run."""

    def version(self) -> str:
        raise NotImplementedError

    def fresh_state(self, bases: list[BaseImage]) -> None:
        """Empty every cache, keeping (or re-loading) only the base images."""
        raise NotImplementedError

    def ensure_bases(self, bases: list[BaseImage]) -> None:
        """Load those of bases the current state lacks (a cold case may have left some out)."""
        raise NotImplementedError

    def build(self, dockerfile: Path, context: Path, tag: str, log_path: Path) -> BuildResult:
        raise NotImplementedError

    def export_command(self, tag: str, destination: Path) -> list[str]:
        """The tool's own command that writes a built image to an archive file."""
        raise NotImplementedError

    def export(self, tag: str, log_path: Path) -> BuildResult:
        """Time the export of tag to a file; the file is removed afterwards, untimed."""
        destination = self.workdir / "export.tar"
        destination.unlink(missing_ok=True)
        result = self._measure(self.export_command(tag, destination), log_path)
        if destination.exists():
            result.output_bytes = destination.stat().st_size
            destination.unlink()
        elif not result.error:
            result.error = f"no archive was written, see {log_path}"
        return result

    def _measure(self, argv: list[str], log_path: Path) -> BuildResult:
        """Run a timed command of this tool (a build or an export)."""
        return self._result(run_measured(argv, log_path, timeout=BUILD_TIMEOUT))

    def stop(self) -> None:
        """Stop what start() started; remove the tool's state."""
        remove_tree(self.workdir)

    def _result(
        self, run: CommandRun, detail: dict[str, int] | None = None, daemon_cpu_s: float = 0.0
    ) -> BuildResult:
        error = ""
        if run.timed_out:
            error = f"timed out after {BUILD_TIMEOUT:.0f}s"
        elif run.exit_code != 0:
            error = f"exit code {run.exit_code}, see {run.log_path}"
        cpu = run.cpu_s + daemon_cpu_s
        return BuildResult(
            seconds=run.seconds, peak_kb=run.peak_kb, cpu_s=cpu,
            background_cpu_s=max(0.0, run.machine_busy_s - cpu), exit_code=run.exit_code,
            cached_steps=count_lines(run.log_path, self.cache_hit_pattern),
            log_path=run.log_path, detail=detail or {}, error=error,
        )


@dataclass
class BaseImage:
    """A base image made once by imgbuild and exported for every tool."""

    name: str
    oci_tar: Path
    docker_tar: Path


class Imgbuild(Tool):
    name = "imgbuild"
    cache_hit_pattern = r"^#\d+ CACHED\s*$"

    def __init__(self, workdir: Path, logs: Path, repo: Path, python: str):
        super().__init__(workdir, logs)
        self.repo = repo
        self.python = python
        # Cached bytecode, as an installed package has: with
        # PYTHONDONTWRITEBYTECODE set (as in some shells here) every run would
        # compile imgbuild's modules again, about 0.2 s. The cache lives in our
        # work dir so the source tree stays untouched.
        self.env = dict(os.environ, PYTHONPATH=str(repo),
                        PYTHONPYCACHEPREFIX=str(self.workdir / "pycache"))
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env.pop("IMGBUILD_ROOT", None)
        self.generation = 0
        self.root = self.workdir / "root-0"
        self.loaded: set[str] = set()

    def command(self, root: Path, *args: str) -> list[str]:
        return [self.python, "-m", "imgbuild", "--root", str(root), *args]

    def version(self) -> str:
        return run_checked(self.command(self.root, "--version"), self.setup_log, self.env).strip()

    def make_base(self, base_context: Path) -> BaseImage:
        """Build busybox:local FROM scratch and export it in both archive formats.

        This first build also fills the bytecode cache of everything imgbuild imports.
        """
        compile_all = [self.python, "-m", "compileall", "-q", str(self.repo / "imgbuild")]
        run_checked(compile_all, self.setup_log, self.env)
        root = self.workdir / "base-root"
        tag_args = ["-t", BASE_IMAGE, "--progress", "plain", str(base_context)]
        run_checked(self.command(root, "build", *tag_args), self.setup_log, self.env)
        return self._save_base(root, BASE_IMAGE, "busybox")

    def import_base(self, import_args: list[str], image: str, stem: str) -> BaseImage:
        """`imgbuild import ...` into a scratch store; export the image in both formats."""
        root = self.workdir / f"{stem}-root"
        run_checked(self.command(root, *import_args), self.setup_log, self.env)
        return self._save_base(root, image, stem)

    def _save_base(self, root: Path, image: str, stem: str) -> BaseImage:
        base = BaseImage(image, self.workdir / f"{stem}-oci.tar", self.workdir / f"{stem}-docker.tar")
        for fmt, path in (("oci", base.oci_tar), ("docker", base.docker_tar)):
            save = self.command(root, "save", image, "-o", str(path), "--format", fmt)
            run_checked(save, self.setup_log, self.env)
        remove_tree(root)
        return base

    def fresh_state(self, bases: list[BaseImage]) -> None:
        remove_tree(self.root)
        self.generation += 1
        self.root = self.workdir / f"root-{self.generation}"
        self.loaded = set()
        self.ensure_bases(bases)

    def ensure_bases(self, bases: list[BaseImage]) -> None:
        for base in bases:
            if base.name not in self.loaded:
                load = self.command(self.root, "load", "-i", str(base.oci_tar), "-q")
                run_checked(load, self.setup_log, self.env)
                self.loaded.add(base.name)

    def build(self, dockerfile: Path, context: Path, tag: str, log_path: Path) -> BuildResult:
        argv = self.command(
            self.root, "build", "-f", str(dockerfile), "-t", tag, "--progress", "plain",
            str(context),
        )
        return self._measure(argv, log_path)

    def export_command(self, tag: str, destination: Path) -> list[str]:
        return self.command(self.root, "save", tag, "--format", "oci", "-o", str(destination))

    def _measure(self, argv: list[str], log_path: Path) -> BuildResult:
        return self._result(run_measured(argv, log_path, self.env, BUILD_TIMEOUT))


class Buildah(Tool):
    name = "buildah"
    cache_hit_pattern = r"^--> Using cache "
    # It removes its working containers, which hold what the steps wrote:
    # `strace -f -c` of one build of the big workload counted 20,690 (one
    # file changed) and 20,772 (cold) unlinkat calls; docker's daemons 426
    # and 516, imgbuild 5 and 80.
    deletes_in_bulk = True
    storage_driver = "overlay"

    def __init__(self, workdir: Path, logs: Path):
        super().__init__(workdir, logs)
        self.generation = 0
        self.root = self.workdir / "root-0"
        self.runroot = self.workdir / "run-0"
        self.loaded: set[str] = set()
        self.env = self._env()

    def _env(self) -> dict[str, str]:
        """buildah keeps RUN --mount=type=cache directories in $TMPDIR/buildah-cache-UID
        (/var/tmp by default), outside its store: one temp dir per state keeps a
        cold build cold."""
        tmp = self.workdir / f"tmp-{self.generation}"
        tmp.mkdir(exist_ok=True)
        return dict(os.environ, TMPDIR=str(tmp))

    def command(self, *args: str) -> list[str]:
        return [
            "buildah", "--root", str(self.root), "--runroot", str(self.runroot),
            "--storage-driver", self.storage_driver, *args,
        ]

    def version(self) -> str:
        text = run_checked(["buildah", "--version"], self.setup_log)
        return text.strip() + f" (storage driver {self.storage_driver})"

    def fresh_state(self, bases: list[BaseImage]) -> None:
        self._drop_store()
        self.generation += 1
        self.root = self.workdir / f"root-{self.generation}"
        self.runroot = self.workdir / f"run-{self.generation}"
        self.env = self._env()
        self.loaded = set()
        self.ensure_bases(bases)

    def ensure_bases(self, bases: list[BaseImage]) -> None:
        for base in bases:
            if base.name in self.loaded:
                continue
            image_id = run_checked(
                self.command("pull", "-q", f"oci-archive:{base.oci_tar}"), self.setup_log
            ).strip().splitlines()[-1]
            run_checked(self.command("tag", image_id, f"localhost/{base.name}"), self.setup_log)
            self.loaded.add(base.name)

    def _drop_store(self) -> None:
        if self.root.exists():
            # Working containers hold layer mounts; bud removes its own, this
            # catches any a failed build left.
            subprocess.run(self.command("rm", "--all"), capture_output=True)
        remove_tree(self.root)
        remove_tree(self.runroot)
        remove_tree(self.workdir / f"tmp-{self.generation}")

    def build(self, dockerfile: Path, context: Path, tag: str, log_path: Path) -> BuildResult:
        argv = self.command(
            "bud", "--layers", "--isolation", "oci", "--runtime", "runc", "--network", "host",
            "--format", "docker", "-f", str(dockerfile), "-t", tag, str(context),
        )
        return self._measure(argv, log_path)

    def export_command(self, tag: str, destination: Path) -> list[str]:
        return self.command("push", tag, f"oci-archive:{destination}")

    def _measure(self, argv: list[str], log_path: Path) -> BuildResult:
        return self._result(run_measured(argv, log_path, self.env, BUILD_TIMEOUT))

    def stop(self) -> None:
        self._drop_store()
        super().stop()


class Docker(Tool):
    """Debian's docker.io 20.10: dockerd with BuildKit built in, started by hand."""

    name = "docker"
    cache_hit_pattern = r"^#\d+ CACHED\s*$"
    client = "/usr/bin/docker"
    daemon = "/usr/sbin/dockerd"

    def __init__(self, workdir: Path, logs: Path):
        super().__init__(workdir, logs)
        self.socket = self.workdir / "docker.sock"
        self.process: subprocess.Popen | None = None
        self.containerd_pid = 0
        self.env = dict(os.environ, DOCKER_BUILDKIT="1")
        self.env.pop("DOCKER_HOST", None)
        self.tags: set[str] = set()
        # Base images stay loaded: a fresh state removes only what was built.
        self.loaded: set[str] = set()

    def docker(self, *args: str) -> list[str]:
        return [self.client, "-H", f"unix://{self.socket}", *args]

    def start(self) -> None:
        for path in (self.client, self.daemon):
            if not os.access(path, os.X_OK):
                raise ToolUnavailable(f"{path} is missing (apt-get install docker.io)")
        daemon_log = open(self.logs / "dockerd.log", "wb")
        argv = [
            self.daemon, "--iptables=false", "--bridge=none",
            "--data-root", str(self.workdir / "data"), "--exec-root", str(self.workdir / "exec"),
            "--pidfile", str(self.workdir / "dockerd.pid"), "-H", f"unix://{self.socket}",
        ]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=daemon_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        daemon_log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ToolUnavailable(
                    f"dockerd exited with {self.process.returncode}; see {self.logs}/dockerd.log"
                )
            probe = subprocess.run(self.docker("version"), capture_output=True, env=self.env)
            if probe.returncode == 0:
                pids = children_named(self.process.pid, "containerd")
                self.containerd_pid = pids[0] if pids else 0
                return
            time.sleep(0.5)
        raise ToolUnavailable(f"dockerd did not answer in 60s; see {self.logs}/dockerd.log")

    def version(self) -> str:
        fmt = "{{.Client.Version}} (server {{.Server.Version}}, BuildKit built in)"
        text = run_checked(self.docker("version", "--format", fmt), self.setup_log, self.env)
        return "docker " + text.strip()

    def fresh_state(self, bases: list[BaseImage]) -> None:
        if self.tags:
            run_checked(self.docker("rmi", "-f", *sorted(self.tags)), self.setup_log, self.env)
            self.tags.clear()
        # -a: every build cache record, RUN --mount=type=cache directories included.
        run_checked(self.docker("builder", "prune", "-af"), self.setup_log, self.env)
        run_checked(self.docker("image", "prune", "-f"), self.setup_log, self.env)
        self.ensure_bases(bases)

    def ensure_bases(self, bases: list[BaseImage]) -> None:
        for base in bases:
            if base.name not in self.loaded:
                run_checked(self.docker("load", "-i", str(base.docker_tar)), self.setup_log, self.env)
                self.loaded.add(base.name)

    def build(self, dockerfile: Path, context: Path, tag: str, log_path: Path) -> BuildResult:
        argv = self.docker(
            "build", "--network", "host", "--progress", "plain", "-f", str(dockerfile),
            "-t", tag, str(context),
        )
        self.tags.add(tag)
        return self._measure(argv, log_path)

    def export_command(self, tag: str, destination: Path) -> list[str]:
        # Docker 20.10 has no OCI export: `docker save` (docker-archive) is its archive.
        return self.docker("save", "-o", str(destination), tag)

    def _measure(self, argv: list[str], log_path: Path) -> BuildResult:
        """The command's figures plus the daemons': the work happens in dockerd."""
        assert self.process is not None
        daemons = {"dockerd": self.process.pid, "containerd": self.containerd_pid}
        for pid in daemons.values():
            if pid:
                reset_peak(pid)
        cpu_before = sum(cpu_seconds(pid) for pid in daemons.values() if pid)
        run = run_measured(argv, log_path, self.env, BUILD_TIMEOUT)
        daemon_cpu = sum(cpu_seconds(pid) for pid in daemons.values() if pid) - cpu_before
        detail = {"client_kb": run.peak_kb}
        detail.update({f"{name}_kb": peak_kb(pid) for name, pid in daemons.items() if pid})
        result = self._result(run, detail, daemon_cpu)
        # The work happens in the daemon: report its largest process.
        result.peak_kb = max(detail.values())
        return result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # dockerd stops the containerd it started; make sure of it.
        if self.containerd_pid and process_name(self.containerd_pid) == "containerd":
            os.kill(self.containerd_pid, signal.SIGTERM)
            time.sleep(1)
        super().stop()

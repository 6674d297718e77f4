"""Containers under real runc on a real overlay of a busybox root filesystem."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from comparetools import runc_containers_under
from sandbox.sandboxtools import make_busybox_rootfs, needs_root_and_runc

from imgbuild.errors import Interrupted, SandboxError
from imgbuild.sandbox.overlay import mount_overlay, prune_copied_up_dirs
from imgbuild.sandbox.runtime import run_container
from imgbuild.sandbox.spec import Mount, PrivateFile, RunSpec
from imgbuild.sandbox.users import resolve_user
from imgbuild.store.mounts import mounts_under

pytestmark = pytest.mark.root
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _nothing_left_behind(tmp_path):
    needs_root_and_runc()
    yield
    assert runc_containers_under(tmp_path) == []
    assert mounts_under(tmp_path) == []


class Step:
    """One overlay over the busybox rootfs, like one RUN step of a build."""

    def __init__(self, tmp_path: Path, lowerdirs: list[Path]):
        self.tmp = tmp_path
        self.lowerdirs = lowerdirs
        self.upper = tmp_path / "upper"

    def run(self, args, *, prune: bool = True, **spec_fields) -> tuple[int, str]:
        """Mount, run, unmount and (as the engine does) prune no-op copy-ups."""
        runtime = spec_fields.pop("runtime", "runc")
        chunks: list[bytes] = []
        with mount_overlay(
            self.lowerdirs, self.upper, self.tmp / "work", self.tmp / "merged"
        ) as root:
            user = resolve_user(root, spec_fields.pop("user", ""))
            spec = RunSpec(args=args, user=user, **spec_fields)
            status = run_container(
                root, spec, runtime=runtime, workdir=self.tmp / "scratch", on_output=chunks.append
            )
        if prune:
            prune_copied_up_dirs(self.upper, self.lowerdirs)
        return status, b"".join(chunks).decode()

    def sh(self, script: str, **options) -> tuple[int, str]:
        return self.run(["sh", "-c", script], **options)

    def upper_tree(self) -> list[str]:
        return sorted(
            Path(directory, name).relative_to(self.upper).as_posix()
            for directory, dirs, files in os.walk(self.upper)
            for name in dirs + files
        )


@pytest.fixture
def step(tmp_path, busybox) -> Step:
    return Step(tmp_path, [busybox])


def test_output_env_cwd_and_exit_status(step):
    status, output = step.sh(
        'echo "out $GREETING"; echo err >&2; pwd; exit 3', env=["GREETING=hi"], cwd="/bin"
    )
    assert status == 3
    # runc copies stdout and stderr through two pipes: each keeps its order,
    # but how they interleave is up to the scheduler (as in BuildKit).
    assert "err\n" in output
    assert output.replace("err\n", "", 1) == "out hi\n/bin\n"


def test_default_path_is_added_when_env_has_none(step):
    assert step.run(["env"]) == (
        0,
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nHOME=/root\n",
    )
    status, output = step.run(["env"], env=["PATH=/bin", "A=1"])
    assert sorted(output.split()) == ["A=1", "HOME=/root", "PATH=/bin"]


def test_user_ids_and_groups(step):
    # The primary group is among the supplementary ones, as in Docker.
    assert step.run(["id"], user="app") == (
        0,
        "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n",
    )
    assert step.run(["id"], user="1000") == (
        0,
        "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n",
    )
    assert step.run(["id"], user="app:staff") == (
        0,
        "uid=1000(app) gid=50(staff) groups=50(staff)\n",
    )
    assert step.run(["id"], user="4242:4343") == (0, "uid=4242 gid=4343 groups=4343\n")
    assert step.run(["id"]) == (0, "uid=0(root) gid=0(root) groups=0(root)\n")


def test_missing_workdir_is_created_for_the_user_and_kept(step):
    status, output = step.sh("pwd; touch made", cwd="/home/app/work", user="app")
    assert (status, output) == (0, "/home/app/work\n")
    assert step.upper_tree() == ["home", "home/app", "home/app/work", "home/app/work/made"]
    info = os.stat(step.upper / "home" / "app" / "work")
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (1000, 1000, 0o755)


def test_the_command_is_pid_1(step):
    assert step.run(["cat", "/proc/1/cmdline"]) == (0, "cat\0/proc/1/cmdline\0")


NAMESPACES = ("mnt", "pid", "ipc", "uts", "net", "user", "cgroup")


@pytest.mark.parametrize("network", ["host", "none"])
def test_namespaces_as_in_docker(step, network):
    """Own mount, PID, IPC and UTS namespaces (and network with none); the host's user
    and cgroup namespaces, as docker build without userns-remap (docs/security.md)."""
    script = (
        "for ns in " + " ".join(NAMESPACES) + "; do busybox readlink /proc/self/ns/$ns; done; "
        "hostname; ls /proc"
    )
    status, output = step.sh(script, network=network)
    assert status == 0, output
    lines = output.split()
    inside = dict(zip(NAMESPACES, lines[: len(NAMESPACES)], strict=True))
    host = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in NAMESPACES}
    private = {"mnt", "pid", "ipc", "uts"} | ({"net"} if network == "none" else set())
    assert {ns for ns in NAMESPACES if inside[ns] != host[ns]} == private
    assert lines[len(NAMESPACES)] == "imgbuild"
    # PID 1 is the shell and ls is its child: no host process shows in /proc.
    pids = sorted(int(name) for name in lines[len(NAMESPACES) + 1 :] if name.isdigit())
    assert pids[0] == 1 and len(pids) <= 3 and pids[-1] < 10, pids


def test_network_none_has_only_loopback(step):
    status, output = step.run(["cat", "/proc/net/dev"], network="none")
    assert status == 0
    assert interfaces(output) == ["lo"]


def test_host_network_sees_the_host_interfaces(step):
    status, output = step.run(["cat", "/proc/net/dev"])
    assert status == 0
    assert interfaces(output) == interfaces(Path("/proc/net/dev").read_text())


def interfaces(proc_net_dev: str) -> list[str]:
    return sorted(line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:])


def test_capabilities_and_privileges_as_in_docker(step):
    status, output = step.run(["grep", "-E", "^(Cap|NoNewPrivs)", "/proc/self/status"])
    assert status == 0
    fields = dict(line.split(":\t") for line in output.splitlines())
    assert fields == {
        "CapInh": "0000000000000000",
        "CapPrm": "00000000a80425fb",
        "CapEff": "00000000a80425fb",
        "CapBnd": "00000000a80425fb",
        "CapAmb": "0000000000000000",
        "NoNewPrivs": "0",  # setuid programs work, as in Docker
    }
    status, output = step.run(["grep", "-E", "^Cap(Eff|Bnd)", "/proc/self/status"], user="app")
    assert output == "CapEff:\t0000000000000000\nCapBnd:\t00000000a80425fb\n"


def test_proc_sys_and_dev(step):
    script = """
        touch /sys/x 2>/dev/null && echo sys-writable
        grep ' /sys ' /proc/mounts | grep -q ' ro,' && echo sys-ro
        { echo 1 > /proc/sys/kernel/printk; } 2>/dev/null && echo proc-sys-writable
        test -s /proc/kcore || echo kcore-masked
        for name in null zero full random urandom tty pts shm mqueue; do test -e /dev/$name && echo $name; done
        echo discard > /dev/null && head -c 4 /dev/zero | wc -c
        ls /dev/sda 2>/dev/null || echo no-host-disks
    """
    status, output = step.sh(textwrap.dedent(script))
    assert status == 0
    assert output.split() == [
        "sys-ro",
        "kcore-masked",
        *["null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue"],
        "4",
        "no-host-disks",
    ]


# Docker's masked paths (hidden) and read-only paths, as runc is told them.
MASKED = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip
READ_ONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def _mount_options(mountinfo: str) -> dict[str, set[str]]:
    """Mount point -> its per-mount and super-block options (the last mount on a path wins)."""
    options = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        rest = fields[fields.index("-") + 1 :]
        options[fields[4]] = set(fields[5].split(",")) | set(rest[2].split(","))
    return options


def test_proc_is_nosuid_noexec_nodev_and_dockers_paths_are_masked_or_read_only(step):
    paths = " ".join(MASKED)
    script = (
        "cat /proc/self/mountinfo; echo ===; "
        f"for p in {paths}; do "
        "if [ -d $p ]; then echo $p dir $(ls -A $p | wc -l); "
        "elif [ -e $p ]; then echo $p file $(cat $p 2>/dev/null | wc -c); "
        "else echo $p absent 0; fi; done"
    )
    status, output = step.sh(script)
    assert status == 0, output
    mountinfo, listing = output.split("===\n")
    mounts = _mount_options(mountinfo)
    assert {"nosuid", "noexec", "nodev"} <= mounts["/proc"]
    seen = {path: (kind, int(size)) for path, kind, size in map(str.split, listing.splitlines())}
    for path in MASKED:
        kind, size = seen[path]
        assert size == 0, f"{path} is not masked: {kind} with {size} bytes or entries"
        if os.path.exists(path):  # runc masks what exists: an empty file or a read-only tmpfs
            assert path in mounts, f"{path} exists on the host but is not masked"
            if kind == "dir":
                assert "ro" in mounts[path], (path, mounts[path])
    for path in READ_ONLY:
        if os.path.exists(path):
            assert "ro" in mounts[path], (path, mounts.get(path))


def test_dev_holds_only_dockers_devices(step):
    status, output = step.sh("ls -A /dev; echo ===; cat /proc/self/mountinfo")
    assert status == 0, output
    listing, mountinfo = output.split("===\n")
    # The devices, the pts/shm/mqueue mounts, and the symlinks runc adds (fd, stdin, ...).
    assert sorted(listing.split()) == [
        "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm",
        "stderr", "stdin", "stdout", "tty", "urandom", "zero",
    ]  # fmt: skip
    mounts = _mount_options(mountinfo)
    assert "size=65536k" in mounts["/dev/shm"]
    assert {"nosuid", "noexec", "nodev"} <= mounts["/dev/shm"]


def test_the_device_cgroup_refuses_nodes_made_with_mknod(step):
    """mknod works (CAP_MKNOD, as in Docker) but only Docker's devices can be opened:
    a FUSE, loop-control or loop device node made in the step cannot."""
    script = """
        mkdir /tmp && cd /tmp
        mknod null-again c 1 3 && echo x > null-again && echo null-opens
        for node in "fuse c 10 229" "loop-control c 10 237" "loop0 b 7 0"; do
            set -- $node
            mknod $1 $2 $3 $4 || echo "$1 mknod-failed"
            { exec 3< $1; } 2>&1 | grep -q 'Operation not permitted' && echo "$1 refused"
        done
    """
    status, output = step.sh(textwrap.dedent(script))
    assert status == 0, output
    assert output.split("\n") == [
        "null-opens", "fuse refused", "loop-control refused", "loop0 refused", "",
    ]  # fmt: skip


def test_open_files_limit(step):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = 1048576 if hard == resource.RLIM_INFINITY else min(1048576, hard)
    assert step.sh("ulimit -n; ulimit -Hn") == (0, f"{expected}\n{expected}\n")


def test_etc_files_are_provided_and_read_only(step):
    script = """
        cat /etc/hosts /etc/hostname; hostname
        { echo x >> /etc/hosts; } 2>/dev/null || echo hosts-ro
        { echo x > /etc/hostname; } 2>/dev/null || echo hostname-ro
        { echo x > /etc/resolv.conf; } 2>/dev/null || echo resolv-ro
    """
    status, output = step.sh(textwrap.dedent(script), hostname="box")
    assert status == 0
    assert output.splitlines() == [
        "127.0.0.1\tlocalhost box",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "box",
        "box",
        "hosts-ro",
        "hostname-ro",
        "resolv-ro",
    ]
    assert step.upper_tree() == []


def test_resolv_conf_follows_the_network_mode(step):
    host = Path("/etc/resolv.conf").read_text()
    assert step.run(["cat", "/etc/resolv.conf"]) == (0, host)
    status, output = step.run(["cat", "/etc/resolv.conf"], network="none")
    kept = [
        line
        for line in host.splitlines()
        if not line.startswith(("nameserver 127.", "nameserver ::1"))
    ]
    assert output.splitlines() == kept
    assert step.run(["cat", "/etc/resolv.conf"], resolv_conf="nameserver 192.0.2.1\n") == (
        0,
        "nameserver 192.0.2.1\n",
    )


def test_scratch_rootfs_keeps_only_the_mount_points_buildkit_keeps(tmp_path):
    bare = tmp_path / "bare"
    make_busybox_rootfs(bare, with_etc=False)  # no /etc, /proc, /dev, /sys at all
    step = Step(tmp_path, [bare])
    status, output = step.sh("ls -d /etc/hosts /proc/1 /dev/null /sys/kernel && touch /made")
    assert status == 0
    # BuildKit (and buildah) leave the empty /dev, /proc, /sys runc made; the
    # /etc/hosts, /etc/hostname and /etc/resolv.conf stubs (and /etc) go.
    assert step.upper_tree() == ["dev", "made", "proc", "sys"]


def test_existing_etc_without_hosts_leaves_nothing_after_pruning(tmp_path, busybox):
    step = Step(tmp_path, [busybox])
    assert step.sh("echo hi > /etc/motd") == (0, "")
    assert step.upper_tree() == ["etc", "etc/motd"]

    quiet = Step(tmp_path / "second", [busybox])
    assert quiet.run(["true"], prune=False) == (0, "")
    # /etc was copied up when the runtime made its /etc/hosts stub; the stub
    # is gone and /etc has its old mtime back, so the copy is a no-op ...
    assert quiet.upper_tree() == ["etc"]
    assert prune_copied_up_dirs(quiet.upper, quiet.lowerdirs) == ["etc"]
    assert quiet.upper_tree() == []  # ... is a no-op and goes


def test_symlinked_mount_target_gets_its_stubs_removed_too(tmp_path, busybox):
    # Debian with systemd-resolved: /etc/resolv.conf points into /run, which
    # the image has empty. The runtime follows the link (inside the rootfs) and
    # creates the missing directories and file there.
    (busybox / "run").mkdir()
    os.symlink("../run/systemd/resolve/stub-resolv.conf", busybox / "etc" / "resolv.conf")
    step = Step(tmp_path, [busybox])
    assert step.run(["cat", "/etc/resolv.conf"]) == (0, Path("/etc/resolv.conf").read_text())
    assert step.upper_tree() == []


def test_mount_targets_the_image_has_are_not_copied_up(tmp_path, busybox):
    for name in ("hosts", "hostname", "resolv.conf"):
        (busybox / "etc" / name).write_text("")
    step = Step(tmp_path, [busybox])  # the rootfs has /proc, /dev and /sys
    script = "{ echo x > /etc/hosts; } 2>/dev/null || echo ro; cat /etc/hostname"
    assert step.sh(script, prune=False) == (0, "ro\nimgbuild\n")
    assert step.upper_tree() == []  # without any pruning


def test_extra_mounts(tmp_path, step):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from host")
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    mounts = [
        Mount("bind", "/cache", str(shared)),
        Mount("bind", "/ro-cache", str(shared), readonly=True),
        Mount("bind", "/run/secrets/token", str(secret), readonly=True),
        Mount("tmpfs", "/scratch/tmp", options=["size=1m"]),
    ]
    script = """
        cat /cache/in; echo; cat /run/secrets/token; echo
        echo written > /cache/out
        touch /ro-cache/x 2>/dev/null || echo ro-cache-ro
        echo t > /scratch/tmp/t && grep -q ' /scratch/tmp tmpfs ' /proc/mounts && echo tmpfs
    """
    status, output = step.sh(textwrap.dedent(script), mounts=mounts)
    assert (status, output) == (0, "from host\ns3cret\nro-cache-ro\ntmpfs\n")
    assert (shared / "out").read_text() == "written\n"
    assert step.upper_tree() == []  # no stubs for /run/secrets/token, /cache, ...


def test_output_is_streamed_while_the_command_runs(tmp_path, step):
    # The command waits for a file the callback creates on seeing "first": if
    # output were delivered only at the end, it would give up and say so.
    handshake = tmp_path / "handshake"
    handshake.mkdir()
    seen = []

    def on_output(chunk: bytes) -> None:
        seen.append(chunk)
        if b"first" in b"".join(seen):
            (handshake / "go").touch()

    script = (
        "echo first; i=0; "
        "while [ ! -e /hs/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
        "test -e /hs/go && echo second || echo gave-up"
    )
    with mount_overlay(step.lowerdirs, step.upper, tmp_path / "work", tmp_path / "merged") as root:
        spec = RunSpec(args=["sh", "-c", script], mounts=[Mount("bind", "/hs", str(handshake))])
        status = run_container(root, spec, workdir=tmp_path / "scratch", on_output=on_output)
    assert status == 0
    assert b"".join(seen) == b"first\nsecond\n"
    assert len(seen) >= 2


def test_private_files_and_env_live_only_in_the_runtimes_namespace(tmp_path, step):
    """Secrets (a private file, an env value) reach the process but no directory the
    host sees: while the command runs, the bundle directory on disk is empty and
    no tmpfs of ours shows in our mount table."""
    seen_on_host = []

    def on_output(chunk: bytes) -> None:
        if b"ready" in chunk:
            bundles = list((tmp_path / "scratch").glob("run-*/bundle"))
            seen_on_host.append([sorted(p.name for p in bundle.iterdir()) for bundle in bundles])
            seen_on_host.append(b"imgbuild-bundle" in Path("/proc/self/mountinfo").read_bytes())
            (tmp_path / "handshake" / "go").touch()

    (tmp_path / "handshake").mkdir()
    secret = PrivateFile(b"file-s3cret", mode=0o440, uid=0, gid=50)
    mounts = [
        Mount("bind", "/run/secrets/token", readonly=True, private=secret),
        Mount("bind", "/hs", str(tmp_path / "handshake")),
    ]
    script = (
        'cat /run/secrets/token; echo " $(stat -c \'%a %u %g\' /run/secrets/token) $TOKEN"; '
        "echo ready; i=0; while [ ! -e /hs/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done"
    )
    with mount_overlay(step.lowerdirs, step.upper, tmp_path / "work", tmp_path / "merged") as root:
        spec = RunSpec(args=["sh", "-c", script], env=["TOKEN=env-s3cret"], mounts=mounts)
        chunks = []
        status = run_container(
            root,
            spec,
            workdir=tmp_path / "scratch",
            on_output=lambda chunk: (chunks.append(chunk), on_output(chunk)),
        )
    assert status == 0
    assert b"".join(chunks) == b"file-s3cret 440 0 50 env-s3cret\nready\n"
    assert seen_on_host == [[[]], False]
    assert not any((tmp_path / "scratch").iterdir())


def test_signal_exit_status_is_128_plus_n(tmp_path, step):
    # Kill the container from outside, as `runc kill` (or the OOM killer) would.
    killed = []

    def kill_when_running():
        for _ in range(1200):
            ids = runc_containers_under(tmp_path)
            if ids and _state(ids[0]) == "running":
                subprocess.run(["runc", "kill", ids[0], "KILL"], check=True)
                killed.append(ids[0])
                return
            time.sleep(0.05)
        for container_id in runc_containers_under(tmp_path):  # never hang the suite
            subprocess.run(["runc", "delete", "--force", container_id])

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    status, output = step.run(["sleep", "4321"])
    killer.join()
    assert len(killed) == 1
    assert status == 128 + signal.SIGKILL


def _state(container_id: str) -> str:
    result = subprocess.run(["runc", "state", container_id], capture_output=True, text=True)
    return json.loads(result.stdout)["status"] if result.returncode == 0 else "gone"


def test_a_missing_command_is_a_sandbox_error(step):
    with pytest.raises(
        SandboxError,
        match='runc could not run the container: .*exec: "no-such-command": executable file not found',
    ):
        step.run(["no-such-command"])


def test_an_unknown_runtime_is_a_sandbox_error(step):
    with pytest.raises(SandboxError, match="OCI runtime 'no-such-runtime' not found"):
        step.run(["true"], runtime="no-such-runtime")


def test_crun_refusing_the_host_is_a_sandbox_error(step):
    if shutil.which("crun") is None:
        pytest.skip("crun is not installed")
    try:
        status, output = step.run(["echo", "hello"], runtime="crun")
    except SandboxError as error:
        assert str(error).startswith("crun could not run the container: ")
        assert len(str(error)) > len("crun could not run the container: ")
    else:  # a host crun accepts (pure cgroup v2) runs it like runc
        assert (status, output) == (0, "hello\n")


def test_cancel_from_another_thread_kills_the_container(tmp_path, step):
    cancel = threading.Event()
    outcome = []

    def on_output(chunk: bytes) -> None:
        if b"ready" in chunk:
            cancel.set()

    def run():
        with mount_overlay(
            step.lowerdirs, step.upper, tmp_path / "work", tmp_path / "merged"
        ) as root:
            spec = RunSpec(args=["sh", "-c", "echo ready; exec sleep 4321"])
            try:
                run_container(
                    root, spec, workdir=tmp_path / "scratch", on_output=on_output, cancel=cancel
                )
            except Interrupted as error:
                outcome.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert len(outcome) == 1
    assert not _sleepers("4321")


INTERRUPTED_BUILD = """
import signal, sys
from pathlib import Path
from imgbuild.sandbox.overlay import mount_overlay
from imgbuild.sandbox.runtime import run_container
from imgbuild.sandbox.spec import RunSpec

def stop(signum, frame):  # what the CLI does with SIGTERM
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, stop)
tmp, lower = Path(sys.argv[1]), Path(sys.argv[2])

def show(chunk):
    sys.stdout.buffer.write(chunk)
    sys.stdout.flush()

try:
    with mount_overlay([lower], tmp / "upper", tmp / "work", tmp / "merged") as root:
        spec = RunSpec(args=["sh", "-c", "echo ready; exec sleep 4322"])
        run_container(root, spec, workdir=tmp / "scratch", on_output=show)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupting_the_process_kills_the_container_and_unmounts(tmp_path, busybox, signum):
    script = tmp_path / "build.py"
    script.write_text(INTERRUPTED_BUILD)
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), str(busybox)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout.readline() == b"ready\n"
        assert mounts_under(tmp_path) == [str((tmp_path / "merged").resolve())]
        assert len(runc_containers_under(tmp_path)) == 1
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (process.returncode, stdout) == (130, b"interrupted\n"), stderr.decode()
    assert runc_containers_under(tmp_path) == []
    assert mounts_under(tmp_path) == []
    assert not _sleepers("4322")
    assert not any((tmp_path / "scratch").iterdir())  # the bundle is gone too


def _sleepers(argument: str) -> list[int]:
    """PIDs of `sleep ARGUMENT` processes (the containers' commands)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline == f"sleep\0{argument}\0".encode():
                pids.append(int(entry.name))
    return pids

"""RUN --mount: cache, bind, secret and tmpfs, checked in the image and the store."""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import signal
import stat
import subprocess
import time
from secrets import token_hex

import pytest
import zstandard
from advtools import assert_clear_refusal, run_cli

from imgbuild.build.options import parse_secret

pytestmark = pytest.mark.root


def _mounted_paths(tree, *prefixes):
    return sorted(name for name in tree if name.split("/")[0] in prefixes)


# --- type=cache ---------------------------------------------------------------------


def test_cache_mount_persists_across_builds_and_stays_out_of_the_layer(
    build_df, store, layer_names
):
    dockerfile = (
        "FROM busybox\n"
        "RUN --mount=type=cache,target=/var/cache/app "
        "echo run >> /var/cache/app/log && cp /var/cache/app/log /seen\n"
    )
    first = build_df(dockerfile, store=store)
    assert first.tree()["seen"].data == b"run\n"
    second = build_df(dockerfile, store=store, no_cache=True)
    assert second.tree()["seen"].data == b"run\nrun\n"
    assert layer_names(store, second.image.layers[-1]) - {"proc", "sys", "dev"} == {"seen"}
    assert "var/cache" not in second.tree()


def test_cache_mount_id_shares_one_directory_between_targets(build_df, store):
    built = build_df(
        "FROM busybox\n"
        "RUN --mount=type=cache,id=shared-id,target=/one echo from-one > /one/file\n"
        "RUN --mount=type=cache,id=shared-id,target=/two cp /two/file /copied\n"
        "RUN --mount=type=cache,target=/three ls -A /three > /other-id\n",
        store=store,
    )
    tree = built.tree()
    assert tree["copied"].data == b"from-one\n"
    assert tree["other-id"].data == b""
    assert _mounted_paths(tree, "one", "two", "three") == []


def test_cache_mount_uid_gid_mode(build_df, store):
    built = build_df(
        "FROM busybox\n"
        "RUN --mount=type=cache,target=/c,uid=1000,gid=50,mode=0750 "
        "stat -c '%u %g %a' /c > /cache-owner\n",
        store=store,
    )
    assert built.tree()["cache-owner"].data == b"1000 50 750\n"


WAIT_FOR = "i=0; while [ ! -e {path} ] && [ $i -lt {tries} ]; do sleep 0.1; i=$((i+1)); done; "


def test_cache_mount_sharing_private_gives_a_busy_cache_to_one_user_only(build_df, store):
    """Stage a holds the private cache while b runs: b must get a fresh, empty one."""
    private = "--mount=type=cache,id=priv,target=/p,sharing=private"
    rendezvous = "--mount=type=cache,id=rv-private,target=/rv,sharing=shared"
    built = build_df(
        "FROM busybox AS a\n"
        f"RUN {private} {rendezvous} echo a > /p/owner-a; touch /rv/a-holds; "
        + WAIT_FOR.format(path="/rv/b-done", tries=200)
        + "ls /p > /seen-a\n"
        "FROM busybox AS b\n"
        f"RUN {private} {rendezvous} "
        + WAIT_FOR.format(path="/rv/a-holds", tries=200)
        + "ls /p > /seen-b; touch /rv/b-done\n"
        "FROM scratch\nCOPY --from=a /seen-a /\nCOPY --from=b /seen-b /\n",
        store=store,
        jobs=2,
    )
    tree = built.tree()
    assert tree["seen-a"].data == b"owner-a\n"
    assert tree["seen-b"].data == b""


def test_cache_mount_sharing_locked_lets_one_run_in_at_a_time(build_df, store):
    """Each stage announces itself and looks for the other for 1.5 s: locked never overlaps."""
    locked = "--mount=type=cache,id=lk,target=/l,sharing=locked"
    rendezvous = "--mount=type=cache,id=rv-locked,target=/rv,sharing=shared"

    def stage(me, other):
        return (
            f"FROM busybox AS {me}\n"
            f"RUN {locked} {rendezvous} touch /rv/{me}-in; "
            + WAIT_FOR.format(path=f"/rv/{other}-in", tries=15)
            + f"if [ -e /rv/{other}-in ]; then echo overlap; else echo alone; fi > /{me}; "
            + f"rm /rv/{me}-in\n"
        )

    built = build_df(
        stage("a", "b")
        + stage("b", "a")
        + "FROM scratch\nCOPY --from=a /a /\nCOPY --from=b /b /\n",
        store=store,
        jobs=2,
    )
    tree = built.tree()
    assert (tree["a"].data, tree["b"].data) == (b"alone\n", b"alone\n")


def test_cache_mount_sharing_shared_is_used_concurrently(build_df, store):
    """The same rendezvous with sharing=shared: both runs are inside at once."""
    shared = "--mount=type=cache,id=sh,target=/s,sharing=shared"

    def stage(me, other):
        return (
            f"FROM busybox AS {me}\n"
            f"RUN {shared} touch /s/{me}-in; "
            + WAIT_FOR.format(path=f"/s/{other}-in", tries=200)
            + f"if [ -e /s/{other}-in ]; then echo together; else echo alone; fi > /{me}\n"
        )

    built = build_df(
        stage("a", "b")
        + stage("b", "a")
        + "FROM scratch\nCOPY --from=a /a /\nCOPY --from=b /b /\n",
        store=store,
        jobs=2,
    )
    tree = built.tree()
    assert (tree["a"].data, tree["b"].data) == (b"together\n", b"together\n")


# --- type=bind --------------------------------------------------------------------------


def test_bind_mount_from_context_read_only_by_default(build_df, layer_names):
    built = build_df(
        "FROM busybox\n"
        "RUN --mount=type=bind,source=src,target=/src cat /src/data > /from-bind "
        "&& (touch /src/new 2>/dev/null && echo writable || echo readonly) > /bind-mode\n"
        "RUN --mount=type=bind,target=/whole cat /whole/src/data > /whole-context\n",
        {"src/data": "context data\n"},
    )
    tree = built.tree()
    assert tree["from-bind"].data == b"context data\n"
    assert tree["bind-mode"].data == b"readonly\n"
    assert tree["whole-context"].data == b"context data\n"
    assert _mounted_paths(tree, "src", "whole") == []
    assert not (built.context / "src" / "new").exists()


def test_bind_mount_from_context_hides_dockerignored_files(build_df, write_files):
    """The context a bind mount shows is the one COPY sees (BuildKit sends no ignored file)."""
    files = {
        ".dockerignore": "secret.txt\nsub/hidden\n",
        "secret.txt": "do not show\n",
        "sub/hidden": "hidden\n",
        "sub/visible": "visible\n",
    }
    dockerfile = (
        "FROM busybox\n"
        "RUN --mount=type=bind,target=/ctx --mount=type=bind,source=sub,target=/sub,rw "
        "cd /ctx && find . | sort > /listing "
        "&& cd /sub && find . | sort > /sub-listing && echo w > /sub/new\n"
    )
    built = build_df(dockerfile, files)
    tree = built.tree()
    assert tree["listing"].data.split() == [
        b".",
        b"./.dockerignore",
        b"./Dockerfile",
        b"./sub",
        b"./sub/visible",
    ]
    assert tree["sub-listing"].data.split() == [b".", b"./visible"]
    assert not (built.context / "sub" / "new").exists()
    # an ignored file is not in the key either: changing it hits the cache
    write_files(built.context, {"sub/hidden": "changed\n"})
    assert build_df(dockerfile, context=built.context).result.steps_run == 0


def test_bind_mount_from_context_shows_a_fifo_also_with_dockerignore(build_df, tmp_path):
    """The filtered context view used to drop FIFOs the unfiltered context shows."""
    context = tmp_path / "fifo-context"
    context.mkdir()
    os.mkfifo(context / "fifo")
    built = build_df(
        "FROM busybox\n"
        "RUN --mount=type=bind,target=/ctx (test -p /ctx/fifo && echo fifo || echo missing) > /kind\n",
        {".dockerignore": "ignored\n"},
        context=context,
    )
    assert built.tree()["kind"].data == b"fifo\n"


def test_bind_mount_rw_writes_are_discarded(build_df):
    built = build_df(
        "FROM busybox\n"
        "RUN --mount=type=bind,source=src,target=/src,rw "
        "echo changed > /src/data && echo new > /src/new && cat /src/data > /rw-seen\n",
        {"src/data": "original\n"},
    )
    tree = built.tree()
    assert tree["rw-seen"].data == b"changed\n"
    assert (built.context / "src" / "data").read_text() == "original\n"
    assert not (built.context / "src" / "new").exists()
    assert _mounted_paths(tree, "src") == []


def test_bind_mount_from_stage(build_df):
    built = build_df(
        "FROM busybox AS builder\nRUN mkdir /out && echo artifact > /out/thing\n"
        "FROM busybox\n"
        "RUN --mount=type=bind,from=builder,source=/out,target=/mnt/out cp /mnt/out/thing /got "
        "&& (touch /mnt/out/x 2>/dev/null && echo writable || echo readonly) > /mode\n",
    )
    tree = built.tree()
    assert tree["got"].data == b"artifact\n"
    assert tree["mode"].data == b"readonly\n"
    assert "out" not in tree
    assert "mnt/out" not in tree


def test_bind_mount_from_stage_index(build_df):
    """from=0 is stage 0, as in COPY --from=0 (it used to end in a KeyError)."""
    built = build_df(
        "FROM busybox\nRUN mkdir /out && echo artifact > /out/thing\n"
        "FROM busybox\n"
        "RUN --mount=type=bind,from=0,source=/out,target=/mnt/out cp /mnt/out/thing /got\n",
    )
    assert built.tree()["got"].data == b"artifact\n"
    assert "out" not in built.tree()


DEVICE_MARKER = b"host-block-device-content-5e2a9c41"


@pytest.fixture
def loop_device(tmp_path):
    """A read-only host loop device over a file holding DEVICE_MARKER: (major, minor).

    Reading it shows the marker, so a copy of the device made by imgbuild
    (as host root, outside the container's device cgroup) would be visible.
    """
    backing = tmp_path / "disk.img"
    backing.write_bytes(DEVICE_MARKER * 32 + bytes(4096))
    device = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", str(backing)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    try:
        info = os.stat(device)
        yield os.major(info.st_rdev), os.minor(info.st_rdev)
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)


def test_bind_mount_of_a_device_node_is_opened_only_by_the_container(build_df, store, loop_device):
    """A device node from a stage is bound, never read by imgbuild: the device cgroup refuses it.

    imgbuild used to copy a rw-bound non-directory itself, as host root, and
    so put a host block device's content where the step could read it.
    """
    major, minor = loop_device
    probe = "(cat /x > /{name} 2>/{name}.err; echo $? > /{name}.status) || true"
    built = build_df(
        f"FROM busybox AS dev\nRUN mknod /node b {major} {minor}\n"
        "FROM busybox\n"
        f"RUN --mount=type=bind,from=dev,source=/node,target=/x,rw {probe.format(name='rw')}\n"
        f"RUN --mount=type=bind,from=dev,source=/node,target=/x {probe.format(name='ro')}\n",
        store=store,
    )
    tree = built.tree()
    for name in ("rw", "ro"):
        assert tree[name].data == b""
        assert b"Operation not permitted" in tree[f"{name}.err"].data
        assert tree[f"{name}.status"].data == b"1\n"
    assert _files_containing(store.root, [DEVICE_MARKER]) == []
    assert "x" not in tree


@pytest.fixture
def tmpfs_dir(tmp_path):
    """A directory on a tmpfs of its own: another file system than the store's."""
    directory = tmp_path / "tmpfs"
    directory.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "imgbuild-test", str(directory)], check=True)
    yield directory
    subprocess.run(["umount", str(directory)], check=True)


@pytest.mark.parametrize("ignore_file", [False, True])
def test_a_context_device_node_in_a_bind_mount_is_never_read(
    build_df, store, tmp_path, loop_device, ignore_file
):
    """The context view of a bind mount has the node itself (bound, or hard-linked
    when an ignore file filters the view): only the step can try to open it, and
    the device cgroup refuses."""
    context = tmp_path / f"device-context-{ignore_file}"
    context.mkdir()
    _bind_a_context_device_node(build_df, store, context, loop_device, ignore_file)


def test_a_context_device_node_on_another_file_system_is_made_again_not_read(
    build_df, store, tmpfs_dir, loop_device
):
    """Across file systems the filtered view cannot link the node: it makes it again
    with mknod, and still never opens it."""
    _bind_a_context_device_node(build_df, store, tmpfs_dir, loop_device, ignore_file=True)


def _bind_a_context_device_node(build_df, store, context, loop_device, ignore_file: bool) -> None:
    major, minor = loop_device
    os.mknod(context / "node", stat.S_IFBLK | 0o600, os.makedev(major, minor))
    files = {".dockerignore": "ignored\n"} if ignore_file else {}
    built = build_df(
        "FROM busybox\n"
        "RUN --mount=type=bind,target=/ctx test -b /ctx/node && "
        "(cat /ctx/node > /read 2>/read.err; echo $? > /read.status) || true\n",
        files,
        store=store,
        context=context,
    )
    tree = built.tree()
    assert tree["read"].data == b""
    assert b"Operation not permitted" in tree["read.err"].data
    assert tree["read.status"].data == b"1\n"
    assert _files_containing(store.root, [DEVICE_MARKER]) == []


def test_bind_mount_rw_of_a_fifo_binds_it(build_df):
    """A FIFO bound rw is the FIFO itself (shutil.copy2 used to raise SpecialFileError)."""
    built = build_df(
        "FROM busybox AS pipe\nRUN mkfifo /fifo\n"
        "FROM busybox\n"
        "RUN --mount=type=bind,from=pipe,source=/fifo,target=/x,rw "
        "(test -p /x && echo fifo || echo other) > /kind\n"
    )
    tree = built.tree()
    assert tree["kind"].data == b"fifo\n"
    assert "x" not in tree


def test_bind_mount_rw_of_a_file_discards_writes(build_df):
    built = build_df(
        "FROM busybox AS src\nRUN echo original > /data\n"
        "FROM busybox\n"
        "RUN --mount=type=bind,from=src,source=/data,target=/d,rw "
        "echo changed > /d && cat /d > /rw-seen\n"
        "RUN --mount=type=bind,from=src,source=/data,target=/d cat /d > /after\n",
    )
    tree = built.tree()
    assert tree["rw-seen"].data == b"changed\n"
    assert tree["after"].data == b"original\n"
    assert "d" not in tree


def test_bind_mount_from_a_relative_context_path(imgbuild_cli, store, tmp_path, no_traceback):
    """``imgbuild build DIR`` with a relative DIR: runc resolved the bind source against its bundle."""
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "data").write_text("from the context\n")
    (context / "Dockerfile").write_text(
        "FROM busybox\nRUN --mount=type=bind,source=data,target=/d cat /d\n"
    )
    completed = imgbuild_cli(store.root, "build", "--progress", "plain", "ctx", cwd=tmp_path)
    no_traceback(completed)
    assert completed.returncode == 0, completed.stderr
    assert "from the context" in completed.stderr + completed.stdout


# --- type=secret -------------------------------------------------------------------------


SECRET = "s3cr3t-value-that-must-not-leak-7f1d2c"
ENV_SECRET = "env-secret-value-that-must-not-leak-99ab"


def _files_containing(root, needles: list[bytes]) -> list[str]:
    """Every file under ``root`` (blobs decompressed) that holds one of ``needles``."""
    found = []
    for directory, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(directory, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:
                data = handle.read()
            variants = [data]
            if data[:2] == b"\x1f\x8b":
                variants.append(gzip.decompress(data))
            elif data[:4] == b"\x28\xb5\x2f\xfd":
                variants.append(zstandard.ZstdDecompressor().decompressobj().decompress(data))
            if any(needle in variant for needle in needles for variant in variants):
                found.append(path)
    return found


def test_secrets_are_readable_in_run_and_stored_nowhere(build_df, store, tmp_path, monkeypatch):
    secret_file = tmp_path / "token.txt"
    secret_file.write_text(SECRET)
    monkeypatch.setenv("HOST_SECRET_VAR", ENV_SECRET)
    secrets = [
        parse_secret(f"id=token,src={secret_file}"),
        parse_secret("id=fromenv,env=HOST_SECRET_VAR"),
    ]
    built = build_df(
        "FROM busybox\n"
        "RUN --mount=type=secret,id=token "
        "sha256sum /run/secrets/token | cut -d' ' -f1 > /token.sha "
        "&& stat -c '%a %u' /run/secrets/token > /token.mode\n"
        "RUN --mount=type=secret,id=token,target=/etc/app/token.conf sha256sum /etc/app/token.conf "
        "| cut -d' ' -f1 > /custom.sha\n"
        'RUN --mount=type=secret,id=fromenv,env=APP_TOKEN printf %s "$APP_TOKEN" | sha256sum '
        "| cut -d' ' -f1 > /env.sha\n"
        "RUN --mount=type=secret,id=fromenv "
        "cat /run/secrets/fromenv | sha256sum | cut -d' ' -f1 > /envfile.sha\n",
        store=store,
        secrets=secrets,
        tags=["secrets:1"],
    )
    tree = built.tree()
    secret_sha = hashlib.sha256(SECRET.encode()).hexdigest().encode() + b"\n"
    env_sha = hashlib.sha256(ENV_SECRET.encode()).hexdigest().encode() + b"\n"
    assert tree["token.sha"].data == secret_sha
    assert tree["token.mode"].data == b"400 0\n"
    assert tree["custom.sha"].data == secret_sha
    assert tree["env.sha"].data == env_sha
    assert tree["envfile.sha"].data == env_sha
    assert not any(name.startswith(("run/secrets", "etc/app")) for name in tree)
    assert _files_containing(store.root, [SECRET.encode(), ENV_SECRET.encode()]) == []


def _secrets_on_disk(store_root, needles: list[bytes]) -> list[str]:
    """Files holding a secret in the store, in /dev/shm and /tmp where secrets once went,
    or in runc's state (which holds the container's config, not its process's environment)."""
    places = [store_root, "/dev/shm", "/run/runc"]
    found = [path for place in places for path in _files_containing(place, needles)]
    return found + [
        os.path.join("/tmp", name)
        for name in os.listdir("/tmp")
        if name.startswith("imgbuild-secret-")
    ]


def _wait_for(path_pattern: str, process, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not glob.glob(path_pattern):
        if process.poll() is not None:
            raise AssertionError(f"the build ended early: {process.communicate()[1].decode()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path_pattern} never appeared")
        time.sleep(0.05)


def test_secrets_are_on_no_disk_while_the_step_runs_nor_after_a_kill(
    store, tmp_path, start_cli, kill_group, clear_leftovers
):
    """The secret values are in no file under the store while RUN runs, and a SIGKILL of
    imgbuild (which cannot clean up) leaves none behind either."""
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN --mount=type=secret,id=token --mount=type=secret,id=fromenv,env=APP_TOKEN "
        "--mount=type=secret,id=fromenv,target=/run/env-token "
        "--mount=type=cache,id=signal,target=/signal "
        'test "$APP_TOKEN" = "$(cat /run/env-token)" && test -s /run/secrets/token '
        "&& touch /signal/running && sleep 60\n"
    )
    # Values of this run only: other builds on the machine may use the module's constants.
    file_value, env_value = f"file-{token_hex(16)}", f"env-{token_hex(16)}"
    secret_file = tmp_path / "token.txt"
    secret_file.write_text(file_value)
    needles = [file_value.encode(), env_value.encode()]
    process = start_cli(
        store.root,
        "--progress", "plain",
        "--secret", f"id=token,src={secret_file}",
        "--secret", "id=fromenv,env=HOST_SECRET_VAR",
        str(context),
        env={"HOST_SECRET_VAR": env_value},
    )  # fmt: skip
    try:
        _wait_for(f"{store.root}/cache-mounts/*/running", process)  # the step is running
        assert _secrets_on_disk(store.root, needles) == []
        assert b"imgbuild-bundle" not in open("/proc/self/mountinfo", "rb").read()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert _secrets_on_disk(store.root, needles) == []
    finally:
        kill_group(process)
        clear_leftovers(store.root)
    assert _secrets_on_disk(store.root, needles) == []


def test_a_secret_is_limited_to_500_kib_and_read_no_further(store, tmp_path, build_df):
    """500 KiB fits, as in BuildKit; one byte more is refused, and a source that never
    ends (``src=/dev/zero``) is refused after 500 KiB instead of filling the memory."""
    exact = tmp_path / "exact"
    exact.write_bytes(b"s" * (500 << 10))
    built = build_df(
        "FROM busybox\nRUN --mount=type=secret,id=s wc -c < /run/secrets/s > /n\n",
        secrets=[parse_secret(f"id=s,src={exact}")],
    )
    assert built.tree()["n"].data == b"512000\n"
    (tmp_path / "one-more").write_bytes(b"s" * ((500 << 10) + 1))
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=secret,id=s true\n")
    for source in (tmp_path / "one-more", "/dev/zero"):
        ran = run_cli(
            ["build", "--progress", "plain", "--secret", f"id=s,src={source}", str(context)],
            store.root,
            timeout=60,
        )
        assert_clear_refusal(ran)
        assert "secret s is larger than 500 KiB; secrets are limited to 500 KiB" in ran.stderr
        assert "2 | RUN --mount=type=secret,id=s true" in ran.stderr


def test_missing_required_secret_fails_and_optional_is_skipped(build_df):
    from imgbuild.errors import BuildError

    built = build_df(
        "FROM busybox\nRUN --mount=type=secret,id=absent ls /run/secrets > /listing 2>&1 || true\n"
    )
    assert b"absent" not in built.tree()["listing"].data
    with pytest.raises(BuildError, match="--secret id=absent"):
        build_df("FROM busybox\nRUN --mount=type=secret,id=absent,required=true true\n")


# --- type=tmpfs -----------------------------------------------------------------------------


def test_tmpfs_mount(build_df):
    built = build_df(
        "FROM busybox\n"
        "RUN --mount=type=tmpfs,target=/scratch echo x > /scratch/f "
        "&& grep ' /scratch ' /proc/mounts | cut -d' ' -f3 > /tmpfs-type\n"
    )
    tree = built.tree()
    assert tree["tmpfs-type"].data == b"tmpfs\n"
    assert _mounted_paths(tree, "scratch") == []


def test_secret_value_is_not_in_the_cache_key(build_df, store, tmp_path):
    """As in BuildKit: a changed secret does not rerun a step (its value is in no key)."""
    secret_file = tmp_path / "value"
    secret_file.write_text("first")
    dockerfile = (
        "FROM busybox\nRUN --mount=type=secret,id=s cat /run/secrets/s > /s-was-seen-at-build\n"
    )
    first = build_df(dockerfile, store=store, secrets=[parse_secret(f"id=s,src={secret_file}")])
    secret_file.write_text("second")
    second = build_df(
        dockerfile,
        context=first.context,
        store=store,
        secrets=[parse_secret(f"id=s,src={secret_file}")],
    )
    assert second.result.steps_run == 0
